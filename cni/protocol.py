"""The CNI wire protocol, pure: parse and validate one call (environment + stdin config), encode
results and errors in the call's cniVersion, merge a prevResult. No I/O, stdlib only.

Requirement ids (ENV-01, CFG-03, ...) refer to the project's CNI conformance checklist.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum, StrEnum
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_address,
    ip_interface,
    ip_network,
)
from typing import Any, Final, NamedTuple

SUPPORTED_VERSIONS: Final = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT_VERSION: Final = "1.1.0"
PLUGIN_TYPE: Final = "plumb"
DEFAULT_IPAM: Final = "plumb"  # the agent's own allocator (cni.ipstore)

# GC's list of live attachments: the key was renamed after the v1.1.0 tag; libcni sends both.
VALID_ATTACHMENTS_KEY: Final = "cni.dev/valid-attachments"
OLD_ATTACHMENTS_KEY: Final = "cni.dev/attachments"

_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MAC_RE: Final = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_IFNAME_MAX: Final = 15
# CNI_ARGS keys the plugin (or its host-local delegate) understands.
_KNOWN_ARGS: Final = frozenset(
    {
        "IgnoreUnknown",
        "K8S_POD_NAMESPACE",
        "K8S_POD_NAME",
        "K8S_POD_INFRA_CONTAINER_ID",
        "K8S_POD_UID",
        "MAC",
        "IP",
    }
)

IPAddress = IPv4Address | IPv6Address
IPInterface = IPv4Interface | IPv6Interface
IPNetwork = IPv4Network | IPv6Network


class ErrorCode(IntEnum):
    """Reserved CNI error codes (ERR-03) and the plugin-specific ones (100+)."""

    INCOMPATIBLE_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENVIRONMENT = 4
    IO_FAILURE = 5
    DECODE_FAILURE = 6
    INVALID_NETWORK_CONFIG = 7
    INVALID_NETNS = 8
    TRY_AGAIN_LATER = 11
    NOT_AVAILABLE = 50
    LIMITED_CONNECTIVITY = 51
    IPAM_FAILURE = 101
    INTERFACE_FAILURE = 102
    CHECK_FAILURE = 103
    OVS_FAILURE = 104
    INTERNAL = 999


class CniError(Exception):
    """A failure reported to the runtime as `{cniVersion, code, msg, details}` (ERR-02)."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(f"{msg}: {details}" if details else msg)
        self.code = int(code)
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: str = CURRENT_VERSION) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


class AddRejected(CniError):
    """An ADD refused before it changed anything (bad netns, duplicate attachment): there is
    nothing to roll back, and rolling back would tear down an attachment that is not ours."""


class Command(StrEnum):
    ADD = "ADD"
    DEL = "DEL"
    CHECK = "CHECK"
    GC = "GC"
    STATUS = "STATUS"
    VERSION = "VERSION"


# skel's table of required variables (ENV-02). CNI_PATH is left out on purpose: the checklist
# recommends requiring it only where a delegate must be found, and the IPAM delegate search
# falls back to the standard directories.
_REQUIRED_ENV: Final[Mapping[Command, tuple[str, ...]]] = {
    Command.ADD: ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    Command.CHECK: ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    Command.DEL: ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_IFNAME"),
    Command.GC: ("CNI_COMMAND",),
    Command.STATUS: ("CNI_COMMAND",),
    Command.VERSION: ("CNI_COMMAND",),
}
# The oldest config version each verb accepts (CHK-01, GC-01, STS-01).
_MIN_VERSION: Final[Mapping[Command, str]] = {
    Command.CHECK: "0.4.0",
    Command.GC: "1.1.0",
    Command.STATUS: "1.1.0",
}


class Attachment(NamedTuple):
    """One (container, interface) attachment: the unit of ADD/DEL and of GC's valid list."""

    container_id: str
    ifname: str


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Interface:
    name: str
    mac: str = ""
    sandbox: str = ""
    mtu: int = 0
    socket_path: str = ""
    pci_id: str = ""


@dataclass(frozen=True)
class IPConfig:
    address: IPInterface
    gateway: IPAddress | None = None
    interface: int | None = None


