"""Loads the upstream Kubernetes e2e NetworkPolicy suite, transcribed as data in `cases/`, into
cases that the model test and the lab test both run.

The world is upstream's: namespaces x, y, z with pods a, b, c each (label `pod: <name>`), each
pod serving ports 80 and 81 over TCP, UDP and SCTP (named `serve-<port>-<protocol>`). A case is
a sequence of steps; a step changes the world (policies created, replaced or deleted, labels
added to pods or namespaces) and then checks one port and protocol at a time against a truth
table. A table starts with every pair connected and applies the step's `allow`/`deny` lines in
order, as upstream's `NewReachability(..., true)` and its `Expect*` calls do. A pod to itself is
never judged (upstream ignores loopback).

Every case of upstream's main context also runs mirrored: TCP and UDP swapped in its policies
(protocols, a port's TCP default, named ports) and in its probes. Upstream's UDP context is
exactly this swap of three main cases with the same tables; the mirror extends it to all.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

CASES_DIR = Path(__file__).resolve().parent / "cases"
NAMESPACES = ("x", "y", "z")
POD_NAMES = ("a", "b", "c")
PODS = tuple(f"{ns}/{pod}" for ns in NAMESPACES for pod in POD_NAMES)
PORTS = (80, 81)
PROTOCOLS = ("TCP", "UDP", "SCTP")
MAIN_SUITE = "NetworkPolicy between server and client"
NAMESPACE_LABEL = "kubernetes.io/metadata.name"
_SWAP = {"TCP": "UDP", "UDP": "TCP"}
_PLACEHOLDER = re.compile(r"\{([a-z]/[a-z])\}")
_STEP_KEYS = frozenset({"create", "update", "delete", "label_pods", "label_namespaces", "check"})

Obj = dict[str, Any]
Pair = tuple[str, str]
Table = dict[Pair, bool]


class CaseError(ValueError):
    """A case file that does not follow the format (the message names the file and field)."""


# --- the data ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One probe of every pair on one port and protocol, against a truth table."""

    protocol: str
    port: int
    expect: tuple[tuple[str, str, bool], ...]  # (from pattern, to pattern, connected), in order

    @property
    def probe(self) -> str:
        return f"{self.protocol}/{self.port}"

    def table(self) -> Table:
        """Every ordered pair of pods: connected or not."""
        out = {(src, dst): True for src in PODS for dst in PODS}
        for src_pattern, dst_pattern, connected in self.expect:
            for src in PODS:
                for dst in PODS:
                    if matches(src_pattern, src) and matches(dst_pattern, dst):
                        out[(src, dst)] = connected
        return out


@dataclass(frozen=True)
class Step:
    """Changes to the world, then checks."""

    put: tuple[Obj, ...] = ()  # NetworkPolicies created or replaced (same namespace and name)
    delete: tuple[str, ...] | None = ()  # "NS/NAME"s; None deletes every policy
    label_pods: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    label_namespaces: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    checks: tuple[Check, ...] = ()


@dataclass(frozen=True)
class State:
    """The world after a step: policies (with IP placeholders) and labels."""

    policies: Mapping[str, Obj]  # "NS/NAME" -> NetworkPolicy
    pod_labels: Mapping[str, Mapping[str, str]]
    namespace_labels: Mapping[str, Mapping[str, str]]

    def objects(self, ips: Mapping[str, str]) -> tuple[list[Obj], list[Obj], list[Obj]]:
        """(namespaces, pods, policies) as Kubernetes objects, IP placeholders filled in."""
        namespaces = [namespace_object(ns, self.namespace_labels[ns]) for ns in NAMESPACES]
        pods = [pod_object(ref, self.pod_labels[ref], ips.get(ref)) for ref in PODS]
        policies = [render(p, ips) for _, p in sorted(self.policies.items())]
        return namespaces, pods, policies


@dataclass(frozen=True)
class Case:
    id: str  # the file's stem; mirrored cases end in "~mirror"
    suite: str  # upstream's ginkgo Context
    upstream: str  # upstream's test name
    steps: tuple[Step, ...]
    mirror: bool = False

    def states(self) -> Iterator[tuple[Step, State]]:
        """Each step with the world it leaves."""
        state = initial_state()
        for step in self.steps:
            state = apply(state, step)
            yield step, state

    @property
    def protocols(self) -> frozenset[str]:
        return frozenset(c.protocol for s in self.steps for c in s.checks)


