"""Compiling rules to conjunctive flows: goldens, normalisation and sharing of clause flows,
port masks and ipBlock arithmetic, conjunction ids across restart rounds, owners, and flow
counts that add rather than multiply."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.diff import index_flows
from flows.flow import Conjunction
from flows.ofctl import render_flows
from flows.policy import (
    MAX_CONJ_SERIAL,
    MAX_CONJUNCTIONS_PER_FLOW,
    ConjIdAllocator,
    Direction,
    IPBlock,
    LocalTarget,
    Peers,
    PolicyFlowError,
    PolicyFlows,
    PortRange,
    Rule,
    RuleKey,
    block_cidrs,
    parse_cidr,
    port_masks,
    rule_clauses,
)
from tests.unit.netpol.golden_world import check_golden, golden_flows, rendered
from tests.unit.netpol.simulate import conjunction_completes, packet
from tests.unit.netpol.strategies import NODES, worlds

A, B = LocalTarget(3, "10.244.0.3"), LocalTarget(4, "10.244.0.4")
TCP, UDP = 6, 17


def key(index: int = 0, direction: Direction = Direction.INGRESS, group: str = "") -> RuleKey:
    return RuleKey("uid", direction, index, group)


def test_golden_world_renders_to_golden():
    check_golden("policy", rendered())


def test_every_policy_flow_carries_the_policy_category_and_round():
    for flow in golden_flows(round_=7):
        assert flow.cookie >> 48 == 7 and (flow.cookie >> 40) & 0xFF == 4, flow


# --- normalisation and sharing ------------------------------------------------------------------


def test_an_address_and_its_slash_32_are_one_clause_flow_carrying_both_rules():
    flows = PolicyFlows(2)
    rules = [
        Rule(key(0), frozenset({A}), Peers(ips=frozenset({"10.0.0.5"}))),
        Rule(key(1), frozenset({A}), Peers(blocks=frozenset({IPBlock("10.0.0.5/32")}))),
    ]
    flows.update_policy("x/p", rules, {}, 0.0)
    lines = render_flows(flows.owner_flows("policy/peer/10.0.0.5"))
    assert lines == [
        " cookie=0x2040000000000, table=IngressRule, priority=200,ip,nw_src=10.0.0.5 "
        "actions=conjunction(1,1/2),conjunction(2,1/2)"
    ]


def test_clause_actions_are_appended_across_policies_and_removed_one_by_one():
    flows = PolicyFlows(2)
    flows.update_policy("x/one", [Rule(RuleKey("u1", Direction.INGRESS, 0), frozenset({A}))], {}, 0)
    flows.update_policy("x/two", [Rule(RuleKey("u2", Direction.INGRESS, 0), frozenset({A}))], {}, 0)
    (target,) = flows.owner_flows("policy/ofport/3")
    assert [a.conj_id for a in target.actions if isinstance(a, Conjunction)] == [1, 2]
    changed = flows.remove_policy("x/one", 1.0)
    assert changed == {"policy/ofport/3", "policy/any", "policy/rule/1"}
    (target,) = flows.owner_flows("policy/ofport/3")
    assert [a.conj_id for a in target.actions if isinstance(a, Conjunction)] == [2]
    flows.remove_policy("x/two", 1.0)
    assert flows.owner_flows("policy/ofport/3") == []
    assert flows.owners() == set()


def test_a_single_dimension_rule_gets_the_catch_all_clause():
    clauses = rule_clauses(Rule(key(), frozenset({A})))
    assert clauses == [{("IngressRule", "target", 3)}, {("IngressRule", "any", None)}]


def test_peers_covering_everything_are_no_dimension():
    everything = Peers(blocks=frozenset({IPBlock("0.0.0.0/0")}))
    assert rule_clauses(
        Rule(key(), frozenset({A}), everything, frozenset({PortRange(TCP, 80, 80)}))
    ) == [
        {("IngressRule", "target", 3)},
        {("IngressRule", "service", (TCP, 80, 0xFFFF))},
    ]


def test_a_rule_with_an_empty_dimension_has_no_flows_at_all():
    flows = PolicyFlows(1)
    changed = flows.update_policy("x/p", [Rule(key(), frozenset({A}), Peers())], {}, 0.0)
    assert all(flows.owner_flows(o) == [] for o in changed)
    assert not flows.live(key())
    assert flows.conj_id(key()) is not None, "the id is kept while the rule exists"


def test_egress_sources_match_the_pod_address_and_peers_the_destination():
    rule = Rule(key(0, Direction.EGRESS), frozenset({A}), Peers(frozenset({"10.0.0.9"})))
    flows = PolicyFlows(1)
    flows.update_policy("x/p", [rule], {Direction.EGRESS: [A]}, 0.0)
    text = render_flows(flows.all_flows())
    assert any(
        "EgressRule, priority=200,ip,nw_src=10.244.0.3 actions=conjunction" in t for t in text
    )
    assert any("EgressRule, priority=200,ip,nw_dst=10.0.0.9 actions=conjunction" in t for t in text)
    assert any(
        "EgressDefaultRule, priority=200,ip,nw_src=10.244.0.3 actions=drop" in t for t in text
    )


def test_a_rule_changing_its_clause_layout_renumbers_its_clauses():
    flows = PolicyFlows(2)
    from_peer = Rule(key(), frozenset({A}), Peers(frozenset({"10.0.0.5"})))
    on_port = Rule(key(), frozenset({A}), None, frozenset({PortRange(TCP, 80, 80)}))
    flows.update_policy("x/p", [from_peer], {}, 0.0)
    assert flows.contexts()[("IngressRule", "target", 3)] == {1: (2, 2)}
    flows.update_policy("x/p", [on_port], {}, 0.0)
    assert dict(flows.contexts()) == {
        ("IngressRule", "target", 3): {1: (1, 2)},
        ("IngressRule", "service", (TCP, 80, 0xFFFF)): {1: (2, 2)},
    }


def test_a_peer_joining_a_rule_touches_only_its_clause_key():
    flows = PolicyFlows(2)
    peers = frozenset(f"10.0.0.{i}" for i in range(1, 101))
    flows.update_policy("x/p", [Rule(key(), frozenset({A}), Peers(peers))], {}, 0.0)
    bigger = Rule(key(), frozenset({A}), Peers(peers | {"10.0.1.1"}))
    assert flows.update_policy("x/p", [bigger], {}, 0.0) == {"policy/peer/10.0.1.1"}


def test_a_clause_shared_by_more_rules_than_one_flow_holds_is_a_clear_error():
    flows = PolicyFlows(2)
    for i in range(MAX_CONJUNCTIONS_PER_FLOW + 1):
        rule = Rule(RuleKey(f"u{i}", Direction.INGRESS, 0), frozenset({A}))
        flows.update_policy(f"x/p{i}", [rule], {}, 0.0)
    with pytest.raises(PolicyFlowError, match="4001 rules share the clause IngressRule target=3"):
        flows.owner_flows("policy/ofport/3")


def test_isolation_drops_are_counted_across_policies():
    flows = PolicyFlows(1)
    flows.update_policy("x/one", [], {Direction.INGRESS: [A]}, 0.0)
    assert flows.update_policy("x/two", [], {Direction.INGRESS: [A]}, 0.0) == set()
    assert flows.remove_policy("x/one", 0.0) == set()
    assert len(flows.owner_flows("policy/ofport/3")) == 1
    assert flows.remove_policy("x/two", 0.0) == {"policy/ofport/3"}
    assert flows.owner_flows("policy/ofport/3") == []


def test_the_matches_of_a_pods_clause_keys_go_with_the_pod():
    # Pod churn must not leave anything behind (the soak's memory curve): each pod's address
    # (a peer and a source key) and port (a target and a drop key) come and go with it.
    flows = PolicyFlows(1)
    web = Rule(key(0), frozenset({A}), Peers(frozenset({"10.0.0.9"})))
    egress = Rule(key(1, Direction.EGRESS), frozenset({A}), Peers(frozenset({"10.0.0.9"})))
    flows.update_policy("x/p", [web, egress], {Direction.INGRESS: [A]}, 0.0)
    flows.all_flows()
    baseline = dict(flows._matches)
    for i in range(1, 200):
        pod = LocalTarget(100 + i, f"10.244.1.{i}")
        peers = Peers(frozenset({"10.0.0.9", f"10.0.1.{i}"}))
        rules = [
            Rule(key(0), frozenset({A, pod}), peers),
            Rule(egress.key, frozenset({A, pod}), peers),
        ]
        flows.update_policy("x/p", rules, {Direction.INGRESS: [A, pod]}, 0.0)
        assert len(flows.all_flows()) > len(baseline)
        flows.update_policy("x/p", [web, egress], {Direction.INGRESS: [A]}, 0.0)
        flows.all_flows()
    assert flows._matches == baseline


@given(
    st.lists(
        st.one_of(
            st.integers(0, 300).map(str),
            st.sampled_from(["", "00", "01", "+1", " 1", "1 ", "0x1", "1_0", "\u0661", "a"]),
        ),
        min_size=1,
        max_size=5,
    ),
    st.sampled_from(["", "/8", "/32", "/33"]),
)
def test_parse_cidr_agrees_with_ipaddress(parts, suffix):
    text = ".".join(parts) + suffix
    try:
        net = ipaddress.ip_network(text, strict=False)
        expected: object = (int(net.network_address), net.prefixlen) if net.version == 4 else None
    except ValueError:
        expected = ValueError
    try:
        got: object = parse_cidr(text)
    except ValueError:
        got = ValueError
    assert got == expected, text


# --- arithmetic ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lo", "hi", "masks"),
    [
        (80, 80, [(80, 0xFFFF)]),
        (1000, 1010, [(1000, 0xFFF8), (1008, 0xFFFE), (1010, 0xFFFF)]),
        (1, 65535, [(1, 0xFFFF), (2, 0xFFFE), (4, 0xFFFC)]),
    ],
)
def test_port_masks_examples(lo, hi, masks):
    assert port_masks(lo, hi)[: len(masks)] == masks


@settings(max_examples=300)
@given(st.integers(1, 65535), st.integers(0, 65535))
def test_port_masks_cover_exactly_the_range(lo, width):
    hi = min(65535, lo + width % 3000)
    masks = port_masks(lo, hi)
    assert len(masks) <= 32
    covered: set[int] = set()
    for value, mask in masks:
        size = (~mask & 0xFFFF) + 1
        assert value & ~mask & 0xFFFF == 0
        covered.update(range(value, value + size))
    assert covered == set(range(lo, hi + 1))


@settings(max_examples=200)
@given(
    st.integers(8, 24),
    st.lists(st.tuples(st.integers(0, 2**16 - 1), st.integers(0, 8)), max_size=3),
    st.lists(st.integers(0, 2**32 - 1), min_size=20, max_size=20),
)
def test_ip_block_minus_excepts_covers_exactly_what_remains(prefix, holes, probes):
    outer = ipaddress.IPv4Network(f"10.0.0.0/{prefix}")
    excepts = []
    for offset, extra in holes:
        size = min(32, prefix + 1 + extra)
        base = int(outer.network_address) + (offset << (32 - size)) % outer.num_addresses
        excepts.append(str(ipaddress.IPv4Network((base, size), strict=False)))
    cidrs = block_cidrs(IPBlock(str(outer), tuple(excepts)))
    nets = [ipaddress.IPv4Network((n, p)) for n, p in cidrs]
    inside = [int(outer.network_address) + p % outer.num_addresses for p in probes]
    for address in [*inside, *probes]:
        ip = ipaddress.IPv4Address(address)
        expected = ip in outer and not any(ip in ipaddress.IPv4Network(e) for e in excepts)
        assert any(ip in n for n in nets) == expected


def test_ipv6_blocks_compile_to_nothing_on_the_ipv4_datapath():
    assert block_cidrs(IPBlock("fd00::/64")) == ()


# --- conjunction ids ----------------------------------------------------------------------------


def test_ids_are_stable_per_key_and_carry_the_round_parity():
    odd, even = ConjIdAllocator(1), ConjIdAllocator(2)
    assert odd.allocate(key(0), 0) == 0x80000001 and odd.allocate(key(0), 5) == 0x80000001
    assert odd.allocate(key(1), 0) == 0x80000002
    assert even.allocate(key(0), 0) == 1
    assert odd.allocate(key(0, group="6:80"), 0) == 0x80000003, "each resolution group its own"


def test_released_ids_are_reused_only_after_the_delay_oldest_first():
    ids = ConjIdAllocator(2, reuse_delay=5.0)
    first, second = ids.allocate(key(0), 0), ids.allocate(key(1), 0)
    ids.release(key(0), 10.0)
    ids.release(key(1), 11.0)
    assert ids.allocate(key(2), 12.0) == 3, "too early to reuse"
    assert ids.allocate(key(3), 15.0) == first
    assert ids.allocate(key(4), 16.0) == second


def test_serials_stay_below_the_parity_bit():
    ids = ConjIdAllocator(1, reuse_delay=0)
    ids._next = MAX_CONJ_SERIAL
    last = ids.allocate(key(0), 0)
    assert last == 0xFFFFFFFF
    with pytest.raises(RuntimeError):
        ids.allocate(key(1), 0)
    ids.release(key(0), 0)
    assert ids.allocate(key(1), 0) == last


def _overlay_allows(old: PolicyFlows, new: PolicyFlows, pkt) -> bool:
    """The bridge while a restart is halfway: the new round's flows replaced the old ones with
    the same key; the old round's other flows are still there (their action flows too)."""
    merged = PolicyFlows(0)
    merged._contexts = {**old.contexts(), **new.contexts()}  # type: ignore[dict-item]
    return conjunction_completes(merged, "IngressRule", pkt)


