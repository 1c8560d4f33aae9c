"""What `lab get` shows: pods and nodes as Kubernetes objects (with live status) and as
kubectl-style tables."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from lab import cluster, pods
from lab.layout import LabLayout
from lab.objects import ManifestsDir

Obj = dict[str, Any]


def pod_objects(layout: LabLayout) -> list[Obj]:
    """The pods of the manifests directory, as their status was written back."""
    return ManifestsDir(layout.manifests_dir).list("Pod")


def node_objects(layout: LabLayout) -> list[Obj]:
    """The lab's Nodes, each with a Ready condition from its agent's /readyz."""
    out = []
    for node in ManifestsDir(layout.manifests_dir).list("Node"):
        node = copy.deepcopy(node)
        ready = cluster.agent_ready(layout.node_by_name(node["metadata"]["name"]))
        status = node.setdefault("status", {})
        status["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
        out.append(node)
    return out


def _ready(obj: Obj) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def pod_rows(layout: LabLayout, items: Sequence[Obj], wide: bool) -> list[list[str]]:
    header = ["NAMESPACE", "NAME", "STATUS", "IP", "NODE"]
    if wide:
        header += ["PORTS", "NETNS"]
    rows = [header]
    for pod in items:
        meta, status = pod["metadata"], pod.get("status") or {}
        row = [
            meta.get("namespace", "default"),
            meta["name"],
            status.get("phase", "Pending"),
            status.get("podIP") or "<none>",
            (pod.get("spec") or {}).get("nodeName") or "<none>",
        ]
        if wide:
            ports = pods.declared_ports(pod)
            rec = pods.record(layout, row[0], row[1])
            row += [
                ",".join(f"{p}/{proto}" for p, proto in ports) or "<none>",
                rec.netns if rec else "<none>",
            ]
        rows.append(row)
    return rows


def node_rows(layout: LabLayout, items: Sequence[Obj], wide: bool) -> list[list[str]]:
    header = ["NAME", "STATUS", "POD-CIDR", "INTERNAL-IP"]
    spec = layout.read_spec()
    if wide:
        header += ["NETNS", "ENCAP", "AGENT-PID"]
    rows = [header]
    for node in items:
        name = node["metadata"]["name"]
        addresses = (node.get("status") or {}).get("addresses") or []
        internal = next((a["address"] for a in addresses if a.get("type") == "InternalIP"), "")
        row = [
            name,
            "Ready" if _ready(node) else "NotReady",
            (node.get("spec") or {}).get("podCIDR", ""),
            internal,
        ]
        if wide:
            layout_node = layout.node_by_name(name)
            pid = cluster.agent_pid(layout_node)
            row += [layout_node.netns, spec.encap if spec else "", str(pid or "<none>")]
        rows.append(row)
    return rows


def table(rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, three spaces apart, as kubectl prints them."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines) + "\n"
