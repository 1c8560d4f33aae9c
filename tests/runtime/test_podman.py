"""podman 4.3 with its CNI backend runs two containers on a `plumb` network: each gets an address
from the node's PodCIDR through the plumb executable, they reach each other over ICMP and TCP
through OVS, and when they go (one by exiting, one by `podman rm`) every attachment, port and
address goes with them (runtimes.md recipe; OBS-01..04)."""

from __future__ import annotations

import contextlib
import json
import os
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
CNI_CACHE = Path("/var/lib/cni")
POD_NET_PREFIX = "10.244.0."  # node-a's PodCIDR (tests.kube.conftest.populate)
GATEWAY = "10.244.0.1"


class Podman:
    """podman with its own containers.conf, storage, run and CNI directories under `root`."""

    def __init__(self, node: RuntimeNode) -> None:
        self.node = node
        self.root = node.workdir / "podman"
        self.root.mkdir()
        (self.root / "net.d").mkdir()
        self.image = f"localhost/{node.prefix}-busybox:latest"
        self.cgroup_parent = f"{node.prefix}-pods"
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": str(self.root),
            "CONTAINERS_CONF": str(self._write_conf()),
        }
        self.names: list[str] = []

    def _write_conf(self) -> Path:
        path = self.root / "containers.conf"
        path.write_text(
            "[containers]\n"
            # root's podman raises nofile and nproc beyond what this machine lets it set
            'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
            "[network]\n"
            'network_backend = "cni"\n'
            f'cni_plugin_dirs = ["{self.node.bin_dir}", "{REFERENCE_DIR}"]\n'
            f'network_config_dir = "{self.root / "net.d"}"\n'
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{self.root / "events.log"}"\n'
            'runtime = "runc"\n'  # crun refuses hybrid cgroups here
        )
        return path

    def cmd(self, *args: str) -> list[str]:
        return [
            "podman",
            "--root", str(self.root / "storage"),
            "--runroot", str(self.root / "run"),
            "--tmpdir", str(self.root / "tmp"),
            "--storage-driver", "vfs",
            *args,
        ]  # fmt: skip

    def __call__(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run(*self.cmd(*args), env=self.env, timeout=timeout)

    def add_network(self, ipam: dict[str, str] | None) -> None:
        (self.root / "net.d" / f"10-{NETWORK}.conflist").write_text(conflist(NETWORK, ipam))

    def import_image(self, rootfs: Path) -> None:
        """`podman import` of a tar of the rootfs. Its blob-info cache would land in
        /var/lib/containers whatever --root says: a private tmpfs on /var/lib keeps it out."""
        tar = self.root / "busybox.tar"
        run("tar", "-C", str(rootfs), "-cf", str(tar), ".")
        command = " ".join(
            f"'{a}'"
            for a in self.cmd(
                "import",
                "--change", 'CMD ["/bin/sh"]',
                "--change", "ENV PATH=/bin",
                str(tar),
                self.image,
            )
        )  # fmt: skip
        run(
            "unshare", "--mount", "--propagation", "private",
            "sh", "-c", f"mount -t tmpfs plumbtest /var/lib && exec {command}",
            env=self.env,
        )  # fmt: skip

    def start(self, name: str, script: str) -> None:
        """A container left running."""
        self(*self._run_args("-d", name, script))

    def run_once(self, name: str, script: str) -> subprocess.CompletedProcess[str]:
        """A container that runs `script` and is removed when it exits (its DEL then comes
        from conmon's `podman container cleanup`)."""
        return run(*self.cmd(*self._run_args("--rm", name, script)), env=self.env, check=False)

    def _run_args(self, mode: str, name: str, script: str) -> list[str]:
        self.names.append(name)
        return [
            "run", mode, "--name", name, "--network", NETWORK,
            "--cgroup-parent", f"/{self.cgroup_parent}", "--cap-add", "NET_RAW",
            self.image, "sh", "-c", script,
        ]  # fmt: skip

    def container_id(self, name: str) -> str:
        return self("inspect", "--format", "{{.Id}}", name).stdout.strip()

    def cleanup(self) -> None:
        for name in self.names:
            subprocess.run(self.cmd("rm", "-f", "-t", "0", name), env=self.env, capture_output=True)
        subprocess.run(self.cmd("rmi", "-f", self.image), env=self.env, capture_output=True)
        remove_cgroups(self.cgroup_parent)


@pytest.fixture
def podman(runtime_node: RuntimeNode) -> Iterator[Podman]:
    require("podman", "conmon")
    cni_cache_existed = CNI_CACHE.exists()
    tool = Podman(runtime_node)
    try:
        yield tool
    finally:
        tool.cleanup()
        if not cni_cache_existed:
            _remove_empty(CNI_CACHE / "results", CNI_CACHE)


def _remove_empty(*directories: Path) -> None:
    """libcni's result cache (no podman option moves it): gone again if we made it and it is
    empty (its entries go with each DEL)."""
    for directory in directories:
        with contextlib.suppress(OSError):
            directory.rmdir()


def test_podman_containers_on_a_plumb_network_reach_each_other(
    runtime_node: RuntimeNode, podman: Podman
) -> None:
    node = runtime_node
    podman.add_network({"type": "host-local"})  # the delegated IPAM, as in the recipe
    networks = podman("network", "ls", "--format", "{{.Name}} {{.Driver}}").stdout
    assert f"{NETWORK} plumb" in networks.splitlines()  # OBS-03: a custom plugin's network
    podman.import_image(busybox_rootfs(node.workdir / "rootfs"))

    server = f"{node.prefix}-web"
    podman.start(server, "echo plumb-ok > /tmp/index.html && exec httpd -f -p 8080 -h /tmp")
    server_ip = node.ip_of(podman.container_id(server))
    assert server_ip.startswith(POD_NET_PREFIX)
    inside = json.loads(podman("inspect", server).stdout)[0]["NetworkSettings"]["Networks"]
    assert inside[NETWORK]["IPAddress"] == server_ip  # podman took the address from our result

    client = podman.run_once(
        f"{node.prefix}-client",
        f"ip -4 route | grep -q 'default via {GATEWAY}'"
        f" && ping -c 2 -W 2 {server_ip} >/dev/null"
        f" && printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc {server_ip} 8080",
    )
    assert client.returncode == 0, (client.stdout, client.stderr)
    assert client.stdout.splitlines()[-1] == "plumb-ok"  # TCP through OVS, both ways

    # The client exited: conmon's `podman container cleanup` sent DEL (through the wrapper,
    # as conmon drops PLUMB_CNI_SOCKET); only the server is left.
    assert eventually(lambda: node.attachments() == 1), node.attachments()
    podman("rm", "-f", "-t", "0", server)
    assert node.wait_clean(NETWORK) == {"attachments": 0, "ports": [], "ips": []}
