"""The agent-side CNI server: answers the `plumb` executable's HTTP POSTs on a Unix socket and
dispatches ADD, DEL, CHECK, GC and STATUS to an injected backend, with a lock per container, a
"network ready" gate in front of ADD, rollback of failed ADDs through DEL, and every failure
turned into a CNI error JSON.

The server knows nothing of OVS, netlink or IPAM: the agent injects a `CniBackend` (the pod
network, see `cni.podnet`) and a `ReadyGate` (a `threading.Event` will do).

Wire format (shared with the executable, `cni/shim/plumb.c`): the request body is
`application/x-plumb-cni`: NUL-terminated `NAME=value` CNI_* entries, one more NUL, then stdin
verbatim, ended by the client's half-close; the answer body is "<stdout line>\\n<stderr text>",
HTTP 200 for exit 0 and 500 for exit 1. Any other body is a CNI I/O error (5).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socketserver
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any, Final, Protocol

from cni.netns import enter_netns
from cni.protocol import (
    AddRejected,
    CniError,
    Command,
    ErrorCode,
    Request,
    Result,
    about_text,
    encode_result,
    error_version,
    parse_command,
    parse_request,
    version_reply,
)

DEFAULT_SOCKET: Final = "/var/run/plumb/cni.sock"
DEFAULT_READY_TIMEOUT: Final = 30.0
MAX_BODY: Final = 4 << 20  # a config with prevResult is a few KiB; refuse the absurd

log = logging.getLogger("plumb.cni")


class ReadyGate(Protocol):
    """The agent's "network ready" state: the bridge, pipeline and interface store are in place.
    `threading.Event` satisfies it."""

    def wait(self, timeout: float | None = None) -> bool: ...

    def is_set(self) -> bool: ...


class CniBackend(Protocol):
    """What the server drives; `cni.podnet.PodNetwork` is the real one. Each method raises
    `CniError` for a failure the runtime should see with its code; any other exception becomes
    error 999. `delete` must be idempotent and best-effort (DEL-01..08)."""

    def add(self, req: Request) -> Result: ...

    def delete(self, req: Request) -> None: ...

    def check(self, req: Request) -> None: ...

    def gc(self, req: Request) -> None: ...

    def status(self, req: Request) -> None: ...


@dataclass(frozen=True)
class Reply:
    """What the executable prints and how it exits."""

    exit_code: int
    stdout: str = ""
    stderr: str = ""


class _KeyedLocks:
    """One lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        with self._guard:
            return len(self._locks)


