"""The ovsdb room against a real ovsdb-server and ovs-vswitchd."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from controller.bridge import BridgeSettings, ensure_bridge_with
from flows.pipeline import TABLE_NAMES
from ovsdb.client import OvsdbClient
from ovsdb.errors import OvsdbError

pytestmark = pytest.mark.ovs


@pytest.fixture
def client(ovs):
    c = OvsdbClient(ovs.db_remote)
    yield c
    c.close()


@pytest.fixture
def bridge(ovs, client):
    name = f"br-{uuid.uuid4().hex[:8]}"
    client.ensure_bridge(name, "netdev", "00000000000000aa")
    yield name
    ovs.vsctl("--if-exists", "del-br", name)


def test_ensure_bridge_is_idempotent_and_sets_everything(ovs, client, bridge):
    client.ensure_bridge(bridge, "netdev", "00000000000000aa", {"owner": "plumb"})
    get = lambda col: ovs.vsctl("get", "bridge", bridge, col).strip()  # noqa: E731
    assert get("fail_mode") == "secure"
    assert get("protocols") == "[OpenFlow10, OpenFlow13, OpenFlow15]"
    assert get("datapath_type") == "netdev"
    assert get("other_config:datapath-id") == '"00000000000000aa"'
    assert get("external_ids:owner") == "plumb"
    assert ovs.vsctl("list-br").split().count(bridge) == 1


def test_table_names_are_set_once_and_shown_by_ovs_ofctl(ovs, client, bridge):
    client.ensure_table_names(bridge, TABLE_NAMES)
    client.ensure_table_names(bridge, TABLE_NAMES)
    ovs.ofctl("add-flow", bridge, "table=4,priority=1,actions=drop")
    assert "table=SpoofGuard" in ovs.ofctl("-O", "OpenFlow15", "--names", "dump-flows", bridge)


def test_gateway_and_tunnel_ports_get_their_fixed_ofports(client, bridge):
    settings = BridgeSettings(name=bridge, datapath_type="netdev", tunnel_type="geneve")
    node = ensure_bridge_with(client, settings, with_gateway=True)
    assert node.gateway is not None and node.gateway.ofport == 32769
    assert node.tunnel is not None and node.tunnel.ofport == 32768
    assert node.tunnel.type == "geneve"


def test_tunnel_type_change_recreates_the_port(client, bridge):
    client.ensure_tunnel_port(bridge, "plumb-tun0", "geneve", 32768)
    port = client.ensure_tunnel_port(bridge, "plumb-tun0", "vxlan", 32768)
    assert (port.type, port.ofport) == ("vxlan", 32768)


def test_pod_port_on_a_real_veth_gets_an_ofport(ovs, client, bridge):
    veth = f"pv{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["ip", "-n", ovs.netns, "link", "add", veth, "type", "veth", "peer", "name", veth + "p"],
        check=True,
    )
    try:
        port = client.add_pod_port(bridge, veth, {"plumb.pod-name": "web-0"})
        assert port.ofport > 0
        assert [p.name for p in client.list_ports(bridge, pod_name="web-0")] == [veth]
        client.delete_port(bridge, veth)
        client.delete_port(bridge, veth)
        assert client.list_ports(bridge, pod_name="web-0") == []
    finally:
        subprocess.run(["ip", "-n", ovs.netns, "link", "del", veth], capture_output=True)


def test_pod_port_without_a_netdev_raises_and_leaves_no_row(ovs, client, bridge):
    with pytest.raises(OvsdbError, match="no ofport"):
        client.add_pod_port(bridge, "nosuchdev0", {})
    assert "nosuchdev0" not in ovs.vsctl("list-ports", bridge)


def test_bridge_external_ids_hold_the_round(client, bridge):
    assert client.get_bridge_external_id(bridge, "plumb.round") is None
    client.set_bridge_external_id(bridge, "plumb.round", "7")
    assert client.get_bridge_external_id(bridge, "plumb.round") == "7"


def test_unreachable_ovsdb_is_a_clear_error(tmp_path):
    with pytest.raises(OvsdbError, match="cannot connect"):
        OvsdbClient(f"unix:{tmp_path}/nothing.sock", timeout=1)
