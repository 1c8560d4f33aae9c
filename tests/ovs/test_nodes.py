"""The node reconciler with a real Switch on a private OVS: dumps and routes follow the store."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from controller.bridge import BridgeSettings, ensure_node_bridge
from controller.nodes import ROUTE_PROTOCOL, HostRoutes, NodeReconciler, peer_from_node
from controller.store import Store
from controller.switch import Switch
from controller.workqueue import WorkQueue
from flows.fields import GATEWAY_OFPORT, TUNNEL_OFPORT
from flows.node import PeerNode, node_cookie, peer_node_flows, tunnel_flows
from flows.ofctl import render_flows
from flows.pod import LocalNode

pytestmark = pytest.mark.ovs

LOCAL_NAME = "node-a"
LOCAL = LocalNode(pod_cidr="10.10.1.0/24", gateway_ip="10.10.1.1", gateway_mac="0a:58:0a:0a:01:01")
PORTS = {TUNNEL_OFPORT: "plumb-tun0", GATEWAY_OFPORT: "plumb-gw0"}
UNDERLAY = "192.168.77.11/24"


def node(name: str, cidr: str | None = None, address: str | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"kind": "Node", "metadata": {"name": name}, "spec": {}, "status": {}}
    if cidr:
        obj["spec"]["podCIDR"] = cidr
    if address:
        obj["status"]["addresses"] = [
            {"type": "Hostname", "address": name},
            {"type": "InternalIP", "address": address},
        ]
    return obj


def ip(ovs, *args: str) -> str:
    done = subprocess.run(
        ["ip", "-n", ovs.netns, *args], check=True, capture_output=True, text=True
    )
    return done.stdout


@pytest.fixture
def mode() -> str:
    return "geneve"


@pytest.fixture
def bridge(ovs, mode) -> Iterator[str]:
    """A netdev bridge with plumb-gw0 up and addressed, plumb-tun0 in tunnel modes, and an
    underlay address on a veth, all in the sandbox's namespace."""
    name = f"br-{uuid.uuid4().hex[:8]}"
    ensure_node_bridge(
        ovs.db_remote,
        BridgeSettings(name=name, datapath_type="netdev", tunnel_type=mode),
        with_gateway=True,
    )
    deadline = time.monotonic() + 5
    while not ovs.mgmt_socket(name).exists():
        assert time.monotonic() < deadline, "bridge management socket never appeared"
        time.sleep(0.02)
    ip(ovs, "addr", "replace", f"{LOCAL.gateway_ip}/24", "dev", "plumb-gw0")
    ip(ovs, "link", "set", "plumb-gw0", "up")
    ip(ovs, "link", "add", "ul0", "type", "veth", "peer", "name", "ul1")
    ip(ovs, "addr", "add", UNDERLAY, "dev", "ul0")
    ip(ovs, "link", "set", "ul0", "up")
    ip(ovs, "link", "set", "ul1", "up")
    yield name
    ip(ovs, "link", "del", "ul0")
    ovs.vsctl("--if-exists", "del-br", name)
    ip(ovs, "route", "flush", "proto", str(ROUTE_PROTOCOL))


@pytest.fixture
def switch(ovs, bridge) -> Iterator[Switch]:
    sw = Switch(ovs.mgmt_socket(bridge), request_timeout=5, reconnect_max_delay=0.2)
    sw.start()
    sw.wait_connected(10)
    yield sw
    sw.stop()


@pytest.fixture
def store() -> Store:
    s = Store()
    s.upsert("Node", node(LOCAL_NAME, LOCAL.pod_cidr, "192.168.77.11"))
    return s


@pytest.fixture
def reconciler(ovs, store, switch, mode) -> Iterator[NodeReconciler]:
    r = NodeReconciler(store, switch, LOCAL, LOCAL_NAME, mode, 1, netns=ovs.netns)
    yield r
    r.stop()


def dump(ovs, bridge) -> list[str]:
    out = ovs.ofctl("-O", "OpenFlow15", "--names", "--no-stats", "dump-flows", bridge)
    return sorted(line for line in out.splitlines() if line.strip())


