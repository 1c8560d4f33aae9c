"""The agent's HTTP endpoint: /livez, /readyz, /metrics, /loglevel and /debug/objects on one
small server.

- `GET /livez`: 200 while the process serves HTTP and the optional liveness check passes.
- `GET /readyz`: 200 once every readiness gate is open, else 503 naming the closed ones
  (`?verbose` lists every gate, kube-apiserver style: `[+]name ok` / `[-]name not ready`).
- `GET /metrics`: Prometheus exposition of `controller.metrics.REGISTRY`.
- `GET /loglevel`: the current level; `POST` or `PUT /loglevel` with the level as the body
  (or `?level=debug`) changes it.
- `GET /debug/objects[?top=N]`: the live Python objects the garbage collector tracks, counted
  by type, the N most numerous first (default 30): where to look when memory grows.
- `GET /debug/memory[?top=N]`: with the agent started under `PYTHONTRACEMALLOC=1`, the lines of
  code holding the most memory now ("BYTES BLOCKS FILE:LINE"); two readings apart show what
  grows (strings and bytes too, which the object counts leave out).

Readiness comes from named gates (`ReadinessGates`) that the agent opens as its parts come up:
"ovsdb", "openflow", "synced", and so on. The server runs in daemon threads; `stop` closes it.

`SyncClock` keeps the two sync times on /metrics: when the source last changed the store
(`plumb_agent_source_last_change_timestamp_seconds`) and when the agent last had every change
committed to the bridge (`plumb_agent_last_sync_timestamp_seconds`); `plumbctl status` reads them.
"""

from __future__ import annotations

import gc
import logging
import socket
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from controller import logs, metrics
from controller.config import split_host_port

log = logging.getLogger(__name__)


class ReadinessGates:
    """Named booleans; ready when all are open. Thread-safe."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._gates: dict[str, bool] = dict.fromkeys(names, False)

    def add(self, name: str, ready: bool = False) -> None:
        """Declare a gate (closed unless `ready`); declaring it again keeps its state."""
        with self._lock:
            self._gates.setdefault(name, ready)

    def set(self, name: str, ready: bool = True) -> None:
        """Open (or close) a gate, declaring it if needed."""
        with self._lock:
            self._gates[name] = ready

    def ready(self) -> bool:
        with self._lock:
            return all(self._gates.values())

    def status(self) -> dict[str, bool]:
        """Every gate and whether it is open, in declaration order."""
        with self._lock:
            return dict(self._gates)


IdleWait = Callable[[float], bool]
"""A reconciler's `wait_idle(timeout)`: True once everything queued is committed."""