@dataclass(frozen=True)
class Route:
    dst: IPNetwork
    gw: IPAddress | None = None
    mtu: int = 0
    advmss: int = 0
    priority: int = 0
    table: int | None = None
    scope: int | None = None


@dataclass(frozen=True)
class DNS:
    nameservers: tuple[str, ...] = ()
    domain: str = ""
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    def is_empty(self) -> bool:
        return not (self.nameservers or self.domain or self.search or self.options)


@dataclass(frozen=True)
class Result:
    interfaces: tuple[Interface, ...] = ()
    ips: tuple[IPConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: DNS = field(default_factory=DNS)


def version_tuple(version: str) -> tuple[int, ...]:
    """Parse "1.0.0" into (1, 0, 0); raises ValueError on anything else."""
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"bad version {version!r}")
    return tuple(int(p) for p in parts)


def _at_least(version: str, minimum: str) -> bool:
    return version_tuple(version) >= version_tuple(minimum)


def encode_result(result: Result, cni_version: str) -> dict[str, Any]:
    """The result as the runtime expects it in `cni_version` (RES-01, RES-02, RES-06)."""
    with_ip_version = not _at_least(cni_version, "1.0.0")
    v11 = _at_least(cni_version, "1.1.0")
    out: dict[str, Any] = {"cniVersion": cni_version}
    if result.interfaces:
        out["interfaces"] = [_encode_interface(i, v11) for i in result.interfaces]
    if result.ips:
        out["ips"] = [_encode_ip(i, with_ip_version) for i in result.ips]
    if result.routes:
        out["routes"] = [_encode_route(r, v11) for r in result.routes]
    if not result.dns.is_empty():
        out["dns"] = _encode_dns(result.dns)
    return out


