"""One OpenFlow 1.3 connection to a bridge's management socket: handshake, a reader thread,
requests matched to replies by xid, echo, and failing every waiter at once when it drops.

It knows messages, not flows: `controller.switch` decides what to send. Incoming messages are
parsed with os-ken; errors reach the request (or bundle) whose xid caused them.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from os_ken.ofproto import ofproto_parser
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from flows.encode import DATAPATH, OFP_VERSION, serialize

log = logging.getLogger(__name__)

_HEADER = struct.Struct("!BBHI")
_SEND_CHUNK = 1 << 20


class OpenFlowError(Exception):
    """An OpenFlow error reply, or a request that could not be answered."""

    def __init__(self, message: str, err_type: int = -1, err_code: int = -1) -> None:
        super().__init__(message)
        self.err_type = err_type
        self.err_code = err_code


class SwitchDisconnected(OpenFlowError):
    """The connection dropped (or was never up) while a request needed it."""


class SwitchTimeout(OpenFlowError):
    """No reply within the request's timeout."""


@dataclass(slots=True)
class ErrorReply:
    xid: int
    err_type: int
    err_code: int
    text: str


@dataclass(slots=True)
class _Pending:
    multipart: bool
    done: threading.Event = field(default_factory=threading.Event)
    replies: list[Any] = field(default_factory=list)
    error: OpenFlowError | None = None


@dataclass(slots=True)
class XidRange:
    """Errors for xids in [first, last] are collected here (the messages of one bundle)."""

    first: int
    last: int
    errors: list[ErrorReply] = field(default_factory=list)


