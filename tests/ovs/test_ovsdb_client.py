"""The ovsdb room against a real ovsdb-server and ovs-vswitchd."""

from __future__ import annotations

import statistics
import subprocess
import time
import uuid

import pytest

from controller.bridge import BridgeSettings, ensure_bridge_with
from flows.pipeline import TABLE_NAMES
from ovsdb import keys
from ovsdb.client import OvsdbClient
from ovsdb.errors import BridgeNotFound, InterfaceError, OvsdbError, OvsdbTimeout, PortNotFound

pytestmark = pytest.mark.ovs

DPID = "00000000000000aa"


@pytest.fixture
def client(ovs):
    c = OvsdbClient(ovs.db_remote)
    yield c
    c.close()


@pytest.fixture
def bridge(ovs, client):
    name = f"br-{uuid.uuid4().hex[:8]}"
    client.ensure_bridge(name, "netdev", DPID)
    yield name
    ovs.vsctl("--if-exists", "del-br", name)


@pytest.fixture
def veth(ovs):
    """`veth()`: a fresh veth pair in the sandbox's namespace; returns the host-side name."""
    made: list[str] = []

    def make() -> str:
        name = f"pv{uuid.uuid4().hex[:8]}"
        pair = [name, "type", "veth", "peer", "name", name + "p"]
        subprocess.run(["ip", "-n", ovs.netns, "link", "add", *pair], check=True)
        made.append(name)
        return name

    yield make
    for name in made:
        subprocess.run(["ip", "-n", ovs.netns, "link", "del", name], capture_output=True)


def get(ovs, table, record, column):
    return ovs.vsctl("get", table, record, column).strip()


# --- bridge -----------------------------------------------------------------------------------


def test_ensure_bridge_is_idempotent_and_sets_everything(ovs, client, bridge):
    client.ensure_bridge(bridge, "netdev", DPID, {"owner": "plumb"})
    client.ensure_bridge(bridge, "netdev", DPID, {"owner": "plumb"})
    assert get(ovs, "bridge", bridge, "fail_mode") == "secure"
    assert get(ovs, "bridge", bridge, "protocols") == "[OpenFlow10, OpenFlow13, OpenFlow15]"
    assert get(ovs, "bridge", bridge, "datapath_type") == "netdev"
    assert get(ovs, "bridge", bridge, "other_config:datapath-id") == f'"{DPID}"'
    assert get(ovs, "bridge", bridge, "external_ids:owner") == "plumb"
    assert ovs.vsctl("list-br").split().count(bridge) == 1


def test_ensure_bridge_returns_once_vswitchd_has_it(ovs, client):
    name = f"br-{uuid.uuid4().hex[:8]}"
    try:
        client.ensure_bridge(name, "netdev", "0000000000abcdef")
        # No polling: the transaction waited for ovs-vswitchd, as ovs-vsctl does.
        assert ovs.mgmt_socket(name).exists()
        for flavour in ([], ["-O", "OpenFlow13"], ["-O", "OpenFlow15"]):
            assert "dpid:0000000000abcdef" in ovs.ofctl(*flavour, "show", name)
    finally:
        ovs.vsctl("--if-exists", "del-br", name)


def test_ensure_bridge_repairs_a_drifted_datapath_type(ovs, client):
    name = f"br-{uuid.uuid4().hex[:8]}"
    ovs.vsctl("--no-wait", "add-br", name)  # datapath_type "" (system): not usable here
    try:
        client.ensure_bridge(name, "netdev", DPID)
        assert get(ovs, "bridge", name, "datapath_type") == "netdev"
        assert "n_tables" in ovs.ofctl("show", name)
    finally:
        ovs.vsctl("--if-exists", "del-br", name)


@pytest.mark.parametrize("dpid", ["aa", "00000000000000zz", "0x000000000000aa", ""])
def test_ensure_bridge_rejects_a_malformed_datapath_id(client, dpid):
    with pytest.raises(ValueError, match="16 hex digits"):
        client.ensure_bridge("br-never", "netdev", dpid)


