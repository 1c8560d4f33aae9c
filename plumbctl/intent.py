"""What the NetworkPolicy model intends, for `plumbctl trace` and `plumbctl explain`: which
policies isolate a pod, which rule allows a connection, and which datapath conjunction is which
policy rule.

Pure: Kubernetes objects and parsed dumps in, plain values out. The model is
`controller.netpol_model` (the same code the agent compiles from); conjunction ids are matched to
rules by their clause flows, rebuilt here with `flows.policy` and compared with what the bridge
holds, so a rule is named only when the datapath has exactly the flows the model asks for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from controller.netpol_model import (
    Endpoint,
    PodKey,
    PolicyModel,
    PolicySpec,
    World,
    pod_info,
    verdict,
)
from flows.annotate import DumpedFlow, conjunctions
from flows.cookie import CATEGORY_SHIFT, Category
from flows.ofctl import render_match
from flows.policy import Direction, LocalTarget, Rule, clause_match, rule_contributions

Obj = Mapping[str, Any]
# (table, match text, clause number, clause count): one clause flow as a rule uses it.
ClauseUse = tuple[str, str, int, int]


def world_of(pods: Iterable[Obj], namespaces: Iterable[Obj], policies: Iterable[Obj]) -> World:
    return World.of(policies, pods, namespaces)


def policy_ref(spec: PolicySpec) -> str:
    return f"{spec.namespace}/{spec.name}"


def isolating(world: World, pod: PodKey, direction: Direction) -> list[str]:
    """The policies that select `pod` for `direction` (so only their rules let traffic pass)."""
    info = world.pods.get(pod)
    if info is None or not info.selectable:
        return []
    return [
        policy_ref(p)
        for p in world.policies
        if direction in p.types
        and p.namespace == info.namespace
        and p.pod_selector.matches(info.labels)
    ]


def isolation_maps(world: World) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """pod NS/NAME -> isolating policies, for ingress and for egress."""
    ingress, egress = {}, {}
    for key in world.pods:
        ref = f"{key[0]}/{key[1]}"
        if found := isolating(world, key, Direction.INGRESS):
            ingress[ref] = found
        if found := isolating(world, key, Direction.EGRESS):
            egress[ref] = found
    return ingress, egress


# --- what the model says of one connection -----------------------------------------------------


@dataclass(frozen=True)
class Intent:
    """The model's answer for one connection, with its reasons."""

    allowed: bool
    egress_isolated_by: tuple[str, ...]
    egress_allowed_by: tuple[str, ...]  # "NS/NAME egress[i]"
    ingress_isolated_by: tuple[str, ...]
    ingress_allowed_by: tuple[str, ...]

    def reason(self) -> str:
        parts = [
            _side("egress", self.egress_isolated_by, self.egress_allowed_by),
            _side("ingress", self.ingress_isolated_by, self.ingress_allowed_by),
        ]
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "egress": {
                "isolated_by": list(self.egress_isolated_by),
                "allowed_by": list(self.egress_allowed_by),
            },
            "ingress": {
                "isolated_by": list(self.ingress_isolated_by),
                "allowed_by": list(self.ingress_allowed_by),
            },
        }


def _side(direction: str, isolated: tuple[str, ...], allowed: tuple[str, ...]) -> str:
    if not isolated:
        return f"{direction}: not isolated"
    by = ", ".join(isolated)
    if allowed:
        return f"{direction}: isolated by {by}, allowed by {', '.join(allowed)}"
    return f"{direction}: isolated by {by}, no rule allows it"


