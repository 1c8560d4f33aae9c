"""Flows that connect this node to its peers: one peer's PodCIDR and gateway, and the tunnel.

`peer_node_flows` covers one remote node: the L3Forwarding flow that sends its PodCIDR into the
tunnel (geneve, vxlan) or to the local gateway for the host to route (none), and in tunnel
modes the ARP responder entry that answers for the peer's gateway with the virtual MAC and the
Classifier flow that admits what the tunnel brings from the peer's address (tun_src).
`tunnel_flows` covers the local end of the tunnel: what leaves by it, and the drop of what
arrives on it from any other address.
"""

from __future__ import annotations

import ipaddress
import zlib
from dataclasses import dataclass

from flows.cookie import Category, Cookie
from flows.fields import (
    ETH_TYPE_ARP,
    ETH_TYPE_IP,
    FROM_TUNNEL,
    OFPP_IN_PORT,
    OUTPUT_TO_PORT,
    REWRITE_MAC_SET,
    TARGET_OFPORT,
    TO_GATEWAY,
    TO_TUNNEL,
    TUNNEL_OFPORT,
    VIRTUAL_MAC,
)
from flows.flow import Flow, GotoTable, Load, Move, Output, SetField, match
from flows.pipeline import table
from flows.pod import LocalNode

TUNNEL_MODES = ("geneve", "vxlan")
ENCAP_MODES = (*TUNNEL_MODES, "none")
ARP_REQUEST = 1
ARP_REPLY = 2


@dataclass(frozen=True, slots=True)
class PeerNode:
    """What the datapath needs to know of one remote node."""

    name: str
    address: str  # transport (underlay) IPv4 address: the tunnel destination or next hop
    pod_cidr: str

    def __post_init__(self) -> None:
        # Normalise so that equal subnets compare equal ("10.0.1.7/24" is "10.0.1.0/24").
        network = ipaddress.IPv4Network(self.pod_cidr, strict=False)
        object.__setattr__(self, "pod_cidr", str(network))
        object.__setattr__(self, "address", str(ipaddress.IPv4Address(self.address)))

    @property
    def gateway_ip(self) -> str:
        """The peer's gateway: the first host address of its PodCIDR (DESIGN section 5)."""
        return str(ipaddress.IPv4Network(self.pod_cidr).network_address + 1)


def node_object_id(name: str) -> int:
    """A stable 32-bit cookie object id for a node (CRC-32 of its name).

    Collisions only merge two nodes' cookie queries; ownership is by owner key, not cookie.
    """
    return zlib.crc32(name.encode())


def node_cookie(round_: int, name: str) -> int:
    return Cookie(round_, Category.NODE, node_object_id(name)).value


def peer_node_flows(
    peer: PeerNode, local: LocalNode, mode: str, cookie: int, tunnel_ofport: int = TUNNEL_OFPORT
) -> list[Flow]:
    """All flows of one peer node in encapsulation `mode` (geneve, vxlan or none)."""
    _check_mode(mode)
    if mode == "none":
        return [_routed_flow(peer, local, cookie)]
    return [
        _tunnel_forwarding_flow(peer, local, cookie),
        _arp_responder_flow(peer, cookie),
        _from_peer_flow(peer, cookie, tunnel_ofport),
    ]


def tunnel_flows(mode: str, cookie: int, tunnel_ofport: int = TUNNEL_OFPORT) -> list[Flow]:
    """The local tunnel end's flows; none in routed mode, which has no tunnel port."""
    _check_mode(mode)
    if mode == "none":
        return []
    return [
        # Anything the tunnel port decapsulates from an address that is no known node's
        # (anyone on the underlay can send Geneve or VXLAN to this node) is dropped here; its
        # counter says how much of it came. Peers' own flows above it let theirs in.
        table("Classifier").flow(190, match(in_port=tunnel_ofport), [], cookie),
        table("L2ForwardingCalc").flow(
            200,
            match(eth_dst=VIRTUAL_MAC),
            [
                Load(TARGET_OFPORT, tunnel_ofport),
                Load.mark(OUTPUT_TO_PORT),
                Load.mark(TO_TUNNEL),
                GotoTable("IngressSecurityClassifier"),
            ],
            cookie,
        ),
    ]


def _check_mode(mode: str) -> None:
    if mode not in ENCAP_MODES:
        raise ValueError(f"encapsulation mode must be one of {ENCAP_MODES}, not {mode!r}")


def _tunnel_forwarding_flow(peer: PeerNode, local: LocalNode, cookie: int) -> Flow:
    return table("L3Forwarding").flow(
        200,
        match(eth_type=ETH_TYPE_IP, ipv4_dst=peer.pod_cidr),
        [
            SetField.of("eth_src", local.gateway_mac),
            SetField.of("eth_dst", VIRTUAL_MAC),
            SetField.of("tun_ipv4_dst", peer.address),
            Load.mark(TO_TUNNEL),
            GotoTable("L3DecTTL"),
        ],
        cookie,
    )


def _from_peer_flow(peer: PeerNode, cookie: int, tunnel_ofport: int) -> Flow:
    # Packets from a peer's tunnel address were spoof-checked on their own node: straight to
    # conntrack, and L3Forwarding must rewrite their (virtual) destination MAC to the pod's.
    return table("Classifier").flow(
        200,
        match(in_port=tunnel_ofport, tun_ipv4_src=peer.address),
        [Load.mark(FROM_TUNNEL), Load.mark(REWRITE_MAC_SET), GotoTable("ConntrackZone")],
        cookie,
    )


def _routed_flow(peer: PeerNode, local: LocalNode, cookie: int) -> Flow:
    # The host routes it (and decrements the TTL), so L3DecTTL is skipped.
    return table("L3Forwarding").flow(
        200,
        match(eth_type=ETH_TYPE_IP, ipv4_dst=peer.pod_cidr),
        [
            SetField.of("eth_dst", local.gateway_mac),
            Load.mark(TO_GATEWAY),
            GotoTable("L2ForwardingCalc"),
        ],
        cookie,
    )


def _arp_responder_flow(peer: PeerNode, cookie: int) -> Flow:
    """Answer "who has <peer gateway>?" in the switch: the request becomes the reply."""
    return table("ARPResponder").flow(
        200,
        match(eth_type=ETH_TYPE_ARP, arp_op=ARP_REQUEST, arp_tpa=peer.gateway_ip),
        [
            Move("eth_src", "eth_dst"),
            SetField.of("eth_src", VIRTUAL_MAC),
            SetField.of("arp_op", ARP_REPLY),
            Move("arp_sha", "arp_tha"),
            SetField.of("arp_sha", VIRTUAL_MAC),
            Move("arp_spa", "arp_tpa"),
            SetField.of("arp_spa", peer.gateway_ip),
            Output(OFPP_IN_PORT),
        ],
        cookie,
    )
