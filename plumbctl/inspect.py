"""`plumbctl flows | trace | explain | status`: seeing into a node's datapath (issue 8).

Thin shells: `plumbctl.nodes` finds the node and runs the OVS tools, `flows.annotate` reads their
output, `plumbctl.intent` says what the NetworkPolicy model intends; this module picks, follows
and prints. Human text by default, `-o json` or `-o yaml` for scripts. A node is `--node NAME`
of the lab `--lab NAME` (default `plumb`), or this machine's OVS (`--ovs-rundir`, `--bridge`).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
import yaml

from controller.netpol_model import Endpoint
from flows import annotate
from flows.annotate import DumpedFlow, Names, TracePass, TraceStep, Verdict
from flows.fields import GATEWAY_OFPORT, TUNNEL_OFPORT, VIRTUAL_MAC
from flows.pipeline import TABLES
from flows.policy import Direction, LocalTarget
from lab.layout import BRIDGE, DEFAULT_NAME
from plumbctl import intent
from plumbctl.agent_metrics import MetricsParseError, SyncTimes, describe, sync_times
from plumbctl.nodes import (
    DEFAULT_HEALTH,
    DEFAULT_RUNDIR,
    Cluster,
    InspectError,
    Node,
    NodeState,
    PodPort,
    lab_cluster,
    lab_exists,
    local_cluster,
    node_cluster,
)
from plumbctl.objects import ObjectsError, from_kube, from_manifests

F = TypeVar("F", bound=Callable[..., Any])
PROTOCOLS = ("TCP", "UDP", "SCTP")
SOURCE_PORT = 40000
MAX_HOPS = 3


# --- options shared by every command -----------------------------------------------------------


def where_options(func: F) -> F:
    """--lab/--node, or --ovs-rundir/--bridge/--health (and --manifests or --kubeconfig for the
    cluster's objects, --node for the node's name) for a node outside a lab; -o."""
    options = [
        click.option(
            "--lab",
            "lab_name",
            default=DEFAULT_NAME,
            show_default=True,
            help="The lab whose nodes to inspect.",
        ),
        click.option("--node", default=None, help="The node (a lab's nodeN)."),
        click.option(
            "--ovs-rundir",
            type=click.Path(path_type=Path),
            default=None,
            help=f"A node outside a lab: its OVS run directory [{DEFAULT_RUNDIR}].",
        ),
        click.option("--bridge", default=BRIDGE, show_default=True, help="Plumb's bridge."),
        click.option(
            "--health",
            default=DEFAULT_HEALTH,
            show_default=True,
            help="The agent's health address (outside a lab).",
        ),
        click.option(
            "--manifests",
            type=click.Path(path_type=Path),
            default=None,
            help="A node outside a lab: the cluster's objects from this manifests directory "
            "(the agent's `source: manifests` format).",
        ),
        click.option(
            "--kubeconfig",
            default=None,
            help="A node outside a lab: the cluster's objects from this cluster's API server.",
        ),
        click.option(
            "-o",
            "--output",
            type=click.Choice(["human", "json", "yaml"]),
            default="human",
            show_default=True,
            help="Output format.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@dataclass(frozen=True)
class Where:
    lab_name: str
    node: str | None
    ovs_rundir: Path | None
    bridge: str
    health: str
    manifests: Path | None
    kubeconfig: str | None
    output: str

    def cluster(self) -> Cluster:
        """This machine's node with the objects of --manifests or --kubeconfig; else the lab
        when there is one (and no --ovs-rundir); else this machine's node alone."""
        if self.manifests is not None and self.kubeconfig is not None:
            raise click.UsageError("give --manifests or --kubeconfig, not both")
        if self.manifests is not None or self.kubeconfig is not None:
            if self.manifests is not None:
                objects = from_manifests(self.manifests)
            else:
                objects = from_kube(self.kubeconfig or "", self.node or "")
            rundir = self.ovs_rundir or DEFAULT_RUNDIR
            return node_cluster(rundir, self.bridge, self.health, objects, self.node)
        if self.ovs_rundir is None and lab_exists(self.lab_name):
            return lab_cluster(self.lab_name)
        if self.node is not None and self.ovs_rundir is None:
            raise InspectError(f"no lab {self.lab_name!r} is up to find node {self.node!r} in")
        return local_cluster(self.ovs_rundir or DEFAULT_RUNDIR, self.bridge, self.health)

    def nodes(self, cluster: Cluster, pod: str | None = None) -> list[Node]:
        """--node, else the pod's node, else every node."""
        if self.node is not None:
            return [cluster.node(self.node)] if cluster.lab else cluster.nodes
        if pod is not None:
            return [cluster.pod_node(pod)]
        return cluster.nodes


