"""`python -m bench policy-datapath`: iperf3 pod to pod with 1,000 NetworkPolicy rules installed
against no policies, in one run, in a 2-node lab; target ratio >= 0.9.

The lab (`plumbctl lab`, real agents, real CNI, the full pipeline) runs a client and server-a
on node1 and server-b on node2, so both paths are measured: one node (client -> server-a) and
across nodes over Geneve (client -> server-b). The rules, `--rules` NetworkPolicies of one rule
each: half are ingress rules of the servers (`app: server`), half egress rules of the client,
each with its own peer (a /32 outside the cluster) and its own TCP port, so every one of them is
a conjunction with its own clause flows on the nodes; one rule of each direction allows the pair
(client -> servers on iperf3's port), so the measured connection is allowed by exactly one
ingress and one egress rule among them, and everything else to the servers is dropped.

Each round measures both paths with no policies, then writes the policies, waits until every
node's flows are exactly what the model asks for (`plumbctl policy`'s report), checks that the
isolation is real (the servers' port 80 blocked, iperf3's port open), measures both paths again,
and deletes the policies (waiting until no policy flow is left). One iperf3 TCP stream per
measurement, `--seconds` long; the median of `--rounds` rounds is kept. The ratio is with
policies over without.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from bench.datapath import IPERF_PORT, iperf
from lab import apply as lab_apply
from lab import cluster
from lab.layout import LabLayout
from lab.pods import record
from lab.probe import Endpoint, Probe, run_probes
from plumbctl.nodes import lab_cluster
from plumbctl.policy import Datapath, current_flows, report

NAMESPACE = "bench"
PODS = (
    ("client", "node1", "client"),
    ("server-a", "node1", "server"),
    ("server-b", "node2", "server"),
)
PATHS = {"local": "server-a", "cross": "server-b"}
TARGET_RATIO = 0.9
SYNC_TIMEOUT = 120.0
Obj = dict[str, Any]


# --- the objects -------------------------------------------------------------------------------


def pod_objects() -> list[Obj]:
    return [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": app}},
            "spec": {
                "nodeName": node,
                "containers": [{"name": "c", "image": "none", "ports": [{"containerPort": 80}]}],
            },
        }
        for name, node, app in PODS
    ]


def _outside(i: int) -> str:
    """A /32 outside the lab's pod CIDR (10.244.0.0/16): a peer no packet of the run comes from."""
    return f"10.99.{i // 250}.{i % 250 + 1}/32"


def policy_objects(rules: int) -> list[Obj]:
    """`rules` policies of one rule each: even ones ingress of the servers, odd ones egress of
    the client; policies 0 and 1 allow the pair on iperf3's port, the others each an outside
    /32 on a port of their own."""
    return [_policy(i) for i in range(rules)]


def _policy(i: int) -> Obj:
    ingress = i % 2 == 0
    if i < 2:
        peer: Obj = {"podSelector": {"matchLabels": {"app": "client" if ingress else "server"}}}
        port = IPERF_PORT
    else:
        peer, port = {"ipBlock": {"cidr": _outside(i)}}, 10000 + i
    rule = {"ports": [{"protocol": "TCP", "port": port}], ("from" if ingress else "to"): [peer]}
    direction = "ingress" if ingress else "egress"
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": f"rule-{i:04d}", "namespace": NAMESPACE},
        "spec": {
            "podSelector": {"matchLabels": {"app": "server" if ingress else "client"}},
            "policyTypes": [direction.capitalize()],
            direction: [rule],
        },
    }


# --- the run -----------------------------------------------------------------------------------


