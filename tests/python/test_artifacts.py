"""Compiled-artifact snapshots: file sets frozen, checked and written back (mock device, CPU)."""
import json
import logging
import os

import pytest
import torch

import thaw_vllm
from thaw_vllm import artifacts
from thaw_vllm.errors import ThawChecksumError, ThawFormatError

from file_trees import make_tree, tree_of

ENV = {"torch": "2.11.0", "triton": "3.5.0", "gpu_arch": "sm_90", "vllm": "0.32.0"}


def forge(path, description, regions=None):
    """An artifacts snapshot written by the real writer with whatever metadata an attacker picks."""
    regions = regions if regions is not None else {"file/s/a": torch.arange(4, dtype=torch.uint8)}
    thaw_vllm.freeze(regions, path, metadata={artifacts.KIND_KEY: artifacts.KIND,
                                              artifacts.ARTIFACTS_KEY: json.dumps(description)})


def valid_description(**change):
    d = {"version": 1, "environment": ENV, "blob": None,
         "sets": {"s": [{"path": "a", "region": "file/s/a", "mode": 0o644}]}}
    d.update(change)
    return d


def test_file_sets_round_trip_bit_exactly_with_modes_and_blob(tmp_path):
    inductor, triton = tmp_path / "inductor", tmp_path / "triton"
    files = {"fxgraph/ab/cd/entry": os.urandom(10_000), "aotautograd/x": b"", "top.json": b"{}"}
    make_tree(inductor, files)
    make_tree(triton, {"k1/kernel.cubin": os.urandom(70_000)})
    os.chmod(triton / "k1/kernel.cubin", 0o755)
    snap = tmp_path / "c.thaw"
    result = artifacts.freeze_artifacts(snap, {"inductor": inductor, "triton": triton}, blob=b"blob-bytes", env=ENV)
    assert result["files"] == 4
    out = {"inductor": tmp_path / "o/inductor", "triton": tmp_path / "o/triton"}
    restored = artifacts.restore_artifacts(snap, out, env=ENV)
    assert restored["restored"] and restored["files"] == 4 and restored["blob"] == b"blob-bytes"
    assert tree_of(out["inductor"]) == files
    assert tree_of(out["triton"]) == {"k1/kernel.cubin": (triton / "k1/kernel.cubin").read_bytes()}
    assert os.stat(out["triton"] / "k1/kernel.cubin").st_mode & 0o777 == 0o755
    thaw_vllm.verify(snap)  # raises ThawChecksumError on any damaged region


def test_include_captures_only_the_named_subtrees(tmp_path):
    root = tmp_path / "vllm"
    make_tree(root, {"torch_compile_cache/h1/rank_0_0/g.py": b"1", "torch_compile_cache/h2/x": b"2", "other/y": b"3"})
    snap = tmp_path / "c.thaw"
    artifacts.freeze_artifacts(snap, {"vllm": root}, env=ENV, include={"vllm": ["torch_compile_cache/h1"]})
    artifacts.restore_artifacts(snap, {"vllm": tmp_path / "out"}, env=ENV)
    assert tree_of(tmp_path / "out") == {"torch_compile_cache/h1/rank_0_0/g.py": b"1"}


def test_links_in_the_source_are_not_followed(tmp_path):
    root = tmp_path / "src"
    make_tree(root, {"real": b"r"})
    secret = tmp_path / "secret"
    secret.write_bytes(b"do not capture")
    os.symlink(secret, root / "link")
    os.symlink(tmp_path, root / "dirlink")
    snap = tmp_path / "c.thaw"
    assert artifacts.freeze_artifacts(snap, {"s": root}, env=ENV)["files"] == 1


