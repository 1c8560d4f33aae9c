"""The agent's configuration: one YAML file read into a frozen, fully validated `AgentConfig`.

Every field is declared once, below, with its type, default and docstring; `docs/config.md` is
generated from those declarations (`python -m controller.config --markdown`) and a unit test
keeps the two in agreement. A bad value is one `ConfigError` naming the field.

    python -m controller.config PATH        # validate PATH, print the effective config
    python -m controller.config --markdown  # print docs/config.md
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import ipaddress
import os
import re
import sys
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from controller.errors import ConfigError
from controller.vswitchd import parse_routes

NODE_NAME_ENV = "NODE_NAME"
SOURCES = ("kubernetes", "manifests")
DATAPATH_TYPES = ("system", "netdev")
TUNNEL_TYPES = ("geneve", "vxlan", "none")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
MAX_UNIX_SOCKET_PATH = 107  # sun_path is 108 bytes with the terminating NUL


@dataclass(frozen=True)
class AgentConfig:
    """Everything `plumb-agent` needs to know before it starts. Constructing one validates it."""

    node_name: str = ""
    """This node's name as Kubernetes knows it (a DNS subdomain). Defaults to the `NODE_NAME`
    environment variable, which the DaemonSet fills from `spec.nodeName`. Required."""

    source: str = "manifests"
    """Where the cluster state comes from: `kubernetes` (list + watch on the API server) or
    `manifests` (a directory of Kubernetes YAML, for labs; no API server needed)."""

    kubeconfig: str = ""
    """Kubeconfig file for the `kubernetes` source. Empty: the in-cluster service account when
    running in a pod, otherwise the default kubeconfig (`$KUBECONFIG`, `~/.kube/config`)."""

    manifests_dir: str = "/etc/plumb/manifests"
    """Directory of Kubernetes YAML (Pods, Nodes, Namespaces, NetworkPolicies) read and watched by
    the `manifests` source."""

    bridge: str = "br-int"
    """Name of the integration bridge the agent owns (an interface name: at most 15 characters)."""

    datapath_type: str = "system"
    """Open vSwitch datapath: `system` (the kernel module) or `netdev` (userspace; where the
    kernel module is missing, as in CI and labs)."""

    tunnel_type: str = "geneve"
    """Encapsulation between nodes: `geneve`, `vxlan`, or `none` (routed, no encapsulation)."""

    ovs_rundir: str = "/var/run/openvswitch"
    """Open vSwitch run directory: the OVSDB socket and the bridge's management socket
    (`<bridge>.mgmt`) live here. Absolute path."""

    ovs_routes: str = ""
    """Routes ovs-vswitchd must hold in its own table for tunnels on the userspace datapath,
    `PREFIX BRIDGE [GATEWAY]` separated by commas (e.g. `172.30.0.0/24 br-phy`): added with
    `ovs-appctl ovs/route/add` at start and again whenever ovs-vswitchd restarts (it forgets
    them). For nodes that keep their underlay routes out of ovs-vswitchd's sight, as the lab does
    (docs/lab.md). Empty: none (ovs-vswitchd learns the kernel's routes by itself)."""

    ovsdb_remote: str = ""
    """OVSDB server to talk to: `unix:PATH`, `tcp:HOST:PORT` or `ssl:HOST:PORT`. Empty means
    `unix:<ovs_rundir>/db.sock`."""

    cni_socket: str = "/var/run/plumb/cni.sock"
    """Unix socket the agent serves CNI requests on; the `plumb` executable connects to it.
    Absolute path of at most 107 bytes."""

    ipam_data_dir: str = "/var/lib/cni/networks"
    """Where pod addresses are reserved, one file per address in host-local's format: by the
    agent's own allocator (a conflist without `ipam`), or by host-local when a conflist
    delegates to it (the node's PodCIDR and this directory injected). Absolute path; must
    survive agent restarts."""

    mtu: int = 0
    """MTU of pod interfaces. 0: derive it from the transport interface's MTU minus the tunnel
    overhead. Otherwise 68 to 65535."""

    transport_interface: str = ""
    """Interface that carries tunnel traffic to other nodes. Empty: the interface holding
    `node_address` (or the default route)."""

    node_address: str = ""
    """This node's underlay IP address (tunnel endpoint). Empty: the Node's `InternalIP`."""

    health_bind_address: str = "127.0.0.1:9641"
    """`HOST:PORT` of the HTTP server for `/livez`, `/readyz`, `/metrics` and `/loglevel`
    (IPv6 as `[ADDR]:PORT`; port 0 picks a free one)."""

    log_level: str = "info"
    """Initial log level: `debug`, `info`, `warning` or `error`. Change it at run time with
    SIGUSR1 (more verbose), SIGUSR2 (less verbose) or `POST /loglevel`."""

    log_format: str = "text"
    """Log line format on stderr: `text` (key=value) or `json` (one object per line)."""

    def __post_init__(self) -> None:
        fields = dataclasses.fields(self)
        for f in fields:
            value = getattr(self, f.name)
            expected = int if f.type in ("int", int) else str
            if type(value) is not expected:  # bool is an int subclass; refuse it too
                raise ConfigError(
                    f.name, f"must be {_type_name(expected)}, got {type(value).__name__} {value!r}"
                )
        if not self.ovsdb_remote:
            object.__setattr__(self, "ovsdb_remote", f"unix:{self.ovs_rundir}/db.sock")
        object.__setattr__(self, "log_level", self.log_level.lower())
        for f in fields:
            try:
                _VALIDATORS[f.name](getattr(self, f.name))
            except ValueError as err:
                raise ConfigError(f.name, str(err)) from None

    @property
    def health_host_port(self) -> tuple[str, int]:
        """`health_bind_address` split into host (no brackets) and port."""
        return split_host_port(self.health_bind_address)


# --- validators: each raises ValueError with a message that completes "FIELD: ..." -------------

_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?")


def _type_name(t: type) -> str:
    return {int: "an integer", str: "a string"}[t]


def _one_of(choices: tuple[str, ...]) -> Callable[[str], None]:
    def check(value: str) -> None:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}; got {value!r}")

    return check


