"""Encoding flows to OpenFlow 1.3 wire messages (with Nicira and ONF extensions).

Two encoders that must agree byte for byte (a unit test holds them to it):

- `osken_flow_mod` builds os-ken message objects: the reference, readable and complete.
- `flow_mod` is the fast path. Building os-ken objects costs tens of microseconds a flow, ten
  times what OVS spends, so flows are encoded once (match and instructions cached on the flow,
  instruction lists cached by value) and only the fixed header is packed per message. The
  common actions are packed directly; rare ones go through os-ken once and are cached.

The cache of instruction lists is small on purpose (`INSTRUCTION_CACHE`): the lists worth
sharing (a jump, a register mark, one rule's conjunctions) recur within a few flows of each
other, while a pod's own lists (its MAC, its port) are encoded once, kept on its flows, and
would otherwise pile up with every pod ever created.
"""

from __future__ import annotations

import functools
import struct
from typing import Any

from os_ken.ofproto import ofproto_common
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from flows.fields import RegField
from flows.flow import (
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
from flows.pipeline import TABLES

OFP_VERSION = ofp.OFP_VERSION
ADD = ofp.OFPFC_ADD
MODIFY_STRICT = ofp.OFPFC_MODIFY_STRICT
DELETE_STRICT = ofp.OFPFC_DELETE_STRICT
DELETE = ofp.OFPFC_DELETE

_HEADER = struct.Struct("!BBHI")
_FLOW_MOD_FIXED = struct.Struct("!QQBBHHHIIIH2x")
_NX_EXPERIMENTER = ofproto_common.NX_EXPERIMENTER_ID
_BUNDLE_ADD = struct.Struct("!IIIHH")
_NO_RECIRC_TABLE = 0xFF
INSTRUCTION_CACHE = 1024
"""Instruction lists kept by value: a bound, not a working set (the 100,000 flows of `bench
flow-install` hit as often with 256 as with 65,536, the former bound; about 0.5 MiB when full)."""


class OskenDatapath:
    """The minimum of an os-ken Datapath that message classes need to build and parse."""

    ofproto = ofp
    ofproto_parser = parser


DATAPATH = OskenDatapath()


# --- reference encoder (os-ken objects) --------------------------------------------------------


def osken_flow_mod(flow: Flow, command: int = ADD) -> Any:
    """The flow as an os-ken OFPFlowMod."""
    return parser.OFPFlowMod(
        DATAPATH,
        cookie=flow.cookie,
        cookie_mask=0,
        table_id=flow.table_id,
        command=command,
        priority=flow.priority,
        buffer_id=ofp.OFP_NO_BUFFER,
        out_port=ofp.OFPP_ANY,
        out_group=ofp.OFPG_ANY,
        match=osken_match(flow.match),
        instructions=osken_instructions(flow.actions),
    )


def osken_match(match: Match) -> Any:
    return parser.OFPMatch(
        **{name: value if mask is None else (value, mask) for name, value, mask in match.entries}
    )


def osken_instructions(actions: tuple[Action, ...]) -> list[Any]:
    applied = [osken_action(a) for a in actions if not isinstance(a, GotoTable)]
    instructions = []
    if applied:
        instructions.append(parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, applied))
    for action in actions:
        if isinstance(action, GotoTable):
            instructions.append(parser.OFPInstructionGotoTable(TABLES[action.table].id))
    return instructions


def osken_action(action: Action) -> Any:
    match action:
        case Output(port=port):
            return parser.OFPActionOutput(port, ofp.OFPCML_MAX)
        case OutputReg(field=f):
            return parser.NXActionOutputReg(_ofs_nbits(f.lo, f.width), f.reg, 0)
        case Load(field=f, value=value):
            return _osken_load(f, value)
        case SetField(name=name, value=value):
            return parser.OFPActionSetField(**{name: _user_value(name, value)})
        case Move():
            return parser.NXActionRegMove(
                action.src, action.dst, action.bits, action.src_ofs, action.dst_ofs
            )
        case Ct():
            return _osken_ct(action)
        case Conjunction(conj_id=conj_id, clause=clause, n_clauses=n):
            return parser.NXActionConjunction(clause - 1, n, conj_id)
        case DecTtl():
            return parser.OFPActionDecNwTtl()
    raise ValueError(f"cannot encode action {action!r}")


def _osken_load(reg_field: RegField, value: int) -> Any:
    if reg_field.reg == "ct_label":
        # os-ken cannot pack a 128-bit NXAST_REG_LOAD2; the older REG_LOAD takes a bit range.
        return parser.NXActionRegLoad(
            _ofs_nbits(reg_field.lo, reg_field.width), reg_field.reg, value
        )
    if reg_field.full:
        return parser.NXActionRegLoad2(dst=reg_field.reg, value=value)
    return parser.NXActionRegLoad2(
        dst=reg_field.reg, value=value << reg_field.lo, mask=reg_field.mask
    )


def _osken_ct(ct: Ct) -> Any:
    inner = [parser.NXActionNAT(flags=0)] if ct.nat else []
    inner.extend(osken_action(a) for a in ct.exec)
    recirc = TABLES[ct.table].id if ct.table is not None else _NO_RECIRC_TABLE
    return parser.NXActionCT(
        flags=1 if ct.commit else 0,
        zone_src="",
        zone_ofs_nbits=ct.zone,
        recirc_table=recirc,
        alg=0,
        actions=inner,
    )


