"""`plumbctl policy [NS/NAME]`: each NetworkPolicy's rules, the pods it applies to on each node,
whether each node's datapath holds it (or the error that keeps it out), and per-rule counters.

The agent's own status (`PolicyReconciler.status()`) lives in its process, so for a lab this is
computed from the outside: the lab's manifests through the pure model (`controller.netpol_model`,
the code the agents compile from) give, per node, the rules and isolation the agent should have
installed; the node's flows say which it has. A rule is realised on a node when a conjunction
on the bridge has exactly its clause flows (`plumbctl.intent.rule_signature`); its counters are
that conjunction's metric flows. Policy flows that no policy asks for are reported as stale, so
`in_sync` is true only when every node holds exactly what the model asks for.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import click

from controller.netpol_model import CompiledPolicy, PodKey, PolicyKey, PolicyModel, pod_info
from flows import annotate
from flows.annotate import DumpedFlow
from flows.cookie import CATEGORY_SHIFT, OBJECT_MASK, Category
from flows.policy import DROP_PRIORITY, Direction, LocalTarget, Rule, peers_text, ports_text
from plumbctl import intent
from plumbctl.inspect import _errors_as_click, _where, emit, where_options
from plumbctl.nodes import Cluster, InspectError, Node

Obj = Mapping[str, Any]
_DROP_TABLES = {Direction.INGRESS: "IngressDefaultRule", Direction.EGRESS: "EgressDefaultRule"}
_METRIC_TABLES = ("IngressMetric", "EgressMetric")
_RULE_TABLES = ("IngressRule", "EgressRule")


# --- what one node holds -----------------------------------------------------------------------


@dataclass
class Datapath:
    """One node's policy flows, read once: conjunctions by signature, drops, counters."""

    by_signature: dict[frozenset[intent.ClauseUse], list[int]]
    drops: dict[Direction, set[str]]  # ingress: ofports (as "0x3"); egress: pod IPs
    actions: set[int]  # conjunction ids with an action flow (conj_id=ID -> allow and count)
    new: Counter[int]  # conjunction id -> packets its metric flows saw in state new
    packets: Counter[int]  # conjunction id -> every packet of its metric flows
    taken: set[int] = field(default_factory=set)  # conjunctions a rule of the model claimed

    @classmethod
    def of(cls, flows: Sequence[DumpedFlow]) -> Datapath:
        policy = [f for f in flows if (f.cookie >> CATEGORY_SHIFT) & 0xFF == Category.POLICY]
        by_signature: dict[frozenset[intent.ClauseUse], list[int]] = {}
        for conj_id, signature in sorted(intent.datapath_signatures(policy).items()):
            by_signature.setdefault(signature, []).append(conj_id)
        new: Counter[int] = Counter()
        packets: Counter[int] = Counter()
        actions: set[int] = set()
        for flow in policy:
            table = annotate.table_name(flow.table)
            if table in _RULE_TABLES and flow.fields.get("conj_id", "").isdigit():
                actions.add(int(flow.fields["conj_id"]))
            elif table in _METRIC_TABLES:
                conj_id = flow.cookie & OBJECT_MASK
                packets[conj_id] += flow.n_packets or 0
                if "+new" in flow.fields.get("ct_state", ""):
                    new[conj_id] += flow.n_packets or 0
        return cls(by_signature, _drops(policy), actions, new, packets)

    def take(self, rule: Rule) -> int | None:
        """The conjunction realising `rule`, taken so that an equal rule gets another one."""
        ids = self.by_signature.get(intent.rule_signature(rule))
        if not ids:
            return None
        conj_id = ids.pop(0)
        self.taken.add(conj_id)
        return conj_id


def _drops(flows: Iterable[DumpedFlow]) -> dict[Direction, set[str]]:
    out: dict[Direction, set[str]] = {Direction.INGRESS: set(), Direction.EGRESS: set()}
    for flow in flows:
        table = annotate.table_name(flow.table)
        if flow.priority != DROP_PRIORITY or flow.actions != "drop":
            continue
        if table == _DROP_TABLES[Direction.INGRESS] and "reg1" in flow.fields:
            out[Direction.INGRESS].add(flow.fields["reg1"])
        elif table == _DROP_TABLES[Direction.EGRESS] and "nw_src" in flow.fields:
            out[Direction.EGRESS].add(flow.fields["nw_src"])
    return out


