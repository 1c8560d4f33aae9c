"""`lab apply -f` and `lab delete -f`: objects from YAML into a running lab, in dependency order.

Namespaces and NetworkPolicies are written to the manifests directory (the agents react to
them). Pods are scheduled (their `spec.nodeName`, else the node with the fewest pods, which
spreads a batch round-robin) and created by the lab's kubelet. Applying a pod that runs changes
only its labels and annotations, since a pod's spec is immutable. Deleting a Namespace deletes
its pods and policies, as Kubernetes does.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from lab.layout import LabLayout, LabSpec
from lab.objects import ManifestsDir, Obj, key, ref
from lab.pods import Kubelet, PodError, record, records

NAMESPACE_LABEL = "kubernetes.io/metadata.name"
Progress = Callable[[str], None]


class LabNotUp(RuntimeError):
    """The lab named has not been brought up."""


@dataclass
class Outcome:
    """What `apply` or `delete` did, one line per object, and what failed."""

    lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def require_spec(layout: LabLayout) -> LabSpec:
    spec = layout.read_spec()
    if spec is None:
        raise LabNotUp(f"lab {layout.name} is not up: run `plumbctl lab up --name {layout.name}`")
    return spec


def apply(layout: LabLayout, objects: Sequence[Obj], progress: Progress) -> Outcome:
    spec = require_spec(layout)
    manifests, out = ManifestsDir(layout.manifests_dir), Outcome()
    for obj in _ordered(objects):
        if obj["kind"] == "Namespace":
            labels = obj["metadata"].setdefault("labels", {})
            labels[NAMESPACE_LABEL] = obj["metadata"]["name"]
        if obj["kind"] in ("Namespace", "NetworkPolicy"):
            existed = manifests.get(*key(obj)) is not None
            manifests.write(obj)
            out.lines.append(
                f"{obj['kind'].lower()}/{ref(obj)} {'configured' if existed else 'created'}"
            )
    for node in (o for o in objects if o["kind"] == "Node"):
        out.lines.append(f"node/{ref(node)} skipped: nodes are made by `plumbctl lab up --nodes`")
    pods = [o for o in objects if o["kind"] == "Pod"]
    new = [p for p in pods if not _update_running(layout, manifests, p, out)]
    try:
        _schedule(layout, spec, new)
    except PodError as exc:
        out.errors.append(str(exc))
        return out
    for pod in new:
        _ensure_namespace(manifests, pod["metadata"]["namespace"])
    out.errors += Kubelet(layout).create_many(new, progress)
    failed = {e.split(":", 1)[0] for e in out.errors}
    out.lines += [f"pod/{ref(p)} created" for p in new if f"pod/{ref(p)}" not in failed]
    return out


def _ordered(objects: Sequence[Obj]) -> list[Obj]:
    rank = {"Namespace": 0, "NetworkPolicy": 1, "Pod": 2, "Node": 3}
    return sorted(objects, key=lambda o: rank[o["kind"]])


def _update_running(layout: LabLayout, manifests: ManifestsDir, pod: Obj, out: Outcome) -> bool:
    """If the pod runs, apply its labels and annotations; True when it was running."""
    _, namespace, name = key(pod)
    current = manifests.get("Pod", namespace, name)
    if current is None or record(layout, namespace, name) is None:
        return False
    updated = copy.deepcopy(current)
    for part in ("labels", "annotations"):
        updated["metadata"][part] = pod["metadata"].get(part) or {}
    changed = updated != current
    if changed:
        manifests.write(updated)
    out.lines.append(f"pod/{ref(pod)} {'configured' if changed else 'unchanged'}")
    return True


def _schedule(layout: LabLayout, spec: LabSpec, pods: Sequence[Obj]) -> None:
    """Give every pod without one a node: the one with the fewest pods (lowest index on ties)."""
    nodes = [layout.node(i).name for i in range(1, spec.nodes + 1)]
    load = Counter({n: 0 for n in nodes})
    load.update(r.node for r in records(layout))
    for pod in pods:
        spec_ = pod.setdefault("spec", {})
        node = spec_.get("nodeName")
        if node is None:
            node = min(nodes, key=lambda n: (load[n], nodes.index(n)))
            spec_["nodeName"] = node
        elif node not in nodes:
            raise PodError(f"pod/{ref(pod)}: node {node!r} is not in lab {layout.name}")
        load[node] += 1


def _ensure_namespace(manifests: ManifestsDir, name: str) -> None:
    """Pods need their Namespace (its labels feed namespaceSelectors); make it as kubectl
    users would have to."""
    if manifests.get("Namespace", "", name) is None:
        manifests.write(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "labels": {NAMESPACE_LABEL: name}},
            }
        )


def delete(layout: LabLayout, objects: Sequence[Obj], progress: Progress) -> Outcome:
    require_spec(layout)
    manifests, out = ManifestsDir(layout.manifests_dir), Outcome()
    kubelet = Kubelet(layout)
    for obj in reversed(_ordered(objects)):
        kind, namespace, name = key(obj)
        if kind == "Pod":
            _delete_pod(layout, kubelet, manifests, namespace, name, out)
        elif kind == "Namespace":
            for rec in records(layout):
                if rec.namespace == name:
                    _delete_pod(layout, kubelet, manifests, rec.namespace, rec.name, out)
            for policy in manifests.list("NetworkPolicy"):
                if policy["metadata"].get("namespace") == name:
                    manifests.remove(*key(policy))
            _remove(manifests, obj, out)
        elif kind == "NetworkPolicy":
            _remove(manifests, obj, out)
    return out


def _delete_pod(
    layout: LabLayout,
    kubelet: Kubelet,
    manifests: ManifestsDir,
    namespace: str,
    name: str,
    out: Outcome,
) -> None:
    rec = record(layout, namespace, name)
    if rec is None:
        removed = manifests.remove("Pod", namespace, name)
        out.lines.append(f"pod/{namespace}/{name} {'deleted' if removed else 'not found'}")
        return
    try:
        kubelet.remove(rec)
        out.lines.append(f"pod/{rec.ref} deleted")
    except PodError as exc:
        out.errors.append(f"pod/{rec.ref}: {exc}")


def _remove(manifests: ManifestsDir, obj: Obj, out: Outcome) -> None:
    removed = manifests.remove(*key(obj))
    out.lines.append(f"{obj['kind'].lower()}/{ref(obj)} {'deleted' if removed else 'not found'}")
