"""The OVS tier: a private Open vSwitch (its own network namespace, userspace datapath)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from lab.ovs_sandbox import OvsBinariesMissing, OvsSandbox, require_ovs_binaries


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the OVS tier needs root (network namespaces, ovs-vswitchd)"
    try:
        require_ovs_binaries()
    except OvsBinariesMissing as exc:
        return str(exc)
    return None


@pytest.fixture(scope="module")
def ovs(tmp_path_factory):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    rundir = Path(tmp_path_factory.mktemp("ovs")) / uuid.uuid4().hex[:8]
    sandbox = OvsSandbox(rundir)
    sandbox.start()
    yield sandbox
    sandbox.cleanup()
