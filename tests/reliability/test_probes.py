"""The lanes' ICMP probe counts only its own reply: a raw socket in the source pod also sees
the replies to the pod's other lanes (a reply with another source or identifier counted would
show a denied lane as leaking)."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from bench import reliability
from bench.reliability import _icmp_checksum, _is_echo_reply


def _datagram(source: str, icmp_type: int, ident: int) -> bytes:
    body = struct.pack("!HH", ident, 1) + b"x"
    icmp = struct.pack("!BBH", icmp_type, 0, _icmp_checksum(bytes([icmp_type, 0, 0, 0]) + body))
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp + body), 0, 0, 64, 1, 0,
        socket.inet_aton(source), socket.inet_aton("10.0.0.1"),
    )  # fmt: skip
    return ip + icmp + body


def test_the_reply_from_the_probed_address_with_its_identifier_counts() -> None:
    assert _is_echo_reply(_datagram("10.0.1.5", 0, 77), socket.inet_aton("10.0.1.5"), 77)


def test_a_reply_to_another_lane_does_not_count() -> None:
    want = socket.inet_aton("10.0.1.5")
    assert not _is_echo_reply(_datagram("10.0.2.9", 0, 77), want, 77)  # other destination
    assert not _is_echo_reply(_datagram("10.0.1.5", 0, 78), want, 77)  # other identifier
    assert not _is_echo_reply(_datagram("10.0.1.5", 8, 77), want, 77)  # a request, not a reply


@pytest.mark.lab
def test_a_denied_lane_beside_an_allowed_one_with_colliding_identifiers_does_not_leak() -> None:
    """`peer` pings `web` (allowed) and `client` (denied by peer's egress policy) from one
    namespace; with the denied lane's identifier just ahead of the allowed lane's, the allowed
    lane's replies carry it within a second. Counting them made the denied lane "leak" (5 of 12
    probes in 8 s before the source check)."""
    with reliability.world() as w:
        lanes = [lane for lane in w.lanes(("ICMP",)) if lane.src.name == "peer"]
        allowed = next(lane for lane in lanes if lane.allowed and lane.dst.name == "web")
        denied = next(lane for lane in lanes if not lane.allowed)
        denied._ident = (allowed._ident + 3) & 0xFFFF
        with reliability.Traffic([allowed, denied]) as traffic:
            time.sleep(6)
        figures = traffic.figures()
    assert figures.allowed_probes > 20 and figures.failed == 0
    assert figures.denied_probes >= 4 and figures.leaked == 0
