"""The pool attack suite (issue 11): hostile clients against a real `thaw pool serve --device mock`.

Each family runs against its own server. After the family, a good client must restore
bit-exactly within a second and the server's RSS must come back near where it started.
Per family the suite counts cases tried, crashes (the server died), hangs (no answer in
time), leaks (RSS not back) and wrong acceptances (a hostile request served, or a file
outside the client's own changed); the counts go to build/test-logs/pool-attacks.txt,
which scripts/test.sh prints."""
import base64
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch

import thaw_vllm

REPO = Path(__file__).resolve().parents[2]
THAW = REPO / "build" / "publish" / "cli" / "thaw"
REPORT = REPO / "build" / "test-logs" / "pool-attacks.txt"
RSS_SLACK = 48 << 20     # "near its start": GC heaps and allocator caches may keep this much
ANSWER_TIMEOUT = 10.0    # a hostile case without an answer in this long counts as a hang
COUNTS = {}


def kib(n):
    return n << 10


class Pool:
    """A `thaw pool serve --device mock` process, its shared-memory directory and one snapshot."""

    def __init__(self, root: Path, snapshot: Path, *extra):
        self.root = root
        self.shm = Path(tempfile.mkdtemp(prefix="thaw-attack-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
        os.chmod(self.shm, 0o1777)  # like /dev/shm itself: every uid may make its files here
        self.socket = self.shm / "pool.sock"
        self.snapshot = snapshot
        self.process = subprocess.Popen(
            [str(THAW), "pool", "serve", "--socket", str(self.socket), "--device", "mock", "--budget-mib", "256",
             "--shm-dir", str(self.shm), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.log = bytearray()  # the pool's stderr, drained so that its log lines never block it
        threading.Thread(target=self._drain, daemon=True).start()
        for _ in range(200):
            if self.socket.exists():
                break
            time.sleep(0.05)
        assert self.socket.exists(), "the pool did not start"
        header = thaw_vllm.info(snapshot)
        self.size = header["file_length"] - header["data_offset"]
        self.tensors = header["tensors"]
        assert self.call({"op": "load", "snapshot": str(snapshot)})["ok"]
        self.good_restore()  # warm: the first restore's one-time costs are not a leak
        time.sleep(0.2)
        self.start_rss = self.rss()

    def _drain(self):
        for line in self.process.stderr:
            self.log += line
            del self.log[:-16384]

    def alive(self):
        return self.process.poll() is None

    def rss(self):
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) << 10
        raise AssertionError("no VmRSS")

    def connect(self, timeout=ANSWER_TIMEOUT):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                s.connect(str(self.socket))
                return s
            except BlockingIOError:  # the listen backlog is full for a moment: a real client waits too
                if time.monotonic() > deadline:
                    raise socket.timeout("the pool accepted no connection in time")
                time.sleep(0.01)

    def send_line(self, data: bytes, timeout=ANSWER_TIMEOUT):
        """Sends one raw line, returns the parsed answer; None if the pool closed without one."""
        with self.connect(timeout) as s:
            s.sendall(data + b"\n")
            return read_answer(s)

    def call(self, message, timeout=ANSWER_TIMEOUT):
        return self.send_line(json.dumps(message).encode(), timeout)

    def shared_file(self, size=None, name=None):
        path = self.shm / (name or f"dest-{os.urandom(6).hex()}")
        with open(path, "wb") as f:
            f.truncate(self.size if size is None else size)
        return path

    def targets(self, handle: str, edit=None):
        out = []
        for i, t in enumerate(self.tensors):
            target = {"name": t["name"], "handle": base64.b64encode(handle.encode()).decode(),
                      "offset": t["offset"], "capacity": t["length"]}
            if edit and i == 0:
                edit(target, t)
            out.append(target)
        return out

    def restore(self, handle, edit=None, timeout=ANSWER_TIMEOUT):
        return self.call({"op": "restore", "snapshot": str(self.snapshot), "targets": self.targets(handle, edit)}, timeout)

    def good_restore(self):
        """A good client: restores into a file of its own, checks every byte, within a second."""
        path = self.shared_file()
        started = time.monotonic()
        answer = self.restore(path.name, timeout=1.0)
        elapsed = time.monotonic() - started
        assert answer and answer["ok"], answer
        assert elapsed < 1.0, f"a good restore took {elapsed:.2f} s"
        data = path.read_bytes()
        path.unlink()
        return all(data[t["offset"]:t["offset"] + t["length"]] == EXPECTED[self.snapshot][t["name"]] for t in self.tensors)

    def wait_for_connections(self, count, seconds=5):
        """Until the pool counts this many open connections (the asking one included)."""
        deadline = time.monotonic() + seconds
        while self.call({"op": "status"})["connections"] > count and time.monotonic() < deadline:
            time.sleep(0.05)

    def settle_rss(self):
        """The RSS once it stops falling (up to 5 s): allocator caches and the GC return memory lazily."""
        rss = self.rss()
        for _ in range(25):
            if rss <= self.start_rss + RSS_SLACK:
                break
            time.sleep(0.2)
            rss = self.rss()
        return rss

    def stop(self):
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.shm)


def read_answer(s):
    reply = b""
    try:
        while not reply.endswith(b"\n"):
            part = s.recv(1 << 16)
            if not part:
                break
            reply += part
    except ConnectionResetError:
        pass
    return json.loads(reply) if reply.endswith(b"\n") else None


EXPECTED = {}


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    if not THAW.is_file():
        pytest.skip("build/publish/cli/thaw is not built (scripts/build.sh)")
    path = tmp_path_factory.mktemp("attacks") / "m.thaw"
    torch.manual_seed(11)
    state = {"a": torch.randn(3000, 7), "b": torch.arange(5000, dtype=torch.int64), "c": torch.randn(64, 64).half()}
    thaw_vllm.freeze(state, path)
    EXPECTED[path] = {n: t.reshape(-1).view(torch.uint8).numpy().tobytes() for n, t in state.items()}
    return path


class Family:
    """Counts the cases of one family and checks the server after it."""

    def __init__(self, name, pool):
        self.name, self.pool = name, pool
        self.counts = {"cases": 0, "crashes": 0, "hangs": 0, "leaks": 0, "wrong acceptances": 0}
        self.notes = []

    def check(self, what, ok, failure="wrong acceptances"):
        """One case: ok is the right outcome; otherwise it counts as a failure of that kind."""
        self.counts["cases"] += 1
        if not ok:
            self.counts[failure] += 1
            self.notes.append(f"{failure}: {what}")
        if not self.pool.alive():
            self.counts["crashes"] += 1
            self.notes.append(f"crash after: {what}")
            raise AssertionError(f"{self.name}: the pool died after {what}: {self.pool.log.decode(errors='replace')[-2000:]}")

    def refused(self, what, answer):
        """A hostile request must get an error answer, or a closed connection; never ok."""
        self.check(what, not (answer and answer.get("ok")))

    def finish(self):
        pool = self.pool
        try:
            assert pool.alive(), f"{self.name}: the pool died"
            if not pool.good_restore():
                self.counts["wrong acceptances"] += 1
                self.notes.append("the good client's bytes differ")
            rss = pool.settle_rss()
            if rss > pool.start_rss + RSS_SLACK:
                self.counts["leaks"] += 1
                self.notes.append(f"RSS {rss >> 20} MiB after, {pool.start_rss >> 20} MiB before")
        except (socket.timeout, TimeoutError):
            self.counts["hangs"] += 1
            self.notes.append("the good client was not served within a second")
        finally:
            COUNTS[self.name] = dict(self.counts, rss_before_mib=pool.start_rss >> 20, rss_after_mib=pool.rss() >> 20 if pool.alive() else -1)
            write_report()
        bad = {k: v for k, v in self.counts.items() if k != "cases" and v}
        assert not bad, f"{self.name}: {bad}: {self.notes}"
        assert self.counts["cases"] > 0


def write_report():
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    lines = ["pool attack suite (tests/python/test_pool_attacks.py): per family, cases tried / crashes / hangs / leaks / wrong acceptances"]
    for name, c in COUNTS.items():
        lines.append(f"  {name:28} {c['cases']:4} cases  {c['crashes']} crashes  {c['hangs']} hangs  {c['leaks']} leaks  "
                     f"{c['wrong acceptances']} wrong acceptances  (RSS {c['rss_before_mib']} -> {c['rss_after_mib']} MiB)")
    REPORT.write_text("\n".join(lines) + "\n")


@pytest.fixture
def serve(tmp_path, snapshot):
    """Starts a pool with extra `thaw pool serve` arguments; stops it after the test."""
    started = []

    def start(*extra):
        started.append(Pool(tmp_path, snapshot, *extra))
        return started[-1]

    yield start
    for p in started:
        p.stop()


@pytest.fixture
def pool(serve):
    return serve()


def test_malformed_and_unknown_requests(pool):
    f = Family("malformed and unknown", pool)
    path = str(pool.snapshot)
    lines = [b"", b"this is not json", b"{", b"}", b"[]", b"[1,2]", b"null", b"42", b'"ping"', b"{}",
             b'{"op":null}', b'{"op":7}', b'{"op":["ping"]}', b'{"op":"dance"}', b'{"op":"PING"}', b'{"op":""}',
             b'{"op":"' + b"x" * 5000 + b'"}', b'{"op":"ping"} {"op":"ping"}', b'{"op":"ping","op":"status"}',
             b'{"op":"\\ud800"}', b'{"op":"pi\\u0000ng"}', b'{"op":"\xff\xfe"}', b"\x00\x01\x02",
             b"[" * 100 + b"]" * 100, b'{"a":' * 50 + b"1" + b"}" * 50,
             b'{"op":"load"}', b'{"op":"load","snapshot":7}', b'{"op":"load","snapshot":"relative.thaw"}',
             b'{"op":"load","snapshot":"/no/such/file.thaw"}', b'{"op":"load","snapshot":"/etc/passwd"}',
             b'{"op":"load","snapshot":"/dev/zero"}', b'{"op":"load","snapshot":"/proc/self/mem"}',
             b'{"op":"evict"}', b'{"op":"restore"}',
             json.dumps({"op": "restore", "snapshot": path}).encode(),
             json.dumps({"op": "restore", "snapshot": path, "targets": 7}).encode(),
             json.dumps({"op": "restore", "snapshot": path, "targets": [7]}).encode(),
             json.dumps({"op": "restore", "snapshot": path, "targets": [{}]}).encode(),
             json.dumps({"op": "restore", "snapshot": path, "targets": [{"name": "a"}]}).encode(),
             json.dumps({"op": "restore", "snapshot": path + "x", "targets": []}).encode(),
             json.dumps({"op": "restore", "snapshot": path, "targets": pool.targets("x", lambda t, _: t.update(name="nope"))}).encode(),
             json.dumps({"op": "restore", "snapshot": path, "targets": pool.targets("x", lambda t, _: t.update(handle="!!notbase64"))}).encode(),
             json.dumps({"op": "restore", "snapshot": path, "targets": pool.targets("x", lambda t, _: t.update(handle=""))}).encode(),
             json.dumps({"op": "restore", "snapshot": path, "targets": pool.targets("x") + pool.targets("x")[:1]}).encode()]
    for line in lines:
        try:
            f.refused(repr(line[:60]), pool.send_line(line))
        except socket.timeout:
            f.check(repr(line[:60]), False, "hangs")
    # Many requests on one connection, bad and good interleaved: each gets its own answer in order.
    with pool.connect() as s:
        for i in range(50):
            s.sendall(b"garbage\n" if i % 2 else b'{"op":"ping"}\n')
            answer = read_answer_line(s)
            f.check(f"pipelined request {i}", answer and answer["ok"] == (i % 2 == 0))
    f.finish()


def read_answer_line(s):
    data = b""
    while not data.endswith(b"\n"):
        part = s.recv(1)
        if not part:
            return None
        data += part
    return json.loads(data)


NUMBERS = ["-1", "-9223372036854775808", "9223372036854775808", "18446744073709551615", "18446744073709551616",
           "1e400", "-1e400", "1.5", "0.0", "1e3", "1E3", "-0.5", "\"12\"", "null", "true", "[]", "{}", "0x10", "NaN",
           "Infinity", "01", "+1", "1" + "0" * 400]


def test_integer_edge_values_for_every_numeric_field(pool):
    f = Family("integer edge values", pool)
    dest = pool.shared_file()
    name = base64.b64encode(dest.name.encode()).decode()
    for field in ("offset", "capacity"):
        for value in NUMBERS:
            targets = []
            for i, t in enumerate(pool.tensors):
                fields = {"offset": str(t["offset"]), "capacity": str(t["length"])}
                if i == 0:
                    fields[field] = value
                targets.append(f'{{"name":"{t["name"]}","handle":"{name}","offset":{fields["offset"]},"capacity":{fields["capacity"]}}}')
            line = f'{{"op":"restore","snapshot":{json.dumps(str(pool.snapshot))},"targets":[{",".join(targets)}]}}'.encode()
            f.refused(f"{field} = {value}", pool.send_line(line))
    # Values that parse but do not fit: at, past and far past the end of the allocation.
    size = pool.size
    for offset, capacity in [(2**63 - 1, None), (2**63 - 10, 2**63 - 1), (size, None), (size - 1, None), (0, size + 1),
                             (0, 2**63 - 1), (2**62, 2**62), (0, 0), (0, 1)]:
        answer = pool.restore(dest.name, lambda t, tensor: t.update(offset=offset, capacity=capacity if capacity is not None else tensor["length"]))
        f.refused(f"offset {offset} capacity {capacity}", answer)
    f.check("nothing written by the refused restores", not any(dest.read_bytes()))
    f.finish()


def test_handles_naming_files_outside_the_allowed_place(pool, tmp_path):
    f = Family("handles outside the directory", pool)
    victim = tmp_path / "victim"
    victim.write_bytes(b"\0" * pool.size)
    (pool.shm / "link").symlink_to(victim)
    (pool.shm / "dirlink").symlink_to(tmp_path)
    (pool.shm / "sub").mkdir()
    os.mkfifo(pool.shm / "fifo")
    pool.shared_file(size=0, name="empty")
    handles = [str(victim), f"{pool.shm}/../{victim.name}", f"../{tmp_path.name}/victim", "link", f"{pool.shm}/link",
               "dirlink/victim", "sub", "fifo", "empty", ".", "..", "/", "/dev/zero", "/dev/shm", "/etc/passwd",
               "/proc/self/mem", f"{pool.shm}//link", f"{pool.shm}/./link", "missing", "a\0b", "x" * 300, "/" * 4096]
    for handle in handles:
        f.refused(f"handle {handle[:50]!r}", pool.restore(handle))
    f.check("the victim outside is untouched", not any(victim.read_bytes()))
    f.finish()


def test_offsets_and_capacities_past_the_target(pool):
    f = Family("offsets past the target", pool)
    small = pool.shared_file(size=100)
    f.refused("a tensor larger than the whole file", pool.restore(small.name))
    exact = pool.shared_file(size=pool.size - 1)
    f.refused("a file one byte short", pool.restore(exact.name))
    # A client that shrinks its file while the pool writes it: no SIGBUS, the pool serves on.
    racing = pool.shared_file()
    stop = threading.Event()

    def shrink():
        while not stop.is_set():
            os.truncate(racing, 0)
            os.truncate(racing, pool.size)

    shrinker = threading.Thread(target=shrink)
    shrinker.start()
    try:
        for i in range(30):
            answer = pool.restore(racing.name)
            f.check(f"restore into a file being truncated ({i})", answer is not None, "hangs")
    finally:
        stop.set()
        shrinker.join()
    f.finish()


def test_concurrent_duplicate_loads(pool, snapshot, tmp_path):
    f = Family("concurrent duplicate loads", pool)
    big = tmp_path / "big.thaw"
    thaw_vllm.freeze({"w": torch.zeros(8 << 20, dtype=torch.uint8)}, big)  # 8 MiB
    for round in range(3):
        answers = []

        def load():
            answers.append(pool.call({"op": "load", "snapshot": str(big)}))

        threads = [threading.Thread(target=load) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, a in enumerate(answers):
            f.check(f"round {round} load {i}", a is not None and a["ok"], "hangs")  # these must succeed
        held = [s for s in pool.call({"op": "status"})["snapshots"] if s["snapshot"] == str(big)]
        f.check(f"round {round}: one entry held", len(held) == 1)
        rss = pool.rss()
        f.check(f"round {round}: RSS {rss >> 20} MiB holds one copy", rss <= pool.start_rss + (8 << 20) + RSS_SLACK, "leaks")
        assert pool.call({"op": "evict", "snapshot": str(big)})["evicted"]
    f.finish()


def test_many_long_lines_at_once(serve):
    pool = serve("--max-request-mib", "128")
    f = Family("many long lines at once", pool)
    chunk = b"x" * kib(256)
    sockets, refused = [], 0
    for i in range(24):  # 24 lines of 16 MiB against 128 MiB of request memory
        s = pool.connect(timeout=5)
        sockets.append(s)
    for _ in range(64):
        for s in list(sockets):
            try:
                s.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError, socket.timeout):
                sockets.remove(s)
                refused += 1
    peak = pool.rss()
    f.check(f"RSS while 24 lines of 16 MiB arrive: {peak >> 20} MiB", peak <= pool.start_rss + (128 << 20) * 2 + RSS_SLACK, "leaks")
    for s in sockets:
        s.settimeout(0.5)
        try:
            answer = read_answer(s)
        except socket.timeout:
            answer = None
        if answer is not None and not answer["ok"] and "short of request memory" in answer["error"]:
            refused += 1
        s.close()
    f.check(f"connections refused for memory: {refused} of 24", refused > 0)
    # One line over the 64 MiB cap: refused as it passes it, not buffered whole.
    with pool.connect(timeout=30) as s:
        try:
            for _ in range(257):
                s.sendall(chunk)
            s.sendall(b"\n")
            answer = read_answer(s)
        except (BrokenPipeError, ConnectionResetError):
            answer = None
        f.refused("a line over 64 MiB", answer)
    f.finish()


def test_clients_that_stall_or_vanish(serve):
    pool = serve("--request-timeout-s", "2", "--idle-timeout-s", "3", "--max-connections", "16")
    f = Family("stalling and vanishing", pool)
    # One byte a second: cut off at the request deadline, while a good client is served meanwhile.
    slow = pool.connect(timeout=10)
    started = time.monotonic()
    answer = None
    try:
        for byte in b'{"op":"status"}':
            slow.sendall(bytes([byte]))
            if time.monotonic() - started > 1.2 and time.monotonic() - started < 1.5:
                f.check("a good client while one trickles", pool.good_restore())
            time.sleep(0.25)
        slow.sendall(b"\n")
        answer = read_answer(slow)
    except (BrokenPipeError, ConnectionResetError):
        pass
    cut = time.monotonic() - started
    slow.close()
    f.check(f"one byte every 0.25 s: cut off after {cut:.1f} s", (answer is None or not answer["ok"]) and cut < 6, "hangs")
    # Silent connections: closed at the idle deadline.
    idle = pool.connect(timeout=10)
    started = time.monotonic()
    answer = read_answer(idle)
    idle.close()
    f.check("an idle connection", answer is not None and not answer["ok"] and time.monotonic() - started < 6, "hangs")
    # All connection slots held: the next is told so at once; freed slots serve again.
    pool.wait_for_connections(1)  # the connections above have all been let go
    held = [pool.connect() for _ in range(16)]
    for i, s in enumerate(held):  # each answered once: each is being served, holding its slot
        s.sendall(b'{"op":"ping"}\n')
        f.check(f"connection {i} under the cap", (read_answer_line(s) or {}).get("ok"))
    answer = pool.call({"op": "ping"}, timeout=5)
    f.check(f"a connection over the cap: {answer}", answer is not None and not answer["ok"])
    for s in held:
        s.close()
    time.sleep(0.3)
    # A client that sends requests and never reads the answers.
    deaf = pool.connect()
    try:
        for _ in range(20000):
            deaf.sendall(b'{"op":"status"}\n')
    except (BrokenPipeError, ConnectionResetError, socket.timeout):
        pass
    deaf.close()
    f.check("a client that never reads", True)
    # Vanishing: half a line, a whole request then gone before the answer, a reset mid-line.
    for what, data in [("half a line", json.dumps({"op": "restore", "snapshot": str(pool.snapshot)}).encode()[:20]),
                       ("a request then gone", json.dumps({"op": "restore", "snapshot": str(pool.snapshot),
                                                           "targets": pool.targets(pool.shared_file().name)}).encode() + b"\n"),
                       ("connect and close", b"")]:
        for _ in range(20):
            s = pool.connect()
            s.sendall(data)
            s.close()
        f.check(what, True)
    for _ in range(20):
        s = pool.connect()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        s.sendall(b'{"op":"sta')
        s.close()
    f.check("reset mid-line", True)
    time.sleep(0.3)
    f.finish()


CHILD = r"""
import base64, json, os, socket, sys
sock, shm, snapshot, targets = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
def call(message):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(sock)
        s.sendall(json.dumps(message).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            part = s.recv(65536)
            if not part:
                break
            data += part
    return json.loads(data) if data else None
out = {"uid": os.getuid(), "status": call({"op": "status"})}
mine = os.path.join(shm, "child-file")
with open(mine, "wb") as f:
    f.truncate(int(sys.argv[5]))
for t in targets:
    t["handle"] = base64.b64encode(sys.argv[6].encode()).decode()
out["root_file"] = call({"op": "restore", "snapshot": snapshot, "targets": targets})
for t in targets:
    t["handle"] = base64.b64encode(b"child-file").decode()
out["own_file"] = call({"op": "restore", "snapshot": snapshot, "targets": targets})
print(json.dumps(out))
"""


def run_as(uid, pool, root_file):
    targets = pool.targets("x")
    result = subprocess.run([sys.executable, "-c", CHILD, str(pool.socket), str(pool.shm), str(pool.snapshot),
                             json.dumps(targets), str(pool.size), root_file.name],
                            user=uid, group=uid, cwd=pool.shm, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid (CI runs as root)")
def test_another_uid(pool, tmp_path):
    f = Family("another uid", pool)
    os.chmod(pool.socket, 0o666)  # let the other uid reach the socket: the peer check must stop it
    os.chmod(pool.snapshot.parent, 0o755)
    root_file = pool.shared_file()
    out = run_as(65534, pool, root_file)
    f.refused("uid 65534 not allowed: status", out["status"])
    f.refused("uid 65534 not allowed: restore", out["own_file"])
    f.check("a refused peer's bytes are never read", "not served" in (out["status"] or {}).get("error", ""))
    f.finish()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid (CI runs as root)")
def test_another_uid_reaches_only_its_own_files(serve):
    pool = serve("--allow-uids", "0,65534")
    f = Family("allowed uid, other's files", pool)
    os.chmod(pool.socket, 0o666)
    root_file = pool.shared_file()
    out = run_as(65534, pool, root_file)
    f.check("uid 65534 allowed: status", out["status"] and out["status"]["ok"])
    f.refused("uid 65534 targets root's file", out["root_file"])
    f.check("root's file untouched", not any(root_file.read_bytes()))
    own = out["own_file"]
    data = (pool.shm / "child-file").read_bytes()
    exact = all(data[t["offset"]:t["offset"] + t["length"]] == EXPECTED[pool.snapshot][t["name"]] for t in pool.tensors)
    f.check("uid 65534 restores into its own file", own and own["ok"] and exact)
    f.finish()


def publish_message(pool, handle, identity, generation=1, edit=None, **fields):
    message = {"op": "publish", "snapshot": str(pool.snapshot), "identity": identity, "generation": generation, "targets": pool.targets(handle, edit), **fields}
    return message


def publisher_memory(pool, name="publisher-memory"):
    """A publisher's "device memory": a shared file holding the snapshot's bytes at their offsets."""
    path = pool.shared_file(name=name)
    with open(path, "r+b") as f:
        for t in pool.tensors:
            f.seek(t["offset"])
            f.write(EXPECTED[pool.snapshot][t["name"]])
    return path


def test_hostile_publications(serve, tmp_path):
    from thaw_vllm import peer
    pool = serve("--allow-uids", f"{os.getuid()},65534")
    f = Family("hostile publications", pool)
    identity = peer.identity(pool.snapshot)
    memory = publisher_memory(pool)
    victim = tmp_path / "victim"
    victim.write_bytes(b"\0" * pool.size)
    (pool.shm / "link").symlink_to(memory)
    small = pool.shared_file(size=100, name="small")
    path = json.dumps(str(pool.snapshot))
    base = f'"op":"publish","snapshot":{path},"targets":{json.dumps(pool.targets(memory.name))}'
    good_identity = json.dumps(identity)
    # Fields malformed, missing, repeated, or at and past their edges.
    for field, value in [("generation", v) for v in NUMBERS] + \
                        [("allow_uids", v) for v in ["7", "null", "{}", "[-1]", "[4294967295]", "[1.5]", "[\"0\"]",
                                                     "[" + ",".join(map(str, range(65))) + "]", "[[0]]"]] + \
                        [("identity", v) for v in ["7", "null", "[]", "{}", good_identity.replace('"ino"', '"inode"'),
                                                   good_identity[:-1] + ',"size":1}',
                                                   good_identity.replace(f'"header_crc32c": {identity["header_crc32c"]}', '"header_crc32c": 4294967296'),
                                                   good_identity.replace(f'"size": {identity["size"]}', '"size": -1')]]:
        fields = {"identity": good_identity, "generation": "1"}
        fields[field] = value
        line = "{" + base + "".join(f',"{k}":{v}' for k, v in fields.items()) + "}"
        answer = pool.send_line(line.encode())
        f.refused(f"{field} = {value[:40]}", answer)
    for missing in ("identity", "generation", "targets", "snapshot"):
        message = publish_message(pool, memory.name, identity)
        del message[missing]
        f.refused(f"no {missing}", pool.call(message))
    f.refused("generation given twice", pool.send_line(("{" + base + f',"identity":{good_identity},'
                                                        '"generation":1,"generation":2}').encode()))
    # Identities of another file, and memory that does not hold the snapshot.
    f.refused("another header CRC32C", pool.call(publish_message(pool, memory.name, dict(identity, header_crc32c=(identity["header_crc32c"] + 1) % 2**32))))
    f.refused("another size", pool.call(publish_message(pool, memory.name, dict(identity, size=identity["size"] + 4096))))
    f.refused("another inode", pool.call(publish_message(pool, memory.name, dict(identity, ino=identity["ino"] + 1))))
    f.refused("another mtime", pool.call(publish_message(pool, memory.name, dict(identity, mtime_ns=identity["mtime_ns"] - 1))))
    for handle in [str(victim), f"../{tmp_path.name}/victim", "link", "missing", "..", "/dev/zero", "/proc/self/mem", "small"]:
        f.refused(f"publisher handle {handle!r}", pool.call(publish_message(pool, handle, identity)))
    for what, edit in [("offset past the end", lambda t, x: t.update(offset=pool.size)),
                       ("capacity past the end", lambda t, x: t.update(capacity=pool.size + 1)),
                       ("offset 2^63-1", lambda t, x: t.update(offset=2**63 - 1)),
                       ("capacity below the tensor", lambda t, x: t.update(capacity=x["length"] - 1)),
                       ("an unknown tensor", lambda t, x: t.update(name="nope"))]:
        f.refused(f"publish with {what}", pool.call(publish_message(pool, memory.name, identity, edit=edit)))
    twice = publish_message(pool, memory.name, identity)
    twice["targets"].append(dict(twice["targets"][0]))
    f.refused("a tensor published twice", pool.call(twice))
    f.check("nothing refused was published", pool.call({"op": "status"})["publications"] == [])
    f.check("the victim outside is untouched", not any(victim.read_bytes()))

    # A good publication, held open: a client is served from it; a lower generation cannot replace it.
    with pool.connect() as publisher:
        publisher.sendall(json.dumps(publish_message(pool, memory.name, identity, generation=5)).encode() + b"\n")
        f.check("a good publication", (read_answer(publisher) or {}).get("generation") == 5)
        publisher.sendall(json.dumps(publish_message(pool, memory.name, identity, generation=4)).encode() + b"\n")
        f.refused("a generation that does not grow", read_answer(publisher))
        client = pool.shared_file()
        answer = pool.restore(client.name)
        data = client.read_bytes()
        exact = all(data[t["offset"]:t["offset"] + t["length"]] == EXPECTED[pool.snapshot][t["name"]] for t in pool.tensors)
        f.check("served from the peer, bit-exact", answer and answer.get("served") == "peer" and exact)
        if os.geteuid() == 0:
            os.chmod(pool.socket, 0o666)
            os.chmod(pool.snapshot.parent, 0o755)
            out = run_as(65534, pool, pool.shared_file())
            f.check("uid 65534, not allowed by the publisher, is not served from its memory",
                    out["own_file"] and out["own_file"]["ok"] and out["own_file"].get("served") != "peer")
            publisher.sendall(json.dumps(publish_message(pool, memory.name, identity, generation=6, allow_uids=[65534])).encode() + b"\n")
            f.check("published again for uid 65534", (read_answer(publisher) or {}).get("generation") == 6)
            out = run_as(65534, pool, pool.shared_file())
            data = (pool.shm / "child-file").read_bytes()
            exact = all(data[t["offset"]:t["offset"] + t["length"]] == EXPECTED[pool.snapshot][t["name"]] for t in pool.tensors)
            f.check("uid 65534, allowed, is served from the peer into its own file", out["own_file"].get("served") == "peer" and exact)
            f.refused("uid 65534 still cannot target root's file", out["root_file"])
    for _ in range(100):
        if pool.call({"op": "status"})["publications"] == []:
            break
        time.sleep(0.05)
    f.check("the publication ended with its connection", pool.call({"op": "status"})["publications"] == [])
    f.finish()


# ---- hostile shares (docs/POOL.md, "Shared host copies"): descriptors are the new resource ----

def open_descriptors(pid="self"):
    return len(os.listdir(f"/proc/{pid}/fd"))


def share_on(s, message):
    """Sends one request on s; returns (answer or None, the descriptors that came with it)."""
    s.sendall((message if isinstance(message, bytes) else json.dumps(message).encode()) + b"\n")
    data, fds = b"", []
    try:
        while not data.endswith(b"\n"):
            part, got, _, _ = socket.recv_fds(s, 1 << 16, 256)
            fds += got
            if not part:
                break
            data += part
    except ConnectionResetError:
        pass
    return (json.loads(data) if data.endswith(b"\n") else None), fds


def shared_bytes(fds, lengths):
    """The shared copy as the client sees it: the chunks mapped back to back, read-only."""
    import mmap
    out = b""
    for fd, length in zip(fds, lengths):
        with mmap.mmap(fd, length, prot=mmap.PROT_READ) as m:
            out += m[:]
    return out


def close_all(fds):
    for fd in fds:
        os.close(fd)


def settle_descriptors(pid, start, seconds=5):
    """The pool's open descriptors once they stop falling (connections are closed asynchronously)."""
    deadline = time.monotonic() + seconds
    n = open_descriptors(pid)
    while n > start and time.monotonic() < deadline:
        time.sleep(0.05)
        n = open_descriptors(pid)
    return n


def exact_share(pool, answer, fds, expected=None):
    """A share answer whose descriptors hold the snapshot's bytes at their offsets."""
    expected = expected or EXPECTED[pool.snapshot]
    if not (answer and answer.get("ok")) or len(fds) != len(answer["chunks"]):
        return False
    data = shared_bytes(fds, answer["chunks"])
    return all(data[t["offset"]:t["offset"] + t["length"]] == expected[t["name"]] for t in pool.tensors)


def share_request(pool, snapshot=None, **fields):
    return {"op": "share", "snapshot": str(snapshot or pool.snapshot), **fields}


def test_hostile_shares(serve, tmp_path):
    from thaw_vllm import peer
    pool = serve("--request-timeout-s", "4")
    f = Family("hostile shares", pool)
    pid = pool.process.pid
    with pool.connect() as s:  # warm: the first share's one-time costs are not a leak
        answer, fds = share_on(s, share_request(pool))
        f.check("a good share is served bit-exactly", exact_share(pool, answer, fds))
        close_all(fds)
    pool.wait_for_connections(1)
    start_fds = settle_descriptors(pid, 0, 0.3)
    identity = peer.identity(pool.snapshot)
    other = tmp_path / "not-held.thaw"
    thaw_vllm.freeze({"x": torch.arange(1000, dtype=torch.int32)}, other)
    # Malformed and unknown: every one refused with an answer, no descriptor sent.
    cases = [("no snapshot", {"op": "share"}), ("snapshot 7", {"op": "share", "snapshot": 7}),
             ("snapshot \"\"", {"op": "share", "snapshot": ""}), ("relative", share_request(pool, "m.thaw")),
             ("missing file", share_request(pool, tmp_path / "missing.thaw")), ("/etc/passwd", share_request(pool, "/etc/passwd")),
             ("/dev/zero", share_request(pool, "/dev/zero")), ("a directory", share_request(pool, tmp_path)),
             ("unknown device", share_request(pool, device="cuda:GPU-nope")), ("device 7", share_request(pool, device=7)),
             ("device with a space", share_request(pool, device="mock 0")),
             ("identity 7", share_request(pool, identity=7)), ("identity {}", share_request(pool, identity={})),
             ("identity without size", share_request(pool, identity={k: v for k, v in identity.items() if k != "size"})),
             ("another header CRC32C", share_request(pool, identity=dict(identity, header_crc32c=(identity["header_crc32c"] + 1) % 2**32))),
             ("another inode", share_request(pool, identity=dict(identity, ino=identity["ino"] + 1))),
             ("another mtime", share_request(pool, identity=dict(identity, mtime_ns=identity["mtime_ns"] - 1))),
             ("size -1", share_request(pool, identity=dict(identity, size=-1)))]
    with pool.connect() as s:
        for what, message in cases:
            answer, fds = share_on(s, message)
            close_all(fds)
            f.refused(f"share with {what}", answer)
            f.check(f"share with {what}: an answer, no descriptors", answer is not None and fds == [])
        answer, fds = share_on(s, share_request(pool, other))
        close_all(fds)
        f.check("a snapshot not held: kind 3", answer is not None and answer.get("kind") == 3 and fds == [])
    held = [e["snapshot"] for e in pool.call({"op": "status"})["snapshots"]]
    f.check("a share never fills", str(other) not in held)
    # The same snapshot shared up to the cap on one connection; the next refused, saying why.
    with pool.connect() as s:
        served = 0
        for i in range(64):
            answer, fds = share_on(s, share_request(pool))
            served += bool(answer and answer.get("ok") and len(fds) == len(answer["chunks"]))
            close_all(fds)
        f.check(f"64 shares of one snapshot on one connection: {served} served", served == 64)
        answer, fds = share_on(s, share_request(pool))
        close_all(fds)
        f.check(f"the 65th share refused clearly: {answer}", answer is not None and not answer["ok"] and "at most 64" in answer["error"] and fds == [])
        f.check("a held snapshot is not evicted", pool.call({"op": "evict", "snapshot": str(pool.snapshot)})["evicted"] is False)
        for what, message in [("an unknown path", {"op": "unshare", "snapshot": str(other)}), ("no snapshot", {"op": "unshare"}),
                              ("snapshot 7", {"op": "unshare", "snapshot": 7}), ("relative", {"op": "unshare", "snapshot": "m.thaw"}),
                              ("garbage", {"op": "unshare", "snapshot": "\u0001" * 5000})]:
            answer, fds = share_on(s, message)
            f.check(f"unshare of {what}: {answer}", answer is not None and fds == [] and (not answer["ok"] or answer["released"] == 0))
        answer, _ = share_on(s, {"op": "unshare", "snapshot": str(pool.snapshot)})
        f.check(f"unshare lets go of all 64: {answer}", answer and answer.get("released") == 64)
        f.check("evict once unshared", pool.call({"op": "evict", "snapshot": str(pool.snapshot)})["evicted"] is True)
        f.check("load again", pool.call({"op": "load", "snapshot": str(pool.snapshot)})["ok"])
        answer, fds = share_on(s, share_request(pool))
        f.check("shares again after unshare", exact_share(pool, answer, fds))
        close_all(fds)
    # Asks and goes without reading the answer; asks and never reads (pipelined shares fill its
    # socket); many connections holding shares, then closing: none of them keeps a hold.
    for _ in range(20):
        s = pool.connect()
        s.sendall(json.dumps(share_request(pool)).encode() + b"\n")
        s.close()
    f.check("share, then gone before the answer", True)
    stalls = []
    line = (json.dumps(share_request(pool)) + "\n" + json.dumps({"op": "unshare", "snapshot": str(pool.snapshot)}) + "\n").encode()

    def stall():
        s = pool.connect()
        stalls.append(s)
        try:
            for _ in range(3000):
                s.sendall(line)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            pass

    stallers = [threading.Thread(target=stall) for _ in range(16)]
    for t in stallers:
        t.start()
    time.sleep(0.5)  # their share answers have filled their sockets: each send waits for room
    slowest = 0.0
    for _ in range(6):
        started = time.monotonic()
        answer = pool.call({"op": "ping"})
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.2)
    f.check(f"pings while 16 connections stall on share answers: the slowest {slowest:.2f} s", answer and answer["ok"] and slowest < 0.4, "hangs")
    f.check("a good client while 16 connections stall on share answers", pool.good_restore(), "hangs")
    for t in stallers:
        t.join()
    held = []
    for _ in range(12):
        s = pool.connect()
        for _ in range(4):
            answer, fds = share_on(s, share_request(pool))
            close_all(fds)
        held.append(s)
    f.check("12 connections hold 4 shares each: not evicted", pool.call({"op": "evict", "snapshot": str(pool.snapshot)})["evicted"] is False)
    for s in held + stalls:
        s.close()
    pool.wait_for_connections(1)
    evicted = False
    for _ in range(50):  # the stalled connections have ended at their request deadline
        evicted = pool.call({"op": "evict", "snapshot": str(pool.snapshot)})["evicted"]
        if evicted:
            break
        time.sleep(0.1)
    f.check("every hold let go once its connection closed: evicted", evicted)
    f.check("load again", pool.call({"op": "load", "snapshot": str(pool.snapshot)})["ok"])
    fds_after = settle_descriptors(pid, start_fds)
    f.check(f"the pool's descriptors: {start_fds} before, {fds_after} after", fds_after <= start_fds, "leaks")
    f.finish()


def test_shares_while_the_snapshot_is_replaced(serve, tmp_path):
    """Shares race evictions and replacements of the file on disk: a share served is always the
    bytes of the file the client named by identity, never a stale copy."""
    from thaw_vllm import peer
    pool = serve()
    f = Family("shares while replaced", pool)
    pid = pool.process.pid
    start_fds = open_descriptors(pid)
    path = tmp_path / "replaced.thaw"
    versions, by_inode = [], {}
    for k in range(4):
        state = {"w": torch.full((20000,), float(k)), "k": torch.tensor([k], dtype=torch.int64)}
        versions.append({n: t.reshape(-1).view(torch.uint8).numpy().tobytes() for n, t in state.items()})
        thaw_vllm.freeze(state, tmp_path / f"v{k}.thaw")
    tensors = thaw_vllm.info(tmp_path / "v0.thaw")["tensors"]
    shutil.copy(tmp_path / "v0.thaw", path)
    by_inode[path.stat().st_ino] = 0
    assert pool.call({"op": "load", "snapshot": str(path)})["ok"]
    stop = threading.Event()
    results = {"served": 0, "stale": 0, "refused": 0}

    def replace():
        k = 0
        while not stop.is_set():
            k = (k + 1) % 4
            fresh = tmp_path / f"next-{k}.thaw"
            shutil.copy(tmp_path / f"v{k}.thaw", fresh)
            by_inode[fresh.stat().st_ino] = k
            os.replace(fresh, path)
            pool.call({"op": "evict", "snapshot": str(path)})
            pool.call({"op": "load", "snapshot": str(path)})
            time.sleep(0.01)

    replacer = threading.Thread(target=replace)
    replacer.start()
    try:
        with pool.connect() as s:
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                try:
                    ino = os.stat(path).st_ino
                    identity = peer.identity(path)
                except (OSError, thaw_vllm.errors.ThawError):
                    continue
                if identity["ino"] != ino or ino not in by_inode:
                    continue
                answer, fds = share_on(s, share_request(pool, path, identity=identity))
                if answer and answer.get("ok"):
                    data = shared_bytes(fds, answer["chunks"])
                    exact = all(data[t["offset"]:t["offset"] + t["length"]] == versions[by_inode[ino]][t["name"]] for t in tensors)
                    results["served" if exact else "stale"] += 1
                    share_on(s, {"op": "unshare", "snapshot": str(path)})
                else:
                    results["refused"] += 1
                close_all(fds)
    finally:
        stop.set()
        replacer.join()
    f.check(f"shares during replacements: {results}", results["stale"] == 0 and results["served"] > 0)
    # The file changes in place (same inode): the held copy is retired, the old identity refused.
    old = peer.identity(path)
    answer, fds = pool.call({"op": "load", "snapshot": str(path)}), []
    with open(path, "r+b") as out, open(tmp_path / "v1.thaw", "rb") as v1:
        out.write(v1.read())
    os.utime(path, ns=(old["mtime_ns"] + 10**9, old["mtime_ns"] + 10**9))
    with pool.connect() as s:
        answer, fds = share_on(s, share_request(pool, path, identity=old))
        close_all(fds)
        f.check(f"the old identity after an in-place change: {answer}", answer is not None and answer.get("kind") == 3 and fds == [])
        answer, fds = share_on(s, share_request(pool, path))
        close_all(fds)
        f.check("no identity after an in-place change: kind 3 (the held copy is stale)", answer is not None and answer.get("kind") == 3)
    fds_after = settle_descriptors(pid, start_fds)
    f.check(f"the pool's descriptors: {start_fds} before, {fds_after} after", fds_after <= start_fds, "leaks")
    f.finish()


SHARE_CHILD = r"""
import base64, json, os, socket, sys
sock, snapshot, targets, size = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
def call(s, message):
    s.sendall(json.dumps(message).encode() + b"\n")
    data, fds = b"", []
    while not data.endswith(b"\n"):
        part, got, _, _ = socket.recv_fds(s, 65536, 256)
        fds += got
        if not part:
            break
        data += part
    for fd in fds:
        os.close(fd)
    return json.loads(data) if data else None, len(fds)
with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
    s.settimeout(10)
    s.connect(sock)
    share, fds = call(s, {"op": "share", "snapshot": snapshot})
    with open("child-share-file", "wb") as f:
        f.truncate(size)
    for t in targets:
        t["handle"] = base64.b64encode(b"child-share-file").decode()
    restore, _ = call(s, {"op": "restore", "snapshot": snapshot, "targets": targets})
print(json.dumps({"share": share, "fds": fds, "restore": restore}))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid (CI runs as root)")
def test_another_uid_is_not_shared(serve):
    pool = serve("--allow-uids", f"{os.getuid()},65534")
    f = Family("share from another uid", pool)
    os.chmod(pool.socket, 0o666)
    os.chmod(pool.snapshot.parent, 0o755)
    start_fds = open_descriptors(pool.process.pid)
    result = subprocess.run([sys.executable, "-c", SHARE_CHILD, str(pool.socket), str(pool.snapshot), json.dumps(pool.targets("x")),
                             str(pool.size)], user=65534, group=65534, cwd=pool.shm, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    f.check(f"uid 65534's share: kind 13, no descriptors: {out['share']}",
            out["share"] and not out["share"]["ok"] and out["share"]["kind"] == 13 and out["fds"] == 0)
    data = (pool.shm / "child-share-file").read_bytes()
    exact = all(data[t["offset"]:t["offset"] + t["length"]] == EXPECTED[pool.snapshot][t["name"]] for t in pool.tensors)
    f.check("uid 65534 then restores through the pool's copies, bit-exactly", out["restore"] and out["restore"]["ok"] and exact)
    fds_after = settle_descriptors(pool.process.pid, start_fds)
    f.check(f"the pool's descriptors: {start_fds} before, {fds_after} after", fds_after <= start_fds, "leaks")
    f.finish()


# ---- a hostile pool's shares: the client maps nothing it was lied to about ----

MIB2 = 2 << 20


def sealed_memfd(data: bytes, length: int, seal=True):
    import fcntl
    fd = os.memfd_create("fake-share", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, length)
    os.pwrite(fd, data, 0)
    if seal:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
    return fd


class FakePool:
    """A pool that lies in its share answers (answer(conn, data) sends them); ping answers its
    shm_dir and restore says "not held", as the real pool's do (PoolServer.Handle)."""

    def __init__(self, directory: Path, data: bytes, answer):
        self.path = directory / f"fake-{os.urandom(4).hex()}.sock"
        self.data, self.answer = data, answer
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.path))
        self.listener.listen(8)
        self.listener.settimeout(0.1)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve)
        self.thread.start()

    def _serve(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(5)
                buffered = b""
                try:
                    while True:
                        while b"\n" not in buffered:
                            part = conn.recv(1 << 16)
                            if not part:
                                raise EOFError
                            buffered += part
                        line, buffered = buffered.split(b"\n", 1)
                        op = json.loads(line).get("op")
                        if op == "share":
                            if self.answer(conn, self.data) == "close":
                                break
                        elif op == "ping":
                            conn.sendall(json.dumps({"ok": True, "shm_dir": str(self.path.parent)}).encode() + b"\n")
                        else:
                            conn.sendall(b'{"ok":false,"kind":3,"error":"the fake pool holds nothing"}\n')
                except (EOFError, OSError, ValueError):
                    pass

    def stop(self):
        self.stopping.set()
        self.thread.join()
        self.listener.close()
        self.path.unlink()


def lie(chunks, fds_of, extra=None, line=None):
    """An answer: the announced chunks with the descriptors fds_of(data) makes (closed after sending)."""
    def answer(conn, data):
        fds = fds_of(data)
        try:
            body = line if line is not None else json.dumps({"ok": True, "served": "share", "snapshot": "x", "bytes": len(data),
                                                             "device": "mock:0", "chunks": chunks, **(extra or {})}).encode() + b"\n"
            socket.send_fds(conn, [body], fds) if fds else conn.sendall(body)
        finally:
            close_all(fds)
    return answer


def test_a_hostile_pools_shares(snapshot, tmp_path):
    header = thaw_vllm.info(snapshot)
    data = snapshot.read_bytes()[header["data_offset"]:header["file_length"]]
    expected = EXPECTED[snapshot]
    good = lambda d: [sealed_memfd(d, MIB2)]

    def partial_then_rest(conn, d):
        body = json.dumps({"ok": True, "served": "share", "snapshot": "x", "bytes": len(d), "device": "mock:0", "chunks": [MIB2]}).encode() + b"\n"
        fds = good(d)
        socket.send_fds(conn, [body[:10]], fds)
        close_all(fds)
        time.sleep(0.3)
        conn.sendall(body[10:])

    def regular_file(d):
        path = tmp_path / f"plain-{os.urandom(4).hex()}"
        path.write_bytes(d + b"\0" * (MIB2 - len(d)))
        fd = os.open(path, os.O_RDONLY)
        path.unlink()
        return [fd]

    def pipe(d):
        r, w = os.pipe()
        os.close(w)
        return [r]

    cases = [
        ("truthful (the double works)", lie([MIB2], good), True),
        ("more descriptors than chunks", lie([MIB2], lambda d: good(d) + good(d)), False),
        ("fewer descriptors than chunks", lie([MIB2, MIB2], good), False),
        ("no descriptors", lie([MIB2], lambda d: []), False),
        ("a chunk not a multiple of 2 MiB", lie([MIB2 + 4096], lambda d: [sealed_memfd(d, MIB2 + 4096)]), False),
        ("a huge chunk", lie([2**62], good), False),
        ("chunks of 2^63-1 and 1", lie([2**63 - 1, 1], lambda d: good(d) + good(d)), False),
        ("241 chunks", lie([MIB2] * 241, lambda d: [sealed_memfd(d, MIB2) for _ in range(241)]), False),
        ("a chunk of 0 bytes", lie([0], good), False),
        ("a negative chunk", lie([-MIB2], good), False),
        ("chunks as strings", lie(["2097152"], good), False),
        ("bytes announced wrong", lie([MIB2], good, {"bytes": len(data) + 1}), False),
        ("a memfd smaller than announced", lie([MIB2], lambda d: [sealed_memfd(d, 4096)]), False),
        ("a memfd the pool could still shrink (unsealed)", lie([MIB2], lambda d: [sealed_memfd(d, MIB2, seal=False)]), False),
        ("a regular file", lie([MIB2], regular_file), False),
        ("a pipe", lie([MIB2], pipe), False),
        ("/dev/null", lie([MIB2], lambda d: [os.open("/dev/null", os.O_RDONLY)]), False),
        ("an error answer with descriptors", lie([MIB2], good, line=b'{"ok":false,"kind":3,"error":"no"}\n'), False),
        ("not JSON, with descriptors", lie([MIB2], good, line=b"this is not json\n"), False),
        ("a JSON array", lie([MIB2], good, line=b"[1,2]\n"), False),
        ("a line without newline, then close", lambda c, d: (lie([MIB2], good, line=b'{"ok":true,"chunks":[2097152]')(c, d), "close")[1], False),
        ("a line of 70 KiB", lie([MIB2], good, line=b'{"ok":true,"x":"' + b"x" * (70 << 10) + b'"}\n'), False),
        ("close without answering", lambda c, d: "close", False),
        ("descriptors with the first 10 bytes, the rest 0.3 s later", partial_then_rest, None),
    ]
    results = {}
    warmed = False
    for what, answer, shared in cases:
        state = {n: torch.zeros_like(t) for n, t in thaw_vllm.load_state_dict(snapshot).items()}
        before = open_descriptors()
        fake = FakePool(tmp_path, data, answer)
        started = time.monotonic()
        try:
            stats = thaw_vllm.restore_into(state, snapshot, pool=str(fake.path))
            outcome = stats["source"] + (" shared" if stats.get("shared") else "")
        except thaw_vllm.errors.ThawError as e:
            outcome = f"error: {e}"
        elapsed = time.monotonic() - started
        fake.stop()
        exact = all(t.reshape(-1).view(torch.uint8).numpy().tobytes() == expected[n] for n, t in state.items())
        after = open_descriptors()
        if not warmed:  # the first restore opens the runtime's own descriptors for good
            warmed = True
        else:
            assert after == before, f"{what}: {before} descriptors before, {after} after ({outcome})"
        results[what] = outcome
        assert elapsed < 5, f"{what}: {elapsed:.1f} s ({outcome})"
        if outcome.startswith("error"):
            assert "Traceback" not in outcome and "System." not in outcome, f"{what}: {outcome}"
        else:
            assert exact, f"{what}: restored bytes differ ({outcome})"
        if shared is not None:
            assert (outcome == "pool shared") == shared, f"{what}: {outcome}"
    COUNTS["a hostile pool's shares"] = {"cases": len(cases), "crashes": 0, "hangs": 0, "leaks": 0, "wrong acceptances": 0,
                                         "rss_before_mib": 0, "rss_after_mib": 0}
    write_report()
