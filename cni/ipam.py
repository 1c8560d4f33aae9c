"""IPAM from the node's PodCIDR, chosen per network by the ipam section's type:

- `plumb` (and a conflist without `ipam`): the agent reserves the address itself
  (`cni.ipstore`), in host-local's on-disk format and under host-local's lock, so no plugin
  is run on the ADD path;
- `host-local` (or any other type): the plugin is run as a delegate found in CNI_PATH, with
  the node's range, gateway and dataDir injected into the call's `ipam` section.

Either way one file per address in `<dataDir>/<network>/`, created under an flock on
`<dataDir>/<network>/lock`, makes allocations safe across concurrent calls and durable across
agent restarts, so no address is handed out twice; GC of that store is done here for both
(host-local has no GC).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, ip_interface
from typing import Any, Final

from cni.ipstore import Allocator
from cni.protocol import (
    DEFAULT_IPAM,
    Attachment,
    CniError,
    Command,
    ErrorCode,
    IPConfig,
    Request,
    Result,
    Route,
    decode_result,
    version_tuple,
)

DEFAULT_DATA_DIR: Final = "/var/lib/cni/networks"
FALLBACK_DIRS: Final = ("/usr/lib/cni", "/opt/cni/bin")
HOST_LOCAL: Final = "host-local"
PLUMB_IPAM: Final = DEFAULT_IPAM  # the in-agent allocator
# Keys of host-local's legacy single range: they would add a second range next to ours.
_LEGACY_RANGE_KEYS: Final = ("subnet", "rangeStart", "rangeEnd", "gateway", "ranges", "range")

log = logging.getLogger("plumb.cni.ipam")


@dataclass(frozen=True)
class DelegateAnswer:
    exit_code: int
    stdout: bytes
    stderr: bytes


def find_plugin(name: str, cni_path: Sequence[str], fallback: Sequence[str]) -> str:
    """DLG-01/ENV-07: the first `name` in CNI_PATH order, then the standard directories."""
    if not name or "/" in name:
        raise CniError(ErrorCode.INVALID_NETWORK_CONFIG, "invalid plugin name", repr(name))
    dirs = [*cni_path, *(d for d in fallback if d not in cni_path)]
    for directory in dirs:
        path = os.path.join(directory, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise CniError(
        ErrorCode.IPAM_FAILURE, f"failed to find plugin {name!r}", f"searched {':'.join(dirs)}"
    )


def pick_version(wanted: str, supported: Sequence[str]) -> str | None:
    """DLG-07: ask the delegate in our version, else in the newest one it has below ours."""
    if wanted in supported:
        return wanted
    older = [v for v in supported if _safe_version(v) < version_tuple(wanted)]
    return max(older, key=_safe_version) if older else None


def _safe_version(version: str) -> tuple[int, ...]:
    try:
        return version_tuple(version)
    except ValueError:
        return (0,)


def gateway_of(pod_cidr: IPv4Network) -> IPv4Address:
    """The gateway (plumb-gw0) is the first host address of the PodCIDR."""
    return pod_cidr.network_address + 1


def host_local_section(
    ipam: Mapping[str, Any], pod_cidr: IPv4Network, data_dir: str
) -> dict[str, Any]:
    """The call's `ipam` with the node's range, gateway and our dataDir injected, and a default
    route via the gateway unless the network configures its own routes."""
    section = {k: v for k, v in ipam.items() if k not in _LEGACY_RANGE_KEYS}
    section["type"] = HOST_LOCAL
    section["ranges"] = [[{"subnet": str(pod_cidr), "gateway": str(gateway_of(pod_cidr))}]]
    section["dataDir"] = data_dir
    section.setdefault("routes", [{"dst": "0.0.0.0/0"}])
    return section


def fill_route_gateways(result: Result) -> Result:
    """DLG-04: a route without `gw` goes via the gateway of the IP of its family."""
    gateways = {ipc.address.version: ipc.gateway for ipc in result.ips if ipc.gateway}
    routes = tuple(
        r if r.gw is not None else replace(r, gw=gateways.get(r.dst.version)) for r in result.routes
    )
    return replace(result, routes=routes)


def ipam_type(req: Request) -> str:
    return str(req.ipam.get("type", PLUMB_IPAM))


def in_agent(req: Request) -> bool:
    """Whether the agent's own allocator serves this call (ipam type `plumb`)."""
    return ipam_type(req) == PLUMB_IPAM


