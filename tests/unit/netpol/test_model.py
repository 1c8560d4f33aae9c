"""The incremental model: which rules a policy compiles to on this node, which policies a change
dirties, and (by property) that compiling incrementally equals compiling from scratch and that the
compiled flows decide exactly what the verdict decides."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.netpol_model import PolicyModel, World, pod_address_problem, pod_info, verdict
from flows.policy import Direction, IPBlock, LocalTarget, Peers, PolicyFlows, PortRange, RuleKey
from tests.unit.netpol.helpers import labels, load, namespace, pod, policy
from tests.unit.netpol.simulate import node_state, ofports, packet, passes
from tests.unit.netpol.strategies import EXTERNAL, NODES, PROBES, RandomWorld, worlds

A = LocalTarget(3, "10.0.0.1")
B = LocalTarget(4, "10.0.0.2")
NAMESPACES = [namespace("x", team="red"), namespace("y", team="blue")]
PODS = [
    pod("x", "a", "10.0.0.1", {"http": 8080}, app="web"),
    pod("x", "b", "10.0.0.2", {"http": 9090}, app="web"),
    pod("x", "c", "10.0.9.3", {"http": 8080}, node="node-b", app="web"),
    pod("y", "d", "10.0.1.4", {"http": 7070}, node="node-b", app="client"),
    pod("y", "e", "10.0.1.5", app="client"),
]
LOCAL = {("x", "a"): 3, ("x", "b"): 4}


def model_of(*policies, pods=PODS) -> PolicyModel:
    return load(NAMESPACES, list(pods), list(policies), LOCAL)


def rules_of(model: PolicyModel, ns: str = "x", name: str = "p"):
    return {(r.key.direction, r.key.index, r.key.group): r for r in model.compile((ns, name)).rules}


def test_targets_are_the_local_selected_pods_only():
    model = model_of(policy("x", "p", podSelector=labels(app="web"), ingress=[{}]))
    compiled = model.compile(("x", "p"))
    assert compiled.targets == (("x", "a"), ("x", "b"))
    assert compiled.isolated == {Direction.INGRESS: frozenset({A, B})}
    (rule,) = compiled.rules
    assert rule.targets == {A, B} and rule.peers is None and rule.ports is None


def test_a_policy_without_local_targets_compiles_to_nothing():
    model = model_of(policy("y", "p", ingress=[{}]))
    compiled = model.compile(("y", "p"))
    assert compiled.rules == () and compiled.isolated == {Direction.INGRESS: frozenset()}


def test_peers_are_pod_addresses_and_ip_blocks():
    peers = [
        {"namespaceSelector": labels(team="blue")},
        {"ipBlock": {"cidr": "172.16.0.0/12", "except": ["172.16.1.0/24"]}},
    ]
    model = model_of(policy("x", "p", ingress=[{"from": peers, "ports": [{"port": 80}]}]))
    (rule,) = rules_of(model).values()
    assert rule.peers == Peers(
        frozenset({"10.0.1.4", "10.0.1.5"}),
        frozenset({IPBlock("172.16.0.0/12", ("172.16.1.0/24",))}),
    )
    assert rule.ports == {PortRange(6, 80, 80)}


def test_a_selector_matching_nothing_gives_an_empty_peer_set_not_any():
    model = model_of(policy("x", "p", ingress=[{"from": [{"podSelector": labels(app="none")}]}]))
    (rule,) = rules_of(model).values()
    assert rule.peers == Peers()


def test_ingress_named_ports_split_the_targets_by_resolution():
    model = model_of(policy("x", "p", ingress=[{"ports": [{"port": "http"}, {"port": 22}]}]))
    got = rules_of(model)
    ingress = Direction.INGRESS
    assert set(got) == {(ingress, 0, ""), (ingress, 0, "6:8080"), (ingress, 0, "6:9090")}
    assert got[(ingress, 0, "")].ports == {PortRange(6, 22, 22)}
    assert got[(ingress, 0, "")].targets == {A, B}
    assert got[(ingress, 0, "6:8080")].targets == {A}
    assert got[(ingress, 0, "6:8080")].ports == {PortRange(6, 8080, 8080)}
    assert got[(ingress, 0, "6:9090")].targets == {B}


def test_egress_named_ports_split_the_peers_by_resolution():
    model = model_of(
        policy("x", "p", egress=[{"ports": [{"port": "http"}]}], policyTypes=["Egress"])
    )
    got = rules_of(model)
    egress = Direction.EGRESS
    assert set(got) == {(egress, 0, "6:7070"), (egress, 0, "6:8080"), (egress, 0, "6:9090")}
    assert got[(egress, 0, "6:8080")].peers == Peers(frozenset({"10.0.0.1", "10.0.9.3"}))
    assert got[(egress, 0, "6:7070")].peers == Peers(frozenset({"10.0.1.4"}))
    assert all(r.targets == {A, B} for r in got.values())


def test_rules_of_types_not_in_force_are_not_compiled():
    model = model_of(policy("x", "p", policyTypes=["Ingress"], egress=[{}]))
    assert rules_of(model) == {}
    assert model.compile(("x", "p")).isolated == {Direction.INGRESS: frozenset({A, B})}


def test_an_unrelated_pod_change_dirties_no_policy():
    model = model_of(
        policy("x", "p", ingress=[{"from": [{"podSelector": labels(app="client")}]}]),
        policy("y", "q", ingress=[{"from": [{"namespaceSelector": labels(team="red")}]}]),
    )
    unrelated = pod_info(pod("z", "lonely", "10.0.5.5", app="client"))
    assert model.set_pod(unrelated.key, unrelated) == set()
    relabel = pod_info(pod("y", "e", "10.0.1.5", app="client", extra="yes"))
    assert model.set_pod(relabel.key, relabel) == set(), "selectors of x/p never saw y pods"


def test_a_pod_label_change_dirties_the_policies_that_select_it():
    model = model_of(
        policy("x", "p", ingress=[{"from": [{"podSelector": labels(app="client")}]}]),
        policy("x", "q", podSelector=labels(app="other")),
    )
    changed = pod_info(pod("x", "b", "10.0.0.2", {"http": 9090}, app="client"))
    assert model.set_pod(changed.key, changed) == {("x", "p")}
    (rule,) = rules_of(model).values()
    assert "10.0.0.2" in rule.peers.ips


def test_a_namespace_label_change_moves_its_pods_in_and_out_of_peers():
    model = model_of(
        policy("x", "p", ingress=[{"from": [{"namespaceSelector": labels(team="green")}]}])
    )
    (rule,) = rules_of(model).values()
    assert rule.peers == Peers()
    assert model.set_namespace("y", {"team": "green"}) == {("x", "p")}
    (rule,) = rules_of(model).values()
    assert rule.peers.ips == {"10.0.1.4", "10.0.1.5"}
    assert model.set_namespace("y", {"team": "green"}) == set()
    assert model.set_namespace("y", None) == {("x", "p")}
    assert rules_of(model)[(Direction.INGRESS, 0, "")].peers == Peers()


def test_a_member_changing_its_address_dirties_the_policy():
    model = model_of(policy("x", "p", ingress=[{"from": [{"podSelector": labels(app="web")}]}]))
    moved = pod_info(pod("x", "c", "10.0.9.33", {"http": 8080}, node="node-b", app="web"))
    assert model.set_pod(moved.key, moved) == {("x", "p")}
    (rule,) = rules_of(model).values()
    assert rule.peers.ips == {"10.0.0.1", "10.0.0.2", "10.0.9.33"}
    # A local pod's address is its attachment's: the store's word does not change it.
    local = pod_info(pod("x", "b", "10.0.0.99", {"http": 9090}, app="web"))
    assert model.set_pod(local.key, local) == set()


def test_local_pods_coming_and_going_change_targets():
    model = model_of(policy("x", "p", ingress=[{}]))
    assert model.set_local_pods({("x", "a"): A}) == {("x", "p")}
    assert model.compile(("x", "p")).targets == (("x", "a"),)
    assert model.set_local_pods({("x", "a"): A}) == set()


def test_a_local_pod_uses_its_attachment_address_before_the_store_has_one():
    pending = pod("x", "a", None, app="web")
    model = load(NAMESPACES, [pending], [policy("x", "p", policyTypes=["Egress"])], {})
    assert model.compile(("x", "p")).targets == ()
    model.set_local_pods({("x", "a"): A})
    assert model.compile(("x", "p")).isolated == {Direction.EGRESS: frozenset({A})}


def test_pods_of_a_namespace_without_object_are_still_selected_by_name():
    model = load(
        [],
        [pod("q", "a", "10.0.0.1", app="web"), pod("x", "b", "10.0.0.2", app="web")],
        [
            policy(
                "x",
                "p",
                ingress=[
                    {
                        "from": [
                            {"namespaceSelector": labels(**{"kubernetes.io/metadata.name": "q"})}
                        ]
                    }
                ],
            )
        ],
        {("x", "b"): 4},
    )
    (rule,) = rules_of(model).values()
    assert rule.peers.ips == {"10.0.0.1"}


@pytest.mark.parametrize(
    ("status", "ip", "problem"),
    [
        ({"podIP": "10.0.0.1"}, "10.0.0.1", None),
        ({"podIPs": [{"ip": "fd00::1"}, {"ip": "10.0.0.1"}]}, "10.0.0.1", None),
        ({}, None, None),
        ({"podIP": ""}, None, None),
        ({"podIP": "not-an-ip"}, None, "status.podIP 'not-an-ip' is not an IP address"),
        (
            {"podIP": "x", "podIPs": [{"ip": "999.1.1.1"}]},
            None,
            "status.podIPs[0].ip '999.1.1.1' is not an IP address; "
            "status.podIP 'x' is not an IP address",
        ),
        ({"podIPs": ["10.0.0.1"]}, None, "status.podIPs[0] '10.0.0.1' is not an object with an ip"),
        ({"podIP": 167772161}, None, "status.podIP 167772161 is not an IP address"),
        ({"podIPs": "10.0.0.1", "podIP": "10.0.0.2"}, "10.0.0.2", "status.podIPs '10.0.0.1'"),
        ({"podIPs": [{"ip": "bad"}], "podIP": "10.0.0.2"}, "10.0.0.2", "'bad' is not an IP"),
    ],
)
def test_malformed_pod_addresses_are_ignored_and_described(status, ip, problem):
    obj = {"metadata": {"namespace": "x", "name": "p"}, "status": status}
    assert pod_info(obj).ip == ip
    found = pod_address_problem(obj)
    assert (found is None) == (problem is None) and (problem or "") in (found or "")


def test_container_ports_that_are_no_objects_are_skipped():
    obj = pod("x", "p", "10.0.0.1", {"http": 8080})
    obj["spec"]["containers"] += ["c2", {"name": "c3", "ports": [80, {"name": "x"}]}]
    obj["spec"]["initContainers"] = {"not": "a list"}
    assert pod_info(obj).named_ports == (("http", 6, 8080),)


def test_a_policy_stored_without_namespace_is_in_default_and_can_be_deleted():
    model = PolicyModel()
    obj = policy("default", "p")
    del obj["metadata"]["namespace"]
    assert model.set_policy(("", "p"), obj) == {("", "p")}
    spec = model.spec(("", "p"))
    assert spec is not None and spec.namespace == "default"
    model.set_policy(("", "p"), None)
    assert model.policy_keys() == []


# --- properties ------------------------------------------------------------------------------


def _endpoints(w: RandomWorld):
    return [*w.pod_keys(), *EXTERNAL]


def _node_of(w: RandomWorld, key) -> str | None:
    for obj in w.pods:
        if (obj["metadata"]["namespace"], obj["metadata"]["name"]) == key:
            return str(obj["spec"]["nodeName"])
    return None


def flows_decide(w: RandomWorld, states, ports, src, dst, protocol, port) -> bool:
    infos = {pod_info(p).key: pod_info(p) for p in w.pods}
    src_ip = str(infos[src].ip) if isinstance(src, tuple) else src
    dst_ip = str(infos[dst].ip) if isinstance(dst, tuple) else dst
    allowed = True
    src_node, dst_node = _node_of(w, src), _node_of(w, dst)
    if src_node is not None:
        allowed &= passes(states[src_node], packet(src_ip, dst_ip, None, protocol, port), "Egress")
    if dst_node is not None:
        ofport = ports[dst_node][dst].ofport
        allowed &= passes(
            states[dst_node], packet(src_ip, dst_ip, ofport, protocol, port), "Ingress"
        )
    return allowed


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds(max_pods=5, max_policies=3))
def test_compiled_flows_decide_what_the_verdict_decides(w):
    truth = World.of(w.policies, w.pods, w.namespaces)
    states = {n: node_state(w.namespaces, w.pods, w.policies, n)[1] for n in NODES}
    ports = {n: ofports(w.pods, n) for n in NODES}
    for src in _endpoints(w):
        for dst in _endpoints(w):
            if src == dst or (isinstance(src, str) and isinstance(dst, str)):
                continue
            for protocol, port in PROBES:
                expected = verdict(truth, src, dst, protocol, port)
                got = flows_decide(w, states, ports, src, dst, protocol, port)
                assert got == expected, (src, dst, protocol, port, w.policies)


def _structure(flows: PolicyFlows, model: PolicyModel, policies):
    """Clause contexts with conjunction ids replaced by rule keys (ids depend on history)."""
    by_id: dict[int, RuleKey] = {}
    for obj in policies:
        for rule in model.compile((obj["metadata"]["namespace"], obj["metadata"]["name"])).rules:
            conj_id = flows.conj_id(rule.key)
            if conj_id is not None:
                by_id[conj_id] = rule.key
    contexts = {
        key: frozenset((str(by_id[c]), clause) for c, clause in actions.items())
        for key, actions in flows.contexts().items()
    }
    return contexts, flows.isolated_keys()


def _apply_all(
    model, flows, w: RandomWorld, node: str, order: random.Random, deleted=(), before=None
):
    """Feed `w` as events in a random order; objects equal to their `before` version are not
    sent again (the store drops such no-op updates too)."""
    seen = [] if before is None else [*before.namespaces, *before.pods, *before.policies]
    events: list[tuple[str, Any]] = [("ns", ns) for ns in w.namespaces]
    events += [("pod", p) for p in w.pods] + [("policy", p) for p in w.policies]
    events += [("local", None), *deleted]
    events = [(kind, obj) for kind, obj in events if obj is None or obj not in seen]
    order.shuffle(events)
    dirty = set()
    for kind, obj in events:
        if kind == "ns":
            dirty |= model.set_namespace(obj["metadata"]["name"], obj["metadata"].get("labels"))
        elif kind == "pod":
            info = pod_info(obj)
            dirty |= model.set_pod(info.key, info)
        elif kind == "policy":
            dirty |= model.set_policy((obj["metadata"]["namespace"], obj["metadata"]["name"]), obj)
        elif kind == "local":
            dirty |= model.set_local_pods(ofports(w.pods, node))
        elif kind == "gone-pod":
            dirty |= model.set_pod(obj, None)
        elif kind == "gone-policy":
            dirty |= model.set_policy(obj, None)
        elif kind == "gone-ns":
            dirty |= model.set_namespace(obj, None)
    for key in dirty:
        compiled = model.compile(key)
        flows.update_policy(f"{key[0]}/{key[1]}", compiled.rules, compiled.isolated, 1.0)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds(), worlds(), st.randoms(use_true_random=False))
def test_incremental_changes_end_where_a_fresh_start_does(first, second, order):
    node = "node-a"
    model, flows = PolicyModel(), PolicyFlows(1)
    _apply_all(model, flows, first, node, order)
    keys2 = set(second.pod_keys())
    gone = [("gone-pod", k) for k in first.pod_keys() if k not in keys2]
    policies2 = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in second.policies}
    gone += [
        ("gone-policy", (p["metadata"]["namespace"], p["metadata"]["name"]))
        for p in first.policies
        if (p["metadata"]["namespace"], p["metadata"]["name"]) not in policies2
    ]
    names2 = {ns["metadata"]["name"] for ns in second.namespaces}
    gone += [
        ("gone-ns", ns["metadata"]["name"])
        for ns in first.namespaces
        if ns["metadata"]["name"] not in names2
    ]
    _apply_all(model, flows, second, node, order, gone, before=first)

    fresh_model, fresh_flows = node_state(second.namespaces, second.pods, second.policies, node)
    for obj in second.policies:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        assert model.compile(key) == fresh_model.compile(key), key
    assert _structure(flows, model, second.policies) == _structure(
        fresh_flows, fresh_model, second.policies
    )
