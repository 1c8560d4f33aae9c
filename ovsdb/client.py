"""OVSDB verbs over ovsdbapp: bridge, table names, gateway/tunnel/pod ports, external_ids.

Every verb is idempotent (`ensure_`, `delete_` behave like --may-exist / --if-exists) and every
failure is raised as an `OvsdbError` (see ovsdb.errors). Three ovsdbapp habits are worked around:
- its API class keeps one connection for the whole process: each client gets its own subclass;
- its wait for ovs-vswitchd (ovs-vsctl's "wait for cur_cfg") only logs a timeout: ours raises;
- its check for a failed interface compares a list with -1 and never fires: we read
  Interface.ofport and Interface.error back ourselves.

The client reconnects by itself when ovsdb-server restarts (python-ovs's reconnect, every
second at most); a call made meanwhile waits for the reconnection, or raises OvsdbTimeout.

It watches only the tables and columns it uses (`MONITORED`), not the whole schema: each port
add is answered by ovs-vswitchd's updates of the interface, and every few seconds by its
statistics of every interface, which the client would otherwise parse in Python and ignore.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ovsdbapp import exceptions as ovsdbapp_exceptions
from ovsdbapp.backend.ovs_idl import command, connection, idlutils, transaction
from ovsdbapp.schema.open_vswitch import impl_idl

from ovsdb import jsonparse, keys
from ovsdb.errors import (
    BridgeNotFound,
    InterfaceError,
    OvsdbError,
    OvsdbTimeout,
    PortNotFound,
)

# OpenFlow10 too, so that a plain `ovs-ofctl` without -O works against the bridge.
PROTOCOLS = ["OpenFlow10", "OpenFlow13", "OpenFlow15"]
TUNNEL_TYPES = ("geneve", "vxlan")
_DATAPATH_ID = re.compile(r"[0-9a-f]{16}")
# A pod port whose interface got no ofport after vswitchd applied the change has failed; the
# extra wait only covers a vswitchd that reports the ofport in a later update.
_POD_PORT_GRACE = 2.0
# python-ovs backs off up to 8 s between reconnections; on a local socket a restarted
# ovsdb-server is back within a second, so retry every second (python-ovs's minimum).
_RECONNECT_BACKOFF_MS = 1000

# Every table and column the verbs below read or write (ovsdbapp's add_br, add_port and the
# vsctl transaction's next_cfg/cur_cfg included). A verb touching another column fails in
# tests with AttributeError: add it here.
MONITORED: Mapping[str, tuple[str, ...]] = {
    "Open_vSwitch": ("bridges", "next_cfg", "cur_cfg"),
    "Bridge": (
        "name",
        "ports",
        "datapath_type",
        "fail_mode",
        "protocols",
        "other_config",
        "external_ids",
        "flow_tables",
    ),
    "Port": ("name", "interfaces"),
    "Interface": (
        "name",
        "type",
        "options",
        "ofport",
        "ofport_request",
        "external_ids",
        "mac",
        "mac_in_use",
        "mtu_request",
        "error",
    ),
    "Flow_Table": ("name",),
}

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PortInfo:
    """A port and its (single) interface. ofport: -1 failed, 0 not assigned yet."""

    name: str
    ofport: int
    type: str = ""
    external_ids: Mapping[str, str] = field(default_factory=dict)
    mac_in_use: str = ""


class _ThreadedIdl(connection.OvsdbIdl):  # type: ignore[misc]  # ovsdbapp is untyped
    """ovsdbapp's IDL without its cooperative yield: `time.sleep(0)` after every row of an
    update lets eventlet's green threads run, but among real threads it only hands the GIL
    to another thread for up to a switch interval, several times per update."""

    def cooperative_yield(self) -> None:
        pass


class _WaitingTxn(impl_idl.OvsVsctlTransaction):  # type: ignore[misc]  # ovsdbapp is untyped
    """ovs-vsctl's transaction: bump next_cfg, then wait until ovs-vswitchd has applied it.

    ovsdbapp logs a wait that runs out; here it propagates, so the caller sees it. `committed`
    tells a timeout after the commit (vswitchd) from one before it (ovsdb-server).
    """

    committed = False

    def post_commit(self, txn: Any) -> None:
        self.committed = True
        transaction.Transaction.post_commit(self, txn)
        # The caller reads Interface.ofport and .error itself.
        with suppress(impl_idl.VswitchdInterfaceAddException):
            self.do_post_commit(txn)


class _NoWaitTxn(transaction.Transaction):  # type: ignore[misc]  # ovsdbapp is untyped
    """A database-only change (like ovs-vsctl --no-wait): nothing for ovs-vswitchd to do."""

    def pre_commit(self, txn: Any) -> None:
        txn.expected_ifaces = set()  # ovsdbapp's add_port expects the vsctl transaction's set


class _ReplaceColumns(command.BaseCommand):  # type: ignore[misc]  # ovsdbapp is untyped
    """Set columns to exactly these values: ovsdbapp's db_set merges a map into the old one
    (stale keys stay), and its db_clear fails on a row inserted in the same transaction."""

    def __init__(self, api: Any, table: str, record: str, **columns: Any) -> None:
        super().__init__(api)
        self.table = table
        self.record = record
        self.columns = columns

    def run_idl(self, txn: Any) -> None:
        row = self.api.lookup(self.table, self.record)
        for column, value in self.columns.items():
            self.set_column(row, column, value)  # resolves commands to the rows they create


class OvsdbClient:
    """One OVSDB connection (ovsdbapp runs it in a thread of its own)."""

    def __init__(self, remote: str, timeout: float = 10.0) -> None:
        self.remote = remote
        self.timeout = timeout
        self._closed = threading.Event()
        try:
            jsonparse.install()
            helper = idlutils.get_schema_helper(remote, "Open_vSwitch")
            for table, columns in MONITORED.items():
                helper.register_columns(table, list(columns))
            idl = _ThreadedIdl(remote, helper)
            idl._session.reconnect.set_backoff(_RECONNECT_BACKOFF_MS, _RECONNECT_BACKOFF_MS)
            self._connection = connection.Connection(idl, timeout=int(max(timeout, 1)))
            # ovsdbapp keeps "the" connection on the API class, so every client in a process
            # would share the first remote; a class per client keeps clients independent.
            api_class = type("OvsdbApi", (impl_idl.OvsdbIdl,), {"_ovsdb_connection": None})
            self.api = api_class(self._connection)
        except Exception as exc:
            raise OvsdbError(f"cannot connect to OVSDB at {remote}: {_describe(exc)}") from exc

    def close(self) -> None:
        """Stop the connection thread; later calls raise OvsdbError. Idempotent."""
        self._closed.set()
        self._connection.stop(timeout=self.timeout)

    # --- bridge ------------------------------------------------------------------------------

    def ensure_bridge(
        self,
        name: str,
        datapath_type: str,
        datapath_id: str,
        external_ids: Mapping[str, str] | None = None,
    ) -> None:
        """The bridge with fail_mode=secure, OpenFlow 1.0/1.3/1.5 and a pinned datapath id.

        Returns once ovs-vswitchd has applied it (so `<rundir>/<name>.mgmt` exists). The
        given external_ids are merged into the bridge's; other keys stay.
        """
        dpid = datapath_id.lower()
        if not _DATAPATH_ID.fullmatch(dpid):
            raise ValueError(f"datapath_id must be 16 hex digits, not {datapath_id!r}")
        settings: list[tuple[str, Any]] = [
            ("fail_mode", "secure"),
            ("protocols", PROTOCOLS),
            ("datapath_type", datapath_type),
            ("other_config", {"datapath-id": dpid}),
        ]
        if external_ids:
            settings.append(("external_ids", dict(external_ids)))
        self._commit(
            f"ensure bridge {name}",
            self.api.add_br(name, may_exist=True, datapath_type=datapath_type),
            self.api.db_set("Bridge", name, *settings),
        )

    def ensure_table_names(self, bridge: str, names: Mapping[int, str]) -> None:
        """Name the bridge's flow tables (exactly these) so `ovs-ofctl --names` prints them."""
        if self._table_names(bridge) == dict(names):
            return
        # Flow_Table rows are not roots: create and reference them in one transaction, or
        # OVSDB collects them before the bridge can point at them. The old rows, no longer
        # referenced, are collected the same way.
        creates = {tid: self.api.db_create("Flow_Table", name=n) for tid, n in names.items()}
        self._commit(
            f"name the flow tables of {bridge}",
            *creates.values(),
            _ReplaceColumns(self.api, "Bridge", bridge, flow_tables=creates),
        )

    def _table_names(self, bridge: str) -> dict[int, str]:
        with self._rows():
            tables = self._bridge_row(bridge).flow_tables
            return {int(tid): _scalar(row.name, "") for tid, row in tables.items()}

    def get_bridge_external_id(self, bridge: str, key: str) -> str | None:
        with self._rows():
            value = self._bridge_row(bridge).external_ids.get(key)
        return None if value is None else str(value)

    def set_bridge_external_id(self, bridge: str, key: str, value: str) -> None:
        """Database only: returns without waiting for ovs-vswitchd."""
        self._bridge_exists(bridge)
        self._commit(
            f"set {key} on bridge {bridge}",
            self.api.br_set_external_id(bridge, key, value),
            wait=False,
        )

    # --- ports ------------------------------------------------------------------------------

    def ensure_gateway_port(
        self,
        bridge: str,
        name: str,
        ofport: int,
        mac: str | None = None,
        mtu: int | None = None,
    ) -> PortInfo:
        """An internal port with a fixed ofport (outside the range OVS hands out itself)."""
        columns: list[tuple[str, Any]] = [
            ("type", "internal"),
            ("ofport_request", ofport),
            ("external_ids", {keys.PORT_TYPE: keys.PORT_TYPE_GATEWAY}),
        ]
        if mac:
            columns.append(("mac", mac))
        if mtu:
            columns.append(("mtu_request", mtu))
        self._bridge_exists(bridge)
        self._commit(
            f"ensure gateway port {name} on {bridge}",
            self.api.add_port(bridge, name, may_exist=True),
            self.api.db_set("Interface", name, *columns),
        )
        return self.wait_port(name)

    def ensure_tunnel_port(
        self,
        bridge: str,
        name: str,
        tunnel_type: str,
        ofport: int,
        local_ip: str | None = None,
    ) -> PortInfo:
        """One flow-based tunnel port (remote_ip=flow, key=flow); recreated if it drifted."""
        if tunnel_type not in TUNNEL_TYPES:
            raise ValueError(f"tunnel_type must be one of {TUNNEL_TYPES}, not {tunnel_type!r}")
        options = {"remote_ip": "flow", "key": "flow"}
        if local_ip:
            options["local_ip"] = local_ip
        self._bridge_exists(bridge)
        current = self._interface_settings(name)
        if current is not None and current != (tunnel_type, options):
            # Type or options drifted (config changed): start from a fresh interface rather
            # than morph one in place.
            self.delete_port(bridge, name)
        self._commit(
            f"ensure tunnel port {name} on {bridge}",
            self.api.add_port(bridge, name, may_exist=True),
            self.api.db_set(
                "Interface",
                name,
                ("type", tunnel_type),
                ("options", options),
                ("ofport_request", ofport),
                ("external_ids", {keys.PORT_TYPE: keys.PORT_TYPE_TUNNEL}),
            ),
        )
        return self.wait_port(name)

    def _interface_settings(self, name: str) -> tuple[str, dict[str, str]] | None:
        with self._rows():
            iface = idlutils.row_by_value(self.api.idl, "Interface", "name", name, None)
            return None if iface is None else (iface.type, dict(iface.options))

    def add_pod_port(
        self,
        bridge: str,
        name: str,
        external_ids: Mapping[str, str],
        ofport_request: int | None = None,
    ) -> PortInfo:
        """Attach an existing netdev (a pod's host veth) with these external_ids; return it
        with its ofport. If OVS cannot attach it: InterfaceError, and no port row is left."""
        columns: dict[str, Any] = {
            # Replaced, not merged: keys left by an earlier attachment of the same name would
            # mislead the restart that rebuilds pods from them.
            "external_ids": {**external_ids, keys.PORT_TYPE: keys.PORT_TYPE_POD},
            "ofport_request": [ofport_request] if ofport_request else [],
        }
        self._bridge_exists(bridge)
        self._commit(
            f"add pod port {name} to {bridge}",
            self.api.add_port(bridge, name, may_exist=True),
            _ReplaceColumns(self.api, "Interface", name, **columns),
        )
        try:
            return self.wait_port(name, timeout=_POD_PORT_GRACE)
        except OvsdbError:
            self.delete_port(bridge, name)
            raise

    def wait_port(self, name: str, timeout: float | None = None) -> PortInfo:
        """The port once its interface has an ofport.

        InterfaceError (naming Interface.error) if OVS gave it -1 or none within `timeout`;
        PortNotFound if there is no such port.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            info, error = self._port_state(name)
            if info.ofport > 0:
                return info
            if info.ofport == -1 or time.monotonic() > deadline:
                detail = error or ("no ofport yet (is ovs-vswitchd running?)")
                raise InterfaceError(name, detail)
            time.sleep(0.002)

    def port_info(self, name: str) -> PortInfo:
        """The port and its interface, as OVSDB has them now."""
        return self._port_state(name)[0]

    def _port_state(self, name: str) -> tuple[PortInfo, str]:
        with self._rows():
            port = idlutils.row_by_value(self.api.idl, "Port", "name", name, None)
            if port is None or not port.interfaces:
                raise PortNotFound(name)
            return _port_info(port), _scalar(port.interfaces[0].error, "")

    def delete_port(self, bridge: str, name: str) -> None:
        """Remove the port from the bridge; a port (or bridge) that is not there is fine."""
        with self._rows():
            br = idlutils.row_by_value(self.api.idl, "Bridge", "name", bridge, None)
            on_bridge = br is not None and any(p.name == name for p in br.ports)
        if on_bridge:
            self._commit(
                f"delete port {name} from {bridge}",
                self.api.del_port(name, bridge, if_exists=True),
            )

    def list_ports(self, bridge: str, **external_id_filter: str) -> list[PortInfo]:
        """The bridge's ports (not its own internal port) whose interface external_ids hold
        every given key=value; keys may be given python-style (pod_name=...)."""
        wanted = {keys.normalise(k): v for k, v in external_id_filter.items()}
        with self._rows():
            ports = [p for p in self._bridge_row(bridge).ports if p.name != bridge]
            found = [_port_info(p) for p in ports if p.interfaces]
        return [
            info
            for info in sorted(found, key=lambda i: i.name)
            if all(info.external_ids.get(k) == v for k, v in wanted.items())
        ]

    # --- plumbing ---------------------------------------------------------------------------

    def _commit(self, what: str, *commands: Any, wait: bool = True) -> None:
        """One transaction; with `wait`, return only once ovs-vswitchd has applied it."""
        if self._closed.is_set():
            raise OvsdbError(f"{what}: the OVSDB client is closed")
        txn_class = _WaitingTxn if wait else _NoWaitTxn
        txn = txn_class(self.api, self._connection, check_error=True, log_errors=False)
        for cmd in commands:
            txn.add(cmd)
        try:
            txn.commit()
        except ovsdbapp_exceptions.TimeoutException as exc:
            raise OvsdbTimeout(f"{what}: {self._timeout_cause(txn)}") from exc
        except Exception as exc:
            if "timed out" in _describe(exc):  # ovsdbapp's retry loop gives up, RuntimeError
                raise OvsdbTimeout(f"{what}: {self._timeout_cause(txn)}") from exc
            raise OvsdbError(f"{what}: {_describe(exc)}") from exc

    def _timeout_cause(self, txn: Any) -> str:
        if getattr(txn, "committed", False):
            return f"committed, but ovs-vswitchd did not apply it within {self.timeout:g}s"
        return f"no answer from ovsdb-server at {self.remote} within {self.timeout:g}s"

    @contextmanager
    def _rows(self) -> Iterator[None]:
        """Read the IDL's rows; the connection thread changes them only under this lock."""
        if self._closed.is_set():
            raise OvsdbError("the OVSDB client is closed")
        with self._connection.lock:
            yield

    def _bridge_row(self, bridge: str) -> Any:
        """Call with the rows locked."""
        row = idlutils.row_by_value(self.api.idl, "Bridge", "name", bridge, None)
        if row is None:
            raise BridgeNotFound(bridge)
        return row

    def _bridge_exists(self, bridge: str) -> None:
        with self._rows():
            self._bridge_row(bridge)


def _port_info(port: Any) -> PortInfo:
    iface = port.interfaces[0]
    return PortInfo(
        name=port.name,
        ofport=_scalar(iface.ofport, 0),
        type=iface.type,
        external_ids=dict(iface.external_ids),
        mac_in_use=_scalar(iface.mac_in_use, ""),
    )


def _scalar(value: Any, default: T) -> T:
    """The python IDL gives optional columns as [] (unset) or [x]."""
    if isinstance(value, list):
        return value[0] if value else default
    return value  # type: ignore[no-any-return]


def _describe(exc: BaseException) -> str:
    """An exception's text; some ovsdbapp exceptions fail in __str__ when built bare."""
    try:
        return str(exc) or type(exc).__name__
    except Exception:
        return type(exc).__name__


__all__ = ["OvsdbClient", "OvsdbError", "OvsdbTimeout", "PortInfo"]
