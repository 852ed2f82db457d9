"""tools/multi_gpu_model.py, the cost model of docs/MULTI_GPU.md: its simulation agrees with
the closed forms where they hold (uniform links), and its shared resources limit as they must."""
import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import multi_gpu_model as model  # noqa: E402

from thaw_vllm import multicast  # noqa: E402

MIB = 1 << 20


def machine(**changes):
    return model.Machine(**{**model.MEASURED, **changes})


@pytest.mark.parametrize("size", [2, 4, 8])
@pytest.mark.parametrize("message_us", [0.0, 30.0])
def test_a_uniform_chain_streams_once_plus_one_chunk_a_hop(size, message_us):
    m = machine(message_us=message_us)
    members = [f"0.{g}" for g in range(size)]
    nbytes, chunk = 1024 * MIB, 16 * MIB
    seconds = model.simulate(m, [model.Flow(nbytes, members[0], model.chain(members))], chunk)["seconds"]
    chunks = nbytes // chunk
    closed = (chunks + size - 2) * (chunk / (m.nvlink_gbps * model.GB) + message_us * 1e-6)
    assert seconds == pytest.approx(closed, rel=1e-9)
    if message_us == 0:  # the runtime's choice of topology uses the same model
        unit = nbytes / (m.nvlink_gbps * model.GB)
        assert seconds == pytest.approx(unit * multicast.modelled_seconds("chain", size, nbytes, chunk), rel=1e-9)


@pytest.mark.parametrize("size", [3, 7, 15])
def test_a_binary_tree_pays_its_fanout_on_every_level(size):
    m = machine(message_us=0.0)
    members = [f"0.{g}" for g in range(size)]
    nbytes, chunk = 1024 * MIB, 16 * MIB
    seconds = model.simulate(m, [model.Flow(nbytes, members[0], model.tree(members))], chunk)["seconds"]
    unit = nbytes / (m.nvlink_gbps * model.GB)
    # The last child of each node waits for its sibling: within one chunk a level of the closed form.
    closed = unit * multicast.modelled_seconds("tree", size, nbytes, chunk, 2)
    assert closed - unit * 2 / 64 <= seconds <= closed + 1e-12


def test_host_memory_is_shared_and_a_pcie_link_caps_one_gpu():
    m = machine(host_gbps=220.0, message_us=0.0)
    nbytes = 1000 * MIB
    one = model.simulate(m, [model.Flow(nbytes, "host:0", [("host:0", "0.0")])], 8 * MIB)["seconds"]
    assert one == pytest.approx(nbytes / (55.0 * model.GB), rel=1e-6)
    eight = model.simulate(m, [model.Flow(nbytes, "host:0", [("host:0", f"0.{g}")]) for g in range(8)], 8 * MIB)
    assert eight["seconds"] == pytest.approx(8 * nbytes / (220.0 * model.GB), rel=0.01)
    assert eight["busiest"] == "host:0"


def test_one_nic_for_eight_chains_is_the_bottleneck_eight_rails_are_not():
    results = model.run(machine(host_gbps=1000.0), 32 * MIB)
    rails = results["cluster (8 NICs a node): 70B TP=8 x DP=8, chain per tp rank"]
    shared = results["cluster (1 NIC a node): 70B TP=8 x DP=8, chain per tp rank"]
    assert shared["busiest"].startswith("nic-out") and shared["seconds"] > 7 * rails["seconds"]
    assert rails["seconds"] == pytest.approx(140e9 / 8 / (50.0 * model.GB), rel=0.1)  # one rail: 400 Gb/s


def test_the_command_writes_every_scenario(tmp_path, capsys):
    out = tmp_path / "model.json"
    model.main(["--out", str(out), "--chunk-mib", "64"])
    saved = json.loads(out.read_text())
    assert saved["chunk_mib"] == 64 and len(saved["results"]) == 12
    assert all(math.isfinite(r["seconds"]) and r["seconds"] > 0 for r in saved["results"].values())
    assert "gang" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        model.main(["--chunk-mib", "0"])


def test_the_gang_as_built_pays_its_shares_then_its_ring():
    m = machine(host_gbps=220.0)
    results = model.run(m, 32 * MIB)
    streamed = results["node: 8 x 8B replicas, gang (1/8 each from the host, NVLink ring)"]
    built = results["node: 8 x 8B replicas, gang as built (every share lands, then the ring)"]
    shares = 16.06e9 / (220.0 * model.GB)  # all eight shares leave host memory at once
    chunks = math.ceil(16.06e9 / 8 / (32 * MIB))
    ring = 7 * chunks * (32 * MIB / (385.0 * model.GB) + 30e-6)  # every NVLink port carries seven shares
    assert built["seconds"] == pytest.approx(shares + ring, rel=0.05)
    assert streamed["seconds"] < built["seconds"] and built["busiest"] == "host:0"


def test_borrowed_links_are_bound_by_the_host_or_the_links_not_by_one_pcie_link():
    results = model.run(machine(host_gbps=220.0), 32 * MIB)
    alone = results["node: one 8B replica onto GPU 0, its own link only"]
    pair = results["node: one 8B replica onto GPU 0, borrowed links (2 GPUs' PCIe, NVLink into GPU 0)"]
    eight = results["node: one 8B replica onto GPU 0, borrowed links (8 GPUs' PCIe, NVLink into GPU 0)"]
    assert alone["seconds"] == pytest.approx(16.06e9 / (55.0 * model.GB), rel=0.06)  # plus 30 us a chunk
    assert pair["seconds"] == pytest.approx(alone["seconds"] / 2, rel=0.05) and pair["busiest"].startswith("pcie:")
    # Eight links carry 2 GB each (0.036 s) and GPU 0's NVLink in 14 GB (0.036 s): host memory decides.
    assert eight["seconds"] == pytest.approx(16.06e9 / (220.0 * model.GB), rel=0.05) and eight["busiest"] == "host:0"