class SyncClock:
    """When the agent last brought the bridge in step with its source.

    `changed` is a store handler (registered after every reconciler's own, so that they have
    queued a change before the clock hears of it): it stamps the source's last change and wakes
    a thread that waits until every reconciler is idle, then stamps the last sync. Idle after
    the change was counted means every change counted so far is committed; a reconciler that
    keeps failing (retrying a bundle) keeps the last sync where it was, so the source's change
    stays younger than it. `mark` asks for a stamp without a source change (the agent's start,
    a local pod attached or detached through CNI).
    """

    def __init__(
        self,
        source: str,
        *,
        wall: Callable[[], float] = time.time,
        poll: float = 1.0,
    ) -> None:
        self.source = source
        self._wall = wall
        self._poll = poll
        self._cond = threading.Condition()
        self._asked = 0  # changes (and marks) counted
        self._done = 0  # of which committed
        self._idle: list[IdleWait] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.last_sync: float | None = None
        self.last_change: float | None = None

    def start(self, idle: Sequence[IdleWait]) -> None:
        """Watch these reconcilers from now on (in a daemon thread)."""
        if self._thread is not None:
            return
        self._idle = list(idle)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="sync-clock", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None

    def changed(self, _event: object = None) -> None:
        """The source changed the store (a `Store` handler: runs under the store's lock)."""
        now = self._wall()
        self.last_change = now
        metrics.SOURCE_LAST_CHANGE.labels(self.source).set(now)
        self.mark()

    def mark(self) -> None:
        """Stamp the last sync once every reconciler is idle."""
        with self._cond:
            self._asked += 1
            self._cond.notify_all()

    def wait_synced(self, timeout: float) -> bool:
        """Block until everything counted so far is committed (for tests)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._asked
            while self._done < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._done == self._asked and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                target = self._asked
            if not self._all_idle():
                continue  # stopping, or not idle yet: look again
            now = self._wall()
            self.last_sync = now
            metrics.LAST_SYNC.set(now)
            with self._cond:
                self._done = target
                self._cond.notify_all()

    def _all_idle(self) -> bool:
        for wait_idle in self._idle:
            while not wait_idle(self._poll):
                with self._cond:
                    if self._stopping:
                        return False
        return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], owner: HealthServer) -> None:
        host = address[0]
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.owner = owner
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        owner = self.server.owner
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        if url.path in ("/livez", "/healthz"):
            ok = owner.liveness is None or owner.liveness()
            self._reply(200 if ok else 500, "ok\n" if ok else "liveness check failed\n")
        elif url.path == "/readyz":
            self._readyz(owner.gates, "verbose" in query)
        elif url.path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._reply(200, encoder(owner.registry), content_type)
        elif url.path == "/loglevel":
            self._reply(200, f"{logs.get_level()}\n")
        elif url.path in _DEBUG_PAGES:
            top = query.get("top", ["30"])[0]
            if not top.isdigit():
                self._reply(400, "top must be a number\n")
                return
            self._reply(200, _DEBUG_PAGES[url.path](int(top)))
        else:
            self._reply(404, "not found\n")

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/loglevel":
            self._reply(404, "not found\n")
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode(errors="replace").strip() if length else ""
        level = parse_qs(url.query).get("level", [body])[0].strip()
        try:
            logs.set_level(level)
        except ValueError as err:
            self._reply(400, f"{err}\n")
            return
        log.warning("log level changed", extra={"level": level.lower(), "via": "http"})
        self._reply(200, f"{logs.get_level()}\n")

    do_PUT = do_POST

    def _readyz(self, gates: ReadinessGates, verbose: bool) -> None:
        status = gates.status()
        ready = all(status.values())
        lines = [
            f"[{'+' if ok else '-'}]{name} {'ok' if ok else 'not ready'}"
            for name, ok in status.items()
            if verbose or not ok
        ]
        lines.append("ok" if ready else "not ready")
        self._reply(200 if ready else 503, "\n".join(lines) + "\n")

    def _reply(self, code: int, body: str | bytes, content_type: str = "text/plain") -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        # Probes hit this every few seconds: keep them out of the log unless debugging.
        log.debug("http request", extra={"client": self.client_address[0], "line": format % args})


def object_counts_text(top: int) -> str:
    """The `top` most numerous types among the objects the garbage collector tracks, one
    "COUNT TYPE" line each, and the total last."""
    counts = Counter(type(obj).__qualname__ for obj in gc.get_objects())
    lines = [f"{count} {name}" for name, count in counts.most_common(top)]
    lines.append(f"{sum(counts.values())} total")
    return "\n".join(lines) + "\n"


def memory_lines_text(top: int) -> str:
    """The `top` lines of code holding the most traced memory, "BYTES BLOCKS FILE:LINE" each,
    and the total last; a hint instead when tracemalloc is off."""
    if not tracemalloc.is_tracing():
        return "tracemalloc is off: start the agent with PYTHONTRACEMALLOC=1\n"
    stats = tracemalloc.take_snapshot().statistics("lineno")
    lines = [
        f"{stat.size} {stat.count} {stat.traceback[0].filename}:{stat.traceback[0].lineno}"
        for stat in stats[:top]
    ]
    lines.append(f"{sum(stat.size for stat in stats)} {sum(s.count for s in stats)} total")
    return "\n".join(lines) + "\n"


_DEBUG_PAGES: dict[str, Callable[[int], str]] = {
    "/debug/objects": object_counts_text,
    "/debug/memory": memory_lines_text,
}


class HealthServer:
    """The HTTP server for probes, metrics and the log level. `start` binds; `stop` closes."""

    def __init__(
        self,
        bind: str,
        gates: ReadinessGates | None = None,
        *,
        registry: CollectorRegistry = metrics.REGISTRY,
        liveness: Callable[[], bool] | None = None,
    ) -> None:
        self.bind = bind
        self.gates = gates if gates is not None else ReadinessGates()
        self.registry = registry
        self.liveness = liveness
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind `bind` (HOST:PORT, [V6]:PORT) and serve in a daemon thread."""
        if self._server is not None:
            return
        host, port = split_host_port(self.bind)
        self._server = _Server((host, port), self)
        # A short poll interval makes `stop` quick: shutdown() waits for the loop to notice.
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="health-http", daemon=True
        )
        self._thread.start()
        log.info("health server listening", extra={"url": self.url})

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); the port is the real one when `bind` asked for 0."""
        if self._server is None:
            raise RuntimeError("health server not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