def _user_value(name: str, value: int) -> Any:
    """os-ken wants addresses as text."""
    kind = FIELD_SPECS[name].kind
    if kind is Kind.IPV4:
        return int_to_ipv4(value)
    if kind is Kind.MAC:
        return int_to_mac(value)
    return value


def _ofs_nbits(ofs: int, n_bits: int) -> int:
    return (ofs << 6) | (n_bits - 1)


# --- fast encoder ------------------------------------------------------------------------------


def flow_mod(flow: Flow, command: int, xid: int) -> bytes:
    """The flow as a complete OFPT_FLOW_MOD message."""
    body = flow_body(flow)
    fixed = _FLOW_MOD_FIXED.pack(
        flow.cookie,
        0,
        flow.table_id,
        command,
        0,
        0,
        flow.priority,
        ofp.OFP_NO_BUFFER,
        ofp.OFPP_ANY,
        ofp.OFPG_ANY,
        0,
    )
    length = 8 + len(fixed) + len(body)
    return _HEADER.pack(OFP_VERSION, ofp.OFPT_FLOW_MOD, length, xid) + fixed + body


def flow_body(flow: Flow) -> bytes:
    """Match + instructions, encoded once per flow value and cached on it."""
    if flow.wire:
        return flow.wire[0]
    body = match_bytes(flow.match) + instruction_bytes(flow.actions)
    flow.wire.append(body)
    return body


def match_bytes(match: Match) -> bytes:
    fields = b"".join(_oxm(name, value, mask) for name, value, mask in match.entries)
    length = 4 + len(fields)
    return struct.pack("!HH", ofp.OFPMT_OXM, length) + fields + bytes(-length % 8)


@functools.cache
def _oxm_header(name: str, masked: bool) -> int:
    num: int = ofp.oxm_get_field_info_by_name(name)[0]
    width = FIELD_SPECS[name].width
    return (num << 9) | (int(masked) << 8) | (width * (2 if masked else 1))


def _oxm(name: str, value: int, mask: int | None) -> bytes:
    width = FIELD_SPECS[name].width
    if mask is None:
        return _oxm_header(name, False).to_bytes(4, "big") + value.to_bytes(width, "big")
    return (
        _oxm_header(name, True).to_bytes(4, "big")
        + value.to_bytes(width, "big")
        + mask.to_bytes(width, "big")
    )


@functools.lru_cache(maxsize=INSTRUCTION_CACHE)
def instruction_bytes(actions: tuple[Action, ...]) -> bytes:
    applied = b"".join(action_bytes(a) for a in actions if not isinstance(a, GotoTable))
    out = b""
    if applied:
        out += struct.pack("!HH4x", ofp.OFPIT_APPLY_ACTIONS, 8 + len(applied)) + applied
    for action in actions:
        if isinstance(action, GotoTable):
            out += struct.pack("!HHB3x", ofp.OFPIT_GOTO_TABLE, 8, TABLES[action.table].id)
    return out


def action_bytes(action: Action) -> bytes:
    match action:
        case Output(port=port):
            return struct.pack("!HHIH6x", ofp.OFPAT_OUTPUT, 16, port, ofp.OFPCML_MAX)
        case Conjunction(conj_id=conj_id, clause=clause, n_clauses=n):
            return struct.pack("!HHIHBBI", 0xFFFF, 16, _NX_EXPERIMENTER, 34, clause - 1, n, conj_id)
        case SetField(name=name, value=value):
            oxm = _oxm(name, value, None)
            length = 4 + len(oxm)
            return (
                struct.pack("!HH", ofp.OFPAT_SET_FIELD, length + -length % 8)
                + oxm
                + bytes(-length % 8)
            )
        case Load(field=f, value=value) if f.reg != "ct_label":
            oxm = _oxm(f.reg, value << f.lo, None if f.full else f.mask)
            body = struct.pack("!HHIH", 0xFFFF, 0, _NX_EXPERIMENTER, 33) + oxm
            padded = body + bytes(-len(body) % 8)
            return padded[:2] + len(padded).to_bytes(2, "big") + padded[4:]
    return _osken_action_bytes(action)


@functools.lru_cache(maxsize=4096)
def _osken_action_bytes(action: Action) -> bytes:
    buf = bytearray()
    osken_action(action).serialize(buf, 0)
    return bytes(buf)


# --- bundles and other control messages -----------------------------------------------------


def bundle_add(inner: bytes, bundle_id: int, xid: int, flags: int) -> bytes:
    """Wrap a message into an ONF bundle-add (OpenFlow 1.3 extension) with the same xid."""
    length = 8 + 16 + len(inner)
    head = _HEADER.pack(OFP_VERSION, ofp.OFPT_EXPERIMENTER, length, xid)
    ext = _BUNDLE_ADD.pack(
        ofproto_common.ONF_EXPERIMENTER_ID, ofp.ONF_ET_BUNDLE_ADD_MESSAGE, bundle_id, 0, flags
    )
    return head + ext + inner


def serialize(msg: Any, xid: int) -> bytes:
    """An os-ken message object as bytes with the given xid."""
    msg.set_xid(xid)
    msg.serialize()
    return bytes(msg.buf)