def _restart_scenario(old_round: int, new_round: int) -> tuple[PolicyFlows, PolicyFlows]:
    # Before: 10.0.0.5 may reach A, 10.0.0.7 may reach B. After: only 10.0.0.6 may reach B.
    old, new = PolicyFlows(old_round), PolicyFlows(new_round)
    old.update_policy(
        "x/p",
        [
            Rule(key(0), frozenset({A}), Peers(frozenset({"10.0.0.5"}))),
            Rule(key(1), frozenset({B}), Peers(frozenset({"10.0.0.7"}))),
        ],
        {Direction.INGRESS: [A, B]},
        0,
    )
    new.update_policy("x/p", [Rule(key(1), frozenset({B}), Peers(frozenset({"10.0.0.6"})))], {}, 0)
    return old, new


def test_two_coexisting_rounds_never_complete_each_others_conjunctions():
    old, new = _restart_scenario(1, 2)
    stray = packet("10.0.0.5", "10.244.0.4", B.ofport, "TCP", 80)
    assert not _overlay_allows(old, new, stray), "10.0.0.5 -> B was never allowed"
    allowed = packet("10.0.0.6", "10.244.0.4", B.ofport, "TCP", 80)
    assert _overlay_allows(old, new, allowed)
    old_ids = {c for actions in old.contexts().values() for c in actions}
    new_ids = {c for actions in new.contexts().values() for c in actions}
    assert not old_ids & new_ids


