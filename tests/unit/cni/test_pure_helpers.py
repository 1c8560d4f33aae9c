"""Pure helpers of the CNI room outside the protocol: host veth naming, IPAM config injection,
delegate version choice, GC's choice of stale reservations, the server's form decoding."""

from __future__ import annotations

from ipaddress import IPv4Network, ip_address, ip_interface, ip_network

from hypothesis import given
from hypothesis import strategies as st

from cni.ipam import fill_route_gateways, host_local_section, pick_version
from cni.ipstore import stale_reservations
from cni.netns import host_ifname, random_mac
from cni.podnet import PodInterface, interface_from_port
from cni.protocol import Attachment, IPConfig, Result, Route
from cni.server import decode_raw


@given(
    pod=st.text(max_size=80),
    cid=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,70}", fullmatch=True),
    ifname=st.from_regex(r"[a-z0-9]{1,15}", fullmatch=True),
)
def test_host_ifname_fits_and_is_deterministic(pod: str, cid: str, ifname: str) -> None:
    name = host_ifname(pod, cid, ifname)
    assert 1 <= len(name.encode()) <= 15
    assert name == host_ifname(pod, cid, ifname)
    assert not any(c in name for c in "/: \t")


def test_ADD_09_host_ifname_differs_per_ifname_and_container() -> None:
    assert host_ifname("web", "c1", "eth0") != host_ifname("web", "c1", "net1")
    assert host_ifname("web", "c1", "eth0") != host_ifname("web", "c2", "eth0")
    assert host_ifname("web-7d4b9c", "c1", "eth0").startswith("web-7d-")
    assert host_ifname("", "k8s-ctr1", "eth0").startswith("k8s-ct-")  # ENV-06 fallback


def test_random_mac_is_local_unicast() -> None:
    for _ in range(50):
        first = int(random_mac()[:2], 16)
        assert first & 0x02 and not first & 0x01


def test_host_local_section_injects_range_gateway_and_default_route() -> None:
    section = host_local_section(
        {"type": "host-local", "subnet": "1.2.3.0/24", "resolvConf": "/x"},
        IPv4Network("10.10.1.0/24"),
        "/tmp/d",
    )
    assert section == {
        "type": "host-local",
        "resolvConf": "/x",
        "ranges": [[{"subnet": "10.10.1.0/24", "gateway": "10.10.1.1"}]],
        "dataDir": "/tmp/d",
        "routes": [{"dst": "0.0.0.0/0"}],
    }
    own_routes = host_local_section(
        {"type": "host-local", "routes": []}, IPv4Network("10.0.0.0/24"), "/d"
    )
    assert own_routes["routes"] == []


def test_DLG_07_pick_delegate_version() -> None:
    host_local_1_1_1 = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"]
    assert pick_version("1.1.0", host_local_1_1_1) == "1.0.0"
    assert pick_version("0.4.0", host_local_1_1_1) == "0.4.0"
    assert pick_version("0.3.0", ["1.0.0"]) is None


def test_DLG_04_routes_without_gw_use_the_ip_gateway() -> None:
    result = Result(
        ips=(IPConfig(ip_interface("10.0.0.5/24"), ip_address("10.0.0.1")),),
        routes=(
            Route(ip_network("0.0.0.0/0")),
            Route(ip_network("1.0.0.0/8"), ip_address("10.0.0.9")),
        ),
    )
    filled = fill_route_gateways(result)
    assert [str(r.gw) for r in filled.routes] == ["10.0.0.1", "10.0.0.9"]


def test_GC_03_stale_reservations() -> None:
    entries = {
        "10.0.0.2": "c1\r\neth0",
        "10.0.0.3": "c2\r\neth0",
        "10.0.0.4": "c1\r\nnet1",
        "10.0.0.5": "c3",  # HL-06: an older id-only file
        "10.0.0.6": " c4 \r\n eth0 ",  # whitespace tolerated
        "lock": "",
        "last_reserved_ip.0": "10.0.0.6",
    }
    valid = frozenset(
        {Attachment("c1", "eth0"), Attachment("c3", "eth0"), Attachment("c4", "eth0")}
    )
    assert stale_reservations(entries, valid) == ["10.0.0.3", "10.0.0.4"]
    assert stale_reservations(entries, frozenset()) == [
        "10.0.0.2",
        "10.0.0.3",
        "10.0.0.4",
        "10.0.0.5",
        "10.0.0.6",
    ]


def test_interface_round_trips_through_port_external_ids() -> None:
    iface = PodInterface(
        container_id="c1",
        ifname="eth0",
        network="plumbnet",
        pod_namespace="default",
        pod_name="web",
        netns="/run/netns/x",
        host_ifname="web-12345678",
        mac="02:00:00:00:00:01",
        ips=(ip_interface("10.0.0.5/24"),),
        gateway=ip_address("10.0.0.1"),
        ofport=7,
    )
    assert interface_from_port("web-12345678", 7, iface.external_ids()) == iface
    assert interface_from_port("plumb-gw0", 32769, {}) is None
    assert iface.owner == "pod/default/web"


@given(value=st.binary().filter(lambda b: b"\0" not in b), stdin=st.binary())
def test_server_body_decoding_is_lossless(value: bytes, stdin: bytes) -> None:
    # The executable sends each variable's bytes as they are (an environment holds no NUL).
    body = b"CNI_ARGS=" + value + b"\0OTHER=x\0\0" + stdin
    env, got = decode_raw(body)
    assert got == stdin
    assert env == {"CNI_ARGS": value.decode("utf-8", "surrogateescape")}
