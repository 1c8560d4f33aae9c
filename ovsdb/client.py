"""OVSDB verbs over ovsdbapp: bridge, table names, gateway/tunnel/pod ports, external_ids.

Every verb is idempotent (`ensure_`, `delete_` behave like --may-exist / --if-exists) and every
failure is raised as an `OvsdbError`: ovsdbapp is always asked with check_error=True, and the
ofport of a new interface is read back, because ovsdbapp only logs an interface that failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ovsdbapp.backend.ovs_idl import connection, idlutils
from ovsdbapp.schema.open_vswitch import impl_idl

from ovsdb import keys
from ovsdb.errors import OvsdbError, OvsdbTimeout

log = logging.getLogger(__name__)

PROTOCOLS = ["OpenFlow10", "OpenFlow13", "OpenFlow15"]


@dataclass(frozen=True, slots=True)
class PortInfo:
    name: str
    ofport: int
    type: str = ""
    external_ids: Mapping[str, str] = field(default_factory=dict)
    mac_in_use: str = ""


class OvsdbClient:
    """One OVSDB connection (ovsdbapp runs it in its own thread)."""

    def __init__(self, remote: str, timeout: float = 10.0) -> None:
        self.remote = remote
        self.timeout = timeout
        try:
            helper = idlutils.get_schema_helper(remote, "Open_vSwitch")
            helper.register_all()
            idl = connection.OvsdbIdl(remote, helper)
            self._connection = connection.Connection(idl, timeout=int(max(timeout, 1)))
            # ovsdbapp keeps "the" connection on the API class, so every client in a process
            # would share the first remote; a class per client keeps clients independent.
            api_class = type("OvsdbApi", (impl_idl.OvsdbIdl,), {"_ovsdb_connection": None})
            self.api = api_class(self._connection)
        except Exception as exc:
            raise OvsdbError(f"cannot connect to OVSDB at {remote}: {exc}") from exc

    def close(self) -> None:
        self._connection.stop()

    def _execute(self, *commands: Any) -> None:
        try:
            with self.api.transaction(check_error=True) as txn:
                for command in commands:
                    txn.add(command)
        except Exception as exc:
            raise OvsdbError(f"OVSDB transaction failed: {exc}") from exc

    def _get(self, table: str, record: str, column: str) -> Any:
        try:
            return self.api.db_get(table, record, column).execute(check_error=True)
        except Exception as exc:
            raise OvsdbError(f"read {table} {record} {column}: {exc}") from exc

    # --- bridge ------------------------------------------------------------------------------

    def ensure_bridge(
        self,
        name: str,
        datapath_type: str,
        datapath_id: str,
        external_ids: Mapping[str, str] | None = None,
    ) -> None:
        """The bridge with fail_mode=secure, OpenFlow 1.0/1.3/1.5 and a pinned datapath id."""
        settings: list[tuple[str, Any]] = [
            ("fail_mode", "secure"),
            ("protocols", PROTOCOLS),
            ("datapath_type", datapath_type),
            ("other_config", {"datapath-id": datapath_id}),
        ]
        if external_ids:
            settings.append(("external_ids", dict(external_ids)))
        self._execute(
            self.api.add_br(name, may_exist=True, datapath_type=datapath_type),
            self.api.db_set("Bridge", name, *settings),
        )

    def ensure_table_names(self, bridge: str, names: Mapping[int, str]) -> None:
        """Name the bridge's flow tables so `ovs-ofctl --names` prints them."""
        current = self._current_table_names(bridge)
        if current == dict(names):
            return
        # Flow_Table rows are not roots: create and reference them in one transaction, or
        # OVSDB collects them before the bridge can point at them.
        creates = {tid: self.api.db_create("Flow_Table", name=n) for tid, n in names.items()}
        self._execute(
            *creates.values(), self.api.db_set("Bridge", bridge, ("flow_tables", creates))
        )

    def _current_table_names(self, bridge: str) -> dict[int, str]:
        tables = self._get("Bridge", bridge, "flow_tables")
        names = {}
        for table_id, row in tables.items():
            uuid = row.uuid if hasattr(row, "uuid") else row
            names[int(table_id)] = self._get("Flow_Table", uuid, "name")[0]
        return names

    def get_bridge_external_id(self, bridge: str, key: str) -> str | None:
        ids = self._get("Bridge", bridge, "external_ids")
        value = ids.get(key)
        return None if value is None else str(value)

    def set_bridge_external_id(self, bridge: str, key: str, value: str) -> None:
        self._execute(self.api.br_set_external_id(bridge, key, value))

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
        self._execute(
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
        options = {"remote_ip": "flow", "key": "flow"}
        if local_ip:
            options["local_ip"] = local_ip
        existing = self._port_row(bridge, name)
        if existing is not None and (
            existing.type != tunnel_type
            or not _same_options(self._get("Interface", name, "options"), options)
        ):
            self.delete_port(bridge, name)
        self._execute(
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

    def add_pod_port(
        self,
        bridge: str,
        name: str,
        external_ids: Mapping[str, str],
        ofport_request: int | None = None,
    ) -> PortInfo:
        """Attach an existing netdev (a pod's host veth); raise, leaving no row, if OVS can't."""
        ids = {**external_ids, keys.PORT_TYPE: keys.PORT_TYPE_POD}
        columns: list[tuple[str, Any]] = [("external_ids", ids)]
        if ofport_request:
            columns.append(("ofport_request", ofport_request))
        self._execute(
            self.api.add_port(bridge, name, may_exist=True),
            self.api.db_set("Interface", name, *columns),
        )
        try:
            return self.wait_port(name, timeout=2.0)
        except OvsdbError:
            self.delete_port(bridge, name)
            raise

    def wait_port(self, name: str, timeout: float | None = None) -> PortInfo:
        """The interface once it has an ofport; OvsdbError naming Interface.error if it fails."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            info = self.port_info(name)
            if info.ofport > 0:
                return info
            if info.ofport == -1 or time.monotonic() > deadline:
                error = self._get("Interface", name, "error")
                raise OvsdbError(f"port {name} got no ofport: {error or 'timed out'}")
            time.sleep(0.005)

    def port_info(self, name: str) -> PortInfo:
        ofport = self._get("Interface", name, "ofport")
        mac = self._get("Interface", name, "mac_in_use")
        return PortInfo(
            name=name,
            ofport=_scalar(ofport, 0),
            type=self._get("Interface", name, "type"),
            external_ids=dict(self._get("Interface", name, "external_ids")),
            mac_in_use=_scalar(mac, ""),
        )

    def delete_port(self, bridge: str, name: str) -> None:
        self._execute(self.api.del_port(name, bridge, if_exists=True))

    def list_ports(self, bridge: str, **external_id_filter: str) -> list[PortInfo]:
        """Ports of the bridge whose interface external_ids contain every given key=value."""
        try:
            names = self.api.list_ports(bridge).execute(check_error=True)
        except Exception as exc:
            raise OvsdbError(f"list ports of {bridge}: {exc}") from exc
        wanted = {keys.normalise(k): v for k, v in external_id_filter.items()}
        found = []
        for name in names:
            info = self.port_info(name)
            if all(info.external_ids.get(k) == v for k, v in wanted.items()):
                found.append(info)
        return found

    def _port_row(self, bridge: str, name: str) -> Any:
        rows = self.api.db_find_rows("Interface", ("name", "=", name)).execute(check_error=True)
        return rows[0] if rows else None


def _scalar(value: Any, default: Any) -> Any:
    """OVSDB optional columns come back as [] (unset) or [x]."""
    if isinstance(value, list):
        return value[0] if value else default
    return value


def _same_options(current: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return dict(current) == dict(wanted)


__all__ = ["OvsdbClient", "OvsdbError", "OvsdbTimeout", "PortInfo"]