def _node_name(value: str) -> None:
    if not value:
        raise ValueError(f"required; set it in the file or the {NODE_NAME_ENV} environment")
    if len(value) > 253 or not _DNS_SUBDOMAIN.fullmatch(value):
        raise ValueError(f"must be a DNS subdomain (lowercase a-z, 0-9, '-', '.'); got {value!r}")


def _ifname(value: str, *, optional: bool = False) -> None:
    if optional and not value:
        return
    if not _IFNAME.fullmatch(value):
        raise ValueError(
            f"must be an interface name: 1 to 15 of A-Z a-z 0-9 _ . - (not starting with _ . -);"
            f" got {value!r}"
        )


def _path(value: str, *, absolute: bool = False, max_len: int | None = None) -> None:
    if not value or "\0" in value:
        raise ValueError(f"must be a non-empty path; got {value!r}")
    if absolute and not value.startswith("/"):
        raise ValueError(f"must be an absolute path; got {value!r}")
    if max_len is not None and len(value.encode()) > max_len:
        raise ValueError(f"must be at most {max_len} bytes long; got {len(value.encode())}")


def _optional_path(value: str) -> None:
    if value:
        _path(value)


def split_host_port(value: str) -> tuple[str, int]:
    """'HOST:PORT' or '[V6]:PORT' -> (host, port); ValueError when malformed."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"must be HOST:PORT; got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"[HOST] must be an IPv6 address; got {value!r}") from None
    elif ":" in host:
        raise ValueError(f"IPv6 addresses go in brackets, as [ADDR]:PORT; got {value!r}")
    elif not _HOSTNAME.fullmatch(host):
        raise ValueError(f"HOST must be an IP address or a host name; got {host!r}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"PORT must be 0 to 65535; got {port_text!r}")
    return host, int(port_text)


def _host_port(value: str) -> None:
    split_host_port(value)


def _ovsdb_remote(value: str) -> None:
    method, _, rest = value.partition(":")
    if method == "unix":
        if not rest.startswith("/"):
            raise ValueError(f"unix: needs an absolute socket path; got {value!r}")
        return
    if method in ("tcp", "ssl"):
        try:
            _host_port(rest)
        except ValueError as err:
            raise ValueError(f"{method}: needs HOST:PORT ({err})") from None
        return
    raise ValueError(f"must be unix:PATH, tcp:HOST:PORT or ssl:HOST:PORT; got {value!r}")


def _mtu(value: int) -> None:
    if value != 0 and not 68 <= value <= 65535:
        raise ValueError(f"must be 0 (auto) or 68 to 65535; got {value}")


def _ip_address(value: str) -> None:
    if value:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"must be an IPv4 or IPv6 address; got {value!r}") from None


def _ovs_routes(value: str) -> None:
    parse_routes(value)  # ValueError naming the entry


_VALIDATORS: dict[str, Callable[[Any], None]] = {
    "node_name": _node_name,
    "source": _one_of(SOURCES),
    "kubeconfig": _optional_path,
    "manifests_dir": _path,
    "bridge": _ifname,
    "datapath_type": _one_of(DATAPATH_TYPES),
    "tunnel_type": _one_of(TUNNEL_TYPES),
    "ovs_rundir": lambda v: _path(v, absolute=True),
    "ovs_routes": _ovs_routes,
    "ovsdb_remote": _ovsdb_remote,
    "cni_socket": lambda v: _path(v, absolute=True, max_len=MAX_UNIX_SOCKET_PATH),
    "ipam_data_dir": lambda v: _path(v, absolute=True),
    "mtu": _mtu,
    "transport_interface": lambda v: _ifname(v, optional=True),
    "node_address": _ip_address,
    "health_bind_address": _host_port,
    "log_level": _one_of(LOG_LEVELS),
    "log_format": _one_of(LOG_FORMATS),
}


# --- loading ------------------------------------------------------------------------------------


def field_names() -> list[str]:
    """The config keys, in declaration order."""
    return [f.name for f in dataclasses.fields(AgentConfig)]


def config_from_mapping(
    data: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> AgentConfig:
    """Build a validated config from parsed YAML; `environ` (default os.environ) for NODE_NAME."""
    environ = os.environ if environ is None else environ
    known = field_names()
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(str(key), f"unknown field{hint}")
    values = dict(data)
    if values.get("node_name") in (None, ""):
        values["node_name"] = environ.get(NODE_NAME_ENV, "")
    for key, value in list(values.items()):
        if value is None:  # an empty YAML value means "the default"
            del values[key]
    return AgentConfig(**values)


def load_config(
    path: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None
) -> AgentConfig:
    """Read and validate the YAML config at `path` (None: defaults and environment only)."""
    if path is None:
        return config_from_mapping({}, environ)
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(str(path), f"cannot read: {err.strerror or err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(str(path), f"not valid YAML: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), f"must hold a mapping of fields, not {type(data).__name__}")
    return config_from_mapping(data, environ)


def config_to_yaml(config: AgentConfig) -> str:
    """The config as YAML, every field spelled out."""
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)


# --- documentation ------------------------------------------------------------------------------


def field_docs() -> dict[str, str]:
    """Each field's docstring, read from this module's source (one place to write them)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(AgentConfig)))
    body = tree.body[0]
    assert isinstance(body, ast.ClassDef)
    docs: dict[str, str] = {}
    for stmt, following in zip(body.body, body.body[1:], strict=False):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[stmt.target.id] = " ".join(following.value.value.split())
    return docs