@pytest.mark.parametrize("field", ["torch", "gpu_arch", "vllm"])
def test_a_mismatching_environment_writes_nothing_and_names_the_field(tmp_path, caplog, field):
    root = tmp_path / "src"
    make_tree(root, {"f": b"x"})
    snap = tmp_path / "c.thaw"
    artifacts.freeze_artifacts(snap, {"s": root}, env=ENV)
    other = dict(ENV, **{field: "something else"})
    with caplog.at_level(logging.INFO, logger="thaw_vllm"):
        result = artifacts.restore_artifacts(snap, {"s": tmp_path / "out"}, env=other)
    assert not result["restored"] and f"'{field}'" in result["reason"]
    assert not (tmp_path / "out").exists()
    assert any(f"'{field}'" in r.getMessage() for r in caplog.records)


def test_a_field_missing_here_is_a_mismatch(tmp_path):
    snap = tmp_path / "c.thaw"
    make_tree(tmp_path / "src", {"f": b"x"})
    artifacts.freeze_artifacts(snap, {"s": tmp_path / "src"}, env=ENV)
    less = {k: v for k, v in ENV.items() if k != "triton"}
    assert "'triton'" in artifacts.restore_artifacts(snap, {"s": tmp_path / "o"}, env=less)["reason"]


@pytest.mark.parametrize("bad_path", ["../escape", "/etc/passwd", "a/../../b", "a//b", "./a", "a\x00b", "a\nb", "",
                                      "x" * 300, "a/" * 3000 + "b"])
def test_paths_that_leave_the_target_are_refused(tmp_path, bad_path):
    snap = tmp_path / "c.thaw"
    forge(snap, valid_description(sets={"s": [{"path": bad_path, "region": "file/s/a", "mode": 0o644}]}))
    with pytest.raises(ThawFormatError, match=str(snap)):
        artifacts.restore_artifacts(snap, {"s": tmp_path / "out"}, env=ENV)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("description", [
    {"version": 2},
    "not an object",
    valid_description(environment={"torch": 5}),
    valid_description(environment={f"k{i}": "v" for i in range(1000)}),
    valid_description(sets={"s": [{"path": "a", "region": "missing", "mode": 0o644}]}),
    valid_description(sets={"s": [{"path": "a", "region": "file/s/a", "mode": 0o4755}]}),
    valid_description(sets={"s": [{"path": "a", "region": "file/s/a", "mode": True}]}),
    valid_description(sets={"s": [{"path": "a", "region": "file/s/a", "mode": 0o644},
                                  {"path": "b", "region": "file/s/a", "mode": 0o644}]}),
    valid_description(sets={"s": [{"path": "a", "region": "file/s/a", "mode": 0o644}],
                            "t": [{"path": "a", "region": "file/s/a", "mode": 0o644}]}),
    valid_description(sets={"s": "nope"}),
    valid_description(sets={"s": [7]}),
    valid_description(sets={"../s": []}),
    valid_description(sets={"s": []}),  # region file/s/a then belongs to nothing
    valid_description(blob="file/s/a"),
])
def test_hostile_descriptions_are_refused_before_any_write(tmp_path, description):
    snap = tmp_path / "c.thaw"
    forge(snap, description)
    with pytest.raises(ThawFormatError, match=str(snap)):
        artifacts.restore_artifacts(snap, {"s": tmp_path / "out", "t": tmp_path / "out2"}, env=ENV)
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_also_a_directory_is_refused(tmp_path):
    snap = tmp_path / "c.thaw"
    regions = {"file/s/a": torch.zeros(1, dtype=torch.uint8), "file/s/b": torch.zeros(1, dtype=torch.uint8)}
    forge(snap, valid_description(sets={"s": [{"path": "a/b", "region": "file/s/a", "mode": 0o644},
                                              {"path": "a", "region": "file/s/b", "mode": 0o644}]}), regions)
    with pytest.raises(ThawFormatError, match="lies under the file 'a'"):
        artifacts.restore_artifacts(snap, {"s": tmp_path / "out"}, env=ENV)


def test_a_weights_snapshot_is_not_taken_for_artifacts(tmp_path):
    snap = tmp_path / "w.thaw"
    thaw_vllm.freeze({"w": torch.ones(3)}, snap)
    with pytest.raises(ThawFormatError, match="not an artifacts snapshot"):
        artifacts.restore_artifacts(snap, {"s": tmp_path / "out"}, env=ENV)


