"""Parsing NetworkPolicies: defaults, and every validation error named by policy and field."""

from __future__ import annotations

import pytest

from controller.netpol_model import (
    EVERYTHING,
    LabelSelector,
    PolicyError,
    PortSpec,
    Requirement,
    parse_policy,
)
from flows.policy import Direction, IPBlock
from tests.unit.netpol.helpers import labels, namespace, pod, policy


def test_policy_types_default_to_ingress_only_without_egress_rules():
    spec = parse_policy(policy("x", "p", ingress=[{}]))
    assert spec.types == {Direction.INGRESS}


def test_policy_types_default_adds_egress_when_egress_rules_exist():
    spec = parse_policy(policy("x", "p", egress=[{}]))
    assert spec.types == {Direction.INGRESS, Direction.EGRESS}


def test_an_empty_egress_list_does_not_make_an_egress_policy():
    assert parse_policy(policy("x", "p", egress=[])).types == {Direction.INGRESS}


def test_explicit_policy_types_win_and_rules_of_other_types_are_ignored():
    spec = parse_policy(policy("x", "p", policyTypes=["Egress"], ingress=[{}]))
    assert spec.types == {Direction.EGRESS}
    assert spec.rules(Direction.INGRESS) == ()
    assert spec.rules(Direction.EGRESS) == ()


def test_absent_and_empty_from_both_mean_every_peer():
    spec = parse_policy(policy("x", "p", ingress=[{}, {"from": []}]))
    assert [r.peers for r in spec.ingress] == [None, None]


def test_an_absent_pod_selector_selects_every_pod():
    obj = policy("x", "p")
    del obj["spec"]["podSelector"]
    assert parse_policy(obj).pod_selector == EVERYTHING


def test_ports_default_to_tcp_and_keep_names_and_ranges():
    spec = parse_policy(
        policy(
            "x",
            "p",
            ingress=[
                {
                    "ports": [
                        {"port": 80},
                        {"port": "http", "protocol": "UDP"},
                        {"protocol": "SCTP"},
                    ]
                },
                {"ports": [{"port": 1000, "endPort": 2000}]},
            ],
        )
    )
    assert spec.ingress[0].ports == (PortSpec(6, 80), PortSpec(17, "http"), PortSpec(132))
    assert spec.ingress[1].ports == (PortSpec(6, 1000, 2000),)


def test_selectors_and_ip_blocks_parse():
    spec = parse_policy(
        policy(
            "x",
            "p",
            podSelector={"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a"]}]},
            ingress=[
                {
                    "from": [
                        {"podSelector": labels(app="b"), "namespaceSelector": {}},
                        {"ipBlock": {"cidr": "10.0.0.7/8", "except": ["10.1.0.0/16"]}},
                    ]
                }
            ],
        )
    )
    assert spec.pod_selector == LabelSelector((), (Requirement("tier", "In", frozenset({"a"})),))
    peers = spec.ingress[0].peers
    assert peers is not None
    assert peers[0].pod_selector == LabelSelector((("app", "b"),))
    assert peers[0].namespace_selector == EVERYTHING
    assert peers[1].ip_block == IPBlock("10.0.0.0/8", ("10.1.0.0/16",))


def test_the_uid_defaults_to_the_name_for_manifests_without_one():
    obj = policy("x", "p")
    del obj["metadata"]["uid"]
    assert parse_policy(obj).uid == "x/p"