def _drop_key(direction: Direction, target: LocalTarget) -> str:
    return hex(target.ofport) if direction is Direction.INGRESS else target.ip


# --- the report --------------------------------------------------------------------------------


@dataclass
class RuleOnNode:
    conj_id: int | None
    realised: bool
    new: int = 0
    packets: int = 0


@dataclass
class RuleReport:
    """One rule (after named-port resolution) and, per node where it has flows, its state."""

    name: str  # "ingress[0]", "egress[1]/6:80" (a named-port resolution group)
    direction: str
    index: int
    group: str
    peers: str
    ports: str
    nodes: dict[str, RuleOnNode] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.name,
            "direction": self.direction,
            "index": self.index,
            "group": self.group,
            "peers": self.peers,
            "ports": self.ports,
            "nodes": {n: vars(r) for n, r in self.nodes.items()},
        }


@dataclass
class PolicyReport:
    ref: str
    error: str | None  # why the policy (in its manifest's version) is not enforced
    types: list[str]
    spec_rules: int  # rules of the types in force, as written (before resolution)
    pods: dict[str, list[str]] = field(default_factory=dict)  # node -> local pods it applies to
    missing: dict[str, list[str]] = field(default_factory=dict)  # node -> what is not installed
    rules: dict[str, RuleReport] = field(default_factory=dict)

    @property
    def realised(self) -> bool:
        return self.error is None and not any(self.missing.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy": self.ref,
            "realised": self.realised,
            "error": self.error,
            "policy_types": self.types,
            "pods": self.pods,
            "missing": {n: m for n, m in self.missing.items() if m},
            "rules": [r.as_dict() for r in self.rules.values()],
        }


@dataclass
class Report:
    policies: list[PolicyReport]
    stale: dict[str, list[str]]  # node -> policy flows no policy asks for

    @property
    def in_sync(self) -> bool:
        """Every node holds exactly the policy flows the model asks for."""
        return all(p.realised for p in self.policies if p.error is None) and not any(
            self.stale.values()
        )

    def problems(self) -> list[str]:
        """Why the datapath is not in sync, one line each."""
        out = [
            f"{p.ref} on {node}: {', '.join(missing)} missing"
            for p in self.policies
            for node, missing in p.missing.items()
            if missing
        ]
        out += [f"{node}: stale {', '.join(s)}" for node, s in self.stale.items() if s]
        return out

    def as_dict(self, only: str | None = None) -> dict[str, Any]:
        return {
            "in_sync": self.in_sync,
            "policies": [p.as_dict() for p in self.policies if only in (None, p.ref)],
            "stale": {n: s for n, s in self.stale.items() if s},
        }


def report(cluster: Cluster) -> Report:
    """Every policy of the cluster on every node: the model against the nodes' flows."""
    policies: dict[str, PolicyReport] = {}
    stale: dict[str, list[str]] = {}
    for node in cluster.nodes:
        local = _local_pods(cluster, node)
        model = _node_model(cluster, local)
        datapath = Datapath.of(current_flows(cluster, node))
        expected_drops: dict[Direction, set[str]] = {d: set() for d in Direction}
        for key in model.policy_keys():
            ref = f"{key[0]}/{key[1]}"
            if ref not in policies:
                policies[ref] = _policy_report(model, key)
            where = _NodeView(node.label, local, datapath, expected_drops, cluster.pod_ips())
            _add_node(policies[ref], model.compile(key), where)
        stale[node.label] = _stale(datapath, expected_drops)
    return Report(list(policies.values()), stale)


def _local_pods(cluster: Cluster, node: Node) -> dict[PodKey, LocalTarget]:
    return {(p.namespace, p.name): LocalTarget(p.ofport, p.ip) for p in cluster.state(node).pods}


