"""The pod network the CNI server drives: ADD = IPAM -> veth/netns -> OVS port with external_ids
and a chosen ofport, the pod's flows meanwhile -> the ofport OVS gave checked -> result; DEL =
flows, then port, veth, IPAM; CHECK, GC and STATUS; and the in-memory interface store, rebuilt
from the OVS ports' external_ids when the agent starts.

OVSDB, flows and IPAM come in through small Protocols (`PortStore`, `PodFlows`, `Ipam`): the
agent passes its `ovsdb.client.OvsdbClient`, its flow installer and a `cni.ipam.NodeIpam`.
The ports' external_ids keys are the ones declared in `ovsdb.keys`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from ipaddress import IPv4Address, ip_address, ip_interface
from typing import Final, Protocol

from cni import garp, netns
from cni.ofports import OfportPool
from cni.parallel import Steps
from cni.protocol import (
    AddRejected,
    Attachment,
    CniError,
    ErrorCode,
    Interface,
    IPAddress,
    IPConfig,
    IPInterface,
    Request,
    Result,
    merge_prev_result,
)
from ovsdb import keys

log = logging.getLogger("plumb.cni.podnet")

DEFAULT_MTU: Final = 1450  # 1500 minus Geneve's overhead; the agent passes the real figure


@dataclass(frozen=True)
class PodInterface:
    """One pod attachment on the bridge: what the flows, CHECK and DEL need to know."""

    container_id: str
    ifname: str
    network: str
    pod_namespace: str
    pod_name: str
    netns: str
    host_ifname: str
    mac: str
    ips: tuple[IPInterface, ...]
    gateway: IPAddress | None
    ofport: int = -1

    @property
    def attachment(self) -> Attachment:
        return Attachment(self.container_id, self.ifname)

    @property
    def ipv4(self) -> IPv4Address | None:
        for ip in self.ips:
            if ip.version == 4:
                return IPv4Address(ip.ip)
        return None

    @property
    def owner(self) -> str:
        """A stable flow-owner key: `pod/<namespace>/<name>` (container id without a pod name),
        with `/<ifname>` appended for a pod's extra interfaces."""
        name = f"pod/{self.pod_namespace or '-'}/{self.pod_name or self.container_id}"
        return name if self.ifname == "eth0" else f"{name}/{self.ifname}"

    def external_ids(self) -> dict[str, str]:
        ids = {
            keys.CONTAINER_ID: self.container_id,
            keys.IFNAME: self.ifname,
            keys.NETWORK: self.network,
            keys.POD_NAMESPACE: self.pod_namespace,
            keys.POD_NAME: self.pod_name,
            keys.NETNS: self.netns,
            keys.IP: ",".join(str(ip) for ip in self.ips),
            keys.MAC: self.mac,
        }
        if self.gateway is not None:
            ids[keys.GATEWAY] = str(self.gateway)
        return ids


def interface_from_port(
    name: str, ofport: int, external_ids: Mapping[str, str]
) -> PodInterface | None:
    """The attachment an OVS port records, or None for ports that are no pod's."""
    cid = external_ids.get(keys.CONTAINER_ID)
    ifname = external_ids.get(keys.IFNAME)
    if not cid or not ifname:
        return None
    try:
        ips = tuple(ip_interface(s) for s in external_ids.get(keys.IP, "").split(",") if s)
        gateway_raw = external_ids.get(keys.GATEWAY)
        gateway = ip_address(gateway_raw) if gateway_raw else None
    except ValueError:
        log.warning("port %s has unreadable pod external_ids %s", name, dict(external_ids))
        return None
    return PodInterface(
        container_id=cid,
        ifname=ifname,
        network=external_ids.get(keys.NETWORK, ""),
        pod_namespace=external_ids.get(keys.POD_NAMESPACE, ""),
        pod_name=external_ids.get(keys.POD_NAME, ""),
        netns=external_ids.get(keys.NETNS, ""),
        host_ifname=name,
        mac=external_ids.get(keys.MAC, ""),
        ips=ips,
        gateway=gateway,
        ofport=ofport,
    )


