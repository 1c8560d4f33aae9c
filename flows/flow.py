"""Flow values: match fields, actions and the immutable `Flow` itself.

Values are plain ints inside (IPv4 addresses and MACs too), so flows hash, compare and encode
cheaply; strings are parsed once, when a flow is built. A `Flow` is built through its table in
`flows.pipeline`, which checks it against the table's declaration.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from flows.fields import REGISTER_WIDTHS, RegField, RegMark


class Kind(Enum):
    INT = "int"
    IPV4 = "ipv4"
    MAC = "mac"
    CT_STATE = "ct_state"


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """A match/set field: its OXM name (os-ken's), its ovs-ofctl name and its NXM name."""

    name: str
    ofctl: str
    kind: Kind
    width: int  # bytes on the wire
    nxm: str = ""  # name in move:/load: syntax


def _spec(name: str, ofctl: str, kind: Kind, width: int, nxm: str = "") -> FieldSpec:
    return FieldSpec(name, ofctl, kind, width, nxm)


FIELD_SPECS: dict[str, FieldSpec] = {
    s.name: s
    for s in (
        _spec("in_port", "in_port", Kind.INT, 4, "NXM_OF_IN_PORT"),
        _spec("eth_dst", "dl_dst", Kind.MAC, 6, "NXM_OF_ETH_DST"),
        _spec("eth_src", "dl_src", Kind.MAC, 6, "NXM_OF_ETH_SRC"),
        _spec("eth_type", "dl_type", Kind.INT, 2),
        _spec("ip_proto", "nw_proto", Kind.INT, 1),
        _spec("ipv4_src", "nw_src", Kind.IPV4, 4, "NXM_OF_IP_SRC"),
        _spec("ipv4_dst", "nw_dst", Kind.IPV4, 4, "NXM_OF_IP_DST"),
        _spec("tcp_src", "tp_src", Kind.INT, 2),
        _spec("tcp_dst", "tp_dst", Kind.INT, 2),
        _spec("udp_src", "tp_src", Kind.INT, 2),
        _spec("udp_dst", "tp_dst", Kind.INT, 2),
        _spec("sctp_src", "tp_src", Kind.INT, 2),
        _spec("sctp_dst", "tp_dst", Kind.INT, 2),
        _spec("icmpv4_type", "icmp_type", Kind.INT, 1),
        _spec("arp_op", "arp_op", Kind.INT, 2, "NXM_OF_ARP_OP"),
        _spec("arp_spa", "arp_spa", Kind.IPV4, 4, "NXM_OF_ARP_SPA"),
        _spec("arp_tpa", "arp_tpa", Kind.IPV4, 4, "NXM_OF_ARP_TPA"),
        _spec("arp_sha", "arp_sha", Kind.MAC, 6, "NXM_NX_ARP_SHA"),
        _spec("arp_tha", "arp_tha", Kind.MAC, 6, "NXM_NX_ARP_THA"),
        _spec("tun_ipv4_dst", "tun_dst", Kind.IPV4, 4, "NXM_NX_TUN_IPV4_DST"),
        _spec("tun_ipv4_src", "tun_src", Kind.IPV4, 4, "NXM_NX_TUN_IPV4_SRC"),
        _spec("conj_id", "conj_id", Kind.INT, 4),
        _spec("ct_state", "ct_state", Kind.CT_STATE, 4),
        _spec("ct_zone", "ct_zone", Kind.INT, 2),
        _spec("ct_mark", "ct_mark", Kind.INT, 4, "NXM_NX_CT_MARK"),
        _spec("ct_label", "ct_label", Kind.INT, 16, "NXM_NX_CT_LABEL"),
        *(_spec(f"reg{i}", f"reg{i}", Kind.INT, 4, f"NXM_NX_REG{i}") for i in range(16)),
    )
}

# Conntrack state flags in bit order, as ovs-ofctl prints them.
CT_STATE_FLAGS: tuple[str, ...] = ("new", "est", "rel", "rpl", "inv", "trk", "snat", "dnat")


def ct_state(text: str) -> tuple[int, int]:
    """Parse "+new+trk" or "-new+est" into (value, mask)."""
    value = mask = 0
    for sign, name in _split_flags(text):
        bit = 1 << CT_STATE_FLAGS.index(name)
        mask |= bit
        if sign == "+":
            value |= bit
    return value, mask


def _split_flags(text: str) -> list[tuple[str, str]]:
    parts: list[tuple[str, str]] = []
    i = 0
    while i < len(text):
        sign = text[i]
        j = i + 1
        while j < len(text) and text[j] not in "+-":
            j += 1
        name = text[i + 1 : j]
        if sign not in "+-" or name not in CT_STATE_FLAGS:
            raise ValueError(f"bad ct_state flags {text!r}")
        parts.append((sign, name))
        i = j
    return parts


def ipv4_to_int(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def int_to_ipv4(value: int) -> str:
    return str(ipaddress.IPv4Address(value))


def mac_to_int(text: str) -> int:
    return int(text.replace(":", ""), 16)


def int_to_mac(value: int) -> str:
    raw = f"{value:012x}"
    return ":".join(raw[i : i + 2] for i in range(0, 12, 2))


def _prefix_mask(prefix: int) -> int:
    return (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF if prefix else 0


MatchValue = int | str | tuple[int | str, int | str]


def _parse_value(spec: FieldSpec, raw: MatchValue) -> tuple[int, int | None]:
    """A user value (int, "10.0.0.0/24", (value, mask), "+new+trk") -> (value, mask or None)."""
    full = (1 << (spec.width * 8)) - 1
    if spec.kind is Kind.CT_STATE and isinstance(raw, str):
        value, mask = ct_state(raw)
    elif isinstance(raw, tuple):
        value, mask = _scalar(spec, raw[0]), _scalar(spec, raw[1])
    elif spec.kind is Kind.IPV4 and isinstance(raw, str) and "/" in raw:
        addr, prefix = raw.split("/")
        value, mask = ipv4_to_int(addr), _prefix_mask(int(prefix))
    else:
        value, mask = _scalar(spec, raw), full
    if value & ~mask & full:
        raise ValueError(f"{spec.name}: value {value:#x} has bits outside mask {mask:#x}")
    return value, (None if mask == full else mask)


def _scalar(spec: FieldSpec, raw: int | str) -> int:
    if isinstance(raw, int):
        return raw
    if spec.kind is Kind.IPV4:
        return ipv4_to_int(raw)
    if spec.kind is Kind.MAC:
        return mac_to_int(raw)
    return int(raw, 0)


MatchEntry = tuple[str, int, int | None]


@dataclass(frozen=True, slots=True)
class Match:
    """A canonical set of (field, value, mask) entries; mask None means exact.

    Canonical means equal OVS matches are equal values: an address and its /32 are one entry,
    a zero-mask entry is dropped, and entries are kept in one fixed order.
    """

    entries: tuple[MatchEntry, ...] = ()

    def get(self, name: str) -> tuple[int, int | None] | None:
        for entry_name, value, mask in self.entries:
            if entry_name == name:
                return value, mask
        return None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e[0] for e in self.entries)


def match(*marks: RegMark, **fields: MatchValue) -> Match:
    """Build a Match from register marks and named fields (os-ken/OXM names)."""
    values: dict[str, tuple[int, int | None]] = {}
    for name, raw in fields.items():
        spec = FIELD_SPECS.get(name)
        if spec is None:
            raise ValueError(f"unknown match field {name!r}")
        values[name] = _parse_value(spec, raw)
    for mark in marks:
        _merge_mark(values, mark)
    entries = tuple(
        (name, value, mask) for name, (value, mask) in values.items() if mask != 0 or mask is None
    )
    return Match(tuple(sorted(entries, key=lambda e: MATCH_ORDER[e[0]])))


def _merge_mark(values: dict[str, tuple[int, int | None]], mark: RegMark) -> None:
    reg = mark.field.reg
    full = (1 << REGISTER_WIDTHS[reg]) - 1
    old_value, old_mask = values.get(reg, (0, 0))
    old_mask = full if old_mask is None else old_mask
    if old_mask & mark.field.mask:
        raise ValueError(f"{mark.field.name} matched twice")
    mask = old_mask | mark.field.mask
    values[reg] = (old_value | mark.shifted, None if mask == full else mask)


def _oxm_sort_key(name: str) -> int:
    """os-ken orders OXM entries by (class << 7 | field); the encoder and os-ken must agree."""
    nxm1 = {"tun_ipv4_src": 31, "tun_ipv4_dst": 32, "conj_id": 37, "ct_state": 105}
    nxm1 |= {"ct_zone": 106, "ct_mark": 107, "ct_label": 108}
    nxm1 |= {f"reg{i}": i for i in range(16)}
    basic = {"in_port": 0, "eth_dst": 3, "eth_src": 4, "eth_type": 5, "ip_proto": 10}
    basic |= {"ipv4_src": 11, "ipv4_dst": 12, "tcp_src": 13, "tcp_dst": 14, "udp_src": 15}
    basic |= {"udp_dst": 16, "sctp_src": 17, "sctp_dst": 18, "icmpv4_type": 19, "arp_op": 21}
    basic |= {"arp_spa": 22, "arp_tpa": 23, "arp_sha": 24, "arp_tha": 25}
    if name in nxm1:
        return (1 << 7) | nxm1[name]
    return (0x8000 << 7) | basic[name]


MATCH_ORDER: dict[str, int] = {name: _oxm_sort_key(name) for name in FIELD_SPECS}


# --- actions ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Output:
    """output:PORT (special ports by their OFPP_ numbers)."""

    port: int


@dataclass(frozen=True, slots=True)
class OutputReg:
    """output:NXM_NX_REGn[]: send to the port held in a register field."""

    field: RegField


@dataclass(frozen=True, slots=True)
class Load:
    """Load a value into a register field (set_field:V/M->reg)."""

    field: RegField
    value: int

    @classmethod
    def mark(cls, mark: RegMark) -> Load:
        return cls(mark.field, mark.value)


@dataclass(frozen=True, slots=True)
class SetField:
    """set_field:VALUE->FIELD for a packet header field (eth_dst, tun_dst, arp_op...)."""

    name: str
    value: int

    @classmethod
    def of(cls, name: str, raw: int | str) -> SetField:
        spec = FIELD_SPECS[name]
        return cls(name, _scalar(spec, raw))


@dataclass(frozen=True, slots=True)
class Move:
    """move:SRC[a..b]->DST[c..d]: copy bits between fields (n_bits = 0 means whole fields)."""

    src: str
    dst: str
    src_ofs: int = 0
    dst_ofs: int = 0
    n_bits: int = 0

    @property
    def bits(self) -> int:
        if self.n_bits:
            return self.n_bits
        return FIELD_SPECS[self.src].width * 8


@dataclass(frozen=True, slots=True)
class Ct:
    """ct(...): send through conntrack, optionally commit with exec actions, then to a table."""

    zone: int
    table: str | None = None
    commit: bool = False
    nat: bool = False
    exec: tuple[Load | Move, ...] = ()


@dataclass(frozen=True, slots=True)
class Conjunction:
    """conjunction(ID, CLAUSE/N): this flow satisfies clause CLAUSE (1-based) of N."""

    conj_id: int
    clause: int
    n_clauses: int


@dataclass(frozen=True, slots=True)
class DecTtl:
    """dec_ttl."""


@dataclass(frozen=True, slots=True)
class GotoTable:
    """goto_table:NAME; always the last action of a flow."""

    table: str


Action = Output | OutputReg | Load | SetField | Move | Ct | Conjunction | DecTtl | GotoTable

# Flow identity in OVS: two flows with the same key are the same OVS flow.
FlowKey = tuple[str, int, Match]


@dataclass(frozen=True, slots=True)
class Flow:
    """One OpenFlow flow. Build it with `Table.flow`, which validates it against the pipeline."""

    table: str
    table_id: int
    priority: int
    match: Match
    actions: tuple[Action, ...]
    cookie: int = 0
    # Encoded FlowMod body, filled in once by flows.encode and reused for diffs and replays.
    wire: list[bytes] = field(default_factory=list, compare=False, hash=False, repr=False)

    @property
    def key(self) -> FlowKey:
        return (self.table, self.priority, self.match)


def goto_target(actions: Iterable[Action]) -> str | None:
    for action in actions:
        if isinstance(action, GotoTable):
            return action.table
    return None
