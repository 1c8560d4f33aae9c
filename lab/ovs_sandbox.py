"""A private Open vSwitch: ovsdb-server and ovs-vswitchd with their own run, db and log directory.

Used by the tests, the benchmarks and the lab. Userspace datapath only (no kernel module needed);
inside a network namespace, a given one or one of its own. Daemons are stopped by the PIDs in
their own pidfiles, never by name, so several sandboxes and the system's OVS can run side by side.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
BINARIES = ("ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-ofctl", "ovs-appctl")
INSTALL_HINT = "apt-get install openvswitch-switch"
_LOG_TAIL_LINES = 20

Daemon = Literal["ovsdb-server", "ovs-vswitchd"]


class OvsBinariesMissing(RuntimeError):
    """Open vSwitch is not installed."""


class OvsSandboxError(RuntimeError):
    """A daemon failed to start or stop, or a command against the sandbox failed."""


def missing_ovs_binaries() -> list[str]:
    """The OVS programs not on PATH (the sandbox needs root, whose PATH has sbin) and the
    schema file if it is missing."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    return missing if SCHEMA.exists() else [*missing, str(SCHEMA)]


def require_ovs_binaries() -> None:
    """Raise OvsBinariesMissing, one line naming what is missing and what to install."""
    missing = missing_ovs_binaries()
    if missing:
        raise OvsBinariesMissing(f"Open vSwitch not found ({', '.join(missing)}): {INSTALL_HINT}")


