"""A mini container runtime for CNI: drives plugin executables the way libcni (and so podman,
containerd and cnitool) does, for tests, benchmarks and the lab.

Per call it builds each plugin's request config like libcni: the plugin's own section plus the
list's `name` and `cniVersion`, `runtimeConfig` for the capabilities the plugin declares,
`prevResult` (the previous plugin's result on ADD, the cached final result on CHECK and DEL);
runs the executable with the CNI_* environment and that config on stdin; caches the final ADD
result; sends GC with both attachment keys after replaying DEL for stale cached attachments;
sends STATUS to every plugin. `python -m lab.cniruntime add|check|del|gc|status NET NETNS` is a
small cnitool.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

DEFAULT_CONF_DIR: Final = "/etc/cni/net.d"
DEFAULT_BIN_DIRS: Final = ("/opt/cni/bin", "/usr/lib/cni")
CACHE_KIND: Final = "cniCacheV1"


@dataclass(frozen=True)
class PluginAnswer:
    """One executable run: exit code and raw output."""

    exit_code: int
    stdout: bytes
    stderr: bytes

    def json(self) -> Any:
        return json.loads(self.stdout)


class CniCallError(Exception):
    """A plugin failed: its CNI error (code, msg, details) or why its output made no sense."""

    def __init__(self, plugin: str, command: str, answer: PluginAnswer) -> None:
        self.plugin = plugin
        self.command = command
        self.answer = answer
        self.code = 999
        self.msg = answer.stdout.decode(errors="replace").strip() or "no output"
        self.details = answer.stderr.decode(errors="replace").strip()
        with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
            err = answer.json()
            self.code = int(err["code"])
            self.msg = str(err.get("msg", ""))
            self.details = str(err.get("details", ""))
        super().__init__(
            f"plugin {plugin} {command} failed ({self.code}): {self.msg}: {self.details}"
        )


def exec_plugin(
    path: str, env: Mapping[str, str], stdin: bytes, timeout: float = 120.0
) -> PluginAnswer:
    """Run a plugin executable exactly as given: `env` is its whole environment."""
    proc = subprocess.run(
        [path], input=stdin, env=dict(env), capture_output=True, timeout=timeout, check=False
    )
    return PluginAnswer(proc.returncode, proc.stdout, proc.stderr)


def cnitool_container_id(netns: str) -> str:
    """cnitool's container id: `cnitool-` + the first 10 bytes of sha512(netns path), in hex."""
    return "cnitool-" + hashlib.sha512(netns.encode()).digest()[:10].hex()


