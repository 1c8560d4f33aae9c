"""Diffing one owner's installed flows against its desired flows.

A flow's identity in OVS is (table, priority, match). A key only in the desired set is added; a
key in both whose actions changed is modified in place (counters kept); a key whose cookie
changed (a new restart round) is re-added, which replaces the flow and its cookie; a key only in
the installed set is deleted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from flows.flow import Flow, FlowKey


class DuplicateFlowError(ValueError):
    """Two desired flows of one owner share (table, priority, match) but differ."""


@dataclass(slots=True)
class FlowDiff:
    adds: list[Flow] = field(default_factory=list)
    modifies: list[Flow] = field(default_factory=list)
    deletes: list[Flow] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.adds or self.modifies or self.deletes)

    def __len__(self) -> int:
        return len(self.adds) + len(self.modifies) + len(self.deletes)

    def extend(self, other: FlowDiff) -> None:
        """Add `other`'s operations to these (several owners' diffs sent as one bundle)."""
        self.adds += other.adds
        self.modifies += other.modifies
        self.deletes += other.deletes


def index_flows(flows: Iterable[Flow]) -> dict[FlowKey, Flow]:
    """Flows by key; identical repeats collapse, conflicting ones raise."""
    indexed: dict[FlowKey, Flow] = {}
    for flow in flows:
        key = flow.key
        seen = indexed.get(key)
        if seen is not None and seen != flow:
            raise DuplicateFlowError(f"two flows share table, priority and match: {flow}")
        indexed[key] = flow
    return indexed


def diff_flows(installed: Mapping[FlowKey, Flow], desired: Mapping[FlowKey, Flow]) -> FlowDiff:
    result = FlowDiff()
    for key, flow in desired.items():
        old = installed.get(key)
        if old is None or old.cookie != flow.cookie:
            result.adds.append(flow)
        elif old.actions != flow.actions:
            result.modifies.append(flow)
    result.deletes.extend(flow for key, flow in installed.items() if key not in desired)
    return result