def test_without_the_parity_bit_the_rounds_would_mix():
    # Rounds 1 and 3 share a parity (they never coexist); here they show what the bit prevents.
    old, new = _restart_scenario(1, 3)
    assert _overlay_allows(old, new, packet("10.0.0.5", "10.244.0.4", B.ofport, "TCP", 80))


# --- owners and growth --------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(worlds())
def test_every_flow_key_belongs_to_exactly_one_owner(w):
    from tests.unit.netpol.simulate import node_state

    for node in NODES:
        _model, flows = node_state(w.namespaces, w.pods, w.policies, node)
        seen: dict[object, str] = {}
        for owner in flows.owners():
            owned = flows.owner_flows(owner)
            assert owned, owner
            for flow_key in index_flows(owned):
                assert flow_key not in seen, (flow_key, owner, seen.get(flow_key))
                seen[flow_key] = owner


def scale_flows(policies: int, targets: int, peers: int) -> PolicyFlows:
    """P policies, each: the same Q local targets, from the same R peers, on its own port."""
    local = frozenset(LocalTarget(10 + i, f"10.1.{i // 250}.{i % 250 + 1}") for i in range(targets))
    addresses = frozenset(f"10.2.{i // 250}.{i % 250 + 1}" for i in range(peers))
    flows = PolicyFlows(1)
    for p in range(policies):
        rule = Rule(
            RuleKey(f"p{p}", Direction.INGRESS, 0),
            local,
            Peers(addresses),
            frozenset({PortRange(TCP, 1000 + p, 1000 + p)}),
        )
        flows.update_policy(f"ns/p{p}", [rule], {Direction.INGRESS: local}, 0.0)
    return flows


