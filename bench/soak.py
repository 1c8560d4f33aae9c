"""`python -m bench soak`: pod churn in a two-node lab with NetworkPolicies in force. By default
1,000 pod creations and deletions spread over 10 minutes, in batches of 10 alternating between
the nodes, while the reliability lanes (bench.reliability) probe across nodes and policies.

Every batch's pods get labels the policies select: a `web` pod must be reachable from a client
and a `db` pod must not be, from the moment its creation returns. Figures: each agent's memory
(VmRSS) through the run, printed as a curve; what each node holds at the end against the start
(bridge ports, links, IPAM reservations, pod flows, all flows); failed probes on one node and
across nodes, and denied probes that connected. The last line is one JSON object.

Cross-node probes do fail now and then during churn, on the userspace datapath only: each link
added to or removed from a node's namespace (every pod's veth) makes ovs-vswitchd rebuild its
route table and tunnel-termination map, and for a moment Geneve arriving at the node is handed
to its kernel instead of being decapsulated (docs/reliability.md has the captures).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.reliability import (
    Lane,
    Traffic,
    World,
    agent_rss,
    dump_flows,
    inventory,
    pod_object,
    say,
    world,
)

Progress = Callable[[str], None]
BATCH = 10
# Labels in turn: web (clients may reach it), db (isolated), client (no ingress policy).
ROLES = ({"app": "web"}, {"app": "db"}, {"app": "client"})


def _quiet(_: str) -> None:
    pass


@dataclass
class SoakFigures:
    cycles: int = 0
    seconds: float = 0.0
    create_s: list[float] = field(default_factory=list)
    policy_misses: list[str] = field(default_factory=list)
    curve: list[tuple[float, int, int, int]] = field(default_factory=list)  # t, cycles, rss...


def batch_pods(number: int) -> list[dict[str, Any]]:
    """Batch `number`'s pods: alternating nodes, labels in turn."""
    return [
        pod_object(f"soak-{number}-{i}", f"node{1 + i % 2}", ROLES[i % len(ROLES)])
        for i in range(BATCH)
    ]


def check_verdicts(w: World, pods: Sequence[dict[str, Any]]) -> list[str]:
    """A client reaches the batch's first web pod and not its first db pod, at once."""
    misses = []
    client = w.pod("client")
    for role, allowed in (("web", True), ("db", False)):
        pod = next(p for p in pods if p["metadata"]["labels"]["app"] == role)
        lane = Lane(client, w.pod(pod["metadata"]["name"]), "TCP", allowed)
        if lane.probe_once(1.0)[0] != allowed:
            misses.append(repr(lane))
    return misses


def sample(w: World, started: float, cycles: int, figures: SoakFigures) -> None:
    rss = [agent_rss(w.node(n)) for n in ("node1", "node2")]
    figures.curve.append((time.monotonic() - started, cycles, rss[0], rss[1]))


