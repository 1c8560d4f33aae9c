"""NetworkPolicy rules to conjunctive flows (DESIGN section 7), kept as shared, owner-keyed state.

A `Rule` (one Kubernetes rule after named-port resolution) becomes one OVS conjunction with a
clause per dimension it has: source addresses, target pods, ports. Ingress targets match the
target-port register (reg1), so traffic from the tunnel is covered; egress sources match the
pod's IP. A rule with a single dimension (only its targets: "allow everything to these pods")
gets a catch-all `ip` clause as its second one, since OVS wants two clauses at least.

Clause flows are shared: every rule that needs `nw_src=10.0.0.5` in IngressRule at priority 200
adds its `conjunction()` action to that one flow. `PolicyFlows` keeps, per clause, the set of
conjunction actions, and splits the flows into switch owners by what they match on (a peer
address, a target port, a source IP, a service), so a change rewrites only the owners it touches:

| owner | flows |
| --- | --- |
| `policy/rule/<conj id>` | action flow (priority 190) and two metric flows of one rule |
| `policy/peer/<cidr>` | IngressRule `nw_src=<cidr>` and EgressRule `nw_dst=<cidr>` clauses |
| `policy/ofport/<n>` | IngressRule `reg1=<n>` clause, IngressDefaultRule `reg1=<n>` drop |
| `policy/source/<ip>` | EgressRule `nw_src=<ip>` clause, EgressDefaultRule `nw_src=<ip>` drop |
| `policy/service/<proto>[/<port>[/<mask>]]` | port clauses of both directions |
| `policy/any` | the catch-all `ip` clauses of single-dimension rules |
| `policy/node` | traffic to and from the local node, always allowed (priority 205) |
| `policy/epoch` | the revalidation epoch of both rule tables (priority 209, see `epoch_flows`) |

Conjunction ids are 32-bit, allocated per `RuleKey`, with bit 31 set to the restart round's
parity: the flows of two rounds that coexist during a restart can never complete each other's
conjunctions.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from flows.cookie import Category, Cookie
from flows.fields import (
    CONJ_ID,
    CT_ZONE,
    EGRESS_RULE,
    ETH_TYPE_IP,
    FROM_GATEWAY,
    INGRESS_RULE,
    IP_PROTO_SCTP,
    IP_PROTO_TCP,
    IP_PROTO_UDP,
    REVALIDATION_EPOCH,
    RegField,
)
from flows.flow import Conjunction, Ct, Flow, GotoTable, Load, Match, match
from flows.pipeline import table

# Priorities in the rule tables (the est/rel bypass of the skeleton sits at 210).
EPOCH_PRIORITY = 209
NODE_PRIORITY = 205
CLAUSE_PRIORITY = 200
ACTION_PRIORITY = 190
DROP_PRIORITY = 200
METRIC_PRIORITY = 200

PROTOCOL_NUMBERS: dict[str, int] = {"TCP": IP_PROTO_TCP, "UDP": IP_PROTO_UDP, "SCTP": IP_PROTO_SCTP}
PROTOCOL_NAMES: dict[int, str] = {v: k for k, v in PROTOCOL_NUMBERS.items()}
_DST_FIELD = {IP_PROTO_TCP: "tcp_dst", IP_PROTO_UDP: "udp_dst", IP_PROTO_SCTP: "sctp_dst"}

MAX_CONJ_SERIAL = (1 << 31) - 1
# A conjunction action takes 16 bytes and an OpenFlow message at most 65,535: one clause flow
# can serve about 4,000 rules at once.
MAX_CONJUNCTIONS_PER_FLOW = 4000


class PolicyFlowError(ValueError):
    """Policy state that no OpenFlow flow can express."""


class Direction(Enum):
    INGRESS = "Ingress"
    EGRESS = "Egress"

    # Members are singletons compared by identity: hash them the C way (Enum's own __hash__ is
    # Python code, and rule keys holding a direction are hashed on every update).
    __hash__ = object.__hash__


@dataclass(frozen=True, slots=True)
class _Tables:
    rule: str
    default: str
    metric: str
    label: RegField


_TABLES = {
    Direction.INGRESS: _Tables("IngressRule", "IngressDefaultRule", "IngressMetric", INGRESS_RULE),
    Direction.EGRESS: _Tables("EgressRule", "EgressDefaultRule", "EgressMetric", EGRESS_RULE),
}


# --- rules: what the model hands over --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuleKey:
    """Identity of one rule: its conjunction id is stable for as long as the key exists."""

    policy_uid: str
    direction: Direction
    index: int
    group: str = ""  # named-port resolution group ("" for the numeric ports / no ports)

    def __str__(self) -> str:
        group = f"/{self.group}" if self.group else ""
        return f"{self.policy_uid}/{self.direction.value}/{self.index}{group}"


@dataclass(frozen=True, slots=True, order=True)
class LocalTarget:
    """A local pod a rule applies to: its port (ingress) and its address (egress)."""

    ofport: int
    ip: str


@dataclass(frozen=True, slots=True, order=True)
class IPBlock:
    """An ipBlock peer: `cidr` minus every `excepts` entry."""

    cidr: str
    excepts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Peers:
    """The addresses a rule allows: pod IPs and ipBlocks."""

    ips: frozenset[str] = frozenset()
    blocks: frozenset[IPBlock] = frozenset()


@dataclass(frozen=True, slots=True, order=True)
class PortRange:
    """A protocol (IANA number) and an inclusive port range; `lo is None` means every port."""

    protocol: int
    lo: int | None = None
    hi: int | None = None


def ports_text(ports: frozenset[PortRange] | None) -> str:
    """A rule's ports as people read them: `any`, `none`, or `TCP/80, UDP, TCP/8000-8080` (a
    protocol alone means every port of it), protocols first, then ports."""
    if ports is None:
        return "any"
    out = []
    for port in sorted(ports, key=_port_order):
        name = PROTOCOL_NAMES.get(port.protocol, str(port.protocol))
        if port.lo is None:
            out.append(name)
        elif port.lo == port.hi:
            out.append(f"{name}/{port.lo}")
        else:
            out.append(f"{name}/{port.lo}-{port.hi}")
    return ", ".join(out) or "none"


def peers_text(peers: Peers | None, pods: Sequence[str] | None = None) -> str:
    """A rule's peers as people read them: `any`, `none`, or the pods (`pods`, names as the
    caller has them, else their count) then the ipBlocks with their exceptions."""
    if peers is None:
        return "any"
    if pods is None:
        pods = [f"{len(peers.ips)} pods"] if peers.ips else []
    parts = list(pods)
    for block in sorted(peers.blocks):
        excepts = f" except {', '.join(block.excepts)}" if block.excepts else ""
        parts.append(f"{block.cidr}{excepts}")
    return "; ".join(parts) or "none"


def _port_order(port: PortRange) -> tuple[int, int, int]:
    # `lo`/`hi` None (every port) sort first; PortRange's own order cannot compare None to int.
    return port.protocol, -1 if port.lo is None else port.lo, -1 if port.hi is None else port.hi


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule after resolution. `peers`/`ports` None mean any; an empty set means none."""

    key: RuleKey
    targets: frozenset[LocalTarget]
    peers: Peers | None = None
    ports: frozenset[PortRange] | None = None

    @property
    def direction(self) -> Direction:
        return self.key.direction


