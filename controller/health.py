"""The agent's HTTP endpoint: /livez, /readyz, /metrics and /loglevel on one small server.

- `GET /livez`: 200 while the process serves HTTP and the optional liveness check passes.
- `GET /readyz`: 200 once every readiness gate is open, else 503 naming the closed ones
  (`?verbose` lists every gate, kube-apiserver style: `[+]name ok` / `[-]name not ready`).
- `GET /metrics`: Prometheus exposition of `controller.metrics.REGISTRY`.
- `GET /loglevel`: the current level; `POST` or `PUT /loglevel` with the level as the body
  (or `?level=debug`) changes it.

Readiness comes from named gates (`ReadinessGates`) that the agent opens as its parts come up:
"ovsdb", "openflow", "synced", and so on. The server runs in daemon threads; `stop` closes it.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable
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
