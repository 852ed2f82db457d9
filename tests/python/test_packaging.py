"""The wheel builds with one command and installs into a fresh virtual environment,
with no .NET, no CUDA toolkit and no repository on the path."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel():
    subprocess.run([str(REPO / "scripts" / "build_wheel.sh")], check=True, capture_output=True,
                   env={**os.environ, "THAW_WHEEL_PYTHON": sys.executable})
    wheels = sorted((REPO / "dist").glob("thaw_vllm-*-py3-none-linux_x86_64.whl"))
    assert wheels, "scripts/build_wheel.sh produced no wheel"
    return wheels[-1]


def test_wheel_installs_and_works_in_a_fresh_venv(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python, thaw = venv / "bin" / "python", venv / "bin" / "thaw"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-index", "--no-deps", str(wheel)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "THAW_LIBRARY")}

    def run(*args):
        return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout

    assert "thaw 0.1.0" in run(str(thaw), "--version")
    plugins = run(str(python), "-c", "from importlib.metadata import entry_points as e; "
                  "print([p.value for p in e(group='vllm.general_plugins')])")
    assert "thaw_vllm.vllm_loader:register" in plugins
    run(str(thaw), "generate", str(tmp_path / "ckpt"), "--size-mib", "16", "--shards", "1", "--quiet")
    run(str(python), "-c", "import sys, thaw_vllm; thaw_vllm.convert(sys.argv[1], sys.argv[2]); thaw_vllm.verify(sys.argv[2])",
        str(tmp_path / "ckpt"), str(tmp_path / "m.thaw"))
    info = run(str(python), "-c", "import sys, thaw_vllm; h = thaw_vllm.info(sys.argv[1]); print(len(h['tensors']))",
               str(tmp_path / "m.thaw"))
    assert int(info) > 5
    assert "tensors" in run(str(thaw), "info", str(tmp_path / "m.thaw"))
    no_vllm = subprocess.run([str(thaw), "freeze", "--model", "m", "--output", str(tmp_path / "s")],
                             cwd=tmp_path, env=env, capture_output=True, text=True)
    assert no_vllm.returncode == 1 and "needs vLLM" in no_vllm.stderr
    where = run(str(python), "-c", "import thaw_vllm._native as n; print(n.library()._name)")
    assert str(venv) in where, "the installed package loads its own libthaw.so"
