#!/usr/bin/env python3
"""The cost model of docs/MULTI_GPU.md: a chunk-level simulation of weights moving from host
memory and between GPUs, driven by measured link rates.

A chunk crossing a hop takes chunk / (its slowest resource) + a per-message cost, and holds
each resource of the hop (host memory, a PCIe link, a GPU's NVLink out or in, a NIC out or
in) for chunk / that resource's own rate: host memory, faster than one PCIe link, serves
several GPUs' chunks at once up to its rate. A GPU forwards a chunk once it has all of it.
Chunks are scheduled greedily, earliest ready first, flows taking turns. Shared resources are what the model is
for: eight GPUs pulling from one host's memory, eight chains crossing one NIC.

usage: tools/multi_gpu_model.py [--out results.json] [--chunk-mib 32] [--host-gbps 220] ...
prints the scenarios of docs/MULTI_GPU.md as a table (seconds until every GPU holds its bytes).
"""
import argparse
import heapq
import json
import math
from dataclasses import dataclass, field

GB = 1e9

# Measured (docs/BENCHMARKS.md, DESIGN.md): pinned H2D 55 GB/s a GPU and 109.9 for two at
# once on 2 x H200; NVLink P2P 385-389 GB/s; 400 Gb/s NICs. Host memory for eight GPUs at
# once is not measured yet: 220 GB/s is an assumption (two GPUs drew 109.9 without a limit).
MEASURED = {"pcie_gbps": 55.0, "nvlink_gbps": 385.0, "nic_gbps": 50.0, "host_gbps": 220.0, "message_us": 30.0}


@dataclass
class Flow:
    """bytes leaving root (a "host:<node>" or a GPU) along edges [(parent, child)]; each child
    forwards what it receives to its own children."""
    nbytes: float
    root: str
    edges: list
    start: float = 0.0  # seconds before its first chunk may leave (a phase that waits for another)


@dataclass
class Machine:
    pcie_gbps: float
    nvlink_gbps: float
    nic_gbps: float
    host_gbps: float
    message_us: float
    rails: int = 8  # NICs a node; GPU g uses rail g % rails
    rates: dict = field(default_factory=dict)

    def resources(self, parent, child):
        """(name, GB/s) of every resource a chunk uses from parent to child."""
        if parent.startswith("host:"):
            return [(parent, self.host_gbps), (f"pcie:{child}", self.pcie_gbps)]
        node_a, gpu_a = parent.split(".")
        node_b, gpu_b = child.split(".")
        if node_a == node_b:
            return [(f"nvl-out:{parent}", self.nvlink_gbps), (f"nvl-in:{child}", self.nvlink_gbps)]
        rail_a, rail_b = int(gpu_a) % self.rails, int(gpu_b) % self.rails
        return [(f"nic-out:{node_a}.{rail_a}", self.nic_gbps), (f"nic-in:{node_b}.{rail_b}", self.nic_gbps)]


def simulate(machine: Machine, flows, chunk_bytes: float) -> dict:
    """{"seconds": when the last GPU holds its last byte, "busiest": the resource busy longest}."""
    free, busy = {}, {}
    arrival = {}  # (flow, gpu, chunk) -> time
    queue = []
    for f, flow in enumerate(flows):
        chunks = max(1, math.ceil(flow.nbytes / chunk_bytes))
        children = {}
        for parent, child in flow.edges:
            children.setdefault(parent, []).append(child)
        flow.children = children
        flow.chunks = chunks
        for k in range(chunks):
            size = min(chunk_bytes, flow.nbytes - k * chunk_bytes)
            for child in children.get(flow.root, []):
                heapq.heappush(queue, (flow.start, k, f, flow.root, child, size))
    end = 0.0
    while queue:
        ready, k, f, parent, child, size = heapq.heappop(queue)
        used = machine.resources(parent, child)
        start = max([ready] + [free.get(name, 0.0) for name, _ in used])
        done = start + size / (min(rate for _, rate in used) * GB) + machine.message_us * 1e-6
        for name, rate in used:
            # The per-message cost (launch, handshake) holds the link; host memory only moves bytes.
            held = size / (rate * GB) + (0.0 if name.startswith("host:") else machine.message_us * 1e-6)
            free[name] = start + held
            busy[name] = busy.get(name, 0.0) + held
        arrival[(f, child, k)] = done
        end = max(end, done)
        for grandchild in flows[f].children.get(child, []):
            heapq.heappush(queue, (done, k, f, child, grandchild, size))
    busiest = max(busy, key=busy.get) if busy else None
    return {"seconds": end, "busiest": busiest, "busiest_seconds": busy.get(busiest, 0.0)}


