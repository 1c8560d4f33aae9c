"""What `plumbctl status` reads from an agent's /metrics: when it last synced (pure).

The agent stamps two gauges (`controller.health.SyncClock`): when its source last changed an
object (`plumb_agent_source_last_change_timestamp_seconds{source=...}`) and when it last had
every change committed to the bridge by every reconciler
(`plumb_agent_last_sync_timestamp_seconds`). Both are Unix times; 0 means "not yet".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

LAST_SYNC = "plumb_agent_last_sync_timestamp_seconds"
SOURCE_LAST_CHANGE = "plumb_agent_source_last_change_timestamp_seconds"


class MetricsParseError(ValueError):
    """The text is not Prometheus exposition."""


@dataclass(frozen=True)
class SyncTimes:
    """The agent's sync stamps (None: not stamped yet, or not exported by this agent)."""

    last_sync: float | None = None
    source: str | None = None
    source_last_change: float | None = None

    def report(self, now: float) -> dict[str, Any]:
        """The stamps with their ages at `now`, and whether the bridge has caught up."""
        return {
            "timestamp": self.last_sync,
            "age_seconds": _age(self.last_sync, now),
            "source": self.source,
            "source_last_change": self.source_last_change,
            "source_change_age_seconds": _age(self.source_last_change, now),
            "in_step": self.in_step,
        }

    @property
    def in_step(self) -> bool | None:
        """True when the last sync is no older than the source's last change; None unknown."""
        if self.last_sync is None:
            return None
        return self.source_last_change is None or self.last_sync >= self.source_last_change


def _age(stamp: float | None, now: float) -> float | None:
    return None if stamp is None else round(max(0.0, now - stamp), 3)


def sync_times(text: str) -> SyncTimes:
    """The sync stamps in a /metrics body (Prometheus text exposition)."""
    last_sync: float | None = None
    source: str | None = None
    change: float | None = None
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:
        raise MetricsParseError(f"not Prometheus text: {exc}") from exc
    for family in families:
        for sample in family.samples:
            if sample.name == LAST_SYNC:
                last_sync = sample.value or None
            elif sample.name == SOURCE_LAST_CHANGE and (change is None or sample.value > change):
                # One source per agent; the latest change wins should there ever be more.
                source = sample.labels.get("source") or source
                change = sample.value or None
    return SyncTimes(last_sync, source, change)


def describe(report: dict[str, Any]) -> str:
    """One human line: "3.2 s ago, in step with manifests (last change 3.3 s ago)"."""
    age = report.get("age_seconds")
    if age is None:
        return "unknown (the agent exports no last-sync time yet)"
    source = report.get("source") or "its source"
    change = report.get("source_change_age_seconds")
    if change is None:
        return f"{age:.1f} s ago (no change from {source} since the agent started)"
    if report.get("in_step"):
        return f"{age:.1f} s ago, in step with {source} (last change {change:.1f} s ago)"
    return f"{age:.1f} s ago, BEHIND {source} (changed {change:.1f} s ago, not all committed)"