def churn(w: World, cycles: int, duration: float, progress: Progress) -> SoakFigures:
    """Create and delete `cycles` pods in batches, paced over `duration` seconds."""
    figures = SoakFigures()
    batches = max(1, cycles // BATCH)
    started = time.monotonic()
    sample(w, started, 0, figures)
    for number in range(batches):
        pods = batch_pods(number)
        begin = time.monotonic()
        w.apply(pods)
        figures.create_s.append((time.monotonic() - begin) / len(pods))
        figures.policy_misses += check_verdicts(w, pods)
        w.delete(pods)
        figures.cycles += len(pods)
        sample(w, started, figures.cycles, figures)
        if (number + 1) % 10 == 0:
            progress(f"{figures.cycles} pods created and deleted, {_mib(figures.curve[-1])}")
        # Pace: batch n+1 starts no earlier than its share of the duration.
        wait = started + duration * (number + 1) / batches - time.monotonic()
        if wait > 0:
            time.sleep(wait)
    figures.seconds = time.monotonic() - started
    return figures


def _mib(point: tuple[float, int, int, int]) -> str:
    return f"agents {point[2] / 2**20:.1f} / {point[3] / 2**20:.1f} MiB"


def memory_growth(curve: Sequence[tuple[float, int, int, int]], node: int) -> float:
    """MiB from the median of the first fifth (after the first batch) to that of the last."""
    values = [point[2 + node] for point in curve[1:]]
    fifth = max(1, len(values) // 5)
    return (statistics.median(values[-fifth:]) - statistics.median(values[:fifth])) / 2**20


def _settled_flow_counts(nodes: list[Any], want: list[int], timeout: float = 10.0) -> list[int]:
    """Flow counts once the agents have caught up with the last deletions (the manifests source
    polls, then peers' policy flows follow): the counts at `want`, or what they are at timeout,
    so a real leak still shows."""
    deadline = time.monotonic() + timeout
    while True:
        counts = [len(dump_flows(n)) for n in nodes]
        if counts == want or time.monotonic() > deadline:
            return counts
        time.sleep(0.2)


def soak(
    cycles: int = 1000, duration: float = 600.0, progress: Progress = _quiet
) -> dict[str, Any]:
    with world(progress=_quiet) as w:
        nodes = [w.node("node1"), w.node("node2")]
        before = [inventory(n) for n in nodes]
        flows_before = [len(dump_flows(n)) for n in nodes]
        with Traffic(w.lanes(), interval=0.5) as traffic:
            figures = churn(w, cycles, duration, progress)
        lanes = traffic.figures()
        leaks = {n.name: inventory(n).leaks_against(b) for n, b in zip(nodes, before, strict=True)}
        flows_after = _settled_flow_counts(nodes, flows_before)
    return {
        "scenario": "soak",
        "cycles": figures.cycles,
        "seconds": round(figures.seconds, 1),
        "create_s_median": round(statistics.median(figures.create_s), 3),
        "policy_misses": figures.policy_misses,
        "allowed_probes": lanes.allowed_probes,
        "failed_same_node": _failed(traffic.lanes, cross_node=False),
        "failed_cross_node": _failed(traffic.lanes, cross_node=True),
        "cross_node_probes": sum(
            len(x.results) for x in traffic.lanes if x.cross_node and x.allowed
        ),
        "leaked_probes": lanes.leaked,
        "leaks": {name: found for name, found in leaks.items() if found},
        "flows_before": flows_before,
        "flows_after": flows_after,
        "rss_mib_growth": [round(memory_growth(figures.curve, i), 2) for i in (0, 1)],
        "rss_mib_first_last": [
            [round(figures.curve[0][2 + i] / 2**20, 1), round(figures.curve[-1][2 + i] / 2**20, 1)]
            for i in (0, 1)
        ],
        "curve": [[round(t, 1), c, a, b] for t, c, a, b in figures.curve],
    }


def _failed(lanes: Sequence[Lane], cross_node: bool) -> int:
    return sum(x.failures() for x in lanes if x.allowed and x.cross_node == cross_node)


def print_curve(curve: Sequence[Sequence[float]], every: int) -> None:
    print(f"{'t (s)':>8} {'pods':>6} {'node1 MiB':>10} {'node2 MiB':>10}")
    for i, (t, cycles, a, b) in enumerate(curve):
        if i % every == 0 or i == len(curve) - 1:
            print(f"{t:8.1f} {int(cycles):6d} {a / 2**20:10.1f} {b / 2**20:10.1f}")


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__)
    parser.add_argument("--cycles", type=int, default=1000, help="Pods created and deleted.")
    parser.add_argument("--duration", type=float, default=600.0, help="Seconds to spread them.")
    args = parser.parse_args(list(argv))
    if os.geteuid() != 0:
        print("bench soak needs root (namespaces, OVS)", flush=True)
        return 2
    figures = soak(args.cycles, args.duration, progress=say)
    print_curve(figures["curve"], every=max(1, len(figures["curve"]) // 20))
    for key, value in figures.items():
        if key != "curve":
            print(f"{key:<22} {value}")
    print(json.dumps(figures), flush=True)
    return 0
