"""Kubernetes objects as YAML files: reading what users apply, and the lab's manifests directory.

The manifests directory is what every node's agent reads (`source: manifests`): one object per
file, named `<kind>_<namespace>_<name>.yaml` (`<kind>_<name>.yaml` for cluster-scoped kinds; no
Kubernetes name holds '_', so names never collide),
written whole by a rename so a reader never sees half a file. Files whose names start with '.'
are work in progress and not objects.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

KINDS = ("Namespace", "Node", "Pod", "NetworkPolicy")
CLUSTER_SCOPED = ("Namespace", "Node")
API_VERSIONS = {
    "Namespace": "v1",
    "Node": "v1",
    "Pod": "v1",
    "NetworkPolicy": "networking.k8s.io/v1",
}
YAML_SUFFIXES = (".yaml", ".yml", ".json")

Obj = dict[str, Any]


class ObjectError(ValueError):
    """A document that is not an object the lab handles (the message names the file)."""


def read_objects(path: Path) -> list[Obj]:
    """Every object in a YAML file (multi-document; `kind: List` unpacked) or in the YAML files
    of a directory (sorted by name, not recursive), in order."""
    files = (
        sorted(p for p in path.iterdir() if p.suffix in YAML_SUFFIXES) if path.is_dir() else [path]
    )
    objects: list[Obj] = []
    for file in files:
        objects.extend(_objects_in(file))
    return objects


def _objects_in(file: Path) -> Iterator[Obj]:
    try:
        docs = list(yaml.safe_load_all(file.read_text()))
    except (OSError, yaml.YAMLError) as exc:
        raise ObjectError(f"{file}: {exc}") from exc
    for doc in docs:
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise ObjectError(f"{file}: a document is not a mapping")
        items = doc.get("items") if str(doc.get("kind", "")).endswith("List") else [doc]
        for obj in items or []:
            yield normalized(obj, file)


def normalized(obj: Any, origin: Path | str) -> Obj:
    """The object with apiVersion filled in and its kind, name and namespace checked; namespaced
    kinds get `default` when no namespace is given, as kubectl does."""
    if not isinstance(obj, dict):
        raise ObjectError(f"{origin}: an item is not a mapping")
    kind = obj.get("kind")
    if kind not in KINDS:
        raise ObjectError(f"{origin}: kind {kind!r} is not one of {', '.join(KINDS)}")
    meta = obj.setdefault("metadata", {})
    if not isinstance(meta, dict) or not meta.get("name"):
        raise ObjectError(f"{origin}: a {kind} without metadata.name")
    if kind in CLUSTER_SCOPED:
        meta.pop("namespace", None)
    else:
        meta.setdefault("namespace", "default")
    obj.setdefault("apiVersion", API_VERSIONS[kind])
    return obj


def key(obj: Obj) -> tuple[str, str, str]:
    """(kind, namespace, name); namespace '' for cluster-scoped kinds."""
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace", ""), meta["name"]


def ref(obj: Obj) -> str:
    """`namespace/name` of a namespaced object, `name` otherwise."""
    _, namespace, name = key(obj)
    return f"{namespace}/{name}" if namespace else name


class ManifestsDir:
    """The lab's manifests directory: one file per object."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def file_for(self, kind: str, namespace: str, name: str) -> Path:
        stem = f"{kind.lower()}_{namespace}_{name}" if namespace else f"{kind.lower()}_{name}"
        return self.path / f"{stem}.yaml"

    def write(self, obj: Obj) -> Path:
        """Write (or replace) the object's file atomically."""
        self.path.mkdir(parents=True, exist_ok=True)
        target = self.file_for(*key(obj))
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f".{target.name}.")
        with os.fdopen(fd, "w") as out:
            yaml.safe_dump(obj, out, sort_keys=False)
        os.replace(tmp, target)
        return target

    def remove(self, kind: str, namespace: str, name: str) -> bool:
        try:
            self.file_for(kind, namespace, name).unlink()
        except FileNotFoundError:
            return False
        return True

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        try:
            data = yaml.safe_load(self.file_for(kind, namespace, name).read_text())
        except FileNotFoundError:
            return None
        return data if isinstance(data, dict) else None

    def list(self, kind: str) -> list[Obj]:
        """Every object of `kind`, sorted by namespace and name."""
        out = []
        for file in sorted(self.path.glob(f"{kind.lower()}_*.yaml")):
            data = yaml.safe_load(file.read_text())
            if isinstance(data, dict) and data.get("kind") == kind:
                out.append(data)
        return sorted(out, key=key)
