"""cni.protocol: every validation path with the checklist's error code, and result encodings per
version. Pure: no namespaces, no agent. Test names carry the requirement ids."""

from __future__ import annotations

import json
from ipaddress import ip_address, ip_interface, ip_network
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cni.protocol import (
    DNS,
    SUPPORTED_VERSIONS,
    Attachment,
    CniError,
    Command,
    ErrorCode,
    Interface,
    IPConfig,
    Result,
    Route,
    decode_result,
    encode_result,
    error_version,
    merge_prev_result,
    parse_cni_args,
    parse_command,
    parse_request,
    version_reply,
)

NETNS = "/run/netns/test"


def env_for(command: str, **overrides: str | None) -> dict[str, str]:
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "abc123",
        "CNI_NETNS": NETNS,
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/usr/lib/cni",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web",
    }
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def conf(version: str = "1.1.0", /, **extra: Any) -> bytes:
    return json.dumps(
        {"cniVersion": version, "name": "plumbnet", "type": "plumb", **extra}
    ).encode()


def fails(code: int, env: dict[str, str], stdin: bytes = b"") -> CniError:
    with pytest.raises(CniError) as info:
        parse_request(env, stdin or conf())
    assert info.value.code == code, info.value
    return info.value


# --- ENV ------------------------------------------------------------------------------------


@pytest.mark.parametrize("verb", ["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"])
def test_ENV_01_each_valid_verb(verb: str) -> None:
    assert parse_command({"CNI_COMMAND": verb}) is Command(verb)


def test_ENV_01_unknown_verb_is_code_4_naming_it() -> None:
    err = fails(ErrorCode.INVALID_ENVIRONMENT, env_for("FOO"))
    assert "FOO" in err.msg


def test_ENV_01_empty_command_is_none() -> None:
    assert parse_command({}) is None
    assert parse_command({"CNI_COMMAND": ""}) is None


REQUIRED = {
    "ADD": ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
    "CHECK": ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
    "DEL": ["CNI_CONTAINERID", "CNI_IFNAME"],
    "GC": [],
    "STATUS": [],
}


@pytest.mark.parametrize(
    ("verb", "var"), [(v, var) for v, names in REQUIRED.items() for var in names]
)
def test_ENV_02_each_missing_variable_is_code_4(verb: str, var: str) -> None:
    err = fails(ErrorCode.INVALID_ENVIRONMENT, env_for(verb, **{var: None}))
    assert var in err.msg


def test_ENV_02_all_missing_names_in_one_error() -> None:
    env = {"CNI_COMMAND": "ADD"}
    err = fails(ErrorCode.INVALID_ENVIRONMENT, env)
    for name in REQUIRED["ADD"]:
        assert name in err.msg


def test_ENV_02_empty_counts_as_missing() -> None:
    err = fails(ErrorCode.INVALID_ENVIRONMENT, env_for("ADD", CNI_NETNS=""))
    assert "CNI_NETNS" in err.msg


@pytest.mark.parametrize("verb", ["ADD", "DEL", "CHECK", "GC", "STATUS"])
def test_ENV_02_cni_path_may_be_absent(verb: str) -> None:
    extra: dict[str, Any] = {}
    if verb == "GC":
        extra["cni.dev/valid-attachments"] = []
    req = parse_request(env_for(verb, CNI_PATH=None), conf(**extra))
    assert req.cni_path == ()


def test_ENV_02_del_without_netns_is_fine() -> None:
    req = parse_request(env_for("DEL", CNI_NETNS=None), conf())
    assert req.netns == ""


def test_ENV_02_gc_and_status_need_only_command() -> None:
    env = {"CNI_COMMAND": "STATUS"}
    assert parse_request(env, conf()).command is Command.STATUS


@pytest.mark.parametrize("bad", ["a/b", "-abc", "a b", "", ".abc", "ab\n", "ab;c"])
@pytest.mark.parametrize("verb", ["ADD", "DEL", "CHECK"])
def test_ENV_03_bad_container_id(verb: str, bad: str) -> None:
    env = env_for(verb, CNI_CONTAINERID=bad)
    err = fails(ErrorCode.INVALID_ENVIRONMENT, env)
    assert "CNI_CONTAINERID" in err.msg


