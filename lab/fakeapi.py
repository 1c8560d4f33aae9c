"""A small fake Kubernetes API server: the list/watch protocol over HTTP, for tests and benchmarks.

It speaks what a list + watch client relies on, the way kube-apiserver does:
- `GET /api/v1/{pods,nodes,namespaces,services}`, `/apis/networking.k8s.io/v1/networkpolicies`
  (and the namespaced forms), with `fieldSelector` (`path=value`, `path!=value`, comma = and),
  `limit` + `continue` paging over a consistent snapshot, and a list `resourceVersion`;
- `?watch=true&resourceVersion=N`: a chunked stream of one JSON event per line (ADDED, MODIFIED,
  DELETED; objects entering or leaving a field selector become ADDED or DELETED), BOOKMARK
  events with `allowWatchBookmarks=true`, and `timeoutSeconds`;
- 410 Gone once history is compacted: as an ERROR event in a 200 stream (what kube-apiserver
  does for watches), or as an HTTP 410 (`gone_as_event=False`); an expired `continue` is 410 too.

Fault injection for tests: `drop_watches` cuts every open watch mid-stream; `stop` makes the
server refuse connections (state is kept) and `start` brings it back on the same port;
`fail_next` answers the next requests with an error status; `compact` forgets history.

    python -m lab.fakeapi --pods 10000 --namespaces 1000   # prints its URL, serves until killed
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import hashlib
import itertools
import json
import re
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Obj = dict[str, Any]


@dataclass(frozen=True)
class Resource:
    """One API resource the fake server serves."""

    plural: str
    kind: str
    api_version: str
    namespaced: bool

    @property
    def prefix(self) -> str:
        return "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"


RESOURCES = {
    r.plural: r
    for r in (
        Resource("pods", "Pod", "v1", True),
        Resource("nodes", "Node", "v1", False),
        Resource("namespaces", "Namespace", "v1", False),
        Resource("services", "Service", "v1", True),
        Resource("networkpolicies", "NetworkPolicy", "networking.k8s.io/v1", True),
    )
}

_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+/[^/]+))"
    r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[a-z]+)$"
)


class ApiError(Exception):
    """An error the server answers with a Status object."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> Obj:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }


@dataclass(frozen=True)
class _Event:
    rv: int
    plural: str
    type: str  # ADDED, MODIFIED, DELETED
    before: Obj | None
    after: Obj  # for DELETED: the last state, carrying the deletion's resourceVersion


# --- selectors ------------------------------------------------------------------------------------