# ---------------------------------------------------------------------------------------------
# The seams the agent fills


class PortInfo(Protocol):
    """What `PortStore` returns for a port (`ovsdb.client.PortInfo` has these and more)."""

    @property
    def name(self) -> str: ...

    @property
    def ofport(self) -> int: ...

    @property
    def external_ids(self) -> Mapping[str, str]: ...


class PortStore(Protocol):
    """The OVSDB verbs the pod network needs (`ovsdb.client.OvsdbClient`)."""

    def add_pod_port(
        self,
        bridge: str,
        name: str,
        external_ids: Mapping[str, str],
        ofport_request: int | None = None,
    ) -> PortInfo:
        """Add (or update) the port and its interface, asking OVS for `ofport_request`; return
        it with the ofport it got (-1: failed)."""
        ...

    def delete_port(self, bridge: str, name: str) -> None:
        """Remove the port; a port that is not there is fine."""
        ...

    def list_ports(self, bridge: str) -> Sequence[PortInfo]:
        """Every port on the bridge."""
        ...

    def port_info(self, name: str) -> PortInfo:
        """One port's interface; raises when there is none."""
        ...


class PodFlows(Protocol):
    """The pod's flows: the agent's flow installer (the switch room) fills this."""

    def install_pod(self, iface: PodInterface) -> None:
        """Install (or replace) every flow of this pod, atomically."""
        ...

    def remove_pod(self, iface: PodInterface) -> None:
        """Remove every flow of this pod; removing nothing is fine."""
        ...

    def pod_flows_present(self, iface: PodInterface) -> bool:
        """Whether the pod's flows are installed in the switch."""
        ...


class Ipam(Protocol):
    """Address management (`cni.ipam.NodeIpam`)."""

    def add(self, req: Request) -> Result: ...

    def delete(self, req: Request) -> None: ...

    def check(self, req: Request) -> None: ...

    def gc(self, req: Request) -> None: ...

    def status(self, req: Request) -> None: ...


# ---------------------------------------------------------------------------------------------
# The interface store


