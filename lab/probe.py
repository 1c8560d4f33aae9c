"""Connectivity probes between lab pods, one at a time or as a whole matrix.

A probe's socket is created inside the source pod's network namespace (by a thread that entered
it; the socket stays there) and driven from this process's event loop, so a matrix of hundreds
of probes runs concurrently (at most MAX_IN_FLIGHT at once) with no process per probe: it takes
about one timeout per MAX_IN_FLIGHT probes even when everything is blocked.

TCP and SCTP: connect (a second attempt races the first from half the timeout on, since a SYN
lost while a path warms up is resent only after a second). UDP: send, expect the echo (re-sent
every 200 ms, since one datagram may be lost while flows or ARP settle).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import resource
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from cni.netns import in_netns
from lab.host import netns_path

PROTOCOLS: Final = ("TCP", "UDP", "SCTP")
NO_SCTP: Final = "no SCTP in this kernel"
UDP_RESEND: Final = 0.2
# Every probe is a new connection, so a flow miss and a conntrack entry in the userspace
# datapath: with 200 or more at once some SYNs are dropped (50 pods, 2,500 probes, 1 s timeout:
# a few dozen false "blocked"); at 128 none are, and 2,500 probes still take under 2 s.
MAX_IN_FLIGHT: Final = 128
_KIND: Final = {
    "TCP": (socket.SOCK_STREAM, 0),
    "UDP": (socket.SOCK_DGRAM, 0),
    "SCTP": (socket.SOCK_STREAM, socket.IPPROTO_SCTP),
}


@dataclass(frozen=True)
class Endpoint:
    """A pod as probes see it: its `namespace/name`, network namespace and IPv4 address."""

    ref: str
    netns: str
    ip: str


@dataclass(frozen=True)
class Probe:
    src: Endpoint
    dst: Endpoint
    port: int
    protocol: str


@dataclass(frozen=True)
class ProbeResult:
    probe: Probe
    connected: bool
    ms: float
    detail: str = ""  # why not: "timeout", "refused", ...
    skipped: str = ""  # the probe could not be made at all (e.g. no SCTP)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "from": self.probe.src.ref,
            "to": self.probe.dst.ref,
            "port": self.probe.port,
            "protocol": self.probe.protocol,
            "connected": self.connected,
            "ms": round(self.ms, 2),
        }
        if self.skipped:
            out["skipped"] = self.skipped
        elif self.detail:
            out["detail"] = self.detail
        return out


def run_probes(probes: Sequence[Probe], timeout: float) -> list[ProbeResult]:
    """Run every probe concurrently (at most MAX_IN_FLIGHT at once); results in input order."""
    _raise_file_limit(min(len(probes), MAX_IN_FLIGHT) + 64)
    return asyncio.run(_run_all(probes, timeout))


async def _run_all(probes: Sequence[Probe], timeout: float) -> list[ProbeResult]:
    gate = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def one(probe: Probe) -> ProbeResult:
        async with gate:
            return await _probe(probe, timeout)

    return list(await asyncio.gather(*(one(p) for p in probes)))


async def _probe(probe: Probe, timeout: float) -> ProbeResult:
    start = time.monotonic()

    def result(connected: bool, detail: str = "", skipped: str = "") -> ProbeResult:
        return ProbeResult(probe, connected, (time.monotonic() - start) * 1000, detail, skipped)

    try:
        sock = await _socket_in(probe.src.netns, probe.protocol)
    except OSError as exc:
        if probe.protocol == "SCTP" and exc.errno in (errno.EPROTONOSUPPORT, errno.ESOCKTNOSUPPORT):
            return result(False, skipped=NO_SCTP)
        return result(False, skipped=f"cannot open a socket in {probe.src.netns}: {exc}")
    addr = (probe.dst.ip, probe.port)
    with sock:
        sock.setblocking(False)
        try:
            if probe.protocol == "UDP":
                await asyncio.wait_for(_udp_echo(sock, addr), timeout)
            else:
                await asyncio.wait_for(_connect(sock, probe, addr, timeout), timeout)
        except TimeoutError:
            return result(False, "timeout")
        except ConnectionRefusedError:
            return result(False, "refused")
        except OSError as exc:
            return result(False, exc.strerror or str(exc))
    return result(True)


async def _connect(
    first: socket.socket, probe: Probe, addr: tuple[str, int], timeout: float
) -> None:
    """Connect; halfway through the timeout, race a second connection from a fresh socket.

    A SYN can be lost while a path warms up (a new flow, a cold neighbour cache), and Linux
    resends it only after one second, so a short timeout would report a working path as
    blocked. The second attempt (a new port, a new SYN) bounds that; a blocked path still costs
    one timeout. Kubernetes' e2e probes retry for the same reason."""
    loop = asyncio.get_running_loop()
    extra: list[socket.socket] = []

    async def second() -> None:
        await asyncio.sleep(timeout / 2)
        sock = await _socket_in(probe.src.netns, probe.protocol)
        extra.append(sock)
        sock.setblocking(False)
        await loop.sock_connect(sock, addr)

    tasks = [asyncio.ensure_future(loop.sock_connect(first, addr)), asyncio.ensure_future(second())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # raises the attempt's error (refused, unreachable)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sock in extra:
            sock.close()


async def _socket_in(netns: str, protocol: str) -> socket.socket:
    """A socket made inside `netns` by a short-lived thread (setns moves only that thread)."""
    kind, proto = _KIND[protocol]

    def make() -> socket.socket:
        fd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
        try:
            return in_netns(fd, lambda: socket.socket(socket.AF_INET, kind, proto))
        finally:
            os.close(fd)

    return await asyncio.get_running_loop().run_in_executor(None, make)


async def _udp_echo(sock: socket.socket, addr: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    sock.connect(addr)  # a connected UDP socket reports ICMP port unreachable as refused
    payload = os.urandom(16)
    while True:
        sock.send(payload)
        with contextlib.suppress(TimeoutError):
            reply = await asyncio.wait_for(loop.sock_recv(sock, 2048), UDP_RESEND)
            if reply == payload:
                return


def _raise_file_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


# --- the matrix --------------------------------------------------------------------------------


def matrix_probes(
    pods: Sequence[Endpoint], ports: Iterable[int], protocols: Iterable[str]
) -> list[Probe]:
    """Every ordered pair (a pod to itself included, as the Kubernetes e2e tables do), per port
    and protocol."""
    return [
        Probe(src, dst, port, protocol)
        for protocol in protocols
        for port in ports
        for src in pods
        for dst in pods
    ]


def truth_table(pods: Sequence[str], results: Sequence[ProbeResult], port: int, proto: str) -> str:
    """One port and protocol as a Kubernetes e2e truth table: rows from, columns to, tab
    separated, '.' connected, 'X' not, '?' not probed (skipped)."""
    marks: dict[tuple[str, str], str] = {}
    for r in results:
        if r.probe.port == port and r.probe.protocol == proto:
            mark = "." if r.connected else ("?" if r.skipped else "X")
            marks[(r.probe.src.ref, r.probe.dst.ref)] = mark
    lines = ["\t".join(["-", *pods])]
    for src in pods:
        lines.append("\t".join([src, *(marks.get((src, dst), "?") for dst in pods)]))
    return "\n".join(lines)


def matrix_text(
    pods: Sequence[str],
    results: Sequence[ProbeResult],
    ports: Sequence[int],
    protocols: Sequence[str],
) -> str:
    """Every port and protocol's truth table, then a summary line."""
    blocks = []
    for proto in protocols:
        for port in ports:
            blocks.append(f"{proto}/{port}\n{truth_table(pods, results, port, proto)}")
    connected = sum(r.connected for r in results)
    skipped = {r.skipped for r in results if r.skipped}
    summary = f"{connected}/{len(results)} connected"
    if skipped:
        summary += f"; skipped: {'; '.join(sorted(skipped))}"
    return "\n\n".join([*blocks, summary]) + "\n"


def matrix_json(pods: Sequence[str], results: Sequence[ProbeResult]) -> dict[str, object]:
    return {
        "pods": list(pods),
        "results": [
            {
                k: v
                for k, v in r.to_json().items()
                if k in ("from", "to", "port", "protocol", "connected")
            }
            for r in results
        ],
    }
