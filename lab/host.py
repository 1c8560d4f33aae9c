"""The lab's hands on the host: network namespaces, veths, sysctls and background processes.

Everything here acts on names and PIDs it is given, never on patterns: a namespace is deleted
by its exact name, a process is signalled only when its command line still names the file the
lab recorded for it (so a recycled PID is never hit).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from cni.netns import in_netns

NETNS_DIR = Path("/run/netns")


class HostError(RuntimeError):
    """A host command failed (the message holds the command and its error output)."""


def run(cmd: Sequence[str], timeout: float = 15.0, check: bool = True) -> str:
    """Run a command, return its stdout; HostError on failure or timeout."""
    try:
        done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise HostError(f"{' '.join(cmd)}: no answer within {timeout:g}s") from exc
    if check and done.returncode != 0:
        raise HostError(f"{' '.join(cmd)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def in_ns(netns: str, *cmd: str) -> list[str]:
    """The command line that runs `cmd` inside `netns`."""
    return ["ip", "netns", "exec", netns, *cmd]


# --- namespaces --------------------------------------------------------------------------------


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def netns_path(name: str) -> str:
    return str(NETNS_DIR / name)


def ensure_netns(name: str) -> bool:
    """Create the namespace with `lo` up; False if it was already there."""
    if netns_exists(name):
        return False
    run(["ip", "netns", "add", name])
    run(["ip", "-n", name, "link", "set", "lo", "up"])
    return True


def delete_netns(name: str) -> bool:
    """Delete the namespace by its exact name; its veth ends go with it. False if absent."""
    if not netns_exists(name):
        return False
    run(["ip", "netns", "delete", name])
    return True


def sysctl(netns: str, key: str, value: str) -> None:
    """Write a sysctl inside `netns` (only `net.*` keys are per namespace)."""
    run(in_ns(netns, "sysctl", "-qw", f"{key}={value}"))


# --- links -------------------------------------------------------------------------------------


def link_exists(netns: str, ifname: str) -> bool:
    done = subprocess.run(
        ["ip", "-n", netns, "link", "show", "dev", ifname], capture_output=True, check=False
    )
    return done.returncode == 0


def ensure_veth(netns_a: str, name_a: str, netns_b: str, name_b: str, mtu: int) -> None:
    """A veth pair between two namespaces, both ends up, TX checksum offload off on both.

    Offload stays off because the userspace datapath forwards what the kernel hands it as is:
    a packet whose checksum was left to "the hardware" would arrive broken.
    """
    if not link_exists(netns_a, name_a):
        end_a = [name_a, "netns", netns_a, "mtu", str(mtu)]
        end_b = [name_b, "netns", netns_b, "mtu", str(mtu)]
        run(["ip", "link", "add", *end_a, "type", "veth", "peer", "name", *end_b])
    for netns, name in ((netns_a, name_a), (netns_b, name_b)):
        run(in_ns(netns, "ethtool", "-K", name, "tx", "off"))
        run(["ip", "-n", netns, "link", "set", name, "up"])


def ensure_address(netns: str, ifname: str, cidr: str) -> None:
    """Add `cidr` to the link (idempotent) and bring it up."""
    if cidr.split("/")[0] not in run(["ip", "-n", netns, "-4", "-o", "addr", "show", ifname]):
        run(["ip", "-n", netns, "addr", "add", cidr, "dev", ifname])
    run(["ip", "-n", netns, "link", "set", ifname, "up"])


def socket_in(netns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket created inside `netns` (it stays there); no process is forked."""
    fd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        return in_netns(fd, lambda: socket.socket(family, kind, proto))
    finally:
        os.close(fd)


# --- processes ---------------------------------------------------------------------------------


def spawn(
    cmd: Sequence[str], log: Path, pidfile: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `cmd` in the background in a session of its own (so no terminal signal reaches
    it), output to `log`; its PID goes to `pidfile`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    pidfile.write_text(f"{proc.pid}\n")
    return proc


def live_pid(pidfile: Path, marker: str) -> int | None:
    """The PID in `pidfile` if that process is alive and its command line contains `marker`
    (the config or record path the lab gave it), else None."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_matches(pid, marker) else None


def pid_matches(pid: int, marker: str) -> bool:
    """True while `pid` runs (not a zombie) and its command line contains `marker`."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return pid_alive(pid) and marker.encode() in cmdline


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (its command line may be changing: during
    an exec /proc/PID/cmdline can read empty)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the parenthesised command name (which may hold spaces).
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def terminate(pid: int, marker: str, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`, a process that still matches `marker`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not pid_matches(pid, marker):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while pid_matches(pid, marker) and time.monotonic() < deadline:
            time.sleep(0.01)
        _reap(pid)
    if pid_matches(pid, marker):
        raise HostError(f"process {pid} survived SIGKILL")


def _reap(pid: int) -> None:
    """Collect our own child's exit status, so it does not stay behind as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
