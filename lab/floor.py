"""Floors of the userspace datapath: the least OVS can do to move pod traffic, on lab nodes built
without agents (`cluster.up(..., agents=False)`), for the datapath benchmark and the underlay
tests.

- `bridge_floor`: one node, two namespaces on a bridge holding a single NORMAL flow.
- `tunnel_floor`: two nodes, one namespace each, bridges holding only what a tunnel needs:
  from the namespace, set tun_dst and output to the tunnel; from the tunnel, output to it.

Interfaces are made as the CNI server makes pod interfaces (veth, TX checksum offload off, the
same MTU), so a floor and a pod differ in the flows they cross and nothing else.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from lab import host
from lab.cluster import node_ovs
from lab.layout import BRIDGE, LabLayout, NodeLayout

TUNNEL_PORT = "plumb-tun0"
TUNNEL_OFPORT = 32768
FLOOR_SUBNET = "10.250.0"  # one /24 for every floor namespace: ARP crosses the tunnel too


@dataclass(frozen=True)
class FloorEnd:
    """A namespace standing in for a pod."""

    netns: str
    ip: str
    ofport: int


def _ensure_bridge(node: NodeLayout, tunnel: str | None) -> None:
    ovs = node_ovs(node)
    ovs.vsctl(
        "--may-exist", "add-br", BRIDGE, "--", "set", "bridge", BRIDGE,
        "datapath_type=netdev", "fail_mode=secure", "protocols=OpenFlow10,OpenFlow13,OpenFlow15",
    )  # fmt: skip
    if tunnel:
        ovs.vsctl(
            "--may-exist", "add-port", BRIDGE, TUNNEL_PORT, "--", "set", "interface",
            TUNNEL_PORT, f"type={tunnel}", "options:remote_ip=flow", "options:key=flow",
            f"ofport_request={TUNNEL_OFPORT}",
        )  # fmt: skip


def _add_end(layout: LabLayout, node: NodeLayout, index: int, mtu: int) -> FloorEnd:
    netns = f"{layout.name}-floor{index}"
    host.ensure_netns(netns)
    host.ensure_veth(netns, "eth0", node.netns, f"floor{index}", mtu)
    ip = f"{FLOOR_SUBNET}.{index}"
    host.ensure_address(netns, "eth0", f"{ip}/24")
    node_ovs(node).vsctl(
        "--may-exist", "add-port", BRIDGE, f"floor{index}",
        "--", "set", "interface", f"floor{index}", f"ofport_request={index}",
    )  # fmt: skip
    return FloorEnd(netns, ip, index)


def _flows(node: NodeLayout, *flows: str) -> None:
    ovs = node_ovs(node)
    mgmt = str(ovs.mgmt_socket(BRIDGE))
    ovs.ofctl("del-flows", mgmt)
    for flow in flows:
        ovs.ofctl("add-flow", mgmt, flow)


@contextlib.contextmanager
def bridge_floor(layout: LabLayout, mtu: int) -> Iterator[tuple[FloorEnd, FloorEnd]]:
    """Two namespaces on node1's bridge with one NORMAL flow; removed on exit."""
    node = layout.node(1)
    made: list[FloorEnd] = []
    try:
        _ensure_bridge(node, None)
        made += [_add_end(layout, node, 1, mtu), _add_end(layout, node, 2, mtu)]
        _flows(node, "priority=0,actions=NORMAL")
        yield made[0], made[1]
    finally:
        _remove(layout, [node], made)


@contextlib.contextmanager
def tunnel_floor(layout: LabLayout, tunnel: str, mtu: int) -> Iterator[tuple[FloorEnd, FloorEnd]]:
    """A namespace on node1 and one on node2, joined by `tunnel` (geneve or vxlan) over the
    lab's underlay; removed on exit."""
    nodes = [layout.node(1), layout.node(2)]
    made: list[FloorEnd] = []
    try:
        for i, node in enumerate(nodes, start=1):
            _ensure_bridge(node, tunnel)
            made.append(_add_end(layout, node, i, mtu))
        for node, peer, end in ((nodes[0], nodes[1], made[0]), (nodes[1], nodes[0], made[1])):
            _flows(
                node,
                f"in_port={end.ofport},actions=set_field:{peer.address}->tun_dst,"
                f"output:{TUNNEL_OFPORT}",
                f"in_port={TUNNEL_OFPORT},actions=output:{end.ofport}",
            )
        yield made[0], made[1]
    finally:
        _remove(layout, nodes, made)


def _remove(layout: LabLayout, nodes: list[NodeLayout], ends: list[FloorEnd]) -> None:
    for end in ends:
        host.delete_netns(end.netns)
    for node in nodes:
        with contextlib.suppress(Exception):
            node_ovs(node).vsctl("--if-exists", "del-br", BRIDGE)
