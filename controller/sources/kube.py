"""The Kubernetes source: list + watch of the objects the agent needs, into the local store.

One thread per stream, each a small reflector (the loop client-go's informers run):

1. List in pages (`limit`/`continue`), upsert every item, then delete what the store holds in
   the stream's scope but the list lacks; mark the stream synced after its first list.
2. Watch from the list's resourceVersion with `allowWatchBookmarks`; apply each event and carry
   the resourceVersion forward (bookmarks advance it without objects).
3. A watch the server ends (its timeout) is reopened at once from that resourceVersion. A
   dropped connection, a refused one or an error status backs off (exponential, with jitter)
   and reopens from the same resourceVersion. 410 Gone (an HTTP status or an ERROR event)
   means the server forgot it: list again, which converges the store.

While the API server is away the store keeps everything it had: nothing is deleted because a
request failed, so reconcilers keep every installed flow.

Streams (for node N):

    local-pods       Pod            fieldSelector spec.nodeName=N   (the CNI path: small, fast)
    pods             Pod            fieldSelector spec.nodeName!=N  (policy peers elsewhere)
    nodes            Node
    namespaces       Namespace
    networkpolicies  NetworkPolicy

The two pod streams split pods between them without overlap; a pod moving from "unscheduled"
to N leaves one selector and enters the other, and the local stream has the last word (the
`yields_to` guard) so that a late event from the other cannot clobber it.

Responses are read raw (`_preload_content=False`) and decoded with `json.loads`: the client's
model classes would cost seconds and hundreds of megabytes for 10,000 pods.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as _k8s_config
from kubernetes.client.exceptions import ApiException

from controller import metrics
from controller.config import AgentConfig
from controller.errors import ConfigError, ResourceExpired, SourceError
from controller.store import KubeObject, NamespacedName, Store, object_key, pod_node_name
from controller.workqueue import backoff_delay

log = logging.getLogger(__name__)

# The config loaders are untyped in some client releases and typed in others: call them as Any.
k8s_config: Any = _k8s_config

LOCAL_PODS = "local-pods"
GONE = 410
USER_AGENT = "plumb-agent"


@dataclass(frozen=True)
class Stream:
    """One list + watch: a kind, an optional field selector, and which stored objects it owns."""

    name: str
    kind: str
    field_selector: str = ""
    scope: Callable[[KubeObject], bool] | None = None
    """Stored objects this stream answers for; a relist deletes only among these (None: all)."""
    yields_to: Callable[[KubeObject], bool] | None = None
    """Stored objects another stream answers for: this stream never replaces or deletes them."""


def _on_node(node: str) -> Callable[[KubeObject], bool]:
    def on_node(pod: KubeObject) -> bool:
        return pod_node_name(pod) == node

    return on_node


def _not_on_node(node: str) -> Callable[[KubeObject], bool]:
    def not_on_node(pod: KubeObject) -> bool:
        return pod_node_name(pod) != node

    return not_on_node


def default_streams(node_name: str) -> list[Stream]:
    """The streams the agent runs on node `node_name`."""
    on_node = _on_node(node_name)
    return [
        Stream(LOCAL_PODS, "Pod", f"spec.nodeName={node_name}", scope=on_node),
        Stream(
            "pods",
            "Pod",
            f"spec.nodeName!={node_name}",
            scope=_not_on_node(node_name),
            yields_to=on_node,
        ),
        Stream("nodes", "Node"),
        Stream("namespaces", "Namespace"),
        Stream("networkpolicies", "NetworkPolicy"),
    ]


def backoff_with_jitter(failures: int, base: float, cap: float, rand: random.Random) -> float:
    """Exponential backoff, capped, with "equal jitter": uniformly in [delay/2, delay].

    The jitter keeps a fleet of agents from hammering an API server that comes back in step.
    """
    delay = backoff_delay(failures, base, cap)
    return delay / 2 + rand.random() * delay / 2


def make_api_client(config: AgentConfig, pool_size: int = 16) -> k8s.ApiClient:
    """An ApiClient from `config.kubeconfig`, the in-cluster service account, or the default
    kubeconfig, in that order. A configuration that cannot be loaded is a ConfigError."""
    configuration = k8s.Configuration()
    try:
        if config.kubeconfig:
            k8s_config.load_kube_config(
                config_file=config.kubeconfig,
                client_configuration=configuration,
                persist_config=False,
            )
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            k8s_config.load_incluster_config(client_configuration=configuration)
        else:
            k8s_config.load_kube_config(client_configuration=configuration, persist_config=False)
    except Exception as err:
        raise ConfigError("kubeconfig", f"cannot load a Kubernetes client config: {err}") from err
    # Every stream holds a watch connection open; lists need one more each at times.
    configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize, pool_size)
    # One retry policy, ours (backoff with jitter, rv carried): urllib3's own retries off.
    configuration.retries = False
    api = k8s.ApiClient(configuration)
    api.user_agent = USER_AGENT
    return api


def _listers(api: k8s.ApiClient) -> dict[str, Callable[..., Any]]:
    core = k8s.CoreV1Api(api)
    networking = k8s.NetworkingV1Api(api)
    return {
        "Pod": core.list_pod_for_all_namespaces,
        "Node": core.list_node,
        "Namespace": core.list_namespace,
        "Service": core.list_service_for_all_namespaces,
        "NetworkPolicy": networking.list_network_policy_for_all_namespaces,
    }


def iter_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Split a byte stream into non-empty lines, whatever the chunk boundaries."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        if b"\n" not in chunk:
            continue
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                yield line
    if pending.strip():
        yield pending


def _failure_reason(err: BaseException) -> str:
    """A short label for metrics: gone, http_NNN, decode, or connection."""
    if isinstance(err, ResourceExpired):
        return "gone"
    cause = err.__cause__ if isinstance(err, SourceError) else err
    if isinstance(cause, ApiException):
        return f"http_{cause.status}"
    if isinstance(cause, (json.JSONDecodeError, UnicodeDecodeError)):
        return "decode"
    return "connection"


def _status_error(stream: Stream, status: dict[str, Any]) -> SourceError:
    """The exception an ERROR watch event (a Status object) stands for."""
    code = status.get("code")
    message = f"{stream.name}: {status.get('reason', '')} {status.get('message', '')}".strip()
    if code == GONE:
        return ResourceExpired(message)
    return SourceError(f"{message} (code {code})")


class KubeSource:
    """Keeps `store` in step with the API server. `start`, `wait_synced`, `stop`."""

    def __init__(
        self,
        config: AgentConfig,
        store: Store,
        *,
        api_client: k8s.ApiClient | None = None,
        streams: Sequence[Stream] | None = None,
        page_size: int = 500,
        backoff_base: float = 0.8,
        backoff_cap: float = 30.0,
        watch_timeout: tuple[float, float] = (300.0, 600.0),
        connect_timeout: float = 10.0,
        list_timeout: float = 60.0,
        seed: int | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.streams = list(streams) if streams is not None else default_streams(config.node_name)
        self._api = api_client
        self._page_size = page_size
        self._backoff = (backoff_base, backoff_cap)
        # Watches end at a random time in this range (client-go does the same) so that agents
        # restarted together do not re-watch together forever after.
        self._watch_timeout = watch_timeout
        self._connect_timeout = connect_timeout
        self._list_timeout = list_timeout
        self._rand = random.Random(seed)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._open: dict[str, Any] = {}  # stream name -> the response it is reading
        self._threads: list[threading.Thread] = []
        self._listers: dict[str, Callable[..., Any]] = {}
        # The latest list/watch failure ("stream: reason"), for callers that would rather report
        # it than wait out the retries (plumbctl's one-shot list); the agent just keeps retrying.
        self.last_error: str | None = None

    # -- lifecycle --

    @property
    def sync_names(self) -> list[str]:
        """The names this source marks synced in the store: each stream, and each kind."""
        kinds = list(dict.fromkeys(s.kind for s in self.streams))
        return [s.name for s in self.streams] + kinds

    def start(self) -> None:
        """Start one thread per stream. Loads the client configuration first (ConfigError)."""
        if self._threads:
            return
        if self._api is None:
            self._api = make_api_client(self.config, pool_size=2 * len(self.streams) + 2)
        self._listers = _listers(self._api)
        self._stopping.clear()
        for stream in self.streams:
            thread = threading.Thread(
                target=self._run, args=(stream,), name=f"kube-{stream.name}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        log.info("kubernetes source started", extra={"streams": len(self.streams)})

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every stream: cut open requests, join the threads. The store is left as is."""
        self._stopping.set()
        with self._lock:
            responses = list(self._open.values())
        for response in responses:
            _interrupt(response)
        for thread in self._threads:
            thread.join(timeout)
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning("source threads still running after stop", extra={"threads": alive})
        self._threads = []

    def wait_synced(self, timeout: float | None = None) -> bool:
        """Block until every stream has listed once; False if `timeout` seconds pass first."""
        return self.store.wait_synced(self.sync_names, timeout)

    # -- one stream --

    def _run(self, stream: Stream) -> None:
        state = _StreamState()
        while not self._stopping.is_set():
            try:
                if not state.rv:
                    state.rv = self._list(stream)
                    state.failures = 0
                if self._watch(stream, state):
                    state.failures = state.expired = 0
            except ResourceExpired as err:
                metrics.WATCH_ERRORS.labels(stream.name, "gone").inc()
                log.info("resourceVersion expired; listing again", extra=_fields(stream, err))
                state.rv = ""
                state.expired += 1
                if state.expired > 1:  # a server that forgets at once: do not spin on list+watch
                    delay = backoff_with_jitter(state.expired - 2, *self._backoff, self._rand)
                    self._stopping.wait(delay)
            except Exception as err:
                if self._stopping.is_set():
                    break
                delay = backoff_with_jitter(state.failures, *self._backoff, self._rand)
                state.failures += 1
                metrics.WATCH_ERRORS.labels(stream.name, _failure_reason(err)).inc()
                self.last_error = f"{stream.name}: {err}"
                log.warning(
                    "list/watch failed; backing off",
                    extra={
                        **_fields(stream, err),
                        "attempt": state.failures,
                        "delay": round(delay, 2),
                        "rv": state.rv,
                    },
                )
                self._stopping.wait(delay)
        log.debug("stream stopped", extra={"stream": stream.name})

    def _request(self, stream: Stream, timeout: tuple[float, float], **params: Any) -> Any:
        """Open one list or watch request; returns the raw urllib3 response, registered so
        that `stop` can cut it."""
        if stream.field_selector:
            params["field_selector"] = stream.field_selector
        try:
            response = self._listers[stream.kind](
                _preload_content=False, _request_timeout=timeout, **params
            )
        except ApiException as err:
            if err.status == GONE:
                raise ResourceExpired(f"{stream.name}: HTTP 410 {err.reason}") from err
            raise SourceError(f"{stream.name}: HTTP {err.status} {err.reason}") from err
        with self._lock:
            self._open[stream.name] = response
        if self._stopping.is_set():
            _interrupt(response)
        return response

    def _release(self, stream: Stream, response: Any, *, close: bool) -> None:
        """Forget `response`; `close` its connection when the body may be left half read
        (a watch), so that the pool never hands out a connection with stale bytes in it."""
        with self._lock:
            self._open.pop(stream.name, None)
        if close:
            response.close()
        response.release_conn()

    def _list(self, stream: Stream) -> str:
        """List the stream's objects into the store; returns the list's resourceVersion."""
        kind = stream.kind
        present: set[NamespacedName] = set()
        token = ""
        rv = ""
        restarts = 0
        metrics.LISTS.labels(stream.name).inc()
        while True:
            params: dict[str, Any] = {"limit": self._page_size}
            if token:
                params["_continue"] = token
            try:
                body = self._read_json(stream, params)
            except ResourceExpired:
                if not token or restarts >= 3:
                    raise
                # The snapshot behind our continue token is gone: start the list over.
                log.info("list continue token expired; restarting", extra={"stream": stream.name})
                present.clear()
                token = ""
                restarts += 1
                continue
            for item in body.get("items") or ():
                _, namespace, name = object_key(kind, item)
                present.add((namespace, name))
                self.store.upsert(kind, item, keep=stream.yields_to)
            meta = body.get("metadata") or {}
            rv = str(meta.get("resourceVersion") or "")
            token = str(meta.get("continue") or "")
            if not token:
                break
        removed = self.store.delete_missing(kind, present, stream.scope)
        metrics.STORE_OBJECTS.labels(kind).set(self.store.count(kind))
        log.info(
            "listed",
            extra={
                "stream": stream.name,
                "objects": len(present),
                "removed": len(removed),
                "rv": rv,
            },
        )
        if not rv:
            raise SourceError(f"{stream.name}: list answered without a resourceVersion")
        self._mark_synced(stream)
        return rv

    def _read_json(self, stream: Stream, params: dict[str, Any]) -> dict[str, Any]:
        response = self._request(stream, (self._connect_timeout, self._list_timeout), **params)
        try:
            body = json.loads(response.data)
        except ValueError as err:
            raise SourceError(f"{stream.name}: list answer is not JSON") from err
        finally:
            self._release(stream, response, close=False)
        if not isinstance(body, dict):
            raise SourceError(f"{stream.name}: list answer is not an object")
        return body

    def _watch(self, stream: Stream, state: _StreamState) -> bool:
        """Watch from `state.rv` until the server ends the stream, moving `state.rv` forward
        with every event (so that a watch cut halfway resumes where it was). Returns whether any
        event arrived; raises on errors, ResourceExpired on 410."""
        seconds = int(self._rand.uniform(*self._watch_timeout))
        response = self._request(
            stream,
            (self._connect_timeout, seconds + 30.0),
            watch=True,
            resource_version=state.rv,
            allow_watch_bookmarks=True,
            timeout_seconds=seconds,
        )
        progressed = False
        try:
            for line in iter_lines(response.stream(None, decode_content=True)):
                if self._stopping.is_set():
                    break
                try:
                    event = json.loads(line)
                except ValueError as err:
                    raise SourceError(f"{stream.name}: watch event is not JSON") from err
                state.rv = self._apply(stream, event) or state.rv
                progressed = True
        finally:
            self._release(stream, response, close=True)
        return progressed

    def _apply(self, stream: Stream, event: dict[str, Any]) -> str:
        """Apply one watch event to the store; returns its resourceVersion ("" if none)."""
        type_ = str(event.get("type", ""))
        obj = event.get("object") or {}
        metrics.WATCH_EVENTS.labels(stream.name, type_).inc()
        if type_ == "ERROR":
            raise _status_error(stream, obj)
        if type_ in ("ADDED", "MODIFIED"):
            self.store.upsert(stream.kind, obj, keep=stream.yields_to)
        elif type_ == "DELETED":
            _, namespace, name = object_key(stream.kind, obj)
            self.store.delete(stream.kind, namespace, name, keep=stream.yields_to)
        elif type_ != "BOOKMARK":
            log.warning("unknown watch event type", extra={"stream": stream.name, "type": type_})
            return ""
        if type_ != "BOOKMARK":
            metrics.STORE_OBJECTS.labels(stream.kind).set(self.store.count(stream.kind))
        return str((obj.get("metadata") or {}).get("resourceVersion") or "")

    def _mark_synced(self, stream: Stream) -> None:
        if self.store.is_synced(stream.name):
            return
        self.store.mark_synced(stream.name)
        metrics.SYNCED.labels(stream.name).set(1)
        siblings = [s.name for s in self.streams if s.kind == stream.kind]
        if all(self.store.is_synced(name) for name in siblings):
            self.store.mark_synced(stream.kind)
            count = self.store.count(stream.kind)
            log.info("synced", extra={"kind": stream.kind, "objects": count})


@dataclass
class _StreamState:
    """What one stream's loop carries between requests."""

    rv: str = ""  # the resourceVersion to watch from; "" means list first
    failures: int = 0  # consecutive failed requests: the backoff exponent
    expired: int = 0  # consecutive 410s without an event in between


def _fields(stream: Stream, err: BaseException) -> dict[str, Any]:
    return {"stream": stream.name, "error": f"{type(err).__name__}: {err}"}


def _interrupt(response: Any) -> None:
    """Unblock a thread reading `response`: shut its socket down (urllib3 >= 2.3), else close."""
    try:
        shutdown = getattr(response, "shutdown", None)
        if shutdown is not None:
            shutdown()
        else:
            response.close()
    except Exception:  # already closed, or closing concurrently: either way it is unblocked
        log.debug("interrupting a response failed", exc_info=True)
