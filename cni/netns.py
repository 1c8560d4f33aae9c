"""Pod plumbing with pyroute2: the veth pair whose container end is CNI_IFNAME inside CNI_NETNS
(address, routes, MTU, UP) and whose host end will become the pod's OVS port; its removal; and
reading the container end back for CHECK.

Speed matters (ADD p50 target ~26 ms end to end). pyroute2's `NetNS`/`IPRoute(netns=...)` fork a
helper process per namespace (~11 ms), so we never use them: the peer is created directly inside
the namespace (IFLA_NET_NS_FD, with its final name, MAC and MTU), and the rest of the container
side is configured from a short-lived thread that has `setns()`-ed into the namespace. `setns`
changes only the calling thread's namespace; that thread opens its netlink socket there.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import os
import re
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import ip_address, ip_interface, ip_network
from typing import Any, Final, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cni.protocol import AddRejected, CniError, ErrorCode, IPAddress, IPInterface, IPNetwork

CLONE_NEWNET: Final = 0x40000000
SIOCETHTOOL: Final = 0x8946
ETHTOOL_STXCSUM: Final = 0x17
IFNAMSIZ: Final = 16
HASH_LEN: Final = 8
MAX_IFNAME: Final = 15

_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


@dataclass(frozen=True)
class RouteSpec:
    dst: IPNetwork
    gw: IPAddress | None = None


@dataclass(frozen=True)
class VethPair:
    """The pair `create_pair` makes; the caller has chosen names and MACs."""

    host_ifname: str
    host_mac: str
    ifname: str
    netns: str
    mac: str
    mtu: int
    tx_checksum_off: bool = False


@dataclass(frozen=True)
class Addressing:
    """What `configure_container` puts on the container end."""

    addresses: tuple[IPInterface, ...]
    routes: tuple[RouteSpec, ...]


@dataclass(frozen=True)
class ContainerLink:
    """The container end as the kernel has it (for CHECK)."""

    ifname: str
    mac: str
    mtu: int
    up: bool
    addresses: tuple[IPInterface, ...]
    routes: tuple[RouteSpec, ...]


# ---------------------------------------------------------------------------------------------
# Pure helpers


def host_ifname(pod_name: str, container_id: str, ifname: str) -> str:
    """The host end's name: up to 6 characters of the pod name (the container id when the
    runtime sent no pod name, ENV-06), a dash, 8 hex of a hash of (container id, ifname): 15
    characters at most, deterministic, distinct per attachment (ADD-09)."""
    base = re.sub(r"[^a-z0-9-]", "", (pod_name or container_id).lower()).strip("-")[:6]
    base = base.rstrip("-") or "pod"
    return f"{base}-{attachment_hash(container_id, ifname)}"


def attachment_hash(container_id: str, ifname: str) -> str:
    return hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()[:HASH_LEN]


def random_mac() -> str:
    """A locally administered unicast MAC."""
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in raw)


# ---------------------------------------------------------------------------------------------
# Namespaces


def open_netns(path: str) -> int:
    """ENV-05: an fd on the namespace file (/run/netns/X, /var/run/netns/X, /proc/PID/ns/net).
    An unopenable path is error 8 (a file that is no netns fails the veth creation, also 8)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise AddRejected(
            ErrorCode.INVALID_NETNS, "failed to open netns", f"{path}: {exc}"
        ) from exc


def is_own_netns(path: str) -> bool:
    """Whether `path` is the namespace the agent itself runs in (skel refuses that, code 8)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    mine = os.stat("/proc/thread-self/ns/net")
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def enter_netns(path: str) -> None:
    """Move the calling thread (only it) into the namespace at `path`; threads it starts later
    are born there too. For a server that works on behalf of a node namespace."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def in_netns(fd: int, work: Callable[[], T]) -> T:
    """Run `work` in a fresh thread that has entered the namespace `fd`. Everything `work`
    opens (netlink and ioctl sockets) lives in that namespace; no process is forked."""
    box: dict[str, Any] = {}

    def runner() -> None:
        # The thread dies afterwards; its namespace goes with it, so no way back is needed.
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns: {os.strerror(err)}")
            box["value"] = work()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=runner, name="plumb-netns")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


@contextmanager
def _iproute() -> Iterator[Any]:
    ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


# ---------------------------------------------------------------------------------------------
# Create


def create_pair(pair: VethPair) -> None:
    """The veth pair: the container end created inside the netns with its final name, MAC and
    MTU (ADD-01), the host end UP. Raises AddRejected when CNI_IFNAME already exists in the
    container (ADD-02) or the netns is unusable (ENV-05), CniError(102) on other failures."""
    fd = open_netns(pair.netns)
    try:
        _add_pair(pair, fd)
    finally:
        os.close(fd)
    try:
        if pair.tx_checksum_off:
            _tx_checksum_off(pair.host_ifname)
        with _iproute() as ipr:
            ipr.link("set", ifname=pair.host_ifname, state="up")
    except (NetlinkError, OSError) as exc:
        raise _interface_error("failed to bring up the host end", exc) from exc


def configure_container(
    netns: str, ifname: str, addressing: Addressing, tx_checksum_off: bool = False
) -> None:
    """ADD-07: the container end UP with its addresses and routes (and TX checksum offload off
    on the userspace datapath), configured from a thread inside the netns."""
    fd = open_netns(netns)
    try:
        in_netns(fd, lambda: _configure_container_end(ifname, addressing, tx_checksum_off))
    except (NetlinkError, OSError) as exc:
        raise _interface_error("failed to configure the pod interface", exc) from exc
    finally:
        os.close(fd)


