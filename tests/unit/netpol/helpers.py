"""Builders for NetworkPolicy tests: namespaces, pods and policies in the Kubernetes shape, and a
model loaded with them."""

from __future__ import annotations

from typing import Any

from controller.netpol_model import PolicyModel, pod_info
from flows.policy import LocalTarget


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}}


def pod(
    ns: str,
    name: str,
    ip: str | None,
    ports: dict[str, int | tuple[int, str]] | None = None,
    node: str = "node-a",
    **labels: str,
) -> dict[str, Any]:
    """A pod; `ports` maps container port names to numbers (or (number, protocol))."""
    container_ports = []
    for port_name, value in (ports or {}).items():
        number, protocol = value if isinstance(value, tuple) else (value, "TCP")
        container_ports.append({"name": port_name, "containerPort": number, "protocol": protocol})
    obj: dict[str, Any] = {
        "metadata": {"namespace": ns, "name": name, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": container_ports}]},
        "status": {"phase": "Running"},
    }
    if ip is not None:
        obj["status"]["podIP"] = ip
    return obj


def policy(ns: str, name: str, **spec: Any) -> dict[str, Any]:
    """A NetworkPolicy; `spec` keys are the spec's (podSelector defaults to {})."""
    body = {"podSelector": {}, **spec}
    return {"metadata": {"namespace": ns, "name": name, "uid": f"uid-{ns}-{name}"}, "spec": body}


def labels(**kv: str) -> dict[str, Any]:
    return {"matchLabels": kv}


def load(
    namespaces: list[dict[str, Any]],
    pods: list[dict[str, Any]],
    policies: list[dict[str, Any]],
    local: dict[tuple[str, str], int] | None = None,
) -> PolicyModel:
    """A model holding everything; `local` gives the ofports of the pods attached here."""
    model = PolicyModel()
    for ns in namespaces:
        model.set_namespace(ns["metadata"]["name"], ns["metadata"].get("labels") or {})
    ips = {}
    for obj in pods:
        info = pod_info(obj)
        model.set_pod(info.key, info)
        ips[info.key] = info.ip
    model.set_local_pods(
        {key: LocalTarget(port, ips[key] or "") for key, port in (local or {}).items()}
    )
    for obj in policies:
        meta = obj["metadata"]
        model.set_policy((meta["namespace"], meta["name"]), obj)
    return model
