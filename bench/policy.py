"""`python -m bench policy`: NetworkPolicy flow counts, realization latency, initial install, RSS.

Three parts, figures printed as a table and, last line, one JSON object:

1. Flow count for P policies x Q selected (local) pods x R peer pods, each of 10, 100 and 1,000
   (and all three at 1,000), compiled by the real model and flow builder: the count must add
   (4 per policy, 2 per target, 1 per peer here), not multiply.
2. A cluster of 10,000 pods in 1,000 namespaces with one policy each (1,000 policies: ingress from
   the namespace's clients on a port and a named port, from monitoring namespaces on another,
   egress to the namespace's database and to DNS), and `--local` of the pods attached to this
   node, loaded into a store; the reconciler's initial compile and install into a real bridge
   (private OVS, userspace datapath) is timed, then changes of several kinds are made to the
   store one at a time and timed from the store write to the bundle committed (p50, p99).
3. Peak RSS of this process (store, model, flows, switch cache), after parts 1 and 2.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.bridge import BridgeSettings, ensure_node_bridge
from controller.netpol_model import PolicyModel, pod_info
from controller.policies import LocalPod, PolicyReconciler
from controller.store import Store
from controller.switch import Switch
from flows.policy import LocalTarget, PolicyFlows
from flows.skeleton import skeleton_flows
from lab.ovs_sandbox import OvsSandbox

NODE = "node-0"
TARGETS = {"p99_ms": 200.0, "initial_s": 10.0, "rss_mb": 300.0}


# --- part 1: flow counts ------------------------------------------------------------------------


def _pod(ns: str, name: str, ip: str, node: str, **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"namespace": ns, "name": name, "labels": labels},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}],
        },
        "status": {"phase": "Running", "podIP": ip},
    }


def _ip(block: int, i: int) -> str:
    return f"10.{block}.{i // 250}.{i % 250 + 1}"


def count_flows(policies: int, targets: int, peers: int) -> dict[str, int]:
    """Compile P policies (each: the role=target pods, from role=peer pods, on its own port)."""
    model = PolicyModel()
    model.set_namespace("bench", {})
    local = {}
    for i in range(targets):
        info = pod_info(_pod("bench", f"t{i}", _ip(1, i), NODE, role="target"))
        model.set_pod(info.key, info)
        local[info.key] = LocalTarget(10 + i, _ip(1, i))
    for i in range(peers):
        info = pod_info(_pod("bench", f"r{i}", _ip(2, i), "node-1", role="peer"))
        model.set_pod(info.key, info)
    model.set_local_pods(local)
    flows = PolicyFlows(1)
    for p in range(policies):
        model.set_policy(
            ("bench", f"p{p}"),
            {
                "metadata": {"namespace": "bench", "name": f"p{p}"},
                "spec": {
                    "podSelector": {"matchLabels": {"role": "target"}},
                    "ingress": [
                        {
                            "from": [{"podSelector": {"matchLabels": {"role": "peer"}}}],
                            "ports": [{"port": 1000 + p}],
                        }
                    ],
                },
            },
        )
        compiled = model.compile(("bench", f"p{p}"))
        flows.update_policy(f"bench/p{p}", compiled.rules, compiled.isolated, 0.0)
    built = flows.all_flows()
    actions = sum(len(f.actions) for f in built if f.priority == 200)
    return {"flows": len(built), "clause_actions": actions}


GRID = [
    (10, 10, 10),
    (100, 10, 10),
    (1000, 10, 10),
    (10, 100, 10),
    (10, 1000, 10),
    (10, 10, 100),
    (10, 10, 1000),
    (1000, 1000, 1000),
]


# --- part 2: the cluster -------------------------------------------------------------------------


def cluster_objects(namespaces: int, local: int) -> tuple[list[Any], list[Any], list[Any]]:
    """Namespaces ns-i (the first tenth labelled monitoring), 10 pods each (3 web, 5 clients,
    1 db, 1 exporter) on 100 nodes, and one policy per namespace. The web-0 pod of the first
    `local` namespaces runs on this node."""
    spaces, pods, policies = [], [], []
    for n in range(namespaces):
        ns = f"ns-{n}"
        labels = {"monitoring": "true"} if n < namespaces // 10 else {"team": f"t{n % 7}"}
        spaces.append({"metadata": {"name": ns, "labels": labels}})
        roles = ["web"] * 3 + ["client"] * 5 + ["db", "exporter"]
        for i, role in enumerate(roles):
            index = n * 10 + i
            node = NODE if (i == 0 and n < local) else f"node-{1 + index % 99}"
            ip = f"10.{64 + index // 62500}.{(index // 250) % 250}.{index % 250 + 1}"
            pods.append(_pod(ns, f"{role}-{i}", ip, node, app=role))
        policies.append(namespace_policy(ns, 80))
    return spaces, pods, policies


def namespace_policy(ns: str, port: int) -> dict[str, Any]:
    return {
        "metadata": {"namespace": ns, "name": "web", "uid": f"uid-{ns}-web"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                    "ports": [{"port": port}, {"port": "http"}],
                },
                {
                    "from": [
                        {
                            "namespaceSelector": {"matchLabels": {"monitoring": "true"}},
                            "podSelector": {"matchLabels": {"app": "exporter"}},
                        }
                    ],
                    "ports": [{"port": 9100}],
                },
            ],
            "egress": [
                {
                    "to": [{"podSelector": {"matchLabels": {"app": "db"}}}],
                    "ports": [{"port": 5432}],
                },
                {
                    "to": [{"ipBlock": {"cidr": "10.96.0.0/12"}}],
                    "ports": [{"protocol": "UDP", "port": 53}],
                },
            ],
        },
    }


class Bench:
    """A store loaded with the cluster, a real bridge and the reconciler between them."""

    def __init__(self, ovs: OvsSandbox, namespaces: int, local: int) -> None:
        self.store = Store()
        spaces, pods, policies = cluster_objects(namespaces, local)
        self.namespaces = namespaces
        for obj in spaces:
            self.store.upsert("Namespace", obj)
        for obj in pods:
            self.store.upsert("Pod", obj)
        for obj in policies:
            self.store.upsert("NetworkPolicy", obj)
        self.store.upsert("Node", {"metadata": {"name": NODE}, "spec": {"podCIDR": "10.64.0.0/24"}})
        self.local = [
            LocalPod(
                p["metadata"]["namespace"], p["metadata"]["name"], 100 + i, p["status"]["podIP"]
            )
            for i, p in enumerate(q for q in pods if q["spec"]["nodeName"] == NODE)
        ]
        bridge = "br-bench"
        ensure_node_bridge(ovs.db_remote, BridgeSettings(name=bridge, datapath_type="netdev"))
        for _ in range(250):
            if ovs.mgmt_socket(bridge).exists():
                break
            time.sleep(0.02)
        self.switch = Switch(ovs.mgmt_socket(bridge), request_timeout=60)
        self.switch.start()
        self.switch.wait_connected(10)
        self.switch.replace_flows("pipeline", skeleton_flows(1))
        self.reconciler = PolicyReconciler(
            self.store, self.switch, 1, NODE, lambda: list(self.local)
        )

    def initial(self) -> float:
        started = time.perf_counter()
        self.reconciler.start()
        return time.perf_counter() - started

    def timed(self, change: Callable[[], object]) -> tuple[float, dict[str, int]]:
        started = time.perf_counter()
        change()
        if not self.reconciler.wait_idle(30):
            raise RuntimeError("change not committed within 30 s")
        return time.perf_counter() - started, dict(self.reconciler.last_bundle)

    # Changes, each undone by the next sample of its kind.

    def policy_port(self, n: int, k: int) -> Callable[[], object]:
        ns = f"ns-{n % self.namespaces}"
        return lambda: self.store.upsert("NetworkPolicy", namespace_policy(ns, 81 + k % 2))

    def client_label(self, n: int, k: int) -> Callable[[], object]:
        ns = f"ns-{n % self.namespaces}"
        obj = self.store.get("Pod", ns, "client-3")
        assert obj is not None
        role = "client" if k % 2 else "idle"
        changed = {**obj, "metadata": {**obj["metadata"], "labels": {"app": role}}}
        return lambda: self.store.upsert("Pod", changed)

    def pod_churn(self, n: int, k: int) -> Callable[[], object]:
        ns = f"ns-{n % self.namespaces}"
        if k % 2:
            return lambda: self.store.delete("Pod", ns, "client-new")
        new = _pod(ns, "client-new", f"10.90.{n % 250}.{n // 250 + 1}", "node-7", app="client")
        return lambda: self.store.upsert("Pod", new)

    def local_pod(self, n: int, k: int) -> Callable[[], object]:
        extra = LocalPod(f"ns-{n % self.namespaces}", "web-1", 60000, "10.91.0.1")

        def change() -> None:
            if k % 2:
                self.local = [p for p in self.local if p.ofport != 60000]
            else:
                self.local = [*self.local, extra]
                pod = self.store.get("Pod", extra.namespace, "web-1")
                assert pod is not None
                self.store.upsert("Pod", {**pod, "status": {**pod["status"], "podIP": extra.ip}})
            self.reconciler.local_pod_changed(None, not k % 2)

        return change

    def monitoring_namespace(self, n: int, k: int) -> Callable[[], object]:
        ns = f"ns-{self.namespaces // 10 + n % 10}"
        labels = {"monitoring": "true"} if k % 2 == 0 else {"team": "t0"}
        return lambda: self.store.upsert("Namespace", {"metadata": {"name": ns, "labels": labels}})

    def stop(self) -> None:
        self.reconciler.stop()
        self.switch.stop()


KINDS = ("policy_port", "client_label", "pod_churn", "local_pod", "monitoring_namespace")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(bench: Bench, samples: int) -> dict[str, dict[str, float]]:
    results: dict[str, list[float]] = {k: [] for k in KINDS}
    touched: dict[str, list[dict[str, int]]] = {k: [] for k in KINDS}
    for k in range(samples):
        for kind in KINDS:
            make = getattr(bench, kind)
            seconds, bundle = bench.timed(make(k // 2 * 37, k))
            results[kind].append(seconds * 1000)
            touched[kind].append(bundle)
    out: dict[str, dict[str, float]] = {}
    everything = [v for values in results.values() for v in values]
    for kind, values in [*results.items(), ("all", everything)]:
        bundles = touched.get(kind) or [b for t in touched.values() for b in t]
        out[kind] = {
            "p50_ms": round(statistics.median(values), 1),
            "p99_ms": round(_percentile(values, 0.99), 1),
            "owners": round(statistics.mean(b["owners"] for b in bundles), 1),
            "flow_mods": round(statistics.mean(b["flow_mods"] for b in bundles), 1),
        }
    return out


# --- main ----------------------------------------------------------------------------------------


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench policy")
    parser.add_argument("--namespaces", type=int, default=1000, help="10 pods and 1 policy each")
    parser.add_argument("--local", type=int, default=1000, help="pods attached to this node")
    parser.add_argument("--samples", type=int, default=60, help="changes per kind")
    parser.add_argument("--skip-counts", action="store_true", help="leave out part 1")
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() after the initial install (what an agent can do once started)",
    )
    args = parser.parse_args(argv)

    with (
        tempfile.TemporaryDirectory(prefix="plumb-bench-") as tmp,
        OvsSandbox(Path(tmp) / "ovs") as ovs,
    ):
        bench = Bench(ovs, args.namespaces, args.local)
        try:
            initial_s = bench.initial()
            installed = bench.switch.flow_count()
            if args.gc_freeze:
                # Objects alive after start-up leave the collector's view: full collections
                # then scan only what changes made, not the whole cluster.
                gc.collect()
                gc.freeze()
            latency = measure(bench, args.samples)
        finally:
            bench.stop()
    rss_cluster = _rss_mb()
    counts = []
    if not args.skip_counts:
        for p, q, r in GRID:
            got = count_flows(p, q, r)
            counts.append({"P": p, "Q": q, "R": r, **got, "additive": 4 * p + 2 * q + r})
    figures = {
        "benchmark": "policy",
        "pods": args.namespaces * 10,
        "policies": args.namespaces,
        "local_pods": args.local,
        "gc_freeze": args.gc_freeze,
        "load_average": round(os.getloadavg()[0], 2),
        "initial_s": round(initial_s, 2),
        "initial_flows": installed,
        "p50_ms": latency["all"]["p50_ms"],
        "p99_ms": latency["all"]["p99_ms"],
        "latency": latency,
        "rss_mb_after_cluster": round(rss_cluster, 1),
        "peak_rss_mb": round(_rss_mb(), 1),
        "flow_counts": counts,
        "targets": TARGETS,
    }
    _print_table(figures)
    print(json.dumps(figures))
    return 0


def _print_table(f: dict[str, Any]) -> None:
    print(
        f"policy: {f['pods']} pods, {f['policies']} policies, {f['local_pods']} local pods, "
        f"gc.freeze {'on' if f['gc_freeze'] else 'off'}, load average {f['load_average']}"
    )
    print(
        f"  initial compile + install   {f['initial_s']:>8} s   {f['initial_flows']} flows "
        f"(target <= {TARGETS['initial_s']} s)"
    )
    print(f"  {'change':<22} {'p50 ms':>8} {'p99 ms':>8} {'owners':>8} {'flow mods':>10}")
    for kind, row in f["latency"].items():
        print(
            f"  {kind:<22} {row['p50_ms']:>8} {row['p99_ms']:>8} {row['owners']:>8} "
            f"{row['flow_mods']:>10}"
        )
    print(f"  (target p99 <= {TARGETS['p99_ms']} ms for one change)")
    print(
        f"  RSS after the cluster       {f['rss_mb_after_cluster']:>8} MB "
        f"(target <= {TARGETS['rss_mb']} MB); peak {f['peak_rss_mb']} MB"
    )
    if f["flow_counts"]:
        print(
            f"  {'P':>5} {'Q':>5} {'R':>5} {'flows':>8} {'4P+2Q+R':>8} {'P*Q*R':>11} {'actions':>9}"
        )
        for row in f["flow_counts"]:
            product = row["P"] * row["Q"] * row["R"]
            print(
                f"  {row['P']:>5} {row['Q']:>5} {row['R']:>5} {row['flows']:>8} "
                f"{row['additive']:>8} {product:>11} {row['clause_actions']:>9}"
            )