def _where(kwargs: dict[str, Any]) -> Where:
    keys: tuple[str, ...] = ("lab_name", "node", "ovs_rundir", "bridge", "health")
    keys += ("manifests", "kubeconfig", "output")
    return Where(*(kwargs.pop(k) for k in keys))


def _errors_as_click(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (
            InspectError,
            ObjectsError,
            annotate.DumpParseError,
            annotate.TraceParseError,
        ) as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


def emit(output: str | None, data: Any, human: Callable[[], None]) -> None:
    """`-o json|yaml` prints the data; otherwise the human rendering."""
    if output == "json":
        click.echo(json.dumps(data, indent=2))
    elif output == "yaml":
        click.echo(yaml.safe_dump(data, sort_keys=False), nl=False)
    else:
        human()


def _pod_ref(value: str | None) -> str | None:
    if value is None:
        return None
    namespace, sep, name = value.partition("/")
    if not sep:
        return f"default/{value}"
    if not namespace or not name:
        raise click.BadParameter(f"expected NS/NAME, got {value!r}")
    return value


# --- what the model lends every command --------------------------------------------------------


def _isolation(cluster: Cluster) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    if not cluster.policies:
        return {}, {}
    return intent.isolation_maps(
        intent.world_of(cluster.pods, cluster.namespaces, cluster.policies)
    )


def _rule_names(cluster: Cluster, node: Node, flows: Sequence[DumpedFlow]) -> dict[int, str]:
    if not cluster.policies:
        return {}
    local = {(p.namespace, p.name): LocalTarget(p.ofport, p.ip) for p in cluster.state(node).pods}
    rules = intent.model_rules(cluster.pods, cluster.namespaces, cluster.policies, local)
    return intent.name_conjunctions(flows, rules)[0]


def _node_names(cluster: Cluster, node: Node, flows: Sequence[DumpedFlow] | None = None) -> Names:
    if flows is None:
        flows = annotate.parse_dump(node.dump_flows())
    return cluster.names(node, _isolation(cluster), _rule_names(cluster, node, flows))


# --- plumbctl flows ----------------------------------------------------------------------------


@click.command()
@where_options
@click.option(
    "--pod", default=None, help="Only a pod's flows (NS/NAME), with the policy flows naming it."
)
@click.option("--policy", default=None, help="Only this NetworkPolicy's flows (NS/NAME).")
@click.option("--table", default=None, help="Only this table (name or number).")
@click.option("--all-rounds", is_flag=True, help="Every cookie round, not only the current one.")
@_errors_as_click
def flows(
    pod: str | None, policy: str | None, table: str | None, all_rounds: bool, **kwargs: Any
) -> None:
    """Installed flows, each followed by its owner and counters.

    Lines are `ovs-ofctl -O OpenFlow15 --names --no-stats dump-flows` text; what follows `#` is
    the annotation, which `ovs-ofctl add-flows BRIDGE -` ignores, so the output pastes back."""
    if sum(x is not None for x in (pod, policy, table)) > 1:
        raise click.UsageError("give at most one of --pod, --policy, --table")
    where = _where(kwargs)
    pod = _pod_ref(pod)
    cluster = where.cluster()
    sections = [
        _node_flows(cluster, node, pod, policy, table, all_rounds)
        for node in where.nodes(cluster, pod)
    ]
    data = [s.as_dict() for s in sections]
    emit(where.output, data if len(data) != 1 else data[0], lambda: _print_flow_sections(sections))


@dataclass
class FlowSection:
    node: Node
    round: int | None
    total: int
    flows: list[DumpedFlow]
    names: Names

    def as_dict(self) -> dict[str, Any]:
        return {
            "node": self.node.label,
            "bridge": self.node.bridge,
            "round": self.round,
            "total_flows": self.total,
            "flows": [_flow_dict(f, self.names) for f in self.flows],
        }


def _flow_dict(flow: DumpedFlow, names: Names) -> dict[str, Any]:
    owner = annotate.flow_owner(flow, names)
    return {
        "table": annotate.table_name(flow.table),
        "table_id": flow.table_id,
        "priority": flow.priority,
        "match": flow.match,
        "actions": flow.actions,
        "cookie": f"{flow.cookie:#x}",
        "round": flow.round,
        "owner": {"category": owner.category, "name": owner.name, "id": owner.object_id},
        "n_packets": flow.n_packets,
        "n_bytes": flow.n_bytes,
        "duration": flow.duration,
        "flow": flow.text.strip(),
    }


def _node_flows(
    cluster: Cluster,
    node: Node,
    pod: str | None,
    policy: str | None,
    table: str | None,
    all_rounds: bool,
) -> FlowSection:
    state = cluster.state(node)
    everything = annotate.parse_dump(node.dump_flows())
    names = _node_names(cluster, node, everything)
    shown = everything
    if not all_rounds and state.round is not None:
        shown = annotate.current_round(shown, state.round)
    if table is not None:
        if not table.isdigit() and table not in TABLES:
            raise click.BadParameter(f"no table {table!r}", param_hint="--table")
        shown = annotate.in_table(shown, table)
    if pod is not None:
        port = state.pod(pod)
        if port is None:
            raise InspectError(f"no pod {pod} on {node.label}")
        shown = annotate.of_pod(shown, port.ofport, port.ip)
    if policy is not None:
        shown = _policy_flows(cluster, node, shown, names, _pod_ref(policy) or policy)
    return FlowSection(node, state.round, len(everything), shown, names)


def _policy_flows(
    cluster: Cluster, node: Node, shown: list[DumpedFlow], names: Names, policy: str
) -> list[DumpedFlow]:
    known = {
        f"{(p.get('metadata') or {}).get('namespace', 'default')}/{p['metadata']['name']}"
        for p in cluster.policies
    }
    if policy not in known:
        raise InspectError(
            f"no NetworkPolicy {policy} (known: {', '.join(sorted(known)) or 'none'})"
        )
    conj_ids = {c for c, name in names.rules.items() if name.split(" ")[0] == policy}
    isolated = {
        ofport
        for ofport, ref in names.pods.items()
        if policy in names.isolated_ingress.get(ref, ())
    }
    return annotate.of_rules(shown, conj_ids, isolated)


def _print_flow_sections(sections: Sequence[FlowSection]) -> None:
    for i, section in enumerate(sections):
        if i:
            click.echo("")
        node = section.node
        rnd = f"round {section.round}" if section.round is not None else "no round recorded"
        click.echo(
            f"# {node.label} ({node.bridge}): {rnd}; {len(section.flows)} of "
            f"{section.total} flows shown"
        )
        click.echo(
            "# after '#': owner; packets, bytes. `ovs-ofctl -O OpenFlow15 --names "
            "add-flows BRIDGE -` takes these lines back."
        )
        current = None
        for flow in section.flows:
            table = annotate.table_name(flow.table)
            if table != current:
                current = table
                click.echo(f"## {flow.table_id if flow.table_id is not None else '?'} {table}")
            click.echo(f"{flow.text}  # {_annotation(flow, section.names)}")


def _annotation(flow: DumpedFlow, names: Names) -> str:
    owner = annotate.flow_owner(flow, names)
    counters = (
        f"; {flow.n_packets} packets, {flow.n_bytes} bytes" if flow.n_packets is not None else ""
    )
    return f"{owner}{counters}"


# --- plumbctl trace ----------------------------------------------------------------------------


@dataclass
class Hop:
    """One node's part of a trace."""

    node: Node
    flow: str
    passes: list[TracePass]
    verdict: Verdict
    names: Names

    def as_dict(self) -> dict[str, Any]:
        steps = annotate.walk(self.passes, self.node.bridge)
        return {
            "node": self.node.label,
            "flow": self.flow,
            "steps": [_step_dict(s, self.names) for s in steps],
            "verdict": _verdict_dict(self.verdict),
        }


def _step_dict(step: TraceStep, names: Names) -> dict[str, Any]:
    owner = annotate.decode_owner(step.cookie, step.table, step.match, "", names)
    return {
        "pass": step.pass_index,
        "table": step.table,
        "table_id": step.table_id,
        "priority": step.priority,
        "match": step.match,
        "cookie": f"{step.cookie:#x}",
        "owner": str(owner),
        "actions": [annotate.with_table_names(a) for a in step.actions],
        "notes": list(step.notes),
    }


def _verdict_dict(v: Verdict) -> dict[str, Any]:
    return {
        "kind": v.kind,
        "text": v.text,
        "port": v.port,
        "tunnel_dst": v.tunnel_dst,
        "table": v.step.table if v.step else None,
        "allowed_by": list(v.allowed_by),
        "isolated_by": list(v.isolated_by),
    }


@dataclass
class Trace:
    src: str
    dst: str
    dst_ip: str
    protocol: str
    port: int
    hops: list[Hop]

    @property
    def verdict(self) -> Verdict:
        return self.hops[-1].verdict

    def reached(self, cluster: Cluster) -> bool:
        """Delivered to the destination pod's own port on its own node."""
        last = self.hops[-1]
        if last.verdict.kind != "delivered" or "/" not in self.dst:
            return last.verdict.kind in ("delivered", "gateway") and "/" not in self.dst
        port = cluster.state(last.node).pod(self.dst)
        return port is not None and port.ofport == last.verdict.port

    def as_dict(self, cluster: Cluster) -> dict[str, Any]:
        return {
            "from": self.src,
            "to": self.dst,
            "to_ip": self.dst_ip,
            "protocol": self.protocol,
            "port": self.port,
            "delivered": self.reached(cluster),
            "verdict": self.verdict.text,
            "hops": [h.as_dict() for h in self.hops],
        }


@click.command()
@where_options
@click.option("--from", "src", required=True, help="Source pod NS/NAME.")
@click.option("--to", "dst", required=True, help="Destination pod NS/NAME or IPv4 address.")
@click.option("--port", type=click.IntRange(1, 65535), required=True, help="Destination port.")
@click.option(
    "--protocol",
    type=click.Choice(PROTOCOLS, case_sensitive=False),
    default="TCP",
    show_default=True,
)
@click.option("--no-follow", is_flag=True, help="Stop at the first node (no hop across nodes).")
@_errors_as_click
def trace(src: str, dst: str, port: int, protocol: str, no_follow: bool, **kwargs: Any) -> None:
    """The path of a new connection's first packet, table by table, with the flow that matched,
    its owner and the verdict (ovs-appctl ofproto/trace through conntrack)."""
    where = _where(kwargs)
    cluster = where.cluster()
    src_ref = _pod_ref(src) or src
    dst_ref = dst if annotate.is_address(dst) else (_pod_ref(dst) or dst)
    start = where.nodes(cluster, src_ref)[0] if where.node else cluster.pod_node(src_ref)
    result = trace_pair(cluster, start, src_ref, dst_ref, protocol.upper(), port, not no_follow)
    emit(where.output, result.as_dict(cluster), lambda: _print_trace(result))


def trace_pair(
    cluster: Cluster,
    start: Node,
    src: str,
    dst: str,
    protocol: str,
    port: int,
    follow: bool = True,
) -> Trace:
    """Trace from `src` (a pod on `start`) to `dst`, hopping to the next node through the
    tunnel (or, in routed mode, through the gateway) while `follow`."""
    state = cluster.state(start)
    source = state.pod(src)
    if source is None:
        raise InspectError(f"no pod {src} on {start.label}")
    dst_ip = dst if annotate.is_address(dst) else cluster.pod_ip(dst)
    local_dst = next((p for p in state.pods if p.ip == dst_ip), None)
    headers = _l4(protocol, port) + f",nw_src={source.ip},nw_dst={dst_ip},nw_ttl=64"
    flow = (
        f"in_port={source.ofport},dl_src={source.mac},"
        f"dl_dst={local_dst.mac if local_dst else state.gateway_mac},{headers}"
    )
    isolated = _isolation(cluster)
    hops = [_hop(cluster, start, flow, isolated)]
    while follow and len(hops) < MAX_HOPS:
        nxt = _next_hop(cluster, hops[-1], headers, dst_ip)
        if nxt is None:
            break
        hops.append(_hop(cluster, nxt[0], nxt[1], isolated))
    return Trace(src, dst, dst_ip, protocol, port, hops)


def _l4(protocol: str, port: int) -> str:
    """The L4 part of a traced flow; a TCP SYN, as a new connection starts."""
    proto = protocol.lower()
    flags = ",tcp_flags=syn" if proto == "tcp" else ""
    return f"{proto},tp_src={SOURCE_PORT},tp_dst={port}{flags}"


def _hop(
    cluster: Cluster, node: Node, flow: str, isolated: tuple[dict[str, list[str]], ...]
) -> Hop:
    text = node.trace(flow)
    passes = annotate.parse_trace(text)
    everything = annotate.parse_dump(node.dump_flows())
    names = cluster.names(node, (isolated[0], isolated[1]), _rule_names(cluster, node, everything))
    return Hop(node, flow, passes, annotate.verdict(passes, node.bridge, names), names)


def _next_hop(cluster: Cluster, hop: Hop, headers: str, dst_ip: str) -> tuple[Node, str] | None:
    """Where the packet goes next and as what, or None when it stays (or leaves the cluster)."""
    final = annotate.match_fields(hop.passes[-1].final_flow)
    ttl = int(final.get("nw_ttl", "64"))
    headers = headers.replace(",nw_ttl=64", "")
    if hop.verdict.kind == "tunnelled" and hop.verdict.tunnel_dst:
        nxt = next((n for n in cluster.nodes if n.address == hop.verdict.tunnel_dst), None)
        if nxt is None or not hop.node.address:
            return None
        return nxt, _from_tunnel(hop.node.address, nxt.address, final.get("dl_src"), headers, ttl)
    if hop.verdict.kind == "gateway":
        nxt = cluster.node_of_address(dst_ip) if cluster.lab else None
        if nxt is None or nxt is hop.node:
            return None
        state = cluster.state(nxt)
        target = next((p for p in state.pods if p.ip == dst_ip), None)
        if target is None:
            return None
        return nxt, _from_gateway(state, target, headers, ttl)
    return None


def _from_tunnel(tun_src: str, tun_dst: str, dl_src: str | None, headers: str, ttl: int) -> str:
    """The packet as it comes out of the tunnel on the node at `tun_dst`."""
    return (
        f"in_port={TUNNEL_OFPORT},tun_id=0,tun_src={tun_src},tun_dst={tun_dst},"
        f"dl_src={dl_src or VIRTUAL_MAC},dl_dst={VIRTUAL_MAC},{headers},nw_ttl={ttl}"
    )


def _from_gateway(state: NodeState, target: PodPort, headers: str, ttl: int) -> str:
    """Routed mode: the packet as the node's kernel hands it to the bridge, towards `target`.
    Each node's kernel routes the packet once (and decrements its TTL)."""
    return (
        f"in_port={GATEWAY_OFPORT},dl_src={state.gateway_mac},dl_dst={target.mac},"
        f"{headers},nw_ttl={ttl - 2}"
    )


def trace_arriving(
    cluster: Cluster, node: Node, src: str, dst: str, protocol: str, port: int
) -> Trace:
    """Trace a packet from `src`, a pod on a node out of reach, as it arrives at `node` (where
    `dst` runs): out of the tunnel from the source's node (the source MAC, its node's gateway
    MAC, unknown here, is the virtual MAC; the pipeline does not match it), or, routed, from
    the gateway."""
    state = cluster.state(node)
    target = state.pod(dst)
    if target is None:
        raise InspectError(f"no pod {dst} on {node.label}")
    src_ip = cluster.pod_ip(src)
    headers = _l4(protocol, port) + f",nw_src={src_ip},nw_dst={target.ip}"
    if state.tunnel:
        node_name = ((cluster.pod_object(src) or {}).get("spec") or {}).get("nodeName")
        peer = next((p for p in cluster.peers if p.name == node_name), None)
        peer = peer or cluster.peer_of_address(src_ip)
        if peer is None or not peer.address or not node.address:
            raise InspectError(f"{src}: its node's address is not known (no Node object with one)")
        flow = _from_tunnel(peer.address, node.address, None, headers, 63)
    else:
        flow = _from_gateway(state, target, headers, 64)
    hop = _hop(cluster, node, flow, _isolation(cluster))
    return Trace(src, dst, target.ip, protocol, port, [hop])


def _print_trace(result: Trace) -> None:
    click.echo(
        f"trace {result.src} -> {result.dst} ({result.dst_ip}) {result.protocol}/{result.port}"
    )
    for hop in result.hops:
        click.echo("")
        click.echo(
            f"{hop.node.label}: ovs-appctl ofproto/trace {hop.node.bridge} {hop.flow} "
            "--ct-next trk,new"
        )
        _print_steps(hop)
        click.echo(f"  => {hop.verdict.text}")
    click.echo("")
    click.echo(f"verdict: {result.verdict.text}")


def _print_steps(hop: Hop) -> None:
    last_pass = 0
    for step in annotate.walk(hop.passes, hop.node.bridge):
        if step.pass_index != last_pass:
            last_pass = step.pass_index
            header = hop.passes[step.pass_index].header
            state = header.split("ct_state=")[-1] if "ct_state=" in header else "?"
            click.echo(f"     -- conntrack: resumed with ct_state={state}")
        owner = annotate.decode_owner(step.cookie, step.table, step.match, "", hop.names)
        pri = "miss" if step.priority == 0 else str(step.priority)
        line = f"  {step.table_id:>2} {step.table:<26} {pri:>5}  {step.match or '*'}  [{owner}]"
        actions = [annotate.with_table_names(a) for a in step.actions]
        if len(actions) == 1 and actions[0].startswith("goto_table:"):
            click.echo(f"{line}  -> {actions[0].removeprefix('goto_table:')}")
            continue
        click.echo(line)
        if actions:
            click.echo(f"{'':>35}{', '.join(actions) if not step.drops else 'drop'}")
        for note in step.notes:
            if note.startswith(("-> output", "-> tunneling to")):
                click.echo(f"{'':>35}{note}")


# --- plumbctl explain --------------------------------------------------------------------------

# What a case's datapath side covers: the whole path (both ends' nodes are inspectable, as in a
# lab), or one node's part of it when the other end's node is out of reach (a node outside a
# lab sees its own OVS only): its egress (source here) or its ingress (destination here).
JUDGED = ("path", "egress", "ingress")


@dataclass
class Explanation:
    src: str
    dst: str
    protocol: str
    port: int
    model: intent.Intent
    trace: Trace
    judged: str  # one of JUDGED
    expected: bool  # the model's verdict on what is judged (the whole, or one end's policies)
    passed: bool  # the datapath's: delivered (path, ingress), sent on to the other node (egress)

    @property
    def agree(self) -> bool:
        return self.expected == self.passed

    @property
    def delivered(self) -> bool | None:
        """Delivered to the destination pod's port; None when its node was out of reach."""
        return None if self.judged == "egress" else self.passed

    def as_dict(self, cluster: Cluster, with_trace: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "from": self.src,
            "to": self.dst,
            "protocol": self.protocol,
            "port": self.port,
            "model": self.model.as_dict(),
            "judged": self.judged,
            "expected": self.expected,
            "datapath": {
                "delivered": self.delivered,
                "passed": self.passed,
                "node": self.trace.hops[-1].node.label,
                "verdict": self.trace.verdict.text,
            },
            "agree": self.agree,
        }
        if with_trace:
            out["trace"] = self.trace.as_dict(cluster)
        return out


@click.command()
@where_options
@click.argument("src", required=False)
@click.argument("dst", required=False)
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Destination port.")
@click.option(
    "--protocol",
    type=click.Choice(PROTOCOLS, case_sensitive=False),
    default="TCP",
    show_default=True,
)
@click.option("--all", "every", is_flag=True, help="Every pod pair, on each destination's ports.")
@click.option("--ports", default=None, help="With --all: these ports (80,81) not the declared.")
@click.option("--protocols", default=None, help="With --all: these protocols (TCP,UDP).")
@_errors_as_click
def explain(
    src: str | None,
    dst: str | None,
    port: int | None,
    protocol: str,
    every: bool,
    ports: str | None,
    protocols: str | None,
    **kwargs: Any,
) -> None:
    """What the NetworkPolicy model says of a connection beside what the datapath does.

    In a lab, or on a node given the cluster's objects (--manifests DIR or --kubeconfig FILE).
    On a node, a pair with one end elsewhere is judged on this node's part: its egress when the
    source is here, its ingress when the destination is. Exits 1 when the model and the datapath
    disagree (with --all: when any pair does)."""
    where = _where(kwargs)
    cluster = where.cluster()
    if not cluster.has_objects:
        raise InspectError(
            "explain needs the cluster's objects: --manifests DIR or --kubeconfig FILE on a "
            "node, or a lab (--lab NAME)"
        )
    if every:
        cases = _all_cases(cluster, ports, protocols)
    else:
        if src is None or dst is None or port is None:
            raise click.UsageError("give SRC DST --port P, or --all")
        dst_ref = dst if annotate.is_address(dst) else (_pod_ref(dst) or dst)
        cases = [(_pod_ref(src) or src, dst_ref, protocol.upper(), port)]
    results = explain_cases(cluster, cases)
    mismatches = [r for r in results if not r.agree]
    data: Any
    if every:
        data = {
            "cases": len(results),
            "mismatches": len(mismatches),
            "results": [r.as_dict(cluster, with_trace=False) for r in results],
        }
        emit(where.output, data, lambda: _print_all(results, mismatches))
    else:
        data = results[0].as_dict(cluster, with_trace=True)
        emit(where.output, data, lambda: _print_explanation(results[0]))
    if mismatches:
        raise SystemExit(1)


Case = tuple[str, str, str, int]  # (source pod, destination pod or IP, protocol, port)


def _all_cases(cluster: Cluster, ports: str | None, protocols: str | None) -> list[Case]:
    """Every ordered pair of running pods with at least one end on an inspectable node."""
    from lab.pods import declared_ports

    running = [p for p in cluster.pods if (p.get("status") or {}).get("podIP")]
    refs = {
        id(p): f"{p['metadata'].get('namespace', 'default')}/{p['metadata']['name']}"
        for p in running
    }
    here = {id(p) for p in running if cluster.lab or cluster.local_node_of(refs[id(p)])}
    wanted_ports = [int(p) for p in ports.split(",")] if ports else None
    wanted_protocols = [p.upper() for p in protocols.split(",")] if protocols else None
    cases: list[Case] = []
    for dst in running:
        if wanted_ports is not None:
            targets = [(p, proto) for p in wanted_ports for proto in wanted_protocols or ["TCP"]]
        else:
            targets = [
                (p, proto)
                for p, proto in declared_ports(dst)
                if wanted_protocols is None or proto in wanted_protocols
            ]
        for src in running:
            if src is dst:
                continue  # a pod reaches itself through its loopback, never the bridge
            if id(src) not in here and id(dst) not in here:
                continue  # neither end on a node this command can look at
            cases.extend((refs[id(src)], refs[id(dst)], proto, p) for p, proto in targets)
    return sorted(cases)


def explain_cases(cluster: Cluster, cases: Sequence[Case], workers: int = 8) -> list[Explanation]:
    world = intent.world_of(cluster.pods, cluster.namespaces, cluster.policies)
    for node in cluster.nodes:
        cluster.state(node)  # read every node's OVSDB once, before the threads share it

    def one(case: Case) -> Explanation:
        src, dst, protocol, port = case
        ends = (_endpoint(src), _endpoint(dst), protocol, port)
        model = intent.intent(world, *ends)
        start = cluster.local_node_of(src)
        if start is not None:
            result = trace_pair(cluster, start, src, dst, protocol, port)
            away = _node_out_of_reach(cluster, dst, result.dst_ip)
            if away is None:
                return Explanation(
                    *case, model, result, "path", model.allowed, result.reached(cluster)
                )
            egress = intent.side_allows(world, Direction.EGRESS, *ends)
            return Explanation(
                *case, model, result, "egress", egress, _sent_to(cluster, result, away)
            )
        end = cluster.local_node_of(dst) if "/" in dst else None
        if end is None:
            here = ", ".join(n.label for n in cluster.nodes)
            raise InspectError(f"neither {src} nor {dst} runs on {here}: run explain on their node")
        result = trace_arriving(cluster, end, src, dst, protocol, port)
        ingress = intent.side_allows(world, Direction.INGRESS, *ends)
        return Explanation(*case, model, result, "ingress", ingress, result.reached(cluster))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, cases))


