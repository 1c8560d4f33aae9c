"""`python -m bench soak`: pod churn in a two-node lab with NetworkPolicies in force. By default
1,000 pod creations and deletions spread over 10 minutes, in batches of 10 alternating between
the nodes, while the reliability lanes (bench.reliability) probe across nodes and policies.

Every batch's pods get labels the policies select: a `web` pod must be reachable from a client
and a `db` pod must not be, from the moment its creation returns. Figures: each agent's memory
(VmRSS) through the run, printed as a curve; what each node holds at the end against the start
(bridge ports, links, IPAM reservations, pod flows, all flows); failed probes on one node and
across nodes, and denied probes that connected. The last line is one JSON object.

`--builders` runs no lab (and needs no root): the same churn in this process, through the real
policy reconciler (store, model, policy flows), each local pod's flows and the OpenFlow encoder,
with `tracemalloc` counting the bytes still held after a warm-up and after N more pods, and the
flow builders' cache sizes: what pod churn leaves in them, without the rest of the agent.

`--pings` runs the same churn with two pings across the nodes, one each way, every 5 ms, and
counts the echoes lost and in runs of how many: a finer instrument than the lanes for packets
lost across nodes while pods come and go. On OVS 3.1's userspace datapath each link added to
or removed from a node's namespace makes ovs-vswitchd flush and re-read its copy of the
kernel's routes, and flushing a route through br-phy took br-phy's address out of its
tunnel-termination map for a moment; a revalidator translating a flow then sent arriving
Geneve to br-phy's kernel and tunnelled packets nowhere, until the next revalidation. The lab
now keeps br-phy's kernel routes out of ovs-vswitchd's sight and gives it a route of its own
(lab.cluster.hide_underlay_routes): 0 echoes lost in 400 pods, against 29 to 55 per 100 pods
in runs of 1 to 5 echoes with the former routing (`PLUMB_LAB_UNDERLAY_ROUTES=kernel`);
docs/reliability.md has the mechanism and the figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import re
import signal
import statistics
import subprocess
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from bench.reliability import (
    NAMESPACE,
    PODS,
    POLICIES,
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
from controller.policies import LocalPod, PolicyReconciler
from controller.store import Store
from controller.switch import Switch
from flows import encode
from flows import policy as policy_flows
from flows.diff import FlowDiff
from flows.flow import Flow
from flows.pod import LocalNode, PodPort, pod_flows
from lab import cluster, host

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
    cycles: int = 1000,
    duration: float = 600.0,
    progress: Progress = _quiet,
    interval: float = 0.5,
) -> dict[str, Any]:
    with world(progress=_quiet) as w:
        nodes = [w.node("node1"), w.node("node2")]
        before = [inventory(n) for n in nodes]
        flows_before = [len(dump_flows(n)) for n in nodes]
        with Traffic(w.lanes(), interval=interval) as traffic:
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
        "max_outage_ms": round(lanes.max_outage_ms, 1),
        "failure_reasons": lanes.failure_reasons,
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


# --- pings: packets lost across nodes during pod churn ------------------------------------------

# Allowed ICMP, one each way across the nodes (bench.reliability's VERDICTS).
PING_PAIRS = (("client", "web"), ("peer", "local-web"))


def _start_ping(
    w: World, src: str, dst: str, interval: float, out: IO[str]
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        host.in_ns(w.pod(src).netns, "ping", "-n", "-i", str(interval), "-W", "1", w.pod(dst).ip),
        stdout=out,  # a file: a pipe nobody reads during the churn would stop ping when full
        stderr=subprocess.DEVNULL,
        text=True,
    )


def lost_runs(output: str) -> tuple[int, list[int]]:
    """From ping's per-reply lines: the last sequence number answered and the runs of
    consecutive unanswered ones before it (their lengths)."""
    answered = sorted({int(m) for m in re.findall(r"icmp_seq=(\d+)", output)})
    if not answered:
        return 0, []
    runs = [b - a - 1 for a, b in zip([0, *answered], answered, strict=False) if b - a > 1]
    return answered[-1], runs


def pings(cycles: int, duration: float, interval: float = 0.005) -> dict[str, Any]:
    """Ping across the nodes both ways every `interval` s while `cycles` pods are created and
    deleted (as the soak does): how many echoes went unanswered, and in runs of how many."""
    with world(progress=_quiet) as w, tempfile.TemporaryDirectory() as tmp:
        outs = {f"{a}->{b}": open(Path(tmp) / f"{a}-{b}", "w+") for a, b in PING_PAIRS}  # noqa: SIM115
        procs = {
            f"{a}->{b}": _start_ping(w, a, b, interval, outs[f"{a}->{b}"]) for a, b in PING_PAIRS
        }
        try:
            time.sleep(1.0)
            figures = churn(w, cycles, duration, _quiet)
            time.sleep(1.5)  # every echo sent during the churn has had its second to come back
        except BaseException:
            for proc in procs.values():
                proc.kill()
                proc.wait()
            raise
        result: dict[str, Any] = {
            "scenario": "soak-pings",
            "underlay_routes": cluster.UNDERLAY_ROUTES,
            "cycles": figures.cycles,
            "seconds": round(figures.seconds, 1),
            "interval_s": interval,
        }
        for name, proc in procs.items():
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=10)
            with outs[name] as out:
                out.seek(0)
                last, runs = lost_runs(out.read())
            result[name] = {"sent": last, "lost": sum(runs), "runs": runs}
    return result


# --- in process: what pod churn leaves in the flow builders --------------------------------------


class _EncodingSwitch:
    """`Switch.replace_many` as far as this process goes: every flow encoded, nothing sent."""

    def replace_many(self, changes: dict[str, Iterable[Flow]]) -> FlowDiff:
        for flows in changes.values():
            for flow in flows:
                encode.flow_mod(flow, encode.ADD, 1)
        return FlowDiff()


def builder_caches() -> dict[str, int]:
    """Entries in the flow builders' caches now."""
    return {
        "instruction_bytes": encode.instruction_bytes.cache_info().currsize,
        "_peer_keys": policy_flows._peer_keys.cache_info().currsize,
        "_parse_network": policy_flows._parse_network.cache_info().currsize,
        "_conjunction": policy_flows._conjunction.cache_info().currsize,
        "block_cidrs": policy_flows.block_cidrs.cache_info().currsize,
    }


