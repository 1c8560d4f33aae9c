"""plumb-agent end to end against the fake API server and a private OVS: it becomes ready,
installs the pipeline and the gateway flows of its node's PodCIDR, keeps every flow while the
API server is away and when it stops, and a restart moves every flow to the next round."""

from __future__ import annotations

import dataclasses
import os
import time
import urllib.request
import uuid

import pytest

from cni.netns import in_netns, open_netns
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


def test_the_agent_process_serves_health_and_metrics_and_stops_on_sigterm(world, tmp_path):
    import signal
    import subprocess
    import sys

    import yaml

    _api, ovs, config = world
    # The process runs inside the node's namespace: so must the API server it talks to.
    api = FakeApiServer(bookmark_interval=0.2)
    populate(api, 5)
    fd = open_netns(f"/run/netns/{ovs.netns}")
    try:
        in_netns(fd, api.start)
    finally:
        os.close(fd)
    config = dataclasses.replace(
        config, kubeconfig=str(write_kubeconfig(tmp_path / "kubeconfig-in-node", api.url))
    )
    settings = {
        field: getattr(config, field)
        for field in (
            "node_name",
            "source",
            "kubeconfig",
            "datapath_type",
            "tunnel_type",
            "ovs_rundir",
            "cni_socket",
            "ipam_data_dir",
        )
    }
    settings["health_bind_address"] = "127.0.0.1:19641"
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(settings))
    in_node = ["ip", "netns", "exec", ovs.netns]
    agent = subprocess.Popen(
        [*in_node, sys.executable, "-m", "controller", "--config", str(path)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            ready = subprocess.run(
                [*in_node, "curl", "-sf", "http://127.0.0.1:19641/readyz"],
                capture_output=True,
                text=True,
            )
            if ready.returncode == 0:
                break
            assert agent.poll() is None, agent.stderr.read() if agent.stderr else ""
            assert time.monotonic() < deadline, "agent never became ready"
            time.sleep(0.2)
        scraped = subprocess.run(
            [*in_node, "curl", "-sf", "http://127.0.0.1:19641/metrics"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert 'plumb_agent_flows{table="Classifier"}' in scraped
        assert "plumb_agent_network_policies" in scraped
        flows = dump(ovs)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=15) == 0
        assert dump(ovs) == flows
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        api.stop()


def test_agent_runs_from_a_manifests_directory(world, tmp_path):
    import yaml

    _api, ovs, config = world
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": NODE},
        "spec": {"podCIDR": "10.77.3.0/24", "podCIDRs": ["10.77.3.0/24"]},
    }
    (manifests / "node.yaml").write_text(yaml.safe_dump(node))
    config = dataclasses.replace(config, source="manifests", manifests_dir=str(manifests))
    agent = Agent(config, sync_timeout=10, netns=ovs.netns)
    agent.start()
    try:
        assert any(
            "nw_dst=10.77.3.0/24 actions=goto_table:L2ForwardingCalc" in f for f in dump(ovs)
        )
    finally:
        agent.stop()
