"""Tensor parallelism on the mock device: every rank's own file (docs/FORMAT.md, "Ranks")
restored by its own process, all ranks at once — from the files, and through one pool that
serves every rank together; each rank bit-identical to what was frozen for it."""
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import thaw_vllm
from thaw_vllm import pool
from thaw_vllm.vllm_config import Ranks, rank_file

REPO = Path(__file__).resolve().parents[2]
THAW = REPO / "build" / "publish" / "cli" / "thaw"
WORKER = Path(__file__).with_name("tp_worker.py")


def digest(tensor):
    return hashlib.sha256(tensor.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def freeze_ranks(directory, world):
    """A column-parallel weight split over the ranks, plus a replicated norm: each rank's file
    differs, so a rank that read another's would be caught."""
    g = torch.Generator().manual_seed(7)
    weight = torch.randn(512, 96 * world, generator=g).to(torch.bfloat16)
    norm = torch.randn(512, generator=g)
    expected = []
    for rank in range(world):
        state = {"mlp.up.weight": weight[:, 96 * rank:96 * (rank + 1)].contiguous(), "norm.weight": norm,
                 "step": torch.tensor([rank], dtype=torch.int64)}
        thaw_vllm.freeze(state, rank_file(directory, Ranks(tp_rank=rank, tp_world=world)), tp_rank=rank, tp_world_size=world)
        expected.append({n: digest(t) for n, t in state.items()})
    return expected


def run_ranks(tmp_path, directory, world, mode, **extra):
    out = tmp_path / f"out-{mode}"
    out.mkdir()
    spec = tmp_path / f"spec-{mode}.json"
    spec.write_text(json.dumps({"snapshot": str(directory), "world": world, "mode": mode, "out": str(out), **extra}))
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(spec), str(r)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for r in range(world)]
    try:
        deadline = time.monotonic() + 120
        while not all((out / f"ready{r}").exists() for r in range(world)) and time.monotonic() < deadline:
            time.sleep(0.02)
        (out / "go").touch()  # every rank is up: they restore together
        logs = [p.communicate(timeout=120)[0].decode(errors="replace") for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0] * world, logs
    return [json.loads((out / f"tp{r}.json").read_text()) for r in range(world)]


def test_four_ranks_restore_their_own_files_at_once(tmp_path):
    directory = tmp_path / "snapshot"
    directory.mkdir()
    expected = freeze_ranks(directory, 4)
    results = run_ranks(tmp_path, directory, 4, "file")
    for rank, result in enumerate(results):
        assert Path(result["file"]).name == f"weights.tp{rank}.thaw"
        assert (result["tp_rank"], result["tp_world_size"]) == (rank, 4)
        assert result["served"] == "file" and result["digests"] == expected[rank], rank


def test_one_pool_serves_every_rank_at_once_each_on_its_own_device(tmp_path):
    if not THAW.is_file():
        pytest.skip("build/publish/cli/thaw is not built (scripts/build.sh)")
    directory = tmp_path / "snapshot"
    directory.mkdir()
    world = 3
    expected = freeze_ranks(directory, world)
    socket_path, shm = tmp_path / "pool.sock", tmp_path / "shm"
    shm.mkdir()
    server = subprocess.Popen([str(THAW), "pool", "serve", "--socket", str(socket_path), "--device", "mock",
                               "--budget-mib", "64", "--shm-dir", str(shm)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(200):
            if socket_path.exists():
                break
            time.sleep(0.05)
        for rank in range(world):
            pool.load(rank_file(directory, Ranks(tp_rank=rank, tp_world=world)), socket_path)
        results = run_ranks(tmp_path, directory, world, "pool", socket=str(socket_path), shm_dir=str(shm))
        status = pool.status(socket_path)
        held = {Path(s["snapshot"]).name: s["hits"] for s in status["snapshots"]}
        devices = {d["device"]: (d["restores"], d["bytes"]) for d in status["devices"]}
    finally:
        server.terminate()
        server.wait(timeout=10)
    for rank, result in enumerate(results):
        assert result["served"] == "pool" and result["digests"] == expected[rank], rank
    assert held == {f"weights.tp{r}.thaw": 1 for r in range(world)}
    # Every rank's restore ran on the pool's engine for that rank's device (each counted there).
    rank_bytes = thaw_vllm.info(rank_file(directory, Ranks(tp_rank=0, tp_world=world)))["tensor_bytes"]
    assert devices == {f"mock-{r}": (1, rank_bytes) for r in range(world)}
