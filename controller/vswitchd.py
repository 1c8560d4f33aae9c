"""What only ovs-vswitchd itself can be asked for, over its unixctl socket: routes of its own.

On the userspace datapath a tunnel's packets leave through the route ovs-vswitchd finds for the
remote endpoint in its own route table. A node that keeps its underlay routes out of
ovs-vswitchd's sight (OVS 3.1 re-reads the kernel's routes on every link change and, for a
moment, forgets its tunnel endpoints: docs/lab.md) gives it routes of its own instead
(`ovs-appctl ovs/route/add PREFIX BRIDGE [GATEWAY]`), which ovs-vswitchd forgets when it
restarts. The agent adds the configured ones (`ovs_routes`) at start and after every
reconnection to a restarted ovs-vswitchd.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

import ovs.unixctl.client

_IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")


class VswitchdError(RuntimeError):
    """ovs-vswitchd could not be reached or refused a command (the message says which)."""


@dataclass(frozen=True, slots=True)
class OvsRoute:
    """One route of ovs-vswitchd's own: `prefix` through `bridge` (which holds the source
    address), via `gateway` when the prefix is not on the bridge's link."""

    prefix: str
    bridge: str
    gateway: str = ""

    def args(self) -> list[str]:
        return [self.prefix, self.bridge, *([self.gateway] if self.gateway else [])]


def parse_routes(text: str) -> list[OvsRoute]:
    """`PREFIX BRIDGE [GATEWAY], ...` (the config's `ovs_routes`); ValueError naming the entry
    that is not one."""
    routes = []
    for entry in (part.strip() for part in text.split(",")):
        if entry:
            routes.append(_parse_route(entry))
    return routes


def _parse_route(entry: str) -> OvsRoute:
    words = entry.split()
    problem = f"{entry!r} is not PREFIX BRIDGE [GATEWAY]"
    if len(words) not in (2, 3) or not _IFNAME.fullmatch(words[1]):
        raise ValueError(problem)
    try:
        prefix = ipaddress.ip_network(words[0], strict=False)
        if len(words) == 3:
            ipaddress.ip_address(words[2])
    except ValueError:
        raise ValueError(problem) from None
    return OvsRoute(str(prefix), *words[1:])


def control_socket(rundir: str | Path) -> Path:
    """ovs-vswitchd's unixctl socket in `rundir`: `ovs-vswitchd.ctl` when it was started with
    that name, else `ovs-vswitchd.<pid>.ctl` by its pidfile (its default)."""
    rundir = Path(rundir)
    named = rundir / "ovs-vswitchd.ctl"
    if named.exists():
        return named
    try:
        pid = int((rundir / "ovs-vswitchd.pid").read_text().strip())
    except (OSError, ValueError) as err:
        raise VswitchdError(f"no ovs-vswitchd control socket in {rundir}: {err}") from None
    return rundir / f"ovs-vswitchd.{pid}.ctl"


def add_routes(rundir: str | Path, routes: list[OvsRoute]) -> None:
    """Add (or replace: it is idempotent) each route in ovs-vswitchd's own table."""
    if not routes:
        return
    path = control_socket(rundir)
    error, client = ovs.unixctl.client.UnixctlClient.create(str(path))
    if error:
        raise VswitchdError(f"{path}: cannot connect (errno {error})")
    try:
        for route in routes:
            error, failure, _result = client.transact("ovs/route/add", route.args())
            if error or failure is not None:
                reason = str(failure).strip() if failure is not None else f"errno {error}"
                raise VswitchdError(f"ovs/route/add {' '.join(route.args())}: {reason}")
    finally:
        client.close()