def _field(obj: Obj, path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


def parse_field_selector(text: str) -> list[tuple[str, bool, str]]:
    """'a.b=x,c!=y' -> [(path, equal, value)]. Raises ApiError 400 on anything else."""
    terms = []
    for term in filter(None, text.split(",")):
        match = re.fullmatch(r"([A-Za-z.]+)\s*(==|=|!=)\s*(.*)", term)
        if not match:
            raise ApiError(400, "BadRequest", f"invalid field selector term {term!r}")
        terms.append((match[1], match[2] != "!=", match[3]))
    return terms


def _matches(obj: Obj | None, terms: list[tuple[str, bool, str]], namespace: str | None) -> bool:
    if obj is None:
        return False
    if namespace is not None and obj["metadata"].get("namespace") != namespace:
        return False
    return all((_field(obj, path) == value) == equal for path, equal, value in terms)


# --- the server -----------------------------------------------------------------------------------


class FakeApiServer:
    """State (objects, resourceVersion, history) plus an HTTP server that can go down and back."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        bookmark_interval: float = 1.0,
        gone_as_event: bool = True,
    ) -> None:
        self.host, self.port = host, port
        self.bookmark_interval = bookmark_interval
        self.gone_as_event = gone_as_event
        self._cond = threading.Condition()
        self._rv = 1
        self._objects: dict[str, dict[tuple[str, str], Obj]] = {p: {} for p in RESOURCES}
        self._history: list[_Event] = []
        self._history_rvs: list[int] = []
        self._compacted_rv = 1  # watches from below this answer 410
        self._snapshots: dict[int, tuple[list[Obj], int]] = {}
        self._snapshot_ids = itertools.count(1)
        self._uids = itertools.count(1)
        self._failures: deque[tuple[int, str]] = deque()
        self._connections: set[socket.socket] = set()
        self._watches: set[socket.socket] = set()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._up = False
        self.requests: deque[tuple[str, dict[str, str]]] = deque(maxlen=10_000)

    # -- lifecycle --

    def start(self) -> None:
        """Listen (on the same port as before, after a `stop`)."""
        if self._httpd is not None:
            return
        httpd = _HTTPServer((self.host, self.port), self)
        self.port = httpd.server_address[1]
        with self._cond:
            self._up = True
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, args=(0.05,), name="fakeapi", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Go down: refuse new connections and cut every open one. State is kept."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        with self._cond:
            self._up = False
            self._cond.notify_all()
            connections = list(self._connections)
        httpd.shutdown()
        httpd.server_close()
        for conn in connections:
            _cut(conn)
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FakeApiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- state --

    @property
    def resource_version(self) -> int:
        with self._cond:
            return self._rv

    def _stamp(self, resource: Resource, obj: Obj, rv: int) -> Obj:
        meta = dict(obj.get("metadata") or {})
        if not meta.get("name"):
            raise ValueError("object has no metadata.name")
        if resource.namespaced:
            meta.setdefault("namespace", "default")
        else:
            meta.pop("namespace", None)
        meta.setdefault("uid", f"00000000-0000-4000-8000-{next(self._uids):012d}")
        meta.setdefault("creationTimestamp", "2025-01-01T00:00:00Z")
        meta["resourceVersion"] = str(rv)
        out = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
        return {"metadata": meta, **out}

    @staticmethod
    def _key(obj: Obj) -> tuple[str, str]:
        return (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])

    def load(self, plural: str, objects: Iterable[Obj]) -> None:
        """Add objects as initial state: one resourceVersion each, but no watch history."""
        resource = RESOURCES[plural]
        with self._cond:
            table = self._objects[plural]
            for obj in objects:
                self._rv += 1
                stamped = self._stamp(resource, obj, self._rv)
                table[self._key(stamped)] = stamped
            self._compacted_rv = self._rv
            self._history.clear()
            self._history_rvs.clear()

    def _record(self, plural: str, type_: str, before: Obj | None, after: Obj) -> None:
        self._history.append(_Event(self._rv, plural, type_, before, after))
        self._history_rvs.append(self._rv)
        self._cond.notify_all()

    def create(self, plural: str, obj: Obj) -> Obj:
        """Add an object (ADDED). Raises ApiError 409 if it exists."""
        resource = RESOURCES[plural]
        with self._cond:
            stamped = self._stamp(resource, obj, self._rv + 1)
            key = self._key(stamped)
            if key in self._objects[plural]:
                raise ApiError(409, "AlreadyExists", f"{plural} {key} already exists")
            self._rv += 1
            self._objects[plural][key] = stamped
            self._record(plural, "ADDED", None, stamped)
            return stamped

    def update(self, plural: str, obj: Obj) -> Obj:
        """Replace an object (MODIFIED). Raises ApiError 404 if it does not exist."""
        resource = RESOURCES[plural]
        with self._cond:
            stamped = self._stamp(resource, obj, self._rv + 1)
            key = self._key(stamped)
            before = self._objects[plural].get(key)
            if before is None:
                raise ApiError(404, "NotFound", f"{plural} {key} not found")
            stamped["metadata"]["uid"] = before["metadata"]["uid"]
            self._rv += 1
            self._objects[plural][key] = stamped
            self._record(plural, "MODIFIED", before, stamped)
            return stamped

    def apply(self, plural: str, obj: Obj) -> Obj:
        """Create or update."""
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace", "default") if RESOURCES[plural].namespaced else ""
        if self.get(plural, namespace, meta.get("name", "")) is None:
            return self.create(plural, obj)
        return self.update(plural, obj)

    def delete(self, plural: str, namespace: str, name: str) -> Obj:
        """Remove an object (DELETED). Raises ApiError 404 if it does not exist."""
        with self._cond:
            before = self._objects[plural].pop((namespace, name), None)
            if before is None:
                raise ApiError(404, "NotFound", f"{plural} {namespace}/{name} not found")
            self._rv += 1
            tombstone = {
                **before,
                "metadata": {**before["metadata"], "resourceVersion": str(self._rv)},
            }
            self._record(plural, "DELETED", before, tombstone)
            return tombstone

    def get(self, plural: str, namespace: str, name: str) -> Obj | None:
        with self._cond:
            return self._objects[plural].get((namespace, name))

    def objects(self, plural: str) -> list[Obj]:
        """Current objects of a resource (as stored: no kind/apiVersion)."""
        with self._cond:
            return list(self._objects[plural].values())

    def compact(self) -> None:
        """Forget all history and list snapshots: older resourceVersions now answer 410 Gone."""
        with self._cond:
            self._compacted_rv = self._rv
            self._history.clear()
            self._history_rvs.clear()
            self._snapshots.clear()
            self._cond.notify_all()

    def drop_watches(self) -> int:
        """Cut every open watch connection without ending its stream; returns how many."""
        with self._cond:
            watches = list(self._watches)
        for conn in watches:
            _cut(conn)
        return len(watches)

    @property
    def open_watches(self) -> int:
        with self._cond:
            return len(self._watches)

    def fail_next(self, count: int, code: int = 500, reason: str = "InternalError") -> None:
        """Answer the next `count` requests with `code`."""
        with self._cond:
            self._failures.extend([(code, reason)] * count)

    # -- request handling (called from handler threads) --

    def _take_failure(self) -> ApiError | None:
        with self._cond:
            if not self._failures:
                return None
            code, reason = self._failures.popleft()
        return ApiError(code, reason, f"injected failure {code}")

    def _list_page(self, resource: Resource, namespace: str | None, query: dict[str, str]) -> Obj:
        terms = parse_field_selector(query.get("fieldSelector", ""))
        limit = int(query.get("limit") or 0)
        token = query.get("continue", "")
        with self._cond:
            if token:
                snap_id, _, offset_text = token.partition(":")
                found = self._snapshots.pop(int(snap_id), None) if snap_id.isdigit() else None
                if found is None:
                    raise ApiError(
                        410,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent list"
                        " result. You can start a new list without the continue parameter.",
                    )
                snapshot, rv = found
                offset = int(offset_text)
            else:
                table = self._objects[resource.plural]
                snapshot = [table[k] for k in sorted(table) if _matches(table[k], terms, namespace)]
                rv, offset = self._rv, 0
            end = offset + limit if limit > 0 else len(snapshot)
            metadata: Obj = {"resourceVersion": str(rv)}
            if end < len(snapshot):
                next_id = next(self._snapshot_ids)
                self._snapshots[next_id] = (snapshot, rv)
                metadata["continue"] = f"{next_id}:{end}"
                metadata["remainingItemCount"] = len(snapshot) - end
        return {
            "kind": f"{resource.kind}List",
            "apiVersion": resource.api_version,
            "metadata": metadata,
            "items": snapshot[offset:end],
        }

    def _watch_start(self, resource: Resource, rv_text: str) -> tuple[int, list[Obj]]:
        """(resourceVersion to stream after, objects to send first as ADDED); 410 if too old.

        An empty or "0" resourceVersion starts from the current state, sent as ADDED events.
        """
        with self._cond:
            if rv_text in ("", "0"):
                return self._rv, list(self._objects[resource.plural].values())
            if not rv_text.isdigit():
                raise ApiError(400, "BadRequest", f"invalid resourceVersion {rv_text!r}")
            rv = int(rv_text)
            if rv < self._compacted_rv:
                raise _gone(rv, self._compacted_rv)
            return rv, []

    def _watch_batch(
        self, resource: Resource, after_rv: int, timeout: float
    ) -> tuple[list[_Event], int, bool]:
        """Events after `after_rv` (waiting up to `timeout`), the rv they reach, and 'up'."""
        with self._cond:
            if self._up and self._rv <= after_rv:
                self._cond.wait(timeout)
            if not self._up:
                return [], after_rv, False
            if after_rv < self._compacted_rv and self._rv > after_rv:
                raise _gone(after_rv, self._compacted_rv)
            start = bisect.bisect_right(self._history_rvs, after_rv)
            batch = [e for e in self._history[start:] if e.plural == resource.plural]
            return batch, self._rv, True


def _gone(rv: int, oldest: int) -> ApiError:
    return ApiError(410, "Expired", f"too old resource version: {rv} ({oldest})")


def _cut(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the peer: nothing left to cut
        conn.shutdown(socket.SHUT_RDWR)


def _event_line(resource: Resource, type_: str, obj: Obj) -> bytes:
    wire = {"apiVersion": resource.api_version, "kind": resource.kind, **obj}
    return json.dumps({"type": type_, "object": wire}, separators=(",", ":")).encode() + b"\n"


def _translate(
    event: _Event, terms: list[tuple[str, bool, str]], namespace: str | None
) -> str | None:
    """The event type a watcher with this selector sees, or None."""
    was = _matches(event.before, terms, namespace)
    now = event.type != "DELETED" and _matches(event.after, terms, namespace)
    if was and now:
        return "MODIFIED"
    if now:
        return "ADDED"
    if was:
        return "DELETED"
    return None


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], api: FakeApiServer) -> None:
        self.api = api
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        with self.server.api._cond:
            self.server.api._connections.add(self.connection)

    def finish(self) -> None:
        with self.server.api._cond:
            self.server.api._connections.discard(self.connection)
            self.server.api._watches.discard(self.connection)
        with contextlib.suppress(OSError):  # the peer (or `_cut`) closed it first
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests and benchmarks want quiet

    def do_GET(self) -> None:
        api = self.server.api
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        api.requests.append((url.path, query))
        try:
            failure = api._take_failure()
            if failure is not None:
                raise failure
            resource, namespace = self._resource(url.path)
            if query.get("watch") in ("true", "1"):
                self._watch(resource, namespace, query)
            else:
                self._send_json(200, api._list_page(resource, namespace, query))
        except ApiError as err:
            self._send_json(err.code, err.status())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _resource(self, path: str) -> tuple[Resource, str | None]:
        match = _PATH.match(path)
        resource = RESOURCES.get(match["plural"]) if match else None
        if match is None or resource is None:
            raise ApiError(404, "NotFound", f"no resource at {path}")
        if (match["core"] or match["group"]) != resource.api_version:
            raise ApiError(404, "NotFound", f"no resource at {path}")
        namespace = match["ns"]
        if namespace is not None and not resource.namespaced:
            raise ApiError(404, "NotFound", f"{resource.plural} are not namespaced")
        return resource, namespace

    def _send_json(self, code: int, body: Obj) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _watch(self, resource: Resource, namespace: str | None, query: dict[str, str]) -> None:
        api = self.server.api
        terms = parse_field_selector(query.get("fieldSelector", ""))
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        timeout = float(query.get("timeoutSeconds") or 1800)
        try:
            after_rv, initial = api._watch_start(resource, query.get("resourceVersion", ""))
        except ApiError as err:
            if not api.gone_as_event or err.code != 410:
                raise
            self._start_stream()
            self._chunk(_event_line(resource, "ERROR", err.status()))
            self._chunk(b"")
            return
        self._start_stream()
        with api._cond:
            api._watches.add(self.connection)
        for obj in initial:
            if _matches(obj, terms, namespace):
                self._chunk(_event_line(resource, "ADDED", obj))
        deadline = time.monotonic() + timeout
        next_bookmark = time.monotonic() + api.bookmark_interval
        while True:
            now = time.monotonic()
            if now >= deadline:
                self._chunk(b"")  # a clean end: the client re-watches from its last rv
                return
            wait = min(deadline, next_bookmark if bookmarks else deadline) - now
            try:
                batch, after_rv, up = api._watch_batch(resource, after_rv, max(0.0, wait))
            except ApiError as err:
                self._chunk(_event_line(resource, "ERROR", err.status()))
                self._chunk(b"")
                return
            if not up:
                self.close_connection = True
                return
            for event in batch:
                type_ = _translate(event, terms, namespace)
                if type_ is not None:
                    self._chunk(_event_line(resource, type_, event.after))
            if bookmarks and time.monotonic() >= next_bookmark:
                mark = {"metadata": {"resourceVersion": str(after_rv)}}
                self._chunk(_event_line(resource, "BOOKMARK", mark))
                next_bookmark = time.monotonic() + api.bookmark_interval

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()


# --- a realistic cluster, for benchmarks ----------------------------------------------------------


def _hash(text: str, size: int) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:size]


def make_node(index: int) -> Obj:
    """A Node as a kubelet registers it, with the image list that makes real nodes heavy."""
    name = f"node-{index:04d}"
    return {
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            },
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {
            "podCIDR": f"10.{index // 256}.{index % 256}.0/24",
            "podCIDRs": [f"10.{index // 256}.{index % 256}.0/24"],
            "providerID": f"kind://docker/plumb/{name}",
        },
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": f"172.18.{index // 250}.{index % 250 + 2}"},
                {"type": "Hostname", "address": name},
            ],
            "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
            "conditions": [
                {"type": t, "status": "False" if t != "Ready" else "True", "reason": f"Kubelet{t}"}
                for t in ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready")
            ],
            "images": [
                {"names": [f"registry.k8s.io/image-{i}@sha256:{_hash(str(i), 64)}"], "sizeBytes": i}
                for i in range(30)
            ],
            "nodeInfo": {
                "kubeletVersion": "v1.30.0",
                "containerRuntimeVersion": "containerd://1.7",
            },
        },
    }


def make_namespace(index: int) -> Obj:
    name = f"ns-{index:04d}"
    return {
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/metadata.name": name, "team": f"team-{index % 20}"},
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


def make_pod(index: int, namespace: str, node: str) -> Obj:
    """A Deployment's pod as it looks once running: managedFields, volumes, statuses and all."""
    app = f"app-{index % 50}"
    template_hash = _hash(app, 10)
    name = f"{app}-{template_hash}-{_hash(str(index), 5)}"
    container = {
        "name": "main",
        "image": f"registry.example.com/{app}:1.2.3",
        "imagePullPolicy": "IfNotPresent",
        "ports": [
            {"name": "http", "containerPort": 8080, "protocol": "TCP"},
            {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
        ],
        "env": [{"name": f"VAR_{i}", "value": f"value-{i}"} for i in range(4)],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 10},
        "volumeMounts": [
            {
                "name": "kube-api-access",
                "readOnly": True,
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
            }
        ],
        "terminationMessagePath": "/dev/termination-log",
    }
    fields_v1 = {
        "f:metadata": {"f:labels": {"f:app": {}, "f:pod-template-hash": {}}},
        "f:spec": {
            "f:containers": {'k:{"name":"main"}': {f"f:{k}": {} for k in container}},
            "f:dnsPolicy": {},
            "f:restartPolicy": {},
        },
    }
    return {
        "metadata": {
            "name": name,
            "generateName": f"{app}-{template_hash}-",
            "namespace": namespace,
            "labels": {"app": app, "pod-template-hash": template_hash, "tier": "backend"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": f"{app}-{template_hash}",
                    "uid": f"{_hash(app, 8)}-0000-4000-8000-000000000000",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
            "managedFields": [
                {
                    "manager": "kube-controller-manager",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": "2025-01-01T00:00:00Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": fields_v1,
                },
                {
                    "manager": "kubelet",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": "2025-01-01T00:00:05Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:status": {"f:conditions": {}, "f:podIP": {}, "f:phase": {}}},
                    "subresource": "status",
                },
            ],
        },
        "spec": {
            "nodeName": node,
            "containers": [container],
            "volumes": [
                {
                    "name": "kube-api-access",
                    "projected": {
                        "defaultMode": 420,
                        "sources": [
                            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                            {
                                "configMap": {
                                    "name": "kube-root-ca.crt",
                                    "items": [{"key": "ca.crt"}],
                                }
                            },
                        ],
                    },
                }
            ],
            "restartPolicy": "Always",
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "schedulerName": "default-scheduler",
            "tolerations": [
                {"key": f"node.kubernetes.io/{t}", "operator": "Exists", "effect": "NoExecute"}
                for t in ("not-ready", "unreachable")
            ],
            "priority": 0,
        },
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": t, "status": "True", "lastTransitionTime": "2025-01-01T00:00:05Z"}
                for t in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady")
            ],
            "hostIP": "172.18.0.2",
            "podIP": f"10.{index // 65536 + 100}.{index // 256 % 256}.{index % 256}",
            "podIPs": [{"ip": f"10.{index // 65536 + 100}.{index // 256 % 256}.{index % 256}"}],
            "startTime": "2025-01-01T00:00:01Z",
            "containerStatuses": [
                {
                    "name": "main",
                    "ready": True,
                    "restartCount": 0,
                    "image": container["image"],
                    "imageID": f"sha256:{_hash(app, 64)}",
                    "containerID": f"containerd://{_hash(name, 64)}",
                    "started": True,
                    "state": {"running": {"startedAt": "2025-01-01T00:00:04Z"}},
                }
            ],
            "qosClass": "Burstable",
        },
    }


