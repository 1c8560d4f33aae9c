"""The node reconciler: every peer node's flows and host route follow the Node objects in the store.

Level-triggered: a store handler queues the node's name, and `sync(name)` re-reads the store and
makes that node's state whole: flows under the owner `node/<name>` (one atomic bundle per
change; a changed PodCIDR or address is the switch's diff) and a host route to its PodCIDR. A
removed node, or one without an IPv4 PodCIDR or InternalIP yet, loses both. The local node's
own tunnel end (`tunnel_flows`) is installed under `node/<local>/tunnel`.

Host routes (in the agent's network namespace, or `netns`), tagged with protocol
`ROUTE_PROTOCOL` so that only our own are ever listed or deleted:
- geneve/vxlan: `<PodCIDR> via <peer gateway> dev plumb-gw0 onlink`. The node's ARP for the
  peer gateway is answered in the switch with the virtual MAC, so the node reaches remote pods.
- none (routed): `<PodCIDR> via <peer address>` over the underlay; the pipeline hands remote
  traffic to the gateway port and the node routes it (it must forward: net.ipv4.ip_forward=1).
Routes of nodes deleted while the agent was down are collected once after `start`.

Guard: a peer whose PodCIDR overlaps another peer's installed one (or the local PodCIDR) gets
nothing, and `RetryLater`, until the other side changes; it is requeued when that happens.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cni.netns import in_netns, open_netns
from controller.bridge import GATEWAY_PORT
from controller.errors import Permanent, RetryLater
from controller.store import Store, StoreEvent
from controller.switch import Switch
from controller.workqueue import WorkQueue, start_workers
from flows.node import ENCAP_MODES, PeerNode, node_cookie, peer_node_flows, tunnel_flows
from flows.pod import LocalNode

log = logging.getLogger(__name__)

T = TypeVar("T")

ROUTE_PROTOCOL = 80
"""rtm_protocol of the routes this reconciler owns (`ip route show proto 80`)."""
MAIN_TABLE = 254
RTNH_F_ONLINK = 4

# Queue keys that are not node names (node names never contain "/").
_TUNNEL_KEY = "/tunnel"
_ROUTES_KEY = "/routes"


# --- pure helpers -------------------------------------------------------------------------------


def peer_from_node(node: Mapping[str, Any]) -> PeerNode | None:
    """The peer a Node object describes; None while it lacks an IPv4 PodCIDR or address.

    The address is the first IPv4 InternalIP (else ExternalIP) of status.addresses. Raises
    ValueError for a PodCIDR that is not a network.
    """
    meta = node.get("metadata") or {}
    spec = node.get("spec") or {}
    cidrs = list(spec.get("podCIDRs") or []) or [spec.get("podCIDR") or ""]
    ipv4 = [c for c in cidrs if c and ipaddress.ip_network(c, strict=False).version == 4]
    address = _node_address((node.get("status") or {}).get("addresses") or [])
    if not ipv4 or address is None:
        return None
    return PeerNode(name=str(meta.get("name") or ""), address=address, pod_cidr=ipv4[0])


def _node_address(addresses: list[Mapping[str, Any]]) -> str | None:
    for wanted in ("InternalIP", "ExternalIP"):
        for entry in addresses:
            if entry.get("type") != wanted:
                continue
            try:
                return str(ipaddress.IPv4Address(str(entry.get("address") or "")))
            except ValueError:
                continue
    return None


@dataclass(frozen=True, slots=True)
class NodeRoute:
    """One host route to a peer's PodCIDR."""

    dst: str
    gateway: str
    device: str | None = None  # None: the kernel picks it (routed mode, over the underlay)
    onlink: bool = False


def node_route(peer: PeerNode, mode: str) -> NodeRoute:
    """The host route to `peer`'s pods in encapsulation `mode`."""
    if mode == "none":
        return NodeRoute(peer.pod_cidr, peer.address)
    return NodeRoute(peer.pod_cidr, peer.gateway_ip, GATEWAY_PORT, onlink=True)


def _overlaps(a: str, b: str) -> bool:
    return ipaddress.IPv4Network(a).overlaps(ipaddress.IPv4Network(b))


# --- host routes --------------------------------------------------------------------------------


