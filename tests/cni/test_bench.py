"""`python -m bench cni` keeps working: a few pods each way, both IPAM modes, nothing left."""

from __future__ import annotations

import os
import subprocess

import pytest

from bench import cni as bench_cni

pytestmark = pytest.mark.ovs


@pytest.mark.parametrize("ipam", ["plumb", "host-local"])
def test_bench_cni_runs_and_cleans_up(ipam: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, OVS)")
    before = set(subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout.split())
    result = bench_cni.run(pods=4, concurrent=3, ipam=ipam)
    assert result["plumb_ipam"] == ipam
    assert result["pods"] == 3  # one untimed warm-up
    assert result["concurrent_errors"] == 0
    for side in ("plumb", "reference_bridge"):
        figures = result[side]
        assert 0 < figures["add_p50_ms"] <= figures["add_p99_ms"]
        assert 0 < figures["del_p50_ms"] <= figures["del_p99_ms"]
    after = set(subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout.split())
    assert not {n for n in after - before if n.startswith("pb")}  # its namespaces are gone