def flow_count(policies: int, targets: int, peers: int) -> int:
    return len(scale_flows(policies, targets, peers).all_flows())


def test_flow_count_adds_policies_targets_and_peers():
    # Per policy: action + 2 metrics + a port clause; per target: clause + drop; per peer: clause.
    for p, q, r in [(1, 1, 1), (10, 10, 10), (100, 10, 10), (10, 100, 10), (10, 10, 100)]:
        assert flow_count(p, q, r) == 4 * p + 2 * q + r
    assert flow_count(100, 100, 100) < 100 * 100


def test_a_peer_joining_touches_one_owner():
    flows = scale_flows(20, 20, 20)
    local = frozenset(LocalTarget(10 + i, f"10.1.0.{i + 1}") for i in range(20))
    addresses = frozenset(f"10.2.0.{i + 1}" for i in range(20)) | {"10.9.9.9"}
    rule = Rule(
        RuleKey("p3", Direction.INGRESS, 0),
        local,
        Peers(addresses),
        frozenset({PortRange(TCP, 1003, 1003)}),
    )
    changed = flows.update_policy("ns/p3", [rule], {Direction.INGRESS: local}, 1.0)
    assert changed == {"policy/peer/10.9.9.9"}


def test_ports_text_orders_a_whole_protocol_beside_its_ports() -> None:
    """Found by the lab's random worlds: `{protocol: UDP}` (every port) beside `UDP 53` made
    the policy status (agent and plumbctl) compare None with an int."""
    from flows.policy import PortRange, ports_text

    ports = frozenset({PortRange(17, 53, 53), PortRange(17), PortRange(6, 8000, 8080)})
    assert ports_text(ports) == "TCP/8000-8080, UDP, UDP/53"
    assert ports_text(None) == "any"
    assert ports_text(frozenset()) == "none"
