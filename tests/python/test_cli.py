"""The native `thaw` executable's command line: help, version, completion, exit codes, JSON output."""
import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

import thaw_vllm

REPO = Path(__file__).resolve().parents[2]
THAW = REPO / "build" / "publish" / "cli" / "thaw"
COMMANDS = [["convert"], ["info"], ["verify"], ["restore"], ["generate"], ["freeze"], ["completion"],
            ["pool"], ["pool", "serve"], ["pool", "load"], ["pool", "evict"], ["pool", "status"], ["pool", "list"]]


def thaw(*args, cwd=None):
    if not THAW.is_file():
        pytest.skip("build/publish/cli/thaw is not built (scripts/build.sh)")
    return subprocess.run([str(THAW), *map(str, args)], capture_output=True, text=True, timeout=60, cwd=cwd)


@pytest.fixture
def snapshot(tmp_path):
    path = tmp_path / "m.thaw"
    thaw_vllm.freeze({"w": torch.randn(64, 3), "b": torch.arange(10, dtype=torch.int32)}, path)
    return path


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_that_exits_0(command):
    for form in (["--help"], ["-h"]):
        r = thaw(*command, *form)
        assert r.returncode == 0, r.stderr
        name = " ".join(command).replace("pool list", "pool status")  # list is status's alias
        assert f"thaw {name}" in r.stdout and "Usage:" in r.stdout and r.stdout.endswith("\n")
    assert thaw("help", *command).stdout == thaw(*command, "--help").stdout


def test_restore_help_lists_every_flag():
    text = thaw("restore", "--help").stdout
    for flag in ("--device <mock|cuda>", "--ordinal", "--io <auto|buffered|direct|zerocopy>", "--verify", "--no-verify", "--check", "--repeat",
                 "--pool <auto|off|SOCKET>", "--threads", "--chunk-mib", "--staging-mib", "--quiet"):
        assert flag in text


def test_no_command_prints_usage_and_exits_2():
    r = thaw()
    assert r.returncode == 2 and "Commands:" in r.stdout and "restore <snapshot>" in r.stdout


def test_version():
    for form in ("--version", "version"):
        r = thaw(form)
        assert r.returncode == 0 and re.fullmatch(r"thaw \d+\.\d+\.\d+ \(snapshot format v1\)\n", r.stdout), r.stdout


@pytest.mark.parametrize("args, says", [
    (["restore", "x.thaw", "--repeat", "0"], "--repeat must be an integer in [1, 1000], not '0'"),
    (["restore", "x.thaw", "--io", "fast"], "--io must be one of auto|buffered|direct|zerocopy, not 'fast'"),
    (["restore", "x.thaw", "--device", "tpu"], "--device must be one of mock|cuda, not 'tpu'"),
    (["restore", "x.thaw", "--threads", "many"], "--threads must be an integer in [0, 64], not 'many'"),
    (["restore", "x.thaw", "--bogus"], "unrecognized command or argument '--bogus'"),
    (["restore"], "required argument 'snapshot' missing"),
    (["restore", "x.thaw", "--pool"], "--pool"),
    (["convert", "only-one"], "required argument 'output' missing"),
    (["frobnicate"], "unrecognized command or argument 'frobnicate'"),
    (["pool"], "required command was not provided"),
    (["pool", "serve", "--allow-uids", "root"], "--allow-uids must be comma-separated user ids, not 'root'"),
    (["completion", "fish"], "shell must be one of bash|zsh, not 'fish'"),
])
def test_usage_errors_are_one_line_and_exit_2(args, says):
    r = thaw(*args)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("thaw: error: ") and says in r.stderr, r.stderr
    assert "--help')" in r.stderr


def test_failures_are_one_line_and_exit_1(tmp_path, snapshot):
    missing = thaw("info", tmp_path / "absent.thaw")
    assert missing.returncode == 1 and missing.stderr.startswith("thaw: error: ") and missing.stderr.count("\n") == 1
    assert "absent.thaw" in missing.stderr
    corrupt = tmp_path / "corrupt.thaw"
    corrupt.write_bytes(snapshot.read_bytes()[:5000])
    r = thaw("verify", corrupt, "--quiet")
    assert r.returncode == 1 and r.stderr.startswith("thaw: error: ") and "corrupt.thaw" in r.stderr and "   at " not in r.stderr
    no_vllm = thaw("freeze", "--model", "m", "--output", tmp_path / "s")
    assert no_vllm.returncode == 1 and "needs vLLM" in no_vllm.stderr


def test_verify_names_the_corrupt_tensor(tmp_path, snapshot):
    info = thaw_vllm.info(snapshot)
    tensor = next(t for t in info["tensors"] if t["name"] == "b")
    data = bytearray(snapshot.read_bytes())
    data[info["data_offset"] + tensor["offset"] + 3] ^= 0x10
    corrupt = tmp_path / "flipped.thaw"
    corrupt.write_bytes(bytes(data))
    r = thaw("verify", corrupt, "--quiet")
    assert r.returncode == 1 and "tensor 'b'" in r.stderr and "flipped.thaw" in r.stderr, r.stderr


def test_info_json_is_the_header_python_sees(snapshot):
    r = thaw("info", snapshot, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == thaw_vllm.info(snapshot)


def test_flags_take_either_spelling_and_restore_checks(snapshot):
    r = thaw("restore", snapshot, "--device=mock", "--io", "buffered", "--repeat", "2", "--check", "--threads=2")
    assert r.returncode == 0, r.stderr
    assert "median:" in r.stdout and "check: all 2 tensors are bit-identical" in r.stdout


def test_restore_borrow_names_the_links_and_refuses_the_destination(snapshot):
    r = thaw("restore", snapshot, "--device=mock", "--ordinal", "2", "--pool", "off", "--borrow", "0,5", "--check")
    assert r.returncode == 0, r.stderr
    assert "links: mock-2 " in r.stdout and " borrowed, mock-5 " in r.stdout and "bit-identical" in r.stdout
    r = thaw("restore", snapshot, "--device=mock", "--pool", "off", "--borrow", "0")
    assert r.returncode != 0 and "device 0 is the destination itself" in r.stderr


def test_completion_comes_from_the_executable():
    suggestions = thaw("[suggest:17]", "thaw restore --st").stdout.split()
    assert suggestions == ["--staging-mib"]
    assert thaw("[suggest:19]", "thaw restore --io ").stdout.split() == ["auto", "buffered", "direct", "zerocopy"]
    assert {"convert", "info", "pool", "restore", "verify"} <= set(thaw("[suggest:5]", "thaw ").stdout.split())
    script = thaw("completion", "bash").stdout
    line = "thaw pool st"
    r = subprocess.run(["bash", "-c", script + f'\nCOMP_LINE="{line}"; COMP_POINT={len(line)}; COMP_WORDS=(thaw pool st); COMP_CWORD=2; '
                        '_thaw_complete; printf "%s\\n" "${COMPREPLY[@]}"'],
                       capture_output=True, text=True, env={"PATH": f"{THAW.parent}:/usr/bin:/bin"})
    assert r.stdout.split() == ["status"], r.stderr
