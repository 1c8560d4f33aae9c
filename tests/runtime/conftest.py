"""The real-runtime tier: podman (CNI backend) and `ctr run --cni` attach containers through the
`plumb` executable to a whole plumb node running in-process (the agent of tests/kube: fake API
server, private OVS, real pod flows).

Nothing global is configured: each runtime gets its own config, storage, state and CNI
directories under a temp dir (containerd and ctr in a mount namespace of their own, where
/etc/cni/net.d, /opt and /run are private), every name carries a random prefix, and everything
is removed by that name or by PID. Outside CI a missing prerequisite skips the tier with its
reason; with CI set it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cni import executable
from controller.agent import Agent
from tests.kube.test_agent import world  # noqa: F401  (the fixture: fake API server + OVS)

REPO = Path(__file__).resolve().parents[2]
REFERENCE_DIR = Path("/usr/lib/cni")
BUSYBOX = Path("/bin/busybox")
APPLETS = (
    "sh",
    "ip",
    "ping",
    "sleep",
    "cat",
    "ls",
    "httpd",
    "nc",
    "true",
    "echo",
    "grep",
    "printf",
)
POD_CIDR = "10.244.0.0/24"  # node-a's, as tests.kube.conftest.populate declares it


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "runtime: needs root, OVS, and podman or containerd with runc (the real-runtime tier)",
    )


def unavailable(reason: str) -> None:
    """A missing prerequisite: skip (in CI the skip becomes a failure, see below)."""
    pytest.skip(reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """With CI set the tier must run: any skip in it, whoever raised it (ours, or a fixture
    it reuses, such as the OVS tier's), is reported as a failure with its reason."""
    outcome: Any = yield
    report: pytest.TestReport = outcome.get_result()
    if os.environ.get("CI") and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"the runtime tier must run in CI, but: {reason}"


def require(*tools: str) -> None:
    if os.geteuid() != 0:
        unavailable("needs root (namespaces, OVS, container runtimes)")
    for tool in tools:
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            unavailable(f"{tool} not installed (scripts/setup.sh installs it)")
    for plugin in ("host-local", "loopback"):
        if not (REFERENCE_DIR / plugin).exists():
            unavailable(f"{REFERENCE_DIR / plugin} missing (containernetworking-plugins)")
    if not BUSYBOX.exists() or _is_dynamic(BUSYBOX):
        unavailable("a static /bin/busybox is needed for the image (busybox-static)")


def _is_dynamic(path: Path) -> bool:
    """Whether an ELF64 little-endian executable asks for a dynamic loader (PT_INTERP): such
    a busybox could not run in an image that holds nothing else."""
    with open(path, "rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
            return True  # not what we can check: treat as unusable
        (phoff,) = struct.unpack_from("<Q", header, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    pt_interp = 3
    return any(struct.unpack_from("<I", table, i * phentsize)[0] == pt_interp for i in range(phnum))


@pytest.fixture(autouse=True)
def _base_prerequisites() -> None:
    require("ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ip", "unshare", "nsenter", "runc")


@dataclass
class RuntimeNode:
    """A running plumb node and what a runtime needs to reach it."""

    agent: Agent
    ovs: Any
    prefix: str
    workdir: Path
    bin_dir: Path  # holds `plumb` (the wrapper) for the runtime's CNI plugin directory

    @property
    def socket(self) -> str:
        return self.agent.config.cni_socket

    def pod_ports(self) -> list[str]:
        assert self.agent.ovsdb is not None
        return [
            p.name
            for p in self.agent.ovsdb.list_ports(self.agent.config.bridge)
            if p.external_ids.get("plumb.type") == "pod"
        ]

    def attachments(self) -> int:
        assert self.agent.podnet is not None
        return len(self.agent.podnet.store)

    def reservations(self, network: str) -> list[str]:
        directory = Path(self.agent.config.ipam_data_dir) / network
        if not directory.is_dir():
            return []
        return sorted(n for n in os.listdir(directory) if n[0].isdigit())

    def ip_of(self, container_id: str, timeout: float = 10.0) -> str:
        """The IPv4 address the agent gave a container's eth0."""
        assert self.agent.podnet is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for iface in self.agent.podnet.store.all():
                if iface.container_id == container_id and iface.ipv4 is not None:
                    return str(iface.ipv4)
            time.sleep(0.05)
        raise AssertionError(f"no attachment for {container_id}")

    def wait_clean(self, network: str, timeout: float = 15.0) -> dict[str, Any]:
        """Wait for every attachment to be gone (runtimes DEL asynchronously); what is left."""
        deadline = time.monotonic() + timeout
        while True:
            left = {
                "attachments": self.attachments(),
                "ports": self.pod_ports(),
                "ips": self.reservations(network),
            }
            if left == {"attachments": 0, "ports": [], "ips": []} or time.monotonic() > deadline:
                return left
            time.sleep(0.1)


def install_plugin(bin_dir: Path, libexec: Path, socket: str) -> None:
    """`bin_dir/plumb`: a wrapper that sets PLUMB_CNI_SOCKET, then runs a copy of the plumb
    executable (cni.executable).
    podman's DEL after a container exits comes from `podman container cleanup`, started by
    conmon with a filtered environment: the socket path cannot come from the runtime's env.
    Both files are written to a temporary name and renamed (CHN-07)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    libexec.mkdir(parents=True, exist_ok=True)
    _install(libexec / "plumb", executable.path().read_bytes())
    wrapper = (
        "#!/bin/sh\n"
        "# plumb for the runtime tier: the agent under test listens on its own socket.\n"
        f"PLUMB_CNI_SOCKET='{socket}' exec '{libexec / 'plumb'}' \"$@\"\n"
    )
    _install(bin_dir / "plumb", wrapper.encode())


def _install(path: Path, content: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(content)
    tmp.chmod(0o755)
    tmp.rename(path)


def busybox_rootfs(root: Path) -> Path:
    """A tiny root filesystem: static busybox and a few applets, no registry involved."""
    for sub in ("bin", "etc", "proc", "sys", "dev", "tmp", "run"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    return root


def conflist(name: str, ipam: dict[str, Any] | None) -> str:
    plugin: dict[str, Any] = {"type": "plumb"}
    if ipam is not None:
        plugin["ipam"] = ipam
    return json.dumps({"cniVersion": "1.0.0", "name": name, "plugins": [plugin]})


@pytest.fixture
def runtime_node(world: Any) -> Iterator[RuntimeNode]:  # noqa: F811
    _api, ovs, config = world
    prefix = "plumbrt" + uuid.uuid4().hex[:5]
    workdir = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))  # short: runtimes put sockets here
    agent = Agent(config, sync_timeout=10, netns=ovs.netns)
    agent.start()
    node = RuntimeNode(agent, ovs, prefix, workdir, workdir / "bin")
    install_plugin(node.bin_dir, workdir / "libexec", config.cni_socket)
    try:
        yield node
    finally:
        agent.stop()
        unmount_under(workdir)
        shutil.rmtree(workdir, ignore_errors=True)


def unmount_under(directory: Path) -> None:
    """Lazily unmount whatever a runtime left mounted below `directory`, deepest first."""
    prefix = str(directory.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def remove_cgroups(name: str) -> None:
    """Remove the cgroup directories a runtime made under `name` (empty once its containers
    are gone), in every hierarchy, deepest first."""
    for top in Path("/sys/fs/cgroup").glob(f"*/{name}"):
        for sub in sorted((p for p in top.rglob("*") if p.is_dir()), reverse=True):
            sub.rmdir()
        top.rmdir()
    unified = Path("/sys/fs/cgroup") / name
    if unified.is_dir():
        unified.rmdir()


def run(
    *cmd: str,
    timeout: float = 60,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
