"""Flows that connect local pods and the node's gateway to the pipeline.

`pod_flows` covers one pod: ARP and IP spoof guard, classification, L3 forwarding with MAC
rewrite for routed traffic, and L2 forwarding to its port. `gateway_flows` covers the node's own
gateway port and the node-wide forwarding flows of the local PodCIDR.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from flows.fields import (
    ETH_TYPE_ARP,
    ETH_TYPE_IP,
    FROM_GATEWAY,
    FROM_POD,
    GATEWAY_OFPORT,
    OUTPUT_TO_PORT,
    PKT_DEST,
    REWRITE_MAC,
    REWRITE_MAC_SET,
    TARGET_OFPORT,
    TO_GATEWAY,
    TO_LOCAL,
)
from flows.flow import Flow, GotoTable, Load, SetField, match
from flows.pipeline import table


@dataclass(frozen=True, slots=True)
class PodPort:
    """What the datapath needs to know of one local pod interface."""

    ofport: int
    ip: str
    mac: str


@dataclass(frozen=True, slots=True)
class LocalNode:
    """The local node's gateway and PodCIDR."""

    pod_cidr: str
    gateway_ip: str
    gateway_mac: str
    gateway_ofport: int = GATEWAY_OFPORT


def pod_flows(pod: PodPort, node: LocalNode, cookie: int) -> list[Flow]:
    """All flows of one local pod."""
    port = pod.ofport
    return [
        table("ARPSpoofGuard").flow(
            200,
            match(eth_type=ETH_TYPE_ARP, in_port=port, arp_spa=pod.ip, arp_sha=pod.mac),
            [GotoTable("ARPResponder")],
            cookie,
        ),
        table("Classifier").flow(
            190, match(in_port=port), [Load.mark(FROM_POD), GotoTable("SpoofGuard")], cookie
        ),
        table("SpoofGuard").flow(
            200,
            match(in_port=port, eth_src=pod.mac, eth_type=ETH_TYPE_IP, ipv4_src=pod.ip),
            [GotoTable("UnSNAT")],
            cookie,
        ),
        table("L3Forwarding").flow(
            200,
            match(REWRITE_MAC_SET, eth_type=ETH_TYPE_IP, ipv4_dst=pod.ip),
            [
                SetField.of("eth_src", node.gateway_mac),
                SetField.of("eth_dst", pod.mac),
                GotoTable("L3DecTTL"),
            ],
            cookie,
        ),
        table("L2ForwardingCalc").flow(
            200,
            match(eth_dst=pod.mac),
            _to_port(port, TO_LOCAL.value),
            cookie,
        ),
    ]


def gateway_flows(node: LocalNode, cookie: int) -> list[Flow]:
    """The gateway port's flows and the node-wide forwarding flows of the local PodCIDR."""
    gw = node.gateway_ofport
    no_rewrite = REWRITE_MAC.mark(0)
    cidr = str(ipaddress.ip_network(node.pod_cidr, strict=False))
    return [
        table("ARPSpoofGuard").flow(
            200,
            match(
                eth_type=ETH_TYPE_ARP, in_port=gw, arp_spa=node.gateway_ip, arp_sha=node.gateway_mac
            ),
            [GotoTable("ARPResponder")],
            cookie,
        ),
        table("Classifier").flow(
            200, match(in_port=gw), [Load.mark(FROM_GATEWAY), GotoTable("SpoofGuard")], cookie
        ),
        # The gateway legitimately carries foreign sources (the node's other addresses, NAT).
        table("SpoofGuard").flow(
            200, match(in_port=gw, eth_type=ETH_TYPE_IP), [GotoTable("UnSNAT")], cookie
        ),
        # Routed traffic (from the tunnel) for the node itself.
        table("L3Forwarding").flow(
            210,
            match(REWRITE_MAC_SET, eth_type=ETH_TYPE_IP, ipv4_dst=node.gateway_ip),
            [SetField.of("eth_dst", node.gateway_mac), GotoTable("L2ForwardingCalc")],
            cookie,
        ),
        # Switched traffic between local pods and from the node to its pods needs no rewrite.
        table("L3Forwarding").flow(
            190,
            match(no_rewrite, eth_type=ETH_TYPE_IP, ipv4_dst=cidr),
            [GotoTable("L2ForwardingCalc")],
            cookie,
        ),
        table("L2ForwardingCalc").flow(
            200, match(eth_dst=node.gateway_mac), _to_port(gw, TO_GATEWAY.value), cookie
        ),
    ]


def _to_port(ofport: int, dest_kind: int) -> list[Load | GotoTable]:
    return [
        Load(TARGET_OFPORT, ofport),
        Load.mark(OUTPUT_TO_PORT),
        Load(PKT_DEST, dest_kind),
        GotoTable("IngressSecurityClassifier"),
    ]
