"""Gang restore over torch.distributed (gloo on the CPU): 2-3 real processes per test, each a
tests/python/multicast_worker.py in "gang" mode; bit identity checked on every member,
including when a member is killed, stalls, never comes, or holds another snapshot."""
import hashlib

import pytest
import torch

import thaw_vllm
from thaw_vllm import gang
from test_multicast import (assert_clean, assert_fell_back, assert_whole, random_tensor, run_group,  # noqa: F401
                            snapshot)  # (the fixture)


def test_three_members_share_the_work_bit_identical(tmp_path, snapshot):  # noqa: F811
    """Round 1 over a TCP store with CRC32C on; round 2 with 16 KiB chunks (large tensors cut
    into many) into destinations that are not contiguous on two members."""
    path, expected = snapshot
    rounds = [{"mode": "gang", "verify": True},
              {"mode": "gang", "verify": True, "chunk_bytes": 16 << 10,
               "transpose": {"0": ["embed.weight"], "2": ["layers.0.w", "lm_head.weight"]}}]
    results, codes, logs = run_group(tmp_path, path, 3, rounds, store="tcp")
    assert codes == [0, 0, 0], logs
    total = results[0][0]["stats"]["bytes"]
    assert total > 900_000
    for number in range(2):
        for member in range(3):
            result = results[member][number]
            assert "error" not in result, (number, member, result, logs[member])
            stats = result["stats"]
            assert stats["path"] == "gang" and stats["share_path"] == "file" and stats["group_error"] is None, stats
            assert stats["bytes"] == total and stats["round"] == number + 1 and stats["members"] == 3
            assert 0 < stats["share_bytes"] < total, stats  # each member read only its share
            assert result["moved"] > 0
            assert result["digests"] == expected, (number, member)
        assert sum(results[m][number]["stats"]["share_bytes"] for m in range(3)) == total


def test_a_member_killed_mid_transfer_leaves_the_others_whole(tmp_path, snapshot):  # noqa: F811
    """A ring of four: member 1 dies after moving its first chunk; members 0 and 3 fall back
    to their files, member 2 (no fallback) raises one message naming member 1."""
    path, expected = snapshot
    rounds = [{"mode": "gang", "kill_after_bytes": {"1": 1}, "timeout_s": 3, "no_fallback": ["2"]}]
    results, codes, logs = run_group(tmp_path, path, 4, rounds)
    assert codes[1] == -9 and results[1] is None
    assert codes[0] == codes[2] == codes[3] == 0, logs
    assert_fell_back(results, (0, 3))
    first, third = results[0][0], results[2][0]
    assert first["digests"] == expected and results[3][0]["digests"] == expected, logs
    message = first["stats"]["group_error"]
    assert message.startswith("thaw gang 'test' (round 1, 4 members): member 1 gave no word"), message
    assert third["error"]["type"] == "GangError", third
    assert_clean(third["error"]["message"])
    assert "member 1" in third["error"]["message"] and "at tensor '" in third["error"]["message"], third


def test_a_stalled_member_times_out_and_everyone_ends_whole(tmp_path, snapshot):  # noqa: F811
    path, expected = snapshot
    rounds = [{"mode": "gang", "stall_after_bytes": {"1": 1}, "stall_s": 7, "timeout_s": 2}]
    results, codes, logs = run_group(tmp_path, path, 3, rounds)
    assert codes == [0, 0, 0], logs
    assert_whole(results, expected, logs, range(3))
    assert_fell_back(results, (0, 2))
    assert all("member 1" in results[m][0]["stats"]["group_error"] for m in (0, 2))
    assert "upstream member 1 sent nothing for 2 s at tensor '" in results[2][0]["stats"]["group_error"]