def _node_out_of_reach(cluster: Cluster, dst: str, dst_ip: str) -> Node | None:
    """The peer node the destination is on, when it is one this command cannot look at."""
    if not cluster.peers:
        return None
    if "/" in dst:
        node_name = ((cluster.pod_object(dst) or {}).get("spec") or {}).get("nodeName")
        peer = next((p for p in cluster.peers if p.name == node_name), None)
        if peer is not None:
            return peer
    found = cluster.peer_of_address(dst_ip)
    return found if found in cluster.peers else None


def _sent_to(cluster: Cluster, result: Trace, peer: Node) -> bool:
    """The packet left for `peer`: through the tunnel to its address, or (routed) the gateway."""
    verdict = result.verdict
    if cluster.state(result.hops[-1].node).tunnel:
        return verdict.kind == "tunnelled" and verdict.tunnel_dst in (peer.address, None, "")
    return verdict.kind == "gateway"


def _endpoint(ref: str) -> Endpoint:
    """A pod NS/NAME as the model's key; an address as itself."""
    namespace, sep, name = ref.partition("/")
    return (namespace, name) if sep else ref


def _print_explanation(e: Explanation) -> None:
    click.echo(f"{e.src} -> {e.dst} {e.protocol}/{e.port}")
    click.echo(f"  model:    {'allowed' if e.model.allowed else 'denied'} ({e.model.reason()})")
    where = e.trace.hops[-1].node.label
    if e.judged == "egress":
        state = "sent on" if e.passed else "not sent on"
        click.echo(f"  datapath: {state} from {where}: {e.trace.verdict.text}")
        click.echo(
            f"  judged:   egress only, on {where} (the destination's node is out of reach); "
            f"the model's egress side: {'allowed' if e.expected else 'denied'}"
        )
    else:
        state = "delivered" if e.passed else "not delivered"
        click.echo(f"  datapath: {state} on {where}: {e.trace.verdict.text}")
        if e.judged == "ingress":
            click.echo(
                f"  judged:   ingress only, on {where}, the packet as it arrives from "
                f"{e.src}'s node; the model's ingress side: "
                f"{'allowed' if e.expected else 'denied'}"
            )
    click.echo(f"  {'agree' if e.agree else 'MISMATCH'}")