def intent(world: World, src: Endpoint, dst: Endpoint, protocol: str, port: int | None) -> Intent:
    """The verdict of the model and why: who isolates each end, which rules allow."""
    allowed = verdict(world, src, dst, protocol, port)
    sides: dict[Direction, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    for direction, subject in ((Direction.EGRESS, src), (Direction.INGRESS, dst)):
        isolated = tuple(isolating(world, subject, direction)) if isinstance(subject, tuple) else ()
        rules = _allowing_rules(world, isolated, direction, src, dst, protocol, port)
        sides[direction] = (isolated, rules)
    return Intent(allowed, *sides[Direction.EGRESS], *sides[Direction.INGRESS])


def _allowing_rules(
    world: World,
    isolated: tuple[str, ...],
    direction: Direction,
    src: Endpoint,
    dst: Endpoint,
    protocol: str,
    port: int | None,
) -> tuple[str, ...]:
    """Each rule of an isolating policy asked alone: a world holding only that one rule (in
    that one direction) allows the connection exactly when the rule does."""
    out = []
    for spec in world.policies:
        if policy_ref(spec) not in isolated:
            continue
        for index, rule in enumerate(spec.rules(direction)):
            alone = dataclasses.replace(
                spec,
                types=frozenset({direction}),
                ingress=(rule,) if direction is Direction.INGRESS else (),
                egress=(rule,) if direction is Direction.EGRESS else (),
            )
            single = World((alone,), world.pods, world.namespaces)
            if verdict(single, src, dst, protocol, port):
                out.append(f"{policy_ref(spec)} {direction.value.lower()}[{index}]")
    return tuple(out)


# --- conjunction ids to policy rules -----------------------------------------------------------


def model_rules(
    pods: Iterable[Obj],
    namespaces: Iterable[Obj],
    policies: Iterable[Obj],
    local: Mapping[PodKey, LocalTarget],
) -> dict[str, Rule]:
    """Every rule the agent of a node with these local pods compiles, by readable name."""
    model = PolicyModel()
    for ns in namespaces:
        meta = ns.get("metadata") or {}
        model.set_namespace(str(meta["name"]), meta.get("labels") or {})
    for obj in pods:
        info = pod_info(obj)
        model.set_pod(info.key, info)
    model.set_local_pods(local)
    for obj in policies:
        meta = obj.get("metadata") or {}
        model.set_policy((str(meta.get("namespace") or "default"), str(meta["name"])), obj)
    out: dict[str, Rule] = {}
    for key in model.policy_keys():
        for rule in model.compile(key).rules:
            group = f"/{rule.key.group}" if rule.key.group else ""
            name = f"{key[0]}/{key[1]} {rule.direction.value.lower()}[{rule.key.index}]{group}"
            out[name] = rule
    return out


def rule_signature(rule: Rule) -> frozenset[ClauseUse]:
    """The clause flows a rule needs, as (table, match text, clause, clauses)."""
    return frozenset(
        (key[0], ",".join(render_match(clause_match(key), {})), i, n)
        for key, (i, n) in rule_contributions(rule).items()
    )


def datapath_signatures(flows: Iterable[DumpedFlow]) -> dict[int, frozenset[ClauseUse]]:
    """Per conjunction id on the bridge, the clause flows that feed it."""
    uses: dict[int, set[ClauseUse]] = {}
    for flow in flows:
        if (flow.cookie >> CATEGORY_SHIFT) & 0xFF != Category.POLICY:
            continue
        for conj_id, clause, n in conjunctions(flow.actions):
            uses.setdefault(conj_id, set()).add((flow.table, flow.match, clause, n))
    return {conj_id: frozenset(u) for conj_id, u in uses.items()}


def name_conjunctions(
    flows: Iterable[DumpedFlow], rules: Mapping[str, Rule]
) -> tuple[dict[int, str], list[str]]:
    """conjunction id -> rule name for every datapath rule whose clause flows are exactly those
    of a model rule; and the model rules that no conjunction realises (flows missing)."""
    by_signature = {rule_signature(rule): name for name, rule in rules.items()}
    named = {}
    for conj_id, signature in datapath_signatures(flows).items():
        if signature in by_signature:
            named[conj_id] = by_signature[signature]
    realised = set(named.values())
    missing = [
        name for name, rule in rules.items() if name not in realised and rule_signature(rule)
    ]
    return named, sorted(missing)


def side_allows(
    world: World,
    direction: Direction,
    src: Endpoint,
    dst: Endpoint,
    protocol: str,
    port: int | None,
) -> bool:
    """The model's verdict on one end alone: what the node of that end enforces (egress on the
    source's node, ingress on the destination's), the other end's policies left out."""
    policies = tuple(
        dataclasses.replace(spec, types=spec.types & {direction}) for spec in world.policies
    )
    return verdict(World(policies, world.pods, world.namespaces), src, dst, protocol, port)
