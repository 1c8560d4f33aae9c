"""Workers are born in the network namespace of the call that needs them: a step of a call
served from the node's namespace runs there, whatever called first before."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from cni.netns import in_netns, open_netns
from cni.parallel import Steps


def netns_id() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


@pytest.fixture
def other_netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    name = f"plumbpar{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    yield f"/run/netns/{name}"
    subprocess.run(["ip", "netns", "delete", name], check=False)


def test_helpers_run_in_the_callers_namespace(other_netns: str) -> None:
    steps = Steps(max_workers=2)
    here = netns_id()
    assert steps.together(netns_id, netns_id) == [here, here]
    fd = open_netns(other_netns)
    try:
        there = in_netns(fd, netns_id)
        assert there != here
        assert in_netns(fd, lambda: steps.together(netns_id, netns_id)) == [there, there]
    finally:
        os.close(fd)
    assert steps.together(netns_id, netns_id) == [here, here]  # and not the other's workers
    steps.close()
