"""Where a lab lives: the pure naming, addressing and path rules of `plumbctl lab`.

Every name and address a lab uses is derived here from its spec (name, node count, encap, pod
CIDR), so `up`, `down` and the tests agree on them without looking anything up. Two labs with
different names share nothing: their namespaces, directories and processes are named apart, and
their addresses live in namespaces of their own (so they may even repeat).
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

STATE_ROOT: Final = Path("/var/run/plumb-lab")
DEFAULT_NAME: Final = "plumb"
DEFAULT_NODES: Final = 2
DEFAULT_ENCAP: Final = "geneve"
DEFAULT_POD_CIDR: Final = "10.244.0.0/16"
ENCAPS: Final = ("geneve", "vxlan", "none")
NODE_PREFIXLEN: Final = 24
# The underlay is a private /24 inside the lab's own namespaces; node N is .(10+N).
UNDERLAY_CIDR: Final = "172.30.0.0/24"
UNDERLAY_MTU: Final = 1500
BRIDGE: Final = "br-int"
PHYS_BRIDGE: Final = "br-phy"
UPLINK: Final = "eth0"  # the node's end of its underlay veth, a port of br-phy
HEALTH_PORT: Final = 9641
MAX_NODES: Final = 200
# Keeps every Unix socket under the lab directory within sun_path's 107 bytes.
_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,22}[a-z0-9])?")


class LabSpecError(ValueError):
    """A lab spec that cannot be built (the message says which flag)."""


@dataclass(frozen=True)
class LabSpec:
    """What `lab up` was asked for; persisted as `lab.json` in the lab directory."""

    name: str = DEFAULT_NAME
    nodes: int = DEFAULT_NODES
    encap: str = DEFAULT_ENCAP
    pod_cidr: str = DEFAULT_POD_CIDR

    def __post_init__(self) -> None:
        validate_name(self.name)
        if not 1 <= self.nodes <= MAX_NODES:
            raise LabSpecError(f"--nodes must be 1 to {MAX_NODES}; got {self.nodes}")
        if self.encap not in ENCAPS:
            raise LabSpecError(f"--encap must be one of {', '.join(ENCAPS)}; got {self.encap!r}")
        node_cidr(self.pod_cidr, self.nodes)  # raises when the CIDR holds too few node subnets

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> LabSpec:
        data = json.loads(text)
        return cls(
            name=str(data["name"]),
            nodes=int(data["nodes"]),
            encap=str(data["encap"]),
            pod_cidr=str(data["pod_cidr"]),
        )


def validate_name(name: str) -> None:
    """A lab name: lowercase letters, digits and '-', at most 24 characters."""
    if not _NAME.fullmatch(name):
        raise LabSpecError(
            f"--name must be 1 to 24 of a-z 0-9 '-' (not starting or ending with '-'); got {name!r}"
        )


def node_cidr(pod_cidr: str, index: int) -> str:
    """Node `index`'s PodCIDR (1-based): the index-th /24 of the lab's pod CIDR (node1 of
    10.244.0.0/16 is 10.244.1.0/24, as kubeadm-style clusters number them)."""
    try:
        network = ipaddress.IPv4Network(pod_cidr, strict=True)
    except ValueError as exc:
        raise LabSpecError(
            f"--pod-cidr must be an IPv4 network such as 10.244.0.0/16: {exc}"
        ) from None
    if network.prefixlen > NODE_PREFIXLEN - 1:
        raise LabSpecError(f"--pod-cidr must be /{NODE_PREFIXLEN - 1} or larger; got {pod_cidr}")
    count = 2 ** (NODE_PREFIXLEN - network.prefixlen)
    if index >= count:
        raise LabSpecError(f"--pod-cidr {pod_cidr} holds {count - 1} node subnets, not {index}")
    base = int(network.network_address) + (index << (32 - NODE_PREFIXLEN))
    return f"{ipaddress.IPv4Address(base)}/{NODE_PREFIXLEN}"


@dataclass(frozen=True)
class NodeLayout:
    """One node's names, addresses and paths."""

    lab: str
    index: int
    lab_dir: Path

    @property
    def name(self) -> str:
        """The Kubernetes Node name (unique within a lab)."""
        return f"node{self.index}"

    @property
    def netns(self) -> str:
        return f"{self.lab}-node{self.index}"

    @property
    def address(self) -> str:
        """The underlay (InternalIP) address, on br-phy's internal port."""
        net = ipaddress.IPv4Network(UNDERLAY_CIDR)
        return str(net.network_address + 10 + self.index)

    @property
    def phys_mac(self) -> str:
        """br-phy's MAC, fixed so that peers can be told it before they ever ARP (02:50:4c is
        locally administered, "PL")."""
        i = self.index
        return f"02:50:4c:{(i >> 16) & 0xFF:02x}:{(i >> 8) & 0xFF:02x}:{i & 0xFF:02x}"

    @property
    def underlay_prefixlen(self) -> int:
        return ipaddress.IPv4Network(UNDERLAY_CIDR).prefixlen

    @property
    def underlay_port(self) -> str:
        """The underlay bridge's end of this node's veth (in the underlay namespace)."""
        return f"node{self.index}"

    @property
    def dir(self) -> Path:
        return self.lab_dir / self.name

    @property
    def ovs_rundir(self) -> Path:
        return self.dir / "ovs"

    @property
    def cni_socket(self) -> Path:
        return self.dir / "cni.sock"

    @property
    def cni_conf_dir(self) -> Path:
        return self.dir / "net.d"

    @property
    def ipam_dir(self) -> Path:
        return self.dir / "ipam"

    @property
    def config_file(self) -> Path:
        return self.dir / "agent.yaml"

    @property
    def agent_log(self) -> Path:
        return self.dir / "agent.log"

    @property
    def agent_pidfile(self) -> Path:
        return self.dir / "agent.pid"


