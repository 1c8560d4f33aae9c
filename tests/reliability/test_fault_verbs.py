"""`plumbctl lab restart|partition|heal` through the command line, as a user replays a scenario:
their output, exit codes and effect (a new agent PID, a cut that probes notice, a heal)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.reliability import Lane, pod_object, world
from lab import faults
from lab.layout import LabLayout
from lab.pods import record

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.lab


def plumbctl(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "plumbctl", "lab", *args, "--name", name]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)


@pytest.fixture(scope="module")
def lab() -> Iterator[str]:
    with world(populated=False, name=f"rv-{uuid.uuid4().hex[:6]}") as w:
        w.apply([pod_object("a", "node1", {}), pod_object("b", "node2", {})])
        yield w.layout.name


def test_restart_each_component_prints_old_and_new_pid(lab: str) -> None:
    for component in ("agent", "ovs-vswitchd", "ovsdb-server"):
        done = plumbctl(lab, "restart", "node2", "--component", component)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"node2: {component} restarted (SIGTERM, pid "), done.stdout
    killed = plumbctl(lab, "restart", "node1", "--kill")
    assert killed.returncode == 0 and "(SIGKILL, pid" in killed.stdout, killed.stderr


def test_partition_cuts_and_heal_restores(lab: str) -> None:
    layout = LabLayout(lab)
    a, b = record(layout, "rel", "a"), record(layout, "rel", "b")
    assert a is not None and b is not None
    lane = Lane(a, b, "TCP", True)
    assert lane.probe_once(1.0)[0]
    cut = plumbctl(lab, "partition", "node2")
    assert cut.returncode == 0 and cut.stdout == "node2: underlay link cut\n"
    assert faults.partitioned(layout, "node2")
    assert not lane.probe_once(0.5)[0]
    healed = plumbctl(lab, "heal", "node2")
    assert healed.returncode == 0 and healed.stdout == "node2: underlay link restored\n"
    assert not faults.partitioned(layout, "node2")
    assert lane.probe_once(1.0)[0]


def test_errors_name_what_is_wrong(lab: str) -> None:
    missing = plumbctl(lab, "restart", "node9")
    assert missing.returncode == 1 and "Error: no node node9" in missing.stderr
    bad = plumbctl(lab, "restart", "node1", "--component", "kubelet")
    assert bad.returncode == 2
    absent = plumbctl(f"nolab-{uuid.uuid4().hex[:4]}", "partition", "node1")
    assert absent.returncode == 1 and "is not up" in absent.stderr