def _print_all(results: Sequence[Explanation], mismatches: Sequence[Explanation]) -> None:
    partial = any(e.judged != "path" for e in results)
    head = ["FROM", "TO", "PORT", "MODEL", *(["JUDGED"] if partial else []), "DATAPATH", ""]
    rows = [head]
    for e in results:
        model = "allowed" if e.model.allowed else "denied"
        if e.judged != "path":
            model += f" ({e.judged} {'allowed' if e.expected else 'denied'})"
        if e.judged == "egress":
            datapath = "sent on" if e.passed else "dropped"
        else:
            datapath = "delivered" if e.passed else "dropped"
        rows.append(
            [
                e.src,
                e.dst,
                f"{e.protocol}/{e.port}",
                model,
                *([f"{e.judged} on {e.trace.hops[-1].node.label}"] if partial else []),
                datapath,
                "" if e.agree else "MISMATCH",
            ]
        )
    _table(rows)
    click.echo(f"\n{len(results)} cases, {len(mismatches)} mismatch(es)")
    for e in mismatches:
        click.echo("")
        _print_explanation(e)


def _table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


# --- plumbctl status ---------------------------------------------------------------------------


@click.command()
@where_options
@_errors_as_click
def status(**kwargs: Any) -> None:
    """Agent readiness, last sync, local pods, flows per table, round, OVS version."""
    where = _where(kwargs)
    cluster = where.cluster()
    data = [_node_status(cluster, node) for node in where.nodes(cluster)]
    emit(where.output, data if len(data) != 1 else data[0], lambda: _print_status(data))