@pytest.mark.parametrize("good", ["abc", "A1_b.c-d", "k8s.io-0123456789abcdef", "0"])
def test_ENV_03_good_container_id(good: str) -> None:
    assert parse_request(env_for("ADD", CNI_CONTAINERID=good), conf()).container_id == good


@pytest.mark.parametrize("bad", ["e" * 16, "eth/0", "a b", ".", "..", "eth:0", "a\tb", "é" * 8])
def test_ENV_04_bad_ifname(bad: str) -> None:
    err = fails(ErrorCode.INVALID_ENVIRONMENT, env_for("ADD", CNI_IFNAME=bad))
    assert "CNI_IFNAME" in err.msg


def test_ENV_04_fifteen_bytes_is_fine() -> None:
    assert parse_request(env_for("ADD", CNI_IFNAME="e" * 15), conf()).ifname == "e" * 15


@pytest.mark.parametrize("netns", ["/run/netns/cni-1", "/var/run/netns/x", "/proc/1234/ns/net"])
def test_ENV_05_netns_forms_are_accepted_as_paths(netns: str) -> None:
    assert parse_request(env_for("ADD", CNI_NETNS=netns), conf()).netns == netns


def test_ENV_05_netns_override_flag() -> None:
    req = parse_request(env_for("ADD", CNI_NETNS_OVERRIDE="true"), conf())
    assert req.netns_override
    assert not parse_request(env_for("ADD"), conf()).netns_override


def test_ENV_06_cni_args_in_any_order() -> None:
    args = parse_cni_args("K8S_POD_NAME=web;IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;Foo=bar")
    assert args["K8S_POD_NAME"] == "web" and args["K8S_POD_NAMESPACE"] == "ns"


@pytest.mark.parametrize("raw", ["a", "a=b=c", "=b", "K8S_POD_NAME=x;;"])
def test_ENV_06_pair_without_one_equals_is_an_error(raw: str) -> None:
    with pytest.raises(CniError) as info:
        parse_cni_args(raw)
    assert info.value.code == ErrorCode.INVALID_ENVIRONMENT


def test_ENV_06_unknown_key_needs_ignore_unknown() -> None:
    with pytest.raises(CniError) as info:
        parse_cni_args("Foo=bar")
    assert "Foo=bar" in info.value.msg
    assert parse_cni_args("IgnoreUnknown=TRUE;Foo=bar")["Foo"] == "bar"
    assert parse_cni_args("IgnoreUnknown=1;Foo=bar")["Foo"] == "bar"
    with pytest.raises(CniError):
        parse_cni_args("IgnoreUnknown=0;Foo=bar")


