"""Pod addresses reserved inside the agent, in host-local's own on-disk store: one file per
address, `<dataDir>/<network>/<ip>`, holding `<containerID>\\r\\n<ifname>`; the round-robin
position in `last_reserved_ip.0`; every change under an flock on `<dataDir>/<network>/lock`
(HL-03, HL-04, CONC-01).

A reservation is a file created with O_EXCL under that lock, so an address is never handed out
twice: not to concurrent ADDs (threads or processes), not after an agent restart (the files
outlive it), not to a host-local plugin serving the same network meanwhile (same files, same
lock). Switching a network's conflist between `plumb` and `host-local` keeps every reservation.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, ip_address
from typing import Final

from cni.protocol import Attachment, CniError, ErrorCode

LOCK_FILE: Final = "lock"
LAST_RESERVED: Final = "last_reserved_ip.0"  # range set 0: the node has one IPv4 range
LINE_BREAK: Final = "\r\n"  # host-local's separator between container id and ifname


@dataclass(frozen=True)
class AddressRange:
    """The node's PodCIDR as host-local sees it with only `subnet` and `gateway` set: the
    gateway is the first host address; allocation runs from the next one to broadcast - 1."""

    subnet: IPv4Network
    gateway: IPv4Address

    @classmethod
    def of(cls, pod_cidr: IPv4Network) -> AddressRange:
        """HL-02: an IPv4 /31 or /32 is too small to allocate from."""
        if pod_cidr.prefixlen > 30:
            raise CniError(
                ErrorCode.INVALID_NETWORK_CONFIG,
                "network too small to allocate from",
                str(pod_cidr),
            )
        return cls(pod_cidr, pod_cidr.network_address + 1)

    @property
    def first(self) -> IPv4Address:
        return self.subnet.network_address + 1

    @property
    def last(self) -> IPv4Address:
        return self.subnet.broadcast_address - 1

    @property
    def size(self) -> int:
        """Addresses that can be handed out: every host address but the gateway."""
        return int(self.last) - int(self.first)

    def usable(self, address: IPv4Address) -> bool:
        return self.first <= address <= self.last and address != self.gateway

    def round_robin(self, last: IPv4Address | None) -> Iterator[IPv4Address]:
        """HL-04: every usable address once, starting after `last` and wrapping around (from
        the start of the range when `last` is not in it)."""
        first, last_int = int(self.first), int(self.last)
        span = last_int - first + 1
        start = int(last) + 1 if last is not None and self.first <= last <= self.last else first
        for i in range(span):
            candidate = IPv4Address(first + (start - first + i) % span)
            if candidate != self.gateway:
                yield candidate


def owner_of(content: str) -> tuple[str, str | None]:
    """(container id, ifname) from a reservation file; ifname None in older id-only files
    (HL-06). Whitespace around either is tolerated."""
    lines = [line.strip() for line in content.splitlines() if line.strip()]
    if not lines:
        return "", None
    return lines[0], lines[1] if len(lines) > 1 else None


def belongs_to(content: str, attachment: Attachment) -> bool:
    cid, ifname = owner_of(content)
    return cid == attachment.container_id and ifname in (None, attachment.ifname)


def stale_reservations(entries: Mapping[str, str], valid: frozenset[Attachment]) -> list[str]:
    """Reservation files (name -> content) that belong to no valid attachment (GC-03). An
    id-only file is kept while any interface of its container is valid."""
    valid_ids = {a.container_id for a in valid}
    stale = []
    for name, content in entries.items():
        if not is_address(name):
            continue  # lock, last_reserved_ip.N
        cid, ifname = owner_of(content)
        keep = Attachment(cid, ifname) in valid if ifname is not None else cid in valid_ids
        if not keep:
            stale.append(name)
    return sorted(stale)


def is_address(name: str) -> bool:
    try:
        ip_address(name)
    except ValueError:
        return False
    return True


class AddressStore:
    """One network's directory in host-local's format. Methods that change it expect the caller
    to hold `locked()` (host-local's flock), so that read-then-change steps are one."""

    def __init__(self, data_dir: str, network: str) -> None:
        if not network or "/" in network or network in (".", ".."):
            raise CniError(ErrorCode.INVALID_NETWORK_CONFIG, "invalid network name", network)
        self.directory = os.path.join(data_dir, network)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        os.makedirs(self.directory, mode=0o755, exist_ok=True)
        fd = os.open(os.path.join(self.directory, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor drops the flock

    def reserve(self, address: IPv4Address, attachment: Attachment) -> bool:
        """Create the address's file for `attachment` (call locked); False if it exists."""
        path = os.path.join(self.directory, str(address))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, f"{attachment.container_id}{LINE_BREAK}{attachment.ifname}".encode())
        except OSError:
            os.close(fd)
            os.unlink(path)  # no half-written reservation left behind
            raise
        os.close(fd)
        return True

    def last_reserved(self) -> IPv4Address | None:
        try:
            with open(os.path.join(self.directory, LAST_RESERVED), encoding="ascii") as f:
                return IPv4Address(f.read().strip())
        except (OSError, ValueError):
            return None  # host-local, too, starts over from the range start

    def set_last_reserved(self, address: IPv4Address) -> None:
        with open(os.path.join(self.directory, LAST_RESERVED), "w", encoding="ascii") as f:
            f.write(str(address))

    def entries(self) -> dict[str, str]:
        """Every reservation: address -> file content."""
        out: dict[str, str] = {}
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.directory):
                if is_address(name):
                    content = self._read(name)
                    if content is not None:
                        out[name] = content
        return out

    def held_by(self, attachment: Attachment) -> list[str]:
        return sorted(n for n, c in self.entries().items() if belongs_to(c, attachment))

    def release(self, names: Iterable[str]) -> None:
        """Remove these reservation files (call locked); missing ones are fine."""
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.directory, name))

    def _read(self, name: str) -> str | None:
        # os-level reads: a DEL reads every reservation (as host-local does), so keep it cheap.
        try:
            fd = os.open(os.path.join(self.directory, name), os.O_RDONLY)
        except FileNotFoundError:
            return None  # released meanwhile
        try:
            return os.read(fd, 4096).decode("utf-8", "replace")
        finally:
            os.close(fd)