def _node_status(cluster: Cluster, node: Node) -> dict[str, Any]:
    code, body = node.http_get("/readyz?verbose")
    gates = {}
    for line in body.splitlines():
        if line.startswith(("[+]", "[-]")):
            name = line[3:].split(" ", 1)[0]
            gates[name] = line.startswith("[+]")
    state = cluster.state(node)
    dumped = annotate.parse_dump(node.dump_flows())
    current = annotate.current_round(dumped, state.round) if state.round is not None else dumped
    ages = [f.duration for f in dumped if f.duration is not None]
    return {
        "node": node.label,
        "bridge": node.bridge,
        "agent": {
            "ready": code == 200,
            "status": code,
            "gates": gates,
            "detail": "" if gates else body.strip(),
        },
        "ovs_version": _safe(node.ovs_version),
        "last_sync": _last_sync(node),
        "round": state.round,
        "pods": [
            {"pod": p.ref, "ofport": p.ofport, "ip": p.ip, "mac": p.mac, "port": p.port}
            for p in state.pods
        ],
        "flows": len(dumped),
        "flows_other_rounds": len(dumped) - len(current),
        "flows_per_table": annotate.flows_per_table(current),
        "last_flow_change_seconds": min(ages) if ages else None,
    }


def _last_sync(node: Node) -> dict[str, Any]:
    """The agent's sync stamps from its /metrics, with their ages now."""
    code, body = node.http_get("/metrics")
    now = time.time()
    if code != 200:
        return {**SyncTimes().report(now), "error": body.strip() or f"HTTP {code}"}
    try:
        return sync_times(body).report(now)
    except MetricsParseError as exc:
        return {**SyncTimes().report(now), "error": str(exc)}


