"""`python -m bench policy-datapath`: iperf3 pod to pod with 1,000 NetworkPolicy rules installed
against no policies, in one run, in a 2-node lab; target ratio >= 0.9.

The lab (`plumbctl lab`, real agents, real CNI, the full pipeline) runs a client and server-a
on node1 and server-b on node2, so both paths are measured: one node (client -> server-a) and
across nodes over Geneve (client -> server-b). The rules (`--rules`, held by `--policies`
policies): half are ingress rules of the servers (`app: server`), half egress rules of the
client, each with its own peer (a /32 outside the cluster) and its own TCP port, so every one is
a conjunction with its own clause flows on the nodes (node1: 1,000, node2: 500). One rule of
each direction allows the pair (client -> servers on iperf3's port): the measured connection is
allowed by exactly one ingress and one egress rule among them, and everything else to the
servers is dropped (checked: their port 80 is closed while the rules are in).

The rules are written as the lab writes objects, and the run waits until every node's flows
are exactly what the model asks for (`plumbctl policy`'s report) and then 3 s more: the lab's
manifests source re-reads recently written files for 2 s, and it stats every file 5 times a
second, which is why the rules sit in few policies (1,000 policy files cost each agent ~0.1 of
a core, the lab's cost and not the datapath's). Measurements alternate without/with rules, then
with/without (ABBA), so a drift of the machine's load weighs on both sides alike. One iperf3
TCP stream per measurement, `--seconds` long; medians of `--rounds` rounds; the ratio is with
rules over without.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from bench.datapath import IPERF_PORT, _wait_listening
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
SETTLE = 3.0
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


def policy_objects(rules: int, policies: int) -> list[Obj]:
    """`rules` rules in `policies` policies: even policies hold ingress rules of the servers, odd
    ones egress rules of the client; the first rule of policies 0 and 1 allows the pair on
    iperf3's port, every other rule an outside /32 on a port of its own."""
    per_policy = -(-rules // policies)
    out = []
    for p in range(policies):
        numbers = range(p * per_policy, min(rules, (p + 1) * per_policy))
        if numbers:
            out.append(_policy(p, [_rule(p % 2 == 0, n, first=n == p * per_policy and p < 2)
                                   for n in numbers]))  # fmt: skip
    return out


def _rule(ingress: bool, n: int, first: bool) -> Obj:
    if first:
        peer: Obj = {"podSelector": {"matchLabels": {"app": "client" if ingress else "server"}}}
        port = IPERF_PORT
    else:
        peer, port = {"ipBlock": {"cidr": _outside(n)}}, 10000 + n
    return {"ports": [{"protocol": "TCP", "port": port}], ("from" if ingress else "to"): [peer]}


def _policy(p: int, rules: list[Obj]) -> Obj:
    ingress = p % 2 == 0
    direction = "ingress" if ingress else "egress"
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": f"rules-{p:04d}", "namespace": NAMESPACE},
        "spec": {
            "podSelector": {"matchLabels": {"app": "server" if ingress else "client"}},
            "policyTypes": [direction.capitalize()],
            direction: rules,
        },
    }


# --- the run -----------------------------------------------------------------------------------


def iperf(client_netns: str, server: Endpoint, seconds: float) -> tuple[float, int]:
    """Gbit/s received by one iperf3 TCP stream, and the sender's retransmits (the userspace
    datapath drops packets under load; the count says whether the rules add to it)."""
    cmd = ["ip", "netns", "exec", server.netns, "iperf3", "-s", "-p", str(IPERF_PORT)]
    daemon = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(server.netns, IPERF_PORT)
        done = subprocess.run(
            ["ip", "netns", "exec", client_netns, "iperf3", "-c", server.ip,
             "-p", str(IPERF_PORT), "-t", str(seconds), "-J", "--connect-timeout", "3000"],
            capture_output=True, text=True, timeout=seconds + 30, check=False,
        )  # fmt: skip
        end = json.loads(done.stdout or "{}").get("end") or {}
        if done.returncode != 0 or "sum_received" not in end:
            raise RuntimeError(f"iperf3 {client_netns} -> {server.ip}: {done.stdout[-300:]}")
        received = float(end["sum_received"]["bits_per_second"]) / 1e9
        return received, int(end["sum_sent"].get("retransmits") or 0)
    finally:
        daemon.kill()
        daemon.wait()