INVALID = [
    (
        {"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]},
        "spec.ingress[0].from[0].ipBlock.cidr: '10.0.0.0/33' is not a CIDR",
    ),
    (
        {"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.1"}}]}]},
        "spec.ingress[0].from[0].ipBlock.cidr: '10.0.0.1' is not a CIDR",
    ),
    (
        {"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]},
        "spec.egress[0].to[0].ipBlock.except[0]: '11.0.0.0/16' is not a strict subset of "
        "10.0.0.0/8",
    ),
    (
        {"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8"]}}]}]},
        "spec.egress[0].to[0].ipBlock.except[0]: '10.0.0.0/8' is not a strict subset of 10.0.0.0/8",
    ),
    (
        {"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["fd00::/64"]}}]}]},
        "spec.egress[0].to[0].ipBlock.except[0]: 'fd00::/64' is not a strict subset of 10.0.0.0/8",
    ),
    (
        {"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["bogus"]}}]}]},
        "spec.egress[0].to[0].ipBlock.except[0]: 'bogus' is not a CIDR",
    ),
    (
        {"ingress": [{"ports": [{"protocol": "ICMP", "port": 80}]}]},
        "spec.ingress[0].ports[0].protocol: 'ICMP' is not TCP, UDP or SCTP",
    ),
    (
        {"ingress": [{"ports": [{"protocol": "tcp"}]}]},
        "spec.ingress[0].ports[0].protocol: 'tcp' is not TCP, UDP or SCTP",
    ),
    (
        {"ingress": [{"ports": [{"port": "a-very-long-name"}]}]},
        "spec.ingress[0].ports[0].port: port name 'a-very-long-name' is longer than 15 characters",
    ),
    (
        {"ingress": [{"ports": [{"port": "Http"}]}]},
        "spec.ingress[0].ports[0].port: port name 'Http' is not an IANA_SVC_NAME",
    ),
    (
        {"ingress": [{"ports": [{"port": "80"}]}]},
        "spec.ingress[0].ports[0].port: port name '80' is not an IANA_SVC_NAME",
    ),
    (
        {"ingress": [{"ports": [{"port": "web--x"}]}]},
        "spec.ingress[0].ports[0].port: port name 'web--x' is not an IANA_SVC_NAME",
    ),
    (
        {"ingress": [{"ports": [{"port": "-web"}]}]},
        "spec.ingress[0].ports[0].port: port name '-web' is not an IANA_SVC_NAME",
    ),
    (
        {"ingress": [{"ports": [{"port": 0}]}]},
        "spec.ingress[0].ports[0].port: 0 is outside 1..65535",
    ),
    (
        {"ingress": [{"ports": [{"port": 70000}]}]},
        "spec.ingress[0].ports[0].port: 70000 is outside 1..65535",
    ),
    (
        {"ingress": [{"ports": [{"port": [80]}]}]},
        "spec.ingress[0].ports[0].port: [80] is not a port number or name",
    ),
    (
        {"egress": [{"ports": [{"port": 90, "endPort": 80}]}]},
        "spec.egress[0].ports[0].endPort: 80 is below port 90",
    ),
    (
        {"egress": [{"ports": [{"port": "http", "endPort": 80}]}]},
        "spec.egress[0].ports[0].endPort: endPort needs a numeric port",
    ),
    (
        {"egress": [{"ports": [{"endPort": 80}]}]},
        "spec.egress[0].ports[0].endPort: endPort needs a numeric port",
    ),
    (
        {"egress": [{"ports": [{"port": 80, "endPort": 65536}]}]},
        "spec.egress[0].ports[0].endPort: 65536 is outside 1..65535",
    ),
    (
        {"policyTypes": ["Ingress", "Sideways"]},
        "spec.policyTypes[1]: 'Sideways' is not Ingress or Egress",
    ),
    (
        {"ingress": [{"from": [{}]}]},
        "spec.ingress[0].from[0]: must specify podSelector, namespaceSelector or ipBlock",
    ),
    (
        {"ingress": [{"from": [{"podSelector": {}, "ipBlock": {"cidr": "10.0.0.0/8"}}]}]},
        "spec.ingress[0].from[0]: ipBlock may not be combined with podSelector or "
        "namespaceSelector",
    ),
    (
        {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Equals"}]}},
        "spec.podSelector.matchExpressions[0].operator: 'Equals' is not one of In, NotIn, "
        "Exists, DoesNotExist",
    ),
    (
        {"podSelector": {"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}},
        "spec.podSelector.matchExpressions[0].values: must be non-empty for In",
    ),
    (
        {
            "podSelector": {
                "matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]
            }
        },
        "spec.podSelector.matchExpressions[0].values: must be empty for Exists",
    ),
    (
        {"podSelector": {"matchLabels": {"enabled": True}}},
        "spec.podSelector.matchLabels.enabled: True is not a string",
    ),
    ({"ingress": {"from": []}}, "spec.ingress: must be a list"),
]


@pytest.mark.parametrize(("spec", "message"), INVALID, ids=[m.split(":")[0] for _, m in INVALID])
def test_invalid_policies_name_the_policy_and_field(spec, message):
    with pytest.raises(PolicyError) as caught:
        parse_policy(policy("x", "bad", **spec))
    assert str(caught.value).startswith(f"NetworkPolicy x/bad: {message}"), str(caught.value)
    assert caught.value.policy == "x/bad"


def test_every_problem_is_reported_at_once():
    bad = policy(
        "x",
        "bad",
        ingress=[{"from": [{"ipBlock": {"cidr": "nope"}}], "ports": [{"protocol": "GRE"}]}],
    )
    with pytest.raises(PolicyError) as caught:
        parse_policy(bad)
    fields = [p.field for p in caught.value.problems]
    assert fields == ["spec.ingress[0].from[0].ipBlock.cidr", "spec.ingress[0].ports[0].protocol"]


def test_an_invalid_policy_is_skipped_and_the_others_stay_in_force():
    from tests.unit.netpol.helpers import load

    model = load(
        [namespace("x")],
        [pod("x", "a", "10.0.0.1", app="a")],
        [
            policy("x", "good", podSelector=labels(app="a")),
            policy("x", "bad", ingress=[{"ports": [{"port": 90, "endPort": 80}]}]),
        ],
        local={("x", "a"): 3},
    )
    assert model.error(("x", "bad")) is not None
    assert model.error(("x", "good")) is None
    assert model.spec(("x", "bad")) is None
    assert model.compile(("x", "good")).isolated[Direction.INGRESS]
    assert model.compile(("x", "bad")).rules == ()


def test_a_policy_turning_invalid_keeps_its_last_valid_version_in_force():
    from tests.unit.netpol.helpers import load

    model = load(
        [namespace("x")],
        [pod("x", "a", "10.0.0.1", app="a")],
        [policy("x", "p", ingress=[{"ports": [{"port": 80}]}])],
        local={("x", "a"): 3},
    )
    before = model.compile(("x", "p"))
    model.set_policy(("x", "p"), policy("x", "p", ingress=[{"ports": [{"port": "Bad"}]}]))
    assert model.error(("x", "p")) is not None
    assert model.compile(("x", "p")) == before
    model.set_policy(("x", "p"), policy("x", "p", ingress=[{"ports": [{"port": 81}]}]))
    assert model.error(("x", "p")) is None
    assert model.compile(("x", "p")) != before