@dataclass(frozen=True)
class LabLayout:
    """A lab's names and paths, from its name alone (what `down` needs) or its spec."""

    name: str
    root: Path = STATE_ROOT

    def __post_init__(self) -> None:
        validate_name(self.name)

    @property
    def dir(self) -> Path:
        return self.root / self.name

    @property
    def spec_file(self) -> Path:
        return self.dir / "lab.json"

    @property
    def manifests_dir(self) -> Path:
        """The directory every node's agent reads (source: manifests)."""
        return self.dir / "manifests"

    @property
    def pods_dir(self) -> Path:
        """One JSON record per pod the lab runs (netns, container id, server PID)."""
        return self.dir / "pods"

    @property
    def cni_cache_dir(self) -> Path:
        return self.dir / "cni-cache"

    @property
    def underlay_netns(self) -> str:
        return f"{self.name}-underlay"

    @property
    def underlay_bridge(self) -> str:
        return "underlay0"

    def node(self, index: int) -> NodeLayout:
        return NodeLayout(self.name, index, self.dir)

    def node_by_name(self, node_name: str) -> NodeLayout:
        match = re.fullmatch(r"node([1-9][0-9]*)", node_name)
        if not match:
            raise LabSpecError(f"no node {node_name!r} in lab {self.name}")
        return self.node(int(match.group(1)))

    def pod_netns(self, namespace: str, pod: str) -> str:
        """Kubernetes namespaces hold no '.', so `<ns>.<pod>` is unambiguous."""
        return f"{self.name}-pod-{namespace}.{pod}"

    def pod_record(self, namespace: str, pod: str) -> Path:
        return self.pods_dir / f"{namespace}.{pod}.json"

    def read_spec(self) -> LabSpec | None:
        """The spec of a lab that was brought up (None if there is none)."""
        try:
            return LabSpec.from_json(self.spec_file.read_text())
        except FileNotFoundError:
            return None