# --- normalisation: CIDRs and port masks ----------------------------------------------------

Cidr = tuple[int, int]  # (network address as int, prefix length), network bits only


def parse_cidr(text: str) -> Cidr | None:
    """An IPv4 address or CIDR as (network, prefix); None for IPv6 (the datapath is IPv4).

    A plain dotted quad (a pod's address: every pod ever seen would stay in a cache) is parsed
    directly; anything else goes through `ipaddress`, cached (ipBlocks, node addresses).
    """
    address = _dotted_quad(text)
    if address is not None:
        return address, 32
    return _parse_network(text)


def _dotted_quad(text: str) -> int | None:
    """The address as an int if `text` is a canonical dotted quad (what `ipaddress` accepts:
    four decimal parts of at most 3 digits, no leading zero, each <= 255), else None."""
    parts = text.split(".")
    if len(parts) != 4:
        return None
    value = 0
    for part in parts:
        if not (0 < len(part) <= 3 and part.isdigit() and part.isascii()):
            return None
        if part[0] == "0" and len(part) > 1:
            return None
        octet = int(part)
        if octet > 255:
            return None
        value = value << 8 | octet
    return value


@functools.lru_cache(maxsize=1024)
def _parse_network(text: str) -> Cidr | None:
    net = ipaddress.ip_network(text, strict=False)
    if net.version != 4:
        return None
    return int(net.network_address), net.prefixlen


