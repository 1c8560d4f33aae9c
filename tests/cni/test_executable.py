"""The `plumb` executable itself (cni/shim/plumb.c, built by cni.executable): verbatim transport
of environment and stdin, quiet success, errors as JSON, an absent, hanging or confused agent."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from cni import executable
from cni.protocol import Attachment
from cni.server import Reply
from lab.cniruntime import PluginAnswer
from tests.cni.conftest import Node

pytestmark = pytest.mark.ovs


def error_code(answer: PluginAnswer) -> int:
    assert answer.exit_code == 1, answer
    code: int = json.loads(answer.stdout)["code"]
    return code


def test_add_del_round_trip(node: Node) -> None:
    netns = node.make_netns()
    cid = node.next_id("c")
    result = node.add(cid, netns)
    assert result["interfaces"][1]["sandbox"] == netns
    answer = node.delete(cid, netns)
    assert answer.exit_code == 0 and answer.stdout == b"" and answer.stderr == b""
    assert node.leftovers() == Node.NOTHING_LEFT


def test_stdin_and_environment_arrive_verbatim(node: Node) -> None:
    """Odd bytes in CNI_ARGS and a large stdin (a prevResult of ~200 KiB) travel unchanged."""
    seen: list[tuple[dict[str, str], bytes]] = []
    original = node.dispatcher.handle

    def spy(env: Mapping[str, str], stdin: bytes) -> Reply:
        seen.append((dict(env), stdin))
        return original(env, stdin)

    node.dispatcher.handle = spy  # type: ignore[method-assign]
    padding = [{"name": f"if{i}", "mac": "02:00:00:00:00:01"} for i in range(4000)]
    conf = node.conf(prevResult={"cniVersion": "1.0.0", "interfaces": padding}, note="a&b=c%d+é")
    stdin = json.dumps(conf, ensure_ascii=False).encode() + b"\n\n"
    env = node.env("DEL", node.next_id("c"), "")
    env["CNI_ARGS"] = "IgnoreUnknown=1;K8S_POD_NAME=x y&z%2+;K8S_POD_NAMESPACE=é"
    started = time.monotonic()
    answer = node.call(env, stdin)
    assert answer.exit_code == 0, answer
    assert time.monotonic() - started < 1.0
    got_env, got_stdin = seen[-1]
    assert got_stdin == stdin
    assert got_env["CNI_ARGS"] == env["CNI_ARGS"]
    assert {k for k in got_env} == {k for k in env if k.startswith("CNI_")}


def test_unset_and_empty_variables_stay_apart(node: Node) -> None:
    seen: list[dict[str, str]] = []
    original = node.dispatcher.handle

    def spy(env: Mapping[str, str], stdin: bytes) -> Reply:
        seen.append(dict(env))
        return original(env, stdin)

    node.dispatcher.handle = spy  # type: ignore[method-assign]
    env = node.env("DEL", node.next_id("c"), "")
    assert env["CNI_NETNS"] == ""
    node.call(env, node.conf())
    assert seen[-1]["CNI_NETNS"] == "" and "CNI_NETNS_OVERRIDE" not in seen[-1]


def test_errors_are_json_on_stdout_with_exit_1(node: Node) -> None:
    answer = node.call(node.env("ADD", node.next_id("c"), node.make_netns()), b"{broken")
    assert error_code(answer) == 6


def test_agent_down_is_11_and_status_50(node: Node) -> None:
    missing = str(node.workdir / "nobody.sock")
    env = node.env("ADD", node.next_id("c"), node.make_netns(), PLUMB_CNI_SOCKET=missing)
    assert error_code(node.call(env, node.conf())) == 11
    env = node.env("STATUS", PLUMB_CNI_SOCKET=missing)
    assert error_code(node.call(env, node.conf("1.1.0"))) == 50


def test_agent_that_hangs_is_11_after_the_timeout(node: Node) -> None:
    path = str(node.workdir / "hang.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    try:
        env = node.env("DEL", node.next_id("c"), "", PLUMB_CNI_SOCKET=path, PLUMB_CNI_TIMEOUT="1")
        started = time.monotonic()
        assert error_code(node.call(env, node.conf())) == 11
        assert time.monotonic() - started < 5
    finally:
        listener.close()


def test_answer_that_is_not_cni_becomes_999(node: Node) -> None:
    path = str(node.workdir / "bogus.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def answer_once() -> None:
        conn, _ = listener.accept()
        with conn:
            # Read the whole request (to EOF), as a server would.
            conn.settimeout(0.3)
            with contextlib.suppress(OSError):
                while conn.recv(65536):
                    pass
            conn.sendall(b"HTTP/1.0 404 Not Found\r\nContent-Length: 5\r\n\r\nnope\n")

    thread = threading.Thread(target=answer_once, daemon=True)
    thread.start()
    try:
        env = node.env("ADD", node.next_id("c"), node.make_netns(), PLUMB_CNI_SOCKET=path)
        assert error_code(node.call(env, node.conf())) == 999
    finally:
        thread.join(5)
        listener.close()


def test_version_needs_no_agent_and_no_stdin(node: Node) -> None:
    env = node.env("VERSION", PLUMB_CNI_SOCKET="/nonexistent")
    answer = node.call(env, b"")
    assert answer.exit_code == 0
    assert json.loads(answer.stdout)["supportedVersions"][-1] == "1.1.0"


def test_the_executable_is_static_and_built_from_the_current_source() -> None:
    """It must run on a node without Python, a shell or any shared library (kind's, say)."""
    built = executable.path()
    assert built.stat().st_mode & 0o111
    assert built.stat().st_mtime >= executable.SOURCE.stat().st_mtime
    ldd = subprocess.run(["ldd", str(built)], capture_output=True, text=True, check=False)
    assert "not a dynamic executable" in ldd.stdout + ldd.stderr


def test_a_stale_build_is_rebuilt(tmp_path: Path) -> None:
    first = executable.path(tmp_path)
    os.utime(first, (0, 0))  # older than the source
    again = executable.path(tmp_path)
    assert again == first and again.stat().st_mtime >= executable.SOURCE.stat().st_mtime


def test_no_stdin_at_all_is_still_an_answer(node: Node) -> None:
    """A runtime that closes the plugin's stdin: the agent judges an empty configuration."""
    env = node.env("ADD", node.next_id("c"), node.make_netns())
    done = subprocess.run(
        [str(executable.path())], env=env, stdin=subprocess.DEVNULL, capture_output=True
    )
    assert done.returncode == 1 and json.loads(done.stdout)["code"] == 6


def test_stdin_that_never_ends_is_11_after_the_timeout(node: Node) -> None:
    env = node.env("DEL", node.next_id("c"), "", PLUMB_CNI_TIMEOUT="1")
    read_end, write_end = os.pipe()
    try:
        started = time.monotonic()
        done = subprocess.run(
            [str(executable.path())], env=env, stdin=read_end, capture_output=True, timeout=10
        )
        assert time.monotonic() - started < 5
        assert done.returncode == 1 and json.loads(done.stdout)["code"] == 11
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_socket_path_with_quotes_and_odd_bytes_stays_valid_json(node: Node) -> None:
    env = node.env("ADD", node.next_id("c"), node.make_netns())
    env["PLUMB_CNI_SOCKET"] = str(node.workdir / 'no"such\\socket\x01é')
    answer = node.call(env, node.conf())
    error = json.loads(answer.stdout)
    assert answer.exit_code == 1 and error["code"] == 11 and 'no"such' in error["details"]


def test_cnitool_cli_add_check_del(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m lab.cniruntime` (the lab's cnitool) drives the plugin from a conflist."""
    from lab.cniruntime import cnitool_container_id
    from lab.cniruntime import main as cnitool

    conf_dir = node.workdir / "net.d"
    conf_dir.mkdir()
    conflist = {"cniVersion": "1.1.0", "name": "plumbnet", "plugins": [{"type": "plumb"}]}
    (conf_dir / "10-plumb.conflist").write_text(json.dumps(conflist))
    netns = node.make_netns()
    for key, value in {
        "NETCONFPATH": str(conf_dir),
        "CNI_PATH": f"{node.workdir / 'bin'}:/usr/lib/cni",
        "PLUMB_CNI_SOCKET": node.server.socket_path,
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAME={node.prefix}p0",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CNI_CACHE_DIR", str(node.workdir / "cache"))
    assert cnitool(["add", "plumbnet", netns]) == 0
    assert node.podnet.store.get(Attachment(cnitool_container_id(netns), "eth0")) is not None
    assert cnitool(["check", "plumbnet", netns]) == 0
    assert cnitool(["del", "plumbnet", netns]) == 0
    assert node.leftovers() == Node.NOTHING_LEFT


def test_socket_is_private(node: Node) -> None:
    mode = os.stat(node.server.socket_path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
