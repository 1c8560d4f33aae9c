"""The NetworkPolicy model: NetworkPolicies, pods and namespaces in, rules for this node out.

Pure (no I/O, no clock, no logging). Four parts:

- parsing with validation (`parse_policy`): a policy the API server would refuse raises
  `PolicyError` naming the policy and each offending field;
- selection: label selectors, peers, named ports (`LabelSelector`, `pod_info`, `resolve_port`);
- the incremental model (`PolicyModel`): fed object by object, it says which policies a change
  affects and compiles one policy into `flows.policy.Rule`s for the local pods;
- the verdict (`verdict`): would A reach B on port P, straight from the Kubernetes semantics and
  independent of the compilation, so tests and `plumbctl explain` can compare against it.

Semantics are the Kubernetes ones: a pod selected by a policy of a direction is isolated in that
direction and only what a rule of such a policy allows passes; policies are a union; an absent
or empty `from`/`to` means every peer, an absent or empty `ports` every port, while an empty
`ingress`/`egress` list allows nothing; `policyTypes` defaults to Ingress, plus Egress when there
are egress rules; named ports resolve on the destination pod (the target for ingress, the peer
for egress), so one rule may resolve differently per pod. Host-network and finished pods, and
pods without an address, are neither selected nor matched as peers.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from flows.policy import (
    PROTOCOL_NUMBERS,
    Direction,
    IPBlock,
    LocalTarget,
    Peers,
    PortRange,
    Rule,
    RuleKey,
)

PodKey = tuple[str, str]
PolicyKey = tuple[str, str]
Labels = Mapping[str, str]

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_TERMINAL_PHASES = ("Succeeded", "Failed")


# --- errors ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    field: str
    message: str


class PolicyError(ValueError):
    """A NetworkPolicy that cannot be enforced; `problems` names every bad field."""

    def __init__(self, policy: str, problems: Iterable[Problem]) -> None:
        self.policy = policy
        self.problems = tuple(problems)
        text = "; ".join(f"{p.field}: {p.message}" for p in self.problems)
        super().__init__(f"NetworkPolicy {policy}: {text}")


# --- the parsed policy -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Labels) -> bool:
        if self.operator == "In":
            return labels.get(self.key) in self.values
        if self.operator == "NotIn":
            return labels.get(self.key) not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """matchLabels and matchExpressions, ANDed; the empty selector matches everything."""

    match_labels: tuple[tuple[str, str], ...] = ()
    expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Labels) -> bool:
        for key, value in self.match_labels:
            if labels.get(key) != value:
                return False
        return all(r.matches(labels) for r in self.expressions)


EVERYTHING = LabelSelector()


@dataclass(frozen=True, slots=True)
class PeerSpec:
    """One `from`/`to` entry: selectors (either or both) or an ipBlock."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None


# Egress rules with named ports and no `to` resolve on every pod: this peer stands for them.
ALL_PODS = PeerSpec(EVERYTHING, EVERYTHING)


@dataclass(frozen=True, slots=True)
class PortSpec:
    protocol: int
    port: int | str | None = None
    end_port: int | None = None

    @property
    def named(self) -> bool:
        return isinstance(self.port, str)


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """One ingress or egress rule. `peers` None: every peer; `ports` empty: every port."""

    peers: tuple[PeerSpec, ...] | None = None
    ports: tuple[PortSpec, ...] = ()

    @property
    def named_ports(self) -> tuple[PortSpec, ...]:
        return tuple(p for p in self.ports if p.named)


@dataclass(frozen=True, slots=True)
class PolicySpec:
    namespace: str
    name: str
    uid: str
    pod_selector: LabelSelector
    types: frozenset[Direction]
    ingress: tuple[RuleSpec, ...] = ()
    egress: tuple[RuleSpec, ...] = ()

    @property
    def key(self) -> PolicyKey:
        return (self.namespace, self.name)

    def rules(self, direction: Direction) -> tuple[RuleSpec, ...]:
        """The rules in force for `direction` (none unless policyTypes has it)."""
        if direction not in self.types:
            return ()
        return self.ingress if direction is Direction.INGRESS else self.egress


# --- parsing and validation ---------------------------------------------------------------------