class HostRoutes:
    """Our routes in one network namespace (`netns` under /run/netns; None: where we run)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def replace_route(self, route: NodeRoute) -> None:
        """Install or update the route to `route.dst` (idempotent)."""

        def work(ipr: IPRoute) -> None:
            spec: dict[str, Any] = {"dst": route.dst, "gateway": route.gateway}
            if route.device is not None:
                found = ipr.link_lookup(ifname=route.device)
                if not found:
                    raise NetlinkError(errno.ENODEV, f"no device {route.device}")
                spec["oif"] = found[0]
            if route.onlink:
                spec["flags"] = RTNH_F_ONLINK
            ipr.route("replace", proto=ROUTE_PROTOCOL, table=MAIN_TABLE, **spec)

        self._run(work)

    def delete_route(self, dst: str) -> None:
        """Remove our route to `dst`, if there is one; another owner's route stays."""

        def work(ipr: IPRoute) -> None:
            try:
                ipr.route("del", dst=dst, proto=ROUTE_PROTOCOL, table=MAIN_TABLE)
            except NetlinkError as err:
                if err.code != errno.ESRCH:
                    raise

        self._run(work)

    def list_routes(self) -> list[str]:
        """Destinations (CIDRs) of our routes."""

        def work(ipr: IPRoute) -> list[str]:
            routes = ipr.route("dump", family=2, proto=ROUTE_PROTOCOL, table=MAIN_TABLE)
            return [f"{r.get('dst')}/{r['dst_len']}" for r in routes if r.get("dst")]

        return self._run(work)

    def _run(self, work: Callable[[IPRoute], T]) -> T:
        def with_socket() -> T:
            with IPRoute() as ipr:
                return work(ipr)

        if self.netns is None:
            return with_socket()
        fd = open_netns(f"/run/netns/{self.netns}")
        try:
            return in_netns(fd, with_socket)
        finally:
            os.close(fd)


# --- the reconciler -----------------------------------------------------------------------------


class _CidrConflict(RetryLater):
    """This node's PodCIDR overlaps one already in use: wait for the other side to change."""


