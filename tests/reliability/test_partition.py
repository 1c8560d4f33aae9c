"""A node's underlay link cut, then healed: cross-node lanes fail while it is cut (the cut is
real), same-node lanes never do, no agent restarts or touches a flow while it is cut, and
cross-node traffic resumes within 2 s of the heal."""

from __future__ import annotations

import json

import pytest

from bench import reliability

pytestmark = pytest.mark.lab


def test_partition_then_heal_resumes_within_two_seconds_without_churn() -> None:
    figures = reliability.partition(cut=3.0, node="node2")
    print(json.dumps(figures))
    assert figures["cross_node_failed_while_cut"] > 0, "the cut did not cut"
    assert figures["same_node_failed"] == 0
    assert figures["leaked"] == 0
    assert figures["flow_mods_while_cut"] == {"node1": 0, "node2": 0}
    assert figures["agents_same_process"]
    assert figures["resumed_after_heal_s"] is not None
    assert figures["resumed_after_heal_s"] < 2.0