def requested_ip(req: Request) -> IPv4Address | None:
    """HL-05: an address asked for by CNI_ARGS `IP=`, `args.cni.ips` or runtimeConfig `ips`
    (host-local's three ways). The node has one IPv4 range, so at most one IPv4 address."""
    wanted: set[IPv4Address] = set()
    raw_args = req.args.get("IP", "")
    for item in (s.strip() for s in raw_args.split(",") if s.strip()):
        wanted.add(_requested(item, ErrorCode.INVALID_ENVIRONMENT))
    conf_args = req.config.get("args")
    cni_args = conf_args.get("cni") if isinstance(conf_args, dict) else None
    runtime = req.config.get("runtimeConfig")
    for source in (
        cni_args.get("ips") if isinstance(cni_args, dict) else None,
        runtime.get("ips") if isinstance(runtime, dict) else None,
    ):
        for item in source if isinstance(source, list) else ():
            wanted.add(_requested(item, ErrorCode.INVALID_NETWORK_CONFIG))
    if len(wanted) > 1:
        raise CniError(
            ErrorCode.INVALID_NETWORK_CONFIG,
            "more than one IPv4 address requested",
            ", ".join(sorted(map(str, wanted))),
        )
    return next(iter(wanted), None)


def _uses_the_store(req: Request) -> bool:
    """Whether this network's addresses live in host-local's store, which GC and STATUS read."""
    return ipam_type(req) in (PLUMB_IPAM, HOST_LOCAL)


def _requested(item: object, code: ErrorCode) -> IPv4Address:
    try:
        address = ip_interface(item).ip if isinstance(item, str) else None
    except ValueError:
        address = None
    if not isinstance(address, IPv4Address):
        raise CniError(code, "invalid requested IP address", repr(item))
    return address


def _configured_routes(ipam: Mapping[str, Any]) -> tuple[Route, ...]:
    """The ipam section's `routes` (host-local's syntax), else a default route; a route
    without `gw` goes via the gateway (DLG-04)."""
    raw = ipam.get("routes", [{"dst": "0.0.0.0/0"}])
    return decode_result({"routes": raw}, "ipam routes").routes


