"""plumbctl.intent.side_allows: one end's part of the model's verdict, what that end's node
enforces when `explain` can look at one node only."""

from __future__ import annotations

import itertools
from typing import Any

from flows.policy import Direction
from plumbctl import intent


def pod(name: str, ip: str, app: str) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {"namespace": "x", "name": name, "labels": {"app": app}},
        "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80}]}]},
        "status": {"podIP": ip, "phase": "Running"},
    }


def policy(name: str, selects: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "NetworkPolicy",
        "metadata": {"namespace": "x", "name": name},
        "spec": {"podSelector": {"matchLabels": {"app": selects}}, **spec},
    }


PODS = [pod("a", "10.10.1.5", "a"), pod("b", "10.10.1.6", "b"), pod("c", "10.10.2.7", "c")]
NAMESPACES = [{"kind": "Namespace", "metadata": {"name": "x"}}]
B_TAKES_A_ON_80 = policy(
    "b-takes-a",
    "b",
    {
        "ingress": [
            {"from": [{"podSelector": {"matchLabels": {"app": "a"}}}], "ports": [{"port": 80}]}
        ]
    },
)
A_TALKS_TO_C_ONLY = policy(
    "a-to-c",
    "a",
    {
        "policyTypes": ["Egress"],
        "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "c"}}}]}],
    },
)
WORLD = intent.world_of(PODS, NAMESPACES, [B_TAKES_A_ON_80, A_TALKS_TO_C_ONLY])


def sides(src: str, dst: str, port: int) -> tuple[bool, bool]:
    ends = (("x", src), ("x", dst), "TCP", port)
    return (
        intent.side_allows(WORLD, Direction.EGRESS, *ends),
        intent.side_allows(WORLD, Direction.INGRESS, *ends),
    )


def test_each_side_is_judged_by_its_own_end_policies_only() -> None:
    assert sides("a", "b", 80) == (False, True)  # a's egress reaches only c; b takes a on 80
    assert sides("a", "c", 80) == (True, True)
    assert sides("c", "b", 80) == (True, False)  # c's egress is open; b takes only a
    assert sides("a", "b", 81) == (False, False)
    assert sides("b", "a", 80) == (True, True)  # a is isolated for egress, not for ingress


def test_the_verdict_is_both_sides() -> None:
    for src, dst in itertools.permutations("abc", 2):
        for port in (80, 81):
            egress, ingress = sides(src, dst, port)
            full = intent.intent(WORLD, ("x", src), ("x", dst), "TCP", port)
            assert full.allowed == (egress and ingress), (src, dst, port)
