"""CNI conformance of the whole plugin: the real `plumb` executable called with a runtime's
environment and stdin, the agent's server in-process, real namespaces, veths, IPAM and OVS.
Each test names the checklist requirement it covers; those marked `any_ipam` run once with the
agent's own allocator and once delegating to host-local."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from cni import executable, netns
from cni.protocol import Attachment, CniError
from lab.cniruntime import CniCallError, PluginAnswer, exec_plugin
from tests.cni.conftest import NETWORK, FlowFault, Node

pytestmark = pytest.mark.ovs


def error_of(answer: PluginAnswer, code: int) -> dict[str, Any]:
    """ERR-01/02/05, RES-07: exit 1 and exactly one JSON error object on stdout."""
    assert answer.exit_code == 1, answer
    err: dict[str, Any] = json.loads(answer.stdout)
    assert err["code"] == code, err
    assert err["msg"] and err["cniVersion"]
    return err


def in_netns(netns: str, *cmd: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", os.path.basename(netns), *cmd],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


# --- ENV ------------------------------------------------------------------------------------


def test_ENV_01_empty_command_prints_about_and_exits_0(node: Node) -> None:
    answer = node.call(node.env(""), b"")
    assert answer.exit_code == 0 and answer.stdout == b""
    assert b"0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0" in answer.stderr


def test_ENV_01_unknown_command_is_code_4_naming_it(node: Node) -> None:
    err = error_of(node.call(node.env("FOO"), node.conf()), 4)
    assert "FOO" in err["msg"]


@pytest.mark.parametrize(
    ("verb", "var"),
    [
        ("ADD", "CNI_CONTAINERID"),
        ("ADD", "CNI_NETNS"),
        ("ADD", "CNI_IFNAME"),
        ("CHECK", "CNI_NETNS"),
        ("DEL", "CNI_CONTAINERID"),
        ("DEL", "CNI_IFNAME"),
    ],
)
def test_ENV_02_missing_variable_is_code_4_and_changes_nothing(
    node: Node, verb: str, var: str
) -> None:
    netns = node.make_netns()
    env = node.env(verb, node.next_id("c"), netns)
    del env[var]
    err = error_of(node.call(env, node.conf("1.1.0")), 4)
    assert var in err["msg"]
    assert node.leftovers() == Node.NOTHING_LEFT


def test_ENV_02_cni_path_may_be_absent(node: Node) -> None:
    netns = node.make_netns()
    cid = node.next_id("c")
    env = node.env("ADD", cid, netns)
    del env["CNI_PATH"]  # IPAM is still found in the standard directories
    assert node.call(env, node.conf()).exit_code == 0
    env["CNI_COMMAND"] = "DEL"
    assert node.call(env, node.conf()).exit_code == 0


@pytest.mark.parametrize("cid", ["a/b", "-abc", "a b"])
def test_ENV_03_bad_container_id(node: Node, cid: str) -> None:
    env = node.env("ADD", "placeholder", node.make_netns())
    env["CNI_CONTAINERID"] = cid
    error_of(node.call(env, node.conf()), 4)
    assert node.leftovers() == Node.NOTHING_LEFT


@pytest.mark.parametrize("ifname", ["e" * 16, "eth/0", "a b"])
def test_ENV_04_bad_ifname(node: Node, ifname: str) -> None:
    env = node.env("ADD", node.next_id("c"), node.make_netns(), ifname=ifname)
    error_of(node.call(env, node.conf()), 4)
    assert node.leftovers() == Node.NOTHING_LEFT


def test_ENV_05_netns_forms(node: Node) -> None:
    run_netns = node.make_netns()
    var_run = "/var/run/netns/" + os.path.basename(node.make_netns())
    holder = node.make_netns()
    sleeper = subprocess.Popen(["ip", "netns", "exec", os.path.basename(holder), "sleep", "60"])
    try:
        time.sleep(0.2)
        proc_path = f"/proc/{sleeper.pid}/ns/net"
        for netns in (run_netns, var_run, proc_path):
            cid = node.next_id("c")
            result = node.add(cid, netns)
            assert result["interfaces"][1]["sandbox"] == netns
            assert node.delete(cid, netns).exit_code == 0
    finally:
        sleeper.kill()
        sleeper.wait()
    assert node.leftovers() == Node.NOTHING_LEFT


def test_ENV_05_unopenable_netns_is_code_8(node: Node) -> None:
    env = node.env("ADD", node.next_id("c"), "/run/netns/does-not-exist-" + node.prefix)
    error_of(node.call(env, node.conf()), 8)
    assert node.leftovers() == Node.NOTHING_LEFT


def test_ENV_05_own_netns_refused_without_override(node: Node) -> None:
    env = node.env("ADD", node.next_id("c"), node.node_netns)
    error_of(node.call(env, node.conf()), 8)
    assert node.leftovers() == Node.NOTHING_LEFT


@pytest.mark.parametrize(
    "args",
    [
        "",  # ctr run --cni
        "IgnoreUnknown=1;K8S_POD_NAME=podman-ctr",  # podman 4.3
        "K8S_POD_UID=u1;K8S_POD_INFRA_CONTAINER_ID=x;IgnoreUnknown=1;K8S_POD_NAME=w;"
        "K8S_POD_NAMESPACE=ns",  # containerd CRI, shuffled
    ],
)
def test_ENV_06_cni_args_as_runtimes_send_them(node: Node, args: str) -> None:
    netns = node.make_netns()
    cid = node.next_id("c")
    env = node.env("ADD", cid, netns, CNI_ARGS=args)
    assert node.call(env, node.conf()).exit_code == 0
    env["CNI_COMMAND"] = "DEL"
    assert node.call(env, node.conf()).exit_code == 0
    assert node.leftovers() == Node.NOTHING_LEFT


def test_ENV_06_bad_cni_args_is_an_error(node: Node) -> None:
    env = node.env("ADD", node.next_id("c"), node.make_netns(), CNI_ARGS="novalue")
    error_of(node.call(env, node.conf()), 4)
    env["CNI_ARGS"] = "Unknown=1"
    error_of(node.call(env, node.conf()), 4)


def wrap_host_local(node: Node, log: Path) -> None:
    """A host-local earlier in CNI_PATH that records its env and stdin, says something on
    stderr, then runs the real one on the same stdin."""
    wrapper = node.workdir / "bin" / "host-local"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'cat > "{log}.$CNI_COMMAND.stdin"\n'
        f'env | grep ^CNI_ > "{log}.$CNI_COMMAND.env"\n'
        'echo "hello from the wrapped host-local" >&2\n'
        f'exec /usr/lib/cni/host-local < "{log}.$CNI_COMMAND.stdin"\n'
    )
    wrapper.chmod(0o755)


@pytest.mark.usefixtures("host_local")
def test_ENV_07_DLG_01_02_03_delegate_found_in_cni_path_order_with_full_config(
    node: Node,
) -> None:
    log = node.workdir / "hl"
    wrap_host_local(node, log)
    netns = node.make_netns()
    cid = node.next_id("c")
    answer = node.call(node.env("ADD", cid, netns), node.conf(foo="bar"))
    assert answer.exit_code == 0, answer
    assert b"hello from the wrapped host-local" in answer.stderr  # DLG-03
    sent = json.loads(Path(f"{log}.ADD.stdin").read_text())
    assert sent["name"] == NETWORK and sent["foo"] == "bar"  # DLG-02: the whole config
    assert sent["ipam"]["ranges"] == [
        [{"subnet": str(node.pod_cidr), "gateway": str(node.pod_cidr.network_address + 1)}]
    ]
    env = Path(f"{log}.ADD.env").read_text()
    assert f"CNI_CONTAINERID={cid}" in env and "CNI_COMMAND=ADD" in env
    assert node.delete(cid, netns).exit_code == 0
    assert "CNI_COMMAND=DEL" in Path(f"{log}.DEL.env").read_text()  # DEL-04


def test_ENV_08_other_variables_ignored(node: Node) -> None:
    netns = node.make_netns()
    env = node.env("ADD", node.next_id("c"), netns, TRACEPARENT="00-1-2-01", BAGGAGE="a=b")
    assert node.call(env, node.conf()).exit_code == 0


# --- CFG ------------------------------------------------------------------------------------


@pytest.mark.parametrize("stdin", [b"{nope", b"[1,2]", b""])
def test_CFG_01_bad_json_is_code_6(node: Node, stdin: bytes) -> None:
    error_of(node.call(node.env("ADD", node.next_id("c"), node.make_netns()), stdin), 6)
    assert node.leftovers() == Node.NOTHING_LEFT


def test_CFG_02_bad_network_name_is_code_7(node: Node) -> None:
    conf = node.conf(name="bad/name")
    error_of(node.call(node.env("ADD", node.next_id("c"), node.make_netns()), conf), 7)


@pytest.mark.parametrize("version", ["", "0.2.0", "9.9.9"])
def test_CFG_03_unsupported_version_is_code_1(node: Node, version: str) -> None:
    conf = node.conf(version)
    err = error_of(node.call(node.env("ADD", node.next_id("c"), node.make_netns()), conf), 1)
    assert err["msg"] == "incompatible CNI versions"
    assert "1.1.0" in err["details"]
    assert node.leftovers() == Node.NOTHING_LEFT


def test_CFG_05_ipam_must_be_an_object_with_a_type(node: Node) -> None:
    conf = node.conf(ipam={"subnet": "10.0.0.0/24"})
    error_of(node.call(node.env("ADD", node.next_id("c"), node.make_netns()), conf), 7)


def test_CFG_06_dns_copied_into_result(node: Node) -> None:
    netns = node.make_netns()
    conf = node.conf(dns={"nameservers": ["10.96.0.10"], "search": ["svc.local"]})
    answer = node.call(node.env("ADD", node.next_id("c"), netns), conf)
    assert json.loads(answer.stdout)["dns"] == {
        "nameservers": ["10.96.0.10"],
        "search": ["svc.local"],
    }


def test_CFG_08_09_10_11_runtime_extras_tolerated(node: Node) -> None:
    netns = node.make_netns()
    conf = node.conf(
        capabilities={"portMappings": True, "aliases": True},
        runtimeConfig={
            "portMappings": [{"HostPort": 8080, "ContainerPort": 80, "Protocol": "tcp"}],
            "io.kubernetes.cri.pod-annotations": {"a": "b"},
        },
        args={"cni": {"labels": [{"key": "app", "value": "web"}]}},
        ipMasq=True,
        **{"cni.dev/extra": {"x": 1}},
    )
    assert node.call(node.env("ADD", node.next_id("c"), netns), conf).exit_code == 0


# --- VER ------------------------------------------------------------------------------------


def test_VER_01_02_version_with_garbage_and_podman_dummies(node: Node) -> None:
    env = {
        "CNI_COMMAND": "VERSION",
        "CNI_CONTAINERID": "",
        "CNI_NETNS": "dummy",
        "CNI_IFNAME": "dummy",
        "CNI_PATH": "dummy",
        "PLUMB_CNI_SOCKET": "/nonexistent/agent.sock",  # VERSION never asks the agent
    }
    answer = exec_plugin(str(executable.path()), env, b"\x00garbage{")
    assert answer.exit_code == 0
    reply = json.loads(answer.stdout)
    assert reply == {
        "cniVersion": "1.1.0",
        "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
    }


# --- ADD and RES ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_ADD_01_03_06_07_RES_01_result_and_interface_per_version(node: Node, version: str) -> None:
    netns = node.make_netns()
    cid = node.next_id("c")
    answer = node.call(node.env("ADD", cid, netns), node.conf(version))
    assert answer.exit_code == 0, answer
    result = json.loads(answer.stdout)
    assert result["cniVersion"] == version  # ADD-03
    host, ctr = result["interfaces"]
    assert "sandbox" not in host and ctr["sandbox"] == netns  # ADD-06
    assert ctr["name"] == "eth0" and len(ctr["mac"]) == 17 and len(host["mac"]) == 17
    assert len(host["name"]) <= 15
    (ip,) = result["ips"]
    assert ip["interface"] == 1
    assert ("version" in ip) == (version < "1.0.0")  # RES-01
    assert ("mtu" in ctr) == (version == "1.1.0")
    gateway = str(node.pod_cidr.network_address + 1)
    assert ip["gateway"] == gateway and ip["address"].endswith("/24")  # RES-03
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": gateway}]
    assert "dns" not in result  # RES-02
    # ADD-07: up, addressed, routed in the container
    link = in_netns(netns, "ip", "-o", "addr", "show", "dev", "eth0")
    assert ip["address"] in link and ctr["mac"] in in_netns(netns, "ip", "link", "show", "eth0")
    assert "UP" in in_netns(netns, "ip", "link", "show", "eth0")
    assert "inet6 fe80::" in in_netns(netns, "ip", "addr", "show", "eth0")  # the link-local
    # ENV-09: only the container side was entered: eth0 is there, the host end is not
    assert in_netns(netns, "ip", "-o", "link").count("eth0") == 1
    assert host["name"] not in in_netns(netns, "ip", "-o", "link")
    assert f"default via {gateway} dev eth0" in in_netns(netns, "ip", "route")
    # the host side and OVS
    assert host["name"] in node.host_veths() and host["name"] in node.pod_ports()
    assert len(node.flows.dump()) == 2


def test_ADD_02_existing_interface_is_an_error_and_leaks_nothing(node: Node) -> None:
    netns = node.make_netns()
    subprocess.run(
        ["ip", "-n", os.path.basename(netns), "link", "add", "eth0", "type", "veth", "peer", "x0"],
        check=True,
    )
    answer = node.call(node.env("ADD", node.next_id("c"), netns), node.conf())
    assert answer.exit_code == 1 and json.loads(answer.stdout)["code"] >= 100
    assert node.leftovers() == Node.NOTHING_LEFT
    assert "eth0" in in_netns(netns, "ip", "link", "show", "eth0")  # theirs, untouched


def test_ADD_04_prev_result_merged(node: Node) -> None:
    netns = node.make_netns()
    prev = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "tap9", "mac": "02:00:00:00:99:99"}],
        "ips": [{"address": "192.168.9.9/24", "interface": 0}],
        "dns": {"nameservers": ["9.9.9.9"]},
    }
    answer = node.call(node.env("ADD", node.next_id("c"), netns), node.conf(prevResult=prev))
    result = json.loads(answer.stdout)
    assert result["interfaces"][0]["name"] == "tap9"
    assert [i["interface"] for i in result["ips"]] == [0, 2]
    assert result["dns"] == {"nameservers": ["9.9.9.9"]}


@pytest.mark.usefixtures("any_ipam")
@pytest.mark.parametrize("fault", ["flows", "ofport"])
def test_ADD_05_DLG_05_failure_after_ipam_leaks_nothing(node: Node, fault: str) -> None:
    netns = node.make_netns()
    cid = node.next_id("c")
    if fault == "flows":
        node.flows.fail_install = FlowFault("injected: switch refused the bundle")
    else:
        # The veth vanishes before OVS opens it: real OVS gives the port ofport -1.
        node.ports.before_add = lambda name: node.in_node("ip", "link", "del", name)
    answer = node.call(node.env("ADD", cid, netns), node.conf())
    err = error_of(answer, 104)
    assert "injected" in err["details"] or fault == "ofport"
    assert node.leftovers() == Node.NOTHING_LEFT
    assert "eth0" not in in_netns(netns, "ip", "link")
    # DEL-06: the DEL that follows a failed ADD succeeds
    node.flows.fail_install = None
    node.ports.before_add = None
    assert node.delete(cid, netns).exit_code == 0
    # and the attachment can be made again
    assert node.add(cid, netns)["ips"]


@pytest.mark.usefixtures("any_ipam")
def test_ADD_08_second_add_fails_and_keeps_the_first(node: Node) -> None:
    netns = node.make_netns()
    cid = node.next_id("c")
    first = node.add(cid, netns)
    answer = node.call(node.env("ADD", cid, netns), node.conf())
    assert answer.exit_code == 1
    assert len(node.reservations()) == 1 and len(node.pod_ports()) == 1
    assert first["ips"][0]["address"] in in_netns(netns, "ip", "addr", "show", "eth0")


def test_ADD_09_same_container_two_interfaces(node: Node) -> None:
    netns = node.make_netns()
    cid = node.next_id("c")
    a = node.add(cid, netns, ifname="eth0")
    b = node.add(cid, netns, ifname="net1")
    assert a["ips"][0]["address"] != b["ips"][0]["address"]
    assert len(node.pod_ports()) == 2
    assert node.delete(cid, netns, ifname="net1").exit_code == 0
    assert "net1" not in in_netns(netns, "ip", "link")
    assert "eth0" in in_netns(netns, "ip", "link")


def test_ADD_10_not_ready_answers_11_after_a_bounded_wait(node: Node) -> None:
    node.ready.clear()
    started = time.monotonic()
    answer = node.call(node.env("ADD", node.next_id("c"), node.make_netns()), node.conf())
    elapsed = time.monotonic() - started
    error_of(answer, 11)
    assert 0.4 < elapsed < 5
    assert node.leftovers() == Node.NOTHING_LEFT


def test_ADD_10_becomes_ready_during_the_wait(node: Node) -> None:
    node.ready.clear()
    threading.Timer(0.2, node.ready.set).start()
    assert node.add(node.next_id("c"), node.make_netns())["ips"]


def test_ADD_11_mtu_from_config(node: Node) -> None:
    netns = node.make_netns()
    answer = node.call(node.env("ADD", node.next_id("c"), netns), node.conf("1.1.0", mtu=1300))
    assert json.loads(answer.stdout)["interfaces"][1]["mtu"] == 1300
    assert "mtu 1300" in in_netns(netns, "ip", "link", "show", "eth0")
    default = node.add(node.next_id("c"), node.make_netns(), version="1.1.0")
    assert default["interfaces"][1]["mtu"] == 1450


@pytest.mark.parametrize("where", ["CNI_ARGS", "args", "runtimeConfig"])
def test_ADD_12_requested_mac(node: Node, where: str) -> None:
    netns = node.make_netns()
    mac = "0a:58:0a:00:00:42"
    env = node.env("ADD", node.next_id("c"), netns)
    conf = node.conf()
    if where == "CNI_ARGS":
        env["CNI_ARGS"] += f";MAC={mac}"
    elif where == "args":
        conf["args"] = {"cni": {"mac": mac}}
    else:
        conf["runtimeConfig"] = {"mac": mac}
    result = json.loads(node.call(env, conf).stdout)
    assert result["interfaces"][1]["mac"] == mac
    assert mac in in_netns(netns, "ip", "link", "show", "eth0")


def test_RES_05_quiet_verbs_print_nothing(node: Node) -> None:
    runtime = node.runtime()
    net = node.network()
    rt = node.rt(node.make_netns())
    runtime.add(net, rt)
    for command, conf in (
        ("CHECK", runtime.plugin_config(net, net.plugins[0], rt, runtime.cached_result(net, rt))),
        ("STATUS", node.conf("1.1.0")),
        (
            "GC",
            node.conf(
                "1.1.0",
                **{
                    "cni.dev/valid-attachments": [
                        {"containerID": rt.container_id, "ifname": "eth0"}
                    ]
                },
            ),
        ),
        ("DEL", node.conf("1.1.0")),
    ):
        env = (
            node.env(command, rt.container_id, rt.netns)
            if command in ("CHECK", "DEL")
            else node.env(command)
        )
        answer = node.call(env, conf)
        assert answer.exit_code == 0 and answer.stdout == b"", (command, answer)


# --- DEL ------------------------------------------------------------------------------------


def test_DEL_01_repeated_dels_succeed(node: Node) -> None:
    netns = node.make_netns()
    cid = node.next_id("c")
    node.add(cid, netns)
    for _ in range(3):
        answer = node.delete(cid, netns)
        assert answer.exit_code == 0 and answer.stdout == b""
    assert node.leftovers() == Node.NOTHING_LEFT


@pytest.mark.usefixtures("any_ipam")
@pytest.mark.parametrize("how", ["empty", "deleted"])
def test_DEL_02_03_05_netns_gone_no_prev_result_still_cleans_host_side(
    node: Node, how: str
) -> None:
    netns = node.make_netns()
    cid = node.next_id("c")
    node.add(cid, netns)
    node.delete_netns(netns)
    answer = node.delete(cid, "" if how == "empty" else netns)  # conf carries no prevResult
    assert answer.exit_code == 0, answer
    assert node.leftovers() == Node.NOTHING_LEFT


def test_DEL_03_without_pod_name_finds_the_host_end(node: Node) -> None:
    netns = node.make_netns()
    cid = node.next_id("c")
    node.add(cid, netns)
    node.podnet.store.pop(Attachment(cid, "eth0"))  # as if the store had lost it
    env = node.env("DEL", cid, "", CNI_ARGS="")
    assert node.call(env, node.conf()).exit_code == 0
    assert node.host_veths() == [] and node.pod_ports() == [] and node.reservations() == {}


def test_DEL_07_never_added_succeeds(node: Node) -> None:
    answer = node.delete(node.next_id("c"), "")
    assert answer.exit_code == 0 and answer.stdout == b""


# --- CHECK ----------------------------------------------------------------------------------


def checked(node: Node) -> tuple[Any, Any, Any]:
    runtime = node.runtime()
    net = node.network("1.0.0")
    rt = node.rt(node.make_netns())
    runtime.add(net, rt)
    return runtime, net, rt


def test_CHK_02_06_check_after_add_passes_quietly(node: Node) -> None:
    runtime, net, rt = checked(node)
    runtime.check(net, rt)  # CHK-05: right after ADD


def test_CHK_01_check_below_0_4_0_is_code_1(node: Node) -> None:
    runtime, net, rt = checked(node)
    conf = runtime.plugin_config(net, net.plugins[0], rt, runtime.cached_result(net, rt))
    conf["cniVersion"] = "0.3.1"
    err = error_of(node.call(node.env("CHECK", rt.container_id, rt.netns), conf), 1)
    assert "CHECK" in err["msg"]


@pytest.mark.parametrize("damage", ["address", "route", "link", "port", "flows", "mac", "ipam"])
def test_CHK_03_check_notices_damage(node: Node, damage: str) -> None:
    runtime, net, rt = checked(node)
    result = runtime.cached_result(net, rt)
    assert result is not None
    ns = os.path.basename(rt.netns)
    host = result["interfaces"][0]["name"]
    if damage == "address":
        subprocess.run(["ip", "-n", ns, "addr", "flush", "dev", "eth0"], check=True)
    elif damage == "route":
        subprocess.run(["ip", "-n", ns, "route", "del", "default"], check=True)
    elif damage == "link":
        subprocess.run(["ip", "-n", ns, "link", "del", "eth0"], check=True)
    elif damage == "port":
        node.ovs.vsctl("del-port", node.bridge, host)
    elif damage == "flows":
        node.ovs.ofctl("del-flows", node.bridge)
    elif damage == "mac":
        subprocess.run(
            ["ip", "-n", ns, "link", "set", "eth0", "address", "02:12:34:56:78:9a"], check=True
        )
    else:
        for name in node.reservations():
            os.unlink(os.path.join(node.ipam.network_dir(NETWORK), name))
    with pytest.raises(CniCallError) as info:
        runtime.check(net, rt)
    assert info.value.code != 999, info.value


def test_CHK_04_tolerates_extra_routes_and_a_mac_changed_by_a_later_plugin(node: Node) -> None:
    runtime, net, rt = checked(node)
    ns = os.path.basename(rt.netns)
    subprocess.run(["ip", "-n", ns, "route", "add", "192.0.2.0/24", "dev", "eth0"], check=True)
    new_mac = "02:aa:bb:cc:dd:ee"
    subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "address", new_mac], check=True)
    cached = runtime.cached_result(net, rt)
    assert cached is not None
    cached["interfaces"][1]["mac"] = new_mac  # what `tuning` would report in the final result
    conf = runtime.plugin_config(net, net.plugins[0], rt, cached)
    answer = node.call(node.env("CHECK", rt.container_id, rt.netns), conf)
    assert answer.exit_code == 0, answer


def test_CHK_02_check_without_prev_result_is_an_error(node: Node) -> None:
    _, _, rt = checked(node)
    answer = node.call(node.env("CHECK", rt.container_id, rt.netns), node.conf())
    error_of(answer, 7)


# --- GC -------------------------------------------------------------------------------------


def test_GC_01_needs_1_1_0(node: Node) -> None:
    conf = node.conf("1.0.0", **{"cni.dev/valid-attachments": []})
    error_of(node.call(node.env("GC"), conf), 1)


@pytest.mark.usefixtures("any_ipam")
def test_GC_02_03_05_06_removes_what_is_not_valid(node: Node) -> None:
    runtime = node.runtime()
    net = node.network()
    keep, drop, gone = (node.rt(node.make_netns()) for _ in range(3))
    for rt in (keep, drop, gone):
        runtime.add(net, rt)
    node.delete_netns(gone.netns)  # GC-06: the netns may already be gone
    # Not through runtime.gc(): libcni would DEL stale cached attachments itself first. This
    # is the plugin's own GC, as a runtime without a cache (or another runtime) sends it.
    conf = runtime.plugin_config(net, net.plugins[0], None, None)
    valid = [{"containerID": keep.container_id, "ifname": "eth0"}]
    conf["cni.dev/valid-attachments"] = valid
    conf["cni.dev/attachments"] = valid
    answer = node.call(node.env("GC"), conf)
    assert answer.exit_code == 0 and answer.stdout == b"", answer
    assert len(node.pod_ports()) == 1 and len(node.reservations()) == 1
    assert len(node.host_veths()) == 1
    assert node.podnet.store.get(Attachment(keep.container_id, "eth0")) is not None
    runtime.check(net, keep)


def test_GC_02_falls_back_to_the_older_key(node: Node) -> None:
    runtime = node.runtime()
    net = node.network()
    keep, drop = node.rt(node.make_netns()), node.rt(node.make_netns())
    runtime.add(net, keep)
    runtime.add(net, drop)
    conf = runtime.plugin_config(net, net.plugins[0], None, None)
    conf["cni.dev/attachments"] = [{"containerID": keep.container_id, "ifname": "eth0"}]
    assert node.call(node.env("GC"), conf).exit_code == 0
    assert len(node.pod_ports()) == 1 and len(node.reservations()) == 1


@pytest.mark.usefixtures("any_ipam")
def test_GC_03_empty_list_cleans_everything_and_stray_reservations(node: Node) -> None:
    runtime = node.runtime()
    net = node.network()
    for _ in range(3):
        runtime.add(net, node.rt(node.make_netns()))
    # a reservation with no attachment at all (an agent that died mid-ADD)
    stray = node.pod_cidr.network_address + 200
    Path(node.ipam.network_dir(NETWORK), str(stray)).write_text("ghost\r\neth0")
    conf = runtime.plugin_config(net, net.plugins[0], None, None)
    conf["cni.dev/valid-attachments"] = []
    assert node.call(node.env("GC"), conf).exit_code == 0
    assert node.leftovers() == Node.NOTHING_LEFT


def test_GC_04_keeps_going_after_errors(node: Node) -> None:
    runtime = node.runtime()
    net = node.network()
    stuck, other = node.rt(node.make_netns()), node.rt(node.make_netns())
    runtime.add(net, stuck)
    runtime.add(net, other)
    node.flows.fail_remove.add(stuck.container_id)
    conf = runtime.plugin_config(net, net.plugins[0], None, None)
    conf["cni.dev/valid-attachments"] = []
    answer = node.call(node.env("GC"), conf)
    err = error_of(answer, 102)
    assert "stuck" in err["details"]
    assert (
        node.podnet.store.get(Attachment(other.container_id, "eth0")) is None
    )  # the other one went
    assert node.podnet.store.get(Attachment(stuck.container_id, "eth0")) is not None


def test_GC_through_the_runtime_sends_both_keys(node: Node) -> None:
    runtime = node.runtime()
    net = node.network()
    a, b = node.rt(node.make_netns()), node.rt(node.make_netns())
    runtime.add(net, a)
    runtime.add(net, b)
    runtime.gc(net, [(a.container_id, "eth0")])
    assert len(node.pod_ports()) == 1


def wrap_gc_capable_ipam(node: Node, log: Path, status_error: bool = False) -> None:
    """An IPAM named host-local, earlier in CNI_PATH, that speaks CNI 1.1.0: it records GC and
    STATUS calls (optionally failing STATUS with 50) and hands the rest to the real one."""
    wrapper = node.workdir / "bin" / "host-local"
    status = (
        'echo \'{"cniVersion":"1.1.0","code":50,"msg":"pool offline"}\'; exit 1'
        if status_error
        else "exit 0"
    )
    wrapper.write_text(
        "#!/bin/sh\n"
        'case "$CNI_COMMAND" in\n'
        'VERSION) echo \'{"cniVersion":"1.1.0","supportedVersions":'
        '["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}\'; exit 0;;\n'
        f'GC) cat > "{log}.GC"; exit 0;;\n'
        f'STATUS) cat > "{log}.STATUS"; {status};;\n'
        "esac\n"
        # the real host-local (1.1.1) stops at 1.0.0: hand it the same config in that version
        'sed \'s/"cniVersion": "1.1.0"/"cniVersion": "1.0.0"/\' | /usr/lib/cni/host-local\n'
    )
    wrapper.chmod(0o755)


@pytest.mark.usefixtures("host_local")
def test_GC_05_gc_is_forwarded_to_an_ipam_that_speaks_1_1_0(node: Node) -> None:
    log = node.workdir / "ipam"
    wrap_gc_capable_ipam(node, log)
    runtime = node.runtime()
    net = node.network()
    keep = node.rt(node.make_netns())
    runtime.add(net, keep)
    runtime.gc(net, [(keep.container_id, "eth0")])
    sent = json.loads(Path(f"{log}.GC").read_text())
    assert sent["cni.dev/valid-attachments"] == [
        {"containerID": keep.container_id, "ifname": "eth0"}
    ]
    assert sent["ipam"]["ranges"][0][0]["subnet"] == str(node.pod_cidr)


@pytest.mark.usefixtures("host_local")
def test_STS_03_status_is_forwarded_and_its_error_passed_on(node: Node) -> None:
    log = node.workdir / "ipam"
    wrap_gc_capable_ipam(node, log, status_error=True)
    err = error_of(node.call(node.env("STATUS"), node.conf("1.1.0")), 50)
    assert "pool offline" in err["msg"]
    assert Path(f"{log}.STATUS").exists()


@pytest.mark.usefixtures("any_ipam")
def test_VER_04_OBS_01_runtime_checking_versions_before_add_and_del(node: Node) -> None:
    runtime = node.runtime(check_versions=True)  # podman: VERSION before every ADD and DEL
    for version in ("0.3.1", "0.4.0", "1.0.0", "1.1.0"):
        net = node.network(version)
        rt = node.rt(node.make_netns())
        assert runtime.add(net, rt)["cniVersion"] == version
        runtime.delete(net, rt)
    assert node.leftovers() == Node.NOTHING_LEFT


@pytest.mark.usefixtures("any_ipam")
def test_OBS_09_cri_double_del(node: Node) -> None:
    """StopPodSandbox: DEL with netns and prevResult; RemovePodSandbox: DEL with neither."""
    runtime = node.runtime()
    net = node.network("1.0.0")
    rt = node.rt(node.make_netns())
    result = runtime.add(net, rt)
    first = runtime.plugin_config(net, net.plugins[0], rt, result)
    assert node.call(node.env("DEL", rt.container_id, rt.netns), first).exit_code == 0
    node.delete_netns(rt.netns)
    second = runtime.plugin_config(net, net.plugins[0], None, None)
    assert node.call(node.env("DEL", rt.container_id, ""), second).exit_code == 0
    assert node.leftovers() == Node.NOTHING_LEFT


# --- STATUS ---------------------------------------------------------------------------------


def test_STS_01_needs_1_1_0(node: Node) -> None:
    error_of(node.call(node.env("STATUS"), node.conf("1.0.0")), 1)


def test_STS_02_04_ready_not_ready_and_agent_down(node: Node) -> None:
    runtime = node.runtime()
    net = node.network()
    runtime.status(net)
    node.ready.clear()
    error_of(node.call(node.env("STATUS"), node.conf("1.1.0")), 50)
    node.ready.set()
    # STS-04: a failed STATUS changes nothing for ADD
    runtime.add(net, node.rt(node.make_netns()))
    env = node.env("STATUS", PLUMB_CNI_SOCKET=str(node.workdir / "nobody.sock"))
    error_of(node.call(env, node.conf("1.1.0")), 50)


@pytest.mark.usefixtures("any_ipam")
def test_STS_02_03_exhausted_pool_is_code_50(node: Node) -> None:
    directory = Path(node.ipam.network_dir(NETWORK))
    directory.mkdir(parents=True)
    for host in list(node.pod_cidr.hosts())[1:]:
        (directory / str(host)).write_text("filler\r\neth0")
    error_of(node.call(node.env("STATUS"), node.conf("1.1.0")), 50)


# --- ERR ------------------------------------------------------------------------------------


def test_ERR_03_agent_down_is_code_11(node: Node) -> None:
    env = node.env("ADD", node.next_id("c"), node.make_netns())
    env["PLUMB_CNI_SOCKET"] = str(node.workdir / "nobody.sock")
    error_of(node.call(env, node.conf()), 11)


def test_ERR_05_internal_errors_become_json_not_tracebacks(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(spec: Any) -> None:
        raise ZeroDivisionError("boom")  # not a CniError: a bug

    monkeypatch.setattr(netns, "create_pair", broken)
    answer = node.call(node.env("ADD", node.next_id("c"), node.make_netns()), node.conf())
    err = error_of(answer, 999)
    assert "boom" in err["details"]
    assert b"Traceback" not in answer.stdout + answer.stderr
    assert node.leftovers() == Node.NOTHING_LEFT


# --- CONC -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("any_ipam")
def test_CONC_01_02_twenty_parallel_adds_and_dels(node: Node) -> None:
    pods = [(node.next_id("c"), node.make_netns()) for _ in range(20)]
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda p: node.add(*p), pods))
    ips = {r["ips"][0]["address"] for r in results}
    assert len(ips) == 20  # 20 distinct addresses
    assert len(node.pod_ports()) == 20 and len(node.reservations()) == 20
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(lambda p: node.delete(*p), pods))
    assert all(a.exit_code == 0 for a in answers)
    assert node.leftovers() == Node.NOTHING_LEFT
    # no stale lock: host-local's flock is free
    with open(os.path.join(node.ipam.network_dir(NETWORK), "lock")) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)


@pytest.mark.usefixtures("any_ipam")
def test_CONC_03_same_container_calls_are_serialised(node: Node) -> None:
    netns = node.make_netns()
    cid = node.next_id("c")
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(
            pool.map(lambda _: node.call(node.env("ADD", cid, netns), node.conf()), range(4))
        )
    assert sorted(a.exit_code for a in answers) == [0, 1, 1, 1]
    assert len(node.reservations()) == 1 and len(node.pod_ports()) == 1


@pytest.mark.usefixtures("any_ipam")
def test_restart_rebuilds_the_store_from_ovs(node: Node) -> None:
    runtime = node.runtime()
    net = node.network()
    rt = node.rt(node.make_netns())
    runtime.add(net, rt)
    node.podnet.store.replace_all([])
    assert node.podnet.restore() == 1
    runtime.check(net, rt)
    runtime.delete(net, rt)
    assert node.leftovers() == Node.NOTHING_LEFT


def test_unknown_error_codes_are_not_cni_error_instances() -> None:
    # the injected fault type must not be a CniError, or ERR-05's test proves nothing
    assert not issubclass(ZeroDivisionError, CniError)
