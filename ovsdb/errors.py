"""The ovsdb room's errors.

OvsdbError          any OVSDB failure: connection, transaction, a port without an ofport
└── OvsdbTimeout    a wait ran out
"""


class OvsdbError(RuntimeError):
    """An OVSDB operation failed; the message says which and why."""


class OvsdbTimeout(OvsdbError):
    """A wait on OVSDB state ran out."""
