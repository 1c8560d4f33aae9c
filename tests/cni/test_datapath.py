"""Pods made by the CNI plugin carry traffic through the real OVS userspace datapath: ping and a
TCP transfer between two pods, with TX checksum offload off on both veth ends. (The flows are
this tier's simple per-pod flows; the pipeline's own flows are tested with the agent.)"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.cni.conftest import Node

pytestmark = pytest.mark.ovs

SERVER = textwrap.dedent(
    """
    import socket, sys
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 8080)); srv.listen(1); print("ready", flush=True)
    conn, _ = srv.accept(); total = 0
    while chunk := conn.recv(65536):
        total += len(chunk)
    conn.sendall(str(total).encode()); conn.close()
    """
)
# ICMP echo by raw socket: iputils' ping is not installed everywhere.
PING = textwrap.dedent(
    """
    import os, socket, struct, sys, time
    def checksum(data):
        total = sum(struct.unpack(f"!{len(data) // 2}H", data))
        total = (total >> 16) + (total & 0xFFFF)
        return ~(total + (total >> 16)) & 0xFFFF
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.settimeout(float(sys.argv[2]))
    ident = os.getpid() & 0xFFFF
    body = struct.pack("!HH", ident, 1) + b"plumb-ping-01234"
    packet = struct.pack("!BBH", 8, 0, checksum(struct.pack("!BBH", 8, 0, 0) + body)) + body
    for _ in range(3):
        s.sendto(packet, (sys.argv[1], 0))
        try:
            deadline = time.monotonic() + float(sys.argv[2])
            while time.monotonic() < deadline:
                reply = s.recv(1500)[20:]
                if reply[0] == 0 and struct.unpack("!H", reply[4:6])[0] == ident:
                    sys.exit(0)
        except socket.timeout:
            pass
    sys.exit(1)
    """
)
CLIENT = textwrap.dedent(
    """
    import socket, sys
    s = socket.create_connection((sys.argv[1], 8080), timeout=10)
    s.sendall(b"x" * 1_000_000); s.shutdown(socket.SHUT_WR)
    print(s.recv(100).decode())
    """
)


def ns_run(netns: str, *cmd: str, timeout: float = 20) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", os.path.basename(netns), *cmd],
        check=True,
        capture_output=True,
        text=True,
        timeout=timeout,
    ).stdout


def test_two_pods_ping_and_move_a_megabyte_of_tcp(node: Node) -> None:
    a_ns, b_ns = node.make_netns(), node.make_netns()
    a = node.add(node.next_id("c"), a_ns)
    b = node.add(node.next_id("c"), b_ns)
    b_ip = b["ips"][0]["address"].split("/")[0]
    for netns, result in ((a_ns, a), (b_ns, b)):
        assert "tx-checksumming: off" in ns_run(netns, "ethtool", "-k", "eth0")
        host = result["interfaces"][0]["name"]
        assert "tx-checksumming: off" in ns_run(node.node_netns, "ethtool", "-k", host)
        # The node's kernel must not answer or forward for the pod (only OVS speaks for it).
        for key, value in (("arp_ignore", "8"), ("forwarding", "0")):
            sysctl = f"/proc/sys/net/ipv4/conf/{host}/{key}"
            assert ns_run(node.node_netns, "cat", sysctl).strip() == value
    ns_run(a_ns, sys.executable, "-c", PING, b_ip, "2")
    server = subprocess.Popen(
        ["ip", "netns", "exec", os.path.basename(b_ns), sys.executable, "-c", SERVER],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        received = ns_run(a_ns, sys.executable, "-c", CLIENT, b_ip).strip()
        assert received == "1000000"
    finally:
        server.kill()
        server.wait()


def test_removed_pod_is_unreachable(node: Node) -> None:
    a_ns, b_ns = node.make_netns(), node.make_netns()
    node.add(node.next_id("c"), a_ns)
    b_cid = node.next_id("c")
    b = node.add(b_cid, b_ns)
    b_ip = b["ips"][0]["address"].split("/")[0]
    ns_run(a_ns, sys.executable, "-c", PING, b_ip, "2")
    assert node.delete(b_cid, b_ns).exit_code == 0
    with pytest.raises(subprocess.CalledProcessError):
        ns_run(a_ns, sys.executable, "-c", PING, b_ip, "0.5")
