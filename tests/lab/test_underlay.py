"""The underlay recipe on its own (no agents): userspace Geneve and VXLAN between two lab nodes
whose underlay address sits on `br-phy`, with only the flows a tunnel needs; full-size frames
with DF set cross it at the pod MTU (uplink minus 50 bytes), one byte more does not."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from lab import cluster, floor
from lab.layout import LabLayout
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