def _node_model(cluster: Cluster, local: Mapping[PodKey, LocalTarget]) -> PolicyModel:
    """The model as this node's agent holds it: every object, this node's pods as local."""
    model = PolicyModel()
    for ns in cluster.namespaces:
        meta = ns.get("metadata") or {}
        model.set_namespace(str(meta["name"]), meta.get("labels") or {})
    for obj in cluster.pods:
        info = pod_info(obj)
        model.set_pod(info.key, info)
    model.set_local_pods(local)
    for obj in cluster.policies:
        meta = obj.get("metadata") or {}
        model.set_policy((str(meta.get("namespace") or "default"), str(meta["name"])), obj)
    return model


def current_flows(cluster: Cluster, node: Node) -> list[DumpedFlow]:
    flows = annotate.parse_dump(node.dump_flows())
    round_ = cluster.state(node).round
    return annotate.current_round(flows, round_) if round_ is not None else flows


def _policy_report(model: PolicyModel, key: PolicyKey) -> PolicyReport:
    spec, error = model.spec(key), model.error(key)
    types = sorted(d.value for d in spec.types) if spec is not None else []
    count = sum(len(spec.rules(d)) for d in spec.types) if spec is not None else 0
    return PolicyReport(f"{key[0]}/{key[1]}", str(error) if error else None, types, count)


@dataclass
class _NodeView:
    """What `_add_node` needs of one node."""

    name: str
    local: Mapping[PodKey, LocalTarget]
    datapath: Datapath
    expected_drops: dict[Direction, set[str]]  # filled in: every drop some policy asks for
    pod_ips: Mapping[str, str]  # every known pod address -> NS/NAME

    def pod_of(self, target: LocalTarget) -> str:
        ref = next((k for k, t in self.local.items() if t == target), None)
        return f"{ref[0]}/{ref[1]}" if ref else target.ip


def _add_node(policy: PolicyReport, compiled: CompiledPolicy, node: _NodeView) -> None:
    """This node's part of one policy: its local pods, rules and isolation drops."""
    policy.pods[node.name] = [f"{ns}/{n}" for ns, n in compiled.targets if (ns, n) in node.local]
    missing: list[str] = []
    for rule in compiled.rules:
        name = _rule_name(rule)
        entry = policy.rules.setdefault(name, _rule_report(name, rule, node.pod_ips))
        if not intent.rule_signature(rule):
            continue  # a dimension without values (no peers, no port resolved): no flows
        conj_id = node.datapath.take(rule)
        if conj_id is None:
            missing.append(name)
            entry.nodes[node.name] = RuleOnNode(None, False)
            continue
        # Clause flows without the action flow complete a conjunction that allows nothing.
        realised = conj_id in node.datapath.actions
        if not realised:
            missing.append(f"{name} action flow")
        counters = node.datapath.new[conj_id], node.datapath.packets[conj_id]
        entry.nodes[node.name] = RuleOnNode(conj_id, realised, *counters)
    for direction, targets in compiled.isolated.items():
        for target in sorted(targets):
            key = _drop_key(direction, target)
            node.expected_drops[direction].add(key)
            if key not in node.datapath.drops[direction]:
                missing.append(f"{direction.value.lower()} isolation of {node.pod_of(target)}")
    policy.missing[node.name] = missing


def _stale(datapath: Datapath, expected_drops: Mapping[Direction, set[str]]) -> list[str]:
    unclaimed = {c for ids in datapath.by_signature.values() for c in ids}
    out = [f"conjunction {c}" for c in sorted(unclaimed)]
    orphans = datapath.actions - datapath.taken - unclaimed  # action flows without clauses
    out += [f"action flow of conjunction {c}" for c in sorted(orphans)]
    for direction, keys in datapath.drops.items():
        extra = sorted(keys - expected_drops[direction])
        out += [f"{direction.value.lower()} isolation drop {k}" for k in extra]
    return out


def _rule_name(rule: Rule) -> str:
    group = f"/{rule.key.group}" if rule.key.group else ""
    return f"{rule.direction.value.lower()}[{rule.key.index}]{group}"


