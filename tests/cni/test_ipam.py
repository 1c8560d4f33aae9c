"""The agent's own allocator against the promises IPAM makes: no address handed out twice (to
threads, to processes, after a restart, next to the real host-local on the same store),
addresses back on DEL and GC, host-local's on-disk format (HL-03..07, CONC-01, CONC-02)."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest

from cni.ipam import NodeIpam
from cni.ipstore import LAST_RESERVED, Allocator
from cni.protocol import Attachment, CniError, ErrorCode, Request, parse_request

CIDR = IPv4Network("10.77.0.0/24")
SMALL = IPv4Network("10.77.1.0/29")  # .2-.6: five addresses
NET = "ipamnet"
HOST_LOCAL = "/usr/lib/cni/host-local"


def call(command: str, cid: str = "c1", ifname: str = "eth0", /, **conf: Any) -> Request:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_IFNAME": ifname}
    env |= {"CNI_NETNS": "/run/netns/x", "CNI_PATH": "/usr/lib/cni"}
    body = {"cniVersion": "1.1.0", "name": NET, "type": "plumb", **conf}
    return parse_request(env, json.dumps(body).encode())


def address_of(ipam: NodeIpam, cid: str, /, **conf: Any) -> str:
    return str(ipam.add(call("ADD", cid, **conf)).ips[0].address.ip)


def test_HL_03_08_add_result_and_the_file_host_local_would_write(tmp_path: Path) -> None:
    ipam = NodeIpam(CIDR, data_dir=str(tmp_path))
    result = ipam.add(call("ADD", "c1"))
    [ip] = result.ips
    assert (str(ip.address), str(ip.gateway)) == ("10.77.0.2/24", "10.77.0.1")
    assert [(str(r.dst), str(r.gw)) for r in result.routes] == [("0.0.0.0/0", "10.77.0.1")]
    assert not result.interfaces  # RES-04: an IPAM result
    directory = tmp_path / NET
    assert (directory / "10.77.0.2").read_bytes() == b"c1\r\neth0"
    assert (directory / LAST_RESERVED).read_text() == "10.77.0.2"
    assert (directory / "lock").exists()
    routes = ipam.add(call("ADD", "c2", ipam={"type": "plumb", "routes": []})).routes
    assert routes == ()  # the network's own routes win


def test_HL_04_round_robin_does_not_reuse_a_released_address_at_once(tmp_path: Path) -> None:
    ipam = NodeIpam(CIDR, data_dir=str(tmp_path))
    first = address_of(ipam, "c1")
    ipam.delete(call("DEL", "c1"))
    assert address_of(ipam, "c2") != first


def test_no_address_twice_across_an_agent_restart(tmp_path: Path) -> None:
    before = NodeIpam(CIDR, data_dir=str(tmp_path))
    held = {address_of(before, f"c{i}") for i in range(5)}
    before.delete(call("DEL", "c4"))
    held.discard("10.77.0.6")  # c4's, released
    after = NodeIpam(CIDR, data_dir=str(tmp_path))  # a new agent: nothing in memory
    new = {address_of(after, f"n{i}") for i in range(5)}
    assert len(held) == 4 and len(new) == 5
    assert not new & held
    # even when the round-robin position is lost, held addresses are skipped
    (tmp_path / NET / LAST_RESERVED).unlink()
    again = NodeIpam(CIDR, data_dir=str(tmp_path))
    assert address_of(again, "m1") == "10.77.0.6"  # the first free one from the start
    assert set(again.reservations(NET)) == held | new | {"10.77.0.6"}


def test_exhaustion_and_release(tmp_path: Path) -> None:
    ipam = NodeIpam(SMALL, data_dir=str(tmp_path))
    got = {address_of(ipam, f"c{i}") for i in range(5)}
    assert got == {f"10.77.1.{i}" for i in range(2, 7)}
    with pytest.raises(CniError) as info:
        ipam.add(call("ADD", "c5"))
    assert info.value.code == ErrorCode.IPAM_FAILURE
    assert "no IP addresses available" in info.value.msg
    with pytest.raises(CniError) as status:
        ipam.status(call("STATUS"))
    assert status.value.code == ErrorCode.NOT_AVAILABLE  # STS-02
    ipam.delete(call("DEL", "c3"))
    assert address_of(ipam, "c5") == "10.77.1.5"


def test_HL_06_DEL_releases_by_attachment_and_old_id_only_files(tmp_path: Path) -> None:
    ipam = NodeIpam(CIDR, data_dir=str(tmp_path))
    a = address_of(ipam, "c1")
    other_if = str(ipam.add(call("ADD", "c1", "net1")).ips[0].address.ip)
    (tmp_path / NET / "10.77.0.99").write_text("c1")  # written by an old host-local
    ipam.delete(call("DEL", "c1"))
    assert sorted(ipam.reservations(NET)) == [other_if]
    assert a not in ipam.reservations(NET)
    ipam.delete(call("DEL", "unknown"))  # an unknown id is fine
    ipam.delete(call("DEL", "c1", "net1"))
    assert ipam.reservations(NET) == {}


def test_HL_07_CHECK_needs_a_reservation(tmp_path: Path) -> None:
    ipam = NodeIpam(CIDR, data_dir=str(tmp_path))
    address_of(ipam, "c1")
    ipam.check(call("CHECK", "c1"))
    with pytest.raises(CniError) as info:
        ipam.check(call("CHECK", "c2"))
    assert info.value.code == ErrorCode.CHECK_FAILURE


def test_GC_03_returns_addresses_of_attachments_not_valid(tmp_path: Path) -> None:
    ipam = NodeIpam(CIDR, data_dir=str(tmp_path))
    keep, drop = address_of(ipam, "keep"), address_of(ipam, "drop")
    valid = [{"containerID": "keep", "ifname": "eth0"}]
    ipam.gc(call("GC", **{"cni.dev/valid-attachments": valid}))
    assert list(ipam.reservations(NET)) == [keep]
    assert address_of(ipam, "next", runtimeConfig={"ips": [drop]}) == drop  # free again


@pytest.mark.parametrize(
    ("wanted", "ok"),
    [("10.77.0.50", True), ("10.77.0.1", False), ("10.77.0.255", False), ("10.1.1.1", False)],
)
def test_HL_05_a_requested_address(tmp_path: Path, wanted: str, ok: bool) -> None:
    ipam = NodeIpam(CIDR, data_dir=str(tmp_path))
    if ok:
        assert address_of(ipam, "c1", runtimeConfig={"ips": [f"{wanted}/24"]}) == wanted
        with pytest.raises(CniError) as taken:  # now taken
            ipam.add(call("ADD", "c2", args={"cni": {"ips": [wanted]}}))
        assert taken.value.code == ErrorCode.IPAM_FAILURE
        assert list(ipam.reservations(NET)) == [wanted]
    else:
        with pytest.raises(CniError) as info:
            ipam.add(call("ADD", "c1", runtimeConfig={"ips": [wanted]}))
        assert info.value.code == ErrorCode.IPAM_FAILURE
        assert ipam.reservations(NET) == {}


def test_CONC_02_twenty_threads(tmp_path: Path) -> None:
    # a separate NodeIpam per thread: the flock, not an in-process lock, keeps them apart
    def add(i: int) -> str:
        return address_of(NodeIpam(CIDR, data_dir=str(tmp_path)), f"c{i}")

    with ThreadPoolExecutor(max_workers=20) as pool:
        got = list(pool.map(add, range(40)))
    assert len(set(got)) == 40
    ipam = NodeIpam(CIDR, data_dir=str(tmp_path))
    with ThreadPoolExecutor(max_workers=20) as pool:
        list(pool.map(lambda i: ipam.delete(call("DEL", f"c{i}")), range(40)))
    assert ipam.reservations(NET) == {}


def _allocate_in_process(data_dir: str, tag: int, out: Any) -> None:
    allocator = Allocator(CIDR, data_dir)
    for i in range(15):
        out.put(str(allocator.allocate(NET, Attachment(f"p{tag}-{i}", "eth0"))))


def test_CONC_01_processes_share_the_store_safely(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_allocate_in_process, args=(str(tmp_path), t, out)) for t in range(4)
    ]
    for p in procs:
        p.start()
    got = [out.get(timeout=30) for _ in range(60)]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert len(set(got)) == 60


def host_local(command: str, cid: str, data_dir: Path) -> subprocess.CompletedProcess[bytes]:
    """The real host-local on the same store, as our delegation would run it."""
    conf = {
        "cniVersion": "1.0.0",
        "name": NET,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": str(CIDR), "gateway": "10.77.0.1"}]],
            "dataDir": str(data_dir),
        },
    }
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": "/proc/self/ns/net",
        "CNI_NETNS_OVERRIDE": "1",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/usr/lib/cni",
    }
    return subprocess.run(
        [HOST_LOCAL], input=json.dumps(conf).encode(), env=env, capture_output=True, check=False
    )


@pytest.mark.skipif(not os.path.exists(HOST_LOCAL), reason="host-local not installed")
def test_HL_03_host_local_and_the_allocator_share_one_store(tmp_path: Path) -> None:
    ipam = NodeIpam(CIDR, data_dir=str(tmp_path))
    ours: list[str] = []
    theirs: list[str] = []
    for i in range(6):
        ours.append(address_of(ipam, f"ours{i}"))
        answer = host_local("ADD", f"theirs{i}", tmp_path)
        assert answer.returncode == 0, answer
        theirs.append(json.loads(answer.stdout)["ips"][0]["address"].split("/")[0])
    assert len(set(ours) | set(theirs)) == 12  # they read each other's reservations
    # each releases what the other reserved: the same files, the same format
    assert host_local("DEL", "ours0", tmp_path).returncode == 0
    ipam.delete(call("DEL", "theirs0"))
    held = ipam.reservations(NET)
    assert ours[0] not in held and theirs[0] not in held and len(held) == 10


def test_failed_reservation_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write: Callable[[int, bytes], int] = os.write

    def full_disk(fd: int, data: bytes) -> int:
        if data.startswith(b"c1\r\n"):
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    ipam = NodeIpam(CIDR, data_dir=str(tmp_path))
    with pytest.raises(CniError) as info:
        ipam.add(call("ADD", "c1"))
    assert info.value.code == ErrorCode.IPAM_FAILURE
    assert ipam.reservations(NET) == {}
