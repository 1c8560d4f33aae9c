"""Fault injection against a running lab: restart one node's agent, ovs-vswitchd or ovsdb-server
by its recorded PID, and cut or restore one node's underlay link.

Every fault acts on one node of one lab, found by the lab's own records (pidfiles whose process
command line still names the lab's file, the exact veth name on the underlay bridge), never by a
process or interface pattern, so other labs and the host's own OVS are never touched. A restart
returns when the component answers again (the agent's /readyz, the daemon's control socket) and
says how long it was away; a partition is the underlay side of the node's veth set down (the
cable pulled at the switch: the node sees its uplink lose carrier) and a heal sets it up again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from lab import cluster, host
from lab.layout import LabLayout, NodeLayout
from lab.ovs_sandbox import Daemon

COMPONENTS: Final = ("agent", "ovs-vswitchd", "ovsdb-server")
_STOP_TIMEOUT: Final = 10.0
Progress = Callable[[str], None]


class FaultError(RuntimeError):
    """The fault cannot be made (no such lab, node or running component)."""


@dataclass(frozen=True)
class Restarted:
    """One component restart: the process it replaced and how long the component was away
    (from the signal to its first good answer)."""

    node: str
    component: str
    signal: str
    old_pid: int
    new_pid: int
    away_s: float

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "away_s": round(self.away_s, 3)}


def _quiet(_: str) -> None:
    pass


def running_node(layout: LabLayout, node_name: str) -> NodeLayout:
    """The node of a lab that is up; FaultError naming what is missing otherwise."""
    spec = layout.read_spec()
    if spec is None:
        raise FaultError(f"lab {layout.name} is not up")
    try:
        node = layout.node_by_name(node_name)
    except ValueError as exc:
        raise FaultError(str(exc)) from None
    if node.index > spec.nodes or not host.netns_exists(node.netns):
        raise FaultError(f"no node {node_name} in lab {layout.name} (it has {spec.nodes})")
    return node


# --- restarts ----------------------------------------------------------------------------------


def restart(
    layout: LabLayout,
    node_name: str,
    component: str,
    *,
    hard: bool = False,
    progress: Progress = _quiet,
) -> Restarted:
    """Stop `component` on the node by its PID (SIGTERM, or SIGKILL when `hard`: a crash),
    start it again and return once it answers."""
    if component not in COMPONENTS:
        raise FaultError(f"component must be one of {', '.join(COMPONENTS)}; got {component!r}")
    node = running_node(layout, node_name)
    sig = signal.SIGKILL if hard else signal.SIGTERM
    if component == "agent":
        result = _restart_agent(node, sig)
    else:
        result = _restart_ovs_daemon(node, component, sig)
    progress(
        f"{node.name}: {component} restarted (pid {result.old_pid} -> {result.new_pid}, "
        f"away {result.away_s:.2f}s)"
    )
    return result


def _restart_agent(node: NodeLayout, sig: signal.Signals) -> Restarted:
    old = cluster.agent_pid(node)
    if old is None:
        raise FaultError(f"{node.name}: no agent running")
    started = time.monotonic()
    _signal_and_wait(old, sig, lambda: host.pid_matches(old, str(node.config_file)))
    node.agent_pidfile.unlink(missing_ok=True)
    new = cluster.ensure_agent(node)
    cluster.wait_agents_ready([node])
    return Restarted(node.name, "agent", sig.name, old, new, time.monotonic() - started)


def _restart_ovs_daemon(node: NodeLayout, component: str, sig: signal.Signals) -> Restarted:
    ovs = cluster.node_ovs(node)
    daemon: Daemon = "ovs-vswitchd" if component == "ovs-vswitchd" else "ovsdb-server"
    old = ovs.pid(daemon)
    if old is None:
        raise FaultError(f"{node.name}: no {daemon} running")
    started = time.monotonic()
    _signal_and_wait(old, sig, lambda: ovs.pid(daemon) == old)
    # The daemon's own start (as its service manager would run it) waits until it answers.
    if daemon == "ovs-vswitchd":
        ovs.start_vswitchd()  # its own route to the underlay: the agent adds it again
    else:
        ovs.start_ovsdb()
    new = ovs.pid(daemon)
    if new is None:
        raise FaultError(f"{node.name}: {daemon} did not come back")
    return Restarted(node.name, component, sig.name, old, new, time.monotonic() - started)


def _signal_and_wait(pid: int, sig: signal.Signals, still_there: Callable[[], bool]) -> None:
    """Send `sig` (SIGKILL if the process is still there after the stop timeout) and return
    once every thread of it has exited."""
    for attempt in (sig, signal.SIGKILL):
        try:
            os.kill(pid, attempt)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + _STOP_TIMEOUT
        # The main thread turns zombie first; the others hold its files (a daemon's locked
        # pidfile) until they are gone too, and a successor would find it "already running".
        while still_there() or _threads_alive(pid):
            if time.monotonic() > deadline:
                break
            time.sleep(0.005)
        else:
            _reap(pid)
            return
    raise FaultError(f"process {pid} survived SIGKILL")


def _threads_alive(pid: int) -> bool:
    """Whether any thread of `pid` has not exited (is neither zombie nor dead)."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False
    for task in tasks:
        try:
            state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            return True
    return False


def _reap(pid: int) -> None:
    """Collect the exit status when the process was our child (the lab's agent may be)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


# --- partitions --------------------------------------------------------------------------------


def _underlay_link(layout: LabLayout, node: NodeLayout) -> list[str]:
    return ["ip", "-n", layout.underlay_netns, "link", "set", "dev", node.underlay_port]


def partition(layout: LabLayout, node_name: str) -> None:
    """Cut the node off the underlay: its veth's end on the underlay bridge goes down, so the
    node's uplink loses carrier and nothing crosses in either direction. Idempotent."""
    node = running_node(layout, node_name)
    host.run([*_underlay_link(layout, node), "down"])


def heal(layout: LabLayout, node_name: str) -> None:
    """Reconnect the node: its underlay veth end comes up again. Idempotent."""
    node = running_node(layout, node_name)
    host.run([*_underlay_link(layout, node), "up"])


def partitioned(layout: LabLayout, node_name: str) -> bool:
    """Whether the node's underlay link is cut (its underlay end is administratively down)."""
    node = running_node(layout, node_name)
    out = host.run(["ip", "-n", layout.underlay_netns, "-o", "link", "show", node.underlay_port])
    flags = out.split("<", 1)[1].split(">", 1)[0].split(",") if "<" in out else []
    return "UP" not in flags
