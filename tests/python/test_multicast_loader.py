"""model_loader_extra_config["multicast"]: checked when the loader is built, and joined as the
loader joins it (the source engine's first worker serves the store; a group per rank file)."""
import pytest

from thaw_vllm import multicast, vllm_loader
from test_multicast import free_port, run_group, snapshot  # noqa: F401  (the fixture)


@pytest.mark.parametrize("config, message", [
    ({"rank": 0, "size": 2}, r"missing fields \['store'\]"),
    ({"store": "h:1", "rank": 0, "size": 2, "ranks": 3}, r"unknown fields \['ranks'\]"),
    ({"store": "nowhere", "rank": 0, "size": 2}, "not host:port"),
    ({"store": "h:1", "rank": 2, "size": 2}, "rank 2 must be"),
    ({"store": "h:1", "rank": 0, "size": 2, "chunk_mib": 0.5}, "chunk_mib must be a whole number"),
    ({"store": "h:1", "rank": 0, "size": 2, "topology": "ring"}, "topology"),
    ("h:1", "must be a dict"),
])
def test_the_loader_refuses_a_bad_group(config, message):
    with pytest.raises(ValueError, match=message):
        vllm_loader.validate_extra_config({"snapshot": "/s", "multicast": config})


def test_each_rank_file_has_its_own_group():
    config = {"store": "node0:29555", "rank": 1, "size": 4, "source": 2, "chunk_mib": 64, "name": "llama"}
    group = multicast.group_from_config(config, ["tp1", "pp0"])
    assert (group.name, group.rank, group.size, group.source, group.chunk_bytes) == ("llama.tp1.pp0", 1, 4, 2, 64 << 20)
    assert multicast.group_from_config({"store": "h:1", "rank": 0, "size": 1}).name == "thaw"


def test_engines_joined_from_the_config_multicast_from_source_rank_1(tmp_path, snapshot):  # noqa: F811
    path, expected = snapshot
    config = {"store": f"127.0.0.1:{free_port()}", "size": 3, "source": 1, "chunk_mib": 1, "timeout_s": 120}
    results, codes, logs = run_group(tmp_path, path, 3, [{"source": 1}],
                                     store={"kind": "config", "config": config, "parts": ["tp0"]})
    assert codes == [0, 0, 0], logs
    for rank in range(3):
        stats = results[rank][0]["stats"]
        assert stats["path"] == ("file" if rank == 1 else "multicast") and stats["group_error"] is None, (rank, stats)
        assert results[rank][0]["digests"] == expected, rank