def test_ENV_06_missing_k8s_keys_tolerated() -> None:
    req = parse_request(env_for("ADD", CNI_ARGS=""), conf())
    assert req.pod_name == "" and req.pod_namespace == ""
    podman = parse_request(env_for("ADD", CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=c1"), conf())
    assert podman.pod_name == "c1" and podman.pod_namespace == ""


def test_ENV_08_other_variables_ignored() -> None:
    env = env_for("ADD", TRACEPARENT="00-abc", PATH="/bin", HOME="/root")
    req = parse_request(env, conf())
    assert "TRACEPARENT" not in req.env and req.env["CNI_COMMAND"] == "ADD"


# --- CFG ------------------------------------------------------------------------------------


@pytest.mark.parametrize("stdin", [b"{", b"not json", b"\xff\xfe", b""])
def test_CFG_01_unparseable_json_is_code_6(stdin: bytes) -> None:
    with pytest.raises(CniError) as info:
        parse_request(env_for("ADD"), stdin)
    assert info.value.code == ErrorCode.DECODE_FAILURE


@pytest.mark.parametrize("stdin", [b"[]", b"1", b'"x"', b"null"])
def test_CFG_01_non_object_is_code_6(stdin: bytes) -> None:
    with pytest.raises(CniError) as info:
        parse_request(env_for("ADD"), stdin)
    assert info.value.code == ErrorCode.DECODE_FAILURE


@pytest.mark.parametrize("name", [None, "", "a/b", "-x", 7])
def test_CFG_02_bad_name_is_code_7(name: Any) -> None:
    body = {"cniVersion": "1.0.0", "type": "plumb"}
    if name is not None:
        body["name"] = name
    fails(ErrorCode.INVALID_NETWORK_CONFIG, env_for("ADD"), json.dumps(body).encode())


@pytest.mark.parametrize("version", ["", "0.1.0", "0.2.0", "2.0.0", "1.0"])
def test_CFG_03_unsupported_version_is_code_1(version: str) -> None:
    err = fails(ErrorCode.INCOMPATIBLE_VERSION, env_for("ADD"), conf(version))
    assert err.msg == "incompatible CNI versions"
    assert (version or "0.1.0") in err.details and "1.1.0" in err.details


def test_CFG_03_missing_version_means_0_1_0() -> None:
    body = json.dumps({"name": "n", "type": "plumb"}).encode()
    err = fails(ErrorCode.INCOMPATIBLE_VERSION, env_for("ADD"), body)
    assert "0.1.0" in err.details


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_CFG_03_every_supported_version_accepted(version: str) -> None:
    assert parse_request(env_for("ADD"), conf(version)).cni_version == version


def test_CFG_05_ipam_section() -> None:
    req = parse_request(env_for("ADD"), conf(ipam={"type": "host-local", "x": 1}))
    assert req.ipam == {"type": "host-local", "x": 1}
    assert parse_request(env_for("ADD"), conf()).ipam == {"type": "plumb"}
    bads: list[object] = [[], {"x": 1}, {"type": ""}, "host-local"]
    for bad in bads:
        fails(ErrorCode.INVALID_NETWORK_CONFIG, env_for("ADD"), conf(ipam=bad))


def test_CFG_06_dns_from_config() -> None:
    req = parse_request(env_for("ADD"), conf(dns={"nameservers": ["10.0.0.10"]}))
    assert req.dns.nameservers == ("10.0.0.10",)


PREV = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "h"}, {"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": NETNS}],
    "ips": [{"address": "10.0.0.5/24", "gateway": "10.0.0.1", "interface": 1}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}],
}


def test_CFG_07_prev_result_absent_empty_or_present() -> None:
    assert parse_request(env_for("ADD"), conf()).prev_result is None
    assert parse_request(env_for("DEL"), conf(prevResult={})).prev_result is None
    prev = parse_request(env_for("CHECK"), conf(prevResult=PREV)).prev_result
    assert prev is not None and prev.ips[0].address == ip_interface("10.0.0.5/24")


def test_CFG_07_prev_result_in_0_3_layout_with_version() -> None:
    old = {**PREV, "cniVersion": "0.3.1"}
    old["ips"] = [{"version": "4", **PREV["ips"][0]}]  # type: ignore[dict-item]
    prev = parse_request(env_for("ADD"), conf("0.3.1", prevResult=old)).prev_result
    assert prev is not None and prev.ips[0].interface == 1


@pytest.mark.parametrize(
    "bad",
    [
        [],
        {"ips": [{"address": "nonsense"}]},
        {"ips": [{"address": "10.0.0.5/24", "interface": 3}]},
        {"interfaces": [{"mac": "x"}]},
    ],
)
def test_CFG_07_malformed_prev_result_is_code_7(bad: Any) -> None:
    fails(ErrorCode.INVALID_NETWORK_CONFIG, env_for("ADD"), conf(prevResult=bad))


def test_CFG_08_09_10_11_extra_keys_tolerated() -> None:
    body = conf(
        runtimeConfig={"portMappings": [{"HostPort": 80, "ContainerPort": 8080}]},
        capabilities={"portMappings": True},
        args={"cni": {"labels": [{"key": "a", "value": "b"}]}, "other": 1},
        **{"cni.dev/something": True, "ipMasq": False, "whatever": 1},
    )
    assert parse_request(env_for("ADD"), body).network == "plumbnet"


@pytest.mark.parametrize("mtu", [-1, 10, "1400", True, 70000])
def test_ADD_11_bad_mtu_is_code_7(mtu: Any) -> None:
    fails(ErrorCode.INVALID_NETWORK_CONFIG, env_for("ADD"), conf(mtu=mtu))


def test_ADD_11_mtu_from_config() -> None:
    assert parse_request(env_for("ADD"), conf(mtu=1400)).mtu == 1400


