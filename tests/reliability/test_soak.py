"""A short soak: 50 pod creations and deletions in batches under policies and traffic (the
10-minute, 1,000-pod run is `python -m bench soak`). Nothing leaks (ports, links, IPAM
reservations, pod flows, flows), each new pod gets its policy verdict at once, agents' memory
stays within a few MiB, and traffic keeps flowing: no probe fails on one node; across nodes a
failed probe is isolated (no outage longer than one probe's) and there are at most two.

Cross-node traffic used to lose a packet now and then while a veth came or went (ovs-vswitchd
3.1 re-reading the kernel's routes took br-phy out of its tunnel-termination map for a moment,
docs/reliability.md); the lab now routes the underlay so that this no longer happens."""

from __future__ import annotations

import json

import pytest

from bench import soak

pytestmark = pytest.mark.lab

# Lanes probe every 0.1 s here (the bench's 0.5 s would see five times fewer packets), with
# a 1 s timeout: one lost SYN or echo fails a probe, and one failed probe between two good
# ones is an outage of about 1.1 s (its timeout, the interval, the next probe); two in a row
# make 2.2 s. An outage under 2 s is therefore one isolated lost probe; a cut underlay, a
# missing route or a dead tunnel shows as a longer one.
INTERVAL = 0.1
ISOLATED_OUTAGE_MS = 2000
# Cross-node probes (some 550 a run) that may fail. Measured on a shared 2-vCPU VM: with the
# lab's underlay routing, 0 in each of 7 runs (571, 585, 586, 581, 599, 595 and 564 probes);
# with the former one (PLUMB_LAB_UNDERLAY_ROUTES=kernel), 9, 4, 8, 5 and 7 of 481, 562, 514,
# 536 and 530, each an isolated probe. Two leave room for a stall of a shared machine, not for
# that loss coming back.
CROSS_NODE_FAILURES = 2


def test_fifty_pods_created_and_deleted_leave_nothing_behind() -> None:
    figures = soak.soak(cycles=50, duration=0, interval=INTERVAL)
    print(json.dumps({k: v for k, v in figures.items() if k != "curve"}))
    assert figures["cycles"] == 50
    assert figures["leaks"] == {}
    assert figures["flows_after"] == figures["flows_before"]
    assert figures["policy_misses"] == []
    assert figures["leaked_probes"] == 0
    assert figures["failed_same_node"] == 0
    assert figures["max_outage_ms"] < ISOLATED_OUTAGE_MS, figures["failure_reasons"]
    assert figures["failed_cross_node"] <= CROSS_NODE_FAILURES, figures["failure_reasons"]
    assert all(growth < 8 for growth in figures["rss_mib_growth"])
