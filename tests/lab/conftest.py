"""The lab tier: multi-node labs built by `plumbctl lab`, driven through its command line (the
contract users script against) and inspected from the outside (namespaces, processes, flows).

Every lab gets a unique name (`t<hex>`), so runs never meet each other or a user's lab, and is
taken down by name afterwards. Skips, with the reason, without root or the tools a lab needs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lab.layout import LabLayout
from lab.ovs_sandbox import OvsBinariesMissing, require_ovs_binaries
from lab.pods import record
from lab.probe import Endpoint, Probe, run_probes

REPO = Path(__file__).resolve().parents[2]
TOOLS = ("ip", "ethtool", "sysctl")


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the lab tier needs root (network namespaces, Open vSwitch)"
    try:
        require_ovs_binaries()
    except OvsBinariesMissing as exc:
        return str(exc)
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing {', '.join(missing)}"
    if (
        not Path("/usr/lib/cni/host-local").exists()
        and not Path("/opt/cni/bin/host-local").exists()
    ):
        return "host-local (containernetworking-plugins) not installed"
    return None


@pytest.fixture(autouse=True)
def _lab_prerequisites(request: pytest.FixtureRequest) -> None:
    """Tests marked `lab` skip, with the reason, where a lab cannot be built."""
    if request.node.get_closest_marker("lab") is None:
        return
    reason = _cached_skip_reason()
    if reason:
        pytest.skip(reason)


_REASON: list[str | None] = []


def _cached_skip_reason() -> str | None:
    if not _REASON:
        _REASON.append(skip_reason())
    return _REASON[0]


def pod_yaml(
    namespace: str, name: str, node: str | None = None, ports: str = "80/TCP", **labels: str
) -> str:
    """One Pod document; `ports` like "80/TCP,53/UDP"."""
    port_list = [
        {"containerPort": int(p.split("/")[0]), "protocol": p.split("/")[1]}
        for p in ports.split(",")
        if p
    ]
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "none", "ports": port_list}]}
    if node:
        spec["nodeName"] = node
    doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {"app": name}},
        "spec": spec,
    }
    return json.dumps(doc)


@dataclass
class Lab:
    """One lab, driven through `python -m plumbctl lab ... --name NAME`."""

    name: str
    workdir: Path
    files: int = field(default=0)

    @property
    def layout(self) -> LabLayout:
        return LabLayout(self.name)

    def cli(self, verb: str, *args: str, check: bool = True, timeout: float = 120) -> Any:
        cmd = [sys.executable, "-m", "plumbctl", "lab", verb, "--name", self.name, *args]
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd[3:])} exited {done.returncode}\n"
                f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
            )
        return done

    def up(self, *flags: str) -> Any:
        return self.cli("up", *flags, timeout=180)

    def write(self, *docs: str) -> Path:
        self.files += 1
        path = self.workdir / f"{self.name}-{self.files}.yaml"
        path.write_text("\n---\n".join(textwrap.dedent(d) for d in docs))
        return path

    def apply(self, *docs: str) -> Any:
        return self.cli("apply", "-f", str(self.write(*docs)))

    def delete(self, *docs: str) -> Any:
        return self.cli("delete", "-f", str(self.write(*docs)))

    def probe(self, src: str, dst: str, port: int, *flags: str) -> dict[str, Any]:
        done = self.cli("probe", src, dst, "--port", str(port), "--json", *flags, check=False)
        assert done.returncode in (0, 1), f"probe error {done.returncode}: {done.stderr}"
        result: dict[str, Any] = json.loads(done.stdout)
        assert result["connected"] == (done.returncode == 0)
        return result

    def connected(self, src: str, dst: str, port: int = 80, protocol: str = "TCP") -> bool:
        """One probe through the library `probe` uses (test_cli covers the command line; a
        Python start per probe would dominate this tier's time)."""
        probe_ = Probe(self.endpoint(src), self.endpoint(dst), port, protocol)
        return run_probes([probe_], timeout=2.0)[0].connected

    def endpoint(self, ref: str) -> Endpoint:
        namespace, name = ref.split("/")
        rec = record(self.layout, namespace, name)
        assert rec is not None and rec.ip, f"no pod {ref} with an IP in lab {self.name}"
        return Endpoint(ref, rec.netns, rec.ip)

    def pods(self) -> dict[str, dict[str, Any]]:
        """`namespace/name` -> the pod object of `lab get pods -o json`."""
        items = json.loads(self.cli("get", "pods", "-o", "json").stdout)["items"]
        return {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p for p in items}

    def pod_ip(self, ref: str) -> str:
        return self.endpoint(ref).ip

    def node_netns(self, node: str) -> str:
        return self.layout.node_by_name(node).netns

    def in_node(self, node: str, *cmd: str, check: bool = True) -> Any:
        return subprocess.run(
            ["ip", "netns", "exec", self.node_netns(node), *cmd],
            capture_output=True,
            text=True,
            timeout=30,
            check=check,
        )

    def flows(self, node: str) -> str:
        mgmt = self.layout.node_by_name(node).ovs_rundir / "br-int.mgmt"
        return subprocess.run(
            ["ovs-ofctl", "-O", "OpenFlow15", "--names", "dump-flows", str(mgmt)],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout


DF_PING = """
import os, socket, struct, sys
def checksum(data):
    data += b"\\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF
dst, size = sys.argv[1], int(sys.argv[2])  # size: the whole IP packet
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER = IP_PMTUDISC_DO: DF, no fragments
s.settimeout(1)
ident = os.getpid() & 0xFFFF
body = struct.pack("!HH", ident, 1) + b"x" * (size - 20 - 8)
s.sendto(struct.pack("!BBH", 8, 0, checksum(b"\\x08\\0\\0\\0" + body)) + body, (dst, 0))
while True:
    reply = s.recv(65535)
    if reply[20] == 0 and struct.unpack("!H", reply[24:26])[0] == ident:
        print(len(reply)); break
"""


def df_ping(netns: str, dst: str, size: int) -> subprocess.CompletedProcess[str]:
    """One ICMP echo of `size` bytes (the whole IP packet) with DF set, from `netns`; exit 0
    and the reply's length on stdout when it came back."""
    return subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", DF_PING, dst, str(size)],
        capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip


ECHO_COUNT = """
import os, socket, struct, sys, time
def checksum(data):
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident, replies = os.getpid() & 0xFFFF, {}
for seq in range(int(sys.argv[2])):
    body = struct.pack("!HH", ident, seq) + b"plumb-echo-0123"  + b"4"
    s.sendto(struct.pack("!BBH", 8, 0, checksum(b"\\x08\\0\\0\\0" + body)) + body, (sys.argv[1], 0))
    time.sleep(0.05)
s.settimeout(0.5)
try:
    while True:
        reply = s.recv(2048)[20:]
        if reply[0] == 0 and struct.unpack("!H", reply[4:6])[0] == ident:
            seq = struct.unpack("!H", reply[6:8])[0]
            replies[seq] = replies.get(seq, 0) + 1
except socket.timeout:
    pass
print(" ".join(str(replies.get(i, 0)) for i in range(int(sys.argv[2]))))
"""


def echo_replies(netns: str, dst: str, count: int = 5) -> list[int]:
    """Send `count` ICMP echoes from `netns`; how many replies each one got (1 each when every
    packet is carried exactly once)."""
    done = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", ECHO_COUNT, dst, str(count)],
        capture_output=True, text=True, timeout=10, check=True,
    )  # fmt: skip
    return [int(n) for n in done.stdout.split()]


ARP_WHO_HAS = """
import socket, struct, sys, time
ip = socket.inet_aton(sys.argv[1])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind(("eth0", 0))
mac = s.getsockname()[4]
me = socket.inet_aton(sys.argv[2])
arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, me, b"\\0" * 6, ip)
s.send(b"\\xff" * 6 + mac + b"\\x08\\x06" + arp)
s.settimeout(0.1)
seen, deadline = set(), time.monotonic() + 0.5
while time.monotonic() < deadline:
    try:
        frame = s.recv(2048)
    except socket.timeout:
        continue
    op, sha, spa = struct.unpack("!H6s4s", frame[20:32])
    if op == 2 and spa == ip:
        seen.add(sha.hex(":"))
print(" ".join(sorted(seen)))
"""


def arp_answers(netns: str, target: str, source: str) -> list[str]:
    """The MACs that answer one ARP request for `target` sent on eth0 of `netns`."""
    done = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", ARP_WHO_HAS, target, source],
        capture_output=True, text=True, timeout=10, check=True,
    )  # fmt: skip
    return done.stdout.split()


LabFactory = Callable[..., Lab]


def _make_factory(tmp: Path) -> tuple[LabFactory, list[Lab]]:
    made: list[Lab] = []

    def make(*up_flags: str, up: bool = True) -> Lab:
        lab = Lab(f"t{uuid.uuid4().hex[:6]}", tmp)
        made.append(lab)
        if up:
            lab.up(*up_flags)
        return lab

    return make, made


def _down_all(made: list[Lab]) -> None:
    for lab in made:
        lab.cli("down", check=False)


@pytest.fixture
def make_lab(tmp_path: Path) -> Iterator[LabFactory]:
    """`make_lab("--nodes", "3", up=True)`: a fresh lab for one test, taken down afterwards."""
    make, made = _make_factory(tmp_path)
    yield make
    _down_all(made)


@pytest.fixture(scope="module")
def module_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabFactory]:
    """The same, shared by the tests of one module."""
    make, made = _make_factory(tmp_path_factory.mktemp("lab"))
    yield make
    _down_all(made)