class Connection:
    """A connected, handshaken OpenFlow channel. Make a new one after it closes."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self.datapath_id = 0
        self.closed = threading.Event()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._send_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._ranges: list[XidRange] = []
        self._xids = itertools.count(1)
        self._reader: threading.Thread | None = None
        self.on_close: Callable[[], None] | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def open(self) -> None:
        """Connect, exchange HELLO and FEATURES, start the reader; raise if any step fails."""
        self._sock.settimeout(self.timeout)
        try:
            self._sock.connect(str(self.path))
            self._handshake()
        except (OSError, OpenFlowError) as exc:
            self._sock.close()
            raise SwitchDisconnected(f"cannot connect to {self.path}: {exc}") from exc
        self._sock.settimeout(None)
        self._reader = threading.Thread(target=self._read_loop, name="openflow-reader", daemon=True)
        self._reader.start()
        self.request(parser.OFPSetConfig(DATAPATH, 0, 0xFFFF), barrier=True)

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._fail_all(SwitchDisconnected(f"connection to {self.path} closed"))
        if self.on_close is not None:
            self.on_close()

    def _handshake(self) -> None:
        self._sock.sendall(serialize(parser.OFPHello(DATAPATH), self.next_xid()))
        version, msg_type, _, _ = self._recv_message_sync()
        if msg_type != ofp.OFPT_HELLO:
            raise OpenFlowError(f"expected HELLO, got message type {msg_type}")
        if version < OFP_VERSION:
            raise OpenFlowError("bridge does not speak OpenFlow 1.3 (check Bridge protocols)")
        self._sock.sendall(serialize(parser.OFPFeaturesRequest(DATAPATH), self.next_xid()))
        while True:
            _, msg_type, _, body = self._recv_message_sync()
            if msg_type == ofp.OFPT_FEATURES_REPLY:
                self.datapath_id = struct.unpack_from("!Q", body, 0)[0]
                return
            if msg_type == ofp.OFPT_ERROR:
                raise OpenFlowError("bridge refused the handshake")

    def _recv_message_sync(self) -> tuple[int, int, int, bytes]:
        header = self._recv_exact(8)
        version, msg_type, length, xid = _HEADER.unpack(header)
        return version, msg_type, xid, self._recv_exact(length - 8)

    def _recv_exact(self, n: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < n:
            chunk = self._sock.recv(n - len(chunks))
            if not chunk:
                raise SwitchDisconnected("connection closed by the switch")
            chunks += chunk
        return bytes(chunks)

    # --- sending --------------------------------------------------------------------------

    def next_xid(self) -> int:
        return next(self._xids) & 0xFFFFFFFF or next(self._xids)

    def send_raw(self, messages: list[bytes]) -> None:
        """Send already-encoded messages, in order, in large writes."""
        if self.closed.is_set():
            raise SwitchDisconnected(f"connection to {self.path} is closed")
        try:
            with self._send_lock:
                batch: list[bytes] = []
                size = 0
                for message in messages:
                    batch.append(message)
                    size += len(message)
                    if size >= _SEND_CHUNK:
                        self._sock.sendall(b"".join(batch))
                        batch, size = [], 0
                if batch:
                    self._sock.sendall(b"".join(batch))
        except OSError as exc:
            self.close()
            raise SwitchDisconnected(f"send to {self.path} failed: {exc}") from exc

    def expect(self, xid: int, multipart: bool = False) -> _Pending:
        """Register interest in the reply to `xid` before sending it."""
        pending = _Pending(multipart)
        with self._state_lock:
            if self.closed.is_set():
                raise SwitchDisconnected(f"connection to {self.path} is closed")
            self._pending[xid] = pending
        return pending

    def wait(self, xid: int, pending: _Pending, timeout: float | None = None) -> list[Any]:
        """Wait for the reply registered with `expect`; raise its error or a timeout."""
        if not pending.done.wait(self.timeout if timeout is None else timeout):
            with self._state_lock:
                self._pending.pop(xid, None)
            raise SwitchTimeout(f"no reply to xid {xid} within {timeout or self.timeout:.1f}s")
        if pending.error is not None:
            raise pending.error
        return pending.replies

    def request(
        self, msg: Any, multipart: bool = False, barrier: bool = False, timeout: float | None = None
    ) -> list[Any]:
        """Send one os-ken message and wait for its reply (or, with `barrier`, a barrier)."""
        xid = self.next_xid()
        data = serialize(msg, xid)
        if barrier:
            barrier_xid = self.next_xid()
            pending = self.expect(barrier_xid)
            errors = self.track(xid, xid)
            self.send_raw([data, serialize(parser.OFPBarrierRequest(DATAPATH), barrier_xid)])
            try:
                self.wait(barrier_xid, pending, timeout)
            finally:
                self.untrack(errors)
            if errors.errors:
                e = errors.errors[0]
                raise OpenFlowError(e.text, e.err_type, e.err_code)
            return []
        pending = self.expect(xid, multipart)
        self.send_raw([data])
        return self.wait(xid, pending, timeout)

    def track(self, first: int, last: int) -> XidRange:
        tracked = XidRange(first, last)
        with self._state_lock:
            self._ranges.append(tracked)
        return tracked

    def untrack(self, tracked: XidRange) -> None:
        with self._state_lock:
            if tracked in self._ranges:
                self._ranges.remove(tracked)

    # --- receiving ------------------------------------------------------------------------

    def _read_loop(self) -> None:
        try:
            while not self.closed.is_set():
                version, msg_type, xid, body = self._recv_message_sync()
                self._dispatch(version, msg_type, xid, body)
        except (OSError, OpenFlowError) as exc:
            if not self.closed.is_set():
                log.info("openflow connection lost path=%s reason=%s", self.path, exc)
        finally:
            self.close()

    def _dispatch(self, version: int, msg_type: int, xid: int, body: bytes) -> None:
        if msg_type == ofp.OFPT_ECHO_REQUEST:
            reply = _HEADER.pack(OFP_VERSION, ofp.OFPT_ECHO_REPLY, 8 + len(body), xid) + body
            self.send_raw([reply])
            return
        if msg_type == ofp.OFPT_ERROR:
            self._on_error(xid, body)
            return
        with self._state_lock:
            pending = self._pending.get(xid)
        if pending is None:
            return  # asynchronous messages (port status, packet-in) are not used yet
        raw = _HEADER.pack(version, msg_type, 8 + len(body), xid) + body
        msg = ofproto_parser.msg(DATAPATH, version, msg_type, 8 + len(body), xid, raw)
        pending.replies.append(msg)
        more = msg_type == ofp.OFPT_MULTIPART_REPLY and msg.flags & ofp.OFPMPF_REPLY_MORE
        if not (pending.multipart and more):
            self._resolve(xid, pending)

    def _on_error(self, xid: int, body: bytes) -> None:
        err_type, err_code = struct.unpack_from("!HH", body, 0)
        reply = ErrorReply(xid, err_type, err_code, _error_text(err_type, err_code))
        with self._state_lock:
            pending = self._pending.get(xid)
            tracked = next((r for r in self._ranges if r.first <= xid <= r.last), None)
        if tracked is not None:
            tracked.errors.append(reply)
        if pending is not None:
            pending.error = OpenFlowError(reply.text, err_type, err_code)
            self._resolve(xid, pending)
        elif tracked is None:
            log.warning("openflow error for unknown xid=%d: %s", xid, reply.text)

    def _resolve(self, xid: int, pending: _Pending) -> None:
        with self._state_lock:
            self._pending.pop(xid, None)
        pending.done.set()

    def _fail_all(self, error: OpenFlowError) -> None:
        with self._state_lock:
            pending = list(self._pending.values())
            self._pending.clear()
        for waiter in pending:
            waiter.error = error
            waiter.done.set()


def _error_text(err_type: int, err_code: int) -> str:
    """OpenFlow error names as OVS logs them, e.g. OFPBAC_BAD_OUT_PORT."""
    type_names = {v: k for k, v in vars(ofp).items() if k.startswith("OFPET_")}
    type_name = type_names.get(err_type, str(err_type))
    prefix = _ERROR_CODE_PREFIX.get(type_name, "")
    codes = {v: k for k, v in vars(ofp).items() if prefix and k.startswith(prefix)}
    return f"{type_name}/{codes.get(err_code, err_code)}"


_ERROR_CODE_PREFIX = {
    "OFPET_BAD_REQUEST": "OFPBRC_",
    "OFPET_BAD_ACTION": "OFPBAC_",
    "OFPET_BAD_INSTRUCTION": "OFPBIC_",
    "OFPET_BAD_MATCH": "OFPBMC_",
    "OFPET_FLOW_MOD_FAILED": "OFPFMFC_",
    "OFPET_TABLE_MOD_FAILED": "OFPTMFC_",
}
