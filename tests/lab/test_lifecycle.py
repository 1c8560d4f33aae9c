"""A lab's life: `down` removes everything `up` and `apply` made (namespaces, processes, veths,
bridges, files) and nothing else, twice is fine; two labs run side by side without meeting."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lab.layout import STATE_ROOT
from tests.lab.conftest import Lab, LabFactory, pod_yaml

pytestmark = pytest.mark.lab


def namespaces_of(lab: Lab) -> list[str]:
    return sorted(p.name for p in Path("/run/netns").glob(f"{lab.name}-*"))


def processes_of(lab: Lab) -> list[str]:
    """Live processes whose command line names the lab's directory (agents: their config;
    OVS: its pidfile; pod servers: their ready file)."""
    marker = f"/plumb-lab/{lab.name}/".encode()  # /var/run or /run, its target
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state not in ("Z", "X"):
            args = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{proc.name}: {args}")
    return found


def root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def test_down_leaves_nothing_and_twice_is_fine(make_lab: LabFactory) -> None:
    links_before = root_links()
    lab = make_lab("--nodes", "2")
    lab.apply(pod_yaml("x", "a", "node1"), pod_yaml("x", "b", "node2"))
    assert len(namespaces_of(lab)) == 5  # underlay, two nodes, two pods
    assert len(processes_of(lab)) == 2 * 3 + 2  # per node: agent, ovsdb, vswitchd; servers

    done = lab.cli("down")
    assert done.stdout == f"lab {lab.name} removed\n"
    assert namespaces_of(lab) == []
    assert processes_of(lab) == []
    assert not (STATE_ROOT / lab.name).exists()
    assert root_links() - links_before == set()  # no veth or bridge ever left a namespace

    again = lab.cli("down")
    assert again.stdout == f"lab {lab.name}: nothing to remove\n"


def test_two_labs_side_by_side(make_lab: LabFactory) -> None:
    one, two = make_lab("--nodes", "1"), make_lab("--nodes", "1")
    for lab in (one, two):
        lab.apply(pod_yaml("x", "a"), pod_yaml("x", "b"))
    # Same addresses in both (pods start in parallel, so which pod gets which may differ):
    # each lab is a world of its own namespaces.
    ips = [{lab.pod_ip("x/a"), lab.pod_ip("x/b")} for lab in (one, two)]
    assert ips[0] == ips[1]
    assert one.connected("x/a", "x/b") and two.connected("x/a", "x/b")
    one.cli("down")
    assert namespaces_of(one) == [] and processes_of(one) == []
    assert two.connected("x/a", "x/b")
    assert len(processes_of(two)) == 3 + 2