def expected(mode: str, *peers: PeerNode) -> list[str]:
    flows = tunnel_flows(mode, node_cookie(1, LOCAL_NAME))
    for peer in peers:
        flows += peer_node_flows(peer, LOCAL, mode, node_cookie(1, peer.name))
    return sorted(render_flows(flows, PORTS))


def routes(ovs) -> list[str]:
    out = ip(ovs, "route", "show", "proto", str(ROUTE_PROTOCOL))
    return sorted(" ".join(line.split()) for line in out.splitlines() if line.strip())


B = PeerNode("node-b", "192.168.77.12", "10.10.2.0/24")
C = PeerNode("node-c", "192.168.77.13", "10.10.3.0/24")


def add(store: Store, peer: PeerNode) -> None:
    store.upsert("Node", node(peer.name, peer.pod_cidr, peer.address))


def settle(reconciler: NodeReconciler) -> None:
    assert reconciler.wait_idle(5), "node reconciler did not settle"


def test_nodes_present_at_start_get_flows_and_routes(ovs, bridge, store, reconciler):
    add(store, B)
    add(store, C)
    reconciler.start()
    settle(reconciler)
    assert dump(ovs, bridge) == expected("geneve", B, C)
    assert routes(ovs) == [
        "10.10.2.0/24 via 10.10.2.1 dev plumb-gw0 onlink",
        "10.10.3.0/24 via 10.10.3.1 dev plumb-gw0 onlink",
    ]
    assert set(reconciler.installed_peers()) == {"node-b", "node-c"}


def test_added_changed_and_removed_nodes_follow(ovs, bridge, store, switch, reconciler):
    reconciler.start()
    settle(reconciler)
    assert dump(ovs, bridge) == expected("geneve")
    add(store, B)
    settle(reconciler)
    assert dump(ovs, bridge) == expected("geneve", B)
    bundles = switch.counters.bundles
    moved = PeerNode("node-b", "192.168.77.22", "10.10.2.0/24")
    add(store, moved)
    settle(reconciler)
    assert dump(ovs, bridge) == expected("geneve", moved)
    assert switch.counters.bundles == bundles + 1, "one atomic bundle per change"
    renumbered = PeerNode("node-b", "192.168.77.22", "10.10.7.0/24")
    add(store, renumbered)
    settle(reconciler)
    assert dump(ovs, bridge) == expected("geneve", renumbered)
    assert switch.counters.bundles == bundles + 2
    assert routes(ovs) == ["10.10.7.0/24 via 10.10.7.1 dev plumb-gw0 onlink"]
    store.delete("Node", "", "node-b")
    settle(reconciler)
    assert dump(ovs, bridge) == expected("geneve")
    assert routes(ovs) == []


def test_a_node_without_cidr_or_address_has_no_flows_until_it_has_both(
    ovs, bridge, store, reconciler
):
    reconciler.start()
    store.upsert("Node", node("node-b", None, B.address))
    store.upsert("Node", node("node-c", C.pod_cidr, None))
    settle(reconciler)
    assert dump(ovs, bridge) == expected("geneve")
    add(store, B)
    settle(reconciler)
    assert dump(ovs, bridge) == expected("geneve", B)
    store.upsert("Node", node("node-b", B.pod_cidr, None))  # lost its address
    settle(reconciler)
    assert dump(ovs, bridge) == expected("geneve")
    assert routes(ovs) == []


def test_two_nodes_claiming_one_cidr_the_first_keeps_it(ovs, bridge, store, reconciler):
    # Retries so slow that only the release itself can wake the waiting node in time.
    reconciler.queue = WorkQueue("nodes", base_delay=60)
    reconciler.start()
    add(store, B)
    settle(reconciler)
    thief = PeerNode("node-c", "192.168.77.13", B.pod_cidr)
    add(store, thief)
    settle(reconciler)  # a conflict is a settled state, not pending work
    assert dump(ovs, bridge) == expected("geneve", B)
    assert set(reconciler.installed_peers()) == {"node-b"}
    store.delete("Node", "", "node-b")
    deadline = time.monotonic() + 1
    while dump(ovs, bridge) != expected("geneve", thief):
        assert time.monotonic() < deadline, "the waiting node never got the released PodCIDR"
        time.sleep(0.02)
    assert routes(ovs) == ["10.10.2.0/24 via 10.10.2.1 dev plumb-gw0 onlink"]


