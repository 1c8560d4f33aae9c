"""`ctr run --cni` (containerd 1.6) runs two containers that get their addresses from plumb (the
agent's own allocator: the conflist has no ipam section) and reach each other over ICMP and TCP
through OVS; when they exit ctr's DEL (CNI_NETNS empty, OBS-06) leaves nothing behind.

containerd runs from a private config with its root, state and socket under a temp dir, in a
mount namespace of its own where /run and /var/lib are tmpfs (shim sockets, FIFOs, the CNI
result cache) and /etc/cni/net.d and /opt are the test's: ctr reads only the first conflist of
/etc/cni/net.d and finds plugins only in /opt/cni/bin (OBS-05, CHN-03). ctr joins that
namespace; containerd is stopped by its PID."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime.conftest import (
    REFERENCE_DIR,
    RuntimeNode,
    busybox_rootfs,
    conflist,
    eventually,
    remove_cgroups,
    require,
    run,
)

pytestmark = [pytest.mark.ovs, pytest.mark.runtime]

NETWORK = "plumb"


class Containerd:
    """A private containerd, and ctr run inside its mount namespace."""

    def __init__(self, node: RuntimeNode) -> None:
        self.node = node
        self.root = node.workdir / "containerd"
        self.namespace = f"{node.prefix}-ns"  # also the name of its cgroups
        self.socket = self.root / "containerd.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self._prepare()

    def _prepare(self) -> None:
        net_d = self.root / "net.d"
        bin_dir = self.root / "opt" / "cni" / "bin"
        net_d.mkdir(parents=True)
        bin_dir.mkdir(parents=True)
        (net_d / f"10-{NETWORK}.conflist").write_text(conflist(NETWORK, None))
        shutil.copy2(self.node.bin_dir / "plumb", bin_dir / "plumb")
        shutil.copy2(REFERENCE_DIR / "loopback", bin_dir / "loopback")  # ctr sets up lo too
        (self.root / "config.toml").write_text(
            "version = 2\n"
            f'root = "{self.root / "root"}"\n'
            f'state = "{self.root / "state"}"\n'
            # no CRI: it would read the machine's CNI config; ctr does its own CNI calls
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            "[grpc]\n"
            f'  address = "{self.socket}"\n'
            '[plugins."io.containerd.internal.v1.opt"]\n'
            f'  path = "{self.root / "opt-containerd"}"\n'
        )

    def start(self) -> None:
        setup = " && ".join(
            [
                "mount -t tmpfs plumbtest /run",
                "mount -t tmpfs plumbtest /var/lib",  # ctr's CNI result cache (/var/lib/cni)
                f"mount --bind '{self.root / 'net.d'}' /etc/cni/net.d",
                f"mount --bind '{self.root / 'opt'}' /opt",
                f"exec containerd --config '{self.root / 'config.toml'}'",
            ]
        )
        log = open(self.root / "containerd.log", "wb")  # noqa: SIM115  (closed with the process)
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", setup],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        if not eventually(self.socket.exists, timeout=15):
            raise AssertionError(f"containerd did not start: {self.log_tail()}")

    def log_tail(self) -> str:
        return (self.root / "containerd.log").read_text(errors="replace")[-2000:]

    def ctr(self, *args: str) -> list[str]:
        assert self.proc is not None
        return [
            "nsenter", f"--mount=/proc/{self.proc.pid}/ns/mnt", "--",
            "ctr", "--address", str(self.socket), "--namespace", self.namespace, *args,
        ]  # fmt: skip

    def run(self, name: str, script: str) -> subprocess.Popen[str]:
        """`ctr run --rm --cni` in the background; ctr sends ADD before the task starts and
        DEL after it exits."""
        rootfs = busybox_rootfs(self.root / f"rootfs-{name}")
        args = ["--rm", "--cni", "--env", "PATH=/bin", "--rootfs", str(rootfs)]
        return subprocess.Popen(
            self.ctr("run", *args, name, "/bin/sh", "-c", script),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")},
        )

    def kill(self, name: str) -> None:
        run(*self.ctr("tasks", "kill", "--signal", "SIGKILL", name), check=False)

    def stop(self) -> None:
        """Stop containerd by its PID (shims and containers are gone with --rm)."""
        if self.proc is None:
            return
        if self.proc.poll() is None and _comm(self.proc.pid) == "containerd":
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        remove_cgroups(self.namespace)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@pytest.fixture
def containerd(runtime_node: RuntimeNode) -> Iterator[Containerd]:
    require("containerd", "containerd-shim-runc-v2", "ctr")
    if not Path("/etc/cni/net.d").is_dir():
        pytest.skip("/etc/cni/net.d missing: no mount point for ctr's private CNI config")
    daemon = Containerd(runtime_node)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def finish(proc: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def test_ctr_run_cni_containers_reach_each_other(
    runtime_node: RuntimeNode, containerd: Containerd
) -> None:
    node = runtime_node
    server = containerd.run(
        "web", "echo plumb-ok > /tmp/index.html && httpd -p 8080 -h /tmp && exec sleep 60"
    )
    try:
        server_ip = node.ip_of(f"{containerd.namespace}-web")  # OBS-05: <namespace>-<name>
        assert server_ip.startswith("10.244.0.")
        client = containerd.run(
            "client",
            f"ip -4 route | grep -q 'default via 10.244.0.1'"
            f" && ping -c 2 -W 2 {server_ip} >/dev/null"
            f" && printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc {server_ip} 8080",
        )
        code, out, err = finish(client)
        assert code == 0, (out, err)
        assert out.splitlines()[-1] == "plumb-ok"
        assert eventually(lambda: node.attachments() == 1), node.attachments()
    finally:
        containerd.kill("web")
        finish(server)
    # ctr has exited: its DEL came with CNI_NETNS="" (OBS-06) and still cleaned up
    assert node.wait_clean(NETWORK) == {"attachments": 0, "ports": [], "ips": []}