def _encode_interface(iface: Interface, v11: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": iface.name}
    if iface.mac:
        out["mac"] = iface.mac
    if v11 and iface.mtu:
        out["mtu"] = iface.mtu
    if iface.sandbox:
        out["sandbox"] = iface.sandbox
    if v11 and iface.socket_path:
        out["socketPath"] = iface.socket_path
    if v11 and iface.pci_id:
        out["pciID"] = iface.pci_id
    return out


def _encode_ip(ipc: IPConfig, with_version: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if with_version:
        out["version"] = str(ipc.address.version)
    out["address"] = str(ipc.address)
    if ipc.gateway is not None:
        out["gateway"] = str(ipc.gateway)
    if ipc.interface is not None:
        out["interface"] = ipc.interface
    return out


def _encode_route(route: Route, v11: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"dst": str(route.dst)}
    if route.gw is not None:
        out["gw"] = str(route.gw)
    if v11:
        for key, value in (
            ("mtu", route.mtu),
            ("advmss", route.advmss),
            ("priority", route.priority),
        ):
            if value:
                out[key] = value
        if route.table is not None:
            out["table"] = route.table
        if route.scope is not None:
            out["scope"] = route.scope
    return out


def _encode_dns(dns: DNS) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if dns.nameservers:
        out["nameservers"] = list(dns.nameservers)
    if dns.domain:
        out["domain"] = dns.domain
    if dns.search:
        out["search"] = list(dns.search)
    if dns.options:
        out["options"] = list(dns.options)
    return out


def decode_result(obj: object, what: str = "result") -> Result:
    """A 0.3.0+ result (prevResult, an IPAM answer) as a `Result`; `ips[].version` is accepted
    and ignored. Raises CniError(7) naming `what` on anything malformed."""
    try:
        return _decode_result(obj)
    except (TypeError, ValueError, KeyError) as exc:
        raise CniError(ErrorCode.INVALID_NETWORK_CONFIG, f"invalid {what}", str(exc)) from exc


def _decode_result(obj: object) -> Result:
    data = _as_dict(obj, "result")
    interfaces = tuple(_decode_interface(i) for i in _as_list(data.get("interfaces"), "interfaces"))
    ips = tuple(_decode_ip(i, len(interfaces)) for i in _as_list(data.get("ips"), "ips"))
    routes = tuple(_decode_route(r) for r in _as_list(data.get("routes"), "routes"))
    dns = _decode_dns(data.get("dns"))
    return Result(interfaces=interfaces, ips=ips, routes=routes, dns=dns)


def _decode_interface(obj: object) -> Interface:
    data = _as_dict(obj, "interface")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("interface without a name")
    return Interface(
        name=name,
        mac=_opt_str(data, "mac"),
        sandbox=_opt_str(data, "sandbox"),
        mtu=_opt_int(data, "mtu"),
        socket_path=_opt_str(data, "socketPath"),
        pci_id=_opt_str(data, "pciID"),
    )


def _decode_ip(obj: object, n_interfaces: int) -> IPConfig:
    data = _as_dict(obj, "ip")
    address = ip_interface(_req_str(data, "address"))
    gateway = data.get("gateway")
    index = data.get("interface")
    if index is not None and (not isinstance(index, int) or isinstance(index, bool) or index < 0):
        raise ValueError(f"bad interface index {index!r}")
    if index is not None and index >= n_interfaces:
        raise ValueError(f"interface index {index} out of range")
    return IPConfig(
        address=address,
        gateway=ip_address(gateway) if isinstance(gateway, str) and gateway else None,
        interface=index,
    )


def _decode_route(obj: object) -> Route:
    data = _as_dict(obj, "route")
    gw = data.get("gw")
    table = data.get("table")
    scope = data.get("scope")
    return Route(
        dst=ip_network(_req_str(data, "dst"), strict=False),
        gw=ip_address(gw) if isinstance(gw, str) and gw else None,
        mtu=_opt_int(data, "mtu"),
        advmss=_opt_int(data, "advmss"),
        priority=_opt_int(data, "priority"),
        table=table if isinstance(table, int) else None,
        scope=scope if isinstance(scope, int) else None,
    )


def _decode_dns(obj: object) -> DNS:
    if obj is None:
        return DNS()
    data = _as_dict(obj, "dns")
    return DNS(
        nameservers=_str_tuple(data.get("nameservers")),
        domain=_opt_str(data, "domain"),
        search=_str_tuple(data.get("search")),
        options=_str_tuple(data.get("options")),
    )


def merge_prev_result(prev: Result | None, ours: Result) -> Result:
    """ADD-04: the previous plugins' result with this plugin's interfaces, IPs and routes
    appended; our `ips[].interface` indexes are shifted past the earlier interfaces."""
    if prev is None:
        return ours
    shift = len(prev.interfaces)
    ips = tuple(
        replace(i, interface=None if i.interface is None else i.interface + shift) for i in ours.ips
    )
    routes = prev.routes + tuple(r for r in ours.routes if r not in prev.routes)
    return Result(
        interfaces=prev.interfaces + ours.interfaces,
        ips=prev.ips + ips,
        routes=routes,
        dns=prev.dns if not prev.dns.is_empty() else ours.dns,
    )


# ---------------------------------------------------------------------------------------------
# Requests


@dataclass(frozen=True)
class Request:
    """One validated CNI call. `config` is the stdin object, `stdin` the verbatim bytes that
    delegates receive (DLG-02), `env` the CNI_* variables as the runtime set them."""

    command: Command
    cni_version: str
    network: str
    container_id: str
    netns: str
    ifname: str
    cni_path: tuple[str, ...]
    args: Mapping[str, str]
    config: Mapping[str, Any]
    stdin: bytes
    env: Mapping[str, str]
    prev_result: Result | None = None
    ipam: Mapping[str, Any] = field(default_factory=dict)
    mtu: int = 0
    requested_mac: str = ""
    dns: DNS = field(default_factory=DNS)
    valid_attachments: frozenset[Attachment] = frozenset()

    @property
    def attachment(self) -> Attachment:
        return Attachment(self.container_id, self.ifname)

    @property
    def pod_namespace(self) -> str:
        return self.args.get("K8S_POD_NAMESPACE", "")

    @property
    def pod_name(self) -> str:
        return self.args.get("K8S_POD_NAME", "")

    @property
    def netns_override(self) -> bool:
        """CNI_NETNS_OVERRIDE: the test harnesses' permission to use the plugin's own netns."""
        return self.env.get("CNI_NETNS_OVERRIDE", "").lower() in ("1", "true")


def version_reply() -> dict[str, Any]:
    """VERSION's answer (VER-02, VER-03)."""
    return {"cniVersion": CURRENT_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}


def about_text() -> str:
    """What an empty CNI_COMMAND prints on stderr (ENV-01, skel's good manners)."""
    return f"CNI plumb plugin; CNI protocol versions supported: {', '.join(SUPPORTED_VERSIONS)}"


def parse_command(env: Mapping[str, str]) -> Command | None:
    """ENV-01: the verb, None when CNI_COMMAND is empty; an unknown verb is error 4."""
    raw = env.get("CNI_COMMAND", "")
    if not raw:
        return None
    try:
        return Command(raw)
    except ValueError:
        raise CniError(
            ErrorCode.INVALID_ENVIRONMENT,
            f"unknown CNI_COMMAND: {raw}",
            f"expected one of {', '.join(c.value for c in Command)}",
        ) from None


def parse_request(env: Mapping[str, str], stdin: bytes) -> Request:
    """Validate one non-VERSION call: environment first (ENV-01..06), then stdin (CFG), then the
    version gates (CFG-03, CHK-01, GC-01, STS-01). Raises CniError with the checklist's code."""
    command = parse_command(env)
    if command is None or command is Command.VERSION:
        raise CniError(ErrorCode.INVALID_ENVIRONMENT, "not a network call", f"{command}")
    _check_required_env(command, env)
    container_id = env.get("CNI_CONTAINERID", "")
    ifname = env.get("CNI_IFNAME", "")
    if command in (Command.ADD, Command.CHECK, Command.DEL):
        validate_container_id(container_id)
        validate_ifname(ifname)
    args = parse_cni_args(env.get("CNI_ARGS", ""))
    config = decode_config(stdin)
    network = _network_name(config)
    cni_version = _config_version(config)
    _check_version_gate(command, cni_version)
    return Request(
        command=command,
        cni_version=cni_version,
        network=network,
        container_id=container_id,
        netns=env.get("CNI_NETNS", ""),
        ifname=ifname,
        cni_path=tuple(p for p in env.get("CNI_PATH", "").split(":") if p),
        args=args,
        config=config,
        stdin=stdin,
        env={k: v for k, v in env.items() if k.startswith("CNI_")},
        prev_result=_prev_result(config),
        ipam=_ipam_section(config),
        mtu=_mtu(config),
        requested_mac=_requested_mac(args, config),
        dns=_config_dns(config),
        valid_attachments=_valid_attachments(config) if command is Command.GC else frozenset(),
    )


def _check_required_env(command: Command, env: Mapping[str, str]) -> None:
    # skel treats an empty variable as a missing one; all missing names go into one error.
    missing = [name for name in _REQUIRED_ENV[command] if not env.get(name)]
    if missing:
        raise CniError(
            ErrorCode.INVALID_ENVIRONMENT,
            f"required env variables [{','.join(missing)}] missing",
            f"CNI_COMMAND={command.value}",
        )


def validate_container_id(container_id: str) -> None:
    """ENV-03: non-empty, `^[A-Za-z0-9][A-Za-z0-9_.-]*$`."""
    if not _NAME_RE.fullmatch(container_id):
        raise CniError(
            ErrorCode.INVALID_ENVIRONMENT,
            "invalid characters in CNI_CONTAINERID",
            f"{container_id!r} must match {_NAME_RE.pattern}",
        )


def validate_ifname(ifname: str) -> None:
    """ENV-04: 1..15 bytes, not `.` or `..`, no `/`, `:` or whitespace."""
    problem = ""
    if not ifname:
        problem = "is empty"
    elif not _is_utf8(ifname):
        # The server decodes the environment with surrogateescape: raw bytes the kernel and
        # netlink would take differently from what the runtime meant.
        problem = "is not UTF-8"
    elif len(ifname.encode()) > _IFNAME_MAX:
        problem = f"is longer than {_IFNAME_MAX} bytes"
    elif ifname in (".", ".."):
        problem = "is . or .."
    elif any(c in "/:" or c.isspace() for c in ifname):
        problem = "contains /, : or whitespace"
    if problem:
        raise CniError(
            ErrorCode.INVALID_ENVIRONMENT, f"invalid CNI_IFNAME: {ifname!r} {problem}", ""
        )


def _is_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def parse_cni_args(raw: str) -> dict[str, str]:
    """ENV-06: `K=V;K=V`; unknown keys are an error unless IgnoreUnknown is 1/true."""
    if not raw:
        return {}
    args: dict[str, str] = {}
    for pair in raw.split(";"):
        key, sep, value = pair.partition("=")
        if not sep or "=" in value or not key:
            raise CniError(ErrorCode.INVALID_ENVIRONMENT, f"CNI_ARGS: invalid pair {pair!r}", raw)
        args[key] = value
    if args.get("IgnoreUnknown", "").lower() not in ("1", "true"):
        unknown = sorted(set(args) - _KNOWN_ARGS)
        if unknown:
            shown = ", ".join(f"{k}={args[k]}" for k in unknown)
            raise CniError(ErrorCode.INVALID_ENVIRONMENT, f"CNI_ARGS: unknown args {shown}", raw)
    return args


def decode_config(stdin: bytes) -> dict[str, Any]:
    """CFG-01: one JSON object; anything else is a decode failure (6)."""
    try:
        config = json.loads(stdin)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CniError(ErrorCode.DECODE_FAILURE, "error decoding network config", str(exc)) from exc
    if not isinstance(config, dict):
        raise CniError(
            ErrorCode.DECODE_FAILURE,
            "error decoding network config",
            f"expected a JSON object, got {type(config).__name__}",
        )
    return config


def _network_name(config: Mapping[str, Any]) -> str:
    name = config.get("name")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise CniError(
            ErrorCode.INVALID_NETWORK_CONFIG,
            "invalid network name",
            f"name {name!r} must match {_NAME_RE.pattern}",
        )
    return name


def _config_version(config: Mapping[str, Any]) -> str:
    raw = config.get("cniVersion", "")
    if not isinstance(raw, str):
        raise CniError(ErrorCode.DECODE_FAILURE, "cniVersion must be a string", repr(raw))
    version = raw or "0.1.0"  # CFG-03: an empty version means 0.1.0
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            ErrorCode.INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            f'config is "{version}", plugin supports {list(SUPPORTED_VERSIONS)}',
        )
    return version


def _check_version_gate(command: Command, version: str) -> None:
    minimum = _MIN_VERSION.get(command)
    if minimum and not _at_least(version, minimum):
        raise CniError(
            ErrorCode.INCOMPATIBLE_VERSION,
            f"config version does not allow {command.value}",
            f"{command.value} needs cniVersion {minimum} or later, config is {version}",
        )


def _prev_result(config: Mapping[str, Any]) -> Result | None:
    raw = config.get("prevResult")
    if raw is None or raw == {}:  # CFG-07: absent, or empty on DEL
        return None
    return decode_result(raw, "prevResult")


def _ipam_section(config: Mapping[str, Any]) -> dict[str, Any]:
    raw = config.get("ipam")
    if raw is None:
        # The agent owns the node's range; a conflist without `ipam` gets its allocator.
        return {"type": DEFAULT_IPAM}
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str) or not raw["type"]:
        raise CniError(
            ErrorCode.INVALID_NETWORK_CONFIG,
            "invalid ipam section",
            "ipam must be an object with a non-empty string type",
        )
    return dict(raw)


