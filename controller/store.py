"""The local store: the agent's in-memory copy of the cluster objects its reconcilers read.

Both sources of truth (the Kubernetes API and a manifests directory) write here; reconcilers read
here and hear about changes through handlers. Objects are plain dicts in the Kubernetes JSON shape
(camelCase), keyed by (kind, namespace, name); cluster-scoped kinds use the namespace "".

Memory: a store holds *slim* objects (see `slim`): the fields reconcilers read, still in the
Kubernetes shape, without managedFields, container images, volumes, conditions and the like. A
10,000-pod cluster then costs megabytes, not hundreds of them.

Rules for callers:
- Stored dicts are shared, never copied: treat them as read-only.
- Handlers run synchronously, in the writer's thread, under the store's lock, so that they see
  changes in order. Keep them quick and non-blocking (enqueue a key into a work queue); they may
  read the store (the lock is re-entrant) but must not wait on other threads that do.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

KubeObject = dict[str, Any]
ObjectKey = tuple[str, str, str]
"""(kind, namespace, name); namespace is "" for cluster-scoped kinds."""

NamespacedName = tuple[str, str]

KINDS = ("Pod", "Node", "Namespace", "NetworkPolicy", "Service")
CLUSTER_SCOPED = frozenset({"Node", "Namespace"})
API_VERSIONS = {
    "Pod": "v1",
    "Node": "v1",
    "Namespace": "v1",
    "Service": "v1",
    "NetworkPolicy": "networking.k8s.io/v1",
}
POD_NODE_INDEX = "node"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


class Change(enum.Enum):
    """What happened to one object."""

    ADDED = "added"
    UPDATED = "updated"
    DELETED = "deleted"


@dataclass(frozen=True, slots=True)
class StoreEvent:
    """One change, as handlers see it. `old` is None for ADDED, `new` is None for DELETED."""

    change: Change
    kind: str
    namespace: str
    name: str
    old: KubeObject | None
    new: KubeObject | None

    @property
    def key(self) -> ObjectKey:
        return (self.kind, self.namespace, self.name)

    @property
    def obj(self) -> KubeObject:
        """The latest state known: the new object, or the old one for a deletion."""
        latest = self.new if self.new is not None else self.old
        assert latest is not None
        return latest


Handler = Callable[[StoreEvent], None]
IndexFunc = Callable[[KubeObject], Iterable[str]]


# --- pure helpers -------------------------------------------------------------------------------


def namespaced_name(obj: Mapping[str, Any]) -> NamespacedName:
    """(namespace, name) of an object; namespace "" when absent (cluster-scoped)."""
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("object has no metadata.name")
    namespace = meta.get("namespace") or ""
    return (str(namespace), name)


def object_key(kind: str, obj: Mapping[str, Any]) -> ObjectKey:
    """The store key of `obj` as a `kind`."""
    namespace, name = namespaced_name(obj)
    if kind in CLUSTER_SCOPED:
        namespace = ""
    return (kind, namespace, name)


def resource_version(obj: Mapping[str, Any]) -> str:
    """metadata.resourceVersion, or "" when the object has none (manifests)."""
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def pod_node_name(pod: Mapping[str, Any]) -> str:
    """spec.nodeName of a pod, "" while unscheduled."""
    return str((pod.get("spec") or {}).get("nodeName") or "")


def _pick(source: Mapping[str, Any] | None, keys: Iterable[str]) -> dict[str, Any]:
    if not source:
        return {}
    return {k: source[k] for k in keys if k in source and source[k] not in (None, "", [], {})}


_META_KEYS = (
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "labels",
    "annotations",
    "deletionTimestamp",
)


def _slim_metadata(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    out = _pick(meta, _META_KEYS)
    annotations = out.get("annotations")
    if annotations and LAST_APPLIED in annotations:
        # kubectl apply copies the whole object into this annotation: the biggest field by far.
        trimmed = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
        if trimmed:
            out["annotations"] = trimmed
        else:
            del out["annotations"]
    return out


def _slim_containers(containers: Iterable[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    # Named ports in NetworkPolicies resolve through container ports; nothing else is needed.
    return [_pick(c, ("name", "ports", "restartPolicy")) for c in containers or ()]


def _slim_pod(obj: Mapping[str, Any]) -> dict[str, Any]:
    spec = obj.get("spec") or {}
    slim_spec = _pick(spec, ("nodeName", "hostNetwork"))
    if spec.get("containers"):
        slim_spec["containers"] = _slim_containers(spec["containers"])
    sidecars = [c for c in spec.get("initContainers") or () if c.get("ports")]
    if sidecars:
        slim_spec["initContainers"] = _slim_containers(sidecars)
    return {
        "metadata": _slim_metadata(obj.get("metadata")),
        "spec": slim_spec,
        "status": _pick(obj.get("status"), ("phase", "podIP", "podIPs", "hostIP", "hostIPs")),
    }


def _slim_node(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "metadata": _slim_metadata(obj.get("metadata")),
        "spec": _pick(obj.get("spec"), ("podCIDR", "podCIDRs", "providerID", "unschedulable")),
        "status": _pick(obj.get("status"), ("addresses",)),
    }


def _slim_namespace(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "metadata": _slim_metadata(obj.get("metadata")),
        "status": _pick(obj.get("status"), ("phase",)),
    }


def _slim_whole(obj: Mapping[str, Any]) -> dict[str, Any]:
    # Policies and services are read whole by their reconcilers; only drop the bookkeeping.
    out = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    out["metadata"] = _slim_metadata(obj.get("metadata"))
    return out


_SLIMMERS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "Pod": _slim_pod,
    "Node": _slim_node,
    "Namespace": _slim_namespace,
}


def slim(kind: str, obj: Mapping[str, Any]) -> KubeObject:
    """The part of `obj` that reconcilers read, in the Kubernetes shape, with kind and apiVersion.

    Kept: metadata (name, namespace, uid, resourceVersion, generation, labels, annotations but
    kubectl's last-applied copy, deletionTimestamp); Pod spec.nodeName, hostNetwork, container
    names and ports, status phase and IPs; Node spec PodCIDRs and status addresses; Namespace
    status phase; NetworkPolicy and Service whole. Everything else goes.
    """
    out = _SLIMMERS.get(kind, _slim_whole)(obj)
    api_version = obj.get("apiVersion") or API_VERSIONS.get(kind, "")
    return {"apiVersion": api_version, "kind": kind, **out}


def _same_version(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    old_rv, new_rv = resource_version(old), resource_version(new)
    if old_rv and new_rv:
        return old_rv == new_rv
    return old == new


# --- the store ----------------------------------------------------------------------------------


class _Index:
    __slots__ = ("func", "values")

    def __init__(self, func: IndexFunc) -> None:
        self.func = func
        self.values: dict[str, set[NamespacedName]] = {}

    def add(self, nn: NamespacedName, obj: KubeObject) -> None:
        for value in self.func(obj):
            self.values.setdefault(value, set()).add(nn)

    def remove(self, nn: NamespacedName, obj: KubeObject) -> None:
        for value in self.func(obj):
            members = self.values.get(value)
            if members is not None:
                members.discard(nn)
                if not members:
                    del self.values[value]


def _pod_node_index(pod: KubeObject) -> Iterable[str]:
    node = pod_node_name(pod)
    return (node,) if node else ()


class Store:
    """Thread-safe objects by (kind, namespace, name), with handlers, indexes and sync flags."""

    def __init__(self, *, slim_objects: bool = True) -> None:
        self._lock = threading.RLock()
        self._synced_cond = threading.Condition(self._lock)
        self._slim = slim_objects
        # kind -> namespace -> name -> object: namespace lookups need no separate index.
        self._objects: dict[str, dict[str, dict[str, KubeObject]]] = {}
        self._counts: dict[str, int] = {}
        self._indexes: dict[str, dict[str, _Index]] = {}
        self._handlers: list[tuple[frozenset[str] | None, Handler]] = []
        self._synced: set[str] = set()
        self.add_index("Pod", POD_NODE_INDEX, _pod_node_index)

    # -- registration --

    def add_handler(self, handler: Handler, kinds: Iterable[str] | None = None) -> None:
        """Call `handler` for every later change of the given kinds (all kinds when None)."""
        with self._lock:
            self._handlers.append((frozenset(kinds) if kinds is not None else None, handler))

    def add_index(self, kind: str, name: str, func: IndexFunc) -> None:
        """Maintain a secondary index `name` over `kind`: `func` maps an object to its values."""
        with self._lock:
            index = _Index(func)
            for namespace, objs in self._objects.get(kind, {}).items():
                for obj_name, obj in objs.items():
                    index.add((namespace, obj_name), obj)
            self._indexes.setdefault(kind, {})[name] = index

    # -- writes --

    def upsert(
        self,
        kind: str,
        obj: Mapping[str, Any],
        keep: Callable[[KubeObject], bool] | None = None,
    ) -> StoreEvent | None:
        """Add or replace one object; returns the change, or None if nothing changed.

        A stored object for which `keep` returns True is left alone: two sources sharing a kind
        use it so that the one with the later word (local pods) is not overwritten by the other.
        """
        new = slim(kind, obj) if self._slim else dict(obj)
        _, namespace, name = object_key(kind, new)
        with self._lock:
            by_ns = self._objects.setdefault(kind, {}).setdefault(namespace, {})
            old = by_ns.get(name)
            if old is not None and (_same_version(old, new) or (keep is not None and keep(old))):
                return None
            by_ns[name] = new
            self._reindex(kind, (namespace, name), old, new)
            if old is None:
                self._counts[kind] = self._counts.get(kind, 0) + 1
            event = StoreEvent(
                Change.ADDED if old is None else Change.UPDATED, kind, namespace, name, old, new
            )
            self._notify(event)
            return event

    def delete(
        self,
        kind: str,
        namespace: str,
        name: str,
        keep: Callable[[KubeObject], bool] | None = None,
    ) -> StoreEvent | None:
        """Remove one object; returns the change, or None if absent (or `keep` kept it)."""
        if kind in CLUSTER_SCOPED:
            namespace = ""
        with self._lock:
            by_ns = self._objects.get(kind, {}).get(namespace)
            if by_ns is None or name not in by_ns:
                return None
            if keep is not None and keep(by_ns[name]):
                return None
            old = by_ns.pop(name)
            if not by_ns:
                del self._objects[kind][namespace]
            self._reindex(kind, (namespace, name), old, None)
            self._counts[kind] -= 1
            event = StoreEvent(Change.DELETED, kind, namespace, name, old, None)
            self._notify(event)
            return event

    def delete_missing(
        self,
        kind: str,
        present: Collection[NamespacedName],
        owns: Callable[[KubeObject], bool] | None = None,
    ) -> list[StoreEvent]:
        """Delete every stored `kind` object that `owns` (default: all) and `present` lacks.

        This is the second half of a relist: upsert what was listed, then delete what vanished.
        `owns` lets two sources share a kind (local pods, other pods) without deleting each
        other's objects.
        """
        with self._lock:
            doomed = [
                (namespace, name)
                for namespace, objs in self._objects.get(kind, {}).items()
                for name, obj in objs.items()
                if (namespace, name) not in present and (owns is None or owns(obj))
            ]
            events = [self.delete(kind, namespace, name) for namespace, name in doomed]
        return [e for e in events if e is not None]

    def replace(
        self,
        kind: str,
        objs: Iterable[Mapping[str, Any]],
        owns: Callable[[KubeObject], bool] | None = None,
    ) -> list[StoreEvent]:
        """Converge `kind` (the part `owns`) to exactly `objs`; returns the changes made."""
        events: list[StoreEvent] = []
        present: set[NamespacedName] = set()
        with self._lock:
            for obj in objs:
                _, namespace, name = object_key(kind, obj)
                present.add((namespace, name))
                event = self.upsert(kind, obj)
                if event is not None:
                    events.append(event)
            events.extend(self.delete_missing(kind, present, owns))
        return events

    def _reindex(
        self, kind: str, nn: NamespacedName, old: KubeObject | None, new: KubeObject | None
    ) -> None:
        for index in self._indexes.get(kind, {}).values():
            if old is not None:
                index.remove(nn, old)
            if new is not None:
                index.add(nn, new)

    def _notify(self, event: StoreEvent) -> None:
        for kinds, handler in self._handlers:
            if kinds is not None and event.kind not in kinds:
                continue
            try:
                handler(event)
            except Exception:
                # One broken handler must not stop the source feeding every other one.
                log.exception("store handler failed", extra={"key": "/".join(event.key)})

    # -- reads --

    def get(self, kind: str, namespace: str, name: str) -> KubeObject | None:
        """One object, or None."""
        if kind in CLUSTER_SCOPED:
            namespace = ""
        with self._lock:
            return self._objects.get(kind, {}).get(namespace, {}).get(name)

    def objects(self, kind: str, namespace: str | None = None) -> list[KubeObject]:
        """All objects of `kind`, or those in one namespace."""
        with self._lock:
            by_ns = self._objects.get(kind, {})
            if namespace is not None:
                return list(by_ns.get(namespace, {}).values())
            return [obj for objs in by_ns.values() for obj in objs.values()]

    def keys(self, kind: str) -> list[ObjectKey]:
        """Keys of all objects of `kind`."""
        with self._lock:
            return [
                (kind, namespace, name)
                for namespace, objs in self._objects.get(kind, {}).items()
                for name in objs
            ]

    def count(self, kind: str) -> int:
        """How many objects of `kind` the store holds."""
        with self._lock:
            return self._counts.get(kind, 0)

    def namespaces_of(self, kind: str) -> list[str]:
        """Namespaces holding at least one object of `kind`."""
        with self._lock:
            return list(self._objects.get(kind, {}))

    def by_index(self, kind: str, index: str, value: str) -> list[KubeObject]:
        """Objects of `kind` whose index `index` yields `value`."""
        with self._lock:
            members = self._indexes[kind][index].values.get(value, ())
            by_ns = self._objects[kind] if members else {}
            return [by_ns[namespace][name] for namespace, name in members]

    def pods_on_node(self, node_name: str) -> list[KubeObject]:
        """Pods scheduled to `node_name`."""
        return self.by_index("Pod", POD_NODE_INDEX, node_name)

    def pods_in_namespace(self, namespace: str) -> list[KubeObject]:
        """Pods in `namespace`."""
        return self.objects("Pod", namespace)

    # -- sync flags --

    def mark_synced(self, name: str) -> None:
        """Record that `name` (a kind, or a source's stream) has completed its first full list."""
        with self._synced_cond:
            self._synced.add(name)
            self._synced_cond.notify_all()

    def is_synced(self, name: str) -> bool:
        with self._lock:
            return name in self._synced

    def synced(self) -> frozenset[str]:
        """Every name marked synced so far."""
        with self._lock:
            return frozenset(self._synced)

    def wait_synced(self, names: Iterable[str], timeout: float | None = None) -> bool:
        """Block until all `names` are synced; False if `timeout` seconds pass first."""
        wanted = set(names)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._synced_cond:
            while not wanted <= self._synced:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._synced_cond.wait(remaining)
            return True