def matches(pattern: str, pod: str) -> bool:
    """`*` every pod, `x/*` every pod of x, `x/a` one pod."""
    if pattern == "*":
        return True
    namespace, _, name = pattern.partition("/")
    pod_ns, _, pod_name = pod.partition("/")
    return namespace in ("*", pod_ns) and name in ("*", pod_name)


def initial_state() -> State:
    return State(
        policies={},
        pod_labels={ref: {"pod": ref.split("/")[1]} for ref in PODS},
        namespace_labels={ns: {} for ns in NAMESPACES},
    )


def apply(state: State, step: Step) -> State:
    """The world after `step`'s changes (labels are added, as upstream's AddPodLabels does)."""
    policies = dict(state.policies)
    if step.delete is None:
        policies.clear()
    for ref in step.delete or ():
        policies.pop(ref, None)
    for policy in step.put:
        meta = policy["metadata"]
        policies[f"{meta['namespace']}/{meta['name']}"] = policy
    pods = {ref: dict(labels) for ref, labels in state.pod_labels.items()}
    for ref, labels in step.label_pods.items():
        pods[ref].update(labels)
    namespaces = {ns: dict(labels) for ns, labels in state.namespace_labels.items()}
    for ns, labels in step.label_namespaces.items():
        namespaces[ns].update(labels)
    return State(policies, pods, namespaces)


# --- Kubernetes objects ------------------------------------------------------------------------


def container_ports() -> list[Obj]:
    """One container per port and protocol, as upstream's model makes them."""
    return [
        {
            "name": f"cont-{port}-{protocol.lower()}",
            "image": "none",
            "ports": [
                {
                    "containerPort": port,
                    "name": f"serve-{port}-{protocol.lower()}",
                    "protocol": protocol,
                }
            ],
        }
        for port in PORTS
        for protocol in PROTOCOLS
    ]


def pod_object(ref: str, labels: Mapping[str, str], ip: str | None = None) -> Obj:
    namespace, name = ref.split("/")
    obj: Obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": {"containers": container_ports()},
    }
    if ip is not None:
        obj["status"] = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    return obj


def namespace_object(name: str, labels: Mapping[str, str]) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {**labels, NAMESPACE_LABEL: name}},
    }


def render(obj: Any, ips: Mapping[str, str]) -> Any:
    """A deep copy of `obj` with every `{NS/POD}` in its strings replaced by that pod's IP."""
    if isinstance(obj, str):
        return _PLACEHOLDER.sub(lambda m: ips[m.group(1)], obj)
    if isinstance(obj, list):
        return [render(v, ips) for v in obj]
    if isinstance(obj, dict):
        return {k: render(v, ips) for k, v in obj.items()}
    return obj


def model_ips() -> dict[str, str]:
    """Addresses like the lab's (pods alternate between node1's and node2's /24s)."""
    return {ref: f"10.244.{i % 2 + 1}.{10 + i}" for i, ref in enumerate(PODS)}


# --- loading -----------------------------------------------------------------------------------


def load_cases(directory: Path = CASES_DIR) -> list[Case]:
    """Every case file, in upstream's order (the files' number prefix)."""
    return [load_case(path) for path in sorted(directory.glob("*.yaml"))]


def all_cases(directory: Path = CASES_DIR) -> list[Case]:
    """The transcribed cases, then the mirrors of the main context's."""
    cases = load_cases(directory)
    return cases + [mirrored(c) for c in cases if c.suite == MAIN_SUITE]


def load_case(path: Path) -> Case:
    try:
        raw = yaml.safe_load(path.read_text())
        return Case(
            id=path.stem,
            suite=str(raw["suite"]),
            upstream=str(raw["upstream"]),
            steps=tuple(_step(s) for s in raw["steps"]),
        )
    except (KeyError, TypeError, ValueError, yaml.YAMLError) as exc:
        raise CaseError(f"{path.name}: {exc!r}") from exc


