"""Sample flows covering every action and match kind the encoder and renderer handle."""

from __future__ import annotations

from flows.fields import (
    CONJ_ID,
    CT_ZONE,
    FROM_POD,
    INGRESS_RULE,
    OFPP_IN_PORT,
    OFPP_NORMAL,
    OUTPUT_TO_PORT,
    REWRITE_MAC_SET,
    TARGET_OFPORT,
    TO_LOCAL,
    TO_TUNNEL,
    VIRTUAL_MAC,
)
from flows.flow import (
    Conjunction,
    Ct,
    DecTtl,
    Flow,
    GotoTable,
    Load,
    Move,
    Output,
    SetField,
    match,
)
from flows.pipeline import table

COOKIE = 0x0001_0200_0000_0007


def sample_flows() -> list[Flow]:
    return [
        table("Classifier").flow(
            190, match(in_port=5), [Load.mark(FROM_POD), GotoTable("SpoofGuard")], COOKIE
        ),
        table("SpoofGuard").flow(
            200,
            match(in_port=5, eth_src="0a:58:0a:00:00:05", eth_type=0x0800, ipv4_src="10.0.0.5"),
            [GotoTable("UnSNAT")],
            COOKIE,
        ),
        table("L3Forwarding").flow(
            200,
            match(REWRITE_MAC_SET, eth_type=0x0800, ipv4_dst="10.0.0.5"),
            [
                SetField.of("eth_src", "12:34:56:78:9a:bc"),
                SetField.of("eth_dst", "0a:58:0a:00:00:05"),
                GotoTable("L3DecTTL"),
            ],
            COOKIE,
        ),
        table("L3Forwarding").flow(
            200,
            match(eth_type=0x0800, ipv4_dst="10.1.0.0/24"),
            [
                SetField.of("eth_dst", VIRTUAL_MAC),
                SetField.of("tun_ipv4_dst", "192.168.1.2"),
                Load.mark(TO_TUNNEL),
                GotoTable("L3DecTTL"),
            ],
            COOKIE,
        ),
        table("L3DecTTL").flow(200, match(eth_type=0x0800), [DecTtl(), GotoTable("SNATMark")]),
        table("L2ForwardingCalc").flow(
            200,
            match(eth_dst="0a:58:0a:00:00:05"),
            [
                Load(TARGET_OFPORT, 5),
                Load.mark(OUTPUT_TO_PORT),
                GotoTable("IngressSecurityClassifier"),
            ],
            COOKIE,
        ),
        table("IngressRule").flow(
            200,
            match(TO_LOCAL, eth_type=0x0800, ip_proto=6, tcp_dst=(80, 0xFFF0)),
            [Conjunction(5, 2, 3)],
            COOKIE,
        ),
        table("IngressRule").flow(
            200,
            match(eth_type=0x0800, ip_proto=17, ipv4_src="10.2.0.0/16", udp_dst=53),
            [Conjunction(5, 1, 3), Conjunction(9, 1, 2)],
            COOKIE,
        ),
        table("IngressRule").flow(
            190,
            match(eth_type=0x0800, conj_id=5),
            [
                Load(CONJ_ID, 5),
                Ct(CT_ZONE, table="IngressMetric", commit=True, exec=(Load(INGRESS_RULE, 5),)),
            ],
            COOKIE,
        ),
        table("ARPResponder").flow(
            200,
            match(eth_type=0x0806, arp_op=1, arp_tpa="10.1.0.1"),
            [
                Move("eth_src", "eth_dst"),
                SetField.of("eth_src", VIRTUAL_MAC),
                SetField.of("arp_op", 2),
                Move("arp_sha", "arp_tha"),
                SetField.of("arp_sha", VIRTUAL_MAC),
                Move("arp_spa", "arp_tpa"),
                SetField.of("arp_spa", "10.1.0.1"),
                Output(OFPP_IN_PORT),
            ],
            COOKIE,
        ),
        table("ARPResponder").flow(190, match(eth_type=0x0806), [Output(OFPP_NORMAL)], COOKIE),
        table("Output").flow(210, match(in_port=5, reg1=5), [Output(OFPP_IN_PORT)], COOKIE),
    ]