class Bench:
    def __init__(self, name: str, rules: int, policies: int, seconds: float) -> None:
        self.name, self.seconds = name, seconds
        self.objects = policy_objects(rules, policies)
        self.layout = LabLayout(name)
        self.pods: dict[str, Endpoint] = {}
        self.installed = False

    def up(self) -> None:
        cluster.up(self.name, nodes=2, encap="geneve")
        _check(lab_apply.apply(self.layout, pod_objects(), lambda _: None))
        for name, _, _ in PODS:
            rec = record(self.layout, NAMESPACE, name)
            assert rec is not None and rec.ip, f"pod {name} has no address"
            self.pods[name] = Endpoint(f"{NAMESPACE}/{name}", rec.netns, rec.ip)

    def measure(self) -> dict[str, tuple[float, int]]:
        """Per path: Gbit/s received and TCP retransmits of one iperf3 stream."""
        client = self.pods["client"]
        return {
            path: iperf(client.netns, self.pods[server], self.seconds)
            for path, server in PATHS.items()
        }

    def install(self) -> dict[str, Any]:
        """Write the policies; seconds until every node holds them, and the flow counts."""
        start = time.monotonic()
        _check(lab_apply.apply(self.layout, self.objects, lambda _: None))
        self.wait_in_sync()
        took = time.monotonic() - start
        open_ = self.port_80_open()
        if any(open_.values()):
            raise RuntimeError(f"with policies the servers' port 80 is still open: {open_}")
        self.installed = True
        return {"install_s": took, **self.flow_counts()}

    def remove(self) -> None:
        _check(lab_apply.delete(self.layout, self.objects, lambda _: None))
        self.wait_in_sync()
        if not all(self.port_80_open().values()):
            raise RuntimeError("without policies a server's port 80 is closed")
        self.installed = False

    def set_rules(self, wanted: bool, installs: list[dict[str, Any]]) -> None:
        """Install or remove the policies, then let the agents settle: the manifests source
        compares recently written files by content for two seconds, which is the lab's
        cost, not the datapath's."""
        if wanted == self.installed:
            return
        if wanted:
            installs.append(self.install())
        else:
            self.remove()
        time.sleep(SETTLE)

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


def run(
    rules: int, policies: int, seconds: float, rounds: int, say: Callable[[str], None]
) -> dict[str, Any]:
    """`rounds` pairs of measurements, without then with the rules and the other way round in
    turn (ABBA), so that a drift of the machine's load weighs on both sides alike."""
    bench = Bench(f"bpd{uuid.uuid4().hex[:5]}", rules, policies, seconds)
    sides = [f"{p}_{w}" for p in PATHS for w in ("none", "rules")]
    samples: dict[str, list[float]] = {k: [] for k in sides}
    retransmits: dict[str, list[int]] = {k: [] for k in sides}
    installs: list[dict[str, Any]] = []
    try:
        bench.up()
        for n in range(rounds):
            for with_rules in (False, True) if n % 2 == 0 else (True, False):
                bench.set_rules(with_rules, installs)
                for path, (gbps, retrans) in bench.measure().items():
                    side = f"{path}_{'rules' if with_rules else 'none'}"
                    samples[side].append(gbps)
                    retransmits[side].append(retrans)
            say(
                f"round {n + 1}/{rounds}: "
                + ", ".join(f"{k} {v[-1]:.2f}" for k, v in samples.items())
            )
    finally:
        cluster.down(bench.name)
    result = _result(samples, installs, rules, policies, seconds, rounds)
    for side, counts in retransmits.items():
        result[f"{side}_retransmits"] = statistics.median(counts)
    return result


def _result(
    samples: dict[str, list[float]],
    installs: list[dict[str, Any]],
    rules: int,
    policies: int,
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
    result.update(rules=rules, policies=policies, seconds=seconds, rounds=rounds)
    result["target_ratio"] = TARGET_RATIO
    result["load_average"] = round(os.getloadavg()[0], 2)
    return result


def print_table(r: dict[str, Any], say: Callable[[str], None] = print) -> None:
    say(
        f"one iperf3 TCP stream, {r['seconds']:g} s x {r['rounds']} rounds (median); "
        f"{r['rules']} rules in {r['policies']} policies installed in {r['install_s']:.1f} s "
        "(write to in sync), "
        f"conjunctions: node1 {r.get('conjunctions_node1')}, node2 {r.get('conjunctions_node2')}"
    )
    say(f"{'path':<22} {'no policies':>13} {'rules':>13} {'ratio':>7}  {'target':<11} retransmits")
    for label, path in (("one node", "local"), ("across nodes (geneve)", "cross")):
        ratio = r[f"ratio_{path}"]
        verdict = "ok" if ratio >= TARGET_RATIO else "BELOW"
        retrans = f"{r[f'{path}_none_retransmits']:.0f} / {r[f'{path}_rules_retransmits']:.0f}"
        say(
            f"{label:<22} {r[f'{path}_none']:>8.2f} Gb/s {r[f'{path}_rules']:>8.2f} Gb/s "
            f"{ratio:>7.2f}  >= {TARGET_RATIO} {verdict:<5} {retrans}"
        )


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench policy-datapath", description=__doc__)
    parser.add_argument("--rules", type=int, default=1000, help="rules installed (>= 2)")
    parser.add_argument(
        "--policies", type=int, default=10, help="policies holding them (>= 2, <= --rules)"
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="per iperf3 run")
    parser.add_argument("--rounds", type=int, default=4, help="measurements per side")
    args = parser.parse_args(list(argv))
    if os.geteuid() != 0:
        print("bench policy-datapath needs root (namespaces, OVS)", flush=True)
        return 2
    if not 2 <= args.policies <= args.rules:
        parser.error("need 2 <= --policies <= --rules (one allowing rule per direction)")
    result = run(args.rules, args.policies, args.seconds, args.rounds, _progress)
    print_table(result)
    print(json.dumps(result))
    return 0
