"""NetworkPolicy end to end: real pods attached through the `plumb` executable to an agent that
watches the fake API server; a NetworkPolicy created there blocks, then allows, real pings and
TCP connections between the pods, and deleting it restores them. An egress policy blocks the
pod's own connections. The agent's status shows what is realised."""

from __future__ import annotations

import copy
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from controller.agent import Agent
from tests.kube.conftest import NODE
from tests.kube.test_agent import world  # noqa: F401  (the fixture)
from tests.kube.test_agent_pods import Pods, pings, run_in

pytestmark = pytest.mark.ovs

SERVER = """
import socket, sys, threading
def echo(conn):
    while data := conn.recv(100):
        conn.sendall(data)
def serve(port, keep):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(16)
    while True:
        conn, _ = s.accept()
        if keep:
            threading.Thread(target=echo, args=(conn,), daemon=True).start()
        else:
            conn.sendall(b"ok")
            conn.close()
for port in sys.argv[1:]:
    threading.Thread(target=serve, args=(int(port), port == "8082"), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""
# One long-lived connection: each line on stdin goes out and its echo (or the failure) is told.
SESSION = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
for line in sys.stdin:
    try:
        s.sendall(line.encode())
        print("echo" if s.recv(100) else "closed", flush=True)
    except OSError:
        print("cut", flush=True)
"""
CONNECT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)
sys.exit(0 if s.recv(2) == b"ok" else 1)
"""


def wait_for(predicate: Callable[[], bool], timeout: float = 8.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def connects(netns: str, ip: str, port: int) -> bool:
    return run_in(netns, sys.executable, "-c", CONNECT, ip, str(port)).returncode == 0


def serve_in(netns: str) -> subprocess.Popen[str]:
    """The test server on 8080-8082 inside a pod's namespace, once it is listening."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", SERVER, "8080", "8081", "8082"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    return server


class Cluster:
    """The agent, its API server and pods registered there the way kubelet would."""

    def __init__(self, api: Any, ovs: Any, agent: Agent, pods: Pods) -> None:
        self.api, self.ovs, self.agent, self.pods = api, ovs, agent, pods
        self.servers: list[subprocess.Popen[str]] = []

    def add(self, name: str, **labels: str) -> dict[str, str]:
        # Like kubelet: the pod object exists before its sandbox's CNI ADD; the IP comes after.
        pod = {
            "metadata": {"namespace": "default", "name": name, "labels": labels},
            "spec": {
                "nodeName": NODE,
                "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}],
            },
            "status": {"phase": "Pending"},
        }
        self.api.create("pods", pod)
        made = self.pods.add(name)
        pod["status"] = {"phase": "Running", "podIP": made["ip"]}
        self.api.update("pods", pod)
        self.servers.append(serve_in(made["netns"]))
        return made

    def settle(self) -> None:
        assert self.agent.policies is not None
        time.sleep(0.3)  # the watch delivers the change to the store
        assert self.agent.policies.wait_idle(5)

    def stop(self) -> None:
        for server in self.servers:
            server.kill()
            server.wait()


@pytest.fixture
def cluster(world, tmp_path) -> Iterator[Cluster]:  # noqa: F811
    api, ovs, config = world
    agent = Agent(config, sync_timeout=10, netns=ovs.netns)
    agent.start()
    made = Cluster(api, ovs, agent, Pods(config, tmp_path))
    try:
        yield made
    finally:
        made.stop()
        made.pods.cleanup()
        agent.stop()