def config_markdown() -> str:
    """docs/config.md, generated from `AgentConfig`."""
    docs = field_docs()
    lines = [
        "# plumb-agent configuration",
        "",
        "<!-- Generated from controller/config.py by `python -m controller.config --markdown`;",
        "     tests/unit/controller/test_config.py checks that this file and the code agree. -->",
        "",
        "`plumb-agent --config PATH` reads one YAML mapping whose keys are the fields below.",
        "Omitted fields take their default; unknown fields and bad values stop the agent with one",
        "error naming the field, e.g. `config: datapath_type: must be one of system, netdev; got",
        "'kernel'`. Check a file without starting the agent: `python -m controller.config PATH`.",
        "",
        "| field | type | default | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for f in dataclasses.fields(AgentConfig):
        kind = "integer" if f.type in ("int", int) else "string"
        default = f"`{f.default!r}`".replace("'", '"')
        lines.append(f"| `{f.name}` | {kind} | {default} | {docs[f.name]} |")
    example = {
        "source": "kubernetes",
        "bridge": "br-int",
        "datapath_type": "netdev",
        "tunnel_type": "geneve",
        "health_bind_address": "127.0.0.1:9641",
        "log_level": "debug",
    }
    lines += ["", "Example:", "", "```yaml", yaml.safe_dump(example, sort_keys=False).rstrip()]
    lines += ["```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m controller.config PATH | --markdown`."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--markdown"]:
        sys.stdout.write(config_markdown())
        return 0
    if len(args) != 1:
        sys.stderr.write("usage: python -m controller.config PATH | --markdown\n")
        return 2
    try:
        config = load_config(args[0])
    except ConfigError as err:
        sys.stderr.write(f"{err}\n")
        return 1
    sys.stdout.write(config_to_yaml(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
