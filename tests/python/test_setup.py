"""scripts/setup.sh, which the README's demo and test commands run first: it installs exactly what
is missing, through apt-get (here a recording stand-in on PATH), and touches nothing when all is present."""
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHON_PACKAGES = ["python3-torch", "python3-pytest", "python3-numpy", "python3-setuptools",
                   "python3-wheel", "python3-venv", "python3-pip"]


def run_setup(tmp_path, purpose, python=None, **env):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "apt.log"
    fake_apt = bin_dir / "apt-get"
    fake_apt.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    fake_apt.chmod(0o755)
    environment = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", **env}
    if python is not None:
        environment["THAW_TEST_PYTHON"] = str(python)
    r = subprocess.run([str(REPO / "scripts" / "setup.sh"), purpose], capture_output=True, text=True, env=environment)
    return r, log.read_text().splitlines() if log.exists() else []


def python_without_modules(tmp_path):
    """A python whose every import fails, as on a fresh machine without Debian's python3-* packages."""
    python = tmp_path / "bare-python"
    python.write_text("#!/bin/sh\nexit 1\n")
    python.chmod(0o755)
    return python


def test_nothing_is_installed_when_everything_is_present(tmp_path):
    # The suite itself runs after setup.sh test, so on this machine everything it checks is present.
    r, apt = run_setup(tmp_path, "test")
    assert r.returncode == 0 and apt == [] and r.stderr == ""


def test_missing_python_modules_are_installed_from_debian(tmp_path):
    r, apt = run_setup(tmp_path, "test", python=python_without_modules(tmp_path))
    assert r.returncode == 0, r.stderr
    assert apt == ["update -qq", "install -y -qq --no-install-recommends " + " ".join(PYTHON_PACKAGES)]
    assert "installing python3-torch" in r.stderr


def test_the_demo_needs_no_python(tmp_path):
    r, apt = run_setup(tmp_path, "demo", python=python_without_modules(tmp_path))
    assert r.returncode == 0 and apt == []


def test_no_install_only_reports(tmp_path):
    r, apt = run_setup(tmp_path, "test", python=python_without_modules(tmp_path), THAW_NO_INSTALL="1")
    assert r.returncode == 1 and apt == []
    assert "python3-pytest" in r.stderr and "THAW_NO_INSTALL=1" in r.stderr


def test_an_unknown_purpose_is_a_usage_error(tmp_path):
    r, apt = run_setup(tmp_path, "everything")
    assert r.returncode == 2 and apt == []
