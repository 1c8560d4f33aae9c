"""The pipeline, declared once as data, in packet order (DESIGN section 5).

Each table says what its flows may match, what they may write and which tables they may jump to
besides the next one. `Table.flow` is the only way to build a `Flow`, and it raises
`PipelineError` naming the table and the field when a flow breaks the declaration, so drift fails
at once. The pipeline documentation is generated from this declaration (`pipeline_markdown`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from flows.fields import (
    CONJ_ID,
    CT_SOURCE,
    EGRESS_RULE,
    INGRESS_RULE,
    OUTPUT_KIND,
    PKT_DEST,
    PKT_SOURCE,
    REG_FIELDS,
    REWRITE_MAC,
    TARGET_OFPORT,
)
from flows.flow import (
    Action,
    Conjunction,
    Ct,
    DecTtl,
    Flow,
    GotoTable,
    Load,
    Match,
    Move,
    Output,
    OutputReg,
    SetField,
)


class PipelineError(ValueError):
    """A flow that breaks the pipeline declaration."""


class Miss(Enum):
    """What a table does with a packet no flow matched."""

    DROP = "drop"
    NEXT = "next"


class Stage(Enum):
    START = "start"
    VALIDATION = "validation"
    CLASSIFIER = "classifier"
    CONNTRACK_STATE = "conntrackState"
    PRE_ROUTING = "preRouting"
    EGRESS_SECURITY = "egressSecurity"
    ROUTING = "routing"
    POST_ROUTING = "postRouting"
    SWITCHING = "switching"
    INGRESS_SECURITY = "ingressSecurity"
    CONNTRACK = "conntrack"
    OUTPUT = "output"


_L2 = frozenset({"in_port", "eth_src", "eth_dst", "eth_type"})
_IP = frozenset({"eth_type", "ip_proto", "ipv4_src", "ipv4_dst"})
_L4 = frozenset({"tcp_dst", "udp_dst", "sctp_dst", "tcp_src", "udp_src", "sctp_src"})
_REGS = frozenset({"reg0", "reg1", "reg3"})
_CT = frozenset({"ct_state", "ct_mark", "ct_label"})
_POLICY_MATCH = _IP | _L4 | _REGS | _CT | frozenset({"conj_id"})
_POLICY_WRITE = frozenset({CONJ_ID.name, INGRESS_RULE.name, EGRESS_RULE.name, CT_SOURCE.name})
_ARP = frozenset({"eth_type", "in_port", "arp_op", "arp_spa", "arp_tpa", "arp_sha", "arp_tha"})


@dataclass(frozen=True, slots=True)
class TableSpec:
    """One table's declaration. `writes` names RegFields or packet fields flows may set."""

    name: str
    stage: Stage
    miss: Miss
    doc: str
    matches: frozenset[str] = frozenset()
    writes: frozenset[str] = frozenset()
    jumps: frozenset[str] = frozenset()


def _t(
    name: str,
    stage: Stage,
    miss: Miss,
    doc: str,
    matches: frozenset[str] = frozenset(),
    writes: Iterable[str] = (),
    jumps: Iterable[str] = (),
) -> TableSpec:
    return TableSpec(name, stage, miss, doc, matches, frozenset(writes), frozenset(jumps))


