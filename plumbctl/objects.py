"""The cluster's objects for inspecting a node outside a lab, read the way the agent reads them.

`--manifests DIR` goes through the agent's own manifests source (`ManifestsSource.scan`: the
same files, multi-document YAML and `kind: List`, subdirectories, "." names skipped, the later
file winning a duplicate, "default" for a namespace left out) into a store; `--kubeconfig FILE`
through its Kubernetes source (`KubeSource`: the official client's list of Pods, Nodes,
Namespaces and NetworkPolicies), stopped once synced. Either way the objects are what the
agent's store would hold, so `plumbctl explain` asks the policy model what the agent compiled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.config import AgentConfig
from controller.errors import ConfigError
from controller.store import Store

if TYPE_CHECKING:
    from controller.sources.kube import KubeSource

Obj = dict[str, Any]
KUBE_TIMEOUT = 30.0
# The sources want the node they run for; the manifests source never reads it, and the
# Kubernetes one only splits pods between two streams by it (together they list every pod).
ANY_NODE = "plumbctl"


class ObjectsError(RuntimeError):
    """The objects cannot be read (the message says where and why)."""


@dataclass
class ClusterObjects:
    """Pods, Namespaces, NetworkPolicies and Nodes, each sorted by namespace and name."""

    origin: str
    pods: list[Obj] = field(default_factory=list)
    namespaces: list[Obj] = field(default_factory=list)
    policies: list[Obj] = field(default_factory=list)
    nodes: list[Obj] = field(default_factory=list)


def from_store(store: Store, origin: str) -> ClusterObjects:
    def listed(kind: str) -> list[Obj]:
        objects = [dict(o) for o in store.objects(kind)]
        return sorted(
            objects,
            key=lambda o: ((o["metadata"].get("namespace") or ""), o["metadata"]["name"]),
        )

    return ClusterObjects(
        origin,
        pods=listed("Pod"),
        namespaces=listed("Namespace"),
        policies=listed("NetworkPolicy"),
        nodes=listed("Node"),
    )


def from_manifests(directory: Path) -> ClusterObjects:
    """One read of a manifests directory, as the agent's source does it."""
    from controller.sources.manifests import ManifestsSource

    if not directory.is_dir():
        raise ObjectsError(f"--manifests {directory}: not a directory")
    store = Store()
    try:
        config = AgentConfig(node_name=ANY_NODE, source="manifests", manifests_dir=str(directory))
    except ConfigError as exc:
        raise ObjectsError(f"--manifests {directory}: {exc}") from exc
    source = ManifestsSource(config, store)
    source.scan()
    if not source.wait_synced(0):
        raise ObjectsError(f"--manifests {directory}: cannot be read")
    return from_store(store, str(directory))


def from_kube(
    kubeconfig: str, node_name: str = "", timeout: float = KUBE_TIMEOUT
) -> ClusterObjects:
    """One full list from the API server `kubeconfig` names, as the agent's source does it."""
    from controller.sources.kube import KubeSource

    try:
        config = AgentConfig(
            node_name=node_name or ANY_NODE, source="kubernetes", kubeconfig=kubeconfig
        )
    except ConfigError as exc:
        raise ObjectsError(f"--kubeconfig {kubeconfig}: {exc}") from exc
    store = Store()
    source = KubeSource(config, store, connect_timeout=5.0, list_timeout=timeout)
    try:
        source.start()
        _wait_listed(source, kubeconfig, timeout)
    except ConfigError as exc:
        raise ObjectsError(f"--kubeconfig {kubeconfig}: {exc}") from exc
    finally:
        source.stop(timeout=2.0)
    return from_store(store, kubeconfig)


def _wait_listed(source: KubeSource, kubeconfig: str, timeout: float) -> None:
    """Until every stream has listed once; the first failure is reported at once (a one-shot
    command has nothing to gain from the source's retries: an unreachable or refusing API
    server would otherwise cost the whole timeout)."""
    deadline = time.monotonic() + timeout
    while not source.wait_synced(0.05):
        if source.last_error is not None:
            raise ObjectsError(f"--kubeconfig {kubeconfig}: {source.last_error}")
        if time.monotonic() > deadline:
            raise ObjectsError(
                f"--kubeconfig {kubeconfig}: the API server did not list everything "
                f"within {timeout:.0f}s"
            )