def _mtu(config: Mapping[str, Any]) -> int:
    raw = config.get("mtu", 0)
    if not isinstance(raw, int) or isinstance(raw, bool) or not (raw == 0 or 68 <= raw <= 65535):
        raise CniError(ErrorCode.INVALID_NETWORK_CONFIG, "invalid mtu", f"mtu {raw!r}")
    return raw


def _requested_mac(args: Mapping[str, str], config: Mapping[str, Any]) -> str:
    """ADD-12: runtimeConfig.mac beats args.cni.mac beats CNI_ARGS MAC (the bridge's order)."""
    runtime = config.get("runtimeConfig")
    conf_args = config.get("args")
    candidates: list[tuple[object, int]] = [(args.get("MAC"), ErrorCode.INVALID_ENVIRONMENT)]
    if isinstance(conf_args, dict) and isinstance(conf_args.get("cni"), dict):
        candidates.append((conf_args["cni"].get("mac"), ErrorCode.INVALID_NETWORK_CONFIG))
    if isinstance(runtime, dict):
        candidates.append((runtime.get("mac"), ErrorCode.INVALID_NETWORK_CONFIG))
    chosen = ""
    for value, code in candidates:
        if value in (None, ""):
            continue
        if not isinstance(value, str) or not _MAC_RE.fullmatch(value):
            raise CniError(code, "invalid MAC address", repr(value))
        if int(value[:2], 16) & 1:
            raise CniError(code, "invalid MAC address", f"{value} is a multicast address")
        chosen = value.lower()
    return chosen


