"""The automatic pool (docs/POOL.md, "Automatic mode") on the mock device: found or started per
user under a lock, its directory and socket checked, and every fault answered by a restore from
the file with one log line. Each test gets its own XDG_RUNTIME_DIR; every pool it started is
killed in the fixture's finalizer (their pids are in the pool's log)."""
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch

import thaw_vllm
from thaw_vllm import pool, torch_io, vllm_loader

REPO = Path(__file__).resolve().parents[2]
THAW = REPO / "build" / "publish" / "cli" / "thaw"
SHM = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pid, seconds=15):
    deadline = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


class AutoHome:
    """One test's per-user runtime directory and the pools started in it."""

    def __init__(self, root: Path):
        self.runtime = root / "run"
        self.runtime.mkdir(mode=0o700)
        self.dir = self.runtime / "thaw"
        self.socket = self.dir / "pool.sock"
        self.log = self.dir / "pool.log"
        self.children = []

    def started_pids(self):
        text = self.log.read_text() if self.log.exists() else ""
        return [int(p) for p in re.findall(r"serving on .*? \(pid (\d+),", text)]

    def kill_all(self):
        for pid in self.started_pids() + [c.pid for c in self.children]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
                _wait_gone(pid)
        for child in self.children:
            child.wait(timeout=10)


@pytest.fixture
def home(tmp_path, monkeypatch):
    if not THAW.is_file():
        pytest.skip("build/publish/cli/thaw is not built (scripts/build.sh)")
    h = AutoHome(tmp_path)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(h.runtime))
    monkeypatch.setenv("THAW_EXECUTABLE", str(THAW))
    monkeypatch.setenv("THAW_POOL_BUDGET_MIB", "1024")
    monkeypatch.delenv("THAW_POOL", raising=False)
    monkeypatch.delenv("THAW_POOL_SOCKET", raising=False)
    yield h
    h.kill_all()


@pytest.fixture
def shared(request):
    """Mock device memory the pool can open: tensors laid out as the snapshot's data section in a
    sparse file of the pool's shared-memory directory, mapped MAP_SHARED."""
    files = []

    def views(header):
        size = header["file_length"] - header["data_offset"]
        fd, name = tempfile.mkstemp(prefix="thaw-auto-test-", dir=SHM)
        os.close(fd)
        os.truncate(name, size)
        files.append(name)
        memory = torch.from_file(name, shared=True, size=size, dtype=torch.uint8)
        return name, {t["name"]: memory[t["offset"]:t["offset"] + t["length"]].view(torch_io.torch_dtype(t["dtype"])).reshape(t["shape"])
                      for t in header["tensors"]}

    yield views
    for name in files:
        os.unlink(name)


def _snapshot(tmp_path, elements=50_000, name="m.thaw"):
    state = {"a": torch.randn(elements), "b": torch.arange(1000, dtype=torch.int64), "c": torch.randn(33, 7)}
    path = tmp_path / name
    thaw_vllm.freeze(state, path)
    return state, path


def _fallback_lines(caplog):
    return [r.message for r in caplog.records if "restoring from the file" in r.message]


def _restore_cli(snapshot, *extra, check=True):
    return subprocess.run([str(THAW), "restore", str(snapshot), "--device", "mock", "--pool", "auto", "--check", *extra],
                          capture_output=True, text=True, check=check, timeout=120)