# ---- topologies -------------------------------------------------------------------------

def chain(members):
    return list(zip(members, members[1:]))


def tree(members, fanout=2):
    return [(members[(p - 1) // fanout], members[p]) for p in range(1, len(members))]


def gpus(nodes, per_node):
    return [f"{n}.{g}" for n in range(nodes) for g in range(per_node)]


def scenarios(machine: Machine, chunk_bytes: float, model_gb: float = 140.0, replica_gb: float = 16.06):
    """The cases docs/MULTI_GPU.md discusses: (name, flows)."""
    node = gpus(1, 8)
    shard = model_gb / 8 * GB
    out = {}
    # One node, a 70B model at TP=8: every GPU needs its own eighth, and only the host has it.
    out["node: 70B TP=8, every GPU from the host (pool)"] = [Flow(shard, "host:0", [("host:0", g)]) for g in node]
    # One node, eight data-parallel replicas of an 8B model.
    replica = replica_gb * GB
    out["node: 8 x 8B replicas, each from the host"] = [Flow(replica, "host:0", [("host:0", g)]) for g in node]
    out["node: 8 x 8B replicas, one from the host, NVLink chain"] = [
        Flow(replica, "host:0", [("host:0", node[0])] + chain(node))]
    out["node: 8 x 8B replicas, gang (1/8 each from the host, NVLink ring)"] = [
        Flow(replica / 8, "host:0", [("host:0", node[i])] + chain(node[i:] + node[:i])) for i in range(8)]
    # As thaw_vllm.gang runs it: every member's share lands before the ring starts.
    shares = [Flow(replica / 8, "host:0", [("host:0", g)]) for g in node]
    landed = simulate(machine, shares, chunk_bytes)["seconds"]
    out["node: 8 x 8B replicas, gang as built (every share lands, then the ring)"] = shares + [
        Flow(replica / 8, node[i], chain(node[i:] + node[:i]), start=landed) for i in range(8)]
    # One process restoring one replica onto GPU 0 while the other GPUs idle (borrowed links):
    # its own link only, or an equal share over each of k GPUs' links, forwarded over NVLink.
    out["node: one 8B replica onto GPU 0, its own link only"] = [Flow(replica, "host:0", [("host:0", node[0])])]
    for k in (2, 8):
        out[f"node: one 8B replica onto GPU 0, borrowed links ({k} GPUs' PCIe, NVLink into GPU 0)"] = [
            Flow(replica / k, "host:0", [("host:0", node[i])] + ([(node[i], node[0])] if i else [])) for i in range(k)]
    # Eight nodes, 70B at TP=8 on each (DP=8): the 8 GPUs of one tp rank form one group.
    for rails in (8, 1):
        m = Machine(**{**machine.__dict__, "rails": rails, "rates": {}})
        groups = [[f"{n}.{g}" for n in range(8)] for g in range(8)]
        label = f"{rails} NIC{'s' if rails > 1 else ''} a node"
        out[f"cluster ({label}): 70B TP=8 x DP=8, chain per tp rank"] = (
            m, [Flow(shard, "host:0", [("host:0", grp[0])] + chain(grp)) for grp in groups])
        out[f"cluster ({label}): 70B TP=8 x DP=8, binary tree per tp rank"] = (
            m, [Flow(shard, "host:0", [("host:0", grp[0])] + tree(grp)) for grp in groups])
    return out


def run(machine: Machine, chunk_bytes: float) -> dict:
    results = {}
    for name, case in scenarios(machine, chunk_bytes).items():
        m, flows = case if isinstance(case, tuple) else (machine, case)
        results[name] = simulate(m, flows, chunk_bytes)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--chunk-mib", type=float, default=32.0)
    for key, value in MEASURED.items():
        parser.add_argument("--" + key.replace("_", "-"), type=float, default=value)
    args = parser.parse_args(argv)
    if not 0.0625 <= args.chunk_mib <= 4096:
        parser.error("--chunk-mib must be in 1/16..4096")
    machine = Machine(**{k: getattr(args, k) for k in MEASURED})
    results = run(machine, args.chunk_mib * (1 << 20))
    for name, r in results.items():
        print(f"{r['seconds']:8.3f} s  {name}  (busiest: {r['busiest']}, {r['busiest_seconds']:.3f} s)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": MEASURED | {k: getattr(args, k) for k in MEASURED}, "chunk_mib": args.chunk_mib,
                       "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