def _config_dns(config: Mapping[str, Any]) -> DNS:
    raw = config.get("dns")
    if raw is None:
        return DNS()
    try:
        return _decode_dns(raw)
    except (TypeError, ValueError) as exc:
        raise CniError(ErrorCode.INVALID_NETWORK_CONFIG, "invalid dns", str(exc)) from exc


def _valid_attachments(config: Mapping[str, Any]) -> frozenset[Attachment]:
    """GC-02: `cni.dev/valid-attachments`, falling back to the older `cni.dev/attachments`.
    A GC without either list is refused: treating it as empty would wipe every pod."""
    key = VALID_ATTACHMENTS_KEY if VALID_ATTACHMENTS_KEY in config else OLD_ATTACHMENTS_KEY
    raw = config.get(key)
    if not isinstance(raw, list):
        raise CniError(
            ErrorCode.INVALID_NETWORK_CONFIG,
            "GC needs a list of valid attachments",
            f"{VALID_ATTACHMENTS_KEY} (or {OLD_ATTACHMENTS_KEY}) must be a list, got {raw!r}",
        )
    out: set[Attachment] = set()
    for item in raw:
        cid = item.get("containerID") if isinstance(item, dict) else None
        ifname = item.get("ifname") if isinstance(item, dict) else None
        if not isinstance(cid, str) or not isinstance(ifname, str):
            raise CniError(ErrorCode.INVALID_NETWORK_CONFIG, f"invalid entry in {key}", repr(item))
        out.add(Attachment(cid, ifname))
    return frozenset(out)