class _SharedExclusive:
    """ADD/DEL/CHECK share it; GC holds it alone (GC-07: GC takes the same locks as ADD/DEL)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive)
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive and self._shared == 0)
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class _StderrCapture(logging.Handler):
    """Collects warnings logged under `plumb.cni` by the thread serving a call, so that they
    (a delegate's stderr, DLG-03) reach the executable's stderr as well as the agent's log."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self._local = threading.local()

    @contextlib.contextmanager
    def collecting(self) -> Iterator[list[str]]:
        lines: list[str] = []
        self._local.lines = lines
        try:
            yield lines
        finally:
            self._local.lines = None

    def emit(self, record: logging.LogRecord) -> None:
        lines = getattr(self._local, "lines", None)
        if lines is not None:
            lines.append(record.getMessage())


_capture = _StderrCapture()
log.addHandler(_capture)


class CniDispatcher:
    """Turns one call (environment + stdin) into a `Reply`. No sockets: the HTTP layer and the
    tests both call `handle`."""

    def __init__(
        self,
        backend: CniBackend,
        ready: ReadyGate,
        *,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
    ) -> None:
        self._backend = backend
        self._ready = ready
        self._ready_timeout = ready_timeout
        self._container_locks = _KeyedLocks()
        self._gc_lock = _SharedExclusive()

    def handle(self, env: Mapping[str, str], stdin: bytes) -> Reply:
        with _capture.collecting() as warnings:
            reply = self._handle(env, stdin)
        if warnings:
            stderr = "\n".join([*warnings, reply.stderr] if reply.stderr else warnings)
            reply = Reply(reply.exit_code, reply.stdout, stderr)
        return reply

    def _handle(self, env: Mapping[str, str], stdin: bytes) -> Reply:
        try:
            command = parse_command(env)
            if command is None:
                return Reply(0, "", about_text())
            if command is Command.VERSION:
                return Reply(0, _dumps(version_reply()))
            req = parse_request(env, stdin)
            return self._dispatch(req)
        except CniError as err:
            level = logging.INFO if err.code < 100 else logging.ERROR
            log.log(level, "CNI %s failed: %s", env.get("CNI_COMMAND"), err)
            return Reply(1, _dumps(err.to_dict(error_version(env, stdin))))
        except Exception as exc:  # ERR-05: never a traceback to the runtime
            log.exception("CNI %s: internal error", env.get("CNI_COMMAND"))
            internal = CniError(ErrorCode.INTERNAL, "internal error in plumb agent", repr(exc))
            return Reply(1, _dumps(internal.to_dict(error_version(env, stdin))))

    def _dispatch(self, req: Request) -> Reply:
        if req.command is Command.STATUS:
            self._status(req)
            return Reply(0)
        if req.command is Command.GC:
            self._wait_ready()
            with self._gc_lock.exclusive():
                self._backend.gc(req)
            return Reply(0)
        with self._gc_lock.shared(), self._container_locks.hold(req.container_id):
            if req.command is Command.ADD:
                return Reply(0, _dumps(self._add(req)))
            if req.command is Command.DEL:
                self._backend.delete(req)
                return Reply(0)
            self._wait_ready()
            self._backend.check(req)
            return Reply(0)

    def _add(self, req: Request) -> dict[str, Any]:
        self._wait_ready()
        try:
            result = self._backend.add(req)
        except AddRejected:
            raise
        except Exception:
            self._roll_back(req)
            raise
        return encode_result(result, req.cni_version)

    def _roll_back(self, req: Request) -> None:
        # ADD-05: a failed ADD leaves nothing behind; DEL knows how to undo any prefix of ADD.
        try:
            self._backend.delete(req)
        except Exception:
            log.exception("rollback of failed ADD %s/%s failed", req.container_id, req.ifname)

    def _wait_ready(self) -> None:
        if not self._ready.wait(self._ready_timeout):
            raise CniError(
                ErrorCode.TRY_AGAIN_LATER,
                "plumb agent network not ready",
                f"waited {self._ready_timeout:g}s for the node network to be ready",
            )

    def _status(self, req: Request) -> None:
        if not self._ready.is_set():
            raise CniError(ErrorCode.NOT_AVAILABLE, "plumb agent network not ready", "")
        self._backend.status(req)

    def locks_held(self) -> int:
        """How many per-container locks exist right now (tests check none leak)."""
        return len(self._container_locks)


def _dumps(obj: Mapping[str, Any]) -> str:
    # One line: the executable splits stdout from stderr at the first newline.
    return json.dumps(obj, separators=(",", ":"))


RAW_CONTENT_TYPE: Final = "application/x-plumb-cni"


def decode_raw(body: bytes) -> tuple[dict[str, str], bytes]:
    """The executable's body -> (CNI_* environment, stdin): `NAME=value` entries each ended
    by NUL (environment values cannot hold NUL), one more NUL, then stdin verbatim."""
    env_part, sep, stdin = body.partition(b"\0\0")
    if not sep:
        raise ValueError("no end of the environment section")
    env: dict[str, str] = {}
    for entry in env_part.split(b"\0"):
        key, _, value = entry.decode("utf-8", "surrogateescape").partition("=")
        if key.startswith("CNI_"):
            env[key] = value
    return env, stdin


class _Handler(BaseHTTPRequestHandler):
    server: _UnixHTTPServer
    timeout = 30  # a client that stalls mid-request does not pin a thread forever

    def do_POST(self) -> None:
        try:
            content_type = self.headers.get_content_type()
            if content_type != RAW_CONTENT_TYPE:
                raise ValueError(f"content type {content_type}, not {RAW_CONTENT_TYPE}")
            env, stdin = decode_raw(self._read_body())
        except (ValueError, OSError) as exc:
            err = CniError(ErrorCode.IO_FAILURE, "error reading the CNI request", str(exc))
            self._answer(Reply(1, _dumps(err.to_dict())))
            return
        self._answer(self.server.dispatcher.handle(env, stdin))

    def _read_body(self) -> bytes:
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            # HTTP/1.0 without a length: the body ends where the client half-closes.
            body = self.rfile.read(MAX_BODY + 1)
        else:
            length = int(length_header)
            if not 0 <= length <= MAX_BODY:
                raise ValueError(f"body of {length} bytes")
            body = self.rfile.read(length)
            if len(body) != length:
                raise OSError("short read")
        if len(body) > MAX_BODY:
            raise ValueError(f"body over {MAX_BODY} bytes")
        return body

    def _answer(self, reply: Reply) -> None:
        payload = f"{reply.stdout}\n{reply.stderr}".encode("utf-8", "replace")
        self.send_response(200 if reply.exit_code == 0 else 500)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        # The base class prints the peer address, which a Unix socket does not have.
        log.debug("http: " + format, *args)


class _UnixHTTPServer(socketserver.UnixStreamServer):
    """Serves each connection on a reused worker thread. Workers are started by the serving
    thread, so they live in the namespace it serves from; no thread start per call."""

    # A Unix socket refuses connections beyond its backlog instead of retrying like TCP: a
    # node starting many pods at once must not see "agent not reachable".
    request_queue_size = 256

    def __init__(self, path: str, dispatcher: CniDispatcher) -> None:
        self.dispatcher = dispatcher
        self._workers = ThreadPoolExecutor(self.request_queue_size, thread_name_prefix="cni-call")
        super().__init__(path, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self._workers.submit(self._serve, request, client_address)

    def _serve(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        self._workers.shutdown(wait=False)  # calls in progress finish on their own


class CniServer:
    """The CNI socket: `start()` binds it (mode 0600) and serves from a background thread.

    `netns`: serve from inside that network namespace (the node's, where OVS and the pods' host
    veths live) while the caller stays where it is; the threads serving calls are born there."""

    def __init__(
        self, socket_path: str, dispatcher: CniDispatcher, *, netns: str | None = None
    ) -> None:
        self.socket_path = socket_path
        self.dispatcher = dispatcher
        self.netns = netns
        self._server: _UnixHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        os.makedirs(os.path.dirname(self.socket_path) or ".", exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)  # a stale socket from a previous agent
        server = _UnixHTTPServer(self.socket_path, self.dispatcher)
        os.chmod(self.socket_path, 0o600)
        self._server = server
        entered = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            try:
                if self.netns:
                    enter_netns(self.netns)
            except BaseException as exc:
                failure.append(exc)
                return
            finally:
                entered.set()
            server.serve_forever(poll_interval=0.2)

        self._thread = threading.Thread(target=serve, name="cni-server", daemon=True)
        self._thread.start()
        entered.wait()
        if failure:
            server.server_close()
            self._server = None
            raise failure[0]
        log.info("CNI server listening on %s", self.socket_path)

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        self._server = None
        self._thread = None

    def __enter__(self) -> CniServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