class Allocator:
    """Reserves and releases pod addresses of one node's range, per network."""

    def __init__(self, pod_cidr: IPv4Network, data_dir: str) -> None:
        self.range = AddressRange.of(pod_cidr)
        self.data_dir = data_dir

    def store(self, network: str) -> AddressStore:
        return AddressStore(self.data_dir, network)

    def allocate(
        self, network: str, attachment: Attachment, requested: IPv4Address | None = None
    ) -> IPv4Address:
        """One address for the attachment: `requested` (HL-05) or the next free one after the
        last reserved (HL-04)."""
        store = self.store(network)
        with store.locked():
            if requested is not None:
                return self._reserve_requested(store, requested, attachment)
            for candidate in self.range.round_robin(store.last_reserved()):
                if store.reserve(candidate, attachment):
                    store.set_last_reserved(candidate)
                    return candidate
        raise CniError(
            ErrorCode.IPAM_FAILURE,
            "no IP addresses available in range set",
            f"{self.range.first}-{self.range.last}",
        )

    def _reserve_requested(
        self, store: AddressStore, address: IPv4Address, attachment: Attachment
    ) -> IPv4Address:
        if not self.range.usable(address):
            raise CniError(
                ErrorCode.IPAM_FAILURE,
                f"requested IP address {address} is not usable",
                f"not in {self.range.first}-{self.range.last} or the gateway",
            )
        if not store.reserve(address, attachment):
            raise CniError(
                ErrorCode.IPAM_FAILURE,
                f"requested IP address {address} is not available",
                f"already reserved in {store.directory}",
            )
        store.set_last_reserved(address)
        return address

    def release(self, network: str, attachment: Attachment) -> list[str]:
        """HL-06: every address the attachment holds (also id-only files); none is fine."""
        store = self.store(network)
        if not os.path.isdir(store.directory):
            return []
        with store.locked():
            held = store.held_by(attachment)
            store.release(held)
        return held

    def held(self, network: str, attachment: Attachment) -> list[str]:
        return self.store(network).held_by(attachment)

    def release_stale(self, network: str, valid: frozenset[Attachment]) -> list[str]:
        """GC: remove every reservation whose attachment is not in `valid`."""
        store = self.store(network)
        if not os.path.isdir(store.directory):
            return []
        with store.locked():
            stale = stale_reservations(store.entries(), valid)
            store.release(stale)
        return stale

    def free(self, network: str) -> int:
        in_range = [n for n in self.store(network).entries() if self._in_range(n)]
        return max(0, self.range.size - len(in_range))

    def _in_range(self, name: str) -> bool:
        address = ip_address(name)
        return isinstance(address, IPv4Address) and self.range.usable(address)
