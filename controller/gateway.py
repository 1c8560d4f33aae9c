"""The node's side of the gateway port: plumb-gw0 gets the first address of the PodCIDR, the
pod MTU, and comes up, so the node reaches its pods and pods reach the node.

Runs in the agent's network namespace (the node's; in tests and the lab, the node namespace).
"""

from __future__ import annotations

import errno
import ipaddress
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError


def ensure_gateway_address(ifname: str, gateway_ip: str, pod_cidr: str, mtu: int) -> None:
    """Address (gateway_ip/prefix of pod_cidr), MTU and link up; idempotent."""
    prefix = ipaddress.ip_network(pod_cidr, strict=False).prefixlen
    with IPRoute() as ipr:
        index = _link_index(ipr, ifname)
        try:
            ipr.addr("add", index=index, address=gateway_ip, prefixlen=prefix)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
        ipr.link("set", index=index, mtu=mtu, state="up")
    # The node's ARP requests must carry the gateway address, or ARPSpoofGuard drops them.
    _sysctl(f"net/ipv4/conf/{ifname}/arp_announce", "1")


def _link_index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise RuntimeError(f"gateway interface {ifname} does not exist")
    index: int = found[0]
    return index


def _sysctl(key: str, value: str) -> None:
    Path("/proc/sys", key).write_text(value)