def test_racing_processes_start_exactly_one_pool(tmp_path, home):
    _, snapshot = _snapshot(tmp_path)
    racers = [subprocess.Popen([str(THAW), "restore", str(snapshot), "--device", "mock", "--pool", "auto", "--check"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
    results = [(r.wait(timeout=120), *r.communicate()) for r in racers]
    for code, out, err in results:
        assert code == 0, err
        assert "bit-identical" in out
    pids = home.started_pids()
    assert len(pids) == 1, home.log.read_text()
    assert "already serving" not in home.log.read_text()
    assert pool.status(home.socket)["pid"] == pids[0] and _alive(pids[0])


def test_a_second_fresh_process_hits_the_pool(tmp_path, home, shared, caplog):
    state, snapshot = _snapshot(tmp_path)
    first = _restore_cli(snapshot)  # starts the pool, which fills itself while serving
    assert "through the pool" in first.stdout and "bit-identical" in first.stdout, first.stderr
    # `thaw pool load` with no socket named talks to the automatic pool (a no-op: held).
    assert "pool holds" in subprocess.run([str(THAW), "pool", "load", str(snapshot)], check=True, capture_output=True,
                                          text=True, timeout=60).stdout
    second = _restore_cli(snapshot)
    assert "through the pool" in second.stdout and "bit-identical" in second.stdout and "restoring from the file" not in second.stderr
    _, target = shared(thaw_vllm.info(snapshot))
    with caplog.at_level(logging.INFO, logger="thaw_vllm"):
        stats = thaw_vllm.restore_into(target, snapshot, pool="auto")
    assert stats["source"] == "pool" and stats["via"] == "pool hit" and not _fallback_lines(caplog)
    for name, tensor in state.items():
        assert torch.equal(target[name], tensor)
    assert len(home.started_pids()) == 1


def test_status_describes_the_automatic_pool(tmp_path, home):
    _, snapshot = _snapshot(tmp_path)
    _restore_cli(snapshot)
    subprocess.run([str(THAW), "pool", "load", str(snapshot)], check=True, capture_output=True, timeout=60)
    _restore_cli(snapshot)
    status = json.loads(subprocess.run([str(THAW), "pool", "status", "--json"], capture_output=True, text=True,
                                       check=True, timeout=60).stdout)
    assert status["socket"] == str(home.socket) and status["auto"] is True and status["idle_exit_s"] == 600
    assert status["pid"] == home.started_pids()[0] and status["uid"] == os.getuid()
    assert status["budget_bytes"] == 1024 << 20  # THAW_POOL_BUDGET_MIB
    assert status["hits"] == 1 and status["misses"] == 1 and status["started"].startswith(time.strftime("%Y-"))
    assert [s["snapshot"] for s in status["snapshots"]] == [str(snapshot)]
    assert home.dir.stat().st_mode & 0o777 == 0o700 and home.socket.stat().st_mode & 0o777 == 0o600


def test_a_pool_killed_mid_restore_falls_back_to_the_file(tmp_path, home, shared, caplog):
    state, snapshot = _snapshot(tmp_path, elements=64 << 20)  # 256 MiB: the pool's copy takes a while
    socket_path = pool.select("auto", torch.device("cpu"))
    pool.load(snapshot, socket_path)
    (pid,) = home.started_pids()
    name, target = shared(thaw_vllm.info(snapshot))
    size = os.path.getsize(name)
    killed = threading.Event()

    def kill_when_half_written():
        # The target file is sparse: its blocks show how far the pool's copy has come.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            written = os.stat(name).st_blocks * 512
            if 0 < written < size // 2:
                os.kill(pid, signal.SIGKILL)
                killed.set()
                return
            if written >= size // 2:
                return
            time.sleep(0.0005)

    watcher = threading.Thread(target=kill_when_half_written)
    watcher.start()
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="thaw_vllm"):
        # The pool's own copies (a shared host copy, once mapped here, outlives its pool).
        stats = thaw_vllm.restore_into(target, snapshot, pool=socket_path, pool_share=False)
    watcher.join()
    if not killed.is_set():
        pytest.skip("the pool finished its copy before it could be killed half-way (machine too fast for this test)")
    assert time.monotonic() - started < 60
    assert stats["source"] == "file"
    lines = _fallback_lines(caplog)
    assert len(lines) == 1 and "went away" in lines[0], lines
    for key, tensor in state.items():
        assert torch.equal(target[key], tensor), key
    assert _wait_gone(pid)


def test_a_stale_socket_is_replaced(tmp_path, home, shared, caplog):
    state, snapshot = _snapshot(tmp_path)
    home.dir.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(home.socket))
    stale.close()  # the file stays, nobody listens: a pool that died
    with caplog.at_level(logging.INFO, logger="thaw_vllm"):
        assert pool.select("auto", torch.device("cpu")) == str(home.socket)
    (pid,) = home.started_pids()
    assert pool.status(home.socket)["pid"] == pid
    _, target = shared(thaw_vllm.info(snapshot))
    pool.load(snapshot, home.socket)
    assert thaw_vllm.restore_into(target, snapshot, pool="auto")["via"] == "pool hit"
    assert torch.equal(target["a"], state["a"])


FOREIGN_SERVER = """
import os, socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
os.setgid(65534)
os.setuid(65534)  # listen() records the credentials a client's SO_PEERCRED reads: 65534's
s.listen(8)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    try:
        c.sendall(b'{"ok":true}\\n')
    except OSError:
        pass  # the client hung up at once (it checks who serves before reading)
    c.close()
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="starting a server as another uid needs root")
def test_a_socket_served_by_another_uid_is_refused(tmp_path, home, caplog):
    state, snapshot = _snapshot(tmp_path)
    home.dir.mkdir(mode=0o700)
    server = subprocess.Popen([sys.executable, "-c", FOREIGN_SERVER, str(home.socket)], stdout=subprocess.PIPE, text=True)
    home.children.append(server)
    assert server.stdout.readline().strip() == "ready"
    target = {n: torch.zeros_like(t) for n, t in state.items()}
    with caplog.at_level(logging.INFO, logger="thaw_vllm"):
        stats = thaw_vllm.restore_into(target, snapshot, pool="auto")
    assert stats["source"] == "file"
    lines = _fallback_lines(caplog)
    assert len(lines) == 1 and "uid 65534" in lines[0] and str(home.socket) in lines[0], lines
    assert torch.equal(target["a"], state["a"])
    assert server.poll() is None and home.socket.exists() and not home.started_pids()  # never touched, nothing started
    cli = _restore_cli(snapshot)
    assert "uid 65534" in cli.stderr and "bit-identical" in cli.stdout


@pytest.mark.parametrize("fault", ["mode 0777", "symbolic link"])
def test_an_unsafe_directory_is_refused(tmp_path, home, caplog, fault):
    state, snapshot = _snapshot(tmp_path)
    if fault == "mode 0777":
        home.dir.mkdir()
        home.dir.chmod(0o777)
        expected = "0777"
    else:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir(mode=0o700)
        home.dir.symlink_to(elsewhere)
        expected = "symbolic link"
    target = {n: torch.zeros_like(t) for n, t in state.items()}
    with caplog.at_level(logging.INFO, logger="thaw_vllm"):
        stats = thaw_vllm.restore_into(target, snapshot, pool="auto")
    lines = _fallback_lines(caplog)
    assert stats["source"] == "file" and len(lines) == 1 and expected in lines[0] and str(home.dir) in lines[0], lines
    assert torch.equal(target["a"], state["a"])
    assert not list(home.dir.iterdir())  # no socket, lock or log made there
    serve = subprocess.run([str(THAW), "pool", "serve", "--auto", "--device", "mock"], capture_output=True, text=True, timeout=60)
    assert serve.returncode != 0 and expected in serve.stderr


def test_a_missing_executable_is_said_and_the_file_restores(tmp_path, home, monkeypatch, caplog):
    state, snapshot = _snapshot(tmp_path)
    monkeypatch.setenv("THAW_EXECUTABLE", str(tmp_path / "no-thaw"))
    target = {n: torch.zeros_like(t) for n, t in state.items()}
    with caplog.at_level(logging.INFO, logger="thaw_vllm"):
        stats = thaw_vllm.restore_into(target, snapshot, pool="auto")
    lines = _fallback_lines(caplog)
    assert stats["source"] == "file" and len(lines) == 1 and "THAW_EXECUTABLE" in lines[0], lines
    assert torch.equal(target["c"], state["c"])


def _serve_by_hand(home, *flags):
    server = subprocess.Popen([str(THAW), "pool", "serve", "--auto", "--device", "mock", *flags],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    home.children.append(server)
    deadline = time.monotonic() + 30
    while not home.socket.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return server


def test_the_idle_pool_exits_and_removes_only_its_own_socket(tmp_path, home):
    server = _serve_by_hand(home, "--idle-exit-s", "2")
    status = pool.status(home.socket)
    assert status["auto"] is True and status["idle_exit_s"] == 2 and status["pid"] == server.pid
    out, err = server.communicate(timeout=30)
    assert server.returncode == 0 and "stopped (idle for 2 s)" in out, err
    assert not home.socket.exists()

    # A second server whose socket was replaced (a newer server's) leaves the newer one alone.
    server = _serve_by_hand(home, "--idle-exit-s", "2")
    pool.status(home.socket)
    home.socket.unlink()
    newer = socket.socket(socket.AF_UNIX)
    newer.bind(str(home.socket))
    newer.listen(1)
    inode = home.socket.stat().st_ino
    server.communicate(timeout=30)
    assert server.returncode == 0 and home.socket.exists() and home.socket.stat().st_ino == inode
    newer.close()


def test_the_policy_off_for_cpu_unless_asked(tmp_path, home, monkeypatch, caplog):
    state, snapshot = _snapshot(tmp_path)
    target = {n: torch.zeros_like(t) for n, t in state.items()}
    with caplog.at_level(logging.INFO, logger="thaw_vllm"):
        assert thaw_vllm.restore_into(target, snapshot)["source"] == "file"
    assert not home.dir.exists() and not _fallback_lines(caplog), "CPU destinations start no pool by default"
    assert pool.select(None, torch.device("cpu")) is None
    assert pool.select("off", torch.device("cuda", 0)) is None and pool.select(False, torch.device("cuda", 0)) is None
    assert pool.select(tmp_path / "given.sock", torch.device("cpu")) == str(tmp_path / "given.sock")
    monkeypatch.setenv("THAW_POOL", str(tmp_path / "env.sock"))
    assert pool.select(None, torch.device("cpu")) == str(tmp_path / "env.sock")
    assert pool.select("off", torch.device("cpu")) is None  # the argument wins over the environment
    monkeypatch.setenv("THAW_POOL", "auto")
    assert pool.select(None, torch.device("cpu")) == str(home.socket)
    assert len(home.started_pids()) == 1


def test_the_loader_accepts_pool_auto():
    extra = vllm_loader.validate_extra_config({"snapshot": "/x", "pool": "auto"})
    assert vllm_loader.engine_options(extra)["pool"] == "auto"
    vllm_loader.validate_extra_config({"snapshot": "/x", "pool": "off"})
    with pytest.raises(ValueError, match="auto"):
        vllm_loader.validate_extra_config({"snapshot": "/x", "pool": 3})


def test_the_executable_beside_libthaw_is_found(tmp_path, home, monkeypatch):
    # libthaw.so of a source tree is build/publish/pybridge/libthaw.so; the CLI beside it build/publish/cli/thaw.
    library = Path(os.environ.get("THAW_LIBRARY", REPO / "build" / "publish" / "pybridge" / "libthaw.so")).resolve()
    if library.parent.parent / "cli" / "thaw" != THAW.resolve() and library.parent.parent / "bin" / "thaw" != THAW.resolve():
        pytest.skip(f"libthaw.so at {library} has no thaw executable beside it")
    monkeypatch.delenv("THAW_EXECUTABLE")
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing to find there
    assert pool.select("auto", torch.device("cpu")) == str(home.socket)
    (pid,) = home.started_pids()
    assert Path(f"/proc/{pid}/exe").resolve() == THAW.resolve()


def test_a_starter_waits_for_the_lock_and_then_starts_the_pool(tmp_path, home):
    import fcntl
    _, snapshot = _snapshot(tmp_path)
    home.dir.mkdir(mode=0o700)
    with open(home.dir / "pool.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another starter at work
        waiting = subprocess.Popen([str(THAW), "restore", str(snapshot), "--device", "mock", "--pool", "auto", "--check"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        assert waiting.poll() is None and not home.started_pids(), "nothing starts while the lock is held"
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0 and "bit-identical" in out, err
    assert len(home.started_pids()) == 1 and pool.status(home.socket)["pid"] == home.started_pids()[0]


def test_a_snapshot_over_the_budget_is_refused_and_the_file_restores(tmp_path, home, monkeypatch, shared, caplog):
    monkeypatch.setenv("THAW_POOL_BUDGET_MIB", "1")
    state, snapshot = _snapshot(tmp_path, elements=1 << 20)  # 4 MiB
    socket_path = pool.select("auto", torch.device("cpu"))
    with pytest.raises(thaw_vllm.ThawError, match="budget"):
        pool.load(snapshot, socket_path)
    _, target = shared(thaw_vllm.info(snapshot))
    with caplog.at_level(logging.INFO, logger="thaw_vllm"):
        stats = thaw_vllm.restore_into(target, snapshot, pool="auto")
    lines = _fallback_lines(caplog)
    assert stats["source"] == "file" and len(lines) == 1 and ("does not hold" in lines[0] or "budget" in lines[0]), lines
    assert torch.equal(target["a"], state["a"])
    assert pool.status(socket_path)["budget_bytes"] == 1 << 20


def _environment_of(pid):
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(e.decode().split("=", 1) for e in f.read().split(b"\0") if e)


def test_the_pool_serves_every_gpu_whatever_its_starter_saw(tmp_path, home, monkeypatch):
    # A rank of a job started with one GPU visible, under a profiler, starts the pool: the pool
    # must not keep that rank's view (docs/POOL.md, "Automatic mode", What the pool inherits).
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    monkeypatch.setenv("CUDA_DEVICE_MAX_CONNECTIONS", "1")
    monkeypatch.setenv("CUDA_LAUNCH_BLOCKING", "1")
    monkeypatch.setenv("LD_PRELOAD", "libm.so.6")
    monkeypatch.setenv("CUDA_INJECTION64_PATH", str(tmp_path / "libinjection.so"))
    monkeypatch.setenv("THAWCORE_POOL_OPEN", "serial")
    monkeypatch.setenv("THAW_TEST_SENTINEL", "kept")
    monkeypatch.chdir(tmp_path)
    assert pool.select("auto", torch.device("cpu")) == str(home.socket)
    status = json.loads(subprocess.run([str(THAW), "pool", "status", "--json"], capture_output=True, text=True,
                                       check=True, timeout=60).stdout)
    assert status["pid"] == home.started_pids()[0]
    environment = _environment_of(status["pid"])
    for withheld in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "CUDA_DEVICE_MAX_CONNECTIONS", "CUDA_LAUNCH_BLOCKING",
                     "LD_PRELOAD", "CUDA_INJECTION64_PATH"):
        assert withheld not in environment, withheld
    assert environment["THAW_POOL_BUDGET_MIB"] == "1024" and status["budget_bytes"] == 1024 << 20
    assert environment["THAWCORE_POOL_OPEN"] == "serial" and environment["THAW_TEST_SENTINEL"] == "kept"
    assert environment["XDG_RUNTIME_DIR"] == str(home.runtime) and environment["PATH"] == os.environ["PATH"]
    assert os.readlink(f"/proc/{status['pid']}/cwd") == "/", "the pool keeps no starter's directory busy"
    assert [d["device"] for d in status["devices"]] == ["mock-0"]


def test_the_default_device_is_named_by_identity(tmp_path, home):
    server = _serve_by_hand(home, "--device-id", "mock-3", "--ordinal", "1")
    status = pool.status(home.socket)
    assert status["pid"] == server.pid and [(d["device"], d["ordinal"]) for d in status["devices"]] == [("mock-3", 3)]
    server.send_signal(signal.SIGTERM)
    server.communicate(timeout=30)
    refused = subprocess.run([str(THAW), "pool", "serve", "--auto", "--device", "mock", "--device-id", "GPU-0000"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "--device-id GPU-0000 is no mock device" in refused.stderr, refused.stderr
    assert not home.socket.exists()


def test_pool_calls_given_no_socket_talk_to_the_automatic_pool(tmp_path, home, monkeypatch):
    _, snapshot = _snapshot(tmp_path)
    fixed = pool.default_socket()
    assert fixed != str(home.socket) and not home.dir.exists(), "with no automatic pool running, the fixed default"
    with pytest.raises(thaw_vllm.ThawError, match=re.escape(fixed)):
        pool.status()
    assert not home.dir.exists(), "asking starts no pool"
    pool.select("auto", torch.device("cpu"))
    (pid,) = home.started_pids()
    assert pool.default_socket() == str(home.socket)
    assert pool.status()["pid"] == pid and pool.status()["auto"] is True
    assert pool.load(snapshot)["bytes"] > 0 and [s["snapshot"] for s in pool.status()["snapshots"]] == [str(snapshot)]
    pool.evict(snapshot)
    assert pool.status()["snapshots"] == []
    monkeypatch.setenv("THAW_POOL_SOCKET", str(tmp_path / "named.sock"))
    assert pool.default_socket() == str(tmp_path / "named.sock"), "THAW_POOL_SOCKET still wins"