D, N = Miss.DROP, Miss.NEXT
S = Stage
PIPELINE: tuple[TableSpec, ...] = (
    _t(
        "PipelineRootClassifier",
        S.START,
        D,
        "ARP to ARPSpoofGuard, IP to Classifier.",
        frozenset({"eth_type", "in_port"}),
        (),
        ("Classifier",),
    ),
    _t(
        "ARPSpoofGuard",
        S.VALIDATION,
        D,
        "Lets ARP through only from a known (port, address, MAC) of a pod or the gateway.",
        _ARP,
    ),
    _t(
        "ARPResponder",
        S.OUTPUT,
        D,
        "Answers ARP for peer gateways with the virtual MAC; other ARP goes NORMAL.",
        _ARP,
        ("eth_src", "eth_dst", "arp_op", "arp_sha", "arp_tha", "arp_spa", "arp_tpa"),
    ),
    _t(
        "Classifier",
        S.CLASSIFIER,
        D,
        "Marks where a packet entered: tunnel, gateway or pod.",
        _L2 | _IP | frozenset({"tun_ipv4_src"}),
        (PKT_SOURCE.name, REWRITE_MAC.name),
        ("ConntrackZone",),
    ),
    _t(
        "SpoofGuard",
        S.VALIDATION,
        D,
        "Pods must send from their own port, MAC and IP; the gateway may send any.",
        _L2 | _IP | _REGS,
    ),
    _t("UnSNAT", S.CONNTRACK_STATE, N, "Reserved for services: undo SNAT on replies."),
    _t(
        "ConntrackZone",
        S.CONNTRACK_STATE,
        N,
        "Sends IP through conntrack in the pod zone, applying existing NAT.",
        _IP | _REGS,
        (),
        ("ConntrackState",),
    ),
    _t(
        "ConntrackState",
        S.CONNTRACK_STATE,
        N,
        "Drops invalid connections; established and related ones skip the policy rule tables.",
        _IP | _REGS | _CT,
        (),
        ("EgressMetric", "L3Forwarding"),
    ),
    _t("PreRoutingClassifier", S.PRE_ROUTING, N, "Reserved for services."),
    _t("SessionAffinity", S.PRE_ROUTING, N, "Reserved for services: session affinity."),
    _t("ServiceLB", S.PRE_ROUTING, N, "Reserved for services: endpoint selection."),
    _t("EndpointDNAT", S.PRE_ROUTING, N, "Reserved for services: DNAT to the endpoint."),
    _t(
        "AntreaPolicyEgressRule",
        S.EGRESS_SECURITY,
        N,
        "Reserved for cluster-scoped policy tiers (egress).",
    ),
    _t(
        "EgressRule",
        S.EGRESS_SECURITY,
        N,
        "NetworkPolicy egress rules: clause flows and conjunction action flows.",
        _POLICY_MATCH,
        _POLICY_WRITE,
        ("EgressMetric",),
    ),
    _t(
        "EgressDefaultRule",
        S.EGRESS_SECURITY,
        N,
        "Drops what egress-isolated pods send unless a rule allowed it.",
        _POLICY_MATCH,
    ),
    _t("EgressMetric", S.EGRESS_SECURITY, N, "Per egress rule packet counters.", _POLICY_MATCH),
    _t(
        "L3Forwarding",
        S.ROUTING,
        N,
        "Local pods (MAC rewrite), peer subnets (tunnel destination, virtual MAC), the gateway.",
        _L2 | _IP | _REGS | _CT,
        ("eth_src", "eth_dst", "tun_ipv4_dst", PKT_DEST.name, REWRITE_MAC.name),
        ("L2ForwardingCalc", "L3DecTTL"),
    ),
    _t("EgressMark", S.ROUTING, N, "Reserved for egress SNAT."),
    _t("L3DecTTL", S.ROUTING, N, "Decrements TTL of routed packets.", _IP | _REGS, ("nw_ttl",)),
    _t("SNATMark", S.POST_ROUTING, N, "Reserved for SNAT."),
    _t("SNAT", S.POST_ROUTING, N, "Reserved for SNAT."),
    _t(
        "L2ForwardingCalc",
        S.SWITCHING,
        N,
        "Destination MAC to target port.",
        _L2 | _REGS,
        (TARGET_OFPORT.name, OUTPUT_KIND.name, PKT_DEST.name),
    ),
    _t(
        "IngressSecurityClassifier",
        S.INGRESS_SECURITY,
        N,
        "Traffic to the gateway or the tunnel skips ingress policy.",
        _IP | _REGS | _CT,
        (),
        ("IngressMetric", "ConntrackCommit"),
    ),
    _t(
        "AntreaPolicyIngressRule",
        S.INGRESS_SECURITY,
        N,
        "Reserved for cluster-scoped policy tiers (ingress).",
    ),
    _t(
        "IngressRule",
        S.INGRESS_SECURITY,
        N,
        "NetworkPolicy ingress rules: clause flows and conjunction action flows.",
        _POLICY_MATCH,
        _POLICY_WRITE,
        ("IngressMetric",),
    ),
    _t(
        "IngressDefaultRule",
        S.INGRESS_SECURITY,
        N,
        "Drops what reaches ingress-isolated pods unless a rule allowed it.",
        _POLICY_MATCH,
    ),
    _t("IngressMetric", S.INGRESS_SECURITY, N, "Per ingress rule packet counters.", _POLICY_MATCH),
    _t(
        "ConntrackCommit",
        S.CONNTRACK,
        N,
        "Commits new connections, recording their source.",
        _IP | _REGS | _CT,
        (CT_SOURCE.name,),
        ("Output",),
    ),
    _t("Output", S.OUTPUT, D, "Sends to the target port; hairpin through IN_PORT.", _L2 | _REGS),
)
del D, N, S


