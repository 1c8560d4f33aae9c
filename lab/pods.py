"""The lab's kubelet: creates and removes pods the way a kubelet and its container runtime do.

A pod is created as: its object in the manifests directory (phase Pending), a network namespace,
the real `plumb` CNI executable run by `lab.cniruntime` with the CNI environment and stdin a
runtime sends (K8S_POD_NAMESPACE/K8S_POD_NAME in CNI_ARGS; the plugin runs in the node's
namespace, as the runtime would on that node's host), a server inside the pod for every
declared containerPort, then the pod's IP and node written back to its status. Removal runs it
backwards (server, CNI DEL, namespace, object). A JSON record per pod in the lab directory says
what was made, so `down` can remove it even after a crash.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cni import executable
from cni.netns import in_netns
from lab import host
from lab.cniruntime import CniCallError, CniRuntime, NetworkList, RuntimeConf
from lab.layout import LabLayout, NodeLayout
from lab.objects import ManifestsDir, Obj, key, ref

# The plumb executable (built on first use, cni.executable), then the reference plugins.
CNI_BIN_DIRS = (str(executable.BUILD_DIR), "/opt/cni/bin", "/usr/lib/cni")
PODSERVER = Path(__file__).resolve().parent / "podserver.py"
IFNAME = "eth0"
SERVER_READY_TIMEOUT = 10.0
PARALLEL_PODS = 8
Progress = Callable[[str], None]


class PodError(RuntimeError):
    """A pod could not be created or removed (the message names it)."""


@dataclass
class PodRecord:
    """What the lab made for one pod."""

    namespace: str
    name: str
    node: str
    netns: str
    container_id: str
    uid: str
    ip: str = ""
    ports: list[tuple[int, str]] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def save(self, layout: LabLayout) -> None:
        path = layout.pod_record(self.namespace, self.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> PodRecord:
        data = json.loads(path.read_text())
        data["ports"] = [(int(p), str(proto)) for p, proto in data.get("ports", [])]
        return cls(**data)


def records(layout: LabLayout) -> list[PodRecord]:
    """Every pod the lab runs, sorted by namespace and name."""
    if not layout.pods_dir.is_dir():
        return []
    out = []
    for path in sorted(layout.pods_dir.glob("*.json")):
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            out.append(PodRecord.load(path))
    return sorted(out, key=lambda r: (r.namespace, r.name))


def record(layout: LabLayout, namespace: str, name: str) -> PodRecord | None:
    try:
        return PodRecord.load(layout.pod_record(namespace, name))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def declared_ports(pod: Obj) -> list[tuple[int, str]]:
    """(containerPort, protocol) of every container, sorted, without repeats."""
    ports: set[tuple[int, str]] = set()
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if "containerPort" in port:
                ports.add((int(port["containerPort"]), str(port.get("protocol", "TCP")).upper()))
    return sorted(ports)


# --- files next to the record: the server's ready file (its PID), log ---------------------------


def _ready_file(layout: LabLayout, rec: PodRecord) -> Path:
    return layout.pods_dir / f"{rec.namespace}.{rec.name}.ready"


def _server_log(layout: LabLayout, rec: PodRecord) -> Path:
    return layout.pods_dir / f"{rec.namespace}.{rec.name}.log"


def _server_pidfile(layout: LabLayout, rec: PodRecord) -> Path:
    return layout.pods_dir / f"{rec.namespace}.{rec.name}.pid"


def server_pid(layout: LabLayout, rec: PodRecord) -> int | None:
    return host.live_pid(_server_pidfile(layout, rec), str(_ready_file(layout, rec)))


# --- create -------------------------------------------------------------------------------------


class Kubelet:
    """Creates and removes the pods of one lab."""

    def __init__(self, layout: LabLayout) -> None:
        self.layout = layout
        self.manifests = ManifestsDir(layout.manifests_dir)
        self.network = NetworkList.from_file(layout.dir / "net.d" / "10-plumb.conflist")

    def runtime(self, node: NodeLayout) -> CniRuntime:
        env = {"PATH": os.environ.get("PATH", ""), "PLUMB_CNI_SOCKET": str(node.cni_socket)}
        executable.path()  # built (or rebuilt) before a runtime looks for it in CNI_BIN_DIRS
        return CniRuntime(CNI_BIN_DIRS, str(self.layout.cni_cache_dir), base_env=env)

    def create_many(self, pods: Sequence[Obj], progress: Progress) -> list[str]:
        """Create pods in parallel (each already has spec.nodeName); errors collected."""
        errors: list[str] = []

        def one(pod: Obj) -> None:
            try:
                rec = self.create(pod)
                progress(f"pod/{rec.ref} created on {rec.node} ({rec.ip})")
            except (PodError, OSError, host.HostError) as exc:
                errors.append(f"pod/{ref(pod)}: {exc}")

        with ThreadPoolExecutor(max_workers=PARALLEL_PODS) as pool:
            list(pool.map(one, pods))
        return errors

    def create(self, pod: Obj) -> PodRecord:
        _, namespace, name = key(pod)
        node = self.layout.node_by_name(pod["spec"]["nodeName"])
        netns = self.layout.pod_netns(namespace, name)
        if host.netns_exists(netns):
            raise PodError(f"network namespace {netns} exists but the lab has no record of it")
        rec = PodRecord(
            namespace, name, node.name, netns, uuid.uuid4().hex + uuid.uuid4().hex,
            str(pod["metadata"].get("uid") or uuid.uuid4()), ports=declared_ports(pod),
        )  # fmt: skip
        pod["metadata"]["uid"] = rec.uid
        pod["status"] = {"phase": "Pending"}
        self.manifests.write(pod)
        rec.save(self.layout)  # before anything is made, so `down` finds a half-made pod
        try:
            host.ensure_netns(netns)
            rec.ip = self._cni_add(node, rec)
            rec.save(self.layout)
            self._start_server(rec)
        except Exception as exc:
            with contextlib.suppress(Exception):
                self.remove(rec)
            raise PodError(str(exc)) from exc
        pod["status"] = _running_status(rec, node)
        self.manifests.write(pod)
        return rec

    def _runtime_conf(self, rec: PodRecord) -> RuntimeConf:
        args = (
            ("IgnoreUnknown", "1"),
            ("K8S_POD_NAMESPACE", rec.namespace),
            ("K8S_POD_NAME", rec.name),
            ("K8S_POD_INFRA_CONTAINER_ID", rec.container_id),
            ("K8S_POD_UID", rec.uid),
        )
        return RuntimeConf(rec.container_id, host.netns_path(rec.netns), IFNAME, args)

    def _cni_add(self, node: NodeLayout, rec: PodRecord) -> str:
        """CNI ADD; the pod's IPv4 address."""
        rt, runtime = self._runtime_conf(rec), self.runtime(node)
        try:
            result = _in_node(node, lambda: runtime.add(self.network, rt))
        except CniCallError as exc:
            raise PodError(f"CNI ADD: {exc}") from exc
        for ip in result.get("ips", []):
            address = str(ip.get("address", "")).split("/")[0]
            if "." in address:
                return address
        raise PodError(f"CNI ADD returned no IPv4 address: {json.dumps(result)}")

    def _start_server(self, rec: PodRecord) -> None:
        ready = _ready_file(self.layout, rec)
        ready.unlink(missing_ok=True)
        by_proto = {
            p: ",".join(str(n) for n, q in rec.ports if q == p) for p in ("TCP", "UDP", "SCTP")
        }
        cmd = host.in_ns(
            rec.netns, sys.executable, "-I", "-S", str(PODSERVER),
            "--name", rec.ref, "--ready-file", str(ready),
            "--tcp", by_proto["TCP"], "--udp", by_proto["UDP"], "--sctp", by_proto["SCTP"],
        )  # fmt: skip
        proc = host.spawn(cmd, _server_log(self.layout, rec), _server_pidfile(self.layout, rec))
        deadline = time.monotonic() + SERVER_READY_TIMEOUT
        while not ready.exists():
            exited = proc.poll()
            if exited is not None or time.monotonic() > deadline:
                log = _server_log(self.layout, rec).read_text(errors="replace")[-500:]
                why = f"exited {exited}" if exited is not None else "not ready in time"
                raise PodError(f"the pod's server did not start ({why}): {log}")
            time.sleep(0.005)

    def ensure_servers(self) -> list[str]:
        """Restart the server of every pod whose server is gone (as a kubelet restarts a
        container); the pods it restarted."""
        restarted = []
        for rec in records(self.layout):
            if rec.ip and host.netns_exists(rec.netns) and server_pid(self.layout, rec) is None:
                self._start_server(rec)
                restarted.append(rec.ref)
        return restarted

    # --- remove ---------------------------------------------------------------------------------

    def remove(self, rec: PodRecord, cni: bool = True) -> None:
        """Server, CNI DEL (skipped when `cni` is false: the node is going away), namespace,
        object and record. DEL errors are raised after everything else is gone."""
        stop_server(self.layout, rec)
        error: Exception | None = None
        if cni:
            node = self.layout.node_by_name(rec.node)
            runtime, rt = self.runtime(node), self._runtime_conf(rec)
            try:
                _in_node(node, lambda: runtime.delete(self.network, rt))
            except (CniCallError, OSError) as exc:
                error = exc
        forget(self.layout, rec)
        if error is not None:
            raise PodError(f"CNI DEL: {error}")


