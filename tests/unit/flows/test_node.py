"""Peer-node and tunnel flows against golden ovs-ofctl text, per encapsulation mode."""

import pytest

from flows.cookie import Category, Cookie
from flows.fields import TARGET_OFPORT, TUNNEL_OFPORT, VIRTUAL_MAC
from flows.flow import Load, SetField, match
from flows.node import (
    PeerNode,
    node_cookie,
    node_object_id,
    peer_node_flows,
    tunnel_flows,
)
from flows.ofctl import render_flows
from flows.pod import LocalNode
from tests.unit.flows.goldens import check_golden

LOCAL = LocalNode(pod_cidr="10.10.1.0/24", gateway_ip="10.10.1.1", gateway_mac="0a:58:0a:0a:01:01")
PEER = PeerNode(name="node-b", address="192.168.77.12", pod_cidr="10.10.2.0/24")
PORT_NAMES = {TUNNEL_OFPORT: "plumb-tun0", 32769: "plumb-gw0"}
PEER_COOKIE = Cookie(1, Category.NODE, node_object_id("node-b")).value
LOCAL_COOKIE = Cookie(1, Category.NODE, node_object_id("node-a")).value


def node_flows(mode: str):
    """What one node installs for one peer plus its own tunnel end."""
    return peer_node_flows(PEER, LOCAL, mode, PEER_COOKIE) + tunnel_flows(mode, LOCAL_COOKIE)


@pytest.mark.parametrize("mode", ["geneve", "none"])
def test_node_flows_render_to_golden(mode):
    check_golden(f"node_{mode}", render_flows(node_flows(mode), PORT_NAMES))


def test_vxlan_flows_are_the_geneve_flows():
    # The tunnel port's type is the only difference; flows set tun_dst either way.
    assert node_flows("vxlan") == node_flows("geneve")


def test_routed_mode_has_no_tunnel_and_no_arp_responder():
    flows = node_flows("none")
    assert {f.table for f in flows} == {"L3Forwarding"}
    assert not any(isinstance(a, SetField) and a.name == "tun_ipv4_dst" for a in flows[0].actions)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="gre"):
        peer_node_flows(PEER, LOCAL, "gre", 1)
    with pytest.raises(ValueError, match="gre"):
        tunnel_flows("gre", 1)


def test_peer_flows_carry_the_peer_cookie_and_differ_per_peer():
    other = PeerNode(name="node-c", address="192.168.77.13", pod_cidr="10.10.3.0/24")
    mine = peer_node_flows(PEER, LOCAL, "geneve", PEER_COOKIE)
    theirs = peer_node_flows(other, LOCAL, "geneve", node_cookie(1, "node-c"))
    assert {f.cookie for f in mine} == {PEER_COOKIE}
    assert not {f.key for f in mine} & {f.key for f in theirs}


def test_a_changed_address_changes_forwarding_actions_and_the_admitted_tunnel_source():
    moved = PeerNode(name="node-b", address="192.168.77.99", pod_cidr="10.10.2.0/24")
    before = peer_node_flows(PEER, LOCAL, "geneve", PEER_COOKIE)
    after = peer_node_flows(moved, LOCAL, "geneve", PEER_COOKIE)

    def keys(flows):
        return [f.key for f in flows if f.table != "Classifier"]

    # Forwarding and ARP are modified in place (counters kept); the admission moves.
    assert keys(before) == keys(after)
    assert before[0].actions != after[0].actions
    (admit,) = [f for f in after if f.table == "Classifier"]
    assert admit.match == match(in_port=TUNNEL_OFPORT, tun_ipv4_src="192.168.77.99")


def test_the_tunnel_admits_known_peers_only():
    # Anyone on the underlay can send Geneve to this node: only peers' addresses get in.
    (admit,) = [f for f in peer_node_flows(PEER, LOCAL, "geneve", 1) if f.table == "Classifier"]
    assert admit.match == match(in_port=TUNNEL_OFPORT, tun_ipv4_src=PEER.address)
    (drop,) = [f for f in tunnel_flows("geneve", 1) if f.table == "Classifier"]
    assert drop.match == match(in_port=TUNNEL_OFPORT) and drop.actions == ()
    assert drop.priority < admit.priority


def test_peer_node_is_normalised_and_knows_its_gateway():
    peer = PeerNode(name="n", address="192.168.77.12", pod_cidr="10.10.2.7/24")
    assert peer.pod_cidr == "10.10.2.0/24"
    assert peer.gateway_ip == "10.10.2.1"
    with pytest.raises(ValueError):
        PeerNode(name="n", address="fd00::1", pod_cidr="10.10.2.0/24")


def test_node_object_id_is_stable_and_32_bit():
    # Pinned: cookies must not change between agent versions of the same round layout.
    assert node_object_id("node-b") == 0xE1901C11
    assert node_object_id("node-b") != node_object_id("node-c")
    assert node_cookie(3, "node-b") == Cookie(3, Category.NODE, node_object_id("node-b")).value


def test_the_virtual_mac_leads_to_the_tunnel_port():
    (l2,) = [f for f in tunnel_flows("geneve", 1, tunnel_ofport=7) if f.table == "L2ForwardingCalc"]
    assert l2.match == match(eth_dst=VIRTUAL_MAC)
    assert Load(TARGET_OFPORT, 7) in l2.actions
