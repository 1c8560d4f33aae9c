"""Pod ports get the OpenFlow number the agent picked, so their flows go in while OVS attaches
the port; when OVS gives another number (a port the agent never saw holds it), the flows follow
the port, and numbers are not reused at once nor after a restart."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cni.protocol import Attachment
from tests.cni.conftest import Node

pytestmark = pytest.mark.ovs


def ofport_of(node: Node, cid: str) -> int:
    iface = node.podnet.store.get(Attachment(cid, "eth0"))
    assert iface is not None
    port = node.ports.port_info(iface.host_ifname)
    assert port.ofport == iface.ofport  # the store and OVS agree
    return iface.ofport


def test_ports_get_the_numbers_asked_for_round_robin(node: Node) -> None:
    a, b = node.next_id("c"), node.next_id("c")
    node.add(a, node.make_netns())
    node.add(b, node.make_netns())
    first, second = ofport_of(node, a), ofport_of(node, b)
    assert (first, second) == (1, 2)
    iface = node.podnet.store.get(Attachment(a, "eth0"))
    assert iface is not None
    assert node.ovs.vsctl("get", "Interface", iface.host_ifname, "ofport_request").strip() == "1"
    assert node.delete(a).exit_code == 0
    c = node.next_id("c")
    node.add(c, node.make_netns())
    assert ofport_of(node, c) == 3  # 1 is free again, but not reused at once


def add_stranger(node: Node, *settings: str) -> str:
    """A port added behind the agent's back; it gets ofport 1, the pool's first number."""
    name = f"{node.prefix}x"
    node.ovs.vsctl(
        "add-port", node.bridge, name, "--", "set", "Interface", name, "type=internal", *settings
    )
    assert node.ovs.vsctl("get", "Interface", name, "ofport").strip() == "1"
    return name


def flows_only_for(node: Node, ofport: int) -> bool:
    dumped = node.flows.dump()
    return len(dumped) == 2 and all(f"{0x7000_0000_0000_0000 | ofport:#x}" in f for f in dumped)


def test_a_port_holding_the_number_without_asking_is_moved(node: Node) -> None:
    stranger = add_stranger(node)
    runtime, net = node.runtime(), node.network()
    rt = node.rt(node.make_netns())
    runtime.add(net, rt)  # asks for 1: OVS gives another, then moves the stranger away
    assert ofport_of(node, rt.container_id) == 1
    assert node.ovs.vsctl("get", "Interface", stranger, "ofport").strip() != "1"
    assert flows_only_for(node, 1)
    runtime.check(net, rt)
    runtime.delete(net, rt)
    node.ovs.vsctl("del-port", node.bridge, stranger)
    assert node.leftovers() == Node.NOTHING_LEFT


def test_a_port_that_asked_for_the_number_keeps_it_and_the_flows_follow(node: Node) -> None:
    node.podnet.config = replace(node.podnet.config, ofport_settle=0.3)
    stranger = add_stranger(node, "ofport_request=1")
    runtime, net = node.runtime(), node.network()
    rt = node.rt(node.make_netns())
    runtime.add(net, rt)
    ofport = ofport_of(node, rt.container_id)
    assert ofport != 1
    assert node.ovs.vsctl("get", "Interface", stranger, "ofport").strip() == "1"
    assert flows_only_for(node, ofport)
    runtime.check(net, rt)
    second = node.rt(node.make_netns())
    runtime.add(net, second)  # the pool has learnt the stranger's number
    assert ofport_of(node, second.container_id) not in (1, ofport)
    runtime.delete(net, rt)
    runtime.delete(net, second)
    node.ovs.vsctl("del-port", node.bridge, stranger)
    assert node.leftovers() == Node.NOTHING_LEFT


def test_after_a_restart_numbers_in_use_are_not_handed_out(node: Node) -> None:
    held = [node.next_id("c") for _ in range(3)]
    for cid in held:
        node.add(cid, node.make_netns())
    before = {ofport_of(node, cid) for cid in held}
    node.podnet.store.replace_all([])
    node.podnet.restore()  # as a restarted agent does
    # a fresh pool would start at 1; the restored one continues after the highest number
    fresh = node.next_id("c")
    node.add(fresh, node.make_netns())
    assert ofport_of(node, fresh) == max(before) + 1
