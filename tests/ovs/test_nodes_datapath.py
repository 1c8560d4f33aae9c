"""Two nodes, each its own OVS sandbox and node reconciler, joined by an underlay: pods and nodes
reach remote pods in every encapsulation mode. Also documents the underlay a userspace tunnel
needs (see `underlay`)."""

from __future__ import annotations

import subprocess
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from controller.bridge import BridgeSettings, ensure_bridge_with
from controller.nodes import NodeReconciler
from controller.store import Store
from controller.switch import Switch
from flows.cookie import Category, Cookie
from flows.pod import LocalNode, PodPort, gateway_flows, pod_flows
from flows.skeleton import skeleton_flows
from ovsdb.client import OvsdbClient

pytestmark = pytest.mark.ovs

POD_OFPORT = 3


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=20)


def in_ns(netns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", netns, *args, check=check)


def quiet(netns: str, ifname: str) -> None:
    """An OVS port's netdev stays live for the namespace's kernel in the userspace datapath:
    it must not answer ARP for the node's addresses, forward what it receives, or talk IPv6,
    or packets are answered and forwarded twice."""
    for key, value in (
        (f"net.ipv4.conf.{ifname}.arp_ignore", "8"),
        (f"net.ipv4.conf.{ifname}.forwarding", "0"),
        (f"net.ipv6.conf.{ifname}.disable_ipv6", "1"),
    ):
        in_ns(netns, "sysctl", "-qw", f"{key}={value}")


@dataclass
class Node:
    name: str
    index: int
    sandbox: Any
    local: LocalNode | None = None
    pod_netns: str = ""
    switch: Switch | None = None
    reconciler: NodeReconciler | None = None

    @property
    def netns(self) -> str:
        return str(self.sandbox.netns)

    @property
    def address(self) -> str:
        return f"192.168.77.{10 + self.index}"

    @property
    def pod_ip(self) -> str:
        return f"10.10.{self.index}.5"


def node_object(node: Node) -> dict[str, Any]:
    return {
        "kind": "Node",
        "metadata": {"name": node.name},
        "spec": {"podCIDR": f"10.10.{node.index}.0/24"},
        "status": {"addresses": [{"type": "InternalIP", "address": node.address}]},
    }


def bridge(node: Node, mode: str) -> None:
    client = OvsdbClient(node.sandbox.db_remote)
    try:
        settings = BridgeSettings(name="br-int", datapath_type="netdev", tunnel_type=mode)
        gateway = ensure_bridge_with(client, settings, with_gateway=True).gateway
    finally:
        client.close()
    assert gateway is not None
    cidr = f"10.10.{node.index}.0/24"
    node.local = LocalNode(cidr, f"10.10.{node.index}.1", gateway.mac_in_use)
    sh("ip", "-n", node.netns, "addr", "add", f"{node.local.gateway_ip}/24", "dev", "plumb-gw0")
    sh("ip", "-n", node.netns, "link", "set", "plumb-gw0", "up")


def underlay(node: Node, uplink: str, mode: str) -> None:
    """Tunnel modes: the node address lives on an OVS bridge (br-phy) holding the uplink, so
    that userspace tunnelling can route (ovs/route/show) and resolve (tnl/arp/show) the peer.
    Routed mode: the address on the uplink, and the node forwards."""
    netns = node.netns
    sh("ip", "-n", netns, "link", "set", uplink, "up")
    if mode == "none":
        sh("ip", "-n", netns, "addr", "add", f"{node.address}/24", "dev", uplink)
        in_ns(netns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        return
    quiet(netns, uplink)
    node.sandbox.vsctl("add-br", "br-phy", "--", "set", "bridge", "br-phy", "datapath_type=netdev")
    node.sandbox.vsctl("add-port", "br-phy", uplink)
    sh("ip", "-n", netns, "addr", "add", f"{node.address}/24", "dev", "br-phy")
    sh("ip", "-n", netns, "link", "set", "br-phy", "up")


def pod(node: Node, make_netns: Any, tag: str) -> PodPort:
    """A pod the way the CNI makes one: a veth into the pod namespace, TX checksum off."""
    node.pod_netns = make_netns()
    host = f"p{tag}{node.index}"
    sh(*("ip", "link", "add", host, "netns", node.netns, "type", "veth"),
       *("peer", "name", "eth0", "netns", node.pod_netns))  # fmt: skip
    quiet(node.netns, host)
    for netns, ifname in ((node.netns, host), (node.pod_netns, "eth0")):
        in_ns(netns, "ethtool", "-K", ifname, "tx", "off")
        sh("ip", "-n", netns, "link", "set", ifname, "up")
    sh("ip", "-n", node.pod_netns, "addr", "add", f"{node.pod_ip}/24", "dev", "eth0")
    assert node.local is not None
    sh("ip", "-n", node.pod_netns, "route", "add", "default", "via", node.local.gateway_ip)
    node.sandbox.vsctl(
        "add-port", "br-int", host, "--", "set", "interface", host, f"ofport_request={POD_OFPORT}"
    )
    link = sh("ip", "-n", node.pod_netns, "-br", "link", "show", "eth0").stdout.split()
    return PodPort(POD_OFPORT, node.pod_ip, link[2])


def ping(netns: str, address: str, *options: str, count: int = 3, wait: str = "1") -> str:
    """ping's output when every packet came back once; "" otherwise."""
    args = ("ping", "-c", str(count), "-W", wait, "-i", "0.2", *options, address)
    done = in_ns(netns, *args, check=False)
    ok = done.returncode == 0 and " 0% packet loss" in done.stdout and "DUP" not in done.stdout
    return done.stdout if ok else ""


@pytest.fixture(params=["geneve", "vxlan", "none"])
def cluster(request, make_sandbox, make_netns):
    mode = request.param
    tag = uuid.uuid4().hex[:6]
    nodes = [Node(f"node-{i}", i, make_sandbox()) for i in (1, 2)]
    a, b = nodes
    sh(*("ip", "link", "add", f"u{tag}1", "netns", a.netns, "type", "veth"),
       *("peer", "name", f"u{tag}2", "netns", b.netns))  # fmt: skip
    store = Store()
    for node in nodes:
        bridge(node, mode)
        underlay(node, f"u{tag}{node.index}", mode)
        port = pod(node, make_netns, tag)
        store.upsert("Node", node_object(node))
        node.switch = Switch(node.sandbox.mgmt_socket("br-int"), request_timeout=5)
        node.switch.start()
        node.switch.wait_connected(10)
        assert node.local is not None
        node.switch.replace_flows("pipeline", skeleton_flows(1))
        gateway_cookie = Cookie(1, Category.NODE, 0).value
        node.switch.replace_flows(f"node/{node.name}", gateway_flows(node.local, gateway_cookie))
        node.switch.replace_flows(
            "pod", pod_flows(port, node.local, Cookie(1, Category.POD, 3).value)
        )
    for node in nodes:
        assert node.switch is not None and node.local is not None
        node.reconciler = NodeReconciler(
            store, node.switch, node.local, node.name, mode, 1, netns=node.netns
        )
        node.reconciler.start()
        assert node.reconciler.wait_idle(5)
    if mode != "none":
        # OVS drops a tunnel's first packets while it resolves the peer: resolve it up front.
        for node, peer in ((a, b), (b, a)):
            in_ns(node.netns, "ping", "-c", "1", "-W", "1", peer.address, check=False)
    yield mode, a, b
    for node in nodes:
        if node.reconciler is not None:
            node.reconciler.stop()
        if node.switch is not None:
            node.switch.stop()


def test_pods_and_nodes_reach_remote_pods_until_the_node_goes(cluster):
    mode, a, b = cluster
    assert ping(a.pod_netns, b.pod_ip), f"{mode}: pod to remote pod"
    assert ping(b.pod_netns, a.pod_ip), f"{mode}: the other way"
    assert ping(a.netns, b.pod_ip), f"{mode}: node to remote pod"
    # Full-size packets with DF set cross: pod MTU = underlay MTU - overhead.
    overhead = 0 if mode == "none" else 50
    sh("ip", "-n", a.pod_netns, "link", "set", "eth0", "mtu", str(1500 - overhead))
    size = str(1500 - overhead - 28)
    assert ping(a.pod_netns, b.pod_ip, "-M", "do", "-s", size), f"{mode}: full-size DF ping"
    # Node b leaves: node a's flows and route to its pods go.
    assert a.reconciler is not None
    a.reconciler.store.delete("Node", "", b.name)
    assert a.reconciler.wait_idle(5)
    assert not ping(a.pod_netns, b.pod_ip, count=1, wait="0.3"), f"{mode}: still reachable"
