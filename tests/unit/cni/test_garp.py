"""The gratuitous ARP frame: a broadcast ARP request whose sender and target address are both
the pod's (RFC 5227's announcement), padded to Ethernet's minimum."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

from cni.garp import garp_frame


def test_garp_frame() -> None:
    frame = garp_frame("0a:58:0a:f4:00:05", IPv4Address("10.244.0.5"))
    assert len(frame) == 60
    mac = bytes.fromhex("0a580af40005")
    ip = IPv4Address("10.244.0.5").packed
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == mac
    assert struct.unpack("!H", frame[12:14])[0] == 0x0806
    htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", frame[14:22])
    assert (htype, ptype, hlen, plen, op) == (1, 0x0800, 6, 4, 1)
    assert frame[22:28] == mac and frame[28:32] == ip  # sender
    assert frame[32:38] == b"\x00" * 6 and frame[38:42] == ip  # target: the same address
    assert frame[42:] == b"\x00" * 18
