"""Reading the datapath back: parse `ovs-ofctl dump-flows` and `ofproto/trace` text, name each
flow's owner from its cookie, and turn a trace into a table-by-table walk with a verdict.

Pure: the caller runs the OVS tools and hands in their text together with `Names` (what it knows
of the node: pods by ofport and address, nodes by cookie id and address, policy rules by
conjunction id, which policies isolate which pod). Everything here works on OVS's own output
format, as `tests/unit/test_annotate.py` holds it to real captures.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from flows.cookie import CATEGORY_SHIFT, OBJECT_MASK, ROUND_SHIFT, Category
from flows.fields import GATEWAY_OFPORT, TUNNEL_OFPORT
from flows.pipeline import TABLE_NAMES, TABLES

# Fields ovs-ofctl prints before the match, separated by ", " (lib/ofp-flow.c).
_STATS_KEYS = frozenset({"duration", "n_packets", "n_bytes", "idle_age", "hard_age"})
_META_KEYS = _STATS_KEYS | frozenset(
    {
        "cookie",
        "table",
        "idle_timeout",
        "hard_timeout",
        "importance",
        "send_flow_rem",
        "reset_counts",
        "no_packet_counts",
        "no_byte_counts",
        "check_overlap",
    }
)
_ACTIONS = re.compile(r"(?:^| )actions=")
_CONJUNCTION = re.compile(r"conjunction\((\d+),(\d+)/(\d+)\)")
_DEFAULT_PRIORITY = 32768


# --- dumps -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DumpedFlow:
    """One line of `ovs-ofctl dump-flows`: the flow and, when the dump had them, its stats."""

    cookie: int
    table: str
    priority: int
    match: str
    actions: str
    n_packets: int | None = None
    n_bytes: int | None = None
    duration: float | None = None
    extra: tuple[str, ...] = ()  # other metadata (idle_timeout=..., importance=...) as printed

    @property
    def round(self) -> int:
        return (self.cookie >> ROUND_SHIFT) & 0xFFFF

    @property
    def table_id(self) -> int | None:
        if self.table.isdigit():
            return int(self.table)
        known = TABLES.get(self.table)
        return known.id if known is not None else None

    @property
    def text(self) -> str:
        """The flow as `ovs-ofctl --no-stats dump-flows` prints it: `add-flow(s)` takes it back."""
        head = [f"cookie={self.cookie:#x}"] if self.cookie else []
        head.append(f"table={self.table}")
        head.extend(self.extra)
        body = [] if self.priority == _DEFAULT_PRIORITY else [f"priority={self.priority}"]
        if self.match:
            body.append(self.match)
        flow = ",".join(body)
        separator = " " if flow else ""
        return f" {', '.join(head)}, {flow}{separator}actions={self.actions}"

    @property
    def fields(self) -> dict[str, str]:
        return match_fields(self.match)


class DumpParseError(ValueError):
    """A line that is not a flow as ovs-ofctl prints one."""


def parse_dump(text: str) -> list[DumpedFlow]:
    """Every flow line of a dump; headers (`NXST_FLOW reply`, `OFPST_FLOW`) and blanks skipped."""
    return [
        parse_dump_line(line)
        for line in text.splitlines()
        if line.strip() and not _is_dump_header(line)
    ]


def _is_dump_header(line: str) -> bool:
    return bool(re.match(r"^\S*(ST_FLOW|_FLOW reply| reply )", line)) or line.lstrip().startswith(
        "#"
    )


def parse_dump_line(line: str) -> DumpedFlow:
    """One flow line (with or without stats)."""
    found = _ACTIONS.search(line)
    if found is None:
        raise DumpParseError(f"no actions in flow line: {line.strip()!r}")
    head = line[: found.start()].strip().rstrip(",")
    # A trailing "# ..." is our own annotation (ovs-ofctl add-flows ignores it too).
    actions = line[found.end() :].split(" #", 1)[0].strip()
    meta: dict[str, str] = {}
    extra: list[str] = []
    rest = head
    while rest:
        token, _, after = rest.partition(", ")
        key = token.partition("=")[0]
        if key not in _META_KEYS:
            break
        meta[key] = token.partition("=")[2]
        if key not in _STATS_KEYS and key not in ("cookie", "table"):
            extra.append(token)
        rest = after
    rest = rest.rstrip(",")
    priority, match = _priority_and_match(rest)
    return DumpedFlow(
        cookie=int(meta.get("cookie", "0"), 0),
        table=meta.get("table", "0"),
        priority=priority,
        match=match,
        actions=actions,
        n_packets=_int_or_none(meta.get("n_packets")),
        n_bytes=_int_or_none(meta.get("n_bytes")),
        duration=float(meta["duration"].rstrip("s")) if "duration" in meta else None,
        extra=tuple(extra),
    )


def _priority_and_match(text: str) -> tuple[int, str]:
    parts = split_fields(text)
    priority = _DEFAULT_PRIORITY
    rest = []
    for part in parts:
        if part.startswith("priority="):
            priority = int(part.partition("=")[2])
        else:
            rest.append(part)
    return priority, ",".join(rest)


def _int_or_none(text: str | None) -> int | None:
    return int(text) if text is not None else None


def split_fields(text: str) -> list[str]:
    """A match or action list split on its top-level commas (not inside quotes or brackets)."""
    out: list[str] = []
    depth, quoted, start = 0, False, 0
    for i, char in enumerate(text):
        if char == '"':
            quoted = not quoted
        elif quoted:
            continue
        elif char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        elif char == "," and depth == 0:
            out.append(text[start:i])
            start = i + 1
    if text[start:]:
        out.append(text[start:])
    return [p.strip() for p in out if p.strip()]


def match_fields(match: str) -> dict[str, str]:
    """A match as field -> value (`ip` -> ""); port names keep no quotes."""
    out: dict[str, str] = {}
    for part in split_fields(match):
        key, _, value = part.partition("=")
        out[key] = value.strip('"')
    return out


def conjunctions(actions: str) -> list[tuple[int, int, int]]:
    """The (conj id, clause, clauses) of every conjunction() action."""
    return [(int(a), int(b), int(c)) for a, b, c in _CONJUNCTION.findall(actions)]


def with_table_names(actions: str) -> str:
    """Actions as ofproto/trace prints them (`goto_table:3`, `ct(table=7,...)`), with names."""

    def name(m: re.Match[str]) -> str:
        return f"{m.group(1)}{TABLE_NAMES.get(int(m.group(2)), m.group(2))}"

    return re.sub(r"(goto_table:|resubmit\(,|table=)(\d+)", name, actions)


# --- owners ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Names:
    """What the caller knows of the node and the cluster, to name owners and verdicts.

    `pods` maps this node's ofports to `NS/NAME`; `pod_ips` every known pod address to
    `NS/NAME` (any node); `nodes` a node's cookie object id to its name; `node_addresses` an
    underlay address to a node name; `rules` a conjunction id to a description of its rule;
    `isolated_ingress`/`isolated_egress` a pod to the policies that isolate it.
    """

    node: str = ""
    pods: Mapping[int, str] = field(default_factory=dict)
    pod_ips: Mapping[str, str] = field(default_factory=dict)
    nodes: Mapping[int, str] = field(default_factory=dict)
    node_addresses: Mapping[str, str] = field(default_factory=dict)
    rules: Mapping[int, str] = field(default_factory=dict)
    isolated_ingress: Mapping[str, Sequence[str]] = field(default_factory=dict)
    isolated_egress: Mapping[str, Sequence[str]] = field(default_factory=dict)
    tunnel_ofport: int = TUNNEL_OFPORT
    gateway_ofport: int = GATEWAY_OFPORT

    def port(self, ofport: int) -> str:
        """A port as a reader wants it: `pod NS/NAME`, `gateway`, `tunnel` or its number."""
        if ofport in self.pods:
            return f"pod {self.pods[ofport]}"
        if ofport == self.gateway_ofport:
            return "gateway (the node)"
        if ofport == self.tunnel_ofport:
            return "tunnel"
        return f"port {ofport}"

    def address(self, ip: str) -> str:
        """An IPv4 address or CIDR, with the pod it belongs to when known."""
        pod = self.pod_ips.get(ip.removesuffix("/32"))
        return f"{ip} ({pod})" if pod else ip


@dataclass(frozen=True, slots=True)
class Owner:
    """Who a flow belongs to, decoded from its cookie (and, for shared policy flows, its match)."""

    category: str  # pipeline, pod, node, policy, service, trace, or foreign
    round: int
    object_id: int
    name: str  # NS/NAME, a node name, a rule description, or "" when nothing more is known

    def __str__(self) -> str:
        return f"{self.category} {self.name}".strip()


def decode_owner(
    cookie: int, table: str = "", match: str = "", actions: str = "", names: Names | None = None
) -> Owner:
    """The owner of a flow with this cookie; shared policy flows are named by what they match."""
    names = names or Names()
    round_ = (cookie >> ROUND_SHIFT) & 0xFFFF
    object_id = cookie & OBJECT_MASK
    try:
        category = Category((cookie >> CATEGORY_SHIFT) & 0xFF)
    except ValueError:
        return Owner("foreign", round_, object_id, f"cookie {cookie:#x}")
    name = _owner_name(category, object_id, table, match, actions, names)
    return Owner(category.name.lower(), round_, object_id, name)


def flow_owner(flow: DumpedFlow, names: Names | None = None) -> Owner:
    return decode_owner(flow.cookie, flow.table, flow.match, flow.actions, names)


def _owner_name(
    category: Category, object_id: int, table: str, match: str, actions: str, names: Names
) -> str:
    if category is Category.POD:
        return names.pods.get(object_id, f"ofport {object_id}")
    if category is Category.NODE:
        if object_id == 0:
            return f"{names.node} (local gateway)" if names.node else "local gateway"
        name = names.nodes.get(object_id, f"id {object_id:#x}")
        # The local node's own name owns its end of the tunnel.
        return f"{name} (tunnel end)" if name == names.node and name else name
    if category is Category.POLICY:
        if object_id:
            return rule_name(object_id, names)
        return _shared_policy_name(table_name(table), match_fields(match), actions, names)
    return ""


def rule_name(conj_id: int, names: Names) -> str:
    known = names.rules.get(conj_id)
    return f"rule {conj_id}" + (f" ({known})" if known else "")


def table_name(table: str) -> str:
    """A table as printed (name or number) by its name when it is one of the pipeline's."""
    return TABLE_NAMES.get(int(table), table) if table.isdigit() else table