class InterfaceStore:
    """PodInterface records keyed by (containerID, ifname); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_attachment: dict[Attachment, PodInterface] = {}

    def get(self, attachment: Attachment) -> PodInterface | None:
        with self._lock:
            return self._by_attachment.get(attachment)

    def put(self, iface: PodInterface) -> None:
        with self._lock:
            self._by_attachment[iface.attachment] = iface

    def pop(self, attachment: Attachment) -> PodInterface | None:
        with self._lock:
            return self._by_attachment.pop(attachment, None)

    def all(self) -> list[PodInterface]:
        with self._lock:
            return list(self._by_attachment.values())

    def replace_all(self, ifaces: Iterable[PodInterface]) -> None:
        with self._lock:
            self._by_attachment = {i.attachment: i for i in ifaces}

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_attachment)


# ---------------------------------------------------------------------------------------------
# The pod network


@dataclass(frozen=True)
class PodNetConfig:
    """Node-level settings. `mtu`: the uplink MTU minus tunnel overhead (a network config's
    own `mtu` wins, ADD-11). `tx_checksum_off`: true on the userspace (netdev) datapath."""

    bridge: str
    mtu: int = DEFAULT_MTU
    tx_checksum_off: bool = False
    check_settle: float = 1.0  # CHK-05: how long CHECK lets flows converge after an ADD
    # How long a port that got another ofport than it asked for may take to get its own:
    # ovs-vswitchd moves a port that holds the number without having asked for it.
    ofport_settle: float = 2.0
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)


class PodNetwork:
    """ADD, DEL, CHECK, GC and STATUS for pods on one node; a `cni.server.CniBackend`."""

    def __init__(self, config: PodNetConfig, ports: PortStore, flows: PodFlows, ipam: Ipam):
        self.config = config
        self._ports = ports
        self._flows = flows
        self._ipam = ipam
        self._ofports = OfportPool()
        self._steps = Steps("podnet-step")
        self.store = InterfaceStore()

    def restore(self) -> int:
        """Rebuild the interface store from the bridge's ports (agent start, DESIGN 8)."""
        ports = self._ports.list_ports(self.config.bridge)
        ifaces = [
            iface
            for port in ports
            if (iface := interface_from_port(port.name, port.ofport, port.external_ids))
        ]
        self.store.replace_all(ifaces)
        self._learn_ofports(ports, restart=True)
        return len(ifaces)

    def _learn_ofports(self, ports: Sequence[PortInfo], restart: bool = False) -> None:
        """The numbers of ports that are no pod's; at a restart, also where to go on from."""
        pods = {i.host_ifname for i in self.store.all()}
        self._ofports.learn(
            foreign=(p.ofport for p in ports if p.name not in pods),
            seen=(p.ofport for p in ports) if restart else (),
        )

    def _pod_ofports(self) -> list[int]:
        return [i.ofport for i in self.store.all()]

    # -- ADD -------------------------------------------------------------------------------

    def add(self, req: Request) -> Result:
        """ADD; on failure the caller rolls back through `delete` (ADD-05), except for
        `AddRejected`, raised before anything changed.

        Independent steps overlap: IPAM runs while the veth pair is made; the OVS port is
        added (with an ofport the agent picked) while the container end is configured, the
        host end is prepared and the pod's flows are installed. Every step waits for its
        partners before an error is raised, so a rollback always finds all that was done."""
        self._refuse_bad_add(req)
        pair = self._pair_for(req)
        ofport = self._ofports.take(self._pod_ofports)
        try:
            return self._add(req, pair, ofport)
        finally:
            self._ofports.done(ofport)  # by now the store holds it (or the ADD failed)

    def _add(self, req: Request, pair: netns.VethPair, ofport: int) -> Result:
        ipam_result: Result = self._steps.together(
            lambda: self._ipam.add(req), lambda: _create_pair(pair)
        )[0]
        iface = _interface_for(req, pair, ipam_result, ofport)
        addressing = netns.Addressing(
            iface.ips, tuple(netns.RouteSpec(r.dst, r.gw) for r in ipam_result.routes)
        )
        self.store.put(iface)  # before the port and the flows: a rollback must find them
        given: int = self._steps.together(
            lambda: self._attach_port(iface),
            lambda: netns.configure_container(
                req.netns, req.ifname, addressing, pair.tx_checksum_off
            ),
            lambda: self._install_flows(iface),
            lambda: netns.prepare_host_end(pair),
        )[0]
        if given != ofport:
            self._correct_ofport(iface, given)
        self._steps.soon(partial(_announce, req.netns, req.ifname, iface))
        return merge_prev_result(req.prev_result, _result_for(req, pair, ipam_result))

    def _correct_ofport(self, iface: PodInterface, given: int) -> None:
        """OVS gave the port another number than the one asked for: a port the agent does not
        know holds it. ovs-vswitchd soon moves that port unless it asked for the number too;
        then the flows follow our port to the number it keeps, and the pool learns the bridge
        anew."""
        final = self._settled_ofport(iface.host_ifname, iface.ofport, given)
        if final == iface.ofport:
            return
        log.warning(
            "port %s got ofport %d, not %d: reinstalling its flows",
            iface.host_ifname,
            final,
            iface.ofport,
        )
        fixed = replace(iface, ofport=final)
        self.store.put(fixed)
        self._install_flows(fixed)
        self._learn_ofports(self._ports.list_ports(self.config.bridge))

    def _settled_ofport(self, name: str, wanted: int, given: int) -> int:
        deadline = self.config.clock() + self.config.ofport_settle
        while given != wanted and self.config.clock() < deadline:
            time.sleep(0.01)
            given = self._ports.port_info(name).ofport
        return given

    def _pair_for(self, req: Request) -> netns.VethPair:
        return netns.VethPair(
            host_ifname=netns.host_ifname(req.pod_name, req.container_id, req.ifname),
            host_mac=netns.random_mac(),
            ifname=req.ifname,
            netns=req.netns,
            mac=req.requested_mac or netns.random_mac(),
            mtu=req.mtu or self.config.mtu,
            tx_checksum_off=self.config.tx_checksum_off,
        )

    def _refuse_bad_add(self, req: Request) -> None:
        if self.store.get(req.attachment) is not None:
            raise AddRejected(  # ADD-08: a second ADD without DEL is a runtime bug
                ErrorCode.INTERFACE_FAILURE,
                "attachment already exists",
                f"container {req.container_id} already has {req.ifname}; DEL it first",
            )
        if not os.path.exists(req.netns):
            raise AddRejected(ErrorCode.INVALID_NETNS, "failed to open netns", req.netns)
        if netns.is_own_netns(req.netns) and not req.netns_override:
            raise AddRejected(
                ErrorCode.INVALID_NETNS,
                "netns is the plugin's own namespace",
                f"{req.netns} (set CNI_NETNS_OVERRIDE=1 to allow)",
            )

    def _attach_port(self, iface: PodInterface) -> int:
        """The OVS port with its external_ids; the ofport OVS gave it."""
        try:
            port = self._ports.add_pod_port(
                self.config.bridge, iface.host_ifname, iface.external_ids(), iface.ofport
            )
        except CniError:
            raise
        except Exception as exc:
            raise CniError(ErrorCode.OVS_FAILURE, "failed to add the OVS port", str(exc)) from exc
        ofport: int | None = port.ofport
        if ofport is None or ofport <= 0:
            raise CniError(
                ErrorCode.OVS_FAILURE,
                "OVS could not attach the pod interface",
                f"port {iface.host_ifname} has ofport {ofport}",
            )
        return ofport

    def _install_flows(self, iface: PodInterface) -> None:
        try:
            self._flows.install_pod(iface)
        except CniError:
            raise
        except Exception as exc:
            raise CniError(
                ErrorCode.OVS_FAILURE, "failed to install the pod's flows", str(exc)
            ) from exc

    # -- DEL -------------------------------------------------------------------------------

    def delete(self, req: Request) -> None:
        """DEL: idempotent and best-effort (DEL-01..08). Host-side state comes from our own
        store (or the deterministic names), never from inside the netns (DEL-05); IPAM is
        always told (DEL-04), in parallel with the host side. Every step runs; failures are
        reported together at the end."""
        errors: list[str] = []
        iface = self.store.get(req.attachment)

        def host_side() -> None:
            if iface is not None:
                self._teardown(iface, errors)
            else:
                self._remove_host_ends(self._host_names(req), errors)

        self._steps.together(
            host_side, lambda: _collect(errors, "IPAM DEL", self._ipam.delete, req)
        )
        if errors:
            raise CniError(ErrorCode.INTERFACE_FAILURE, "DEL incomplete", "; ".join(errors))

    def _teardown(self, iface: PodInterface, errors: list[str]) -> None:
        # Out of the store first: whoever `remove_pod` tells (the policy reconciler reads the
        # store) must no longer count the pod. Back in if a step fails, for the next DEL or GC.
        self.store.pop(iface.attachment)
        # Flows before the port: a port number must not be reused while flows still name it.
        mine: list[str] = []
        _collect(mine, "remove flows", self._flows.remove_pod, iface)
        if not mine:
            self._remove_host_ends([iface.host_ifname], mine)
        if mine:
            self.store.put(iface)
        errors.extend(mine)

    def _remove_host_ends(self, names: Sequence[str], errors: list[str]) -> None:
        """The OVS ports and the veths (the kernel takes each peer along), all at once: the
        kernel needs ~15 ms to delete a veth."""
        steps: list[Callable[[], None]] = []
        for name in names:
            steps.append(partial(_collect, errors, f"delete port {name}", self._delete_port, name))
            steps.append(
                partial(_collect, errors, f"delete veth {name}", netns.delete_host_link, name)
            )
        self._steps.together(*steps)

    def _delete_port(self, name: str) -> None:
        self._ports.delete_port(self.config.bridge, name)

    def _host_names(self, req: Request) -> list[str]:
        """Host-end names this attachment may have: the one its pod name gives, or any with
        its hash when the DEL carries no pod name (ENV-06: CNI_ARGS may be empty)."""
        expected = netns.host_ifname(req.pod_name, req.container_id, req.ifname)
        suffix = "-" + netns.attachment_hash(req.container_id, req.ifname)
        return sorted({expected, *netns.host_links_with_suffix(suffix)})

    # -- CHECK -----------------------------------------------------------------------------

    def check(self, req: Request) -> None:
        """CHECK (CHK-02..05): the container interface, its MAC and addresses and our routes
        as prevResult states them; the OVS port; the pod's flows; the IPAM reservation."""
        if req.prev_result is None:
            raise CniError(ErrorCode.INVALID_NETWORK_CONFIG, "CHECK needs a prevResult", "")
        iface = self.store.get(req.attachment)
        if iface is None:
            raise _check_failed("plumb knows no such attachment", f"{req.attachment}")
        expected, index = _expected_container_iface(req)
        link = netns.read_container_link(req.netns, req.ifname)
        if link is None:
            raise _check_failed(f"interface {req.ifname} missing", f"netns {req.netns}")
        if expected.mac and link.mac.lower() != expected.mac.lower():
            raise _check_failed("MAC address mismatch", f"{link.mac} != {expected.mac}")
        if not link.up:
            raise _check_failed(f"interface {req.ifname} is down", "")
        _check_addresses(req, index, link)
        _check_routes(req, iface, link)
        self._check_port(iface)
        self._check_flows(iface)
        self._ipam.check(req)

    def _check_port(self, iface: PodInterface) -> None:
        try:
            port = self._ports.port_info(iface.host_ifname)
        except Exception as exc:
            raise _check_failed("OVS port missing", f"{iface.host_ifname}: {exc}") from exc
        if port.ofport != iface.ofport:
            raise _check_failed("OVS port changed", f"ofport {port.ofport} != {iface.ofport}")
        if not netns.host_link_exists(iface.host_ifname):
            raise _check_failed("host veth missing", iface.host_ifname)

    def _check_flows(self, iface: PodInterface) -> None:
        deadline = self.config.clock() + self.config.check_settle
        while not self._flows.pod_flows_present(iface):
            if self.config.clock() >= deadline:
                raise _check_failed("pod flows missing", iface.owner)
            time.sleep(0.05)

    # -- GC and STATUS ---------------------------------------------------------------------

    def gc(self, req: Request) -> None:
        """GC (GC-02..06): tear down every attachment of this network that is not in the valid
        list, from our store and from the bridge's ports alike; then IPAM GC. Keeps going
        after errors and reports them together."""
        errors: list[str] = []
        candidates = {i.attachment: i for i in self.store.all()}
        try:
            for port in self._ports.list_ports(self.config.bridge):
                found = interface_from_port(port.name, port.ofport, port.external_ids)
                if found is not None:
                    candidates.setdefault(found.attachment, found)
        except Exception as exc:
            errors.append(f"list ports: {exc}")
        for attachment, iface in sorted(candidates.items()):
            if attachment in req.valid_attachments:
                continue
            if iface.network and iface.network != req.network:
                continue
            log.info("GC removes stale attachment %s/%s", *attachment)
            self._teardown(iface, errors)
        _collect(errors, "IPAM GC", self._ipam.gc, req)
        if errors:
            raise CniError(ErrorCode.INTERFACE_FAILURE, "GC incomplete", "; ".join(errors))

    def status(self, req: Request) -> None:
        """STATUS (STS-02, STS-03): the agent answers, so only IPAM can say no."""
        self._ipam.status(req)


