"""plumb-agent end to end against the fake API server and a private OVS: it becomes ready,
installs the pipeline and the gateway flows of its node's PodCIDR, keeps every flow while the
API server is away and when it stops, and a restart moves every flow to the next round."""

from __future__ import annotations

import time
import urllib.request
import uuid

import pytest

from controller.agent import Agent
from controller.config import AgentConfig
from lab.fakeapi import FakeApiServer
from lab.ovs_sandbox import OvsSandbox, require_ovs_binaries
from tests.kube.conftest import NODE, populate, write_kubeconfig

pytestmark = pytest.mark.ovs


@pytest.fixture
def world(tmp_path):
    try:
        require_ovs_binaries()
    except Exception as exc:  # the OVS tier's own reason
        pytest.skip(str(exc))
    api = FakeApiServer(bookmark_interval=0.2)
    populate(api, 5)
    api.start()
    ovs = OvsSandbox(tmp_path / f"ovs-{uuid.uuid4().hex[:6]}")
    ovs.start()
    config = AgentConfig(
        node_name=NODE,
        source="kubernetes",
        kubeconfig=str(write_kubeconfig(tmp_path / "kubeconfig", api.url)),
        datapath_type="netdev",
        tunnel_type="geneve",
        ovs_rundir=str(ovs.rundir),
        health_bind_address="127.0.0.1:0",
        cni_socket=str(tmp_path / "cni.sock"),
        ipam_data_dir=str(tmp_path / "ipam"),
    )
    yield api, ovs, config
    api.stop()
    ovs.cleanup()


def dump(ovs: OvsSandbox) -> list[str]:
    out = ovs.ofctl("-O", "OpenFlow15", "--names", "--no-stats", "dump-flows", "br-int")
    return sorted(line for line in out.splitlines() if line.strip())


def test_agent_installs_pipeline_and_gateway_flows_and_reports_ready(world):
    _api, ovs, config = world
    agent = Agent(config, sync_timeout=10, netns=ovs.netns)
    agent.start()
    try:
        flows = dump(ovs)
        assert any('table=Classifier, priority=200,in_port="plumb-gw0"' in f for f in flows)
        assert any("nw_dst=10.244.0.0/24 actions=goto_table:L2ForwardingCalc" in f for f in flows)
        host, port = agent.health.address
        with urllib.request.urlopen(f"http://{host}:{port}/readyz") as answer:
            assert answer.status == 200
        assert ovs.vsctl("get", "bridge", "br-int", "external_ids:plumb.round").strip() == '"1"'
    finally:
        agent.stop()
    assert dump(ovs) == flows, "stopping the agent must leave every flow in place"


def test_flows_stay_while_the_api_server_is_away(world):
    api, ovs, config = world
    agent = Agent(config, sync_timeout=10, netns=ovs.netns)
    agent.start()
    try:
        before = dump(ovs)
        api.stop()
        time.sleep(3)
        assert dump(ovs) == before
        api.start()
    finally:
        agent.stop()


def test_restart_moves_every_flow_to_the_next_round(world):
    _api, ovs, config = world
    first = Agent(config, sync_timeout=10, netns=ovs.netns)
    first.start()
    first.stop()
    second = Agent(config, sync_timeout=10, netns=ovs.netns)
    second.start()
    try:
        flows = dump(ovs)
        assert second.round == 2
        assert all(" cookie=0x2" in f for f in flows), [f for f in flows if "cookie=0x2" not in f]
    finally:
        second.stop()