def _rule_report(name: str, rule: Rule, pod_ips: Mapping[str, str]) -> RuleReport:
    return RuleReport(
        name,
        rule.direction.value,
        rule.key.index,
        rule.key.group,
        peers_text(rule.peers, _peer_pods(rule, pod_ips)),
        ports_text(rule.ports),
    )


def _peer_pods(rule: Rule, pod_ips: Mapping[str, str], most: int = 3) -> list[str]:
    """The rule's peer pods by name, the first few, then how many more."""
    pods = sorted(pod_ips.get(ip, ip) for ip in rule.peers.ips) if rule.peers else []
    return pods[:most] + ([f"{len(pods) - most} more pods"] if len(pods) > most else [])


# --- the command -------------------------------------------------------------------------------


@click.command()
@where_options
@click.argument("policy_ref", metavar="[NS/NAME]", required=False)
@_errors_as_click
def policy(policy_ref: str | None, **kwargs: Any) -> None:
    """NetworkPolicies: rules, pods per node, realised or not (or the error), counters.

    In a lab, from its manifests through the policy model and each node's flows; exit 1 when a
    policy shown is not realised or a node holds stale policy flows."""
    where = _where(kwargs)
    cluster = where.cluster()
    if not cluster.lab:
        raise InspectError("plumbctl policy needs a lab (the cluster's objects); use --lab NAME")
    if where.node is not None:
        cluster.nodes = [cluster.node(where.node)]
    result = report(cluster)
    known = {p.ref for p in result.policies}
    if policy_ref is not None and policy_ref not in known:
        raise InspectError(
            f"no NetworkPolicy {policy_ref} (known: {', '.join(sorted(known)) or 'none'})"
        )
    data = result.as_dict(policy_ref)
    emit(where.output, data, lambda: _print(result, policy_ref))
    shown = [p for p in result.policies if policy_ref in (None, p.ref)]
    if not all(p.realised for p in shown) or (policy_ref is None and not result.in_sync):
        raise SystemExit(1)


def _print(result: Report, only: str | None) -> None:
    shown = [p for p in result.policies if only in (None, p.ref)]
    if not shown:
        click.echo("no NetworkPolicies")
    for i, p in enumerate(shown):
        if i:
            click.echo("")
        _print_policy(p)
    stale = [f"{n}: {', '.join(s)}" for n, s in result.stale.items() if s]
    if only is None and stale:
        click.echo("\nstale policy flows (no policy asks for them):")
        for line in stale:
            click.echo(f"  {line}")


def _print_policy(p: PolicyReport) -> None:
    state = "realised" if p.realised else ("error" if p.error else "NOT realised")
    click.echo(f"{p.ref}  {state}  ({', '.join(p.types) or 'no policy types'})")
    if p.error:
        click.echo(f"  error: {p.error}")
        return
    pods = "; ".join(f"{node}: {', '.join(refs) or 'none'}" for node, refs in p.pods.items())
    click.echo(f"  applies to  {pods}")
    for node, missing in p.missing.items():
        if missing:
            click.echo(f"  missing on {node}: {', '.join(missing)}")
    if not p.rules:
        click.echo(
            "  no rules: what it selects, it isolates entirely"
            if not p.spec_rules
            else f"  {p.spec_rules} rule(s), no flows: it selects no pod of these nodes"
        )
        return
    rows = [["RULE", "PEERS", "PORTS", "NODE", "CONJUNCTION", "NEW", "PACKETS", "STATE"]]
    for rule in p.rules.values():
        rows += _rule_rows(rule)
    _table(rows, indent="  ")


def _rule_rows(rule: RuleReport) -> list[list[str]]:
    head = [rule.name, rule.peers, rule.ports]
    if not rule.nodes:
        return [[*head, "-", "-", "-", "-", "no flows (nothing to match)"]]
    rows = []
    for node, r in rule.nodes.items():
        conj = str(r.conj_id) if r.conj_id is not None else "-"
        state = "realised" if r.realised else "MISSING"
        rows.append([*head, node, conj, str(r.new), str(r.packets), state])
        head = ["", "", ""]
    return rows


def _table(rows: Sequence[Sequence[str]], indent: str = "") -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        line = "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        click.echo(f"{indent}{line}")
