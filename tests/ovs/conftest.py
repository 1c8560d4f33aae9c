"""The OVS tier: a private Open vSwitch (its own network namespace, userspace datapath).

Fixtures:
- `ovs`: one OvsSandbox per test module, in a namespace of its own.
- `make_sandbox`: a factory of extra sandboxes for lifecycle tests, all cleaned up afterwards.
- `make_netns`: a factory of named network namespaces (`plumbtest-<hex>`), deleted afterwards.
Each skips, with the reason, when root or the OVS binaries are missing.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


def skip_without_ovs() -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def ovs(tmp_path_factory):
    skip_without_ovs()
    rundir = Path(tmp_path_factory.mktemp("ovs")) / uuid.uuid4().hex[:8]
    sandbox = OvsSandbox(rundir)
    sandbox.start()
    yield sandbox
    sandbox.cleanup()


@pytest.fixture
def make_sandbox(tmp_path_factory) -> Iterator[Callable[..., OvsSandbox]]:
    """`make_sandbox(netns=None, start=True)`: a sandbox in a fresh short directory."""
    skip_without_ovs()
    made: list[OvsSandbox] = []

    def make(netns: str | None = None, start: bool = True, **kwargs: Any) -> OvsSandbox:
        # AF_UNIX paths are limited to 108 bytes: keep the run directory short.
        sandbox = OvsSandbox(Path(tmp_path_factory.mktemp("sbx")), netns=netns, **kwargs)
        made.append(sandbox)
        if start:
            sandbox.start()
        return sandbox

    yield make
    for sandbox in made:
        sandbox.cleanup()


@pytest.fixture
def make_netns() -> Iterator[Callable[[], str]]:
    """`make_netns()`: a new network namespace with lo up; deleted after the test."""
    skip_without_ovs()
    made: list[str] = []

    def make() -> str:
        name = f"plumbtest-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        made.append(name)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return name

    yield make
    for name in made:
        subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)
