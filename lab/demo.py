"""`plumbctl lab demo`: the README's tour. Two nodes, pods on both, the reachability matrix, a
sample NetworkPolicy, the matrix again, and one pod's flows as `ovs-ofctl --names` prints them.

The demo says what it sees: if nothing changes within a few seconds of applying the policy (an
agent that does not enforce NetworkPolicy), it prints that, rather than a matrix that pretends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from flows.cookie import CATEGORY_MASK, OBJECT_MASK, Category
from lab import apply, cluster, pods, probe
from lab.layout import BRIDGE, LabLayout
from lab.objects import read_objects
from lab.ovs_sandbox import OvsSandbox

Echo = Callable[[str], None]
POLICY_WAIT = 5.0
PORTS = (80, 81)

PODS_YAML = """\
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: demo, labels: {app: client}}
spec:
  nodeName: node1
  containers: [{name: c, image: none, ports: [{containerPort: 80}, {containerPort: 81}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: demo, labels: {app: db}}
spec:
  nodeName: node1
  containers: [{name: c, image: none, ports: [{containerPort: 80}, {containerPort: 81}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: demo, labels: {app: web}}
spec:
  nodeName: node2
  containers: [{name: c, image: none, ports: [{containerPort: 80}, {containerPort: 81}]}]
"""

POLICY_YAML = """\
# Only demo/client may reach demo/web, and only on TCP port 80.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-allow-client, namespace: demo}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{protocol: TCP, port: 80}]
"""


def expected_after_policy(src: str, dst: str, port: int) -> bool:
    """The demo policy's truth: web takes only client on port 80; the rest is open (and a pod
    reaches itself over its loopback, which no policy sees)."""
    return src == dst or dst != "demo/web" or (src == "demo/client" and port == 80)


def run(layout: LabLayout, echo: Echo, progress: Callable[[str], None]) -> None:
    spec = layout.read_spec()
    nodes = max(2, spec.nodes) if spec else 2
    cluster.up(layout.name, nodes=nodes, progress=progress)
    demo_dir = _write_demo_files(layout)
    echo(f"# plumbctl lab apply --name {layout.name} -f {demo_dir / 'pods.yaml'}")
    outcome = apply.apply(layout, read_objects(demo_dir / "pods.yaml"), progress)
    _check(outcome)
    for line in outcome.lines:
        echo(line)
    echo("")
    echo(f"# plumbctl lab matrix --name {layout.name} --ports 80,81")
    before = _matrix(layout, echo)
    echo(f"# plumbctl lab apply --name {layout.name} -f {demo_dir / 'policy.yaml'}")
    echo(POLICY_YAML)
    _check(apply.apply(layout, read_objects(demo_dir / "policy.yaml"), progress))
    web = pods.record(layout, "demo", "web")
    assert web is not None
    ovs = cluster.node_ovs(layout.node_by_name(web.node))
    after = _wait_for_policy(layout, before)
    if _changed(before, after) == 0:
        echo(
            f"# NetworkPolicy is not enforced by this agent yet: nothing changed within "
            f"{POLICY_WAIT:g}s of applying the policy."
        )
    echo(f"# plumbctl lab matrix --name {layout.name} --ports 80,81")
    echo(_matrix_text(layout, after))
    echo(_verdict(before, after))
    _show_flows(layout, web, ovs, echo)


def _write_demo_files(layout: LabLayout) -> Path:
    demo_dir = layout.dir / "demo"
    demo_dir.mkdir(parents=True, exist_ok=True)
    (demo_dir / "pods.yaml").write_text(PODS_YAML)
    (demo_dir / "policy.yaml").write_text(POLICY_YAML)
    return demo_dir


def _check(outcome: apply.Outcome) -> None:
    if outcome.errors:
        raise RuntimeError("; ".join(outcome.errors))


def _probe_all(layout: LabLayout) -> list[probe.ProbeResult]:
    endpoints = [probe.Endpoint(r.ref, r.netns, r.ip) for r in pods.records(layout) if r.ip]
    return probe.run_probes(probe.matrix_probes(endpoints, PORTS, ["TCP"]), timeout=1.0)


def _matrix_text(layout: LabLayout, results: list[probe.ProbeResult]) -> str:
    refs = [r.ref for r in pods.records(layout) if r.ip]
    return probe.matrix_text(refs, results, list(PORTS), ["TCP"])


def _matrix(layout: LabLayout, echo: Echo) -> list[probe.ProbeResult]:
    results = _probe_all(layout)
    echo(_matrix_text(layout, results))
    return results


def _wait_for_policy(layout: LabLayout, before: list[probe.ProbeResult]) -> list[probe.ProbeResult]:
    """The matrix once it shows the policy, or as it is after POLICY_WAIT seconds (the agents
    read the manifests directory about once a second, then install the policy's flows)."""
    deadline = time.monotonic() + POLICY_WAIT
    while True:
        results = _probe_all(layout)
        if not _wrong(results) or time.monotonic() > deadline:
            return results
        time.sleep(0.2)


def _changed(before: list[probe.ProbeResult], after: list[probe.ProbeResult]) -> int:
    return sum(b.connected != a.connected for b, a in zip(before, after, strict=True))


def _wrong(results: list[probe.ProbeResult]) -> list[probe.ProbeResult]:
    """Probes whose outcome differs from what the demo policy says."""
    return [
        r
        for r in results
        if r.connected != expected_after_policy(r.probe.src.ref, r.probe.dst.ref, r.probe.port)
    ]


def _verdict(before: list[probe.ProbeResult], after: list[probe.ProbeResult]) -> str:
    wrong = _wrong(after)
    if not wrong:
        changed = _changed(before, after)
        return f"# The policy took effect: {changed} probe(s) changed, all as the policy says.\n"
    sample = ", ".join(
        f"{r.probe.src.ref}->{r.probe.dst.ref}:{r.probe.port}"
        f" {'connected' if r.connected else 'blocked'}"
        for r in wrong[:4]
    )
    return f"# {len(wrong)} probe(s) differ from what the policy says (e.g. {sample}).\n"


def _show_flows(layout: LabLayout, rec: pods.PodRecord, ovs: OvsSandbox, echo: Echo) -> None:
    """The pod's flows: its cookie carries category POD and its ofport as the object id."""
    found = ovs.vsctl(
        "--bare", "--columns=ofport", "find", "Interface",
        f'external_ids:"plumb.pod-namespace"={rec.namespace}',
        f'external_ids:"plumb.pod-name"={rec.name}',
    ).split()  # fmt: skip
    if not found:
        echo(f"# no OVS port found for pod {rec.ref}")
        return
    ofport = int(found[0])
    cookie = (int(Category.POD) << 40) | ofport
    mask = CATEGORY_MASK | OBJECT_MASK
    echo(f"# pod {rec.ref} on {rec.node}, ofport {ofport}: its cookie is POD | ofport")
    echo(
        f"# ovs-ofctl -O OpenFlow15 --names --no-stats dump-flows {ovs.mgmt_socket(BRIDGE)} "
        f"cookie={cookie:#x}/{mask:#x}"
    )
    dump = ovs.ofctl(
        "-O", "OpenFlow15", "--names", "--no-stats", "dump-flows",
        str(ovs.mgmt_socket(BRIDGE)), f"cookie={cookie:#x}/{mask:#x}",
    )  # fmt: skip
    echo(dump.rstrip("\n"))
    echo(f"\n# done; remove it all with: plumbctl lab down --name {layout.name}")
