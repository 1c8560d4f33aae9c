"""Open vSwitch restarted under the agent: ovs-vswitchd killed and started again (the agent
replays its flow store within 2 s of OVS answering, probes recover), ovsdb-server killed and
started again (the agent reconnects: a pod can be added and removed; no port doubled or lost,
no flow changed, the agent never restarted)."""

from __future__ import annotations

import json

import pytest

from bench import reliability

pytestmark = pytest.mark.lab


def test_vswitchd_killed_twice_the_agent_replays_within_two_seconds() -> None:
    figures = reliability.vswitchd_restart(runs=2, node="node2", kill=True)
    print(json.dumps(figures))
    assert figures["replay_after_answer_s_max"] is not None, "the flows never came back"
    assert figures["replay_after_answer_s_max"] < 2.0
    assert figures["probes_recovered_after_answer_s_max"] is not None
    assert figures["probes_recovered_after_answer_s_max"] < 2.0
    assert figures["leaked"] == 0
    assert figures["new_pod_after_restarts_s"] < 10


def test_ovsdb_server_killed_twice_the_agent_reconnects_and_nothing_is_lost() -> None:
    figures = reliability.ovsdb_restart(runs=2, node="node2", kill=True)
    print(json.dumps(figures))
    assert figures["agent_same_process"]
    assert figures["duplicate_ports"] == []
    assert figures["ports_lost"] == [] and figures["ports_left_over"] == []
    assert figures["ports_after"] == figures["ports_before"] > 3
    assert figures["flows_changed"] == 0
    assert figures["failed_probes"] == 0 and figures["leaked"] == 0
    assert figures["pod_add_after_restart_s_max"] < 10
