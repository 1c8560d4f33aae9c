"""`SyncClock`: the agent's last-sync time moves only once every reconciler has caught up."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from controller import metrics
from controller.health import SyncClock


class Reconciler:
    """Stands for a reconciler's `wait_idle`: busy until `finish` is called."""

    def __init__(self) -> None:
        self.idle = threading.Event()
        self.idle.set()

    def wait_idle(self, timeout: float) -> bool:
        return self.idle.wait(timeout)

    def busy(self) -> None:
        self.idle.clear()

    def finish(self) -> None:
        self.idle.set()


class Wall:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def parts() -> Iterator[tuple[SyncClock, Reconciler, Reconciler, Wall]]:
    wall = Wall()
    clock = SyncClock("manifests", wall=wall, poll=0.01)
    a, b = Reconciler(), Reconciler()
    clock.start([a.wait_idle, b.wait_idle])
    yield clock, a, b, wall
    clock.stop()


def gauge(name: str, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)


def test_mark_stamps_once_idle(parts) -> None:
    clock = parts[0]
    clock.mark()
    assert clock.wait_synced(2)
    assert clock.last_sync == 1000.0 and clock.last_change is None
    assert gauge("plumb_agent_last_sync_timestamp_seconds") == 1000.0


def test_a_change_is_synced_only_when_every_reconciler_is_idle(parts) -> None:
    clock, a, b, wall = parts
    clock.mark()
    assert clock.wait_synced(2)
    a.busy()
    b.busy()
    wall.now = 1010.0
    clock.changed()
    assert gauge("plumb_agent_source_last_change_timestamp_seconds", source="manifests") == 1010.0
    assert not clock.wait_synced(0.1)
    assert clock.last_sync == 1000.0
    wall.now = 1012.0
    a.finish()
    assert not clock.wait_synced(0.1)  # b is still working
    wall.now = 1013.5
    b.finish()
    assert clock.wait_synced(2)
    assert clock.last_sync == 1013.5 and clock.last_change == 1010.0
    assert gauge("plumb_agent_last_sync_timestamp_seconds") == 1013.5


def test_stop_while_waiting_for_a_busy_reconciler(parts) -> None:
    clock, a, _, _ = parts
    a.busy()
    clock.changed()
    clock.stop()
    assert clock.last_sync is None
