"""After ADD the new pod announces itself: a neighbour on the node sees its gratuitous ARP (sender
and target address its own, sender MAC its eth0's), so a stale entry for a reused address is
replaced at once."""

from __future__ import annotations

import os
import socket
import struct
import time
from ipaddress import IPv4Address, ip_interface

import pytest

from cni.netns import in_netns, open_netns
from tests.cni.conftest import Node

pytestmark = pytest.mark.ovs

ETH_P_ARP = 0x0806


def arp_listener(netns: str) -> socket.socket:
    fd = open_netns(netns)
    try:
        return in_netns(
            fd, lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
        )
    finally:
        os.close(fd)


def announcements(
    sock: socket.socket, seconds: float
) -> list[tuple[str, IPv4Address, IPv4Address]]:
    """(sender MAC, sender IP, target IP) of every ARP request heard within `seconds`."""
    sock.settimeout(0.1)
    heard = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            frame = sock.recv(2048)
        except TimeoutError:
            continue
        if len(frame) >= 42 and struct.unpack("!H", frame[20:22])[0] == 1:
            sha = ":".join(f"{b:02x}" for b in frame[22:28])
            heard.append((sha, IPv4Address(frame[28:32]), IPv4Address(frame[38:42])))
    return heard


def test_a_new_pod_sends_a_gratuitous_arp(node: Node) -> None:
    neighbour_ns = node.make_netns()
    node.add(node.next_id("c"), neighbour_ns)
    with arp_listener(neighbour_ns) as sock:
        result = node.add(node.next_id("c"), node.make_netns())
        heard = announcements(sock, 2.0)
    ip = ip_interface(result["ips"][0]["address"]).ip
    mac = result["interfaces"][1]["mac"]
    assert (mac, ip, ip) in heard, heard