class Bench:
    def __init__(self, name: str, rules: int, seconds: float, say: Callable[[str], None]) -> None:
        self.name, self.rules, self.seconds, self.say = name, rules, seconds, say
        self.layout = LabLayout(name)
        self.pods: dict[str, Endpoint] = {}

    def up(self) -> None:
        cluster.up(self.name, nodes=2, encap="geneve")
        _check(lab_apply.apply(self.layout, pod_objects(), lambda _: None))
        for name, _, _ in PODS:
            rec = record(self.layout, NAMESPACE, name)
            assert rec is not None and rec.ip, f"pod {name} has no address"
            self.pods[name] = Endpoint(f"{NAMESPACE}/{name}", rec.netns, rec.ip)

    def measure(self) -> dict[str, float]:
        client = self.pods["client"]
        return {
            path: iperf(client.netns, self.pods[server].netns, self.pods[server].ip, self.seconds)
            for path, server in PATHS.items()
        }

    def install(self) -> dict[str, Any]:
        start = time.monotonic()
        _check(lab_apply.apply(self.layout, policy_objects(self.rules), lambda _: None))
        waited = self.wait_in_sync()
        blocked = self.port_80_open()
        if any(blocked.values()):
            raise RuntimeError(f"with policies the servers' port 80 is still open: {blocked}")
        return {"install_s": time.monotonic() - start, "sync_s": waited, **self.flow_counts()}

    def remove(self) -> None:
        _check(lab_apply.delete(self.layout, policy_objects(self.rules), lambda _: None))
        self.wait_in_sync()
        if not all(self.port_80_open().values()):
            raise RuntimeError("without policies a server's port 80 is closed")

    def wait_in_sync(self) -> float:
        start = time.monotonic()
        while not report(lab_cluster(self.name)).in_sync:
            if time.monotonic() - start > SYNC_TIMEOUT:
                problems = report(lab_cluster(self.name)).problems()
                raise RuntimeError(f"policies not realised in {SYNC_TIMEOUT:g}s: {problems[:5]}")
            time.sleep(0.5)
        return time.monotonic() - start

    def port_80_open(self) -> dict[str, bool]:
        client = self.pods["client"]
        probes = [Probe(client, self.pods[s], 80, "TCP") for s in PATHS.values()]
        return {r.probe.dst.ref: r.connected for r in run_probes(probes, timeout=1.0)}

    def flow_counts(self) -> dict[str, int]:
        """Conjunctions (rules with flows) on each node's bridge."""
        lab = lab_cluster(self.name)
        out = {}
        for node in lab.nodes:
            datapath = Datapath.of(current_flows(lab, node))
            out[f"conjunctions_{node.name}"] = sum(len(v) for v in datapath.by_signature.values())
        return out


def _check(outcome: lab_apply.Outcome) -> None:
    if outcome.errors:
        raise RuntimeError("; ".join(outcome.errors[:5]))


def run(rules: int, seconds: float, rounds: int, say: Callable[[str], None]) -> dict[str, Any]:
    bench = Bench(f"bpd{uuid.uuid4().hex[:5]}", rules, seconds, say)
    samples: dict[str, list[float]] = {f"{p}_{w}": [] for p in PATHS for w in ("none", "rules")}
    installs: list[dict[str, Any]] = []
    try:
        bench.up()
        for n in range(1, rounds + 1):
            for path, gbps in bench.measure().items():
                samples[f"{path}_none"].append(gbps)
            installs.append(bench.install())
            for path, gbps in bench.measure().items():
                samples[f"{path}_rules"].append(gbps)
            bench.remove()
            say(f"round {n}/{rounds}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in samples.items()))
    finally:
        cluster.down(bench.name)
    return _result(samples, installs, rules, seconds, rounds)


def _result(
    samples: dict[str, list[float]],
    installs: list[dict[str, Any]],
    rules: int,
    seconds: float,
    rounds: int,
) -> dict[str, Any]:
    result: dict[str, Any] = {k: statistics.median(v) for k, v in samples.items()}
    for path in PATHS:
        result[f"ratio_{path}"] = result[f"{path}_rules"] / result[f"{path}_none"]
    result["install_s"] = statistics.median(i["install_s"] for i in installs)
    for key in installs[0]:
        if key.startswith("conjunctions_"):
            result[key] = installs[0][key]
    result.update(rules=rules, seconds=seconds, rounds=rounds, target_ratio=TARGET_RATIO)
    result["load_average"] = round(os.getloadavg()[0], 2)
    return result


def print_table(r: dict[str, Any], say: Callable[[str], None] = print) -> None:
    say(
        f"one iperf3 TCP stream, {r['seconds']:g} s x {r['rounds']} rounds (median); "
        f"{r['rules']} rules installed in {r['install_s']:.1f} s (write to in sync), "
        f"conjunctions: node1 {r.get('conjunctions_node1')}, node2 {r.get('conjunctions_node2')}"
    )
    say(f"{'path':<22} {'no policies':>13} {'rules':>13} {'ratio':>7}  target")
    for label, path in (("one node", "local"), ("across nodes (geneve)", "cross")):
        ratio = r[f"ratio_{path}"]
        verdict = "ok" if ratio >= TARGET_RATIO else "BELOW"
        say(
            f"{label:<22} {r[f'{path}_none']:>8.2f} Gb/s {r[f'{path}_rules']:>8.2f} Gb/s "
            f"{ratio:>7.2f}  >= {TARGET_RATIO} {verdict}"
        )


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench policy-datapath", description=__doc__)
    parser.add_argument("--rules", type=int, default=1000, help="rules installed (>= 2)")
    parser.add_argument("--seconds", type=float, default=5.0, help="per iperf3 run")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(list(argv))
    if os.geteuid() != 0:
        print("bench policy-datapath needs root (namespaces, OVS)", flush=True)
        return 2
    if args.rules < 2:
        parser.error("--rules must be at least 2 (one allowing rule per direction)")
    result = run(args.rules, args.seconds, args.rounds, lambda s: print(s, file=sys.stderr))
    print_table(result)
    print(json.dumps(result))
    return 0