def _interface_error(msg: str, exc: Exception) -> CniError:
    return CniError(ErrorCode.INTERFACE_FAILURE, msg, str(exc))


def _add_pair(spec: VethPair, fd: int) -> None:
    peer = {"ifname": spec.ifname, "net_ns_fd": fd, "address": spec.mac, "mtu": spec.mtu}
    with _iproute() as ipr:
        for attempt in (1, 2):
            try:
                ipr.link(
                    "add",
                    ifname=spec.host_ifname,
                    kind="veth",
                    peer=peer,
                    address=spec.host_mac,
                    mtu=spec.mtu,
                )
                return
            except NetlinkError as exc:
                if exc.code == errno.EINVAL:
                    raise AddRejected(
                        ErrorCode.INVALID_NETNS, "not a network namespace", spec.netns
                    ) from exc
                if exc.code != errno.EEXIST:
                    raise _interface_error("failed to create the veth pair", exc) from exc
                if attempt == 2 or not _link_exists(ipr, spec.host_ifname):
                    raise AddRejected(
                        ErrorCode.INTERFACE_FAILURE,
                        f"interface {spec.ifname} already exists in the container",
                        f"netns {spec.netns}",
                    ) from exc
                # A host end with this attachment's name is a leftover of an earlier failed
                # attempt at this very attachment (the name hashes its id and ifname).
                _delete_link(ipr, spec.host_ifname)


def _configure_container_end(ifname: str, addressing: Addressing, tx_checksum_off: bool) -> None:
    with _iproute() as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        if tx_checksum_off:
            _tx_checksum_off(ifname)
        for address in addressing.addresses:
            ipr.addr(
                "add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen
            )
        ipr.link("set", index=index, state="up")
        for route in addressing.routes:
            _add_route(ipr, index, route)


def _add_route(ipr: Any, index: int, route: RouteSpec) -> None:
    kwargs: dict[str, Any] = {"dst": str(route.dst), "oif": index}
    if route.gw is not None:
        kwargs["gateway"] = str(route.gw)
    if route.dst.version == 6:
        kwargs["family"] = socket.AF_INET6
    try:
        ipr.route("add", **kwargs)
    except NetlinkError as exc:
        # The kernel adds the on-link route of each address itself.
        if exc.code != errno.EEXIST:
            raise


def _tx_checksum_off(ifname: str) -> None:
    """`ethtool -K IF tx off` by ioctl, in the calling thread's namespace. The userspace
    datapath never fills in checksums a veth left to offload, so TCP would carry nothing."""
    value = ctypes.create_string_buffer(struct.pack("II", ETHTOOL_STXCSUM, 0))
    ifreq = struct.pack(f"{IFNAMSIZ}sP", ifname.encode(), ctypes.addressof(value))
    ifreq += b"\0" * (40 - len(ifreq))  # sizeof(struct ifreq)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)


# ---------------------------------------------------------------------------------------------
# Delete and inspect (host side)


def delete_host_link(name: str) -> bool:
    """Remove the host end (the kernel removes its peer); False when it was already gone."""
    with _iproute() as ipr:
        return _delete_link(ipr, name)


def _delete_link(ipr: Any, name: str) -> bool:
    try:
        ipr.link("del", ifname=name)
    except NetlinkError as exc:
        if exc.code in (errno.ENODEV, errno.ENOENT):
            return False
        raise
    return True


def _link_exists(ipr: Any, name: str) -> bool:
    return bool(ipr.link_lookup(ifname=name))


def host_link_exists(name: str) -> bool:
    with _iproute() as ipr:
        return _link_exists(ipr, name)


def host_links_with_suffix(suffix: str) -> list[str]:
    """Host links whose name ends in `suffix`: finds an attachment's host end when the pod name
    it was named after is unknown (a DEL without CNI_ARGS)."""
    with _iproute() as ipr:
        names = [link.get("ifname") for link in ipr.get_links()]
    return sorted(n for n in names if isinstance(n, str) and n.endswith(suffix))


def host_link_mac(name: str) -> str:
    with _iproute() as ipr:
        links = ipr.get_links(ifname=name)
    return str(links[0].get("address")) if links else ""


# ---------------------------------------------------------------------------------------------
# Inspect (container side)


def read_container_link(netns: str, ifname: str) -> ContainerLink | None:
    """The container end as it is now, or None when the netns or the interface is gone."""
    try:
        fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return in_netns(fd, lambda: _read_link(ifname))
    finally:
        os.close(fd)


def _read_link(ifname: str) -> ContainerLink | None:
    with _iproute() as ipr:
        links = ipr.get_links(ifname=ifname) if ipr.link_lookup(ifname=ifname) else []
        if not links:
            return None
        link = links[0]
        index = link["index"]
        addresses = tuple(
            ip_interface(f"{a.get('address')}/{a['prefixlen']}")
            for a in ipr.get_addr(index=index)
            if not ip_address(a.get("address")).is_link_local
        )
        routes = tuple(_route_spec(r) for r in ipr.get_routes(oif=index, table=254))
    return ContainerLink(
        ifname=ifname,
        mac=str(link.get("address")),
        mtu=int(link.get("mtu")),
        up=bool(link["flags"] & 1),
        addresses=addresses,
        routes=tuple(r for r in routes if r is not None),
    )


def _route_spec(route: Any) -> RouteSpec | None:
    dst = route.get("dst")
    family = route["family"]
    if dst is None:
        dst = "0.0.0.0" if family == socket.AF_INET else "::"
    gw = route.get("gateway")
    try:
        return RouteSpec(
            dst=ip_network(f"{dst}/{route['dst_len']}", strict=False),
            gw=ip_address(gw) if gw else None,
        )
    except ValueError:
        return None