def cidr_text(cidr: Cidr) -> str:
    address = str(ipaddress.IPv4Address(cidr[0]))
    return address if cidr[1] == 32 else f"{address}/{cidr[1]}"


@functools.lru_cache(maxsize=4096)
def block_cidrs(block: IPBlock) -> tuple[Cidr, ...]:
    """An ipBlock minus its excepts, as the fewest CIDRs covering exactly what remains."""
    outer = ipaddress.ip_network(block.cidr, strict=False)
    if outer.version != 4:
        return ()
    pieces: list[ipaddress.IPv4Network] = [outer]
    for text in block.excepts:
        hole = ipaddress.ip_network(text, strict=False)
        if hole.version == 4:
            pieces = [rest for piece in pieces for rest in _subtract(piece, hole)]
    return tuple(
        (int(n.network_address), n.prefixlen) for n in ipaddress.collapse_addresses(pieces)
    )


def _subtract(
    piece: ipaddress.IPv4Network, hole: ipaddress.IPv4Network
) -> Iterable[ipaddress.IPv4Network]:
    if hole.subnet_of(piece):
        return piece.address_exclude(hole)
    if piece.subnet_of(hole):
        return ()
    return (piece,)


def port_masks(lo: int, hi: int) -> list[tuple[int, int]]:
    """An inclusive port range as (value, mask) pairs: the aligned power-of-two blocks."""
    out: list[tuple[int, int]] = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << 16
        while size > hi - lo + 1:
            size >>= 1
        out.append((lo, 0xFFFF & ~(size - 1)))
        lo += size
    return out


# --- clauses -------------------------------------------------------------------------------

# (table, kind, value): kind is "peer" (value Cidr), "target" (ofport), "source" (IP as int),
# "service" ((protocol, value, mask) with value/mask None for every port) or "any" (None).
ClauseKey = tuple[str, str, Any]
Clause = tuple[int, int]  # (clause number, clause count)


@functools.lru_cache(maxsize=256)
def _peer_keys(tbl: str, peers: Peers) -> frozenset[ClauseKey]:
    """Cached: rules of many policies often allow the same peers (a shared selector), compiled
    one after another. Small: a peer set may hold thousands of addresses, and every change of
    its members makes a new one (old ones are no use once replaced)."""
    keys: set[ClauseKey] = set()
    for ip in peers.ips:
        cidr = parse_cidr(ip)
        if cidr is not None:
            keys.add((tbl, "peer", cidr))
    for block in peers.blocks:
        keys.update((tbl, "peer", cidr) for cidr in block_cidrs(block))
    return frozenset(keys)


def _service_keys(tbl: str, ports: frozenset[PortRange]) -> frozenset[ClauseKey]:
    keys: set[ClauseKey] = set()
    for port in ports:
        if port.lo is None or port.hi is None:
            keys.add((tbl, "service", (port.protocol, None, None)))
            continue
        for value, mask in port_masks(port.lo, port.hi):
            keys.add((tbl, "service", (port.protocol, value, mask)))
    return frozenset(keys)


