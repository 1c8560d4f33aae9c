"""A short soak: 50 pod creations and deletions in batches under policies and traffic (the
10-minute, 1,000-pod run is `python -m bench soak`). Nothing leaks (ports, links, IPAM
reservations, pod flows, flows), each new pod gets its policy verdict at once, agents' memory
stays within a few MiB, and same-node traffic never fails (cross-node traffic may lose a packet
while a veth comes or goes, a userspace-datapath effect: docs/reliability.md)."""

from __future__ import annotations

import json

import pytest

from bench import soak

pytestmark = pytest.mark.lab


def test_fifty_pods_created_and_deleted_leave_nothing_behind() -> None:
    figures = soak.soak(cycles=50, duration=0)
    print(json.dumps({k: v for k, v in figures.items() if k != "curve"}))
    assert figures["cycles"] == 50
    assert figures["leaks"] == {}
    assert figures["flows_after"] == figures["flows_before"]
    assert figures["policy_misses"] == []
    assert figures["leaked_probes"] == 0
    assert figures["failed_same_node"] == 0
    assert figures["failed_cross_node"] <= 0.05 * figures["cross_node_probes"]
    assert all(growth < 8 for growth in figures["rss_mib_growth"])
