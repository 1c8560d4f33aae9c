"""The ovsdb room's errors: every OVSDB failure is raised as one of these, never only logged.

OvsdbError              any OVSDB failure: connection, transaction, a port without an ofport
├── OvsdbTimeout        a wait ran out (ovsdb-server unreachable, ovs-vswitchd not applying)
├── BridgeNotFound      the named bridge does not exist
├── PortNotFound        the named port does not exist
└── InterfaceError      ovs-vswitchd could not attach the interface (ofport -1 or none)
"""

from __future__ import annotations


class OvsdbError(RuntimeError):
    """An OVSDB operation failed; the message says which and why."""


class OvsdbTimeout(OvsdbError):
    """A wait on OVSDB state ran out."""


class BridgeNotFound(OvsdbError):
    """The bridge named in the call does not exist."""

    def __init__(self, bridge: str) -> None:
        super().__init__(f"bridge {bridge} does not exist")
        self.bridge = bridge


class PortNotFound(OvsdbError):
    """The port named in the call does not exist."""

    def __init__(self, port: str) -> None:
        super().__init__(f"port {port} does not exist")
        self.port = port


class InterfaceError(OvsdbError):
    """ovs-vswitchd gave the interface no ofport; `error` is its Interface.error column."""

    def __init__(self, port: str, error: str) -> None:
        super().__init__(f"port {port} got no ofport: {error}")
        self.port = port
        self.error = error