def _in_node(node: NodeLayout, work: Callable[[], Any]) -> Any:
    """Run `work` (and the processes it starts) in the node's namespace, as on that node."""
    if not host.netns_exists(node.netns):
        raise PodError(f"node {node.name} is not up (no namespace {node.netns})")
    fd = os.open(host.netns_path(node.netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        return in_netns(fd, work)
    finally:
        os.close(fd)


def _running_status(rec: PodRecord, node: NodeLayout) -> dict[str, Any]:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {
        "phase": "Running",
        "hostIP": node.address,
        "hostIPs": [{"ip": node.address}],
        "podIP": rec.ip,
        "podIPs": [{"ip": rec.ip}],
        "startTime": now,
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
    }


def stop_server(layout: LabLayout, rec: PodRecord) -> None:
    pid = server_pid(layout, rec)
    if pid is not None:
        host.terminate(pid, str(_ready_file(layout, rec)), timeout=2.0)


def forget(layout: LabLayout, rec: PodRecord) -> None:
    """Remove what remains of a pod without asking its node: server, namespace, object, files."""
    stop_server(layout, rec)
    host.delete_netns(rec.netns)
    ManifestsDir(layout.manifests_dir).remove("Pod", rec.namespace, rec.name)
    for path in (
        _ready_file(layout, rec),
        _server_log(layout, rec),
        _server_pidfile(layout, rec),
        layout.pod_record(rec.namespace, rec.name),
    ):
        path.unlink(missing_ok=True)


def forget_pods_on(layout: LabLayout, node_name: str) -> None:
    """A node goes: its pods go with it (no CNI DEL; the node's agent is going too)."""
    for rec in records(layout):
        if rec.node == node_name:
            forget(layout, rec)


def forget_all_pods(layout: LabLayout) -> None:
    """Every pod goes (in parallel: each waits for its server to end)."""
    with ThreadPoolExecutor(max_workers=PARALLEL_PODS) as pool:
        list(pool.map(lambda rec: forget(layout, rec), records(layout)))
    shutil.rmtree(layout.cni_cache_dir, ignore_errors=True)