def _interface_for(
    req: Request, pair: netns.VethPair, ipam_result: Result, ofport: int
) -> PodInterface:
    return PodInterface(
        container_id=req.container_id,
        ifname=req.ifname,
        network=req.network,
        pod_namespace=req.pod_namespace,
        pod_name=req.pod_name,
        netns=req.netns,
        host_ifname=pair.host_ifname,
        mac=pair.mac,
        ips=tuple(ipc.address for ipc in ipam_result.ips),
        gateway=next((i.gateway for i in ipam_result.ips if i.gateway), None),
        ofport=ofport,
    )


def _result_for(req: Request, pair: netns.VethPair, ipam_result: Result) -> Result:
    """ADD-06: the host end (no sandbox) and the container end; the IPs point at the latter."""
    return Result(
        interfaces=(
            Interface(name=pair.host_ifname, mac=pair.host_mac),
            Interface(name=req.ifname, mac=pair.mac, sandbox=req.netns, mtu=pair.mtu),
        ),
        ips=tuple(
            IPConfig(address=i.address, gateway=i.gateway, interface=1) for i in ipam_result.ips
        ),
        routes=ipam_result.routes,
        dns=ipam_result.dns if not ipam_result.dns.is_empty() else req.dns,  # CFG-06
    )


def _announce(netns_path: str, ifname: str, iface: PodInterface) -> None:
    """The pod's gratuitous ARP, right after its ADD (best-effort: the pod may be gone)."""
    if iface.ipv4 is None:
        return
    try:
        garp.announce(netns_path, ifname, iface.mac, iface.ipv4)
    except (OSError, CniError) as exc:
        log.info("no gratuitous ARP for %s: %s", iface.owner, exc)


