"""The pipeline skeleton: every table's miss flow plus the static flows no object owns.

Static flows: the root classifier (ARP and IP), ARP to NORMAL, conntrack (zone, invalid drop,
commit), the established/related bypass of the policy rule tables, TTL decrement, ingress policy
skipped towards the gateway and the tunnel, and output by target port.
"""

from __future__ import annotations

from flows.cookie import Category, Cookie
from flows.fields import (
    CT_SOURCE,
    CT_ZONE,
    ETH_TYPE_ARP,
    ETH_TYPE_IP,
    FROM_GATEWAY,
    OFPP_NORMAL,
    OUTPUT_TO_PORT,
    PKT_SOURCE,
    TARGET_OFPORT,
    TO_GATEWAY,
    TO_TUNNEL,
)
from flows.flow import Ct, DecTtl, Flow, GotoTable, Move, Output, OutputReg, match
from flows.pipeline import TABLES, table


def pipeline_cookie(round_: int) -> int:
    return Cookie(round_, Category.PIPELINE).value


def miss_flows(round_: int) -> list[Flow]:
    cookie = pipeline_cookie(round_)
    return [t.miss_flow(cookie) for t in TABLES.values()]


def skeleton_flows(round_: int) -> list[Flow]:
    """All flows of the pipeline skeleton for one cookie round."""
    cookie = pipeline_cookie(round_)
    return [*miss_flows(round_), *_static_flows(cookie)]


def _static_flows(cookie: int) -> list[Flow]:
    root = table("PipelineRootClassifier")
    zone = table("ConntrackZone")
    state = table("ConntrackState")
    commit = table("ConntrackCommit")
    dec_ttl = table("L3DecTTL")
    ingress_classifier = table("IngressSecurityClassifier")
    ip = match(eth_type=ETH_TYPE_IP)
    established = match(eth_type=ETH_TYPE_IP, ct_state="-new+trk")
    return [
        root.flow(200, match(eth_type=ETH_TYPE_ARP), [GotoTable("ARPSpoofGuard")], cookie),
        root.flow(200, ip, [GotoTable("Classifier")], cookie),
        zone.flow(200, ip, [Ct(CT_ZONE, table="ConntrackState", nat=True)], cookie),
        state.flow(200, match(eth_type=ETH_TYPE_IP, ct_state="+inv+trk"), [], cookie),
        table("ARPResponder").flow(
            190, match(eth_type=ETH_TYPE_ARP), [Output(OFPP_NORMAL)], cookie
        ),
        table("EgressRule").flow(210, established, [GotoTable("EgressMetric")], cookie),
        table("IngressRule").flow(210, established, [GotoTable("IngressMetric")], cookie),
        # The node's kernel already decremented what it routed into the gateway.
        dec_ttl.flow(
            210, match(FROM_GATEWAY, eth_type=ETH_TYPE_IP), [GotoTable("SNATMark")], cookie
        ),
        dec_ttl.flow(200, match(eth_type=ETH_TYPE_IP), [DecTtl(), GotoTable("SNATMark")], cookie),
        ingress_classifier.flow(200, match(TO_GATEWAY), [GotoTable("IngressMetric")], cookie),
        ingress_classifier.flow(200, match(TO_TUNNEL), [GotoTable("IngressMetric")], cookie),
        commit.flow(
            200,
            match(eth_type=ETH_TYPE_IP, ct_state="+new+trk"),
            [Ct(CT_ZONE, commit=True, exec=(_copy_source_to_ct_mark(),)), GotoTable("Output")],
            cookie,
        ),
        table("Output").flow(200, match(OUTPUT_TO_PORT), [OutputReg(TARGET_OFPORT)], cookie),
    ]


def _copy_source_to_ct_mark() -> Move:
    return Move(PKT_SOURCE.reg, CT_SOURCE.reg, PKT_SOURCE.lo, CT_SOURCE.lo, PKT_SOURCE.width)