class _Checker:
    """Collects problems while parsing so that one message names every bad field."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def mapping(self, value: Any, path: str) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.fail(path, "must be an object")
            return {}
        return value

    def sequence(self, value: Any, path: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(path, "must be a list")
            return []
        return value


def parse_policy(obj: Mapping[str, Any]) -> PolicySpec:
    """A NetworkPolicy object (Kubernetes JSON shape) as a PolicySpec; PolicyError if invalid."""
    meta = obj.get("metadata") or {}
    namespace, name = str(meta.get("namespace") or "default"), str(meta.get("name") or "")
    check = _Checker()
    spec = check.mapping(obj.get("spec"), "spec")
    pod_selector = _selector(check, spec.get("podSelector"), "spec.podSelector") or EVERYTHING
    ingress = tuple(
        _rule(check, raw, f"spec.ingress[{i}]", "from")
        for i, raw in enumerate(check.sequence(spec.get("ingress"), "spec.ingress"))
    )
    egress = tuple(
        _rule(check, raw, f"spec.egress[{i}]", "to")
        for i, raw in enumerate(check.sequence(spec.get("egress"), "spec.egress"))
    )
    types = _policy_types(check, spec.get("policyTypes"), bool(egress))
    if check.problems:
        raise PolicyError(f"{namespace}/{name}", check.problems)
    uid = str(meta.get("uid") or f"{namespace}/{name}")
    return PolicySpec(namespace, name, uid, pod_selector, types, ingress, egress)


def _policy_types(check: _Checker, raw: Any, has_egress: bool) -> frozenset[Direction]:
    if raw is None or raw == []:
        # The API server's defaulting: Ingress always, Egress when there are egress rules.
        return frozenset({Direction.INGRESS} | ({Direction.EGRESS} if has_egress else set()))
    types: set[Direction] = set()
    for i, value in enumerate(check.sequence(raw, "spec.policyTypes")):
        if value == "Ingress":
            types.add(Direction.INGRESS)
        elif value == "Egress":
            types.add(Direction.EGRESS)
        else:
            check.fail(f"spec.policyTypes[{i}]", f"{value!r} is not Ingress or Egress")
    return frozenset(types)


def _rule(check: _Checker, raw: Any, path: str, peers_field: str) -> RuleSpec:
    body = check.mapping(raw, path)
    peers_raw = body.get(peers_field)
    peers = None
    if peers_raw:  # absent and [] both mean every peer
        peers = tuple(
            _peer(check, p, f"{path}.{peers_field}[{i}]")
            for i, p in enumerate(check.sequence(peers_raw, f"{path}.{peers_field}"))
        )
    ports = tuple(
        _port(check, p, f"{path}.ports[{i}]")
        for i, p in enumerate(check.sequence(body.get("ports"), f"{path}.ports"))
    )
    return RuleSpec(peers, ports)


def _peer(check: _Checker, raw: Any, path: str) -> PeerSpec:
    body = check.mapping(raw, path)
    pods = _selector(check, body.get("podSelector"), f"{path}.podSelector")
    namespaces = _selector(check, body.get("namespaceSelector"), f"{path}.namespaceSelector")
    block = None
    if body.get("ipBlock") is not None:
        block = _ip_block(check, body["ipBlock"], f"{path}.ipBlock")
        if pods is not None or namespaces is not None:
            check.fail(path, "ipBlock may not be combined with podSelector or namespaceSelector")
    elif pods is None and namespaces is None:
        check.fail(path, "must specify podSelector, namespaceSelector or ipBlock")
    return PeerSpec(pods, namespaces, block)


def _selector(check: _Checker, raw: Any, path: str) -> LabelSelector | None:
    if raw is None:
        return None
    body = check.mapping(raw, path)
    labels = check.mapping(body.get("matchLabels"), f"{path}.matchLabels")
    pairs: list[tuple[str, str]] = []
    for key, value in labels.items():
        if not isinstance(value, str):
            check.fail(f"{path}.matchLabels.{key}", f"{value!r} is not a string")
        else:
            pairs.append((str(key), value))
    expressions = tuple(
        _requirement(check, e, f"{path}.matchExpressions[{i}]")
        for i, e in enumerate(
            check.sequence(body.get("matchExpressions"), f"{path}.matchExpressions")
        )
    )
    return LabelSelector(tuple(sorted(pairs)), expressions)


def _requirement(check: _Checker, raw: Any, path: str) -> Requirement:
    body = check.mapping(raw, path)
    key, operator = body.get("key"), body.get("operator")
    values = check.sequence(body.get("values"), f"{path}.values")
    if not isinstance(key, str) or not key:
        check.fail(f"{path}.key", "is required")
    if operator not in OPERATORS:
        check.fail(f"{path}.operator", f"{operator!r} is not one of {', '.join(OPERATORS)}")
    elif operator in ("In", "NotIn") and not values:
        check.fail(f"{path}.values", f"must be non-empty for {operator}")
    elif operator in ("Exists", "DoesNotExist") and values:
        check.fail(f"{path}.values", f"must be empty for {operator}")
    if any(not isinstance(v, str) for v in values):
        check.fail(f"{path}.values", "must be strings")
    return Requirement(str(key), str(operator), frozenset(str(v) for v in values))


def _ip_block(check: _Checker, raw: Any, path: str) -> IPBlock | None:
    body = check.mapping(raw, path)
    cidr = _network(check, body.get("cidr"), f"{path}.cidr")
    excepts: list[str] = []
    for i, text in enumerate(check.sequence(body.get("except"), f"{path}.except")):
        hole = _network(check, text, f"{path}.except[{i}]")
        if hole is None or cidr is None:
            continue
        if hole.version != cidr.version or not hole.subnet_of(cidr) or hole == cidr:  # type: ignore[arg-type]
            check.fail(f"{path}.except[{i}]", f"{text!r} is not a strict subset of {cidr}")
        else:
            excepts.append(str(hole))
    return IPBlock(str(cidr), tuple(excepts)) if cidr is not None else None


def _network(
    check: _Checker, text: Any, path: str
) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    if not isinstance(text, str) or "/" not in text:
        check.fail(path, f"{text!r} is not a CIDR")
        return None
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        check.fail(path, f"{text!r} is not a CIDR")
        return None


def _port(check: _Checker, raw: Any, path: str) -> PortSpec:
    body = check.mapping(raw, path)
    name = body.get("protocol", "TCP")
    protocol = PROTOCOL_NUMBERS.get(name) if isinstance(name, str) else None
    if protocol is None:
        check.fail(f"{path}.protocol", f"{name!r} is not TCP, UDP or SCTP")
    port, end_port = body.get("port"), body.get("endPort")
    if isinstance(port, bool) or not (port is None or isinstance(port, int | str)):
        check.fail(f"{path}.port", f"{port!r} is not a port number or name")
        port = None
    elif isinstance(port, int) and not 1 <= port <= 65535:
        check.fail(f"{path}.port", f"{port} is outside 1..65535")
    elif isinstance(port, str):
        _check_port_name(check, port, f"{path}.port")
    if end_port is not None:
        _check_end_port(check, port, end_port, f"{path}.endPort")
    return PortSpec(protocol or 0, port, end_port if isinstance(end_port, int) else None)


def _check_port_name(check: _Checker, name: str, path: str) -> None:
    if len(name) > 15:
        check.fail(path, f"port name {name!r} is longer than 15 characters")
    elif not _SVC_NAME.match(name) or "--" in name or not re.search("[a-z]", name):
        check.fail(
            path,
            f"port name {name!r} is not an IANA_SVC_NAME "
            "(lowercase letters, digits and single hyphens inside, at least one letter)",
        )


def _check_end_port(check: _Checker, port: Any, end_port: Any, path: str) -> None:
    if isinstance(end_port, bool) or not isinstance(end_port, int):
        check.fail(path, f"{end_port!r} is not a port number")
    elif not isinstance(port, int):
        check.fail(path, "endPort needs a numeric port")
    elif not 1 <= end_port <= 65535:
        check.fail(path, f"{end_port} is outside 1..65535")
    elif end_port < port:
        check.fail(path, f"{end_port} is below port {port}")


# --- pods ---------------------------------------------------------------------------------------

NamedPort = tuple[str, int, int]  # (name, protocol, container port)


@dataclass(frozen=True, slots=True)
class PodInfo:
    """What policies read of a pod. `local` is set for pods attached to this node's bridge."""

    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    ip: str | None = None
    named_ports: tuple[NamedPort, ...] = ()
    host_network: bool = False
    finished: bool = False
    local: LocalTarget | None = None

    @property
    def key(self) -> PodKey:
        return (self.namespace, self.name)

    @property
    def selectable(self) -> bool:
        """Policies select it and match it as a peer (it has its own pod-network address)."""
        return self.ip is not None and not self.host_network and not self.finished


