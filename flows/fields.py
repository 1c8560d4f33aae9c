"""The register layout and datapath constants, each declared once.

A `RegField` names a bit range of a register (or of ct_mark / ct_label); a `RegMark` is one value
of such a field. Flows say `FROM_POD` instead of `reg0=0x3/0xf`, and a unit test checks that no
two fields overlap.
"""

from __future__ import annotations

from dataclasses import dataclass

# The registers a flow may use as whole 32-bit fields or as bit ranges, with their width in bits.
REGISTER_WIDTHS: dict[str, int] = {
    **{f"reg{i}": 32 for i in range(16)},
    "ct_mark": 32,
    "ct_label": 128,
}


@dataclass(frozen=True, slots=True)
class RegField:
    """A named bit range [lo..hi] (inclusive) of a register."""

    name: str
    reg: str
    lo: int
    hi: int
    doc: str = ""

    def __post_init__(self) -> None:
        width = REGISTER_WIDTHS.get(self.reg)
        if width is None:
            raise ValueError(f"{self.name}: unknown register {self.reg!r}")
        if not 0 <= self.lo <= self.hi < width:
            raise ValueError(f"{self.name}: bits {self.lo}..{self.hi} outside {self.reg}")

    @property
    def width(self) -> int:
        return self.hi - self.lo + 1

    @property
    def mask(self) -> int:
        """The field's bits in place within its register."""
        return ((1 << self.width) - 1) << self.lo

    @property
    def full(self) -> bool:
        """True when the field is the whole register."""
        return self.lo == 0 and self.width == REGISTER_WIDTHS[self.reg]

    def mark(self, value: int, name: str = "") -> RegMark:
        if not 0 <= value < (1 << self.width):
            raise ValueError(f"{self.name}: value {value} does not fit {self.width} bits")
        return RegMark(self, value, name)

    def overlaps(self, other: RegField) -> bool:
        return self.reg == other.reg and self.lo <= other.hi and other.lo <= self.hi


@dataclass(frozen=True, slots=True)
class RegMark:
    """One value of a RegField; matching it or loading it touches only the field's bits."""

    field: RegField
    value: int
    name: str = ""

    @property
    def shifted(self) -> int:
        return self.value << self.field.lo


# --- register fields (DESIGN section 5) ---------------------------------------------------------
PKT_SOURCE = RegField("PKT_SOURCE", "reg0", 0, 3, "where the packet entered the bridge")
PKT_DEST = RegField("PKT_DEST", "reg0", 4, 7, "what kind of port the packet is headed for")
REWRITE_MAC = RegField("REWRITE_MAC", "reg0", 9, 9, "L3Forwarding must rewrite the MACs")
OUTPUT_KIND = RegField("OUTPUT_KIND", "reg0", 21, 22, "how Output sends the packet")
TARGET_OFPORT = RegField("TARGET_OFPORT", "reg1", 0, 31, "the port Output sends to")
CONJ_ID = RegField("CONJ_ID", "reg3", 0, 31, "conjunction id of the matched policy rule")
CT_SOURCE = RegField("CT_SOURCE", "ct_mark", 0, 3, "packet source of the connection's first packet")
REVALIDATION_EPOCH = RegField(
    "REVALIDATION_EPOCH", "ct_mark", 16, 31, "never set; matched to shape megaflow masks"
)
INGRESS_RULE = RegField("INGRESS_RULE", "ct_label", 0, 31, "ingress rule that allowed the conn")
EGRESS_RULE = RegField("EGRESS_RULE", "ct_label", 32, 63, "egress rule that allowed the conn")

REG_FIELDS: tuple[RegField, ...] = (
    PKT_SOURCE,
    PKT_DEST,
    REWRITE_MAC,
    OUTPUT_KIND,
    TARGET_OFPORT,
    CONJ_ID,
    CT_SOURCE,
    REVALIDATION_EPOCH,
    INGRESS_RULE,
    EGRESS_RULE,
)

# --- marks -----------------------------------------------------------------------------------
FROM_TUNNEL = PKT_SOURCE.mark(1, "FROM_TUNNEL")
FROM_GATEWAY = PKT_SOURCE.mark(2, "FROM_GATEWAY")
FROM_POD = PKT_SOURCE.mark(3, "FROM_POD")
TO_TUNNEL = PKT_DEST.mark(1, "TO_TUNNEL")
TO_GATEWAY = PKT_DEST.mark(2, "TO_GATEWAY")
TO_LOCAL = PKT_DEST.mark(3, "TO_LOCAL")
REWRITE_MAC_SET = REWRITE_MAC.mark(1, "REWRITE_MAC_SET")
OUTPUT_TO_PORT = OUTPUT_KIND.mark(1, "OUTPUT_TO_PORT")
OUTPUT_TO_CONTROLLER = OUTPUT_KIND.mark(2, "OUTPUT_TO_CONTROLLER")

# --- datapath constants ------------------------------------------------------------------------
CT_ZONE = 65520
VIRTUAL_MAC = "aa:bb:cc:dd:ee:ff"
TUNNEL_OFPORT = 32768
GATEWAY_OFPORT = 32769
ETH_TYPE_IP = 0x0800
ETH_TYPE_ARP = 0x0806
IP_PROTO_ICMP = 1
IP_PROTO_TCP = 6
IP_PROTO_UDP = 17
IP_PROTO_SCTP = 132

# Special OpenFlow ports, by their ovs-ofctl names.
OFPP_IN_PORT = 0xFFFFFFF8
OFPP_NORMAL = 0xFFFFFFFA
OFPP_CONTROLLER = 0xFFFFFFFD
OFPP_LOCAL = 0xFFFFFFFE
SPECIAL_PORT_NAMES: dict[int, str] = {
    OFPP_IN_PORT: "IN_PORT",
    OFPP_NORMAL: "NORMAL",
    OFPP_CONTROLLER: "CONTROLLER",
    OFPP_LOCAL: "LOCAL",
}


def overlapping_fields(fields: tuple[RegField, ...] = REG_FIELDS) -> list[tuple[str, str]]:
    """Pairs of declared fields that share bits (the layout wants none)."""
    return [
        (a.name, b.name) for i, a in enumerate(fields) for b in fields[i + 1 :] if a.overlaps(b)
    ]