def _shared_policy_name(table: str, fields: Mapping[str, str], actions: str, names: Names) -> str:
    """Shared policy flows carry cookie id 0: say what they match on and which rules use them."""
    if table == "IngressDefaultRule" and "reg1" in fields:
        pod = names.pods.get(int(fields["reg1"], 0), f"ofport {int(fields['reg1'], 0)}")
        return f"ingress isolation of {pod}"
    if table == "EgressDefaultRule" and "nw_src" in fields:
        return f"egress isolation of {names.address(fields['nw_src'])}"
    rules = sorted({c for c, _, _ in conjunctions(actions)})
    if not rules:
        return "node traffic (always allowed)" if "nw_src" in fields or "nw_dst" in fields else ""
    what = _clause_text(table, fields, names)
    used = ", ".join(str(r) for r in rules)
    return f"clause {what} of rule{'s' if len(rules) > 1 else ''} {used}"


def _clause_text(table: str, fields: Mapping[str, str], names: Names) -> str:
    if "reg1" in fields:
        return f"to {names.port(int(fields['reg1'], 0))}"
    for proto in ("tcp", "udp", "sctp"):
        if proto in fields:
            port = fields.get("tp_dst") or fields.get(f"{proto}_dst")
            return f"{proto}/{port}" if port else f"{proto}/any"
    if "nw_src" in fields:
        verb = "from" if table == "IngressRule" else "by"
        return f"{verb} {names.address(fields['nw_src'])}"
    if "nw_dst" in fields:
        return f"to {names.address(fields['nw_dst'])}"
    return "any"


