"""The health server: probes, readiness gates, metrics exposition, run-time log level, live
object counts."""

from __future__ import annotations

import logging
import sys
import tracemalloc
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from controller import logs, metrics
from controller.health import HealthServer, ReadinessGates


def fetch(url: str, data: bytes | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.fixture
def server() -> Iterator[HealthServer]:
    s = HealthServer("127.0.0.1:0", ReadinessGates(["ovsdb", "synced"]))
    s.start()
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def restore_level() -> Iterator[None]:
    before = logging.getLogger().level
    yield
    logging.getLogger().setLevel(before)


def test_livez(server: HealthServer) -> None:
    assert fetch(server.url + "/livez") == (200, "ok\n")


def test_livez_follows_the_liveness_check() -> None:
    alive = [True]
    s = HealthServer("127.0.0.1:0", liveness=lambda: alive[0])
    s.start()
    try:
        assert fetch(s.url + "/livez")[0] == 200
        alive[0] = False
        assert fetch(s.url + "/livez")[0] == 500
    finally:
        s.stop()


def test_readyz_waits_for_every_gate(server: HealthServer) -> None:
    code, body = fetch(server.url + "/readyz")
    assert code == 503
    assert "[-]ovsdb not ready" in body and "[-]synced not ready" in body
    server.gates.set("ovsdb")
    code, body = fetch(server.url + "/readyz")
    assert code == 503 and "ovsdb" not in body and "[-]synced" in body
    server.gates.set("synced")
    assert fetch(server.url + "/readyz") == (200, "ok\n")
    code, body = fetch(server.url + "/readyz?verbose")
    assert code == 200 and "[+]ovsdb ok" in body and "[+]synced ok" in body
    server.gates.set("synced", False)
    assert fetch(server.url + "/readyz")[0] == 503


def test_gates_declared_twice_keep_their_state() -> None:
    gates = ReadinessGates()
    assert gates.ready()  # no gates: nothing to wait for
    gates.add("a")
    gates.set("a")
    gates.add("a")
    assert gates.status() == {"a": True}


def test_metrics_are_exposed_with_the_prefix(server: HealthServer) -> None:
    metrics.LOCAL_PODS.set(3)
    metrics.FLOWS.labels(table="Classifier").set(12)
    metrics.CNI_REQUEST_SECONDS.labels(command="ADD").observe(0.02)
    code, body = fetch(server.url + "/metrics")
    assert code == 200
    assert "plumb_agent_local_pods 3.0" in body
    assert 'plumb_agent_flows{table="Classifier"} 12.0' in body
    assert 'plumb_agent_cni_request_duration_seconds_count{command="ADD"}' in body
    assert "process_resident_memory_bytes" in body
    names = {
        line.split()[2]
        for line in body.splitlines()
        if line.startswith("# TYPE") and not line.split()[2].startswith(("process_", "python_"))
    }
    assert names and all(name.startswith("plumb_agent_") for name in names)


def test_log_level_changes_over_http(server: HealthServer) -> None:
    logs.set_level("info")
    assert fetch(server.url + "/loglevel") == (200, "info\n")
    assert fetch(server.url + "/loglevel", b"debug") == (200, "debug\n")
    assert logging.getLogger().getEffectiveLevel() == logging.DEBUG
    assert fetch(server.url + "/loglevel?level=warning", b"") == (200, "warning\n")
    code, body = fetch(server.url + "/loglevel", b"loud")
    assert code == 400 and "loud" in body
    assert logs.get_level() == "warning"


class _Marker:
    """A type of this test's own, so its count is known."""


def test_debug_objects_counts_live_objects_by_type(server: HealthServer) -> None:
    held = [_Marker() for _ in range(5000)]
    code, body = fetch(server.url + "/debug/objects?top=200")
    lines = body.splitlines()
    assert code == 200 and lines[-1].endswith(" total")
    counts = {name: int(count) for count, name in (line.split(" ", 1) for line in lines)}
    assert counts["_Marker"] == len(held)
    assert counts["total"] > len(held)
    assert len(fetch(server.url + "/debug/objects?top=3")[1].splitlines()) == 4
    assert fetch(server.url + "/debug/objects?top=x")[0] == 400


def test_debug_memory_names_the_lines_holding_memory(server: HealthServer) -> None:
    assert "PYTHONTRACEMALLOC=1" in fetch(server.url + "/debug/memory")[1]
    tracemalloc.start()
    try:
        held = [bytes(1000) + bytes([i % 256]) for i in range(2000)]  # about 2 MB
        held_line = sys._getframe().f_lineno - 1
        code, body = fetch(server.url + "/debug/memory?top=5")
    finally:
        tracemalloc.stop()
    first = body.splitlines()[0].split(" ")
    assert code == 200 and body.splitlines()[-1].endswith(" total") and len(held) == 2000
    assert first[2].endswith(f"test_health.py:{held_line}") and int(first[0]) > 2_000_000


def test_unknown_path(server: HealthServer) -> None:
    assert fetch(server.url + "/nope")[0] == 404


def test_ipv6_bind_and_stop_twice() -> None:
    s = HealthServer("[::1]:0")
    try:
        s.start()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    assert s.url.startswith("http://[::1]:")
    assert fetch(s.url + "/livez")[0] == 200
    s.stop()
    s.stop()
