"""The switch room against a real ovs-vswitchd: goldens, diffs, atomic bundles, replay."""

from __future__ import annotations

import time
import uuid

import pytest

from controller.bridge import BridgeSettings, ensure_node_bridge
from controller.openflow import SwitchDisconnected
from controller.switch import FlowInstallError, Switch
from flows.cookie import Category, object_filter
from flows.fields import OFPP_NORMAL
from flows.flow import GotoTable, Output, SetField, match
from flows.pipeline import table
from flows.skeleton import skeleton_flows
from tests.unit.flows.goldens import golden_lines
from tests.unit.flows.samples import sample_flows
from tests.unit.flows.test_pod import pod_and_gateway_flows

pytestmark = pytest.mark.ovs


@pytest.fixture
def bridge(ovs):
    name = f"br-{uuid.uuid4().hex[:8]}"
    ensure_node_bridge(ovs.db_remote, BridgeSettings(name=name, datapath_type="netdev"))
    deadline = time.monotonic() + 5
    while not ovs.mgmt_socket(name).exists():
        assert time.monotonic() < deadline, "bridge management socket never appeared"
        time.sleep(0.02)
    yield name
    ovs.vsctl("--if-exists", "del-br", name)


@pytest.fixture
def switch(ovs, bridge):
    sw = Switch(ovs.mgmt_socket(bridge), request_timeout=5, reconnect_max_delay=0.2)
    sw.start()
    sw.wait_connected(10)
    yield sw
    sw.stop()


def dump(ovs, bridge) -> list[str]:
    out = ovs.ofctl("-O", "OpenFlow15", "--names", "--no-stats", "dump-flows", bridge)
    return sorted(line for line in out.splitlines() if line.strip())


def test_skeleton_dump_equals_golden(ovs, bridge, switch):
    switch.replace_flows("pipeline", skeleton_flows(1))
    assert dump(ovs, bridge) == sorted(golden_lines("skeleton"))


def test_sample_flows_dump_equals_golden(ovs, bridge, switch):
    switch.replace_flows("samples", sample_flows())
    assert dump(ovs, bridge) == sorted(golden_lines("samples"))


def test_pod_flows_dump_equals_golden_with_port_names(ovs, bridge, switch):
    ovs.vsctl(
        "add-port",
        bridge,
        "web-0-3f2a9c",
        "--",
        "set",
        "interface",
        "web-0-3f2a9c",
        "type=internal",
        "ofport_request=3",
    )
    ovs.vsctl(
        "add-port",
        bridge,
        "plumb-gw0",
        "--",
        "set",
        "interface",
        "plumb-gw0",
        "type=internal",
        "ofport_request=32769",
    )
    switch.replace_flows("pod/default/web-0", pod_and_gateway_flows())
    assert dump(ovs, bridge) == sorted(golden_lines("pod"))


def test_table_names_are_visible_to_ovs_ofctl(ovs, bridge, switch):
    switch.replace_flows("pipeline", skeleton_flows(1))
    text = "\n".join(dump(ovs, bridge))
    for name in ("PipelineRootClassifier", "SpoofGuard", "ConntrackZone", "IngressRule", "Output"):
        assert f"table={name}," in text


def _port_flows(ports, goto="SpoofGuard"):
    return [table("Classifier").flow(190, match(in_port=p), [GotoTable(goto)], 0x10) for p in ports]


def test_replacing_an_owner_sends_only_the_difference(ovs, bridge, switch):
    switch.replace_flows("pods", _port_flows(range(1, 101)))
    before = switch.counters.flow_mods
    changed = _port_flows(range(1, 4), goto="ConntrackZone")
    kept = _port_flows(range(4, 99))
    added = _port_flows([500])
    diff = switch.replace_flows("pods", changed + kept + added)
    assert (len(diff.adds), len(diff.modifies), len(diff.deletes)) == (1, 3, 2)
    assert switch.counters.flow_mods - before == 6
    text = dump(ovs, bridge)
    assert len(text) == 99
    assert sum("goto_table:ConntrackZone" in line for line in text) == 3
    assert not any("in_port=99 " in line or "in_port=100 " in line for line in text)


def test_a_bundle_with_one_invalid_flow_changes_nothing(ovs, bridge, switch):
    switch.replace_flows("pipeline", skeleton_flows(1))
    before = dump(ovs, bridge)
    good = table("ARPResponder").flow(300, match(eth_type=0x0806), [Output(OFPP_NORMAL)], 0x20)
    # Setting an ARP field needs an ARP match: OVS refuses it; the declaration cannot know.
    bad = table("ARPResponder").flow(300, match(), [SetField.of("arp_op", 2)], 0x20)
    with pytest.raises(FlowInstallError) as raised:
        switch.replace_flows("broken", [good, bad])
    assert raised.value.flow_text == (
        "cookie=0x20, table=ARPResponder, priority=300 actions=set_field:2->arp_op"
    )
    assert "OFPBAC_MATCH_INCONSISTENT" in str(raised.value)
    assert dump(ovs, bridge) == before
    assert switch.installed("broken") == []


def test_flow_stats_by_cookie_select_one_owner(ovs, bridge, switch):
    switch.replace_flows("pod/a", pod_and_gateway_flows())
    stats = switch.flow_stats(*object_filter(1, Category.POD, 3))
    assert len(stats) == 5
    assert {s.cookie for s in stats} == {0x0001_0200_0000_0003}


def test_vswitchd_restart_replays_the_store(ovs, bridge, switch):
    switch.replace_flows("pipeline", skeleton_flows(1))
    switch.replace_flows("samples", sample_flows())
    expected = dump(ovs, bridge)
    ovs.stop_vswitchd()
    with pytest.raises(SwitchDisconnected):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            switch.replace_flows("late", _port_flows([9]))
            time.sleep(0.05)
    ovs.start_vswitchd()
    deadline = time.monotonic() + 10
    while dump(ovs, bridge) != expected:
        assert time.monotonic() < deadline, "store was not replayed after ovs-vswitchd restart"
        time.sleep(0.1)
    assert switch.counters.replays >= 1


def test_stop_leaves_flows_in_place(ovs, bridge, switch):
    switch.replace_flows("pipeline", skeleton_flows(1))
    switch.stop()
    assert dump(ovs, bridge) == sorted(golden_lines("skeleton"))


def test_metrics_follow_flows_per_table_and_operations(switch):
    from controller import metrics

    def classifier_flows():
        return metrics.REGISTRY.get_sample_value("plumb_agent_flows", {"table": "Classifier"}) or 0

    def adds():
        value = metrics.REGISTRY.get_sample_value(
            "plumb_agent_flow_operations_total", {"operation": "add"}
        )
        return value or 0

    flows_before, adds_before = classifier_flows(), adds()
    switch.replace_flows("metered", _port_flows(range(1, 11)))
    assert classifier_flows() - flows_before == 10
    assert adds() - adds_before == 10
    switch.replace_flows("metered", _port_flows(range(1, 4)))
    assert classifier_flows() - flows_before == 3