def test_a_gang_that_never_forms_restores_alone(tmp_path, snapshot):  # noqa: F811
    path, expected = snapshot
    rounds = [{"mode": "gang", "absent": ["2"], "join_timeout_s": 3}]
    results, codes, logs = run_group(tmp_path, path, 3, rounds)
    assert codes == [0, 0, 0], logs
    for member in (0, 1):
        result = results[member][0]
        assert result["stats"]["path"] == "file" and result["digests"] == expected, (member, result)
        assert result["moved"] == 0
        message = result["stats"]["group_error"]
        assert "did not start" in message and "members [2] did not arrive within 3 s" in message, message


def test_members_with_other_snapshots_are_refused_before_any_byte_moves(tmp_path, snapshot):  # noqa: F811
    path, expected = snapshot
    state = thaw_vllm.load_state_dict(path)
    state["layers.0.b"] = random_tensor(torch.float32, (701,), 99)
    other = tmp_path / "other.thaw"
    thaw_vllm.freeze(state, other)
    other_digests = {n: hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()
                     for n, t in thaw_vllm.load_state_dict(other).items()}
    rounds = [{"mode": "gang", "snapshot_of": {"2": str(other)}}]
    results, codes, logs = run_group(tmp_path, path, 3, rounds)
    assert codes == [0, 0, 0], logs
    for member in range(3):
        result = results[member][0]
        assert result["moved"] == 0 and result["stats"]["path"] == "file", (member, result)
        message = result["stats"]["group_error"]
        assert "did not start" in message and "member 2 refused" in message and "'layers.0.b' differs" in message, message
        assert result["digests"] == (other_digests if member == 2 else expected), member


# ---- in one process -----------------------------------------------------------------------

def test_shares_are_balanced_whole_tensors_and_deterministic():
    lengths = [1000, 10, 600, 600, 0, 390, 5, 5, 400]
    for size in (1, 2, 3, 4, 16):
        owners = gang.assign_shares(lengths, size)
        assert owners == gang.assign_shares(list(lengths), size)
        loads = [sum(n for n, o in zip(lengths, owners) if o == m) for m in range(size)]
        assert sum(loads) == sum(lengths) and all(0 <= o < size for o in owners)
        assert max(loads) - min(loads) <= max(lengths), (size, loads)
    # largest first to the lighter member: 1000, 600, 600, 400 (1400 vs 1200), 390, then the small ones
    assert gang.assign_shares(lengths, 2) == [0, 0, 1, 1, 0, 1, 0, 0, 0]  # loads 1420 and 1590


def test_ring_steps_deliver_every_chunk_once_after_it_arrives():
    for size in (2, 3, 4, 7):
        for counts in ([3] * size, [0] + [2] * (size - 1), [5, 1] + [0] * (size - 2)):
            steps = {r: gang.ring_steps(r, size, counts) for r in range(size)}
            for r in range(size):
                held = {(r, j) for j in range(counts[r])}
                for send, recv in steps[r]:
                    assert send is None or send in held, (size, counts, r, send)
                    if recv is not None:
                        assert recv not in held
                        held.add(recv)
                assert held == {(m, j) for m in range(size) for j in range(counts[m])}
                sent = [s for s, _ in steps[r] if s is not None]
                received_next = [v for _, v in steps[(r + 1) % size] if v is not None]
                assert sent == received_next, (size, counts, r)


def test_shares_cut_into_chunks_cover_every_byte():
    lengths, owners = [100, 0, 33, 64], [1, 0, 0, 1]
    shares = gang.share_chunks(lengths, owners, 2, 32)
    assert shares[0] == [(2, 0, 32), (2, 32, 33)]
    assert shares[1] == [(0, 0, 32), (0, 32, 64), (0, 64, 96), (0, 96, 100), (3, 0, 32), (3, 32, 64)]


def test_gang_settings_are_bounded():
    with pytest.raises(ValueError, match="gang group 'x': rank 3"):
        gang.GangGroup(None, 3, 3, name="x")
    with pytest.raises(ValueError, match="timeout_s"):
        gang.GangGroup(None, 0, 2, timeout_s=0)
    with pytest.raises(ValueError, match="size"):
        gang.GangGroup(None, 0, 0)
