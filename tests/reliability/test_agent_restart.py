"""Agent restarts without disruption (DESIGN section 8): one agent restarted ten times, every
other time by SIGKILL, while TCP and ICMP lanes probe across nodes and on one node, through
allowing ingress and egress policies: not one allowed probe fails, not one denied probe connects,
and afterwards the bridge holds flows of the latest round only."""

from __future__ import annotations

import json

import pytest

from bench import reliability

pytestmark = pytest.mark.lab


def test_ten_agent_restarts_lose_no_probe_and_leave_no_old_round() -> None:
    figures = reliability.agent_restart(runs=10, node="node2", kill="alternate")
    print(json.dumps(figures))
    assert figures["allowed_probes"] > 1000 and figures["denied_probes"] > 50
    assert figures["failed"] == 0, figures["failing_lanes"]
    assert figures["leaked"] == 0, figures["failing_lanes"]
    assert figures["round"] >= 11
    assert figures["flows_of_current_round"] > 0
    assert figures["flows_of_older_rounds"] == 0