def _safe(read: Callable[[], str]) -> str:
    try:
        return read()
    except InspectError as exc:
        return f"unknown ({exc})"


def _print_status(nodes: Iterable[dict[str, Any]]) -> None:
    for i, s in enumerate(nodes):
        if i:
            click.echo("")
        agent = s["agent"]
        gates = " ".join(f"{'+' if ok else '-'}{name}" for name, ok in agent["gates"].items())
        ready = "ready" if agent["ready"] else f"NOT ready ({agent['detail'] or agent['status']})"
        click.echo(f"{s['node']} ({s['bridge']})")
        click.echo(f"  agent        {ready}  {gates}".rstrip())
        click.echo(
            f"  ovs          {s['ovs_version'].splitlines()[0] if s['ovs_version'] else '?'}"
        )
        others = f", {s['flows_other_rounds']} of other rounds" if s["flows_other_rounds"] else ""
        click.echo(f"  round        {s['round']} ({s['flows']} flows{others})")
        sync = s["last_sync"]
        click.echo(f"  last sync    {sync['error'] if 'error' in sync else describe(sync)}")
        age = s["last_flow_change_seconds"]
        click.echo(f"  last flow    {'-' if age is None else f'{age:.1f} s ago'} (youngest flow)")
        pods = ", ".join(f"{p['pod']} ({p['ip']}, port {p['ofport']})" for p in s["pods"])
        click.echo(f"  pods         {len(s['pods'])}{': ' + pods if pods else ''}")
        click.echo("  flows per table:")
        for table, count in s["flows_per_table"].items():
            click.echo(f"    {table:<26} {count:>5}")
