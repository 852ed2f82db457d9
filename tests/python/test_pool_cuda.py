"""On a GPU: restores through a CUDA pool give their memory back. The pool opens each
allocation by the core's own IPC handle, so torch frees the memory as usual: after five
restores into fresh allocations, deleted and emptied each time, nothing stays allocated.
(Handles taken through torch's storage._share_cuda_() kept every restore allocated.)
Skipped without CUDA; run on the GPU machine with `python3 -m pytest tests/python/test_pool_cuda.py`."""
import subprocess
import time
from pathlib import Path

import pytest
import torch

import thaw_vllm
from thaw_vllm import pool

REPO = Path(__file__).resolve().parents[2]
THAW = REPO / "build" / "publish" / "cli" / "thaw"

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def cuda_pool(tmp_path):
    if not THAW.is_file():
        pytest.skip("build/publish/cli/thaw is not built (scripts/build.sh)")
    socket_path = tmp_path / "pool.sock"
    process = subprocess.Popen([str(THAW), "pool", "serve", "--socket", str(socket_path), "--device", "cuda",
                                "--budget-mib", "2048"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        if socket_path.exists():
            break
        time.sleep(0.05)
    yield socket_path
    process.terminate()
    process.wait(timeout=30)


def test_five_pool_restores_leave_nothing_allocated(tmp_path, cuda_pool):
    reference = {f"w{i}": torch.randn(1 << 20, dtype=torch.float16, device="cuda") for i in range(24)}  # 48 MiB
    snapshot = tmp_path / "m.thaw"
    thaw_vllm.freeze(reference, snapshot)
    pool.load(snapshot, cuda_pool)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    allocated, reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    for _ in range(5):
        target = {n: torch.empty_like(t) for n, t in reference.items()}
        stats = pool.restore_tensors(target, snapshot, cuda_pool)
        assert stats["via"] == "pool hit"
        assert all(torch.equal(target[n], reference[n]) for n in reference)
        del target
        torch.cuda.empty_cache()
        assert torch.cuda.memory_allocated() == allocated
        assert torch.cuda.memory_reserved() <= reserved
