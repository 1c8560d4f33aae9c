"""lab.ovs_sandbox: private OVS instances start, answer, restart, stop and leave nothing behind."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from lab.ovs_sandbox import (
    OvsBinariesMissing,
    OvsSandbox,
    OvsSandboxError,
    require_ovs_binaries,
)

pytestmark = pytest.mark.ovs


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _netns_inode(netns: str) -> int:
    return os.stat(f"/run/netns/{netns}").st_ino


def _links(netns: str) -> list[str]:
    out = subprocess.run(
        ["ip", "-n", netns, "-o", "link", "show"], check=True, capture_output=True, text=True
    ).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


def test_start_answers_and_cleanup_leaves_no_process_dir_or_netns(make_sandbox):
    ovs = make_sandbox()
    pids = [ovs.pid("ovsdb-server"), ovs.pid("ovs-vswitchd")]
    assert None not in pids
    assert "Open vSwitch" in ovs.appctl("version")
    assert "ovsdb-server" in ovs.appctl("version", daemon="ovsdb-server")
    assert ovs.vsctl("show").strip()
    netns = ovs.netns
    assert netns is not None and Path(f"/run/netns/{netns}").exists()

    ovs.cleanup()

    assert not any(_alive(pid) for pid in pids if pid is not None)
    assert not ovs.rundir.exists()
    assert not Path(f"/run/netns/{netns}").exists()
    ovs.cleanup()  # idempotent


def test_start_and_stop_are_idempotent(make_sandbox):
    ovs = make_sandbox()
    pid = ovs.pid("ovs-vswitchd")
    ovs.start()
    assert ovs.pid("ovs-vswitchd") == pid
    ovs.stop()
    ovs.stop()
    assert ovs.pid("ovs-vswitchd") is None and ovs.pid("ovsdb-server") is None
    assert ovs.rundir.exists()  # stop keeps the database; cleanup removes it


def test_two_sandboxes_run_side_by_side(make_sandbox):
    a, b = make_sandbox(), make_sandbox()
    a.vsctl("add-br", "br-a", "--", "set", "bridge", "br-a", "datapath_type=netdev")
    b.vsctl("add-br", "br-b", "--", "set", "bridge", "br-b", "datapath_type=netdev")
    assert a.vsctl("list-br").split() == ["br-a"]
    assert b.vsctl("list-br").split() == ["br-b"]
    assert "n_tables" in a.ofctl("show", "br-a")  # bare name -> a's rundir/br-a.mgmt
    assert a.netns != b.netns

    a.cleanup()

    assert b.pid("ovs-vswitchd") is not None
    assert "n_tables" in b.ofctl("show", "br-b")


def test_sandbox_in_a_given_netns_leaves_the_netns_but_no_devices(make_sandbox, make_netns):
    netns = make_netns()
    ovs = make_sandbox(netns=netns)
    pid = ovs.pid("ovs-vswitchd")
    assert pid is not None
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == _netns_inode(netns)
    ovs.vsctl("add-br", "br-x", "--", "set", "bridge", "br-x", "datapath_type=netdev")
    assert "br-x" in _links(netns)  # the userspace datapath's tap, in the given namespace

    ovs.cleanup()

    assert Path(f"/run/netns/{netns}").exists()  # not ours to delete
    assert _links(netns) == ["lo"]  # exit --cleanup took the taps away
    assert not _alive(pid)


def test_missing_netns_is_a_clear_error(make_sandbox):
    with pytest.raises(OvsSandboxError, match="plumbtest-nonexistent does not exist"):
        make_sandbox(netns="plumbtest-nonexistent")


def test_vswitchd_restart_keeps_the_database_and_the_bridge(make_sandbox):
    ovs = make_sandbox()
    ovs.vsctl("add-br", "br-r", "--", "set", "bridge", "br-r", "datapath_type=netdev")
    old = ovs.pid("ovs-vswitchd")
    ovs.stop_vswitchd()
    assert ovs.pid("ovs-vswitchd") is None
    assert not ovs.ctl_socket("ovs-vswitchd").exists()
    assert ovs.vsctl("--no-wait", "list-br").split() == ["br-r"]  # ovsdb-server still up

    ovs.start_vswitchd()

    assert ovs.pid("ovs-vswitchd") not in (None, old)
    assert "n_tables" in ovs.ofctl("show", "br-r")


def test_ovsdb_restart_keeps_the_database(make_sandbox):
    ovs = make_sandbox()
    ovs.vsctl("--no-wait", "add-br", "br-d", "--", "set", "bridge", "br-d", "external_ids:k=v")
    ovs.stop()
    assert not ovs.db_socket.exists()

    ovs.start()

    assert ovs.vsctl("get", "bridge", "br-d", "external_ids:k").strip() == "v"


def test_vswitchd_without_ovsdb_fails_fast(make_sandbox):
    ovs = make_sandbox()
    ovs.stop()
    started = time.monotonic()
    with pytest.raises(OvsSandboxError, match="needs ovsdb-server"):
        ovs.start_vswitchd()
    assert time.monotonic() - started < 1


def test_stale_pidfile_naming_another_process_is_ignored(make_sandbox):
    ovs = make_sandbox(start=False)
    ovs.rundir.mkdir(parents=True, exist_ok=True)
    # PID 1 is alive but is not our daemon: never signal it, treat the daemon as down.
    ovs.pidfile("ovs-vswitchd").write_text("1\n")
    assert ovs.pid("ovs-vswitchd") is None
    ovs.stop()
    assert not ovs.pidfile("ovs-vswitchd").exists()


def test_failed_commands_raise_with_stderr(make_sandbox):
    ovs = make_sandbox()
    with pytest.raises(OvsSandboxError, match="no bridge named nosuchbr"):
        ovs.vsctl("br-to-vlan", "nosuchbr")
    with pytest.raises(OvsSandboxError, match="nosuchbr"):
        ovs.ofctl("show", "nosuchbr")


def test_daemon_that_cannot_start_reports_its_log(make_sandbox):
    ovs = make_sandbox(start=False)
    ovs.rundir.mkdir(parents=True, exist_ok=True)
    ovs.db_path.write_text("not a database\n")
    with pytest.raises(OvsSandboxError, match="ovsdb-server"):
        ovs.start()
    assert ovs.pid("ovsdb-server") is None


def test_missing_binaries_are_one_line_naming_them(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(OvsBinariesMissing) as caught:
        require_ovs_binaries()
    message = str(caught.value)
    assert "\n" not in message
    assert "ovs-vswitchd" in message and "apt-get install openvswitch-switch" in message
    with pytest.raises(OvsBinariesMissing):
        OvsSandbox(tmp_path / "ovs").start()