def builders(warm: int, cycles: int) -> dict[str, Any]:
    """node1's agent in the soak, in process: the world's pods and policies, then batches of
    10 pods (alternating nodes, labels in turn, addresses reused as host-local does, a new port
    and MAC each) created and deleted; bytes held after `warm` pods and after `cycles` more."""
    rnd = random.Random(1)
    store = Store()
    store.upsert("Namespace", {"metadata": {"name": NAMESPACE}})
    store.upsert("Node", {"metadata": {"name": "node1"}, "spec": {"podCIDR": "10.244.1.0/24"}})
    for obj in POLICIES:
        store.upsert("NetworkPolicy", obj)
    local: dict[str, LocalPod] = {}
    held: dict[str, list[Flow]] = {}  # what the switch keeps of each local pod's flows
    reconciler = PolicyReconciler(
        store, cast(Switch, _EncodingSwitch()), 1, "node1", lambda: list(local.values())
    )
    reconciler.start()
    node = LocalNode("10.244.1.0/24", "10.244.1.1", "0a:58:0a:f4:01:01")
    ofports = iter(range(10, 1 << 30))
    hosts = {"node1": 0, "node2": 0}

    def add(name: str, where: str, labels: dict[str, str], ip: str) -> None:
        store.upsert(
            "Pod",
            {
                "metadata": {"namespace": NAMESPACE, "name": name, "labels": dict(labels)},
                "spec": {"nodeName": where, "containers": [{"name": "c"}]},
                "status": {"phase": "Running", "podIP": ip},
            },
        )
        if where == "node1":
            mac = "0a:58:" + ":".join(f"{rnd.randrange(256):02x}" for _ in range(4))
            port = PodPort(next(ofports), ip, mac)
            held[name] = pod_flows(port, node, 1)
            for flow in held[name]:
                encode.flow_mod(flow, encode.ADD, 1)
            local[name] = LocalPod(NAMESPACE, name, port.ofport, ip)
            reconciler.local_pod_changed(None, True)

    def remove(name: str) -> None:
        store.delete("Pod", NAMESPACE, name)
        if local.pop(name, None) is not None:
            del held[name]
            reconciler.local_pod_changed(None, False)

    def batch(number: int) -> None:
        where = f"node{1 + number % 2}"
        names = []
        for i in range(BATCH):
            subnet = 1 if where == "node1" else 2
            ip = f"10.244.{subnet}.{2 + hosts[where] % 190}"
            hosts[where] += 1
            names.append(f"soak-{number}-{i}")
            add(names[-1], where, ROLES[i % len(ROLES)], ip)
        reconciler.wait_idle(10)
        for name in names:
            remove(name)
        reconciler.wait_idle(10)

    for i, (name, where, labels) in enumerate(PODS):
        add(name, where, labels, f"10.244.{1 if where == 'node1' else 2}.{200 + i}")
    tracemalloc.start()
    try:
        for number in range(max(1, warm // BATCH)):
            batch(number)
        gc.collect()
        before, caches_before = tracemalloc.get_traced_memory()[0], builder_caches()
        more = max(1, cycles // BATCH)
        for number in range(warm // BATCH, warm // BATCH + more):
            batch(number)
        gc.collect()
        after, caches_after = tracemalloc.get_traced_memory()[0], builder_caches()
    finally:
        tracemalloc.stop()
        reconciler.stop()
    return {
        "scenario": "soak-builders",
        "warm_pods": max(1, warm // BATCH) * BATCH,
        "pods": more * BATCH,
        "held_kib_after_warm": round(before / 1024, 1),
        "held_kib_after": round(after / 1024, 1),
        "bytes_per_pod": round((after - before) / (more * BATCH)),
        "caches_after_warm": caches_before,
        "caches_after": caches_after,
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
    parser.add_argument(
        "--builders",
        action="store_true",
        help="No lab: the churn in process, bytes held by the flow builders after --warm pods "
        "and after --cycles more.",
    )
    parser.add_argument("--warm", type=int, default=1000, help="Pods before counting (--builders).")
    parser.add_argument(
        "--pings",
        action="store_true",
        help="Instead of the lanes: ping across the nodes both ways every 5 ms during the churn "
        "and count the echoes lost (PLUMB_LAB_UNDERLAY_ROUTES=kernel for the lab's former "
        "underlay routing).",
    )
    args = parser.parse_args(list(argv))
    if args.pings:
        if os.geteuid() != 0:
            print("bench soak needs root (namespaces, OVS)", flush=True)
            return 2
        result = pings(args.cycles, args.duration)
        for key, value in result.items():
            print(f"{key:<22} {value}")
        print(json.dumps(result), flush=True)
        return 0
    if args.builders:
        result = builders(args.warm, args.cycles)
        for key, value in result.items():
            print(f"{key:<22} {value}")
        print(json.dumps(result), flush=True)
        return 0
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