@dataclass(frozen=True)
class NetworkList:
    """A conflist: name, cniVersion, the plugin sections in order."""

    name: str
    cni_version: str
    plugins: tuple[Mapping[str, Any], ...]
    disable_check: bool = False
    disable_gc: bool = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NetworkList:
        if "plugins" in data:
            plugins = tuple(data["plugins"])
        else:  # a single-plugin .conf
            plugins = ({k: v for k, v in data.items() if k not in ("name", "cniVersion")},)
        return cls(
            name=str(data["name"]),
            cni_version=str(data.get("cniVersion", "")),
            plugins=plugins,
            disable_check=bool(data.get("disableCheck", False)),
            disable_gc=bool(data.get("disableGC", False)),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> NetworkList:
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def find(cls, conf_dir: str, name: str) -> NetworkList:
        """libcni's lookup by name: *.conflist first, then *.conf and *.json, sorted."""
        files = sorted(Path(conf_dir).glob("*.conflist"))
        files += sorted([*Path(conf_dir).glob("*.conf"), *Path(conf_dir).glob("*.json")])
        for path in files:
            with contextlib.suppress(ValueError, KeyError, OSError):
                net = cls.from_file(path)
                if net.name == name:
                    return net
        raise LookupError(f"no network {name!r} in {conf_dir}")


@dataclass(frozen=True)
class RuntimeConf:
    """One attachment as the runtime describes it."""

    container_id: str
    netns: str
    ifname: str = "eth0"
    args: tuple[tuple[str, str], ...] = ()
    capability_args: Mapping[str, Any] = field(default_factory=dict)

    def cni_args(self) -> str:
        return ";".join(f"{k}={v}" for k, v in self.args)


class CniRuntime:
    """Drives the plugins of a network list over their executables."""

    def __init__(
        self,
        bin_dirs: Sequence[str] = DEFAULT_BIN_DIRS,
        cache_dir: str = "/var/lib/cni",
        *,
        base_env: Mapping[str, str] | None = None,
        check_versions: bool = False,
        timeout: float = 120.0,
    ) -> None:
        self.bin_dirs = tuple(bin_dirs)
        self.cache_dir = Path(cache_dir)
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.check_versions = check_versions  # podman calls VERSION before ADD and DEL
        self.timeout = timeout

    # -- verbs -----------------------------------------------------------------------------

    def add(self, net: NetworkList, rt: RuntimeConf) -> dict[str, Any]:
        """ADD each plugin in order, each given the previous result; cache the final one."""
        self._maybe_check_versions(net)
        result: dict[str, Any] | None = None
        for plugin in net.plugins:
            conf = self.plugin_config(net, plugin, rt, result)
            answer = self._run(plugin, "ADD", conf, rt)
            result = answer.json()
        assert result is not None, "a network list has at least one plugin"
        self._write_cache(net, rt, result)
        return result

    def check(self, net: NetworkList, rt: RuntimeConf) -> None:
        """CHECK each plugin in order with the cached final result."""
        cached = self.cached_result(net, rt)
        if cached is None:
            raise LookupError(f"no cached result for {rt.container_id}/{rt.ifname}")
        for plugin in net.plugins:
            self._run(plugin, "CHECK", self.plugin_config(net, plugin, rt, cached), rt)

    def delete(self, net: NetworkList, rt: RuntimeConf) -> None:
        """DEL each plugin in reverse order with the cached result (none if not cached)."""
        self._maybe_check_versions(net)
        cached = self.cached_result(net, rt)
        first_error: CniCallError | None = None
        for plugin in reversed(net.plugins):
            try:
                self._run(plugin, "DEL", self.plugin_config(net, plugin, rt, cached), rt)
            except CniCallError as exc:
                first_error = first_error or exc
        if first_error is not None:
            raise first_error
        self._cache_path(net, rt).unlink(missing_ok=True)

    def gc(self, net: NetworkList, valid: Iterable[tuple[str, str]]) -> None:
        """libcni's GC: DEL cached attachments not in `valid`, then GC to every plugin with
        both `cni.dev/valid-attachments` and the older `cni.dev/attachments`."""
        keep = {(cid, ifname) for cid, ifname in valid}
        errors: list[Exception] = []
        for cid, ifname, netns in self.cached_attachments(net):
            if (cid, ifname) not in keep:
                try:
                    self.delete(net, RuntimeConf(cid, netns, ifname))
                except CniCallError as exc:
                    errors.append(exc)
        attachments = [{"containerID": c, "ifname": i} for c, i in sorted(keep)]
        extra = {"cni.dev/valid-attachments": attachments, "cni.dev/attachments": attachments}
        for plugin in net.plugins:
            conf = {**self.plugin_config(net, plugin, None, None), **extra}
            try:
                self._run(plugin, "GC", conf, None)
            except CniCallError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def status(self, net: NetworkList) -> None:
        """STATUS to every plugin; the first failure is raised."""
        for plugin in net.plugins:
            self._run(plugin, "STATUS", self.plugin_config(net, plugin, None, None), None)

    def version(self, plugin_type: str) -> dict[str, Any]:
        env = {**self.base_env, "CNI_COMMAND": "VERSION"}
        answer = exec_plugin(self.find(plugin_type), env, b'{"cniVersion":"1.1.0"}', self.timeout)
        if answer.exit_code != 0:
            raise CniCallError(plugin_type, "VERSION", answer)
        data: dict[str, Any] = answer.json()
        return data

    # -- building requests -----------------------------------------------------------------

    def plugin_config(
        self,
        net: NetworkList,
        plugin: Mapping[str, Any],
        rt: RuntimeConf | None,
        prev_result: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """The request config libcni sends this plugin."""
        conf = {k: v for k, v in plugin.items()}
        conf["name"] = net.name
        conf["cniVersion"] = net.cni_version
        if rt is not None:
            runtime = {
                cap: rt.capability_args[cap]
                for cap, on in dict(plugin.get("capabilities", {})).items()
                if on and cap in rt.capability_args
            }
            if runtime:
                conf["runtimeConfig"] = runtime
        if prev_result is not None:
            prev = dict(prev_result)
            prev.setdefault("cniVersion", net.cni_version)
            conf["prevResult"] = prev
        return conf

    def environment(self, command: str, rt: RuntimeConf | None) -> dict[str, str]:
        env = {k: v for k, v in self.base_env.items() if not k.startswith("CNI_")}
        env["CNI_COMMAND"] = command
        env["CNI_PATH"] = ":".join(self.bin_dirs)
        if rt is not None:
            env.update(
                CNI_CONTAINERID=rt.container_id,
                CNI_NETNS=rt.netns,
                CNI_IFNAME=rt.ifname,
                CNI_ARGS=rt.cni_args(),
            )
        return env

    def find(self, plugin_type: str) -> str:
        for directory in self.bin_dirs:
            path = os.path.join(directory, plugin_type)
            if os.access(path, os.X_OK):
                return path
        raise FileNotFoundError(f"plugin {plugin_type!r} not in {':'.join(self.bin_dirs)}")

    def _run(
        self,
        plugin: Mapping[str, Any],
        command: str,
        conf: Mapping[str, Any],
        rt: RuntimeConf | None,
    ) -> PluginAnswer:
        plugin_type = str(plugin["type"])
        stdin = json.dumps(conf).encode()
        answer = exec_plugin(
            self.find(plugin_type), self.environment(command, rt), stdin, self.timeout
        )
        if answer.exit_code != 0:
            raise CniCallError(plugin_type, command, answer)
        return answer

    def _maybe_check_versions(self, net: NetworkList) -> None:
        if not self.check_versions:
            return
        for plugin in net.plugins:
            supported = self.version(str(plugin["type"])).get("supportedVersions", [])
            if net.cni_version not in supported:
                raise RuntimeError(
                    f"plugin {plugin['type']} does not support config version {net.cni_version}"
                )

    # -- the result cache (/var/lib/cni/results/<net>-<containerID>-<ifname>) ---------------

    def _cache_path(self, net: NetworkList, rt: RuntimeConf) -> Path:
        return self.cache_dir / "results" / f"{net.name}-{rt.container_id}-{rt.ifname}"

    def _write_cache(self, net: NetworkList, rt: RuntimeConf, result: Mapping[str, Any]) -> None:
        path = self._cache_path(net, rt)
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {
            "kind": CACHE_KIND,
            "containerId": rt.container_id,
            "ifName": rt.ifname,
            "networkName": net.name,
            "netns": rt.netns,
            "cniArgs": [list(a) for a in rt.args],
            "capabilityArgs": dict(rt.capability_args),
            "result": result,
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(entry))
        tmp.rename(path)

    def cached_result(self, net: NetworkList, rt: RuntimeConf) -> dict[str, Any] | None:
        try:
            entry = json.loads(self._cache_path(net, rt).read_text())
        except (OSError, ValueError):
            return None
        result = entry.get("result")
        return result if isinstance(result, dict) else None

    def cached_attachments(self, net: NetworkList) -> list[tuple[str, str, str]]:
        """(containerID, ifname, netns) of every cached attachment on this network."""
        out = []
        for path in sorted((self.cache_dir / "results").glob(f"{net.name}-*")):
            with contextlib.suppress(OSError, ValueError, KeyError):
                entry = json.loads(path.read_text())
                if entry.get("networkName") == net.name:
                    out.append((entry["containerId"], entry["ifName"], entry.get("netns", "")))
        return out


def main(argv: Sequence[str] | None = None) -> int:
    """cnitool: `add|check|del|gc|status NET [NETNS]`, configured like cnitool by NETCONFPATH,
    CNI_PATH, CNI_ARGS, CAP_ARGS and CNI_IFNAME (and CNI_CACHE_DIR, default /var/lib/cni, for
    the result cache); ADD prints the result."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] not in ("add", "check", "del", "gc", "status"):
        print(
            "usage: python -m lab.cniruntime add|check|del|gc|status NET [NETNS]", file=sys.stderr
        )
        return 2
    verb, name = args[0], args[1]
    netns = args[2] if len(args) > 2 else ""
    net = NetworkList.find(os.environ.get("NETCONFPATH", DEFAULT_CONF_DIR), name)
    bin_dirs = [d for d in os.environ.get("CNI_PATH", "").split(":") if d] or DEFAULT_BIN_DIRS
    runtime = CniRuntime(bin_dirs, os.environ.get("CNI_CACHE_DIR", "/var/lib/cni"))
    pairs = [p.split("=", 1) for p in os.environ.get("CNI_ARGS", "").split(";") if "=" in p]
    rt = RuntimeConf(
        container_id=cnitool_container_id(netns),
        netns=netns,
        ifname=os.environ.get("CNI_IFNAME", "eth0"),
        args=tuple((k, v) for k, v in pairs),
        capability_args=json.loads(os.environ.get("CAP_ARGS", "{}")),
    )
    try:
        if verb == "add":
            print(json.dumps(runtime.add(net, rt), indent=2))
        elif verb == "check":
            runtime.check(net, rt)
        elif verb == "del":
            runtime.delete(net, rt)
        elif verb == "gc":
            runtime.gc(net, [(c, i) for c, i, _ in runtime.cached_attachments(net)])
        else:
            runtime.status(net)
    except (CniCallError, LookupError, OSError, RuntimeError) as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