@dataclass
class OvsSandbox:
    """One private OVS instance rooted at `rundir`.

    The userspace datapath owns a tap device named `ovs-netdev` in its network namespace, so
    two ovs-vswitchd instances cannot share one namespace. Without `netns`, the sandbox makes
    a namespace of its own and removes it on cleanup.
    """

    rundir: Path
    netns: str | None = None
    timeout: float = 10.0
    _env: dict[str, str] = field(init=False, repr=False)
    _own_netns: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.rundir = Path(self.rundir).resolve()
        self._env = {
            **os.environ,
            "OVS_RUNDIR": str(self.rundir),
            "OVS_DBDIR": str(self.rundir),
            "OVS_LOGDIR": str(self.rundir),
            "OVS_SYSCONFDIR": str(self.rundir),
        }

    # --- paths ---------------------------------------------------------------------------

    @property
    def db_path(self) -> Path:
        return self.rundir / "conf.db"

    @property
    def db_socket(self) -> Path:
        return self.rundir / "db.sock"

    @property
    def db_remote(self) -> str:
        return f"unix:{self.db_socket}"

    def mgmt_socket(self, bridge: str) -> Path:
        """The bridge's OpenFlow management socket (vswitchd makes it in OVS_RUNDIR)."""
        return self.rundir / f"{bridge}.mgmt"

    def pidfile(self, daemon: Daemon) -> Path:
        return self.rundir / f"{daemon}.pid"

    def ctl_socket(self, daemon: Daemon) -> Path:
        return self.rundir / f"{daemon}.ctl"

    def log_file(self, daemon: Daemon) -> Path:
        return self.rundir / f"{daemon}.log"

    # --- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> OvsSandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def start(self) -> None:
        """Start both daemons (those not already running) and wait until they answer."""
        self.start_ovsdb()
        self.start_vswitchd()

    def start_ovsdb(self) -> None:
        """Start ovsdb-server on the sandbox's database, created on first start."""
        if self.pid("ovsdb-server") is not None:
            return
        self._prepare()
        if not self.db_path.exists():
            self._run(["ovsdb-tool", "create", str(self.db_path), str(SCHEMA)])
        self._spawn("ovsdb-server", [str(self.db_path), f"--remote=punix:{self.db_socket}"])
        # A socket file alone proves nothing (SIGKILL leaves it behind): ask the server.
        self._wait_ready("ovsdb-server", lambda: self.vsctl("--no-wait", "--timeout=1", "show"))
        self.vsctl("--no-wait", "init")

    def start_vswitchd(self) -> None:
        """Start ovs-vswitchd; ovsdb-server must be running (vswitchd would wait for it forever)."""
        if self.pid("ovs-vswitchd") is not None:
            return
        self._prepare()
        if self.pid("ovsdb-server") is None:
            raise OvsSandboxError(
                f"ovs-vswitchd needs ovsdb-server, which is down in {self.rundir}"
            )
        # --disable-system: never touch a kernel datapath the host may have; userspace only.
        self._spawn("ovs-vswitchd", [self.db_remote, "--disable-system"])
        self._wait_ready("ovs-vswitchd", lambda: self.appctl("version"))

    def pid(self, daemon: Daemon) -> int | None:
        """The daemon's PID while it runs (None if it is down)."""
        return _live_pid(self.pidfile(daemon))

    def stop_vswitchd(self) -> None:
        """SIGTERM ovs-vswitchd, as an upgrade would; the database and tap devices stay."""
        self._stop("ovs-vswitchd")

    def stop_ovsdb(self) -> None:
        """Stop ovsdb-server; the database file stays."""
        self._stop("ovsdb-server")
        self.db_socket.unlink(missing_ok=True)

    def stop(self) -> None:
        self.stop_vswitchd()
        self.stop_ovsdb()

    def cleanup(self) -> None:
        """Stop both daemons and remove everything the sandbox made."""
        pid = self.pid("ovs-vswitchd")
        if pid is not None and not self._own_netns:
            # In a namespace we don't own, `exit --cleanup` removes the datapath's tap devices
            # (bridges, internal ports) that a plain SIGTERM leaves behind. It answers before
            # the teardown is done: let it finish rather than signal it halfway.
            with contextlib.suppress(OvsSandboxError):  # stop() falls back to signals
                self.appctl("exit", "--cleanup")
                _wait_gone(pid, self.timeout)
        self.stop()
        shutil.rmtree(self.rundir, ignore_errors=True)
        if self._own_netns and self.netns:
            subprocess.run(["ip", "netns", "delete", self.netns], capture_output=True)
            self._own_netns = False
            self.netns = None

    # --- commands --------------------------------------------------------------------------

    def vsctl(self, *args: str) -> str:
        """ovs-vsctl against this database (with a timeout: vswitchd may be down)."""
        timeout = [] if any(a.startswith("--timeout") for a in args) else ["--timeout=10"]
        return self._run(["ovs-vsctl", f"--db={self.db_remote}", *timeout, *args])

    def ofctl(self, *args: str) -> str:
        """ovs-ofctl; a bare bridge name means this sandbox's `<bridge>.mgmt` (OVS_RUNDIR)."""
        return self._run(["ovs-ofctl", *args])

    def appctl(self, *args: str, daemon: Daemon = "ovs-vswitchd") -> str:
        """ovs-appctl against one of this sandbox's daemons."""
        return self._run(["ovs-appctl", "-t", str(self.ctl_socket(daemon)), *args])

    def log_tail(self, daemon: Daemon, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            text = self.log_file(daemon).read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # --- internals -------------------------------------------------------------------------

    def _prepare(self) -> None:
        require_ovs_binaries()
        self.rundir.mkdir(parents=True, exist_ok=True)
        if self.netns is None:
            self.netns = f"plumb-ovs-{secrets.token_hex(4)}"
            self._own_netns = True
        if not Path(f"/run/netns/{self.netns}").exists():
            if not self._own_netns:
                raise OvsSandboxError(f"network namespace {self.netns} does not exist")
            self._run(["ip", "netns", "add", self.netns])
            self._run(["ip", "-n", self.netns, "link", "set", "lo", "up"])

    def _spawn(self, daemon: Daemon, args: list[str]) -> None:
        """Start a daemon with --detach; the command returns once the daemon is initialised."""
        cmd = [
            daemon,
            *args,
            f"--pidfile={self.pidfile(daemon)}",
            f"--unixctl={self.ctl_socket(daemon)}",
            f"--log-file={self.log_file(daemon)}",
            "--detach",
            "--no-chdir",
        ]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        try:
            self._run(cmd, timeout=self.timeout)
        except OvsSandboxError as exc:
            self._stop(daemon)  # one that detached but never finished starting must not linger
            raise OvsSandboxError(f"{exc}\n{daemon} log:\n{self.log_tail(daemon)}") from exc

    def _wait_ready(self, daemon: Daemon, probe: Callable[[], object]) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                probe()
                return
            except OvsSandboxError as exc:
                if time.monotonic() > deadline:
                    self._stop(daemon)
                    raise OvsSandboxError(
                        f"{daemon} did not answer within {self.timeout:g}s in {self.rundir}: "
                        f"{exc}\n{daemon} log:\n{self.log_tail(daemon)}"
                    ) from exc
            time.sleep(0.01)

    def _stop(self, daemon: Daemon) -> None:
        pid = self.pid(daemon)
        if pid is not None:
            _terminate(pid, self.timeout)
        # After SIGKILL the daemon could not remove its files; stale ones would mislead.
        self.pidfile(daemon).unlink(missing_ok=True)
        self.ctl_socket(daemon).unlink(missing_ok=True)

    def _run(self, cmd: Sequence[str], timeout: float | None = None) -> str:
        limit = self.timeout if timeout is None else timeout
        try:
            done = subprocess.run(
                list(cmd), env=self._env, capture_output=True, text=True, timeout=limit, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise OvsSandboxError(f"{' '.join(cmd)}: no answer within {limit:g}s") from exc
        if done.returncode != 0:
            detail = done.stderr.strip() or done.stdout.strip()
            raise OvsSandboxError(f"{' '.join(cmd)}: {detail}")
        return done.stdout


def _live_pid(pidfile: Path) -> int | None:
    """The PID in `pidfile` if that process runs and is the daemon that wrote the file.

    The command-line check guards against a recycled PID: only a process whose arguments name
    this very pidfile is ever signalled.
    """
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    if f"--pidfile={pidfile}".encode() not in cmdline or not _alive(pid):
        return None
    return pid


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie.

    A detached daemon's parent is PID 1, which may reap it seconds after it exits; waiting for
    the PID to vanish would make every stop take that long.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the parenthesised command name (which may hold spaces).
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait up to `timeout` for the process to end; True if it did."""
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM, then SIGKILL if the process is still there after `timeout`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if _wait_gone(pid, timeout):
            return
    raise OvsSandboxError(f"process {pid} survived SIGKILL")