class NodeIpam:
    """IPAM for one node; `pod_cidr` is the node's range. The ipam section's type decides who
    hands out addresses: `plumb` (the default when a conflist has no ipam section) reserves
    them in the agent (`cni.ipstore`); `host-local`, or any other type, is run as a delegate
    found in CNI_PATH. Both keep host-local's store under `data_dir`."""

    def __init__(
        self,
        pod_cidr: IPv4Network | str,
        *,
        data_dir: str = DEFAULT_DATA_DIR,
        fallback_dirs: Sequence[str] = FALLBACK_DIRS,
        timeout: float = 30.0,
    ) -> None:
        self.pod_cidr = IPv4Network(pod_cidr)
        self.gateway = gateway_of(self.pod_cidr)
        self.data_dir = data_dir
        self.allocator = Allocator(self.pod_cidr, data_dir)
        self._fallback = tuple(fallback_dirs)
        self._timeout = timeout
        self._versions: dict[str, tuple[str, ...]] = {}
        self._versions_lock = threading.Lock()

    # -- the verbs -------------------------------------------------------------------------

    def add(self, req: Request) -> Result:
        """Reserve addresses for the attachment: an IPAM result (no interfaces, RES-04)."""
        if in_agent(req):
            return self._allocate(req)
        answer = self._call(req, Command.ADD)
        try:
            obj = json.loads(answer)
        except ValueError as exc:
            raise CniError(ErrorCode.IPAM_FAILURE, "IPAM result is not JSON", str(exc)) from exc
        result = fill_route_gateways(decode_result(obj, "IPAM result"))
        if not result.ips:
            raise CniError(ErrorCode.IPAM_FAILURE, "IPAM returned no address", answer.decode())
        return result

    def delete(self, req: Request) -> None:
        """Release the attachment's addresses; releasing nothing is fine (HL-06)."""
        if in_agent(req):
            self._release(req)
        else:
            self._call(req, Command.DEL)

    def check(self, req: Request) -> None:
        """Fail when no address is held for the attachment (HL-07)."""
        if not in_agent(req):
            self._call(req, Command.CHECK)
        elif not self.allocator.held(req.network, req.attachment):
            raise CniError(
                ErrorCode.CHECK_FAILURE,
                "no IP address reserved for the attachment",
                f"{req.container_id}/{req.ifname} in {self.network_dir(req.network)}",
            )

    def gc(self, req: Request) -> None:
        """Release every reservation of this network not in the valid list (GC-03, GC-05):
        host-local's store ourselves (host-local has no GC), then GC to a delegate that has it."""
        errors: list[str] = []
        if _uses_the_store(req):
            try:
                self.release_stale(req.network, req.valid_attachments)
            except OSError as exc:
                errors.append(f"host-local store: {exc}")
        if not in_agent(req) and self._delegate_speaks(req, "1.1.0"):
            try:
                self._call(req, Command.GC)
            except CniError as exc:
                errors.append(str(exc))
        if errors:
            raise CniError(ErrorCode.IPAM_FAILURE, "IPAM GC failed", "; ".join(errors))

    def status(self, req: Request) -> None:
        """STS-03: forward STATUS where the delegate knows it; else check the pool ourselves."""
        if not in_agent(req):
            if self._delegate_speaks(req, "1.1.0"):
                self._call(req, Command.STATUS)
                return
            self._plugin(req)  # the delegate must at least exist
        if _uses_the_store(req) and self.free_addresses(req.network) == 0:
            raise CniError(
                ErrorCode.NOT_AVAILABLE, "IP pool exhausted", f"no free address in {self.pod_cidr}"
            )

    # -- the in-agent allocator ------------------------------------------------------------

    def _allocate(self, req: Request) -> Result:
        routes = _configured_routes(req.ipam)
        try:
            address = self.allocator.allocate(req.network, req.attachment, requested_ip(req))
        except OSError as exc:
            raise CniError(ErrorCode.IPAM_FAILURE, "cannot reserve an address", str(exc)) from exc
        ip = IPv4Interface(f"{address}/{self.pod_cidr.prefixlen}")
        result = Result(ips=(IPConfig(address=ip, gateway=self.gateway),), routes=routes)
        return fill_route_gateways(result)

    def _release(self, req: Request) -> None:
        try:
            released = self.allocator.release(req.network, req.attachment)
        except OSError as exc:
            raise CniError(ErrorCode.IPAM_FAILURE, "cannot release addresses", str(exc)) from exc
        if released:
            log.debug("released %s for %s/%s", ", ".join(released), *req.attachment)

    # -- host-local's store ----------------------------------------------------------------

    def network_dir(self, network: str) -> str:
        return self.allocator.store(network).directory

    def reservations(self, network: str) -> dict[str, str]:
        """address -> file content, for every address reserved on this network."""
        return self.allocator.store(network).entries()

    def release_stale(self, network: str, valid: frozenset[Attachment]) -> list[str]:
        """Remove reservations of attachments not in `valid`, under host-local's flock."""
        stale = self.allocator.release_stale(network, valid)
        if stale:
            log.info("GC released %s on network %s", ", ".join(stale), network)
        return stale

    def free_addresses(self, network: str) -> int:
        return self.allocator.free(network)

    # -- delegation ------------------------------------------------------------------------

    def _plugin(self, req: Request) -> str:
        return find_plugin(ipam_type(req), req.cni_path, self._fallback)

    def _delegate_speaks(self, req: Request, version: str) -> bool:
        return version in self._supported(self._plugin(req))

    def _supported(self, path: str) -> tuple[str, ...]:
        with self._versions_lock:
            cached = self._versions.get(path)
        if cached is not None:
            return cached
        answer = self._run(path, {"CNI_COMMAND": "VERSION"}, b'{"cniVersion":"1.1.0"}')
        try:
            versions = tuple(json.loads(answer.stdout)["supportedVersions"])
        except (ValueError, KeyError, TypeError):
            versions = ()
        with self._versions_lock:
            self._versions[path] = versions
        return versions

    def _call(self, req: Request, command: Command) -> bytes:
        """Run the delegate for `command` with the full config (DLG-02); its stderr is logged,
        and so reaches the executable's stderr (DLG-03); its error is passed on (DLG-06)."""
        path = self._plugin(req)
        version = pick_version(req.cni_version, self._supported(path)) or req.cni_version
        config = self._delegate_config(req, version)
        answer = self._run(path, self._delegate_env(req, command), config)
        name = os.path.basename(path)
        if answer.stderr.strip():
            log.warning("%s %s: %s", name, command.value, answer.stderr.decode(errors="replace"))
        if answer.exit_code != 0:
            raise _delegate_error(name, command, answer)
        return answer.stdout

    def _delegate_config(self, req: Request, version: str) -> bytes:
        config = dict(req.config)
        config["cniVersion"] = version
        if ipam_type(req) == HOST_LOCAL:
            config["ipam"] = host_local_section(req.ipam, self.pod_cidr, self.data_dir)
        if not config.get("prevResult"):
            config.pop("prevResult", None)
        return json.dumps(config).encode()

    def _delegate_env(self, req: Request, command: Command) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env.update(req.env)
        env["CNI_COMMAND"] = command.value
        # host-local parses CNI_ARGS itself and rejects the K8S_* keys it does not know.
        args = req.env.get("CNI_ARGS", "")
        if args and "IgnoreUnknown=" not in args:
            env["CNI_ARGS"] = f"IgnoreUnknown=1;{args}"
        if not env.get("CNI_PATH"):
            env["CNI_PATH"] = ":".join(self._fallback)
        return env

    def _run(self, path: str, env: Mapping[str, str], stdin: bytes) -> DelegateAnswer:
        try:
            proc = subprocess.run(
                [path],
                input=stdin,
                env=dict(env),
                capture_output=True,
                timeout=self._timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise CniError(
                ErrorCode.IPAM_FAILURE, "IPAM plugin timed out", f"{path} after {exc.timeout}s"
            ) from exc
        except OSError as exc:
            raise CniError(ErrorCode.IPAM_FAILURE, "IPAM plugin failed to start", str(exc)) from exc
        return DelegateAnswer(proc.returncode, proc.stdout, proc.stderr)


def _delegate_error(name: str, command: Command, answer: DelegateAnswer) -> CniError:
    try:
        err = json.loads(answer.stdout)
        code = int(err["code"])
        msg = str(err.get("msg", ""))
        details = str(err.get("details", ""))
    except (ValueError, KeyError, TypeError):
        text = (answer.stdout or answer.stderr).decode(errors="replace").strip()
        return CniError(ErrorCode.IPAM_FAILURE, f"{name} {command.value} failed", text)
    if code == ErrorCode.INTERNAL:  # the delegate's untyped error is, to us, an IPAM failure
        code = ErrorCode.IPAM_FAILURE
    return CniError(code, msg if msg.startswith(name) else f"{name}: {msg}", details)


# The agent and the benchmarks knew this class by its first job.
HostLocalIpam = NodeIpam