def pod_info(obj: Mapping[str, Any]) -> PodInfo:
    """A pod object (store's slim shape) as PodInfo."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    return PodInfo(
        namespace=str(meta.get("namespace") or "default"),
        name=str(meta.get("name") or ""),
        labels=labels,
        ip=_pod_ipv4(status),
        named_ports=tuple(_named_ports(spec)),
        host_network=bool(spec.get("hostNetwork")),
        finished=status.get("phase") in _TERMINAL_PHASES,
    )


def _pod_ipv4(status: Mapping[str, Any]) -> str | None:
    for _path, text, well_formed in _pod_addresses(status):
        if well_formed and isinstance(text, str) and text:
            try:
                if ipaddress.ip_address(text).version == 4:
                    return text
            except ValueError:
                continue
    return None


def _pod_addresses(status: Mapping[str, Any]) -> Iterator[tuple[str, Any, bool]]:
    """(field, value, in the right place) of every address a pod's status gives, podIPs
    first; a podIPs entry that is no object is not in the right place."""
    entries = status.get("podIPs")
    for i, entry in enumerate(entries if isinstance(entries, list) else ()):
        if isinstance(entry, Mapping):
            yield f"status.podIPs[{i}].ip", entry.get("ip"), True
        else:
            yield f"status.podIPs[{i}]", entry, False
    yield "status.podIP", status.get("podIP"), True


def pod_address_problem(obj: Mapping[str, Any]) -> str | None:
    """What is wrong with a pod object's addresses (status.podIP, status.podIPs), None if
    nothing: each given one must be an IP address. Such an address is ignored; a pod left
    without an IPv4 is neither selected nor matched as a peer (as a pod without an address)."""
    status = obj.get("status") or {}
    if not isinstance(status, Mapping):
        return None
    problems = []
    if status.get("podIPs") is not None and not isinstance(status.get("podIPs"), list):
        problems.append(f"status.podIPs {status.get('podIPs')!r} is not a list")
    for path, text, well_formed in _pod_addresses(status):
        if not well_formed:
            problems.append(f"{path} {text!r} is not an object with an ip")
        elif text is not None and text != "" and not _is_ip(text):
            problems.append(f"{path} {text!r} is not an IP address")
    return "; ".join(problems) or None


def _is_ip(text: Any) -> bool:
    if not isinstance(text, str):
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _named_ports(spec: Mapping[str, Any]) -> Iterator[NamedPort]:
    # Entries that are not objects are skipped (the API server would refuse them).
    for container in [*_entries(spec.get("containers")), *_entries(spec.get("initContainers"))]:
        for port in _entries(container.get("ports")):
            name, number = port.get("name"), port.get("containerPort")
            protocol = PROTOCOL_NUMBERS.get(str(port.get("protocol") or "TCP"))
            if name and isinstance(number, int) and protocol is not None:
                yield (str(name), protocol, number)


def _entries(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def resolve_port(pod: PodInfo, name: str, protocol: int) -> int | None:
    """The container port called `name` with `protocol` on `pod`, if any."""
    for port_name, port_protocol, number in pod.named_ports:
        if port_name == name and port_protocol == protocol:
            return number
    return None


def _resolution(pod: PodInfo, named: tuple[PortSpec, ...]) -> frozenset[PortRange]:
    ports: set[PortRange] = set()
    for spec in named:
        number = resolve_port(pod, str(spec.port), spec.protocol)
        if number is not None:
            ports.add(PortRange(spec.protocol, number, number))
    return frozenset(ports)


def resolution_group(ports: frozenset[PortRange]) -> str:
    """A stable name for one named-port resolution (part of the rule's conjunction key)."""
    return ",".join(f"{p.protocol}:{p.lo}" for p in sorted(ports))


def namespace_labels(name: str, labels: Labels | None) -> dict[str, str]:
    """A namespace's labels with the one the API server always sets (its name)."""
    return {**(labels or {}), NAMESPACE_NAME_LABEL: name}


def peer_selects(peer: PeerSpec, policy_namespace: str, pod: PodInfo, ns_labels: Labels) -> bool:
    """True when a selector peer matches `pod` (ipBlock peers never select pods)."""
    if peer.ip_block is not None or not pod.selectable:
        return False
    if peer.namespace_selector is None:
        if pod.namespace != policy_namespace:
            return False
    elif not peer.namespace_selector.matches(ns_labels):
        return False
    return peer.pod_selector is None or peer.pod_selector.matches(pod.labels)


def block_contains(block: IPBlock, ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    if address not in ipaddress.ip_network(block.cidr):
        return False
    return not any(address in ipaddress.ip_network(hole) for hole in block.excepts)


# --- the incremental model ---------------------------------------------------------------------

PeerId = tuple[Direction, int, int]  # (direction, rule index, peer index; -1 for ALL_PODS)
# Equal selector peers of different policies share one member set. A peer without a namespace
# selector is scoped to its policy's namespace (third item); one with a namespace selector is not.
GroupKey = tuple[LabelSelector | None, LabelSelector | None, str | None]


@dataclass(slots=True)
class _Group:
    """The pods one selector peer selects, shared by every policy with that peer."""

    namespace_selector: LabelSelector | None
    pod_selector: LabelSelector | None
    namespaces: set[str]  # the namespaces whose pods it may select
    members: set[PodKey] = field(default_factory=set)
    users: set[PolicyKey] = field(default_factory=set)
    version: int = 0  # new whenever the members or a member's attributes change
    # The members' addresses as of `version`: one shared value for every rule using the group.
    addresses: tuple[int, frozenset[str]] = (-1, frozenset())

    def selects(self, pod: PodInfo) -> bool:
        return (
            pod.selectable
            and pod.namespace in self.namespaces
            and (self.pod_selector is None or self.pod_selector.matches(pod.labels))
        )


RuleSlot = tuple[Direction, int]


@dataclass(slots=True)
class _PolicyState:
    spec: PolicySpec
    targets: set[PodKey] = field(default_factory=set)
    targets_version: int = 0
    peers: dict[PeerId, GroupKey] = field(default_factory=dict)
    groups_of_rule: dict[RuleSlot, tuple[GroupKey, ...]] = field(default_factory=dict)
    # Per rule: the versions of its inputs when last compiled, and what it compiled to.
    compiled: dict[RuleSlot, tuple[tuple[int, ...], tuple[Rule, ...]]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """One policy's rules on this node, the local pods it isolates, and its local targets."""

    key: PolicyKey
    rules: tuple[Rule, ...]
    isolated: Mapping[Direction, frozenset[LocalTarget]]
    targets: tuple[PodKey, ...]


class PolicyModel:
    """Pods, namespaces and policies, with each policy's selected pods kept up to date.

    Every `set_*` returns the keys of the policies whose rules may have changed; `compile`
    turns one of them into rules. A change costs what it touches: equal selector peers of all
    policies share one member set (a group), so a pod is checked once per group that can see
    its namespace and once per policy of its namespace (targets), a namespace once per group
    with a namespace selector; and compiling reuses each rule whose inputs did not change.
    """

    def __init__(self) -> None:
        self._store_pods: dict[PodKey, PodInfo] = {}
        self._local: dict[PodKey, LocalTarget] = {}
        self._pods: dict[PodKey, PodInfo] = {}  # store info merged with the local attachment
        self._pods_by_ns: dict[str, set[PodKey]] = {}
        self._ns_labels: dict[str, dict[str, str]] = {}
        self._policies: dict[PolicyKey, _PolicyState] = {}
        self._errors: dict[PolicyKey, PolicyError] = {}
        self._by_namespace: dict[str, set[PolicyKey]] = {}  # policies by their own namespace
        self._groups: dict[GroupKey, _Group] = {}
        self._groups_by_ns: dict[str, set[GroupKey]] = {}  # groups that may select its pods
        self._selector_groups: set[GroupKey] = set()  # groups with a namespace selector
        self._versions = itertools.count(1)

    # --- reads -------------------------------------------------------------------------------

    def policy_keys(self) -> list[PolicyKey]:
        return sorted(self._policies.keys() | self._errors.keys())

    def spec(self, key: PolicyKey) -> PolicySpec | None:
        state = self._policies.get(key)
        return state.spec if state is not None else None

    def error(self, key: PolicyKey) -> PolicyError | None:
        return self._errors.get(key)

    def pod(self, key: PodKey) -> PodInfo | None:
        return self._pods.get(key)

    def group_count(self) -> int:
        return len(self._groups)

    def world(self) -> World:
        """Everything the verdict needs, as of now."""
        namespaces = {ns: self.labels_of(ns) for ns in self._ns_labels.keys() | self._pods_by_ns}
        specs = tuple(state.spec for state in self._policies.values())
        return World(specs, dict(self._pods), namespaces)

    def labels_of(self, namespace: str) -> dict[str, str]:
        return namespace_labels(namespace, self._ns_labels.get(namespace))

    # --- namespaces --------------------------------------------------------------------------

    def set_namespace(self, name: str, labels: Labels | None) -> set[PolicyKey]:
        """A namespace appeared, changed labels (labels given) or went away (None)."""
        old = self._ns_labels.get(name)
        if labels is None:
            self._ns_labels.pop(name, None)
        else:
            self._ns_labels[name] = dict(labels)
        if old == self._ns_labels.get(name):
            return set()
        return self._namespace_changed(name)

    def _namespace_changed(self, name: str) -> set[PolicyKey]:
        labels = self.labels_of(name)
        dirty: set[PolicyKey] = set()
        for group_key in self._selector_groups:
            group = self._groups[group_key]
            assert group.namespace_selector is not None
            selected = group.namespace_selector.matches(labels)
            if self._move_namespace(group_key, group, name, selected):
                dirty |= group.users
        return dirty

    def _move_namespace(
        self, group_key: GroupKey, group: _Group, namespace: str, selected: bool
    ) -> bool:
        """Let the group see a namespace's pods or not; True if its members changed."""
        if selected == (namespace in group.namespaces):
            return False
        pods = self._pods_by_ns.get(namespace, set())
        if selected:
            group.namespaces.add(namespace)
            self._groups_by_ns.setdefault(namespace, set()).add(group_key)
            added = {k for k in pods if group.selects(self._pods[k])}
            changed = bool(added - group.members)
            group.members |= added
        else:
            group.namespaces.discard(namespace)
            self._unindex_group(namespace, group_key)
            gone = group.members & pods
            changed = bool(gone)
            group.members -= gone
        if changed:
            group.version = next(self._versions)
        return changed

    def _unindex_group(self, namespace: str, group_key: GroupKey) -> None:
        indexed = self._groups_by_ns.get(namespace)
        if indexed is not None:
            indexed.discard(group_key)
            if not indexed:
                del self._groups_by_ns[namespace]

    # --- pods --------------------------------------------------------------------------------

    def set_pod(self, key: PodKey, info: PodInfo | None) -> set[PolicyKey]:
        """A pod from the store: added or changed (info given) or deleted (None)."""
        if info is None:
            self._store_pods.pop(key, None)
        else:
            self._store_pods[key] = info
        return self._refresh_pod(key)

    def set_local_pods(self, local: Mapping[PodKey, LocalTarget]) -> set[PolicyKey]:
        """The pods attached to this node's bridge, with their ports and addresses."""
        changed = {
            k for k in local.keys() | self._local.keys() if local.get(k) != self._local.get(k)
        }
        self._local = dict(local)
        dirty: set[PolicyKey] = set()
        for key in changed:
            dirty |= self._refresh_pod(key)
        return dirty

    def _refresh_pod(self, key: PodKey) -> set[PolicyKey]:
        old = self._pods.get(key)
        new = self._effective(key)
        if old == new:
            return set()
        namespace = key[0]
        if new is None:
            del self._pods[key]
            members = self._pods_by_ns.get(namespace, set())
            members.discard(key)
            if not members:
                self._pods_by_ns.pop(namespace, None)
        else:
            self._pods[key] = new
            if namespace not in self._pods_by_ns and namespace not in self._ns_labels:
                self._pods_by_ns[namespace] = set()
                self._namespace_changed(namespace)  # first sight of a namespace without object
            self._pods_by_ns.setdefault(namespace, set()).add(key)
        dirty: set[PolicyKey] = set()
        for group_key in self._groups_by_ns.get(namespace, ()):
            group = self._groups[group_key]
            member = new is not None and group.selects(new)
            if _set_member(group.members, key, member, old != new):
                group.version = next(self._versions)
                dirty |= group.users
        for policy in self._by_namespace.get(namespace, ()):
            state = self._policies[policy]
            if _set_member(state.targets, key, _is_target(state.spec, new), old != new):
                state.targets_version = next(self._versions)
                dirty.add(policy)
        return dirty

    def _effective(self, key: PodKey) -> PodInfo | None:
        info = self._store_pods.get(key)
        local = self._local.get(key)
        if info is None or local is None:
            return info
        return PodInfo(
            info.namespace,
            info.name,
            info.labels,
            local.ip,
            info.named_ports,
            info.host_network,
            info.finished,
            local,
        )

    # --- policies ----------------------------------------------------------------------------

    def set_policy(self, key: PolicyKey, obj: Mapping[str, Any] | None) -> set[PolicyKey]:
        """A policy added or changed (its object) or deleted (None).

        An invalid policy is recorded (see `error`) and raises nothing: a policy that never
        parsed has no effect, and one that turns invalid keeps its last valid version in force,
        as a manifests directory keeps a bad file's last good content.
        """
        if obj is None:
            self._errors.pop(key, None)
            self._drop_policy(key)
            return {key}
        try:
            spec = parse_policy(obj)
        except PolicyError as exc:
            self._errors[key] = exc
            return {key}
        self._errors.pop(key, None)
        self._drop_policy(key)
        self._add_policy(key, spec)
        return {key}

    def _drop_policy(self, key: PolicyKey) -> None:
        state = self._policies.pop(key, None)
        if state is None:
            return
        namespace = state.spec.namespace
        policies = self._by_namespace[namespace]
        policies.discard(key)
        if not policies:
            del self._by_namespace[namespace]
        for group_key in set(state.peers.values()):
            group = self._groups[group_key]
            group.users.discard(key)
            if not group.users:
                self._drop_group(group_key, group)

    def _drop_group(self, group_key: GroupKey, group: _Group) -> None:
        del self._groups[group_key]
        self._selector_groups.discard(group_key)
        for namespace in group.namespaces:
            self._unindex_group(namespace, group_key)

    def _add_policy(self, key: PolicyKey, spec: PolicySpec) -> None:
        state = _PolicyState(spec, targets_version=next(self._versions))
        self._policies[key] = state
        self._by_namespace.setdefault(spec.namespace, set()).add(key)
        for pod_key in self._pods_by_ns.get(spec.namespace, ()):
            if _is_target(spec, self._pods[pod_key]):
                state.targets.add(pod_key)
        for peer_id, peer in _selector_peers(spec):
            group_key = _group_key(spec, peer)
            group = self._groups.get(group_key) or self._new_group(group_key)
            group.users.add(key)
            state.peers[peer_id] = group_key
            slot = (peer_id[0], peer_id[1])
            state.groups_of_rule[slot] = (*state.groups_of_rule.get(slot, ()), group_key)

    def _new_group(self, group_key: GroupKey) -> _Group:
        namespace_selector, pod_selector, scope = group_key
        if namespace_selector is None:
            assert scope is not None
            namespaces = {scope}
        else:
            known = self._ns_labels.keys() | self._pods_by_ns.keys()
            namespaces = {ns for ns in known if namespace_selector.matches(self.labels_of(ns))}
            self._selector_groups.add(group_key)
        group = _Group(namespace_selector, pod_selector, namespaces, version=next(self._versions))
        for namespace in namespaces:
            self._groups_by_ns.setdefault(namespace, set()).add(group_key)
            for pod_key in self._pods_by_ns.get(namespace, ()):
                if group.selects(self._pods[pod_key]):
                    group.members.add(pod_key)
        self._groups[group_key] = group
        return group

    # --- compilation -------------------------------------------------------------------------

    def compile(self, key: PolicyKey) -> CompiledPolicy:
        """The policy's rules for the local pods it selects (none when it is absent/invalid)."""
        state = self._policies.get(key)
        if state is None:
            return CompiledPolicy(key, (), {}, ())
        spec = state.spec
        targets = sorted(state.targets)
        locals_ = frozenset(local for k in targets if (local := self._pods[k].local) is not None)
        rules: list[Rule] = []
        if locals_:
            for direction in (Direction.INGRESS, Direction.EGRESS):
                for index, rule in enumerate(spec.rules(direction)):
                    rules.extend(self._cached_rules(state, direction, index, rule, locals_))
        isolated = {d: locals_ for d in spec.types}
        return CompiledPolicy(key, tuple(rules), isolated, tuple(targets))

    def _cached_rules(
        self,
        state: _PolicyState,
        direction: Direction,
        index: int,
        rule: RuleSpec,
        locals_: frozenset[LocalTarget],
    ) -> tuple[Rule, ...]:
        groups = [self._groups[k] for k in state.groups_of_rule.get((direction, index), ())]
        inputs = (state.targets_version, *(g.version for g in groups))
        cached = state.compiled.get((direction, index))
        if cached is not None and cached[0] == inputs:
            return cached[1]
        made = tuple(self._rule(state, direction, index, rule, locals_, groups))
        state.compiled[(direction, index)] = (inputs, made)
        return made

    def _rule(
        self,
        state: _PolicyState,
        direction: Direction,
        index: int,
        rule: RuleSpec,
        locals_: frozenset[LocalTarget],
        groups: list[_Group],
    ) -> Iterator[Rule]:
        spec = state.spec

        def key(group: str = "") -> RuleKey:
            return RuleKey(spec.uid, direction, index, group)

        peers = None
        if rule.peers is not None:
            ips = frozenset().union(*(self._addresses(g) for g in groups))
            blocks = frozenset(p.ip_block for p in rule.peers if p.ip_block is not None)
            peers = Peers(ips, blocks)
        numeric = frozenset(
            PortRange(p.protocol, p.port, p.end_port or p.port)
            if isinstance(p.port, int)
            else PortRange(p.protocol)
            for p in rule.ports
            if not p.named
        )
        if not rule.ports:
            yield Rule(key(), locals_, peers, None)
        elif numeric:
            yield Rule(key(), locals_, peers, numeric)
        named = rule.named_ports
        if not named:
            return
        if direction is Direction.INGRESS:
            # Named ports resolve on the target: pods that resolve alike share one rule.
            by_target: dict[frozenset[PortRange], set[LocalTarget]] = {}
            for pod_key in state.targets:
                pod = self._pods[pod_key]
                if pod.local is not None:
                    by_target.setdefault(_resolution(pod, named), set()).add(pod.local)
            for ports, group in sorted(by_target.items(), key=lambda kv: resolution_group(kv[0])):
                if ports:
                    yield Rule(key(resolution_group(ports)), frozenset(group), peers, ports)
            return
        # Egress: named ports resolve on the peer; ipBlock peers have no ports to resolve.
        by_peer: dict[frozenset[PortRange], set[str]] = {}
        for pod_key in set().union(*(g.members for g in groups)):
            pod = self._pods[pod_key]
            if pod.ip is not None:
                by_peer.setdefault(_resolution(pod, named), set()).add(pod.ip)
        for ports, addresses in sorted(by_peer.items(), key=lambda kv: resolution_group(kv[0])):
            if ports:
                group_key = resolution_group(ports)
                yield Rule(key(group_key), locals_, Peers(frozenset(addresses)), ports)

    def _addresses(self, group: _Group) -> frozenset[str]:
        version, addresses = group.addresses
        if version != group.version:
            addresses = frozenset(ip for k in group.members if (ip := self._pods[k].ip) is not None)
            group.addresses = (group.version, addresses)
        return addresses


def _is_target(spec: PolicySpec, pod: PodInfo | None) -> bool:
    return (
        pod is not None
        and pod.local is not None
        and pod.selectable
        and pod.namespace == spec.namespace
        and spec.pod_selector.matches(pod.labels)
    )


def _group_key(spec: PolicySpec, peer: PeerSpec) -> GroupKey:
    scope = spec.namespace if peer.namespace_selector is None else None
    return (peer.namespace_selector, peer.pod_selector, scope)


def _set_member(members: set[PodKey], key: PodKey, member: bool, pod_changed: bool) -> bool:
    """Add or remove `key`; True if membership changed or a member's attributes did."""
    was = key in members
    if member and not was:
        members.add(key)
    elif was and not member:
        members.discard(key)
    return was != member or (member and pod_changed)


def _selector_peers(spec: PolicySpec) -> Iterator[tuple[PeerId, PeerSpec]]:
    """The peers whose pods must be tracked (selector peers; ALL_PODS for egress rules with
    named ports and no `to`, whose ports resolve on every pod)."""
    for direction in (Direction.INGRESS, Direction.EGRESS):
        for index, rule in enumerate(spec.rules(direction)):
            if rule.peers is None:
                if direction is Direction.EGRESS and rule.named_ports:
                    yield (direction, index, -1), ALL_PODS
                continue
            for peer_index, peer in enumerate(rule.peers):
                if peer.ip_block is None:
                    yield (direction, index, peer_index), peer


# --- the verdict ---------------------------------------------------------------------------------

Endpoint = PodKey | str  # a pod, or an IP address outside the pod network


@dataclass(frozen=True, slots=True)
class World:
    """Valid policies, pods and namespace labels: everything the verdict reads."""

    policies: tuple[PolicySpec, ...]
    pods: Mapping[PodKey, PodInfo]
    namespaces: Mapping[str, Labels]

    def labels_of(self, namespace: str) -> Labels:
        return self.namespaces.get(namespace) or namespace_labels(namespace, None)

    @classmethod
    def of(
        cls,
        policies: Iterable[Mapping[str, Any]],
        pods: Iterable[Mapping[str, Any]],
        namespaces: Iterable[Mapping[str, Any]],
    ) -> World:
        """A world from Kubernetes objects; invalid policies are left out."""
        specs = []
        for obj in policies:
            try:
                specs.append(parse_policy(obj))
            except PolicyError:
                continue
        infos = {info.key: info for info in map(pod_info, pods)}
        labels = {}
        for ns in namespaces:
            meta = ns.get("metadata") or {}
            labels[meta["name"]] = namespace_labels(meta["name"], meta.get("labels"))
        return cls(tuple(specs), infos, labels)


def verdict(
    world: World, src: Endpoint, dst: Endpoint, protocol: str, port: int | None = None
) -> bool:
    """Would a new connection from `src` to `dst` (protocol TCP, UDP, SCTP or ICMP; port for
    the first three) be allowed? Both ends' policies must agree; a pod always reaches itself."""
    src_pod, src_ip = _resolve(world, src)
    dst_pod, dst_ip = _resolve(world, dst)
    if src_pod is not None and src_pod is dst_pod:
        return True
    if src_ip is None or dst_ip is None:
        return False
    proto = PROTOCOL_NUMBERS.get(protocol)
    flow = _Flow(src_pod, src_ip, dst_pod, dst_ip, proto, port)
    return _allowed(world, flow, Direction.EGRESS) and _allowed(world, flow, Direction.INGRESS)


@dataclass(frozen=True, slots=True)
class _Flow:
    src_pod: PodInfo | None
    src_ip: str
    dst_pod: PodInfo | None
    dst_ip: str
    protocol: int | None
    port: int | None


def _resolve(world: World, endpoint: Endpoint) -> tuple[PodInfo | None, str | None]:
    """(the pod if policies can see it, its address); a host-network pod is just an address."""
    if not isinstance(endpoint, tuple):
        return None, endpoint
    pod = world.pods.get(endpoint)
    if pod is None:
        raise KeyError(f"no pod {endpoint[0]}/{endpoint[1]}")
    return (pod if pod.selectable else None), pod.ip


def _allowed(world: World, flow: _Flow, direction: Direction) -> bool:
    subject = flow.src_pod if direction is Direction.EGRESS else flow.dst_pod
    if subject is None:
        return True  # not a pod on the pod network: no policy of that end applies
    policies = [
        p
        for p in world.policies
        if direction in p.types
        and p.namespace == subject.namespace
        and p.pod_selector.matches(subject.labels)
    ]
    if not policies:
        return True
    return any(
        _rule_allows(world, policy, rule, flow, direction)
        for policy in policies
        for rule in policy.rules(direction)
    )


def _rule_allows(
    world: World, policy: PolicySpec, rule: RuleSpec, flow: _Flow, direction: Direction
) -> bool:
    peer_pod, peer_ip = (
        (flow.dst_pod, flow.dst_ip)
        if direction is Direction.EGRESS
        else (flow.src_pod, flow.src_ip)
    )
    if rule.peers is None:
        by_selector, by_block = peer_pod is not None, True
    else:
        labels = world.labels_of(peer_pod.namespace) if peer_pod is not None else {}
        by_selector = peer_pod is not None and any(
            peer_selects(p, policy.namespace, peer_pod, labels) for p in rule.peers
        )
        by_block = any(
            p.ip_block is not None and block_contains(p.ip_block, peer_ip) for p in rule.peers
        )
        if not (by_selector or by_block):
            return False
    if not rule.ports:
        return True
    # Named ports name the destination pod's ports; for egress only a pod the rule selected
    # as a pod (not through an ipBlock) has ports to resolve.
    resolvable = flow.dst_pod is not None and (direction is Direction.INGRESS or by_selector)
    return any(_port_allows(p, flow, resolvable) for p in rule.ports)


def _port_allows(spec: PortSpec, flow: _Flow, resolvable: bool) -> bool:
    if flow.protocol is None or spec.protocol != flow.protocol or flow.port is None:
        return False
    if spec.port is None:
        return True
    if isinstance(spec.port, int):
        return spec.port <= flow.port <= (spec.end_port or spec.port)
    if not resolvable or flow.dst_pod is None:
        return False
    return resolve_port(flow.dst_pod, spec.port, spec.protocol) == flow.port
