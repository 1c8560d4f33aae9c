"""The manifests source: a directory of ordinary Kubernetes YAML, kept in step with the store.

The lab's (and Mininet's) source of truth, the same shape as `KubeSource` (`start`,
`wait_synced`, `stop`, `sync_names`), so the agent and its reconcilers cannot tell them apart.

What is read: every `*.yaml`, `*.yml` and `*.json` file under the directory, subdirectories
included; names starting with "." are skipped, so a writer that writes `.x.tmp` and renames it
into place is never read half way (and neither are a ConfigMap mount's `..data` internals).
A file holds any number of YAML documents; a `kind: List` contributes its `items`. Kinds Node,
Namespace, Pod, NetworkPolicy and Service go to the store; other kinds are ignored (debug log).
A namespaced object without `metadata.namespace` lands in "default", as with kubectl. Status
fields are kept as the store keeps them (the lab writes `status.podIP` back into pod files).

How changes are noticed: the directory is polled every `poll_interval` seconds; a file whose
(mtime, ctime, size, inode) changed is read again. A file modified within the last two seconds
is also compared by content, since a same-size rewrite inside one timestamp tick leaves the stat
unchanged. After any change, each kind is replaced in the store as a whole (`Store.replace`),
so objects of a removed file disappear and unchanged objects raise no events.

Failure rules:
- A file that cannot be parsed as YAML is logged (naming the file) and skipped; the previous
  good content of that file stays in force until it parses again.
- A malformed object (not a mapping, no kind, no metadata.name, a spec or status that is not a
  mapping, labels or annotations that are not strings to strings, a Pod's containers, ports or
  podIPs that are not lists of mappings...) is logged (naming the file) and skipped; the file's
  other objects are used.
- The same object in two files: the file whose path sorts last wins (logged).
- A directory that is missing or unreadable leaves the store exactly as it is; changes are
  picked up when it returns. The source reports synced only after one complete read.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from controller import metrics
from controller.config import AgentConfig
from controller.store import CLUSTER_SCOPED, KINDS, KubeObject, ObjectKey, Store, object_key, slim

log = logging.getLogger(__name__)

SYNC_NAME = "manifests"
SUFFIXES = (".yaml", ".yml", ".json")
# A file changed this recently may change again within the same timestamp tick: compare bytes.
RACY_SECONDS = 2.0

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Stamp = tuple[int, int, int, int]
"""(mtime_ns, ctime_ns, size, inode) of a file."""


class MalformedObject(ValueError):
    """One document of a manifest file that is not a usable Kubernetes object."""


@dataclass
class _FileState:
    """What one file last contributed: its stamp, content digest and objects."""

    stamp: Stamp
    digest: bytes
    objects: list[tuple[str, KubeObject]] = field(default_factory=list)


# --- pure parsing -------------------------------------------------------------------------------


def parse_manifests(text: str, origin: str = "<text>") -> list[tuple[str, KubeObject]]:
    """(kind, object) of every supported object in `text`.

    Raises yaml.YAMLError when the text is not YAML; malformed objects and unsupported kinds are
    logged (with `origin`) and left out.
    """
    objects: list[tuple[str, KubeObject]] = []
    for document in _documents(yaml.load_all(text, Loader=_Loader)):
        try:
            checked = check_object(document)
        except MalformedObject as err:
            log.error("manifest object skipped: %s: %s", origin, err, extra={"file": origin})
            continue
        if checked is None:
            log.debug(
                "manifest kind ignored: %s: %s",
                origin,
                document.get("kind"),
                extra={"file": origin},
            )
            continue
        objects.append(checked)
    return objects


def _documents(loaded: Iterable[Any]) -> Iterator[Any]:
    """Every document, with `kind: List` flattened into its items; empty documents dropped."""
    for document in loaded:
        if document is None:
            continue
        if isinstance(document, dict) and document.get("kind") == "List":
            yield from document.get("items") or ()
        else:
            yield document


def check_object(document: Any) -> tuple[str, KubeObject] | None:
    """(kind, object) when `document` is a supported object, None for another kind.

    Raises MalformedObject naming what is wrong. The returned object carries a namespace
    ("default" when a namespaced object has none).
    """
    if not isinstance(document, dict):
        raise MalformedObject(f"a document must be a mapping, not {type(document).__name__}")
    kind = document.get("kind")
    if not isinstance(kind, str) or not kind:
        raise MalformedObject("no kind")
    if kind not in KINDS:
        return None
    meta = document.get("metadata")
    if not isinstance(meta, dict):
        raise MalformedObject(f"{kind}: no metadata")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise MalformedObject(f"{kind}: no metadata.name")
    namespace = meta.get("namespace")
    if namespace is not None and not isinstance(namespace, str):
        raise MalformedObject(f"{kind} {name}: metadata.namespace must be a string")
    for part in ("spec", "status"):
        if document.get(part) is not None and not isinstance(document[part], dict):
            raise MalformedObject(f"{kind} {name}: {part} must be a mapping")
    for part in ("labels", "annotations"):
        # As the API server requires: reconcilers index and match these as str -> str.
        value = meta.get(part)
        if value is not None and not _string_map(value):
            raise MalformedObject(f"{kind} {name}: metadata.{part} must map strings to strings")
    if kind == "Pod":
        _check_pod_lists(name, document)
    obj = document
    if kind not in CLUSTER_SCOPED and not namespace:
        obj = {**document, "metadata": {**meta, "namespace": "default"}}
    try:
        slim(kind, obj)  # what the store will do with it: refuse it here rather than there
    except Exception as err:
        raise MalformedObject(f"{kind} {name}: {type(err).__name__}: {err}") from None
    return kind, obj


def _check_pod_lists(name: str, pod: dict[str, Any]) -> None:
    """The lists of a Pod that the policy model walks hold mappings, as the API server requires
    (a container port or a pod IP that is not a mapping would otherwise be ignored silently)."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    containers = spec.get("containers")
    if containers is not None and not _list_of_maps(containers):
        raise MalformedObject(f"Pod {name}: spec.containers must be a list of mappings")
    for i, container in enumerate(containers or ()):
        ports = container.get("ports")
        if ports is not None and not _list_of_maps(ports):
            raise MalformedObject(
                f"Pod {name}: spec.containers[{i}].ports must be a list of mappings"
            )
    pod_ips = status.get("podIPs")
    if pod_ips is not None and not _list_of_maps(pod_ips):
        raise MalformedObject(f"Pod {name}: status.podIPs must be a list of mappings")