# --- selections --------------------------------------------------------------------------------


def current_round(flows: Iterable[DumpedFlow], round_: int) -> list[DumpedFlow]:
    return [f for f in flows if f.round == round_]


def in_table(flows: Iterable[DumpedFlow], table: str) -> list[DumpedFlow]:
    """Flows of one table, given by name or number."""
    wanted = table_name(table)
    return [f for f in flows if table_name(f.table) == wanted]


def of_pod(flows: Iterable[DumpedFlow], ofport: int, ip: str) -> list[DumpedFlow]:
    """A local pod's flows (its cookie) and the policy flows that name its port or address."""
    address = ip.split("/")[0]
    out = []
    for flow in flows:
        category = (flow.cookie >> CATEGORY_SHIFT) & 0xFF
        own = category == Category.POD and flow.cookie & OBJECT_MASK == ofport
        if own or (category == Category.POLICY and _names_pod(flow.fields, ofport, address)):
            out.append(flow)
    return out


def _names_pod(fields: Mapping[str, str], ofport: int, address: str) -> bool:
    if "reg1" in fields and int(fields["reg1"].split("/")[0], 0) == ofport:
        return True
    return address in (fields.get("nw_src"), fields.get("nw_dst"))


def of_rules(
    flows: Iterable[DumpedFlow], conj_ids: set[int], ofports: set[int]
) -> list[DumpedFlow]:
    """The flows of some policy rules: their action and metric flows, the clause flows that
    feed them, and the default-drop flows of the pods they isolate (by ofport)."""
    out = []
    for flow in flows:
        if (flow.cookie >> CATEGORY_SHIFT) & 0xFF != Category.POLICY:
            continue
        object_id = flow.cookie & OBJECT_MASK
        fields = flow.fields
        if (
            object_id in conj_ids
            or any(c in conj_ids for c, _, _ in conjunctions(flow.actions))
            or (
                table_name(flow.table) == "IngressDefaultRule"
                and "reg1" in fields
                and int(fields["reg1"], 0) in ofports
            )
        ):
            out.append(flow)
    return out


