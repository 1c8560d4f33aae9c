"""Peer-node and tunnel flows in a real ovs-vswitchd: goldens, and ofproto/trace across nodes."""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest

from controller.bridge import BridgeSettings, ensure_node_bridge
from controller.switch import Switch
from flows.cookie import Category, Cookie
from flows.pod import gateway_flows, pod_flows
from flows.skeleton import skeleton_flows
from tests.unit.flows.goldens import golden_lines
from tests.unit.flows.test_node import LOCAL, PEER, node_flows
from tests.unit.flows.test_pod import POD

pytestmark = pytest.mark.ovs

NODE_ADDRESS = "192.168.77.11"
PEER_MAC = "aa:55:aa:55:00:12"


@pytest.fixture(params=["geneve", "none"])
def mode(request):
    return request.param


@pytest.fixture
def bridge(ovs, mode):
    """A netdev bridge with plumb-gw0 (32769), plumb-tun0 (32768, in tunnel modes) and a pod
    port (3), the way the agent and the CNI lay them out."""
    name = f"br-{uuid.uuid4().hex[:8]}"
    ensure_node_bridge(
        ovs.db_remote,
        BridgeSettings(name=name, datapath_type="netdev", tunnel_type=mode),
        with_gateway=True,
    )
    add_internal_port(ovs, name, "web-0-3f2a9c", 3)
    deadline = time.monotonic() + 5
    while not ovs.mgmt_socket(name).exists():
        assert time.monotonic() < deadline, "bridge management socket never appeared"
        time.sleep(0.02)
    yield name
    ovs.vsctl("--if-exists", "del-br", name)


def add_internal_port(ovs, bridge: str, port: str, ofport: int) -> None:
    ovs.vsctl(
        *("add-port", bridge, port, "--", "set", "interface", port),
        *("type=internal", f"ofport_request={ofport}"),
    )


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


def test_node_flows_dump_equals_golden(ovs, bridge, switch, mode):
    switch.replace_flows("node/node-b", node_flows(mode))
    assert dump(ovs, bridge) == sorted(golden_lines(f"node_{mode}"))


def install_node(switch, mode) -> None:
    """Skeleton, local pod and the peer: what an agent holds for one pod and one peer."""
    switch.replace_flows("pipeline", skeleton_flows(1))
    switch.replace_flows("node/local", gateway_flows(LOCAL, Cookie(1, Category.NODE, 0).value))
    switch.replace_flows(
        "pod/default/web-0", pod_flows(POD, LOCAL, Cookie(1, Category.POD, 3).value)
    )
    switch.replace_flows("node/node-b", node_flows(mode))


def trace(ovs, bridge, flow: str) -> tuple[str, str]:
    """The whole trace and its last "Final flow" section (after conntrack recirculations)."""
    out = ovs.appctl("ofproto/trace", bridge, flow)
    return out, out.rsplit("Final flow:", 1)[1]


@pytest.fixture
def underlay(ovs):
    """The node's underlay the way userspace tunnelling needs it: the node address on an OVS
    bridge (br-phy's role), a kernel route OVS learns from, and the peer's MAC known."""
    name = f"phy-{uuid.uuid4().hex[:8]}"
    ovs.vsctl("add-br", name, "--", "set", "bridge", name, "datapath_type=netdev")
    subprocess.run(
        ["ip", "-n", ovs.netns, "addr", "add", f"{NODE_ADDRESS}/24", "dev", name], check=True
    )
    subprocess.run(["ip", "-n", ovs.netns, "link", "set", name, "up"], check=True)
    deadline = time.monotonic() + 5
    while "192.168.77.0/24 dev " + name not in ovs.appctl("ovs/route/show"):
        assert time.monotonic() < deadline, "OVS never learned the underlay route"
        time.sleep(0.05)
    ovs.appctl("tnl/arp/set", name, PEER.address, PEER_MAC)
    yield name
    ovs.vsctl("--if-exists", "del-br", name)


POD_TO_PEER = (
    f"in_port=3,ip,dl_src={POD.mac},dl_dst={LOCAL.gateway_mac},"
    f"nw_src={POD.ip},nw_dst=10.10.2.5,nw_ttl=64,nw_proto=6,tp_dst=80"
)