class NodeReconciler:
    """Peer nodes' flows and routes, kept in step with the store's Node objects."""

    def __init__(
        self,
        store: Store,
        switch: Switch,
        local: LocalNode,
        local_name: str,
        tunnel_type: str,
        round_: int,
        *,
        netns: str | None = None,
        routes: HostRoutes | None = None,
    ) -> None:
        if tunnel_type not in ENCAP_MODES:
            raise ValueError(f"tunnel_type must be one of {ENCAP_MODES}, not {tunnel_type!r}")
        self.store = store
        self.switch = switch
        self.local = local
        self.local_name = local_name
        self.tunnel_type = tunnel_type
        self.round = round_
        self.routes = routes if routes is not None else HostRoutes(netns)
        self.queue: WorkQueue[str] = WorkQueue("nodes")
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._peers: dict[str, PeerNode] = {}  # installed flows, by node name
        self._routes: dict[str, NodeRoute] = {}  # installed routes, by node name
        self._blocked: set[str] = set()  # nodes waiting on a PodCIDR conflict
        self._pending: dict[str, int] = {}  # key -> generation of its latest unsettled add
        self._threads: list[threading.Thread] = []
        self._handler_added = False

    # -- lifecycle --

    def start(self) -> None:
        """Queue the local tunnel end, every node in the store and a route cleanup; then serve
        store events. Call it once the source is synced and the switch connected."""
        if self._threads:
            return
        if not self._handler_added:
            self.store.add_handler(self._on_event, kinds=("Node",))
            self._handler_added = True
        self._enqueue(_TUNNEL_KEY)
        for _, _, name in self.store.keys("Node"):
            self._enqueue(name)
        # Queued behind the nodes, so that their routes are known when it looks.
        self._enqueue(_ROUTES_KEY)
        self._threads = start_workers(self.queue, self._reconcile)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop working; every installed flow and route stays."""
        self.queue.shut_down()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until all queued work is done (a node blocked on a PodCIDR conflict counts as
        done); False if `timeout` seconds pass first."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._pending, timeout)

    def installed_peers(self) -> dict[str, PeerNode]:
        """The peers whose flows are installed now, by node name."""
        with self._lock:
            return dict(self._peers)

    # -- queue plumbing --

    def _on_event(self, event: StoreEvent) -> None:
        self._enqueue(event.name)

    def _enqueue(self, key: str) -> None:
        with self._lock:
            self._pending[key] = self._pending.get(key, 0) + 1
        self.queue.add(key)

    def _reconcile(self, key: str) -> None:
        """`sync`, recording when the key is settled (for `wait_idle`)."""
        with self._lock:
            generation = self._pending.get(key)
        settled = False
        try:
            self.sync(key)
            settled = True
        except (_CidrConflict, Permanent):
            settled = True
            raise
        finally:
            if settled:
                self._settle(key, generation)

    def _settle(self, key: str, generation: int | None) -> None:
        with self._lock:
            # Added again while we worked: the queue runs it once more; settle then.
            if self._pending.get(key) == generation:
                self._pending.pop(key, None)
                self._idle.notify_all()

    # -- reconciling --

    def sync(self, key: str) -> None:
        """Make one node's flows and route match the store (or the tunnel end, or cleanup)."""
        if key == _TUNNEL_KEY:
            self._sync_tunnel()
        elif key == _ROUTES_KEY:
            self._collect_routes()
        elif key != self.local_name:
            self._sync_peer(key)

    def _sync_tunnel(self) -> None:
        cookie = node_cookie(self.round, self.local_name)
        self.switch.replace_flows(
            f"node/{self.local_name}/tunnel", tunnel_flows(self.tunnel_type, cookie)
        )

    def _sync_peer(self, name: str) -> None:
        obj = self.store.get("Node", "", name)
        try:
            peer = peer_from_node(obj) if obj is not None else None
        except ValueError as err:
            self._remove(name)
            raise Permanent(f"node {name}: {err}") from err
        if peer is None:
            self._remove(name)
            return
        conflict = self._conflict(name, peer)
        if conflict:
            self._remove(name)
            with self._lock:
                self._blocked.add(name)
            log.warning("node %s: PodCIDR %s overlaps %s; waiting", name, peer.pod_cidr, conflict)
            raise _CidrConflict(reason=f"PodCIDR {peer.pod_cidr} overlaps {conflict}")
        with self._lock:
            self._blocked.discard(name)
        self._install(name, peer)

    def _conflict(self, name: str, peer: PeerNode) -> str:
        """Who already uses an overlapping PodCIDR ("" for nobody)."""
        if _overlaps(peer.pod_cidr, self.local.pod_cidr):
            return f"the local node {self.local_name} ({self.local.pod_cidr})"
        with self._lock:
            for other, installed in self._peers.items():
                if other != name and _overlaps(peer.pod_cidr, installed.pod_cidr):
                    return f"node {other} ({installed.pod_cidr})"
        return ""

    def _install(self, name: str, peer: PeerNode) -> None:
        flows = peer_node_flows(peer, self.local, self.tunnel_type, node_cookie(self.round, name))
        self.switch.replace_flows(_owner(name), flows)
        with self._lock:
            previous = self._peers.get(name)
            self._peers[name] = peer
        if previous != peer:
            log.info(
                "node %s: peer installed cidr=%s address=%s", name, peer.pod_cidr, peer.address
            )
            self._wake_blocked()
        self._install_route(name, node_route(peer, self.tunnel_type))

    def _install_route(self, name: str, route: NodeRoute) -> None:
        with self._lock:
            old = self._routes.get(name)
        if old == route:
            return
        try:
            if old is not None and old.dst != route.dst:
                self.routes.delete_route(old.dst)
            self.routes.replace_route(route)
        except (NetlinkError, OSError) as err:
            with self._lock:
                self._routes.pop(name, None)  # unknown state: the retry replaces it whole
            raise RetryLater(reason=f"node {name}: route to {route.dst}: {err}") from err
        with self._lock:
            self._routes[name] = route

    def _remove(self, name: str) -> None:
        self.switch.delete_flows(_owner(name))
        with self._lock:
            removed = self._peers.pop(name, None)
            route = self._routes.get(name)
        if removed is not None:
            log.info("node %s: peer removed cidr=%s", name, removed.pod_cidr)
            self._wake_blocked()
        if route is not None:
            try:
                self.routes.delete_route(route.dst)
            except (NetlinkError, OSError) as err:
                raise RetryLater(reason=f"node {name}: route to {route.dst}: {err}") from err
            with self._lock:
                self._routes.pop(name, None)

    def _wake_blocked(self) -> None:
        """A PodCIDR was released or moved: nodes waiting on a conflict look again."""
        with self._lock:
            blocked, self._blocked = self._blocked, set()
        for name in blocked:
            self._enqueue(name)

    def _collect_routes(self) -> None:
        """Delete our routes that no node accounts for (nodes deleted while we were down)."""
        with self._lock:
            keep = {route.dst for route in self._routes.values()}
        for obj in self.store.objects("Node"):
            try:
                peer = peer_from_node(obj)
            except ValueError:
                continue
            if peer is not None and peer.name != self.local_name:
                keep.add(peer.pod_cidr)
        try:
            for dst in self.routes.list_routes():
                if dst not in keep:
                    log.info("stale route removed dst=%s", dst)
                    self.routes.delete_route(dst)
        except (NetlinkError, OSError) as err:
            raise RetryLater(reason=f"route cleanup: {err}") from err


def _owner(name: str) -> str:
    return f"node/{name}"
