"""Borrowed links from Python, on the mock devices (CPU tensors stand on mock device 0 unless
mock_device says otherwise): bit identity, which links served the bytes in the stats and the log
line, the split by weight, bounds refused with the option named, $THAW_BORROW overriding the
keyword, and a note said once per process. Failures of helpers mid-restore are the core's tests
(tests/native/test_borrowed_links_mock.c) and NUnit's (BorrowedLinksTests)."""
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import thaw_vllm
from thaw_vllm import borrowed_links, torch_io

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def snapshot(tmp_path):
    g = torch.Generator().manual_seed(19)
    state = {f"layer.{i}.weight": torch.randn(257 + 31 * i, 129, generator=g) for i in range(24)}
    state["scale"] = torch.tensor(0.5)
    path = tmp_path / "model.thaw"
    thaw_vllm.freeze(state, path)
    return state, path


def blank(state):
    return {n: torch.zeros_like(t) for n, t in state.items()}


def assert_equal(a, b):
    assert set(a) == set(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_helpers_carry_shares_and_every_byte_lands(snapshot, caplog):
    state, path = snapshot
    into = blank(state)
    with caplog.at_level(logging.INFO, logger="thaw_vllm"):
        stats = thaw_vllm.restore_into(into, path, pool="off", borrow=[1, 2, 3], chunk_bytes=64 << 10)
    assert_equal(state, into)
    links = stats["links"]
    assert [(l["device"], l["role"]) for l in links] == [("mock-0", "direct"), ("mock-1", "borrowed"),
                                                       ("mock-2", "borrowed"), ("mock-3", "borrowed")]
    assert all(l["bytes"] > 0 and l["status"] == 0 and l["note"] == "" for l in links)
    assert sum(l["bytes"] for l in links) == stats["bytes"]
    assert stats["links_summary"].startswith("links: mock-0 ") and stats["links_summary"].endswith(" borrowed")
    [line] = [r.message for r in caplog.records if "restored" in r.message]
    assert stats["links_summary"] in line


def test_auto_borrows_every_other_device_of_the_destination(snapshot):
    state, path = snapshot
    into = blank(state)
    stats = thaw_vllm.restore_into(into, path, pool="off", borrow="auto", mock_device=5, chunk_bytes=64 << 10)
    assert_equal(state, into)
    assert [l["ordinal"] for l in stats["links"]] == [5, 0, 1, 2, 3, 4, 6, 7]


def test_weights_split_the_bytes_and_off_borrows_nothing(snapshot):
    state, path = snapshot
    into = blank(state)
    stats = thaw_vllm.restore_into(into, path, pool="off", chunk_bytes=64 << 10,
                                   borrow={"devices": [4], "weights": [1, 3], "lanes": 1})
    assert_equal(state, into)
    direct, helper = stats["links"]
    assert helper["lanes"] == 1
    assert 2.5 < helper["planned_bytes"] / direct["planned_bytes"] < 3.5
    for off in ("off", False, None):
        stats = thaw_vllm.restore_into(blank(state), path, pool="off", borrow=off)
        assert "links" not in stats


@pytest.mark.parametrize("borrow, message", [
    ([0], "device 0 is the destination itself"),
    ([1, 1], "device 1 is named twice"),
    ([8], "no mock device 8"),
    (list(range(1, 17)), "at most 15"),
    ({"devices": [1], "lanes": 9}, "lanes must be an integer from 0 to 8"),
    ({"devices": [1], "weights": [1, -1]}, "each must lie in"),
    ({"devices": [1], "weights": [1, 1, 1]}, "3 weights for 2 links"),
    ({"devices": "auto", "weights": [1, 1]}, "weights need the devices named"),
    ({"device": [1]}, "unknown key 'device'"),
    ("fast", "is not \"auto\" or \"off\""),
    (3, "borrow must be"),
])
def test_out_of_bounds_options_are_refused_before_a_byte_moves(snapshot, borrow, message):
    state, path = snapshot
    into = blank(state)
    with pytest.raises(ValueError, match=message):
        thaw_vllm.restore_into(into, path, pool="off", borrow=borrow)
    assert all(not t.any() for t in into.values())


def test_thaw_borrow_overrides_the_keyword(snapshot, tmp_path):
    # .NET reads the environment once at start: each case is a process of its own.
    state, path = snapshot
    script = ("import sys, torch, thaw_vllm\n"
              f"state = torch.load({str(tmp_path / 'state.pt')!r})\n"
              "into = {n: torch.zeros_like(t) for n, t in state.items()}\n"
              f"stats = thaw_vllm.restore_into(into, {str(path)!r}, pool='off', borrow=eval(sys.argv[1]))\n"
              "assert all(torch.equal(state[n], into[n]) for n in state)\n"
              "print(stats.get('links_summary'))\n")
    torch.save(state, tmp_path / "state.pt")

    def run(env_value, keyword):
        env = dict(os.environ, PYTHONPATH=str(REPO / "python"))
        env.pop("THAW_BORROW", None)
        if env_value is not None:
            env["THAW_BORROW"] = env_value
        done = subprocess.run([sys.executable, "-c", script, keyword], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert run(None, "[2]").startswith("links: mock-0 ") and "mock-2" in run(None, "[2]")
    assert run("off", "[2]") == "None"
    assert [p.split()[0] for p in run("3,6", "None")[len("links: "):].split(", ")] == ["mock-0", "mock-3", "mock-6"]
    assert "mock-3" in run("auto", "'off'")


def test_a_note_is_said_once_and_dropped_helpers_in_one_line(caplog):
    report = {"links": [{"device": "cuda:0", "role": "direct", "bytes": 10, "note": ""},
                        {"device": "cuda:1", "role": "borrowed", "bytes": 0, "lanes": 0, "note": "cuda:1 left out (x)"},
                        {"device": "cuda:2", "role": "borrowed", "bytes": 0, "lanes": 2, "note": "cuda:2 dropped (y)"}],
              "summary": "links: cuda:0 10 B direct, cuda:1 left out, cuda:2 0 B borrowed (dropped)", "note": None}
    only = {"links": [], "summary": None, "note": "borrowed links: cuda:0 is the only GPU; the restore uses its own link"}
    with caplog.at_level(logging.INFO, logger="thaw_vllm"):
        stats = borrowed_links.stats_of([report])
        for _ in range(3):
            assert borrowed_links.stats_of([only])["links_summary"] is None
    assert stats["links_summary"] == report["summary"]
    assert [r.message for r in caplog.records if "only GPU" in r.message] == [f"thaw: {only['note']}"]
    [dropped] = [r for r in caplog.records if "left out" in r.message]
    assert dropped.levelno == logging.WARNING and "cuda:2 dropped (y)" in dropped.message


def test_safetensors_streaming_refuses_borrow(tmp_path):
    with pytest.raises(ValueError, match="not to streaming a safetensors checkpoint"):
        torch_io.load_safetensors(tmp_path / "absent.safetensors", borrow=[1])