def test_ADD_12_mac_from_three_places_runtime_config_wins() -> None:
    env = env_for("ADD", CNI_ARGS="IgnoreUnknown=1;MAC=02:00:00:00:00:01")
    assert parse_request(env, conf()).requested_mac == "02:00:00:00:00:01"
    with_args = conf(args={"cni": {"mac": "02:00:00:00:00:02"}})
    assert parse_request(env, with_args).requested_mac == "02:00:00:00:00:02"
    both = conf(
        args={"cni": {"mac": "02:00:00:00:00:02"}}, runtimeConfig={"mac": "02:00:00:00:00:0A"}
    )
    assert parse_request(env, both).requested_mac == "02:00:00:00:00:0a"


@pytest.mark.parametrize("mac", ["zz:00:00:00:00:01", "01:00:00:00:00:01", "02:00:00:00:00"])
def test_ADD_12_bad_mac_refused(mac: str) -> None:
    fails(ErrorCode.INVALID_NETWORK_CONFIG, env_for("ADD"), conf(runtimeConfig={"mac": mac}))
    env = env_for("ADD", CNI_ARGS=f"MAC={mac}")
    fails(ErrorCode.INVALID_ENVIRONMENT, env)


# --- version gates --------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1"])
def test_CHK_01_check_needs_0_4_0(version: str) -> None:
    err = fails(ErrorCode.INCOMPATIBLE_VERSION, env_for("CHECK"), conf(version))
    assert "CHECK" in err.msg
    assert parse_request(env_for("CHECK"), conf("0.4.0")).command is Command.CHECK


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_GC_01_and_STS_01_need_1_1_0(version: str) -> None:
    body = conf(version, **{"cni.dev/valid-attachments": []})
    fails(ErrorCode.INCOMPATIBLE_VERSION, {"CNI_COMMAND": "GC"}, body)
    fails(ErrorCode.INCOMPATIBLE_VERSION, {"CNI_COMMAND": "STATUS"}, body)


def test_GC_02_valid_attachments_first_then_old_key() -> None:
    new = [{"containerID": "a", "ifname": "eth0"}]
    old = [{"containerID": "b", "ifname": "eth0"}]
    body = conf(**{"cni.dev/valid-attachments": new, "cni.dev/attachments": old})
    req = parse_request({"CNI_COMMAND": "GC"}, body)
    assert req.valid_attachments == {Attachment("a", "eth0")}
    req = parse_request({"CNI_COMMAND": "GC"}, conf(**{"cni.dev/attachments": old}))
    assert req.valid_attachments == {Attachment("b", "eth0")}
    assert (
        parse_request({"CNI_COMMAND": "GC"}, conf(**{"cni.dev/attachments": []})).valid_attachments
        == frozenset()
    )


@pytest.mark.parametrize("bad", [None, {}, [{"containerID": "a"}], ["a"]])
def test_GC_02_missing_or_malformed_list_is_refused(bad: Any) -> None:
    extra = {} if bad is None else {"cni.dev/valid-attachments": bad}
    fails(ErrorCode.INVALID_NETWORK_CONFIG, {"CNI_COMMAND": "GC"}, conf(**extra))


# --- VERSION, errors ------------------------------------------------------------------------


def test_VER_02_03_version_reply() -> None:
    reply = version_reply()
    assert reply["cniVersion"] == "1.1.0"
    assert reply["supportedVersions"] == ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


def test_ERR_02_error_json_shape() -> None:
    err = CniError(ErrorCode.TRY_AGAIN_LATER, "busy", "agent starting")
    assert err.to_dict("1.0.0") == {
        "cniVersion": "1.0.0",
        "code": 11,
        "msg": "busy",
        "details": "agent starting",
    }
    assert "details" not in CniError(4, "x").to_dict()


def test_ERR_02_error_version_echoes_supported_request_version() -> None:
    assert error_version({}, conf("0.4.0")) == "0.4.0"
    assert error_version({}, conf("0.2.0")) == "1.1.0"
    assert error_version({}, b"garbage") == "1.1.0"


# --- results --------------------------------------------------------------------------------


