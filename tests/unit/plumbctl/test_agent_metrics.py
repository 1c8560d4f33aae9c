"""Reading the agent's sync stamps out of /metrics text (`plumbctl status`'s last sync)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from plumbctl.agent_metrics import (
    LAST_SYNC,
    SOURCE_LAST_CHANGE,
    MetricsParseError,
    SyncTimes,
    describe,
    sync_times,
)

EXPOSED = """\
# HELP plumb_agent_local_pods Pods on this node attached to the bridge.
# TYPE plumb_agent_local_pods gauge
plumb_agent_local_pods 2.0
# HELP plumb_agent_source_last_change_timestamp_seconds When the source last changed ...
# TYPE plumb_agent_source_last_change_timestamp_seconds gauge
plumb_agent_source_last_change_timestamp_seconds{source="manifests"} 1.7645e+09
# HELP plumb_agent_last_sync_timestamp_seconds When the agent last had every change ...
# TYPE plumb_agent_last_sync_timestamp_seconds gauge
plumb_agent_last_sync_timestamp_seconds 1.7645000012e+09
"""


def test_both_stamps_are_read_with_the_source() -> None:
    times = sync_times(EXPOSED)
    assert times == SyncTimes(1764500001.2, "manifests", 1764500000.0)
    assert times.in_step


def test_the_report_gives_ages_and_whether_the_bridge_caught_up() -> None:
    report = sync_times(EXPOSED).report(now=1764500004.4)
    assert report == {
        "timestamp": 1764500001.2,
        "age_seconds": 3.2,
        "source": "manifests",
        "source_last_change": 1764500000.0,
        "source_change_age_seconds": 4.4,
        "in_step": True,
    }
    assert describe(report) == "3.2 s ago, in step with manifests (last change 4.4 s ago)"


def test_a_change_younger_than_the_last_sync_is_behind() -> None:
    times = SyncTimes(last_sync=100.0, source="kubernetes", source_last_change=105.0)
    assert times.in_step is False
    report = times.report(now=110.0)
    assert (
        describe(report) == "10.0 s ago, BEHIND kubernetes (changed 5.0 s ago, not all committed)"
    )


def test_an_agent_without_the_stamps_says_unknown() -> None:
    times = sync_times("# TYPE plumb_agent_local_pods gauge\nplumb_agent_local_pods 0.0\n")
    assert times == SyncTimes()
    assert times.in_step is None
    assert describe(times.report(now=5.0)).startswith("unknown")


def test_zero_means_not_stamped_yet() -> None:
    times = sync_times(f"{LAST_SYNC} 0.0\n")
    assert times.last_sync is None


def test_no_change_since_the_start_is_in_step() -> None:
    report = SyncTimes(last_sync=100.0).report(now=101.0)
    assert report["in_step"] is True
    assert describe(report) == "1.0 s ago (no change from its source since the agent started)"


def test_what_the_client_library_exposes_is_read_back() -> None:
    """The same gauges as controller.metrics declares, rendered by prometheus_client."""
    registry = CollectorRegistry()
    sync = Gauge(LAST_SYNC, "", registry=registry)
    change = Gauge(SOURCE_LAST_CHANGE, "", ["source"], registry=registry)
    sync.set(1764500123.456)
    change.labels("manifests").set(1764500120.5)
    times = sync_times(generate_latest(registry).decode())
    assert times == SyncTimes(1764500123.456, "manifests", 1764500120.5)


def test_the_agent_declares_the_names_plumbctl_reads() -> None:
    from controller import metrics

    text = generate_latest(metrics.REGISTRY).decode()
    assert f"# TYPE {LAST_SYNC} gauge" in text
    assert f"# TYPE {SOURCE_LAST_CHANGE} gauge" in text


def test_garbage_is_an_error() -> None:
    with pytest.raises(MetricsParseError):
        sync_times("this is { not metrics\n")
