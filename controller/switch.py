"""The switch room: the only place flows are sent to OVS.

It keeps the installed flows per owner (`pod/ns/name`, `node/name`, `rule/uid/index`,
`pipeline`), diffs an owner's new flows against what it has installed, and sends the difference
as one atomic bundle: every message is written without waiting, then one barrier and the commit
are waited for.
The cache changes only after the commit succeeds. A supervisor thread keeps the connection up,
reconnecting with backoff and replaying the whole store, so an ovs-vswitchd restart heals itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from controller import metrics
from controller.openflow import (
    Connection,
    ErrorReply,
    OpenFlowError,
    SwitchDisconnected,
    SwitchTimeout,
    XidRange,
)
from flows.diff import FlowDiff, diff_flows, index_flows
from flows.encode import (
    ADD,
    DATAPATH,
    DELETE,
    DELETE_STRICT,
    MODIFY_STRICT,
    bundle_add,
    flow_mod,
    serialize,
)
from flows.flow import Flow, FlowKey
from flows.ofctl import render_flow

log = logging.getLogger(__name__)

_BUNDLE_FLAGS = ofp.ONF_BF_ATOMIC | ofp.ONF_BF_ORDERED


class FlowInstallError(OpenFlowError):
    """OVS rejected a bundle; `flow_text` is the rejected flow in ovs-ofctl syntax."""

    def __init__(self, reply: ErrorReply, flow_text: str) -> None:
        super().__init__(f"{reply.text}: {flow_text}", reply.err_type, reply.err_code)
        self.flow_text = flow_text


@dataclass(frozen=True, slots=True)
class FlowStat:
    table_id: int
    priority: int
    cookie: int
    packets: int
    bytes: int
    match: dict[str, Any]


@dataclass(slots=True)
class Epoch:
    """Flows the switch replaces, with a new generation, in the same bundle as every change to
    the owners whose names start with `prefix` (a change that installs, modifies or deletes a
    flow). `flows(generation)` builds them; they are kept under `owner` like any other flows.

    What for: see `flows.policy.epoch_flows` (the policy reconciler's epoch makes the
    revalidators re-translate every new-connection megaflow after a policy change)."""

    owner: str
    prefix: str
    flows: Callable[[int], list[Flow]]
    generation: int = 0

    def covers(self, owners: Iterable[str]) -> bool:
        return any(o.startswith(self.prefix) and o != self.owner for o in owners)


@dataclass(slots=True)
class SwitchCounters:
    """What has been sent; tests and metrics read it."""

    flow_mods: int = 0
    bundles: int = 0
    replays: int = 0
    connects: int = 0


class Switch:
    """Owner-keyed flow store in front of one bridge's OpenFlow management socket."""

    def __init__(
        self,
        mgmt_socket: Path,
        request_timeout: float = 10.0,
        echo_interval: float = 5.0,
        reconnect_max_delay: float = 2.0,
    ) -> None:
        self.mgmt_socket = mgmt_socket
        self.request_timeout = request_timeout
        self.echo_interval = echo_interval
        self.reconnect_max_delay = reconnect_max_delay
        self.counters = SwitchCounters()
        self.on_connect: list[Callable[[], None]] = []
        self._store: dict[str, dict[FlowKey, Flow]] = {}
        self._write_lock = threading.RLock()
        self._conn: Connection | None = None
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._bundle_ids = iter(range(1, 1 << 32))
        self.epoch: Epoch | None = None  # set by its user (the policy reconciler)

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background and keep connected until `stop`."""
        self._supervisor = threading.Thread(
            target=self._supervise, name="openflow-supervisor", daemon=True
        )
        self._supervisor.start()

    def wait_connected(self, timeout: float) -> None:
        if not self._connected.wait(timeout):
            raise SwitchTimeout(f"not connected to {self.mgmt_socket} within {timeout:.1f}s")

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def stop(self) -> None:
        """Disconnect, leaving every installed flow in place."""
        self._stopping.set()
        conn = self._conn
        if conn is not None:
            conn.close()
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)

    def _supervise(self) -> None:
        delay = 0.05
        while not self._stopping.is_set():
            try:
                self._connect_and_replay()
                delay = 0.05
                self._keepalive()
            except OpenFlowError as exc:
                log.debug("openflow connect failed path=%s reason=%s", self.mgmt_socket, exc)
            self._connected.clear()
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, self.reconnect_max_delay)

    def _connect_and_replay(self) -> None:
        conn = Connection(self.mgmt_socket, self.request_timeout)
        conn.open()
        with self._write_lock:
            self._conn = conn
            self.counters.connects += 1
            if self._store:
                self._replay(conn)
            self._connected.set()
        log.info("openflow connected path=%s dpid=%016x", self.mgmt_socket, conn.datapath_id)
        for callback in self.on_connect:
            callback()

    def _keepalive(self) -> None:
        conn = self._conn
        assert conn is not None
        while not conn.closed.wait(self.echo_interval):
            try:
                conn.request(parser.OFPEchoRequest(DATAPATH), timeout=self.request_timeout)
            except SwitchTimeout:
                log.warning("openflow echo timed out path=%s; reconnecting", self.mgmt_socket)
                conn.close()

    def _replay(self, conn: Connection) -> None:
        flows = [flow for owned in self._store.values() for flow in owned.values()]
        started = time.perf_counter()
        self._send_bundle(conn, [(ADD, flow) for flow in flows])
        metrics.FLOW_OPERATION_SECONDS.labels("replay").observe(time.perf_counter() - started)
        self.counters.replays += 1
        log.info("openflow replayed flows=%d owners=%d", len(flows), len(self._store))

    # --- the flow store ---------------------------------------------------------------------

    def replace_flows(self, owner: str, flows: Iterable[Flow]) -> FlowDiff:
        """Make `owner`'s installed flows exactly `flows`, in one atomic bundle."""
        return self.replace_many({owner: flows})

    def replace_many(self, changes: dict[str, Iterable[Flow]]) -> FlowDiff:
        """Replace several owners' flows in one atomic bundle (e.g. a policy and its clauses).

        When the change touches owners an `Epoch` covers, the epoch's next generation goes
        into the same bundle; the returned diff is that of the owners asked for."""
        indexed = {owner: index_flows(flows) for owner, flows in changes.items()}
        total = FlowDiff()
        with self._write_lock:
            for owner, desired in indexed.items():
                total.extend(diff_flows(self._store.get(owner, {}), desired))
            sent, bumped = total, self._next_epoch(indexed) if total else None
            if bumped is not None:
                sent = FlowDiff()
                sent.extend(total)
                sent.extend(diff_flows(self._store.get(bumped[0], {}), bumped[1]))
            if sent:
                self._send_diff(sent)
            for owner, desired in indexed.items():
                self._commit_store(owner, desired)
            if bumped is not None:
                assert self.epoch is not None
                self._commit_store(*bumped)
                self.epoch.generation += 1
        return total

    def _next_epoch(self, owners: Iterable[str]) -> tuple[str, dict[FlowKey, Flow]] | None:
        """The epoch owner and its next generation's flows, if this change is one it covers."""
        epoch = self.epoch
        if epoch is None or not epoch.covers(owners):
            return None
        return epoch.owner, index_flows(epoch.flows(epoch.generation + 1))

    def _commit_store(self, owner: str, desired: Mapping[FlowKey, Flow]) -> None:
        """Record what OVS now holds for `owner` (only after the commit succeeded)."""
        old = self._store.pop(owner, {})
        if desired:
            self._store[owner] = dict(desired)
        delta = _per_table(desired.values())
        delta.subtract(_per_table(old.values()))
        for table_name, change in delta.items():
            if change:
                metrics.FLOWS.labels(table_name).inc(change)

    def delete_flows(self, owner: str) -> FlowDiff:
        return self.replace_flows(owner, ())

    def installed(self, owner: str) -> list[Flow]:
        with self._write_lock:
            return list(self._store.get(owner, {}).values())

    def owners(self) -> list[str]:
        with self._write_lock:
            return list(self._store)

    def flow_count(self) -> int:
        with self._write_lock:
            return sum(len(owned) for owned in self._store.values())

    def _send_diff(self, diff: FlowDiff) -> None:
        # Deletes go first so that a key moving between owners is never deleted after its add.
        messages = [(DELETE_STRICT, f) for f in diff.deletes]
        messages += [(ADD, f) for f in diff.adds]
        messages += [(MODIFY_STRICT, f) for f in diff.modifies]
        started = time.perf_counter()
        try:
            self._send_bundle(self._require_connection(), messages)
        except OpenFlowError:
            metrics.FLOW_OPERATION_ERRORS.labels("bundle").inc()
            raise
        metrics.FLOW_OPERATION_SECONDS.labels("bundle").observe(time.perf_counter() - started)
        metrics.FLOW_OPERATIONS.labels("add").inc(len(diff.adds))
        metrics.FLOW_OPERATIONS.labels("modify").inc(len(diff.modifies))
        metrics.FLOW_OPERATIONS.labels("delete").inc(len(diff.deletes))

    def _require_connection(self) -> Connection:
        conn = self._conn
        if conn is None or conn.closed.is_set():
            raise SwitchDisconnected(f"not connected to {self.mgmt_socket}")
        return conn

    # --- bundles ---------------------------------------------------------------------------

    def _send_bundle(self, conn: Connection, messages: list[tuple[int, Flow]]) -> None:
        """Open, add every message, then commit; never wait per message.

        OVS checks each bundle-add as it arrives and leaves a refused message out of the
        bundle rather than failing the commit, so a barrier follows the adds: if any add was
        refused, the bundle is discarded instead of committed, and nothing changes.
        """
        if not messages:
            return
        bundle_id = next(self._bundle_ids)
        open_xid = conn.next_xid()
        xids = [conn.next_xid() for _ in messages]
        barrier_xid = conn.next_xid()
        tracked = conn.track(xids[0], xids[-1])
        waits = {xid: conn.expect(xid) for xid in (open_xid, barrier_xid)}
        payload = [self._bundle_ctrl(bundle_id, ofp.ONF_BCT_OPEN_REQUEST, open_xid)]
        payload += [
            bundle_add(flow_mod(flow, command, xid), bundle_id, xid, _BUNDLE_FLAGS)
            for xid, (command, flow) in zip(xids, messages, strict=True)
        ]
        payload.append(serialize(parser.OFPBarrierRequest(DATAPATH), barrier_xid))
        timeout = self.request_timeout + len(messages) / 20000
        try:
            conn.send_raw(payload)
            conn.wait(open_xid, waits[open_xid])
            conn.wait(barrier_xid, waits[barrier_xid], timeout)
            if tracked.errors:
                self._finish_bundle(conn, bundle_id, ofp.ONF_BCT_DISCARD_REQUEST)
            else:
                self._finish_bundle(conn, bundle_id, ofp.ONF_BCT_COMMIT_REQUEST, timeout)
        except OpenFlowError as exc:
            raise self._explain(exc, tracked, xids, messages) from exc
        finally:
            conn.untrack(tracked)
        if tracked.errors:
            raise self._explain(OpenFlowError("bundle refused"), tracked, xids, messages)
        self.counters.bundles += 1
        self.counters.flow_mods += len(messages)

    def _finish_bundle(
        self, conn: Connection, bundle_id: int, kind: int, timeout: float | None = None
    ) -> None:
        xid = conn.next_xid()
        pending = conn.expect(xid)
        conn.send_raw([self._bundle_ctrl(bundle_id, kind, xid)])
        conn.wait(xid, pending, timeout)

    def _bundle_ctrl(self, bundle_id: int, kind: int, xid: int) -> bytes:
        msg = parser.ONFBundleCtrlMsg(DATAPATH, bundle_id, kind, _BUNDLE_FLAGS, [])
        return serialize(msg, xid)

    def _explain(
        self,
        exc: OpenFlowError,
        tracked: XidRange,
        xids: list[int],
        messages: list[tuple[int, Flow]],
    ) -> OpenFlowError:
        """Tie a failed commit to the flow that caused it."""
        if isinstance(exc, SwitchDisconnected | SwitchTimeout) or not tracked.errors:
            return exc
        first_error = tracked.errors[0]
        _, flow = messages[first_error.xid - xids[0]]
        return FlowInstallError(first_error, render_flow(flow).strip())

    # --- queries and bulk deletes ------------------------------------------------------------

    def flow_stats(self, cookie: int = 0, cookie_mask: int = 0) -> list[FlowStat]:
        """Counters of the installed flows whose cookie matches (cookie, mask)."""
        request = parser.OFPFlowStatsRequest(
            DATAPATH,
            0,
            ofp.OFPTT_ALL,
            ofp.OFPP_ANY,
            ofp.OFPG_ANY,
            cookie,
            cookie_mask,
            parser.OFPMatch(),
        )
        replies = self._require_connection().request(request, multipart=True)
        return [
            FlowStat(
                s.table_id,
                s.priority,
                s.cookie,
                s.packet_count,
                s.byte_count,
                dict(s.match.items()),
            )
            for reply in replies
            for s in reply.body
        ]

    def delete_by_cookie(self, cookie: int, cookie_mask: int) -> None:
        """Delete every flow on the bridge whose cookie matches, whoever installed it.

        Used for restart rounds: flows of a previous agent run are not in the store.
        """
        mod = parser.OFPFlowMod(
            DATAPATH,
            cookie=cookie,
            cookie_mask=cookie_mask,
            table_id=ofp.OFPTT_ALL,
            command=DELETE,
            out_port=ofp.OFPP_ANY,
            out_group=ofp.OFPG_ANY,
            match=parser.OFPMatch(),
        )
        with self._write_lock:
            self._require_connection().request(mod, barrier=True)


def _per_table(flows: Iterable[Flow]) -> Counter[str]:
    return Counter(flow.table for flow in flows)
