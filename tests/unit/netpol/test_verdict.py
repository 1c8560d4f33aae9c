"""The verdict: Kubernetes NetworkPolicy semantics, case by case."""

from __future__ import annotations

import pytest

from controller.netpol_model import LabelSelector, Requirement, World, verdict
from tests.unit.netpol.helpers import labels, namespace, pod, policy

NAMESPACES = [namespace("x", team="red"), namespace("y", team="blue"), namespace("z")]
PODS = [
    pod("x", "a", "10.0.0.1", {"http": 8080, "dns": (53, "UDP")}, app="a", tier="web"),
    pod("x", "b", "10.0.0.2", {"http": 9090}, app="b"),
    pod("y", "a", "10.0.1.1", {"http": 8080}, app="a"),
    pod("y", "c", "10.0.1.3", app="c"),
    pod("z", "a", "10.0.2.1", app="a"),
]
XA, XB, YA, YC, ZA = ("x", "a"), ("x", "b"), ("y", "a"), ("y", "c"), ("z", "a")


def world(*policies) -> World:
    return World.of(policies, PODS, NAMESPACES)


def reach(w: World, src, dst, port: int | None = 80, protocol: str = "TCP") -> bool:
    return verdict(w, src, dst, protocol, port)


def test_no_policy_allows_everything():
    w = world()
    assert reach(w, XA, YC) and reach(w, "8.8.8.8", XA) and reach(w, XA, XB, None, "ICMP")


def test_deny_all_ingress_isolates_only_the_selected_pods():
    w = world(policy("x", "deny", podSelector=labels(app="a")))
    assert not reach(w, XB, XA)
    assert not reach(w, YA, XA)
    assert reach(w, XA, XB), "only ingress is isolated"
    assert reach(w, YA, YC)


def test_ingress_empty_rule_allows_all():
    w = world(policy("x", "p", ingress=[{}]))
    assert reach(w, YC, XA) and reach(w, "1.2.3.4", XB, 9999, "UDP")


def test_ingress_empty_list_allows_nothing():
    w = world(policy("x", "p", ingress=[]))
    assert not reach(w, XB, XA) and not reach(w, XA, XB, None, "ICMP")


def test_pod_selector_peer_is_limited_to_the_policy_namespace():
    w = world(policy("x", "p", ingress=[{"from": [{"podSelector": labels(app="b")}]}]))
    assert reach(w, XB, XA)
    assert not reach(w, YC, XA)


def test_namespace_selector_peer_takes_every_pod_of_matching_namespaces():
    w = world(policy("x", "p", ingress=[{"from": [{"namespaceSelector": labels(team="blue")}]}]))
    assert reach(w, YA, XA) and reach(w, YC, XA)
    assert not reach(w, XB, XA), "its own namespace is not blue"
    assert not reach(w, ZA, XA)


def test_both_selectors_in_one_peer_are_anded():
    peer = {"namespaceSelector": labels(team="blue"), "podSelector": labels(app="a")}
    w = world(policy("x", "p", ingress=[{"from": [peer]}]))
    assert reach(w, YA, XA)
    assert not reach(w, YC, XA)
    assert not reach(w, ZA, XA)


def test_two_peers_are_ored():
    peers = [{"namespaceSelector": labels(team="blue")}, {"podSelector": labels(app="a")}]
    w = world(policy("x", "p", podSelector=labels(app="b"), ingress=[{"from": peers}]))
    assert reach(w, YC, XB) and reach(w, XA, XB)
    assert not reach(w, ZA, XB)


def test_empty_namespace_selector_means_all_namespaces():
    w = world(policy("x", "p", ingress=[{"from": [{"namespaceSelector": {}}]}]))
    assert reach(w, ZA, XA) and reach(w, XB, XA)
    assert not reach(w, "1.2.3.4", XA), "selectors never match addresses outside pods"


def test_namespace_name_label_is_always_there():
    peer = {"namespaceSelector": labels(**{"kubernetes.io/metadata.name": "z"})}
    w = world(policy("x", "p", ingress=[{"from": [peer]}]))
    assert reach(w, ZA, XA) and not reach(w, YA, XA)


@pytest.mark.parametrize(
    ("requirement", "allowed"),
    [
        (Requirement("team", "In", frozenset({"blue", "green"})), {"y"}),
        (Requirement("team", "NotIn", frozenset({"blue"})), {"x", "z"}),
        (Requirement("team", "Exists"), {"x", "y"}),
        (Requirement("team", "DoesNotExist"), {"z"}),
    ],
)
def test_match_expressions(requirement, allowed):
    expression = {
        "key": requirement.key,
        "operator": requirement.operator,
        **({"values": sorted(requirement.values)} if requirement.values else {}),
    }
    peer = {"namespaceSelector": {"matchExpressions": [expression]}}
    w = world(policy("x", "p", podSelector=labels(app="b"), ingress=[{"from": [peer]}]))
    got = {ns for ns, src in (("x", XA), ("y", YC), ("z", ZA)) if reach(w, src, XB)}
    assert got == allowed
    assert LabelSelector((), (requirement,)).matches({"team": "blue"}) == ("y" in allowed)


