"""The underlay recipe on its own (no agents): userspace Geneve and VXLAN between two lab nodes
whose underlay address sits on `br-phy`, with only the flows a tunnel needs; full-size frames
with DF set cross it at the pod MTU (uplink minus 50 bytes), one byte more does not."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from lab import cluster, floor, host
from lab.host import in_ns
from lab.layout import PHYS_BRIDGE, UNDERLAY_CIDR, LabLayout
from tests.lab.conftest import df_ping

pytestmark = pytest.mark.lab

POD_MTU = 1450


@pytest.fixture(scope="module")
def bare_lab() -> Iterator[LabLayout]:
    name = f"t{uuid.uuid4().hex[:6]}"
    try:
        cluster.up(name, nodes=2, agents=False)
        yield LabLayout(name)
    finally:
        cluster.down(name)


@pytest.mark.parametrize("tunnel", ["geneve", "vxlan"])
def test_tunnel_carries_full_size_df_frames_between_nodes(bare_lab: LabLayout, tunnel: str):
    with floor.tunnel_floor(bare_lab, tunnel, POD_MTU) as (a, b):
        ok = df_ping(a.netns, b.ip, POD_MTU)
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.strip() == str(POD_MTU)
        # The route and the neighbour the userspace tunnel used come from br-phy.
        ovs = cluster.node_ovs(bare_lab.node(1))
        assert f"{bare_lab.node(2).address}" in ovs.appctl("tnl/arp/show")
        assert "br-phy" in ovs.appctl("ovs/route/show")


def test_one_byte_over_the_pod_mtu_is_refused_with_df(bare_lab: LabLayout):
    with floor.tunnel_floor(bare_lab, "geneve", POD_MTU) as (a, b):
        assert df_ping(a.netns, b.ip, POD_MTU).returncode == 0
        too_big = df_ping(a.netns, b.ip, POD_MTU + 1)
        assert too_big.returncode != 0
        assert "Message too long" in too_big.stderr


def test_bridge_floor_connects_two_namespaces(bare_lab: LabLayout):
    with floor.bridge_floor(bare_lab, POD_MTU) as (a, b):
        assert df_ping(a.netns, b.ip, POD_MTU).returncode == 0


def test_underlay_routes_are_out_of_reach_of_link_churn(bare_lab: LabLayout):
    """ovs-vswitchd routes the underlay by a route of its own and caches no kernel route through
    br-phy, so the route-table reset that every link added or removed in the node's namespace
    causes never takes br-phy out of its tunnel-termination map (docs/reliability.md); the
    nodes' kernels still reach each other over the underlay."""
    node1, node2 = bare_lab.node(1), bare_lab.node(2)
    with floor.tunnel_floor(bare_lab, "geneve", POD_MTU):
        ovs = cluster.node_ovs(node1)
        for i in range(3):  # links come and go as pods' veths do
            host.run(["ip", "-n", node1.netns, "link", "add", f"churn{i}", "type", "veth"])
            host.run(["ip", "-n", node1.netns, "link", "del", f"churn{i}"])
        host.run(in_ns(node1.netns, "ping", "-c", "1", "-W", "1", node2.address))  # settles
        routes = ovs.appctl("ovs/route/show")
        assert f"User: {UNDERLAY_CIDR} dev {PHYS_BRIDGE} SRC {node1.address}" in routes, routes
        cached = [r for r in routes.splitlines() if r.startswith("Cached") and PHYS_BRIDGE in r]
        assert cached == [], routes
        assert f"ipv4(dst={node1.address}," in ovs.appctl("tnl/ports/show", "-v")
        for a, b in ((node1, node2), (node2, node1)):
            host.run(in_ns(a.netns, "ping", "-c", "1", "-W", "1", b.address))
