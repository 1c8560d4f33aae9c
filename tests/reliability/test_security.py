"""Security on a two-node lab: the CNI socket is root's alone (0600); the agent has no socket
but its health and metrics listener (on loopback in the lab); a pod's frames with a forged
source IP or MAC, and its ARP replies claiming another pod's address, go nowhere, on its node or
across the tunnel, while honest ones arrive; Geneve injected on the underlay reaches a pod only
from a known node's tunnel address."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bench import reliability

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def figures() -> dict[str, Any]:
    result = reliability.security()
    print(json.dumps(result))
    return result


def test_the_cni_socket_is_root_only(figures: dict[str, Any]) -> None:
    assert figures["cni_socket_mode"] == "0o600" and figures["cni_socket_uid"] == 0


def test_the_agent_listens_on_health_and_metrics_only(figures: dict[str, Any]) -> None:
    assert figures["agent_sockets"] == ["tcp 127.0.0.1:9641"]


def test_a_pod_cannot_forge_its_ip_or_mac_across_nodes(figures: dict[str, Any]) -> None:
    assert figures["honest_delivered"] == 3, "the honest frames must arrive (the capture works)"
    assert figures["forged_ip_delivered"] == 0
    assert figures["forged_mac_delivered"] == 0


def test_a_pod_cannot_claim_another_pods_address_by_arp(figures: dict[str, Any]) -> None:
    assert figures["honest_arp_seen_by_neighbour"] == 3, "honest ARP must flood (capture works)"
    assert figures["forged_arp_seen_by_neighbour"] == 0
    assert figures["forged_arp_seen_on_node2"] == 0


def test_geneve_from_a_stranger_on_the_underlay_is_not_delivered(figures: dict[str, Any]) -> None:
    assert figures["from_known_node_delivered"] == 3, "from a node it must arrive (injection works)"
    assert figures["from_stranger_delivered"] == 0