def _target_keys(
    tbl: str, direction: Direction, targets: frozenset[LocalTarget]
) -> frozenset[ClauseKey]:
    if direction is Direction.INGRESS:
        return frozenset((tbl, "target", t.ofport) for t in targets)
    keys: set[ClauseKey] = set()
    for t in targets:
        cidr = parse_cidr(t.ip)
        if cidr is not None:
            keys.add((tbl, "source", cidr[0]))
    return frozenset(keys)


def _normalise_any(tbl: str, keys: frozenset[ClauseKey]) -> frozenset[ClauseKey] | None:
    """A peer set covering 0.0.0.0/0 is no constraint at all: the dimension goes away."""
    if (tbl, "peer", (0, 0)) in keys:
        return None
    return keys


def rule_clauses(rule: Rule) -> list[frozenset[ClauseKey]]:
    """The rule's clauses, in order from, to, service (only those it has); [] if it can
    never match (a dimension with no value). A lone dimension gets the catch-all clause."""
    tbl = _TABLES[rule.direction].rule
    targets = _target_keys(tbl, rule.direction, rule.targets)
    peers = None if rule.peers is None else _normalise_any(tbl, _peer_keys(tbl, rule.peers))
    service = None if rule.ports is None else _service_keys(tbl, rule.ports)
    if rule.direction is Direction.INGRESS:
        dims = [peers, targets, service]
    else:
        dims = [targets, peers, service]
    present = [d for d in dims if d is not None]
    if any(not d for d in present):
        return []
    if len(present) == 1:
        present.append(frozenset({(tbl, "any", None)}))
    return present


def rule_contributions(rule: Rule) -> dict[ClauseKey, Clause]:
    """Each clause flow key the rule needs, with its (clause number, clause count)."""
    clauses = rule_clauses(rule)
    n = len(clauses)
    return {key: (i, n) for i, keys in enumerate(clauses, start=1) for key in keys}


def clause_match(key: ClauseKey) -> Match:
    """The OVS match of one clause key (`PolicyFlows` keeps those of its live keys)."""
    tbl, kind, value = key
    if kind == "target":
        return match(eth_type=ETH_TYPE_IP, reg1=value)
    if kind == "source":
        return match(eth_type=ETH_TYPE_IP, ipv4_src=value)
    if kind == "peer":
        net, prefix = value
        address = (net, _prefix_mask(prefix))
        if tbl == "IngressRule":
            return match(eth_type=ETH_TYPE_IP, ipv4_src=address)
        return match(eth_type=ETH_TYPE_IP, ipv4_dst=address)
    if kind == "service":
        proto, port, mask = value
        if port is None:
            return match(eth_type=ETH_TYPE_IP, ip_proto=proto)
        return match(eth_type=ETH_TYPE_IP, ip_proto=proto, **{_DST_FIELD[proto]: (port, mask)})
    return match(eth_type=ETH_TYPE_IP)


