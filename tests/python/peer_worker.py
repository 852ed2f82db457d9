"""Process A of tests/python/test_peer.py: restores a snapshot from its file into mock device memory
(a shared file the pool can open), publishes it to the pool, then obeys one command per stdin line:
  withdraw-and-zero   withdraw the publication, then overwrite the memory with zeros
  restore-and-bump    restore the snapshot into the memory again, then publish the next generation
  exit                end the process without closing anything (as a crash would)
and answers each with one line of JSON on stdout.
usage: peer_worker.py SOCKET SNAPSHOT SHM_DIR [ALLOW_UID...]"""
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import thaw_vllm  # noqa: E402
from thaw_vllm import peer  # noqa: E402
from test_pool import shared_views  # noqa: E402


def say(**answer):
    print(json.dumps(answer), flush=True)


def main(socket, snapshot, shm_dir, *allow):
    tensors = shared_views(Path(shm_dir), thaw_vllm.info(snapshot), name="publisher-memory")
    identity = peer.identity(snapshot)
    thaw_vllm.restore_into(tensors, snapshot)
    published = thaw_vllm.publish(tensors, snapshot, pool=socket, allow_uids=[int(u) for u in allow], snapshot_identity=identity)
    say(generation=published.generation)
    for line in sys.stdin:
        command = line.strip()
        if command == "withdraw-and-zero":
            published.withdraw()
            for t in tensors.values():
                t.zero_()
            say(published=published.published)
        elif command == "restore-and-bump":
            thaw_vllm.restore_into(tensors, snapshot)
            say(generation=published.bump())
        elif command == "exit":
            os._exit(0)


if __name__ == "__main__":
    main(*sys.argv[1:])
