"""A pod that talked to a deleted pod must reach the new pod that gets the same IP at once.

Found by `python -m bench soak`: pods on one node talk over L2 (their ARP is flooded, the
pipeline forwards on eth_dst), so a client keeps the deleted pod's MAC for that IP until its
neighbour entry goes stale and is re-probed (up to half a minute and more), and the new pod is
unreachable meanwhile. The allocator (the agent's, like host-local) hands out an IP again once
its range wraps; the test makes it do so at once by setting its last reservation. Fixed in the
CNI room: the new pod sends a gratuitous ARP once its port and flows are in (cni/garp.py)."""

from __future__ import annotations

import ipaddress

import pytest

from bench import reliability
from bench.reliability import Lane, pod_object

pytestmark = pytest.mark.lab


def test_a_client_reaches_a_new_pod_that_reuses_a_deleted_pods_ip_at_once() -> None:
    with reliability.world() as w:
        old = pod_object("old", "node1", {"app": "web"})
        w.apply([old])
        client, old_ip = w.pod("client"), w.pod("old").ip
        assert Lane(client, w.pod("old"), "TCP", True).probe_once(1.0)[0]
        w.delete([old])
        ranges = w.node("node1").ipam_dir
        (last,) = ranges.rglob("last_reserved_ip.0")
        last.write_text(str(ipaddress.IPv4Address(old_ip) - 1))
        w.apply([pod_object("new", "node1", {"app": "web"})])
        assert w.pod("new").ip == old_ip, "the allocator did not hand the IP out again"
        assert Lane(client, w.pod("new"), "TCP", True).probe_once(1.0)[0]
