"""A private Open vSwitch: ovsdb-server and ovs-vswitchd with their own run, db and log directory.

Used by the tests, the benchmarks and the lab. Userspace datapath only (no kernel module needed);
optionally inside a network namespace. Daemons are stopped by the PIDs in their own pidfiles,
never by name, so several sandboxes and the system's OVS can run side by side.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
BINARIES = ("ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-ofctl", "ovs-appctl")


class OvsBinariesMissing(RuntimeError):
    """Open vSwitch is not installed."""


class OvsSandboxError(RuntimeError):
    """A daemon failed to start or a command against the sandbox failed."""


def require_ovs_binaries() -> None:
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing or not SCHEMA.exists():
        what = ", ".join(missing) or str(SCHEMA)
        raise OvsBinariesMissing(
            f"Open vSwitch not found ({what}): apt-get install openvswitch-switch"
        )


@dataclass
class OvsSandbox:
    """One private OVS instance rooted at `rundir`.

    The userspace datapath owns a tap device named `ovs-netdev` in its network namespace, so
    two ovs-vswitchd instances cannot share one namespace. Without `netns`, the sandbox makes
    a namespace of its own (named after the rundir) and removes it on cleanup.
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
    def db_remote(self) -> str:
        return f"unix:{self.rundir / 'db.sock'}"

    def mgmt_socket(self, bridge: str) -> Path:
        return self.rundir / f"{bridge}.mgmt"

    def _pidfile(self, daemon: str) -> Path:
        return self.rundir / f"{daemon}.pid"

    # --- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> OvsSandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def start(self) -> None:
        """Start both daemons (those not already running) and wait until they answer."""
        require_ovs_binaries()
        self.rundir.mkdir(parents=True, exist_ok=True)
        if self.netns is None:
            self.netns = f"plumb-ovs-{abs(hash(str(self.rundir))) % 10**8:08d}"
            self._own_netns = True
        if self._own_netns and not Path(f"/run/netns/{self.netns}").exists():
            subprocess.run(["ip", "netns", "add", self.netns], check=True)
            subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], check=True)
        if not self.db_path.exists():
            self._run(["ovsdb-tool", "create", str(self.db_path), str(SCHEMA)], in_netns=False)
        self.start_ovsdb()
        self.start_vswitchd()

    def start_ovsdb(self) -> None:
        if self.pid("ovsdb-server") is not None:
            return
        self._daemon(
            "ovsdb-server",
            [
                str(self.db_path),
                f"--remote=punix:{self.rundir / 'db.sock'}",
                f"--unixctl={self.rundir / 'ovsdb-server.ctl'}",
            ],
        )
        self._wait(lambda: (self.rundir / "db.sock").exists(), "ovsdb-server")
        self.vsctl("--no-wait", "init")

    def start_vswitchd(self) -> None:
        if self.pid("ovs-vswitchd") is not None:
            return
        self._daemon(
            "ovs-vswitchd",
            [self.db_remote, f"--unixctl={self.rundir / 'ovs-vswitchd.ctl'}"],
        )
        self._wait(self._vswitchd_answers, "ovs-vswitchd")

    def _daemon(self, name: str, args: list[str]) -> None:
        cmd = [
            name,
            *args,
            f"--pidfile={self._pidfile(name)}",
            f"--log-file={self.rundir / (name + '.log')}",
            "--detach",
            "--no-chdir",
        ]
        self._run(cmd)

    def _vswitchd_answers(self) -> bool:
        ctl = self.rundir / "ovs-vswitchd.ctl"
        if not ctl.exists():
            return False
        done = subprocess.run(
            ["ovs-appctl", "-t", str(ctl), "version"], env=self._env, capture_output=True
        )
        return done.returncode == 0

    def _wait(self, ready: object, what: str) -> None:
        assert callable(ready)
        deadline = time.monotonic() + self.timeout
        while not ready():
            if time.monotonic() > deadline:
                raise OvsSandboxError(f"{what} did not come up in {self.rundir}: {self._log(what)}")
            time.sleep(0.02)

    def _log(self, daemon: str) -> str:
        log = self.rundir / f"{daemon}.log"
        return log.read_text()[-2000:] if log.exists() else "(no log)"

    def pid(self, daemon: str) -> int | None:
        """The daemon's PID when it is running."""
        try:
            pid = int(self._pidfile(daemon).read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def stop_vswitchd(self) -> None:
        self._stop("ovs-vswitchd")

    def stop_ovsdb(self) -> None:
        self._stop("ovsdb-server")

    def stop(self) -> None:
        self.stop_vswitchd()
        self.stop_ovsdb()

    def cleanup(self) -> None:
        """Stop both daemons and remove everything the sandbox made."""
        self.stop()
        shutil.rmtree(self.rundir, ignore_errors=True)
        if self._own_netns and self.netns:
            subprocess.run(["ip", "netns", "delete", self.netns], capture_output=True)
            self._own_netns = False
            self.netns = None

    def _stop(self, daemon: str) -> None:
        pid = self.pid(daemon)
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.timeout
        while _alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
        self._pidfile(daemon).unlink(missing_ok=True)

    # --- commands --------------------------------------------------------------------------

    def vsctl(self, *args: str) -> str:
        cmd = ["ovs-vsctl", f"--db={self.db_remote}", "--timeout=10", *args]
        return self._run(cmd, in_netns=False)

    def ofctl(self, *args: str) -> str:
        return self._run(["ovs-ofctl", *args], in_netns=False)

    def appctl(self, *args: str) -> str:
        ctl = self.rundir / "ovs-vswitchd.ctl"
        return self._run(["ovs-appctl", "-t", str(ctl), *args], in_netns=False)

    def _run(self, cmd: list[str], in_netns: bool = True) -> str:
        if in_netns and self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        done = subprocess.run(cmd, env=self._env, capture_output=True, text=True)
        if done.returncode != 0:
            raise OvsSandboxError(f"{' '.join(cmd)}: {done.stderr.strip()}")
        return done.stdout


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
