"""A gratuitous ARP from a pod's interface once its port and flows are in.

Pods on one node talk over L2: a neighbour that talked to a deleted pod keeps that pod's MAC for
its address until the entry goes stale and is re-probed (half a minute and more), so a new pod
given the same address would be unreachable from it meanwhile. An ARP request for the pod's
own address, sent by the pod, lets every neighbour that has an entry for the address take the
new MAC at once (Linux updates existing entries from it; it creates none).
"""

from __future__ import annotations

import os
import socket
import struct
from ipaddress import IPv4Address
from typing import Final

from cni.netns import in_netns, open_netns

ETH_P_ARP: Final = 0x0806
ARP_REQUEST: Final = 1
BROADCAST: Final = b"\xff" * 6
MIN_FRAME: Final = 60  # Ethernet's minimum without the FCS: short frames are padded


def _mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


def garp_frame(mac: str, address: IPv4Address) -> bytes:
    """The Ethernet frame: broadcast, an ARP request whose sender and target address are both
    the pod's (RFC 5227's announcement), the target MAC left zero."""
    sender = _mac_bytes(mac)
    header = BROADCAST + sender + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, ARP_REQUEST)
    arp += sender + address.packed + b"\x00" * 6 + address.packed
    frame = header + arp
    return frame + b"\x00" * (MIN_FRAME - len(frame))


def announce(netns_path: str, ifname: str, mac: str, address: IPv4Address) -> None:
    """Send the pod's gratuitous ARP from `ifname` inside its namespace (a thread of its own
    enters it). Raises OSError when the namespace or the interface is gone."""
    frame = garp_frame(mac, address)
    fd = open_netns(netns_path)
    try:
        in_netns(fd, lambda: _send(ifname, frame))
    finally:
        os.close(fd)


def _send(ifname: str, frame: bytes) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((ifname, 0))
        sock.send(frame)
