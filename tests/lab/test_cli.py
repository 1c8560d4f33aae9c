"""The `plumbctl lab` contract on one node's worth of traffic: verbs, flags, exit codes and the
shapes of their outputs (issue 4), driven as users script it: through the command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lab.layout import LabLayout
from lab.pods import record, server_pid
from tests.lab.conftest import Lab, LabFactory, pod_yaml

pytestmark = pytest.mark.lab

PORTS = "80/TCP,81/TCP,53/UDP"
DROP_ALL = "cookie=0x5e1f0000dead,table=0,priority=65535,ip,actions=drop"


@pytest.fixture(scope="module")
def lab(module_lab: LabFactory) -> Lab:
    lab = module_lab("--nodes", "2")
    lab.apply(
        pod_yaml("x", "a", "node1", PORTS),
        pod_yaml("x", "b", "node1", PORTS),
        pod_yaml("y", "c", None, PORTS),  # scheduled: node2 has fewer pods
    )
    return lab


def test_up_again_changes_nothing(lab: Lab) -> None:
    before = lab.cli("get", "nodes", "-o", "wide").stdout
    done = lab.up()
    assert "is up: 2 node(s), encap geneve" in done.stdout
    assert lab.cli("get", "nodes", "-o", "wide").stdout == before  # same agents (PIDs)


def test_up_refuses_to_change_encap_of_a_running_lab(lab: Lab) -> None:
    done = lab.cli("up", "--encap", "vxlan", check=False)
    assert done.returncode == 1
    assert "runs with --encap geneve" in done.stderr


def test_bad_flags_are_usage_errors(lab: Lab) -> None:
    assert lab.cli("up", "--encap", "gre", check=False).returncode == 2
    assert lab.cli("probe", "x/a", "x/b", check=False).returncode == 2  # --port missing


def test_get_nodes_json_is_a_list_of_ready_nodes(lab: Lab) -> None:
    listing = json.loads(lab.cli("get", "nodes", "-o", "json").stdout)
    assert listing["kind"] == "List" and listing["apiVersion"] == "v1"
    nodes = {n["metadata"]["name"]: n for n in listing["items"]}
    assert set(nodes) == {"node1", "node2"}
    assert nodes["node2"]["spec"]["podCIDR"] == "10.244.2.0/24"
    assert {"type": "InternalIP", "address": "172.30.0.12"} in nodes["node2"]["status"]["addresses"]
    assert all(n["status"]["conditions"][0]["status"] == "True" for n in nodes.values())


def test_pods_are_spread_and_their_ip_and_node_written_back(lab: Lab) -> None:
    pods = lab.pods()
    assert set(pods) == {"x/a", "x/b", "y/c"}
    assert pods["y/c"]["spec"]["nodeName"] == "node2"
    for ref, pod in pods.items():
        status = pod["status"]
        assert status["phase"] == "Running", ref
        node = pod["spec"]["nodeName"]
        assert status["podIP"].startswith(f"10.244.{node[-1]}."), ref
        assert status["hostIP"] == f"172.30.0.1{node[-1]}"
    table = lab.cli("get", "pods").stdout.splitlines()
    assert table[0].split() == ["NAMESPACE", "NAME", "STATUS", "IP", "NODE"]
    assert table[1].split() == ["x", "a", "Running", pods["x/a"]["status"]["podIP"], "node1"]


def test_probe_connected_json_and_exit_0(lab: Lab) -> None:
    done = lab.cli("probe", "x/a", "x/b", "--port", "80", "--json")
    result = json.loads(done.stdout)
    assert list(result) == ["from", "to", "port", "protocol", "connected", "ms"]
    assert result["from"] == "x/a" and result["to"] == "x/b"
    assert result["port"] == 80 and result["protocol"] == "TCP" and result["connected"] is True
    assert 0 <= result["ms"] < 1000


def test_probe_udp_echo(lab: Lab) -> None:
    assert lab.connected("x/a", "x/b", 53, "UDP")
    assert not lab.connected("x/a", "x/b", 54, "UDP")


def test_probe_not_connected_exits_1(lab: Lab) -> None:
    done = lab.cli("probe", "x/a", "x/b", "--port", "82", check=False)
    assert done.returncode == 1
    assert "not connected" in done.stdout


def test_probe_errors_exit_2(lab: Lab) -> None:
    done = lab.cli("probe", "x/a", "x/nope", "--port", "80", check=False)
    assert done.returncode == 2
    assert "no pod 'x/nope'" in done.stderr


def test_sctp_probe_is_skipped_without_sctp_in_the_kernel(lab: Lab) -> None:
    if Path("/proc/net/sctp").exists():
        pytest.skip("this kernel has SCTP")
    done = lab.cli("probe", "x/a", "x/b", "--port", "80", "--protocol", "SCTP", check=False)
    assert done.returncode == 2
    assert "skipped: no SCTP in this kernel" in done.stdout


def test_exec_runs_in_the_pod_and_passes_the_exit_code(lab: Lab) -> None:
    ip = lab.pod_ip("x/a")
    assert (
        f"inet {ip}/24" in lab.cli("exec", "x/a", "--", "ip", "-4", "addr", "show", "eth0").stdout
    )
    assert lab.cli("exec", "x/a", "--", "sh", "-c", "exit 7", check=False).returncode == 7


def test_the_pod_server_answers_http_with_the_pod_name(lab: Lab) -> None:
    ip = lab.pod_ip("x/b")
    done = lab.cli("exec", "x/a", "--", "curl", "-s", "-m", "2", f"http://{ip}:81/")
    assert done.stdout == "x/b\n"


def test_matrix_json_and_grid(lab: Lab) -> None:
    data = json.loads(lab.cli("matrix", "--ports", "80,82", "--json").stdout)
    assert data["pods"] == ["x/a", "x/b", "y/c"]
    assert len(data["results"]) == 3 * 3 * 2
    assert set(data["results"][0]) == {"from", "to", "port", "protocol", "connected"}
    by = {(r["from"], r["to"], r["port"]): r["connected"] for r in data["results"]}
    assert by[("x/a", "x/b", 80)] and by[("x/b", "x/a", 80)]
    assert not by[("x/a", "x/b", 82)]  # nothing listens on 82
    grid = lab.cli("matrix", "--ports", "80").stdout.splitlines()
    assert grid[0] == "TCP/80"
    assert grid[1] == "-\tx/a\tx/b\ty/c"
    assert grid[2].startswith("x/a\t.\t.\t")


def test_matrix_of_nine_pods_two_ports_all_blocked_is_quick(lab: Lab) -> None:
    lab.apply(*(pod_yaml("m", f"p{i}", None, PORTS) for i in range(6)))
    layout = LabLayout(lab.name)
    mgmts = [str(layout.node(i).ovs_rundir / "br-int.mgmt") for i in (1, 2)]
    for mgmt in mgmts:
        subprocess.run(["ovs-ofctl", "add-flow", mgmt, DROP_ALL], check=True)
    try:
        start = time.monotonic()
        data = json.loads(lab.cli("matrix", "--ports", "80,81", "--json").stdout)
        elapsed = time.monotonic() - start
    finally:
        for mgmt in mgmts:
            subprocess.run(["ovs-ofctl", "del-flows", mgmt, "cookie=0x5e1f0000dead/-1"], check=True)
    assert len(data["pods"]) == 9 and len(data["results"]) == 9 * 9 * 2
    # A pod reaches itself through its own loopback, never the bridge: only pairs can be blocked.
    assert not any(r["connected"] for r in data["results"] if r["from"] != r["to"])
    assert elapsed < 10, f"matrix took {elapsed:.1f}s"
    lab.delete(*(pod_yaml("m", f"p{i}") for i in range(6)))


def test_deleted_pod_takes_its_namespace_server_and_object(lab: Lab) -> None:
    lab.apply(pod_yaml("x", "gone", "node1", PORTS))
    assert lab.connected("x/a", "x/gone")
    netns = LabLayout(lab.name).pod_netns("x", "gone")
    done = lab.delete(pod_yaml("x", "gone"))
    assert "pod/x/gone deleted" in done.stdout
    assert not Path(f"/run/netns/{netns}").exists()
    assert "x/gone" not in lab.pods()
    processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "x.gone.ready" not in processes  # the pod's server
    assert lab.cli("probe", "x/a", "x/gone", "--port", "80", check=False).returncode == 2


def test_up_restarts_a_pod_server_that_died(lab: Lab) -> None:
    rec = record(LabLayout(lab.name), "x", "b")
    assert rec is not None
    pid = server_pid(LabLayout(lab.name), rec)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert eventually(lambda: not lab.connected("x/a", "x/b")), "the server outlived SIGKILL"
    assert "pod/x/b: server restarted" in lab.up().stderr
    assert eventually(lambda: lab.connected("x/a", "x/b")), "the restarted server never answered"


def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """A loaded machine takes a moment to reap a process or to start listening."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