def test_table_names_are_set_once_and_shown_by_ovs_ofctl(ovs, client, bridge):
    client.ensure_table_names(bridge, TABLE_NAMES)
    rows = ovs.vsctl("--columns=_uuid", "list", "Flow_Table")
    client.ensure_table_names(bridge, TABLE_NAMES)
    assert ovs.vsctl("--columns=_uuid", "list", "Flow_Table") == rows  # nothing rewritten
    ovs.ofctl("add-flow", bridge, "table=4,priority=1,actions=drop")
    assert "table=SpoofGuard" in ovs.ofctl("-O", "OpenFlow15", "--names", "dump-flows", bridge)


def test_table_names_replace_stale_ones(ovs, client, bridge):
    client.ensure_table_names(bridge, {3: "Old", 4: "Gone"})
    client.ensure_table_names(bridge, {3: "Classifier"})
    ovs.ofctl("add-flow", bridge, "table=3,priority=1,actions=drop")
    ovs.ofctl("add-flow", bridge, "table=4,priority=1,actions=drop")
    dump = ovs.ofctl("-O", "OpenFlow15", "--names", "dump-flows", bridge)
    assert "table=Classifier" in dump and " table=4," in dump
    assert "Old" not in dump and "Gone" not in dump
    assert get(ovs, "bridge", bridge, "flow_tables").count("=") == 1


def test_bridge_external_ids_hold_the_round(client, bridge):
    assert client.get_bridge_external_id(bridge, keys.BRIDGE_ROUND) is None
    client.set_bridge_external_id(bridge, keys.BRIDGE_ROUND, "7")
    assert client.get_bridge_external_id(bridge, keys.BRIDGE_ROUND) == "7"


def test_a_missing_bridge_is_bridge_not_found(client):
    with pytest.raises(BridgeNotFound, match="br-nothere"):
        client.get_bridge_external_id("br-nothere", keys.BRIDGE_ROUND)
    with pytest.raises(BridgeNotFound):
        client.add_pod_port("br-nothere", "pvnothere", {})
    with pytest.raises(BridgeNotFound):
        client.list_ports("br-nothere")


# --- gateway and tunnel -----------------------------------------------------------------------


def test_gateway_port_gets_its_ofport_mac_and_mtu(ovs, client, bridge):
    mac = "0a:58:0a:f4:00:01"
    port = client.ensure_gateway_port(bridge, "plumb-gw0", 32769, mac=mac, mtu=1450)
    again = client.ensure_gateway_port(bridge, "plumb-gw0", 32769, mac=mac, mtu=1450)
    assert (port.ofport, port.type, port.mac_in_use) == (32769, "internal", mac)
    assert again == port
    assert port.external_ids[keys.PORT_TYPE] == keys.PORT_TYPE_GATEWAY
    assert get(ovs, "interface", "plumb-gw0", "mtu") == "1450"


def test_gateway_and_tunnel_ports_through_the_node_bridge(client, bridge):
    settings = BridgeSettings(name=bridge, datapath_type="netdev", tunnel_type="geneve")
    node = ensure_bridge_with(client, settings, with_gateway=True)
    assert node.gateway is not None and node.gateway.ofport == 32769
    assert node.tunnel is not None and node.tunnel.ofport == 32768
    assert node.tunnel.type == "geneve"


def test_tunnel_port_is_flow_based_and_idempotent(ovs, client, bridge):
    port = client.ensure_tunnel_port(bridge, "plumb-tun0", "geneve", 32768, local_ip="10.0.0.1")
    row = get(ovs, "interface", "plumb-tun0", "_uuid")
    assert client.ensure_tunnel_port(bridge, "plumb-tun0", "geneve", 32768, "10.0.0.1") == port
    assert get(ovs, "interface", "plumb-tun0", "_uuid") == row
    assert (port.ofport, port.type) == (32768, "geneve")
    options = get(ovs, "interface", "plumb-tun0", "options")
    assert options == '{key=flow, local_ip="10.0.0.1", remote_ip=flow}'


def test_tunnel_type_or_option_change_recreates_the_port(ovs, client, bridge):
    client.ensure_tunnel_port(bridge, "plumb-tun0", "geneve", 32768)
    first = get(ovs, "interface", "plumb-tun0", "_uuid")
    port = client.ensure_tunnel_port(bridge, "plumb-tun0", "vxlan", 32768)
    second = get(ovs, "interface", "plumb-tun0", "_uuid")
    assert (port.type, port.ofport) == ("vxlan", 32768)
    assert second != first
    client.ensure_tunnel_port(bridge, "plumb-tun0", "vxlan", 32768, local_ip="10.0.0.2")
    assert get(ovs, "interface", "plumb-tun0", "_uuid") != second
    assert ovs.vsctl("list-ports", bridge).split() == ["plumb-tun0"]