def netpol(name: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": "default", "name": name}, "spec": spec}


def test_a_policy_blocks_then_allows_pings_and_tcp_between_real_pods(cluster):
    a = cluster.add("a", app="a")
    b = cluster.add("b", app="b")
    assert pings(a["netns"], b["ip"]) and connects(a["netns"], b["ip"], 8080)

    only_http = netpol(
        "web",
        podSelector={"matchLabels": {"app": "b"}},
        ingress=[
            {"from": [{"podSelector": {"matchLabels": {"app": "a"}}}], "ports": [{"port": "http"}]}
        ],
    )
    cluster.api.create("networkpolicies", only_http)
    assert wait_for(lambda: not pings(a["netns"], b["ip"])), "ICMP must be blocked"
    cluster.settle()
    assert connects(a["netns"], b["ip"], 8080), "the named port resolves to 8080"
    assert not connects(a["netns"], b["ip"], 8081)
    assert pings(b["netns"], a["ip"]), "a is not isolated"
    assert pings(b["netns"], "10.244.0.1") and wait_for(
        lambda: run_in(cluster.agent.netns, "ping", "-c", "1", "-W", "1", b["ip"]).returncode == 0
    ), "the node still reaches its isolated pod"

    status = {(s.namespace, s.name): s for s in cluster.agent.policies.status()}
    web = status[("default", "web")]
    assert web.realised and web.local_pods == ("default/b",) and web.rules[0].ports == "TCP/8080"

    cluster.api.update(
        "networkpolicies", {**only_http, "spec": {**only_http["spec"], "ingress": [{}]}}
    )
    assert wait_for(lambda: pings(a["netns"], b["ip"])), "an empty rule allows everything"
    assert connects(a["netns"], b["ip"], 8081)

    cluster.api.delete("networkpolicies", "default", "web")
    cluster.api.create("networkpolicies", netpol("deny", podSelector={"matchLabels": {"app": "b"}}))
    assert wait_for(lambda: not pings(a["netns"], b["ip"]))
    assert not connects(a["netns"], b["ip"], 8080)
    cluster.api.delete("networkpolicies", "default", "deny")
    assert wait_for(lambda: pings(a["netns"], b["ip"]))
    assert connects(a["netns"], b["ip"], 8080)


def test_a_label_change_and_an_egress_policy_take_effect_on_real_traffic(cluster):
    a = cluster.add("a", app="a")
    b = cluster.add("b", app="b")
    cluster.api.create(
        "networkpolicies",
        netpol(
            "friends",
            podSelector={"matchLabels": {"app": "b"}},
            ingress=[{"from": [{"podSelector": {"matchLabels": {"role": "friend"}}}]}],
        ),
    )
    assert wait_for(lambda: not connects(a["netns"], b["ip"], 8080))
    pod = copy.deepcopy(cluster.api.get("pods", "default", "a"))
    pod["metadata"]["labels"]["role"] = "friend"
    cluster.api.update("pods", pod)
    assert wait_for(lambda: connects(a["netns"], b["ip"], 8080)), "a became a friend"

    cluster.api.create(
        "networkpolicies",
        netpol(
            "a-out",
            podSelector={"matchLabels": {"app": "a"}},
            policyTypes=["Egress"],
            egress=[{"ports": [{"port": 8081}]}],
        ),
    )
    assert wait_for(lambda: not connects(a["netns"], b["ip"], 8080)), "a may only send to 8081"
    assert not pings(a["netns"], b["ip"])
    assert connects(a["netns"], b["ip"], 8081)


def test_established_connections_survive_a_policy_change_until_conntrack_is_flushed(cluster):
    a = cluster.add("a", app="a")
    b = cluster.add("b", app="b")
    session = subprocess.Popen(
        ["ip", "netns", "exec", a["netns"], sys.executable, "-c", SESSION, b["ip"], "8082"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    cluster.servers.append(session)
    to_session, from_session = session.stdin, session.stdout
    assert to_session is not None and from_session is not None

    def say() -> str:
        to_session.write("hello\n")
        to_session.flush()
        return from_session.readline().strip()

    assert say() == "echo"
    cluster.api.create("networkpolicies", netpol("deny", podSelector={"matchLabels": {"app": "b"}}))
    assert wait_for(lambda: not connects(a["netns"], b["ip"], 8080)), "new connections are cut"
    assert say() == "echo", "the established connection goes on through conntrack"
    flushed = f"ct_nw_src={a['ip']},ct_nw_dst={b['ip']},ct_nw_proto=6,ct_tp_dst=8082"
    cluster.ovs.appctl("dpctl/flush-conntrack", "zone=65520", flushed)
    assert say() == "cut", "without its conntrack entry the connection meets the policy"


def test_a_new_pod_is_isolated_the_moment_its_add_returns(cluster):
    """Even when its pod object reaches the agent after the ADD started."""
    client = cluster.add("client", app="client")
    cluster.api.create(
        "networkpolicies", netpol("deny-late", podSelector={"matchLabels": {"app": "late"}})
    )
    cluster.settle()
    late_object = {
        "metadata": {"namespace": "default", "name": "late", "labels": {"app": "late"}},
        "spec": {"nodeName": NODE, "containers": [{"name": "c"}]},
        "status": {"phase": "Pending"},
    }
    threading.Timer(0.5, cluster.api.create, ("pods", late_object)).start()
    late = cluster.pods.add("late")
    cluster.servers.append(serve_in(late["netns"]))
    assert not connects(client["netns"], late["ip"], 8080)