def _step(raw: Mapping[str, Any]) -> Step:
    unknown = set(raw) - _STEP_KEYS
    if unknown:
        raise ValueError(f"unknown step keys {sorted(unknown)}")
    delete = raw.get("delete", ())
    return Step(
        put=tuple(_policy(p) for p in [*raw.get("create", ()), *raw.get("update", ())]),
        delete=None if delete == "all" else tuple(delete),
        label_pods={str(k): dict(v) for k, v in (raw.get("label_pods") or {}).items()},
        label_namespaces={str(k): dict(v) for k, v in (raw.get("label_namespaces") or {}).items()},
        checks=tuple(_check(c) for c in raw["check"]),
    )


def _policy(raw: Mapping[str, Any]) -> Obj:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": str(raw["name"]), "namespace": str(raw["namespace"])},
        "spec": copy.deepcopy(raw["spec"]),
    }


def _check(raw: Mapping[str, Any]) -> Check:
    protocol, _, port = str(raw["probe"]).partition("/")
    if protocol not in PROTOCOLS or int(port) not in PORTS:
        raise ValueError(f"probe {raw['probe']!r}: not one of {PROTOCOLS} x {PORTS}")
    return Check(protocol, int(port), tuple(_expectation(e) for e in raw["expect"]))


def _expectation(raw: Mapping[str, str]) -> tuple[str, str, bool]:
    ((verb, pairs),) = raw.items()
    if verb not in ("allow", "deny"):
        raise ValueError(f"expected allow or deny, got {verb!r}")
    src, arrow, dst = pairs.partition(" -> ")
    if not arrow or not all(_valid_pattern(p) for p in (src, dst)):
        raise ValueError(f"expected 'FROM -> TO' with *, NS/* or NS/POD, got {pairs!r}")
    return src, dst, verb == "allow"


def _valid_pattern(pattern: str) -> bool:
    return any(matches(pattern, pod) for pod in PODS)


# --- mirrors -----------------------------------------------------------------------------------


def mirrored(case: Case) -> Case:
    """The case with TCP and UDP swapped in its policies and probes."""
    steps = tuple(
        replace(
            step,
            put=tuple(_mirror_policy(p) for p in step.put),
            checks=tuple(
                replace(c, protocol=_SWAP.get(c.protocol, c.protocol)) for c in step.checks
            ),
        )
        for step in case.steps
    )
    return replace(case, id=f"{case.id}~mirror", steps=steps, mirror=True)


def _mirror_policy(policy: Obj) -> Obj:
    out = copy.deepcopy(policy)
    for direction in ("ingress", "egress"):
        for rule in out["spec"].get(direction) or ():
            for port in rule.get("ports") or ():
                # A port without a protocol is TCP: its mirror must say UDP.
                port["protocol"] = _SWAP.get(port.get("protocol", "TCP"), port.get("protocol"))
                if isinstance(port.get("port"), str):
                    port["port"] = _mirror_port_name(port["port"])
    return out


def _mirror_port_name(name: str) -> str:
    stem, _, protocol = name.rpartition("-")
    return f"{stem}-{_SWAP.get(protocol.upper(), protocol.upper()).lower()}"


# --- truth tables as upstream prints them ------------------------------------------------------


def wrong_pairs(expected: Table, observed: Mapping[Pair, bool | None]) -> list[Pair]:
    """Pairs whose observation differs from the table; a pod to itself is never judged, and a
    skipped probe (None) is no observation."""
    return [
        pair
        for pair, want in expected.items()
        if pair[0] != pair[1] and observed.get(pair) is not None and observed[pair] != want
    ]


def grid(cells: Mapping[Pair, bool | None], pods: Sequence[str] = PODS) -> str:
    """Rows from, columns to, tab separated: `.` connected, `X` not, `?` not observed."""
    lines = ["\t".join(["-", *pods])]
    for src in pods:
        marks = [_mark(cells.get((src, dst))) for dst in pods]
        lines.append("\t".join([src, *marks]))
    return "\n".join(lines)


def _mark(cell: bool | None) -> str:
    return "?" if cell is None else ("." if cell else "X")


def comparison(expected: Table, observed: Mapping[Pair, bool | None]) -> str:
    """Expected, observed and the comparison (`X` where they differ), upstream's three grids."""
    wrong = set(wrong_pairs(expected, observed))
    diff = {pair: pair not in wrong for pair in expected}
    return (
        f"expected:\n{grid(expected)}\n\nobserved:\n{grid(observed)}\n\n"
        f"comparison (X: wrong; a pod to itself is not judged):\n{grid(diff)}"
    )