def flows_per_table(flows: Iterable[DumpedFlow]) -> dict[str, int]:
    """Flow counts per table, in pipeline order (unknown tables last)."""
    counts: dict[str, int] = {}
    for flow in flows:
        name = table_name(flow.table)
        counts[name] = counts.get(name, 0) + 1
    order = {name: t.id for name, t in TABLES.items()}
    return dict(sorted(counts.items(), key=lambda kv: (order.get(kv[0], 1 << 16), kv[0])))


# --- rules reconstructed from their flows ------------------------------------------------------


@dataclass
class RuleView:
    """One conjunction as the datapath holds it: its direction and, per clause, what it takes."""

    conj_id: int
    direction: str = ""  # Ingress or Egress (from the table of its action flow)
    clauses: dict[int, list[str]] = field(default_factory=dict)
    n_clauses: int = 0
    packets: int = 0  # packets of its metric flows (new and established)

    def describe(self) -> str:
        parts = ["; ".join(sorted(v)) for _, v in sorted(self.clauses.items())]
        return f"{self.direction or '?'} " + " | ".join(parts)


def rule_views(flows: Iterable[DumpedFlow], names: Names | None = None) -> dict[int, RuleView]:
    """Every conjunction on the bridge with the clause flows that feed it."""
    names = names or Names()
    views: dict[int, RuleView] = {}
    for flow in flows:
        if (flow.cookie >> CATEGORY_SHIFT) & 0xFF != Category.POLICY:
            continue
        table = table_name(flow.table)
        for conj_id, clause, n in conjunctions(flow.actions):
            view = views.setdefault(conj_id, RuleView(conj_id))
            view.n_clauses = n
            view.clauses.setdefault(clause, []).append(_clause_text(table, flow.fields, names))
        object_id = flow.cookie & OBJECT_MASK
        if object_id:
            view = views.setdefault(object_id, RuleView(object_id))
            if table in ("IngressRule", "EgressRule"):
                view.direction = table.removesuffix("Rule")
            elif table in ("IngressMetric", "EgressMetric"):
                view.packets += flow.n_packets or 0
    return views


# --- traces ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TraceStep:
    """One flow a traced packet matched."""

    pass_index: int  # 0 for the first pass; one more after each conntrack recirculation
    bridge: str
    table_id: int
    match: str
    priority: int
    cookie: int
    actions: tuple[str, ...]
    notes: tuple[str, ...]  # OVS's "-> ..." explanations

    @property
    def table(self) -> str:
        """The table's name in Plumb's pipeline (its number when it has none)."""
        return TABLE_NAMES.get(self.table_id, str(self.table_id))

    @property
    def drops(self) -> bool:
        return not self.actions or self.actions == ("drop",)

    @property
    def output_port(self) -> int | None:
        for note in self.notes:
            found = re.match(r"-> output port is (\d+)", note)
            if found:
                return int(found.group(1))
        for action in self.actions:
            found = re.fullmatch(r"output:(\d+)", action)
            if found:
                return int(found.group(1))
        return None