@dataclass(frozen=True, slots=True)
class Table:
    """A realised table: its declaration, id and the table after it."""

    spec: TableSpec
    id: int
    next: str | None

    @property
    def name(self) -> str:
        return self.spec.name

    def flow(
        self, priority: int, match: Match, actions: Iterable[Action] = (), cookie: int = 0
    ) -> Flow:
        """Build a flow in this table, refusing one that breaks the declaration."""
        acts = tuple(actions)
        self._check_priority(priority)
        self._check_match(match)
        self._check_actions(acts)
        return Flow(self.name, self.id, priority, match, acts, cookie)

    def miss_flow(self, cookie: int) -> Flow:
        if self.spec.miss is Miss.DROP or self.next is None:
            return self.flow(0, Match(), (), cookie)
        return self.flow(0, Match(), (GotoTable(self.next),), cookie)

    def _check_priority(self, priority: int) -> None:
        if not 0 <= priority <= 0xFFFF:
            raise PipelineError(f"table {self.name}: priority {priority} outside 0..65535")

    def _check_match(self, match: Match) -> None:
        for name in match.names:
            if name not in self.spec.matches:
                raise PipelineError(f"table {self.name}: may not match field {name!r}")

    def _check_actions(self, actions: tuple[Action, ...]) -> None:
        for i, action in enumerate(actions):
            if isinstance(action, GotoTable) and i != len(actions) - 1:
                raise PipelineError(f"table {self.name}: goto_table must be the last action")
            for written in _writes(action):
                if written not in self.spec.writes:
                    raise PipelineError(f"table {self.name}: may not write field {written!r}")
            for target in _jumps(action):
                self._check_jump(target)

    def _check_jump(self, target: str) -> None:
        target_table = TABLES.get(target)
        if target_table is None:
            raise PipelineError(f"table {self.name}: jump to unknown table {target!r}")
        if target_table.id <= self.id:
            raise PipelineError(f"table {self.name}: jump backwards to {target!r}")
        if target != self.next and target not in self.spec.jumps:
            raise PipelineError(f"table {self.name}: may not jump to {target!r}")


def _writes(action: Action) -> tuple[str, ...]:
    match action:
        case Load():
            return (action.field.name,)
        case SetField():
            return (action.name,)
        case Move():
            return (_move_target(action),)
        case Ct():
            return tuple(w for inner in action.exec for w in _writes(inner))
        case DecTtl():
            return ("nw_ttl",)
        case Output() | OutputReg() | Conjunction() | GotoTable():
            return ()
    raise PipelineError(f"unknown action {action!r}")


def _move_target(move: Move) -> str:
    """A move into a declared register field is named by that field; others by the header."""
    for reg_field in REG_FIELDS:
        if reg_field.reg == move.dst and reg_field.lo == move.dst_ofs:
            return reg_field.name
    return move.dst


def _jumps(action: Action) -> tuple[str, ...]:
    if isinstance(action, GotoTable):
        return (action.table,)
    if isinstance(action, Ct) and action.table is not None:
        return (action.table,)
    return ()


def _realise(specs: tuple[TableSpec, ...]) -> dict[str, Table]:
    tables: dict[str, Table] = {}
    for table_id, spec in enumerate(specs):
        following = specs[table_id + 1].name if table_id + 1 < len(specs) else None
        tables[spec.name] = Table(spec, table_id, following)
    return tables


TABLES: dict[str, Table] = _realise(PIPELINE)
TABLE_NAMES: dict[int, str] = {t.id: t.name for t in TABLES.values()}


def table(name: str) -> Table:
    try:
        return TABLES[name]
    except KeyError:
        raise PipelineError(f"unknown table {name!r}") from None


def pipeline_markdown() -> str:
    """The pipeline reference, generated from the declaration."""
    lines = ["| id | name | stage | miss | what it does |", "| --- | --- | --- | --- | --- |"]
    for t in TABLES.values():
        lines.append(
            f"| {t.id} | {t.name} | {t.spec.stage.value} | {t.spec.miss.value} | {t.spec.doc} |"
        )
    return "\n".join(lines) + "\n"


def register_markdown() -> str:
    """The register layout, generated from flows.fields."""
    lines = ["| field | bits | meaning |", "| --- | --- | --- |"]
    for f in REG_FIELDS:
        lines.append(f"| {f.name} | {f.reg}[{f.lo}..{f.hi}] | {f.doc} |")
    return "\n".join(lines) + "\n"


_DOCUMENT_HEAD = """# The pipeline

Generated from `flows/pipeline.py` and `flows/fields.py` by `plumbctl pipeline --markdown`
(a unit test keeps this page in step with the code). Table numbers are fixed and contiguous;
names follow Antrea's so that dumps read the same. A table that a disabled feature leaves empty
holds only its miss flow. Every table is named in OVSDB, so
`ovs-ofctl -O OpenFlow15 --names dump-flows br-int` prints `table=SpoofGuard`, not `table=4`.

"""


def pipeline_document() -> str:
    """docs/pipeline.md: tables and registers."""
    return (
        _DOCUMENT_HEAD
        + "## Tables\n\n"
        + pipeline_markdown()
        + "\n## Registers\n\n"
        + register_markdown()
    )