def _list_of_maps(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


def _string_map(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


# --- the source ---------------------------------------------------------------------------------


class ManifestsSource:
    """Keeps `store` in step with `config.manifests_dir`. `start`, `wait_synced`, `stop`."""

    def __init__(self, config: AgentConfig, store: Store, *, poll_interval: float = 0.2) -> None:
        self.config = config
        self.store = store
        self.directory = Path(config.manifests_dir)
        self.poll_interval = poll_interval
        self._files: dict[Path, _FileState] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._scan_lock = threading.Lock()
        self._unreadable = False  # log an outage once, and its end once

    @property
    def sync_names(self) -> list[str]:
        """The names this source marks synced in the store: the source, and each kind."""
        return [SYNC_NAME, *KINDS]

    def start(self) -> None:
        """Read the directory now (in the caller's thread), then poll it in a thread of its own."""
        if self._thread is not None:
            return
        self._stopping.clear()
        self.scan()
        self._thread = threading.Thread(target=self._run, name="manifests", daemon=True)
        self._thread.start()
        log.info("manifests source started", extra={"directory": str(self.directory)})

    def stop(self, timeout: float = 10.0) -> None:
        """Stop polling. The store is left as it is."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("manifests thread still running after stop")
        self._thread = None

    def wait_synced(self, timeout: float | None = None) -> bool:
        """Block until the directory has been read once; False if `timeout` seconds pass first."""
        return self.store.wait_synced(self.sync_names, timeout)

    def _run(self) -> None:
        while not self._stopping.wait(self.poll_interval):
            try:
                self.scan()
            except Exception:
                # A bug in one scan must not stop the source: the next poll tries again.
                log.exception("manifests scan failed", extra={"directory": str(self.directory)})

    # -- one scan --

    def scan(self) -> bool:
        """Read what changed since the last scan into the store; True if anything changed.

        Returns False, touching nothing, while the directory cannot be listed.
        """
        with self._scan_lock:
            try:
                stamps = self._list_files()
            except OSError as err:
                self._report_unreadable(err)
                return False
            if self._unreadable:
                self._unreadable = False
                log.info("manifests directory readable again: %s", self.directory)
            changed = self._forget_removed(stamps)
            for path, stamp in stamps.items():
                changed |= self._refresh(path, stamp)
            if changed or not self.store.is_synced(SYNC_NAME):
                self._apply()
            return changed

    def _report_unreadable(self, err: OSError) -> None:
        if not self._unreadable:
            self._unreadable = True
            log.warning(
                "manifests directory unreadable; keeping what is known: %s: %s",
                self.directory,
                err.strerror or err,
                extra={"directory": str(self.directory)},
            )

    def _list_files(self) -> dict[Path, Stamp]:
        """Stamps of every manifest file; raises OSError if any directory cannot be listed."""
        stamps: dict[Path, Stamp] = {}
        pending = [self.directory]
        while pending:
            directory = pending.pop()
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(Path(entry.path))
                    elif entry.name.endswith(SUFFIXES):
                        stamp = _stamp(Path(entry.path))
                        if stamp is not None:
                            stamps[Path(entry.path)] = stamp
        return stamps

    def _forget_removed(self, stamps: Mapping[Path, Stamp]) -> bool:
        removed = [path for path in self._files if path not in stamps]
        for path in removed:
            log.info("manifest removed: %s", path, extra={"file": str(path)})
            del self._files[path]
        return bool(removed)

    def _refresh(self, path: Path, stamp: Stamp) -> bool:
        """Re-read `path` if it may have changed; True if its objects changed."""
        known = self._files.get(path)
        if known is not None and known.stamp == stamp and not _racy(stamp):
            return False
        try:
            raw = path.read_bytes()
        except OSError as err:
            # Gone or unreadable between listing and reading: the next scan settles it.
            log.warning("manifest unreadable: %s: %s", path, err.strerror or err)
            return False
        digest = hashlib.blake2b(raw, digest_size=16).digest()
        if known is not None and known.digest == digest:
            known.stamp = stamp
            return False
        try:
            objects = parse_manifests(raw.decode("utf-8"), str(path))
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            log.error(
                "manifest not parsed, its previous content stays in force: %s: %s",
                path,
                _one_line(err),
                extra={"file": str(path)},
            )
            # Remember the stamp so that the error is logged once, not every poll.
            previous = known.objects if known is not None else []
            self._files[path] = _FileState(stamp, digest, previous)
            return False
        self._files[path] = _FileState(stamp, digest, objects)
        log.info("manifest read: %s", path, extra={"file": str(path), "objects": len(objects)})
        return True

    def _apply(self) -> None:
        """Replace every kind in the store with what the files hold now."""
        by_kind: dict[str, dict[ObjectKey, KubeObject]] = {kind: {} for kind in KINDS}
        origin: dict[ObjectKey, Path] = {}
        for path in sorted(self._files):
            for kind, obj in self._files[path].objects:
                key = object_key(kind, obj)
                if key in origin:
                    log.warning(
                        "object defined twice; the later file wins: %s in %s and %s",
                        "/".join(k for k in key if k),
                        origin[key],
                        path,
                    )
                origin[key] = path
                by_kind[kind][key] = obj
        for kind, objects in by_kind.items():
            self.store.replace(kind, objects.values())
            metrics.STORE_OBJECTS.labels(kind).set(self.store.count(kind))
        if not self.store.is_synced(SYNC_NAME):
            for name in (*KINDS, SYNC_NAME):
                self.store.mark_synced(name)
            metrics.SYNCED.labels(SYNC_NAME).set(1)
            log.info("synced", extra={"source": SYNC_NAME, "files": len(self._files)})


def _stamp(path: Path) -> Stamp | None:
    """The file's stamp (following symlinks), None if it is not a regular file or is gone."""
    try:
        st = path.stat()
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


def _racy(stamp: Stamp) -> bool:
    return time.time_ns() - max(stamp[0], stamp[1]) < RACY_SECONDS * 1e9


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())
