"""flows.annotate against real captures (tests/unit/fixtures/inspect/): dumps with counters,
owners from cookies, and ofproto/trace walks with their verdicts.

`dump_policy.txt`, `trace_allowed.txt` and `trace_dropped.txt` come from the bridge of
tests/ovs/test_inspect.py (PLUMB_RECORD_FIXTURES=1 rewrites them): pods x/a (ofport 3) and x/b
(ofport 4), x/b taking TCP 80 from x/a only. `dump_lab_node1.txt`, `trace_tunnel.txt` and
`trace_from_tunnel.txt` come from a two-node geneve lab (demo/client on node1 to demo/web on
node2, no policy).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flows import annotate
from flows.annotate import Names
from flows.cookie import Category, Cookie
from flows.node import node_object_id

FIXTURES = Path(__file__).parent / "fixtures" / "inspect"
POLICY_NAMES = Names(node="n1", pods={3: "x/a", 4: "x/b"}, pod_ips={"10.10.1.5": "x/a"})
LAB_NAMES = Names(
    node="node1",
    pods={1: "demo/db", 2: "demo/client"},
    nodes={node_object_id("node1"): "node1", node_object_id("node2"): "node2"},
    node_addresses={"172.30.0.12": "node2"},
)


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# --- dumps -------------------------------------------------------------------------------------


def test_dump_lines_parse_with_their_counters():
    flows = annotate.parse_dump(fixture("dump_lab_node1.txt"))
    assert len(flows) == 62
    assert all(f.n_packets is not None and f.n_bytes is not None for f in flows)
    first = flows[0]
    assert (first.table, first.priority, first.match) == ("PipelineRootClassifier", 200, "arp")
    assert first.actions == "goto_table:ARPSpoofGuard"
    assert (first.n_packets, first.n_bytes, first.table_id) == (9, 378, 0)


def test_text_is_what_ovs_ofctl_no_stats_prints():
    line = (
        " cookie=0x1020000000002, duration=1.846s, table=SpoofGuard, n_packets=19, n_bytes=1270,"
        ' idle_age=1, priority=200,ip,in_port="client-8db4178e",dl_src=76:26:cd:53:be:4b,'
        "nw_src=10.244.1.3 actions=goto_table:UnSNAT"
    )
    flow = annotate.parse_dump_line(line)
    assert flow.text == (
        ' cookie=0x1020000000002, table=SpoofGuard, priority=200,ip,in_port="client-8db4178e",'
        "dl_src=76:26:cd:53:be:4b,nw_src=10.244.1.3 actions=goto_table:UnSNAT"
    )
    assert flow.fields["in_port"] == "client-8db4178e"


def test_text_round_trips_every_captured_flow():
    for name in ("dump_lab_node1.txt", "dump_policy.txt"):
        for flow in annotate.parse_dump(fixture(name)):
            assert annotate.parse_dump_line(flow.text) == annotate.parse_dump_line(
                flow.text + "  # an annotation"
            )
            again = annotate.parse_dump_line(flow.text)
            assert (again.cookie, again.table, again.priority, again.match, again.actions) == (
                flow.cookie,
                flow.table,
                flow.priority,
                flow.match,
                flow.actions,
            )


def test_default_priority_and_empty_match_are_left_out_as_ovs_does():
    flow = annotate.parse_dump_line(
        " cookie=0x5, duration=1s, table=3, n_packets=0, n_bytes=0, actions=drop"
    )
    assert (flow.priority, flow.match, flow.text) == (
        32768,
        "",
        " cookie=0x5, table=3, actions=drop",
    )


def test_a_line_without_actions_is_refused():
    with pytest.raises(annotate.DumpParseError):
        annotate.parse_dump_line(" cookie=0x1, table=0, priority=1,ip")


# --- owners ------------------------------------------------------------------------------------


def owners(name: str, names: Names) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for flow in annotate.parse_dump(fixture(name)):
        out.setdefault(str(annotate.flow_owner(flow, names)), set()).add(flow.table)
    return out


def test_owners_of_a_lab_node():
    found = owners("dump_lab_node1.txt", LAB_NAMES)
    assert "SpoofGuard" in found["pod demo/client"] and "SpoofGuard" in found["pod demo/db"]
    assert found["node node2"] == {"ARPResponder", "L3Forwarding"}  # the peer's subnet
    assert found["node node1 (tunnel end)"] == {"Classifier", "L2ForwardingCalc"}
    assert "Classifier" in found["node node1 (local gateway)"]
    assert "Output" in found["pipeline"]


def test_owners_of_policy_flows():
    found = owners("dump_policy.txt", POLICY_NAMES)
    assert found["policy ingress isolation of x/b"] == {"IngressDefaultRule"}
    conj = 0x80000001
    assert found[f"policy rule {conj}"] == {"IngressRule", "IngressMetric"}
    assert found[f"policy clause from 10.10.1.5 (x/a) of rule {conj}"] == {"IngressRule"}
    assert found[f"policy clause to pod x/b of rule {conj}"] == {"IngressRule"}
    assert found[f"policy clause tcp/80 of rule {conj}"] == {"IngressRule"}


def test_rule_names_come_from_names():
    names = Names(rules={0x80000001: "x/b-allow-a ingress[0]"})
    owner = annotate.decode_owner(Cookie(1, Category.POLICY, 0x80000001).value, names=names)
    assert str(owner) == "policy rule 2147483649 (x/b-allow-a ingress[0])"


def test_unknown_category_is_foreign():
    owner = annotate.decode_owner(0x99 << 40)
    assert owner.category == "foreign"


# --- selections --------------------------------------------------------------------------------


def test_selections():
    flows = annotate.parse_dump(fixture("dump_policy.txt"))
    assert {f.table for f in annotate.in_table(flows, "25")} == {"IngressDefaultRule"}
    pod_b = annotate.of_pod(flows, 4, "10.10.1.6/24")
    assert any(f.table == "IngressDefaultRule" for f in pod_b)
    assert all(f.cookie & 0xFFFFFFFF == 4 or "reg1=0x4" in f.match for f in pod_b)
    rule = annotate.of_rules(flows, {0x80000001}, {4})
    assert len(rule) == 7  # action, 2 metrics, 3 clauses, the isolation drop
    assert annotate.current_round(flows, 2) == []
    counts = annotate.flows_per_table(flows)
    assert next(iter(counts)) == "PipelineRootClassifier" and counts["IngressRule"] == 6


def test_rule_views_rebuild_a_conjunction_from_its_flows():
    views = annotate.rule_views(annotate.parse_dump(fixture("dump_policy.txt")), POLICY_NAMES)
    view = views[0x80000001]
    assert view.direction == "Ingress" and view.n_clauses == 3
    assert view.describe() == "Ingress from 10.10.1.5 (x/a) | to pod x/b | tcp/80"


# --- traces ------------------------------------------------------------------------------------


def test_trace_passes_and_steps():
    passes = annotate.parse_trace(fixture("trace_tunnel.txt"))
    assert len(passes) == 2
    assert passes[1].header.startswith("recirc(0x1) - resume conntrack with ct_state=new|trk")
    steps = annotate.walk(passes, "br-int")
    assert [s.table for s in steps[:3]] == ["PipelineRootClassifier", "Classifier", "SpoofGuard"]
    assert steps[1].cookie == 0x1020000000002 and steps[1].match == "in_port=2"
    assert steps[3].priority == 0 and steps[3].match == ""
    assert steps[-1].table == "Output" and steps[-1].output_port == 32768
    assert annotate.with_table_names(steps[0].actions[0]) == "goto_table:Classifier"
    # The underlay bridge's steps are kept apart and keep their numbers.
    phy = [s for p in passes for s in p.steps if s.bridge == "br-phy"]
    assert [(s.table_id, s.actions) for s in phy] == [(0, ("NORMAL",))]


def test_verdict_tunnelled_names_the_peer_node():
    v = annotate.verdict(annotate.parse_trace(fixture("trace_tunnel.txt")), "br-int", LAB_NAMES)
    assert (v.kind, v.port, v.tunnel_dst) == ("tunnelled", 32768, "172.30.0.12")
    assert v.text == "tunnelled to node node2 (172.30.0.12)"


def test_verdict_from_the_tunnel_is_delivered_to_the_pod():
    names = Names(pods={1: "demo/web"})
    v = annotate.verdict(annotate.parse_trace(fixture("trace_from_tunnel.txt")), "br-int", names)
    assert (v.kind, v.port, v.text) == ("delivered", 1, "delivered to port 1 (pod demo/web)")


def test_verdict_allowed_names_the_rule():
    names = Names(pods={3: "x/a", 4: "x/b"}, rules={0x80000001: "x/b-allow-a ingress[0]"})
    passes = annotate.parse_trace(fixture("trace_allowed.txt"))
    assert len(passes) == 3  # conntrack zone, the rule's commit, then on to the output
    v = annotate.verdict(passes, names=names)
    assert v.kind == "delivered" and v.allowed_by == (0x80000001,)
    assert v.text == (
        "delivered to port 4 (pod x/b); allowed by rule 2147483649 (x/b-allow-a ingress[0])"
    )


def test_verdict_dropped_names_table_pod_and_isolating_policies():
    names = Names(pods={3: "x/a", 4: "x/b"}, isolated_ingress={"x/b": ["x/b-allow-a"]})
    v = annotate.verdict(annotate.parse_trace(fixture("trace_dropped.txt")), names=names)
    assert v.kind == "dropped" and v.step is not None and v.step.table == "IngressDefaultRule"
    assert v.isolated_by == ("x/b-allow-a",)
    assert v.text == (
        "dropped by IngressDefaultRule for x/b (isolated for ingress by policy x/b-allow-a)"
    )


def test_verdict_dropped_by_a_table_miss():
    text = fixture("trace_dropped.txt").replace("25. ip,reg1=0x4, priority 200", "4. priority 0")
    v = annotate.verdict(annotate.parse_trace(text))
    assert v.text == "dropped by SpoofGuard: no flow matched (the table's miss)"


def test_not_a_trace_is_refused():
    with pytest.raises(annotate.TraceParseError):
        annotate.parse_trace("ovs-appctl: cannot connect")
