"""Rendering flows to the exact text `ovs-ofctl -O OpenFlow15 --names --no-stats dump-flows` prints.

The same text serves goldens, logs, error messages and `plumbctl flows`, and it can be pasted
back into `ovs-ofctl add-flow`. Field order and number formats follow OVS's own printer; the OVS
test tier compares this text with real dumps.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from flows.fields import REGISTER_WIDTHS, SPECIAL_PORT_NAMES, RegField
from flows.flow import (
    CT_STATE_FLAGS,
    FIELD_SPECS,
    Action,
    Conjunction,
    Ct,
    DecTtl,
    Flow,
    GotoTable,
    Kind,
    Load,
    Match,
    Move,
    Output,
    OutputReg,
    SetField,
    int_to_ipv4,
    int_to_mac,
)

PortNames = Mapping[int, str]

_PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 132: "sctp"}
_DEFAULT_PRIORITY = 32768

# The order in which OVS prints match fields (lib/match.c), after the protocol shorthand.
_PRE_PROTO = ("conj_id", "ct_state", "ct_zone", "ct_mark", "ct_label")
_POST_PROTO = (
    *(f"reg{i}" for i in range(16)),
    "tun_ipv4_src",
    "tun_ipv4_dst",
    "in_port",
    "eth_src",
    "eth_dst",
    "eth_type",
    "ipv4_src",
    "arp_spa",
    "ipv4_dst",
    "arp_tpa",
    "ip_proto",
    "arp_op",
    "arp_sha",
    "arp_tha",
    "tcp_src",
    "udp_src",
    "sctp_src",
    "tcp_dst",
    "udp_dst",
    "sctp_dst",
    "icmpv4_type",
)
# set_field prints some fields by their OXM-style names.
_SET_FIELD_NAMES = {"eth_src": "eth_src", "eth_dst": "eth_dst"}
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_.]+$")


def render_flow(flow: Flow, ports: PortNames | None = None) -> str:
    """One flow as ovs-ofctl prints it (with the leading space)."""
    ports = ports or {}
    head = f" cookie={flow.cookie:#x}," if flow.cookie else ""
    head += f" table={flow.table}, "
    parts = [] if flow.priority == _DEFAULT_PRIORITY else [f"priority={flow.priority}"]
    parts.extend(render_match(flow.match, ports))
    return f"{head}{','.join(parts)} actions={render_actions(flow.actions, ports)}"


def render_flows(flows: Iterable[Flow], ports: PortNames | None = None) -> list[str]:
    """Flows as ovs-ofctl prints them, in dump order (table, then descending priority)."""
    ordered = sorted(flows, key=lambda f: (f.table_id, -f.priority))
    return [render_flow(f, ports) for f in ordered]


def render_match(match: Match, ports: PortNames) -> list[str]:
    values = {name: (value, mask) for name, value, mask in match.entries}
    proto = _protocol(values)
    if proto:
        values.pop("eth_type", None)
        if proto not in ("ip", "arp"):
            values.pop("ip_proto", None)
    out = [_field_text(n, *values[n], ports) for n in _PRE_PROTO if n in values]
    if proto:
        out.append(proto)
    out.extend(_field_text(n, *values[n], ports) for n in _POST_PROTO if n in values)
    return out


def _protocol(values: dict[str, tuple[int, int | None]]) -> str:
    eth_type = values.get("eth_type")
    if eth_type is None or eth_type[1] is not None:
        return ""
    if eth_type[0] == 0x0806:
        return "arp"
    if eth_type[0] != 0x0800:
        return ""
    proto = values.get("ip_proto")
    if proto is None:
        return "ip"
    return _PROTO_NAMES.get(proto[0], "ip")


def _field_text(name: str, value: int, mask: int | None, ports: PortNames) -> str:
    spec = FIELD_SPECS[name]
    if name == "in_port":
        return f"in_port={port_text(value, ports)}"
    if spec.kind is Kind.CT_STATE:
        return f"ct_state={_ct_state_text(value, mask)}"
    return f"{spec.ofctl}={_value_text(name, value, mask)}"


def _value_text(name: str, value: int, mask: int | None) -> str:
    spec = FIELD_SPECS[name]
    if spec.kind is Kind.IPV4:
        return _ipv4_text(value, mask)
    if spec.kind is Kind.MAC:
        text = int_to_mac(value)
        return text if mask is None else f"{text}/{int_to_mac(mask)}"
    if name in ("tcp_dst", "udp_dst", "sctp_dst", "tcp_src", "udp_src", "sctp_src"):
        return str(value) if mask is None else f"{_hex(value)}/{_hex(mask)}"
    if name in ("conj_id", "arp_op", "ip_proto", "icmpv4_type", "ct_zone"):
        return str(value)
    return _hex(value) if mask is None else f"{_hex(value)}/{_hex(mask)}"


def _hex(value: int) -> str:
    """OVS prints zero as 0, everything else as 0x..."""
    return f"{value:#x}" if value else "0"


def _ipv4_text(value: int, mask: int | None) -> str:
    if mask is None:
        return int_to_ipv4(value)
    prefix = bin(mask).count("1")
    if mask == (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF:
        return f"{int_to_ipv4(value)}/{prefix}"
    return f"{int_to_ipv4(value)}/{int_to_ipv4(mask)}"


def _ct_state_text(value: int, mask: int | None) -> str:
    mask = 0xFFFFFFFF if mask is None else mask
    out = []
    for bit, flag in enumerate(CT_STATE_FLAGS):
        if mask & (1 << bit):
            out.append(("+" if value & (1 << bit) else "-") + flag)
    return "".join(out)


def port_text(port: int, ports: PortNames) -> str:
    if port in SPECIAL_PORT_NAMES:
        return SPECIAL_PORT_NAMES[port]
    name = ports.get(port)
    if name is None:
        return str(port)
    return name if _PLAIN_NAME.match(name) and not name.isdigit() else f'"{name}"'


def render_actions(actions: tuple[Action, ...], ports: PortNames | None = None) -> str:
    if not actions:
        return "drop"
    return ",".join(_action_text(a, ports or {}) for a in actions)


def _action_text(action: Action, ports: PortNames) -> str:
    match action:
        case Output(port=port):
            special = SPECIAL_PORT_NAMES.get(port)
            return special if special else f"output:{port_text(port, ports)}"
        case OutputReg(field=reg_field):
            return f"output:{_subfield(reg_field.reg, reg_field.lo, reg_field.width)}"
        case Load(field=reg_field, value=value):
            return _load_text(reg_field, value)
        case SetField(name=name, value=value):
            target = _SET_FIELD_NAMES.get(name, FIELD_SPECS[name].ofctl)
            return f"set_field:{_value_text(name, value, None)}->{target}"
        case Move():
            src = _subfield(action.src, action.src_ofs, action.bits)
            dst = _subfield(action.dst, action.dst_ofs, action.bits)
            return f"move:{src}->{dst}"
        case Ct():
            return _ct_text(action)
        case Conjunction(conj_id=conj_id, clause=clause, n_clauses=n):
            return f"conjunction({conj_id},{clause}/{n})"
        case DecTtl():
            return "dec_ttl"
        case GotoTable(table=name):
            return f"goto_table:{name}"
    raise ValueError(f"cannot render action {action!r}")


def _load_text(reg_field: RegField, value: int) -> str:
    shifted = value << reg_field.lo
    if reg_field.full:
        return f"set_field:{_hex(shifted)}->{reg_field.reg}"
    return f"set_field:{_hex(shifted)}/{_hex(reg_field.mask)}->{reg_field.reg}"


def _subfield(name: str, ofs: int, n_bits: int) -> str:
    nxm = FIELD_SPECS[name].nxm
    width = REGISTER_WIDTHS.get(name, FIELD_SPECS[name].width * 8)
    if ofs == 0 and n_bits == width:
        return f"{nxm}[]"
    if n_bits == 1:
        return f"{nxm}[{ofs}]"
    return f"{nxm}[{ofs}..{ofs + n_bits - 1}]"


def _ct_text(ct: Ct) -> str:
    parts = ["commit"] if ct.commit else []
    if ct.table is not None:
        parts.append(f"table={ct.table}")
    parts.append(f"zone={ct.zone}")
    if ct.exec:
        parts.append(f"exec({','.join(_action_text(a, {}) for a in ct.exec)})")
    if ct.nat:
        parts.append("nat")
    return f"ct({','.join(parts)})"