def test_a_peer_overlapping_the_local_cidr_gets_nothing(ovs, bridge, store, reconciler):
    reconciler.start()
    add(store, PeerNode("node-x", "192.168.77.99", "10.10.0.0/16"))
    settle(reconciler)
    assert dump(ovs, bridge) == expected("geneve")
    assert routes(ovs) == []


def test_stale_routes_are_collected_and_foreign_routes_kept(ovs, bridge, store, reconciler):
    ip(ovs, "route", "add", "10.10.9.0/24", "via", "10.10.9.1", "dev", "plumb-gw0", "onlink",
       "proto", str(ROUTE_PROTOCOL))  # fmt: skip
    ip(ovs, "route", "add", "10.10.8.0/24", "via", "192.168.77.50")
    add(store, B)
    reconciler.start()
    settle(reconciler)
    assert routes(ovs) == ["10.10.2.0/24 via 10.10.2.1 dev plumb-gw0 onlink"]
    assert "10.10.8.0/24 via 192.168.77.50" in ip(ovs, "route")


@pytest.mark.parametrize("mode", ["none"])
def test_routed_mode_sends_to_the_gateway_and_routes_via_the_underlay(
    ovs, bridge, store, reconciler
):
    add(store, B)
    reconciler.start()
    settle(reconciler)
    assert dump(ovs, bridge) == expected("none", B)
    assert routes(ovs) == ["10.10.2.0/24 via 192.168.77.12 dev ul0"]
    add(store, PeerNode("node-b", "192.168.77.42", B.pod_cidr))
    settle(reconciler)
    assert routes(ovs) == ["10.10.2.0/24 via 192.168.77.42 dev ul0"]


@pytest.mark.parametrize("mode", ["none"])
def test_an_unroutable_peer_is_retried_until_the_underlay_can_reach_it(
    ovs, bridge, store, reconciler
):
    add(store, PeerNode("node-b", "192.168.88.12", B.pod_cidr))
    reconciler.start()
    assert not reconciler.wait_idle(0.3), "a failed route is pending work"
    ip(ovs, "addr", "add", "192.168.88.11/24", "dev", "ul0")
    settle(reconciler)
    assert routes(ovs) == ["10.10.2.0/24 via 192.168.88.12 dev ul0"]


def test_a_restart_round_reinstalls_with_its_own_cookie(ovs, bridge, store, switch, reconciler):
    add(store, B)
    reconciler.start()
    settle(reconciler)
    reconciler.stop()
    again = NodeReconciler(store, switch, LOCAL, LOCAL_NAME, "geneve", 2, netns=ovs.netns)
    again.start()
    try:
        settle(again)
    finally:
        again.stop()
    cookie = f"cookie={node_cookie(2, 'node-b'):#x},"
    assert sum(cookie in line for line in dump(ovs, bridge)) == 3  # forwarding, ARP, admission


def test_peer_from_node_reads_cidr_and_internal_ip():
    obj = node("n", "10.10.4.7/24", "192.168.77.4")
    assert peer_from_node(obj) == PeerNode("n", "192.168.77.4", "10.10.4.0/24")
    dual = node("n", None, "192.168.77.4")
    dual["spec"]["podCIDRs"] = ["fd00:10::/64", "10.10.4.0/24"]
    dual["status"]["addresses"].insert(0, {"type": "InternalIP", "address": "fd00::4"})
    assert peer_from_node(dual) == PeerNode("n", "192.168.77.4", "10.10.4.0/24")
    assert peer_from_node(node("n", "10.10.4.0/24")) is None
    with pytest.raises(ValueError):
        peer_from_node(node("n", "banana", "192.168.77.4"))


def test_host_routes_are_idempotent(ovs, bridge):
    from controller.nodes import NodeRoute

    table = HostRoutes(ovs.netns)
    route = NodeRoute("10.10.5.0/24", "10.10.5.1", "plumb-gw0", onlink=True)
    table.replace_route(route)
    table.replace_route(route)
    assert table.list_routes() == ["10.10.5.0/24"]
    table.delete_route("10.10.5.0/24")
    table.delete_route("10.10.5.0/24")
    assert table.list_routes() == []