@dataclass
class TracePass:
    """One pass through the bridges: the first, or one resumed after a recirculation."""

    header: str  # "" or "recirc(0x1) - resume conntrack with ct_state=new|trk"
    flow: str = ""
    steps: list[TraceStep] = field(default_factory=list)
    final_flow: str = ""
    megaflow: str = ""
    datapath_actions: str = ""


class TraceParseError(ValueError):
    """Text that is not ofproto/trace output."""


_STEP = re.compile(r"^\s*(\d+)\. (?:(.*), )?priority (\d+)(?:, cookie (0x[0-9a-f]+))?$")
_NO_MATCH = re.compile(r"^\s*(\d+)\. No match\.$")
_BRIDGE = re.compile(r'^bridge\("([^"]+)"\)$')


@dataclass
class _Draft:
    """A step being read: its header line is known, its action and note lines follow."""

    table_id: int
    match: str
    priority: int
    cookie: int
    actions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        if line.startswith(("->", ">>")):
            self.notes.append(line)
        elif line != "thaw" and not line.startswith("Resuming from table"):
            self.actions.append(line)

    def done(self, pass_index: int, bridge: str) -> TraceStep:
        return TraceStep(
            pass_index,
            bridge,
            self.table_id,
            self.match,
            self.priority,
            self.cookie,
            tuple(self.actions),
            tuple(self.notes),
        )


class _TraceReader:
    """Reads ofproto/trace output line by line into passes."""

    def __init__(self) -> None:
        self.passes: list[TracePass] = []
        self.bridge = ""
        self.draft: _Draft | None = None

    def close_step(self) -> None:
        if self.draft is not None and self.passes:
            self.passes[-1].steps.append(self.draft.done(len(self.passes) - 1, self.bridge))
        self.draft = None

    def read(self, line: str) -> None:
        stripped = line.strip()
        if stripped.startswith("recirc(") and " - " in stripped:
            self.close_step()
            self.passes.append(TracePass(header=stripped))
        elif line.startswith("Flow: "):
            self.close_step()
            if not self.passes or self.passes[-1].flow:
                self.passes.append(TracePass(header=""))
            self.passes[-1].flow = line[len("Flow: ") :]
        elif not self.passes:
            return
        elif found := _BRIDGE.match(stripped):
            self.close_step()
            self.bridge = found.group(1)
        elif found := _STEP.match(line):
            self.close_step()
            match, priority, cookie = found.group(2) or "", found.group(3), found.group(4)
            self.draft = _Draft(int(found.group(1)), match, int(priority), int(cookie or "0", 16))
        elif found := _NO_MATCH.match(line):
            self.close_step()
            self.draft = _Draft(int(found.group(1)), "", -1, 0, notes=["no flow matched"])
        elif line.startswith(("Final flow: ", "Megaflow: ", "Datapath actions: ")):
            self.close_step()
            self._summary(line)
        elif self.draft is not None and stripped:
            self.draft.add(stripped)

    def _summary(self, line: str) -> None:
        key, _, value = line.partition(": ")
        current = self.passes[-1]
        if key == "Final flow":
            current.final_flow = value
        elif key == "Megaflow":
            current.megaflow = value
        else:
            current.datapath_actions = value


def parse_trace(text: str) -> list[TracePass]:
    """ofproto/trace output as passes of steps (works with and without --ct-next)."""
    reader = _TraceReader()
    for line in text.splitlines():
        reader.read(line)
    reader.close_step()
    if not reader.passes:
        raise TraceParseError("no 'Flow:' line: not ofproto/trace output")
    return reader.passes


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the datapath does with the traced packet, and the step that decided it."""

    kind: str  # delivered, tunnelled, gateway, dropped, unknown
    port: int | None = None
    tunnel_dst: str | None = None
    step: TraceStep | None = None
    text: str = ""
    allowed_by: tuple[int, ...] = ()  # conjunction ids of the policy rules the packet matched
    isolated_by: tuple[str, ...] = ()  # policies of the isolation that dropped it

    @property
    def delivered(self) -> bool:
        return self.kind in ("delivered", "tunnelled", "gateway")


def traced_bridge(passes: Sequence[TracePass]) -> str:
    """The bridge the trace started on (the one ofproto/trace was asked about)."""
    return next((s.bridge for p in passes for s in p.steps), "")


def walk(passes: Sequence[TracePass], bridge: str | None = None) -> list[TraceStep]:
    """The steps taken on Plumb's bridge (default: the traced one), across recirculations."""
    bridge = bridge or traced_bridge(passes)
    return [s for p in passes for s in p.steps if s.bridge == bridge]