def error_version(env: Mapping[str, str], stdin: bytes) -> str:
    """The cniVersion to stamp on an error: the call's own when it is one we speak."""
    try:
        config = json.loads(stdin)
    except (ValueError, UnicodeDecodeError):
        return CURRENT_VERSION
    version = config.get("cniVersion") if isinstance(config, dict) else None
    return version if version in SUPPORTED_VERSIONS else CURRENT_VERSION


# ---------------------------------------------------------------------------------------------
# Small typed readers for decoded JSON


def _as_dict(obj: object, what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise TypeError(f"{what} must be an object, got {type(obj).__name__}")
    return obj


def _as_list(obj: object, what: str) -> Sequence[object]:
    if obj is None:
        return ()
    if not isinstance(obj, list):
        raise TypeError(f"{what} must be a list, got {type(obj).__name__}")
    return obj


def _req_str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"missing {key}")
    return value


def _opt_str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key, "")
    if not isinstance(value, str):
        raise TypeError(f"{key} must be a string")
    return value


def _opt_int(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{key} must be an integer")
    return value


def _str_tuple(obj: object) -> tuple[str, ...]:
    if obj is None:
        return ()
    if not isinstance(obj, list) or not all(isinstance(s, str) for s in obj):
        raise TypeError("expected a list of strings")
    return tuple(obj)