def test_unknown_tunnel_type_is_refused(client, bridge):
    with pytest.raises(ValueError, match="gre"):
        client.ensure_tunnel_port(bridge, "plumb-tun0", "gre", 32768)


# --- pod ports --------------------------------------------------------------------------------


def test_pod_port_on_a_real_veth_gets_an_ofport(ovs, client, bridge, veth):
    name = veth()
    port = client.add_pod_port(bridge, name, {keys.POD_NAME: "web-0"})
    assert port.ofport > 0
    assert get(ovs, "interface", name, "ofport") == str(port.ofport)
    assert port.external_ids == {keys.POD_NAME: "web-0", keys.PORT_TYPE: keys.PORT_TYPE_POD}
    assert [p.name for p in client.list_ports(bridge, pod_name="web-0")] == [name]
    assert client.port_info(name) == port


def test_pod_port_again_replaces_its_external_ids(client, bridge, veth):
    name = veth()
    first = client.add_pod_port(bridge, name, {keys.POD_NAME: "a", keys.GATEWAY: "10.0.0.1"})
    again = client.add_pod_port(bridge, name, {keys.POD_NAME: "b"})
    assert again.ofport == first.ofport
    assert again.external_ids == {keys.POD_NAME: "b", keys.PORT_TYPE: keys.PORT_TYPE_POD}


def test_pod_port_honours_ofport_request(client, bridge, veth):
    assert client.add_pod_port(bridge, veth(), {}, ofport_request=4242).ofport == 4242


def test_pod_port_without_a_netdev_raises_and_leaves_no_row(ovs, client, bridge):
    with pytest.raises(InterfaceError, match="no ofport: could not open network device") as e:
        client.add_pod_port(bridge, "nosuchdev0", {})
    assert e.value.port == "nosuchdev0" and "No such device" in e.value.error
    assert "nosuchdev0" not in ovs.vsctl("list-ports", bridge)
    assert "nosuchdev0" not in ovs.vsctl("--columns=name", "list", "Interface")


def test_delete_port_is_idempotent(ovs, client, bridge, veth):
    name = veth()
    client.add_pod_port(bridge, name, {})
    client.delete_port(bridge, name)
    client.delete_port(bridge, name)
    client.delete_port("br-nothere", name)
    assert ovs.vsctl("list-ports", bridge).split() == []
    with pytest.raises(PortNotFound):
        client.port_info(name)


def test_delete_port_leaves_a_same_named_port_on_another_bridge(ovs, client, bridge, veth):
    other = f"br-{uuid.uuid4().hex[:8]}"
    client.ensure_bridge(other, "netdev", "00000000000000bb")
    try:
        name = veth()
        client.add_pod_port(other, name, {})
        client.delete_port(bridge, name)
        assert ovs.vsctl("list-ports", other).split() == [name]
    finally:
        ovs.vsctl("--if-exists", "del-br", other)


def test_list_ports_filters_on_external_ids(client, bridge, veth):
    a, b = veth(), veth()
    client.add_pod_port(bridge, a, {keys.POD_NAMESPACE: "ns1", keys.POD_NAME: "a"})
    client.add_pod_port(bridge, b, {keys.POD_NAMESPACE: "ns1", keys.POD_NAME: "b"})
    client.ensure_gateway_port(bridge, "plumb-gw0", 32769)
    assert {p.name for p in client.list_ports(bridge)} == {a, b, "plumb-gw0"}
    assert {p.name for p in client.list_ports(bridge, pod_namespace="ns1")} == {a, b}
    assert [p.name for p in client.list_ports(bridge, **{keys.POD_NAME: "b"})] == [b]
    assert [p.name for p in client.list_ports(bridge, type="gateway")] == ["plumb-gw0"]