def test_a_link_planted_in_the_target_does_not_redirect_writes(tmp_path):
    root = tmp_path / "src"
    make_tree(root, {"sub/f": b"payload"})
    snap = tmp_path / "c.thaw"
    artifacts.freeze_artifacts(snap, {"s": root}, env=ENV)
    target, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    target.mkdir()
    elsewhere.mkdir()
    os.symlink(elsewhere, target / "sub")
    with pytest.raises(OSError, match="sub/f"):
        artifacts.restore_artifacts(snap, {"s": target}, env=ENV)
    assert list(elsewhere.iterdir()) == []


def test_a_corrupted_artifact_is_a_checksum_error_and_writes_nothing(tmp_path):
    root = tmp_path / "src"
    make_tree(root, {"f": os.urandom(9000)})
    snap = tmp_path / "c.thaw"
    artifacts.freeze_artifacts(snap, {"s": root}, env=ENV)
    region = thaw_vllm.info(snap)["tensors"][0]
    with open(snap, "r+b") as f:
        f.seek(thaw_vllm.info(snap)["data_offset"] + region["offset"] + 100)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ThawChecksumError):
        artifacts.restore_artifacts(snap, {"s": tmp_path / "out"}, env=ENV)
    assert not (tmp_path / "out" / "f").exists()


def test_existing_files_are_replaced_whole(tmp_path):
    root = tmp_path / "src"
    make_tree(root, {"f": b"new contents"})
    snap = tmp_path / "c.thaw"
    artifacts.freeze_artifacts(snap, {"s": root}, env=ENV)
    make_tree(tmp_path / "out", {"f": b"old and longer contents", "keep": b"k"})
    artifacts.restore_artifacts(snap, {"s": tmp_path / "out"}, env=ENV)
    assert tree_of(tmp_path / "out") == {"f": b"new contents", "keep": b"k"}


def test_environment_describes_this_process():
    env = artifacts.environment(vllm="0.32.0", rank="0")
    assert env["torch"] == torch.__version__ and env["vllm"] == "0.32.0" and env["rank"] == "0"
    assert all(isinstance(v, str) for v in env.values())


def test_companion_path_follows_the_weights_file():
    assert artifacts.companion_path("/s/weights.tp1.pp0.thaw") == "/s/weights.tp1.pp0.compile.thaw"
    assert artifacts.companion_path("/s/model") == "/s/model.compile.thaw"


def test_the_package_exposes_the_compiled_state_helpers():
    assert thaw_vllm.freeze_compiled is artifacts.freeze_compiled
    assert thaw_vllm.restore_artifacts is artifacts.restore_artifacts


def test_thaw_info_lists_the_artifacts_and_their_environment_and_verify_checks_them(tmp_path):
    import subprocess
    from pathlib import Path
    cli = Path(__file__).resolve().parents[2] / "build" / "publish" / "cli" / "thaw"
    make_tree(tmp_path / "src", {"a/b": os.urandom(3000), "c": b"x"})
    snap = tmp_path / "c.thaw"
    artifacts.freeze_artifacts(snap, {"inductor": tmp_path / "src"}, blob=b"blob", env=ENV)
    out = subprocess.run([str(cli), "info", str(snap)], capture_output=True, text=True, check=True).stdout
    assert "files     inductor: 2 files" in out and "valid for torch = 2.11.0" in out and "blob      PyTorch" in out
    assert subprocess.run([str(cli), "verify", str(snap)], capture_output=True).returncode == 0
    region = thaw_vllm.info(snap)["tensors"][0]
    with open(snap, "r+b") as f:
        f.seek(thaw_vllm.info(snap)["data_offset"] + region["offset"])
        first = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([first[0] ^ 1]))
    bad = subprocess.run([str(cli), "verify", str(snap)], capture_output=True, text=True)
    assert bad.returncode == 1 and str(snap) in bad.stderr and "corrupt" in bad.stderr
