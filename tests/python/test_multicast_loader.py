"""model_loader_extra_config["multicast"] and ["gang"]: checked when the loader is built, and
joined as the loader joins them (the first worker of the source, or of member 0, serves the
store; a group per rank file)."""
import pytest

from thaw_vllm import gang, multicast, vllm_loader
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


@pytest.mark.parametrize("config, message", [
    ({"rank": 0, "size": 2}, r"gang: unknown fields \[\], missing fields \['store'\]"),
    ({"store": "h:1", "rank": 0, "size": 2, "source": 1}, r"unknown fields \['source'\]"),
    ({"store": "h:1", "rank": 2, "size": 2}, "gang group 'thaw': rank 2 must be"),
    ({"store": "h:1", "rank": 0, "size": 2, "join_timeout_s": -1}, "join_timeout_s -1 must be"),
    ({"store": "h", "rank": 0, "size": 2}, "gang store address 'h' is not host:port"),
    (["h:1"], "gang must be a dict"),
])
def test_the_loader_refuses_a_bad_gang(config, message):
    with pytest.raises(ValueError, match=message):
        vllm_loader.validate_extra_config({"snapshot": "/s", "gang": config})


def test_an_engine_joins_one_group_at_most():
    group = {"store": "h:1", "rank": 0, "size": 2}
    with pytest.raises(ValueError, match="multicast and gang exclude each other"):
        vllm_loader.validate_extra_config({"snapshot": "/s", "gang": group, "multicast": group})


def test_engines_joined_from_the_config_restore_as_a_gang(tmp_path, snapshot):  # noqa: F811
    path, expected = snapshot
    config = {"store": f"127.0.0.1:{free_port()}", "size": 3, "chunk_mib": 1, "timeout_s": 120, "name": "llama"}
    assert gang.group_from_config({**config, "rank": 1}, ["tp1"]).name == "llama.tp1"
    results, codes, logs = run_group(tmp_path, path, 3, [{"mode": "gang"}],
                                     store={"kind": "config", "config": config, "parts": ["tp0"]})
    assert codes == [0, 0, 0], logs
    for member in range(3):
        stats = results[member][0]["stats"]
        assert stats["path"] == "gang" and stats["group_error"] is None, (member, stats)
        assert results[member][0]["digests"] == expected, member
