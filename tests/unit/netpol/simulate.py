"""A pure evaluator of compiled policy state: does a packet complete a conjunction? It reads
`PolicyFlows`' clause keys the way OVS reads the clause flows, so property tests can judge the
compilation against the verdict in microseconds before the OVS tier does it for real."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from controller.netpol_model import PolicyModel, pod_info
from flows.policy import PROTOCOL_NUMBERS, ClauseKey, LocalTarget, PolicyFlows


@dataclass(frozen=True)
class Packet:
    src_ip: int
    dst_ip: int
    dst_ofport: int | None
    protocol: int  # 1 for ICMP
    port: int | None


def ofports(pods: list[dict[str, Any]], node: str) -> dict[tuple[str, str], LocalTarget]:
    """The local pods of `node`: ofport 3, 4, ... in pod order."""
    local = {}
    for i, obj in enumerate(pods):
        info = pod_info(obj)
        if obj["spec"].get("nodeName") == node and info.ip is not None:
            local[info.key] = LocalTarget(3 + i, info.ip)
    return local


def node_state(
    namespaces: list[dict[str, Any]],
    pods: list[dict[str, Any]],
    policies: list[dict[str, Any]],
    node: str,
    round_: int = 1,
) -> tuple[PolicyModel, PolicyFlows]:
    """One node's model and compiled flows, built the way the reconciler builds them."""
    model = PolicyModel()
    for ns in namespaces:
        model.set_namespace(ns["metadata"]["name"], ns["metadata"].get("labels") or {})
    for obj in pods:
        info = pod_info(obj)
        model.set_pod(info.key, info)
    model.set_local_pods(ofports(pods, node))
    flows = PolicyFlows(round_)
    for obj in policies:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        model.set_policy(key, obj)
        compiled = model.compile(key)
        flows.update_policy(f"{key[0]}/{key[1]}", compiled.rules, compiled.isolated, 0.0)
    return model, flows


def _key_matches(key: ClauseKey, pkt: Packet) -> bool:
    table, kind, value = key
    if kind == "any":
        return True
    if kind == "target":
        return bool(pkt.dst_ofport == value)
    if kind == "source":
        return bool(pkt.src_ip == value)
    if kind == "peer":
        net, prefix = value
        address = pkt.src_ip if table == "IngressRule" else pkt.dst_ip
        mask = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF if prefix else 0
        return bool(address & mask == net)
    proto, port, mask = value
    if proto != pkt.protocol:
        return False
    return port is None or (pkt.port is not None and pkt.port & mask == port)


def conjunction_completes(flows: PolicyFlows, table: str, pkt: Packet) -> bool:
    hits: dict[int, set[int]] = {}
    sizes: dict[int, int] = {}
    for key, actions in flows.contexts().items():
        if key[0] != table or not _key_matches(key, pkt):
            continue
        for conj_id, (clause, n) in actions.items():
            hits.setdefault(conj_id, set()).add(clause)
            sizes[conj_id] = n
    return any(len(clauses) == sizes[c] for c, clauses in hits.items())


def passes(flows: PolicyFlows, pkt: Packet, direction: str) -> bool:
    """Egress (on the source's node) or ingress (on the destination's node)."""
    if direction == "Egress":
        isolated = ("EgressDefaultRule", "source", pkt.src_ip) in flows.isolated_keys()
        return not isolated or conjunction_completes(flows, "EgressRule", pkt)
    isolated = ("IngressDefaultRule", "target", pkt.dst_ofport) in flows.isolated_keys()
    return not isolated or conjunction_completes(flows, "IngressRule", pkt)


def packet(src_ip: str, dst_ip: str, dst_ofport: int | None, protocol: str, port: int | None):
    return Packet(
        int(ipaddress.IPv4Address(src_ip)),
        int(ipaddress.IPv4Address(dst_ip)),
        dst_ofport,
        PROTOCOL_NUMBERS.get(protocol, 1),
        port,
    )