def make_policy(index: int, namespace: str) -> Obj:
    return {
        "metadata": {"name": f"allow-frontend-{index}", "namespace": namespace},
        "spec": {
            "podSelector": {"matchLabels": {"tier": "backend"}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        {"podSelector": {"matchLabels": {"tier": "frontend"}}},
                        {"namespaceSelector": {"matchLabels": {"team": f"team-{index % 20}"}}},
                    ],
                    "ports": [{"protocol": "TCP", "port": "http"}],
                }
            ],
        },
    }


def generate_cluster(
    pods: int, namespaces: int, nodes: int, policies: int
) -> Iterator[tuple[str, Iterator[Obj]]]:
    """(plural, objects) for a cluster of that size; pods spread round-robin over both."""
    yield "nodes", (make_node(i) for i in range(nodes))
    yield "namespaces", (make_namespace(i) for i in range(namespaces))
    yield (
        "pods",
        (make_pod(i, f"ns-{i % namespaces:04d}", f"node-{i % nodes:04d}") for i in range(pods)),
    )
    yield "networkpolicies", (make_policy(i, f"ns-{i % namespaces:04d}") for i in range(policies))


def main(argv: list[str] | None = None) -> int:
    """Serve a generated cluster until SIGTERM/SIGINT; the first stdout line is the URL."""
    parser = argparse.ArgumentParser(
        prog="python -m lab.fakeapi", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--pods", type=int, default=0)
    parser.add_argument("--namespaces", type=int, default=1)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--policies", type=int, default=0)
    parser.add_argument("--bookmark-interval", type=float, default=60.0)
    args = parser.parse_args(argv)
    api = FakeApiServer(args.host, args.port, bookmark_interval=args.bookmark_interval)
    for plural, objects in generate_cluster(args.pods, args.namespaces, args.nodes, args.policies):
        api.load(plural, objects)
    api.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(api.url, flush=True)
    stop.wait()
    api.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