def test_ip_block_with_except():
    block = {"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.1.0/24"]}}
    w = world(policy("x", "p", podSelector=labels(app="a"), ingress=[{"from": [block]}]))
    assert reach(w, XB, XA), "10.0.0.2 is in the block"
    assert not reach(w, YC, XA), "10.0.1.3 is excepted"
    assert reach(w, "10.0.200.1", XA)
    assert not reach(w, "10.1.0.1", XA)


def test_ports_protocols_and_ranges():
    ports = [{"port": 80}, {"protocol": "UDP", "port": 1000, "endPort": 1010}, {"protocol": "SCTP"}]
    w = world(policy("x", "p", ingress=[{"ports": ports}]))
    assert reach(w, YC, XA, 80) and not reach(w, YC, XA, 81)
    assert not reach(w, YC, XA, 80, "UDP")
    assert reach(w, YC, XA, 1000, "UDP") and reach(w, YC, XA, 1010, "UDP")
    assert not reach(w, YC, XA, 1011, "UDP") and not reach(w, YC, XA, 999, "UDP")
    assert reach(w, YC, XA, 5, "SCTP") and reach(w, YC, XA, 65535, "SCTP")
    assert not reach(w, YC, XA, None, "ICMP"), "a rule with ports never allows ICMP"


def test_ingress_named_ports_resolve_on_each_target():
    w = world(policy("x", "p", ingress=[{"ports": [{"port": "http"}]}]))
    assert reach(w, YC, XA, 8080) and not reach(w, YC, XA, 9090)
    assert reach(w, YC, XB, 9090) and not reach(w, YC, XB, 8080)


def test_named_port_protocol_must_match_the_container_port():
    w = world(policy("x", "p", ingress=[{"ports": [{"port": "dns"}]}]))
    assert not reach(w, YC, XA, 53, "TCP")
    w = world(policy("x", "p", ingress=[{"ports": [{"port": "dns", "protocol": "UDP"}]}]))
    assert reach(w, YC, XA, 53, "UDP")


def test_egress_named_ports_resolve_on_the_peer():
    w = world(policy("y", "p", podSelector=labels(app="c"), egress=[{"ports": [{"port": "http"}]}]))
    assert reach(w, YC, XA, 8080) and reach(w, YC, XB, 9090)
    assert not reach(w, YC, XA, 9090) and not reach(w, YC, ZA, 8080)
    assert not reach(w, YC, "8.8.8.8", 8080), "an address outside pods has no named ports"


def test_egress_named_ports_do_not_resolve_through_ip_blocks():
    block = {"ipBlock": {"cidr": "10.0.0.0/24"}}
    w = world(
        policy(
            "y",
            "p",
            podSelector=labels(app="c"),
            egress=[{"to": [block], "ports": [{"port": "http"}, {"port": 22}]}],
        )
    )
    assert not reach(w, YC, XA, 8080)
    assert reach(w, YC, XA, 22)


def test_egress_isolation_and_allow():
    w = world(
        policy(
            "x",
            "p",
            podSelector=labels(app="a"),
            policyTypes=["Egress"],
            egress=[{"to": [{"podSelector": labels(app="b")}], "ports": [{"port": 80}]}],
        )
    )
    assert reach(w, XA, XB, 80) and not reach(w, XA, XB, 81)
    assert not reach(w, XA, YC, 80)
    assert not reach(w, XA, "8.8.8.8", 53, "UDP")
    assert reach(w, XB, XA, 81), "ingress of a is not isolated by an egress-only policy"


def test_policies_are_a_union():
    w = world(
        policy("x", "one", ingress=[{"from": [{"podSelector": labels(app="b")}]}]),
        policy("x", "two", ingress=[{"from": [{"namespaceSelector": labels(team="blue")}]}]),
    )
    assert reach(w, XB, XA) and reach(w, YC, XA) and not reach(w, ZA, XA)


def test_both_ends_must_allow():
    w = world(
        policy("x", "in", podSelector=labels(app="a"), ingress=[{"ports": [{"port": 80}]}]),
        policy("y", "out", podSelector=labels(app="c"), egress=[{"ports": [{"port": 81}]}]),
    )
    assert not reach(w, YC, XA, 80), "egress of y/c allows only 81"
    assert not reach(w, YC, XA, 81), "ingress of x/a allows only 80"
    assert reach(w, YA, XA, 80)


def test_a_pod_always_reaches_itself():
    w = world(policy("x", "deny", policyTypes=["Ingress", "Egress"]))
    assert reach(w, XA, XA)
    assert not reach(w, XA, XB)


def test_pods_without_address_and_host_network_pods_are_not_selected():
    pods = [
        *PODS,
        pod("x", "pending", None, app="a"),
        {**pod("x", "host", "192.168.1.10", app="a"), "spec": {"hostNetwork": True}},
    ]
    w = World.of([policy("x", "deny")], pods, NAMESPACES)
    assert reach(w, XA, ("x", "host")), "a host-network pod is not isolated"
    assert not reach(w, XA, ("x", "pending")), "no address: nothing reaches it"