def _create_pair(pair: netns.VethPair) -> None:
    try:
        netns.create_pair(pair)
    except AddRejected as exc:
        # Refused by the kernel, but IPAM is reserving an address meanwhile: the caller must
        # roll back, so this is no longer an "AddRejected".
        raise CniError(exc.code, exc.msg, exc.details) from exc


def _collect(errors: list[str], what: str, step: Callable[..., object], *args: object) -> None:
    try:
        step(*args)
    except Exception as exc:
        log.warning("%s failed: %s", what, exc)
        errors.append(f"{what}: {exc}")


def _check_failed(msg: str, details: str) -> CniError:
    return CniError(ErrorCode.CHECK_FAILURE, msg, details)


def _expected_container_iface(req: Request) -> tuple[Interface, int]:
    assert req.prev_result is not None
    for index, iface in enumerate(req.prev_result.interfaces):
        if iface.name == req.ifname and iface.sandbox:
            return iface, index
    raise _check_failed(f"prevResult has no interface {req.ifname} in a sandbox", "")


def _check_addresses(req: Request, index: int, link: netns.ContainerLink) -> None:
    assert req.prev_result is not None
    for ipc in req.prev_result.ips:
        if ipc.interface == index and ipc.address not in link.addresses:
            raise _check_failed("address missing", f"{ipc.address} not on {req.ifname}")


def _check_routes(req: Request, iface: PodInterface, link: netns.ContainerLink) -> None:
    # Only the routes this plugin created (via our gateway); later plugins may add more.
    assert req.prev_result is not None
    for route in req.prev_result.routes:
        gw = route.gw or iface.gateway
        if gw != iface.gateway or gw is None:
            continue
        if netns.RouteSpec(route.dst, gw) not in link.routes:
            raise _check_failed("route missing", f"{route.dst} via {gw}")
