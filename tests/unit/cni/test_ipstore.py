"""The in-agent allocator's pure parts: the range as host-local sees it, round-robin order,
reading reservation files, and which addresses a call asks for (HL-02, HL-04, HL-05, HL-06)."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cni.ipam import in_agent, requested_ip
from cni.ipstore import AddressRange, belongs_to, owner_of
from cni.protocol import Attachment, CniError, ErrorCode, parse_request


def test_HL_02_range_defaults() -> None:
    r = AddressRange.of(IPv4Network("10.0.0.0/24"))
    assert (str(r.gateway), str(r.first), str(r.last)) == ("10.0.0.1", "10.0.0.1", "10.0.0.254")
    assert r.size == 253
    assert not r.usable(IPv4Address("10.0.0.1"))  # the gateway
    assert r.usable(IPv4Address("10.0.0.2")) and r.usable(IPv4Address("10.0.0.254"))
    assert not r.usable(IPv4Address("10.0.0.255")) and not r.usable(IPv4Address("10.0.1.2"))


@pytest.mark.parametrize("cidr", ["10.0.0.0/31", "10.0.0.0/32"])
def test_HL_02_too_small(cidr: str) -> None:
    with pytest.raises(CniError) as info:
        AddressRange.of(IPv4Network(cidr))
    assert info.value.code == ErrorCode.INVALID_NETWORK_CONFIG


def test_HL_04_round_robin_after_the_last_reserved_and_wrapping() -> None:
    r = AddressRange.of(IPv4Network("10.0.0.0/29"))  # usable .2-.6
    order = [str(a) for a in r.round_robin(IPv4Address("10.0.0.4"))]
    assert order == ["10.0.0.5", "10.0.0.6", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
    fresh = [str(a) for a in r.round_robin(None)]
    assert fresh == ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
    assert [str(a) for a in r.round_robin(IPv4Address("192.0.2.9"))] == fresh


@given(prefix=st.integers(22, 30), last=st.integers(0, 2**10))
def test_round_robin_visits_every_usable_address_once(prefix: int, last: int) -> None:
    net = IPv4Network(f"10.20.0.0/{prefix}")
    r = AddressRange.of(net)
    after = net.network_address + (last % net.num_addresses)
    order = list(r.round_robin(after))
    assert len(order) == len(set(order)) == r.size
    assert all(r.usable(a) for a in order)


def test_HL_06_reservation_files_as_host_local_writes_them() -> None:
    assert owner_of("c1\r\neth0") == ("c1", "eth0")
    assert owner_of(" c1 \r\n eth0 \n") == ("c1", "eth0")
    assert owner_of("c1") == ("c1", None)  # older, id-only
    assert owner_of("") == ("", None)
    assert belongs_to("c1\r\neth0", Attachment("c1", "eth0"))
    assert not belongs_to("c1\r\neth0", Attachment("c1", "net1"))
    assert belongs_to("c1", Attachment("c1", "net1"))
    assert not belongs_to("c2\r\neth0", Attachment("c1", "eth0"))


ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "c1",
    "CNI_NETNS": "/run/netns/x",
    "CNI_IFNAME": "eth0",
    "CNI_PATH": "/usr/lib/cni",
}


def request(cni_args: str = "", /, **conf: Any) -> Any:
    env = {**ENV, "CNI_ARGS": cni_args} if cni_args else ENV
    body = {"cniVersion": "1.0.0", "name": "net", "type": "plumb", **conf}
    return parse_request(env, json.dumps(body).encode())


def test_the_ipam_type_decides_who_allocates() -> None:
    assert in_agent(request())  # no ipam section
    assert in_agent(request(ipam={"type": "plumb"}))
    assert not in_agent(request(ipam={"type": "host-local"}))
    assert not in_agent(request(ipam={"type": "whereabouts"}))


def test_HL_05_requested_address_three_ways() -> None:
    assert requested_ip(request()) is None
    assert requested_ip(request("IgnoreUnknown=1;IP=10.0.0.9")) == IPv4Address("10.0.0.9")
    assert requested_ip(request(args={"cni": {"ips": ["10.0.0.9/24"]}})) == IPv4Address("10.0.0.9")
    assert requested_ip(request(runtimeConfig={"ips": ["10.0.0.9/24"]})) == IPv4Address("10.0.0.9")
    # the same address asked for twice is one request
    both = request("IP=10.0.0.9", runtimeConfig={"ips": ["10.0.0.9/24"]})
    assert requested_ip(both) == IPv4Address("10.0.0.9")


@pytest.mark.parametrize(
    ("cni_args", "conf", "code"),
    [
        ("IP=nonsense", {}, ErrorCode.INVALID_ENVIRONMENT),
        ("IP=2001:db8::1", {}, ErrorCode.INVALID_ENVIRONMENT),
        ("", {"runtimeConfig": {"ips": [7]}}, ErrorCode.INVALID_NETWORK_CONFIG),
        ("IP=10.0.0.9", {"args": {"cni": {"ips": ["10.0.0.8"]}}}, ErrorCode.INVALID_NETWORK_CONFIG),
    ],
)
def test_HL_05_bad_requests(cni_args: str, conf: dict[str, Any], code: int) -> None:
    with pytest.raises(CniError) as info:
        requested_ip(request(cni_args, **conf))
    assert info.value.code == code