def _prefix_mask(prefix: int) -> int:
    return (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF if prefix else 0


# --- owners ----------------------------------------------------------------------------------


def clause_owner(key: ClauseKey) -> str:
    """The switch owner of a clause (or drop) flow: a function of what it matches on."""
    _tbl, kind, value = key
    if kind == "peer":
        return f"policy/peer/{cidr_text(value)}"
    if kind == "target":
        return f"policy/ofport/{value}"
    if kind == "source":
        return f"policy/source/{ipaddress.IPv4Address(value)}"
    if kind == "service":
        proto, port, mask = value
        name = f"policy/service/{PROTOCOL_NAMES.get(proto, proto)}".lower()
        if port is None:
            return name
        return f"{name}/{port}" if mask == 0xFFFF else f"{name}/{port}/{mask:#x}"
    return "policy/any"


def rule_owner(conj_id: int) -> str:
    return f"policy/rule/{conj_id}"


NODE_OWNER = "policy/node"
EPOCH_OWNER = "policy/epoch"

# The revalidation epoch: one bit of REVALIDATION_EPOCH (ct_mark[16..31]) per generation, in
# turn. Nothing sets those bits (the pipeline writes CT_SOURCE, ct_mark[0..3], only; a related
# connection inherits its master's mark), so an epoch flow never matches a packet.
EPOCH_LO = REVALIDATION_EPOCH.lo
EPOCH_BITS = REVALIDATION_EPOCH.width


def epoch_flows(generation: int, round_: int) -> list[Flow]:
    """The two flows of one revalidation epoch: in EgressRule and IngressRule, below the
    est/rel bypass (210) and above every rule flow, `ip,ct_mark=B/B actions=drop` where B is
    the generation's bit.

    They never match; they are there to be looked at. Every new connection's lookup in a rule
    table passes them (an established one stops at 210 first), so OVS puts bit B into the mask
    of every new-connection megaflow. Replacing them in the same bundle as a policy change
    (`controller.switch.Epoch`) changes B, and the revalidators then find each such megaflow's
    new translation more specific than the megaflow and delete it (by its ufid) instead of
    modifying it in place. The userspace datapath finds the megaflow to modify by a classifier
    lookup of its masked key, which can hit another, overlapping megaflow and leave this one
    with its old actions (docs/networkpolicy.md, "A stale datapath flow after a policy change").
    """
    bit = 1 << (EPOCH_LO + generation % EPOCH_BITS)
    # Pipeline category: they enforce nothing (a dump of policy flows shows only policies).
    cookie = Cookie(round_, Category.PIPELINE, 0).value
    return [
        table(tbl).flow(EPOCH_PRIORITY, match(eth_type=ETH_TYPE_IP, ct_mark=(bit, bit)), [], cookie)
        for tbl in ("EgressRule", "IngressRule")
    ]


def _owner_keys(key: ClauseKey) -> list[ClauseKey]:
    """Every key that shares `key`'s owner (the other direction, the drop flow)."""
    _tbl, kind, value = key
    if kind == "target":
        return [("IngressRule", kind, value), ("IngressDefaultRule", kind, value)]
    if kind == "source":
        return [("EgressRule", kind, value), ("EgressDefaultRule", kind, value)]
    return [("IngressRule", kind, value), ("EgressRule", kind, value)]


# --- conjunction ids -------------------------------------------------------------------------


class ConjIdAllocator:
    """Conjunction ids per RuleKey: 31 bits of serial, bit 31 the round's parity.

    Released serials are reused oldest first, and only `reuse_delay` seconds after release, so
    that counters and conntrack labels of a removed rule are not pinned on a new one at once.
    Time is passed in (`now`), never read.
    """

    def __init__(self, round_: int, reuse_delay: float = 5.0) -> None:
        self.parity = (round_ & 1) << 31
        self.reuse_delay = reuse_delay
        self._ids: dict[RuleKey, int] = {}
        self._next = 1
        self._released: deque[tuple[float, int]] = deque()

    def __len__(self) -> int:
        return len(self._ids)

    def get(self, key: RuleKey) -> int | None:
        return self._ids.get(key)

    def allocate(self, key: RuleKey, now: float) -> int:
        conj_id = self._ids.get(key)
        if conj_id is None:
            conj_id = self.parity | self._serial(now)
            self._ids[key] = conj_id
        return conj_id

    def release(self, key: RuleKey, now: float) -> None:
        conj_id = self._ids.pop(key, None)
        if conj_id is not None:
            self._released.append((now, conj_id & MAX_CONJ_SERIAL))

    def _serial(self, now: float) -> int:
        if self._released and now - self._released[0][0] >= self.reuse_delay:
            return self._released.popleft()[1]
        if self._next > MAX_CONJ_SERIAL:
            if not self._released:
                raise RuntimeError("conjunction ids exhausted")
            return self._released.popleft()[1]
        serial = self._next
        self._next += 1
        return serial


# --- the shared flow state -------------------------------------------------------------------


@dataclass(slots=True)
class _Realised:
    conj_id: int
    rule: Rule
    clauses: list[frozenset[ClauseKey]]  # [] when the rule can never match


class PolicyFlows:
    """Every policy's rules as conjunctive flows, shared between rules and split into owners.

    `update_policy`/`remove_policy`/`set_node_addresses` change the state and return the names
    of the owners whose flows changed; `owner_flows` gives an owner's complete flow list, ready
    for `Switch.replace_many`. Pure: no I/O, time passed in.
    """

    def __init__(self, round_: int, reuse_delay: float = 5.0) -> None:
        self.round = round_
        self.ids = ConjIdAllocator(round_, reuse_delay)
        self._shared_cookie = Cookie(round_, Category.POLICY, 0).value
        self._rules: dict[RuleKey, _Realised] = {}
        self._by_conj: dict[int, RuleKey] = {}
        self._by_policy: dict[str, set[RuleKey]] = {}
        self._contexts: dict[ClauseKey, dict[int, Clause]] = {}
        self._isolation: dict[ClauseKey, set[str]] = {}
        self._isolated_by_policy: dict[str, set[ClauseKey]] = {}
        self._isolated_input: dict[str, Mapping[Direction, Iterable[LocalTarget]]] = {}
        self._owner_key: dict[str, ClauseKey] = {}
        # The match of every live clause key, dropped with the key: a pod's keys (its address,
        # its port) go when it goes, where a global cache would keep every pod ever seen.
        self._matches: dict[ClauseKey, Match] = {}
        self._node_addresses: tuple[str, ...] = ()
        self._gateway: str | None = None

    # --- updates ----------------------------------------------------------------------------

    def update_policy(
        self,
        policy: str,
        rules: Iterable[Rule],
        isolated: Mapping[Direction, Iterable[LocalTarget]],
        now: float,
    ) -> set[str]:
        """Make `policy`'s rules and isolated pods exactly these; returns changed owners."""
        changed: set[str] = set()
        wanted = {rule.key: rule for rule in rules}
        for key in self._by_policy.get(policy, set()) - wanted.keys():
            self._remove_rule(key, now, changed)
        for key, rule in wanted.items():
            self._set_rule(key, rule, now, changed)
        if wanted:
            self._by_policy[policy] = set(wanted)
        else:
            self._by_policy.pop(policy, None)
        if self._isolated_input.get(policy) != isolated:
            self._set_isolation(policy, _drop_keys(isolated), changed)
            self._isolated_input[policy] = isolated
        if not isolated:
            self._isolated_input.pop(policy, None)
        return changed

    def remove_policy(self, policy: str, now: float) -> set[str]:
        return self.update_policy(policy, (), {}, now)

    def set_node_addresses(self, gateway: str | None, addresses: Iterable[str]) -> set[str]:
        """The local node's gateway IP and its own addresses: traffic with them is allowed."""
        new = tuple(sorted(set(addresses) | ({gateway} if gateway else set())))
        if new == self._node_addresses and gateway == self._gateway:
            return set()
        self._node_addresses, self._gateway = new, gateway
        return {NODE_OWNER}

    def _set_rule(self, key: RuleKey, rule: Rule, now: float, changed: set[str]) -> None:
        old = self._rules.get(key)
        if old is not None and (old.rule is rule or old.rule == rule):
            return
        conj_id = old.conj_id if old is not None else self.ids.allocate(key, now)
        clauses = rule_clauses(rule)
        previous = old.clauses if old is not None else []
        n = len(clauses)
        # Same clause layout: only the keys that moved in or out of a clause change (a peer
        # joining a 1,000-peer rule is one key). Withdraw everything first: a key may move
        # from one clause number to another when the layout changes.
        same = len(previous) == n
        for i, before in enumerate(previous):
            for clause_key in before - clauses[i] if same else before:
                self._withdraw(clause_key, conj_id, changed)
        for i, after in enumerate(clauses):
            for clause_key in after - previous[i] if same else after:
                self._contexts.setdefault(clause_key, {})[conj_id] = (i + 1, n)
                self._touch(clause_key, changed)
        if old is None or bool(previous) != bool(clauses):
            changed.add(rule_owner(conj_id))
        self._rules[key] = _Realised(conj_id, rule, clauses)
        self._by_conj[conj_id] = key

    def _remove_rule(self, key: RuleKey, now: float, changed: set[str]) -> None:
        old = self._rules.pop(key)
        for clause_key in set().union(*old.clauses):
            self._withdraw(clause_key, old.conj_id, changed)
        del self._by_conj[old.conj_id]
        self.ids.release(key, now)
        changed.add(rule_owner(old.conj_id))

    def _withdraw(self, clause_key: ClauseKey, conj_id: int, changed: set[str]) -> None:
        actions = self._contexts.get(clause_key)
        if actions is None or actions.pop(conj_id, None) is None:
            return
        if not actions:
            del self._contexts[clause_key]
            self._matches.pop(clause_key, None)
        self._touch(clause_key, changed)

    def _set_isolation(self, policy: str, keys: set[ClauseKey], changed: set[str]) -> None:
        old = self._isolated_by_policy.get(policy, set())
        for key in old - keys:
            holders = self._isolation[key]
            holders.discard(policy)
            if not holders:
                del self._isolation[key]
                self._matches.pop(key, None)
                self._touch(key, changed)
        for key in keys - old:
            holders = self._isolation.setdefault(key, set())
            if not holders:
                self._touch(key, changed)
            holders.add(policy)
        if keys:
            self._isolated_by_policy[policy] = keys
        else:
            self._isolated_by_policy.pop(policy, None)

    def _touch(self, key: ClauseKey, changed: set[str]) -> None:
        owner = clause_owner(key)
        self._owner_key[owner] = key
        changed.add(owner)

    # --- reads ------------------------------------------------------------------------------

    def owner_flows(self, owner: str) -> list[Flow]:
        """The complete flow list of one owner (empty once it holds nothing)."""
        if owner == NODE_OWNER:
            return self._node_flows()
        if owner.startswith("policy/rule/"):
            return self._rule_flows(int(owner.rsplit("/", 1)[1]))
        key = self._owner_key.get(owner)
        if key is None:
            return []
        flows = [f for k in _owner_keys(key) if (f := self._clause_flow(k)) is not None]
        if not flows:
            del self._owner_key[owner]
        return flows

    def owners(self) -> set[str]:
        """Every owner holding flows now."""
        live = {o for o in list(self._owner_key) if self.owner_flows(o)}
        live.update(rule_owner(r.conj_id) for r in self._rules.values() if r.clauses)
        if self._node_addresses:
            live.add(NODE_OWNER)
        return live

    def conj_id(self, key: RuleKey) -> int | None:
        realised = self._rules.get(key)
        return realised.conj_id if realised is not None else None

    def rule(self, conj_id: int) -> Rule | None:
        key = self._by_conj.get(conj_id)
        return self._rules[key].rule if key is not None else None

    def live(self, key: RuleKey) -> bool:
        """True when the rule can match something (it has flows)."""
        realised = self._rules.get(key)
        return realised is not None and bool(realised.clauses)

    def contexts(self) -> Mapping[ClauseKey, Mapping[int, Clause]]:
        """Every clause key with its conjunction actions (conj id -> clause): read-only."""
        return self._contexts

    def isolated_keys(self) -> set[ClauseKey]:
        """The drop keys in force (IngressDefaultRule target, EgressDefaultRule source)."""
        return set(self._isolation)

    def all_flows(self) -> list[Flow]:
        return [f for owner in sorted(self.owners()) for f in self.owner_flows(owner)]

    def _clause_flow(self, key: ClauseKey) -> Flow | None:
        tbl = key[0]
        if tbl in ("IngressDefaultRule", "EgressDefaultRule"):
            if key not in self._isolation:
                return None
            return table(tbl).flow(DROP_PRIORITY, self._match(key), (), self._shared_cookie)
        actions = self._contexts.get(key)
        if not actions:
            return None
        if len(actions) > MAX_CONJUNCTIONS_PER_FLOW:
            raise PolicyFlowError(
                f"{len(actions)} rules share the clause {tbl} {key[1]}={key[2]}; one flow holds "
                f"at most {MAX_CONJUNCTIONS_PER_FLOW} conjunctions"
            )
        conjunctions = [_conjunction(c, i, n) for c, (i, n) in sorted(actions.items())]
        return table(tbl).flow(CLAUSE_PRIORITY, self._match(key), conjunctions, self._shared_cookie)

    def _match(self, key: ClauseKey) -> Match:
        found = self._matches.get(key)
        if found is None:
            found = self._matches[key] = clause_match(key)
        return found

    def _rule_flows(self, conj_id: int) -> list[Flow]:
        key = self._by_conj.get(conj_id)
        if key is None or not self._rules[key].clauses:
            return []
        return rule_action_flows(key.direction, conj_id, self.round)

    def _node_flows(self) -> list[Flow]:
        return node_flows(self._gateway, self._node_addresses, self._shared_cookie)


# Shared values: a flow carrying 1,000 rules is rebuilt without making 1,000 new actions.
_conjunction = functools.lru_cache(maxsize=1 << 17)(Conjunction)


def _drop_keys(isolated: Mapping[Direction, Iterable[LocalTarget]]) -> set[ClauseKey]:
    keys: set[ClauseKey] = {
        ("IngressDefaultRule", "target", t.ofport) for t in isolated.get(Direction.INGRESS, ())
    }
    for t in isolated.get(Direction.EGRESS, ()):
        cidr = parse_cidr(t.ip)
        if cidr is not None:
            keys.add(("EgressDefaultRule", "source", cidr[0]))
    return keys


# --- per-rule and node flows -----------------------------------------------------------------


def rule_action_flows(direction: Direction, conj_id: int, round_: int) -> list[Flow]:
    """The action flow of one conjunction and its two metric flows (new, established)."""
    tables = _TABLES[direction]
    cookie = Cookie(round_, Category.POLICY, conj_id).value
    label = tables.label
    metric = table(tables.metric)
    assert metric.next is not None
    label_match = (conj_id << label.lo, label.mask)
    return [
        table(tables.rule).flow(
            ACTION_PRIORITY,
            match(conj_id=conj_id, eth_type=ETH_TYPE_IP),
            [
                Load(CONJ_ID, conj_id),
                Ct(CT_ZONE, table=tables.metric, commit=True, exec=(Load(label, conj_id),)),
            ],
            cookie,
        ),
        *(
            metric.flow(
                METRIC_PRIORITY,
                match(eth_type=ETH_TYPE_IP, ct_state=state, ct_label=label_match),
                [GotoTable(metric.next)],
                cookie,
            )
            for state in ("+new+trk", "-new+trk")
        ),
    ]


def node_flows(gateway: str | None, addresses: Iterable[str], cookie: int) -> list[Flow]:
    """Traffic between local pods and their node is always allowed (Kubernetes semantics):
    from the gateway (the node's own traffic enters there) and to any of the node's addresses."""
    flows: list[Flow] = []
    if gateway:
        flows.append(
            table("IngressRule").flow(
                NODE_PRIORITY,
                match(FROM_GATEWAY, eth_type=ETH_TYPE_IP, ipv4_src=gateway),
                [GotoTable("IngressMetric")],
                cookie,
            )
        )
    flows.extend(
        table("EgressRule").flow(
            NODE_PRIORITY,
            match(eth_type=ETH_TYPE_IP, ipv4_dst=address),
            [GotoTable("EgressMetric")],
            cookie,
        )
        for address in sorted(set(addresses))
        if parse_cidr(address) is not None
    )
    return flows