def verdict(
    passes: Sequence[TracePass], bridge: str | None = None, names: Names | None = None
) -> Verdict:
    """The last pass decides: an output on `bridge` delivers or tunnels, a drop names its
    table and owner (and, for default-rule drops, the policies that isolate the pod)."""
    names = names or Names()
    bridge = bridge or traced_bridge(passes)
    steps = [s for s in passes[-1].steps if s.bridge == bridge]
    allowed = _allowed_by(walk(passes, bridge))
    if not steps:
        return Verdict("unknown", text="the trace never reached the bridge")
    for step in reversed(steps):
        port = step.output_port
        if port is not None and not any("skipping output" in n for n in step.notes):
            return _output_verdict(step, port, names, allowed)
    last = steps[-1]
    if last.drops or passes[-1].datapath_actions.strip() == "drop":
        return _drop_verdict(last, names, allowed)
    return Verdict("unknown", step=last, text="no output and no drop found", allowed_by=allowed)


def _allowed_by(steps: Sequence[TraceStep]) -> tuple[int, ...]:
    out = []
    for step in steps:
        if step.table in ("IngressRule", "EgressRule") and step.match.startswith("conj_id="):
            out.append(int(match_fields(step.match)["conj_id"]))
    return tuple(out)


def _output_verdict(step: TraceStep, port: int, names: Names, allowed: tuple[int, ...]) -> Verdict:
    rules = _rules_text(allowed, names)
    for note in step.notes:
        found = re.match(r"-> tunneling to (\S+)", note)
        if found:
            dst = found.group(1)
            node = names.node_addresses.get(dst)
            where = f"node {node} ({dst})" if node else dst
            return Verdict(
                "tunnelled", port, dst, step, f"tunnelled to {where}{rules}", allowed_by=allowed
            )
    if port == names.gateway_ofport:
        return Verdict("gateway", port, None, step, f"sent to the node's gateway{rules}", allowed)
    pod = names.pods.get(port)
    target = f"port {port} (pod {pod})" if pod else f"port {port}"
    return Verdict("delivered", port, None, step, f"delivered to {target}{rules}", allowed)


def _rules_text(allowed: Sequence[int], names: Names) -> str:
    if not allowed:
        return ""
    return "; allowed by " + ", ".join(rule_name(c, names) for c in allowed)


def _drop_verdict(step: TraceStep, names: Names, allowed: tuple[int, ...]) -> Verdict:
    fields = match_fields(step.match)
    table = step.table
    isolated: tuple[str, ...] = ()
    if table == "IngressDefaultRule" and "reg1" in fields:
        ofport = int(fields["reg1"], 0)
        pod = names.pods.get(ofport, f"ofport {ofport}")
        isolated = tuple(names.isolated_ingress.get(pod, ()))
        text = f"dropped by IngressDefaultRule for {pod}" + _isolation_text(isolated, "ingress")
    elif table == "EgressDefaultRule" and "nw_src" in fields:
        pod = names.pod_ips.get(fields["nw_src"], fields["nw_src"])
        isolated = tuple(names.isolated_egress.get(pod, ()))
        text = f"dropped by EgressDefaultRule for {pod}" + _isolation_text(isolated, "egress")
    elif step.priority == 0:
        text = f"dropped by {table}: no flow matched (the table's miss)"
    else:
        owner = decode_owner(step.cookie, table, step.match, "", names)
        text = f"dropped by {table} ({step.match or 'any'}, {owner})"
    return Verdict("dropped", None, None, step, text, allowed, isolated)


def _isolation_text(policies: Sequence[str], direction: str) -> str:
    if not policies:
        return ""
    noun = "policy" if len(policies) == 1 else "policies"
    return f" (isolated for {direction} by {noun} {', '.join(policies)})"


def is_address(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True
