"""plumbctl.intent: the model's reasons for a verdict, and conjunction ids named as policy rules by
comparing the model's clause flows with a captured dump (tests/unit/fixtures/inspect/)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flows import annotate
from flows.policy import LocalTarget
from plumbctl import intent

FIXTURES = Path(__file__).parent / "fixtures" / "inspect"


def pod(name: str, ip: str, app: str) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {"namespace": "x", "name": name, "labels": {"app": app}},
        "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80}]}]},
        "status": {"podIP": ip, "phase": "Running"},
    }


PODS = [pod("a", "10.10.1.5", "a"), pod("b", "10.10.1.6", "b"), pod("c", "10.10.1.7", "c")]
NAMESPACES = [{"kind": "Namespace", "metadata": {"name": "x"}}]
POLICY = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"namespace": "x", "name": "b-allow-a", "uid": "uid-b"},
    "spec": {
        "podSelector": {"matchLabels": {"app": "b"}},
        "ingress": [
            {"from": [{"podSelector": {"matchLabels": {"app": "a"}}}], "ports": [{"port": 80}]}
        ],
    },
}
# The dump's bridge had x/a and x/b only (ports 3 and 4).
LOCAL = {("x", "a"): LocalTarget(3, "10.10.1.5"), ("x", "b"): LocalTarget(4, "10.10.1.6")}


def world():
    return intent.world_of(PODS, NAMESPACES, [POLICY])


def test_intent_says_who_isolates_and_which_rule_allows():
    allowed = intent.intent(world(), ("x", "a"), ("x", "b"), "TCP", 80)
    assert allowed.allowed
    assert allowed.ingress_isolated_by == ("x/b-allow-a",)
    assert allowed.ingress_allowed_by == ("x/b-allow-a ingress[0]",)
    assert allowed.egress_isolated_by == ()
    denied = intent.intent(world(), ("x", "c"), ("x", "b"), "TCP", 80)
    assert not denied.allowed and denied.ingress_allowed_by == ()
    assert denied.reason() == (
        "egress: not isolated; ingress: isolated by x/b-allow-a, no rule allows it"
    )
    assert not intent.intent(world(), ("x", "a"), ("x", "b"), "TCP", 81).allowed


def test_isolation_maps():
    ingress, egress = intent.isolation_maps(world())
    assert ingress == {"x/b": ["x/b-allow-a"]} and egress == {}


def test_conjunctions_are_named_by_their_clause_flows():
    flows = annotate.parse_dump((FIXTURES / "dump_policy.txt").read_text())
    rules = intent.model_rules(PODS[:2], NAMESPACES, [POLICY], LOCAL)
    assert list(rules) == ["x/b-allow-a ingress[0]"]
    named, missing = intent.name_conjunctions(flows, rules)
    assert named == {0x80000001: "x/b-allow-a ingress[0]"} and missing == []


def test_a_missing_clause_flow_leaves_the_rule_unnamed_and_missing():
    flows = [
        f
        for f in annotate.parse_dump((FIXTURES / "dump_policy.txt").read_text())
        if "nw_src=10.10.1.5" not in f.match
    ]
    rules = intent.model_rules(PODS[:2], NAMESPACES, [POLICY], LOCAL)
    named, missing = intent.name_conjunctions(flows, rules)
    assert named == {} and missing == ["x/b-allow-a ingress[0]"]