RESULT = Result(
    interfaces=(
        Interface(name="web-ab-12345678", mac="02:00:00:00:00:aa"),
        Interface(name="eth0", mac="02:00:00:00:00:01", sandbox=NETNS, mtu=1450),
    ),
    ips=(IPConfig(ip_interface("10.0.0.5/24"), ip_address("10.0.0.1"), 1),),
    routes=(Route(ip_network("0.0.0.0/0"), ip_address("10.0.0.1")),),
)


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_RES_01_old_results_carry_ip_version(version: str) -> None:
    out = encode_result(RESULT, version)
    assert out["cniVersion"] == version
    assert out["ips"] == [
        {"version": "4", "address": "10.0.0.5/24", "gateway": "10.0.0.1", "interface": 1}
    ]
    assert "mtu" not in out["interfaces"][1]


def test_RES_01_1_0_0_drops_ip_version_and_mtu() -> None:
    out = encode_result(RESULT, "1.0.0")
    assert out["ips"] == [{"address": "10.0.0.5/24", "gateway": "10.0.0.1", "interface": 1}]
    assert out["interfaces"][1] == {
        "name": "eth0",
        "mac": "02:00:00:00:00:01",
        "sandbox": NETNS,
    }


def test_RES_01_1_1_0_adds_interface_mtu() -> None:
    out = encode_result(RESULT, "1.1.0")
    assert out["interfaces"][1]["mtu"] == 1450
    assert "sandbox" not in out["interfaces"][0]  # ADD-06: host interfaces have no sandbox
    assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}]


def test_RES_02_empty_fields_omitted() -> None:
    out = encode_result(Result(), "1.0.0")
    assert out == {"cniVersion": "1.0.0"}
    with_dns = encode_result(Result(dns=DNS(nameservers=("1.1.1.1",))), "1.0.0")
    assert with_dns["dns"] == {"nameservers": ["1.1.1.1"]}


def test_RES_03_address_is_host_address_with_prefix() -> None:
    assert encode_result(RESULT, "1.0.0")["ips"][0]["address"] == "10.0.0.5/24"


def test_RES_04_ipam_result_without_interfaces_decodes() -> None:
    ipam = {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.7/24", "gateway": "10.0.0.1"}]}
    result = decode_result(ipam)
    assert result.interfaces == () and result.ips[0].interface is None


def test_ADD_04_merge_prev_result_shifts_our_indexes() -> None:
    prev = Result(
        interfaces=(Interface(name="tap0"),),
        ips=(IPConfig(ip_interface("192.168.0.2/24"), None, 0),),
        dns=DNS(nameservers=("9.9.9.9",)),
    )
    merged = merge_prev_result(prev, RESULT)
    assert [i.name for i in merged.interfaces] == ["tap0", "web-ab-12345678", "eth0"]
    assert [i.interface for i in merged.ips] == [0, 2]
    assert merged.dns.nameservers == ("9.9.9.9",)
    assert merge_prev_result(None, RESULT) is RESULT


def test_ADD_04_merge_with_empty_prev_result_keeps_ours() -> None:
    assert merge_prev_result(Result(), RESULT) == RESULT


_octet = st.integers(min_value=0, max_value=255)


@given(
    version=st.sampled_from(SUPPORTED_VERSIONS),
    ips=st.lists(st.tuples(_octet, _octet, st.integers(8, 30)), min_size=1, max_size=3),
    mtu=st.integers(68, 9000),
)
def test_RES_01_encode_decode_round_trip(
    version: str, ips: list[tuple[int, int, int]], mtu: int
) -> None:
    result = Result(
        interfaces=(Interface("h"), Interface("eth0", "02:00:00:00:00:01", NETNS, mtu)),
        ips=tuple(
            IPConfig(ip_interface(f"10.{a}.{b}.9/{p}"), ip_address(f"10.{a}.{b}.1"), 1)
            for a, b, p in ips
        ),
        routes=(Route(ip_network("0.0.0.0/0"), ip_address("10.0.0.1")),),
    )
    decoded = decode_result(json.loads(json.dumps(encode_result(result, version))))
    expected_mtu = mtu if version == "1.1.0" else 0
    assert decoded.interfaces[1].mtu == expected_mtu
    assert decoded.ips == result.ips and decoded.routes == result.routes