def test_add_pod_port_latency(client, bridge, veth, capsys):
    """One transaction until the ofport is known. Printed for the record; loosely bounded."""
    names = [veth() for _ in range(15)]
    took = []
    for name in names:
        started = time.perf_counter()
        client.add_pod_port(bridge, name, {keys.POD_NAME: name})
        took.append(time.perf_counter() - started)
    median_ms = statistics.median(took) * 1e3
    with capsys.disabled():
        print(f"\nadd_pod_port: median {median_ms:.1f} ms, max {max(took) * 1e3:.1f} ms")
    assert median_ms < 100


# --- connection -------------------------------------------------------------------------------


def test_unreachable_ovsdb_is_a_clear_error(tmp_path):
    with pytest.raises(OvsdbError, match="cannot connect"):
        OvsdbClient(f"unix:{tmp_path}/nothing.sock", timeout=1)


def test_two_clients_in_one_process_talk_to_their_own_servers(make_sandbox):
    a, b = make_sandbox(), make_sandbox()
    ca, cb = OvsdbClient(a.db_remote), OvsdbClient(b.db_remote)
    try:
        ca.ensure_bridge("br-a", "netdev", DPID)
        cb.ensure_bridge("br-b", "netdev", DPID)
        assert a.vsctl("list-br").split() == ["br-a"]
        assert b.vsctl("list-br").split() == ["br-b"]
    finally:
        ca.close()
        cb.close()


def test_client_reconnects_after_ovsdb_server_restarts(make_sandbox):
    ovs = make_sandbox()
    client = OvsdbClient(ovs.db_remote, timeout=10)
    try:
        client.ensure_bridge("br-r", "netdev", DPID)
        ovs.stop()
        ovs.start()
        # No new client: python-ovs reconnects (backing off from 1 s) and resyncs.
        client.set_bridge_external_id("br-r", keys.BRIDGE_ROUND, "2")
        assert client.get_bridge_external_id("br-r", keys.BRIDGE_ROUND) == "2"
        client.ensure_gateway_port("br-r", "plumb-gw0", 32769)
    finally:
        client.close()


def test_client_keeps_reconnecting_every_second_over_restarts_in_a_row(make_sandbox):
    """python-ovs alone doubles its backoff per failed attempt up to 8 s; the agent's client is
    capped at python-ovs's 1 s minimum (its ovsdb-server is local), so the fifth restart in a
    row is as quick to heal as the first."""
    ovs = make_sandbox()
    client = OvsdbClient(ovs.db_remote, timeout=20)
    try:
        client.ensure_bridge("br-r", "netdev", DPID)
        waits = []
        for attempt in range(5):
            ovs.stop_ovsdb()
            ovs.start_ovsdb()
            started = time.monotonic()
            client.set_bridge_external_id("br-r", keys.BRIDGE_ROUND, str(attempt))
            waits.append(time.monotonic() - started)
        assert max(waits) < 3.0, waits  # uncapped: 1, 2, 4, 8, 8 s
    finally:
        client.close()


def test_ovsdb_server_down_is_a_timeout(make_sandbox):
    ovs = make_sandbox()
    client = OvsdbClient(ovs.db_remote, timeout=1)
    try:
        client.ensure_bridge("br-t", "netdev", DPID)
        ovs.stop()
        started = time.monotonic()
        with pytest.raises(OvsdbTimeout, match="no answer from ovsdb-server"):
            client.set_bridge_external_id("br-t", keys.BRIDGE_ROUND, "3")
        assert time.monotonic() - started < 3
    finally:
        client.close()


def test_vswitchd_down_is_a_timeout_for_datapath_changes_only(make_sandbox):
    ovs = make_sandbox()
    client = OvsdbClient(ovs.db_remote, timeout=1)
    try:
        client.ensure_bridge("br-v", "netdev", DPID)
        ovs.stop_vswitchd()
        client.set_bridge_external_id("br-v", keys.BRIDGE_ROUND, "4")  # database only
        with pytest.raises(OvsdbTimeout, match="ovs-vswitchd did not apply it"):
            client.ensure_gateway_port("br-v", "plumb-gw0", 32769)
        ovs.start_vswitchd()
        assert client.ensure_gateway_port("br-v", "plumb-gw0", 32769).ofport == 32769
    finally:
        client.close()


def test_a_closed_client_refuses_calls(ovs):
    client = OvsdbClient(ovs.db_remote)
    client.close()
    client.close()
    with pytest.raises(OvsdbError, match="closed"):
        client.list_ports("br-any")