@pytest.mark.parametrize("mode", ["geneve"], indirect=True)
def test_pod_to_peer_pod_leaves_through_the_tunnel_with_tun_dst(ovs, bridge, switch, underlay):
    install_node(switch, "geneve")
    out, final = trace(ovs, bridge, POD_TO_PEER)
    assert f"tun_dst={PEER.address}" in final, out
    assert "dl_dst=aa:bb:cc:dd:ee:ff" in final, out
    assert f"dl_src={LOCAL.gateway_mac}" in final, out
    assert "nw_ttl=63" in final, out
    assert "output port is 32768" in out, out
    # Encapsulated towards the peer, routed and resolved through the underlay bridge.
    assert f"-> tunneling to {PEER.address} via {underlay}" in out, out
    assert f"{NODE_ADDRESS} to {PEER_MAC} {PEER.address}" in out, out


@pytest.mark.parametrize("mode", ["none"], indirect=True)
def test_pod_to_peer_pod_in_routed_mode_goes_to_the_gateway(ovs, bridge, switch):
    install_node(switch, "none")
    out, final = trace(ovs, bridge, POD_TO_PEER)
    assert "tun_dst" not in final, out
    assert f"dl_dst={LOCAL.gateway_mac}" in final, out
    assert "nw_ttl=64" in final, out  # the host decrements it
    assert "output port is 32769" in out, out


@pytest.mark.parametrize("mode", ["geneve"], indirect=True)
def test_node_asking_for_the_peer_gateway_gets_the_virtual_mac(ovs, bridge, switch):
    install_node(switch, "geneve")
    ask = (
        f"in_port=32769,arp,dl_src={LOCAL.gateway_mac},dl_dst=ff:ff:ff:ff:ff:ff,arp_op=1,"
        f"arp_spa={LOCAL.gateway_ip},arp_tpa={PEER.gateway_ip},arp_sha={LOCAL.gateway_mac}"
    )
    out, final = trace(ovs, bridge, ask)
    assert "arp_op=2" in final and "arp_sha=aa:bb:cc:dd:ee:ff" in final, out
    assert f"arp_spa={PEER.gateway_ip}" in final and f"arp_tha={LOCAL.gateway_mac}" in final, out
    assert "IN_PORT" in out and "Datapath actions: drop" not in out, out


@pytest.mark.parametrize("mode", ["geneve"], indirect=True)
def test_packet_from_the_tunnel_reaches_the_local_pod(ovs, bridge, switch):
    install_node(switch, "geneve")
    arrive = (
        f"in_port=32768,tun_id=0,tun_src={PEER.address},tun_dst=192.168.77.11,ip,"
        f"dl_src=0a:58:0a:0a:02:01,dl_dst=aa:bb:cc:dd:ee:ff,"
        f"nw_src=10.10.2.5,nw_dst={POD.ip},nw_ttl=63,nw_proto=6,tp_dst=80"
    )
    out, final = trace(ovs, bridge, arrive)
    assert f"dl_dst={POD.mac}" in final and f"dl_src={LOCAL.gateway_mac}" in final, out
    assert "output port is 3" in out and "nw_ttl=62" in final, out


@pytest.mark.parametrize("mode", ["geneve"], indirect=True)
def test_packet_from_the_tunnel_from_a_stranger_is_dropped(ovs, bridge, switch):
    # Anyone on the underlay can send Geneve to the node: only known peers' sources get in.
    install_node(switch, "geneve")
    arrive = (
        "in_port=32768,tun_id=0,tun_src=192.168.77.99,tun_dst=192.168.77.11,ip,"
        f"dl_src=0a:58:0a:0a:02:01,dl_dst=aa:bb:cc:dd:ee:ff,"
        f"nw_src=10.10.2.5,nw_dst={POD.ip},nw_ttl=63,nw_proto=6,tp_dst=80"
    )
    out, _ = trace(ovs, bridge, arrive)
    assert out.rsplit("Datapath actions:", 1)[1].split()[0] == "drop", out
    assert "priority 190" in out, out
