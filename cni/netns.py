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
from pathlib import Path
from typing import Any, Final, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink import (
    NETLINK_ROUTE,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NLMSG_ERROR,
)
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_GETLINK, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from cni.protocol import AddRejected, CniError, ErrorCode, IPAddress, IPInterface, IPNetwork

CLONE_NEWNET: Final = 0x40000000
SIOCETHTOOL: Final = 0x8946
ETHTOOL_STXCSUM: Final = 0x17
IFNAMSIZ: Final = 16
HASH_LEN: Final = 8
MAX_IFNAME: Final = 15

RT_TABLE_MAIN: Final = 254
RTPROT_BOOT: Final = 3
RT_SCOPE_UNIVERSE: Final = 0
RT_SCOPE_LINK: Final = 253
RTN_UNICAST: Final = 1

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
    """pyroute2's full API, for the reads off the hot path (CHECK, DEL without a pod name)."""
    ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


class _Rtnl:
    """A bare NETLINK_ROUTE socket in the calling thread's namespace, for the hot path.
    Messages are pyroute2's (`ifinfmsg`, `ifaddrmsg`, `rtmsg`); they are sent back to back and
    their acknowledgements read afterwards, with no event loop in between (pyroute2's
    `IPRoute` costs ~0.3 ms of CPU per request, which a loaded 2-core node feels)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self._seq = 0

    def __enter__(self) -> _Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, msg: Any, msg_type: int, flags: int = 0) -> int:
        """Send one request (acknowledged); its sequence number."""
        self._seq += 1
        msg["header"]["type"] = msg_type
        msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK | flags
        msg["header"]["sequence_number"] = self._seq
        msg.encode()
        self.sock.send(msg.data)
        return self._seq

    def acks(self, count: int) -> list[int]:
        """The errno (0: success) of the next `count` acknowledgements, in sending order."""
        errors: list[int] = []
        while len(errors) < count:
            data = self.sock.recv(65536)
            offset = 0
            while offset + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                if kind == NLMSG_ERROR:
                    errors.append(-struct.unpack_from("=i", data, offset + 16)[0])
                offset += (length + 3) & ~3
        return errors

    def call(self, msg: Any, msg_type: int, flags: int = 0) -> None:
        self.send(msg, msg_type, flags)
        (error,) = self.acks(1)
        if error:
            raise NetlinkError(error, os.strerror(error))

    def link_index(self, name: str) -> int | None:
        """The ifindex of `name`, or None."""
        msg = ifinfmsg()
        msg["attrs"] = [["IFLA_IFNAME", name]]
        self._seq += 1
        msg["header"]["type"] = RTM_GETLINK
        msg["header"]["flags"] = NLM_F_REQUEST
        msg["header"]["sequence_number"] = self._seq
        msg.encode()
        self.sock.send(msg.data)
        data = self.sock.recv(65536)
        kind = struct.unpack_from("=H", data, 4)[0]
        if kind == NLMSG_ERROR:
            error = -struct.unpack_from("=i", data, 16)[0]
            if error in (errno.ENODEV, errno.ENOENT):
                return None
            raise NetlinkError(error, os.strerror(error))
        index: int = struct.unpack_from("=i", data, 20)[0]  # ifinfomsg.ifi_index
        return index


def _link_msg(name: str, mac: str, mtu: int, extra: list[Any] | None = None) -> Any:
    msg = ifinfmsg()
    msg["attrs"] = [["IFLA_IFNAME", name], ["IFLA_ADDRESS", mac], ["IFLA_MTU", mtu], *(extra or [])]
    return msg


# ---------------------------------------------------------------------------------------------
# Create


def create_pair(pair: VethPair) -> None:
    """The veth pair, both ends UP: the container end created inside the netns with its final
    name, MAC and MTU (ADD-01). Raises AddRejected when CNI_IFNAME already exists in the
    container (ADD-02) or the netns is unusable (ENV-05), CniError(102) on other failures.
    On the userspace datapath, `prepare_host_end` must follow before traffic flows."""
    fd = open_netns(pair.netns)
    try:
        with _Rtnl() as rtnl:
            _add_pair(rtnl, pair, fd)
    finally:
        os.close(fd)


def prepare_host_end(pair: VethPair) -> None:
    """On the userspace datapath: the host end's TX checksum offload off, and the node's
    kernel kept from answering or forwarding for the pod (calling thread's netns). Nothing
    otherwise. Separate from `create_pair` so that it can run beside the OVS port's attach."""
    if not pair.tx_checksum_off:
        return
    try:
        _tx_checksum_off(pair.host_ifname)
        _quiet_host_end(pair.host_ifname)
    except OSError as exc:
        raise _interface_error("failed to prepare the host end", exc) from exc


def configure_container(
    netns: str, ifname: str, addressing: Addressing, tx_checksum_off: bool = False
) -> None:
    """ADD-07: the container end's addresses and routes (and TX checksum offload off on the
    userspace datapath), configured from a thread inside the netns."""
    fd = open_netns(netns)
    try:
        in_netns(fd, lambda: _configure_container_end(ifname, addressing, tx_checksum_off))
    except (NetlinkError, OSError) as exc:
        raise _interface_error("failed to configure the pod interface", exc) from exc
    finally:
        os.close(fd)


def _interface_error(msg: str, exc: Exception) -> CniError:
    return CniError(ErrorCode.INTERFACE_FAILURE, msg, str(exc))


def _add_pair(rtnl: _Rtnl, spec: VethPair, fd: int) -> None:
    peer = _link_msg(spec.ifname, spec.mac, spec.mtu, [["IFLA_NET_NS_FD", fd]])
    info = {
        "attrs": [
            ["IFLA_INFO_KIND", "veth"],
            ["IFLA_INFO_DATA", {"attrs": [["VETH_INFO_PEER", peer]]}],
        ]
    }
    for attempt in (1, 2):
        msg = _link_msg(spec.host_ifname, spec.host_mac, spec.mtu, [["IFLA_LINKINFO", info]])
        # The host end comes up as it is made (no extra round trip). The peer cannot: the
        # kernel configures it before the pair is joined, and opening it then fails ENOTCONN.
        msg["flags"] = IFF_UP
        msg["change"] = IFF_UP
        try:
            rtnl.call(msg, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL)
            return
        except NetlinkError as exc:
            if exc.code == errno.EINVAL:
                raise AddRejected(
                    ErrorCode.INVALID_NETNS, "not a network namespace", spec.netns
                ) from exc
            if exc.code != errno.EEXIST:
                raise _interface_error("failed to create the veth pair", exc) from exc
            if attempt == 2 or rtnl.link_index(spec.host_ifname) is None:
                raise AddRejected(
                    ErrorCode.INTERFACE_FAILURE,
                    f"interface {spec.ifname} already exists in the container",
                    f"netns {spec.netns}",
                ) from exc
            # A host end with this attachment's name is a leftover of an earlier failed
            # attempt at this very attachment (the name hashes its id and ifname).
            _delete_link(rtnl, spec.host_ifname)


def _configure_container_end(ifname: str, addressing: Addressing, tx_checksum_off: bool) -> None:
    if tx_checksum_off:
        _tx_checksum_off(ifname)
    with _Rtnl() as rtnl:
        index = rtnl.link_index(ifname)
        if index is None:
            raise NetlinkError(errno.ENODEV, f"{ifname} vanished from the container")
        # The kernel applies each message as it is sent, so the gateway route finds the
        # address's on-link route in place; all acknowledgements are read at the end.
        up = ifinfmsg()
        up["index"] = index
        up["flags"] = IFF_UP
        up["change"] = IFF_UP
        rtnl.send(up, RTM_NEWLINK)
        sent = [
            rtnl.send(_addr_msg(index, a), RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL)
            for a in addressing.addresses
        ]
        routes = [
            rtnl.send(_route_msg(index, r), RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL)
            for r in addressing.routes
        ]
        errors = rtnl.acks(1 + len(sent) + len(routes))
    for i, error in enumerate(errors):
        # EEXIST on a route: the kernel made the on-link route of an address itself.
        if error and not (i > len(sent) and error == errno.EEXIST):
            raise NetlinkError(error, os.strerror(error))


def _addr_msg(index: int, address: IPInterface) -> Any:
    msg = ifaddrmsg()
    msg["family"] = socket.AF_INET if address.version == 4 else socket.AF_INET6
    msg["prefixlen"] = address.network.prefixlen
    msg["index"] = index
    attrs = [["IFA_LOCAL", str(address.ip)], ["IFA_ADDRESS", str(address.ip)]]
    if address.version == 4 and address.network.prefixlen < 31:
        attrs.append(["IFA_BROADCAST", str(address.network.broadcast_address)])
    msg["attrs"] = attrs
    return msg


def _route_msg(index: int, route: RouteSpec) -> Any:
    msg = rtmsg()
    msg["family"] = socket.AF_INET if route.dst.version == 4 else socket.AF_INET6
    msg["dst_len"] = route.dst.prefixlen
    msg["table"] = RT_TABLE_MAIN
    msg["proto"] = RTPROT_BOOT
    msg["scope"] = RT_SCOPE_UNIVERSE if route.gw is not None else RT_SCOPE_LINK
    msg["type"] = RTN_UNICAST
    attrs: list[Any] = [["RTA_OIF", index]]
    if route.dst.prefixlen:
        attrs.append(["RTA_DST", str(route.dst.network_address)])
    if route.gw is not None:
        attrs.append(["RTA_GATEWAY", str(route.gw)])
    msg["attrs"] = attrs
    return msg


# On the userspace datapath the host end is an ordinary kernel interface too: left alone, the
# node's kernel answers the pod's ARP for its gateway with the veth's own MAC and forwards a
# second copy of the pod's packets. Only OVS may speak for it.
_QUIET_HOST_END = (
    ("ipv4/conf/{}/arp_ignore", "8"),
    ("ipv4/conf/{}/forwarding", "0"),
    ("ipv6/conf/{}/disable_ipv6", "1"),
)


def _quiet_host_end(ifname: str) -> None:
    """Keep the node's kernel from answering or forwarding for the pod (calling thread's netns)."""
    for key, value in _QUIET_HOST_END:
        path = Path("/proc/sys/net", key.format(ifname))
        if path.exists():  # no IPv6 in this kernel: nothing to quiet
            path.write_text(value)


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
    with _Rtnl() as rtnl:
        return _delete_link(rtnl, name)


def _delete_link(rtnl: _Rtnl, name: str) -> bool:
    msg = ifinfmsg()
    msg["attrs"] = [["IFLA_IFNAME", name]]
    try:
        rtnl.call(msg, RTM_DELLINK)
    except NetlinkError as exc:
        if exc.code in (errno.ENODEV, errno.ENOENT):
            return False
        raise
    return True


def host_link_exists(name: str) -> bool:
    with _Rtnl() as rtnl:
        return rtnl.link_index(name) is not None


def host_links_with_suffix(suffix: str) -> list[str]:
    """Host links whose name ends in `suffix`: finds an attachment's host end when the pod name
    it was named after is unknown (a DEL without CNI_ARGS)."""
    with _iproute() as ipr:
        names = [link.get("ifname") for link in ipr.get_links()]
    return sorted(n for n in names if isinstance(n, str) and n.endswith(suffix))


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
