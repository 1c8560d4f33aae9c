"""Diffing an owner's installed flows against its desired flows."""

import pytest

from flows.diff import DuplicateFlowError, diff_flows, index_flows
from flows.flow import GotoTable, match
from flows.pipeline import table

CLASSIFIER = table("Classifier")


def _flow(port, goto="SpoofGuard", cookie=1, priority=190):
    return CLASSIFIER.flow(priority, match(in_port=port), [GotoTable(goto)], cookie)


def test_new_changed_and_gone_flows():
    old = index_flows([_flow(1), _flow(2), _flow(3)])
    new = index_flows([_flow(1), _flow(2, goto="ConntrackZone"), _flow(4)])
    diff = diff_flows(old, new)
    assert diff.adds == [_flow(4)]
    assert diff.modifies == [_flow(2, goto="ConntrackZone")]
    assert diff.deletes == [_flow(3)]


def test_new_round_cookie_readds_in_place():
    diff = diff_flows(index_flows([_flow(1, cookie=1)]), index_flows([_flow(1, cookie=2)]))
    assert diff.adds == [_flow(1, cookie=2)] and not diff.modifies and not diff.deletes


def test_same_flows_make_an_empty_diff():
    flows = index_flows([_flow(1), _flow(2)])
    assert not diff_flows(flows, dict(flows))


def test_conflicting_duplicates_are_refused():
    with pytest.raises(DuplicateFlowError):
        index_flows([_flow(1), _flow(1, goto="ConntrackZone")])


def test_diffs_of_several_owners_extend_one_another():
    first = diff_flows(index_flows([_flow(1)]), index_flows([_flow(2)]))
    second = diff_flows(index_flows([_flow(3)]), index_flows([_flow(3, goto="ConntrackZone")]))
    first.extend(second)
    assert first.adds == [_flow(2)] and first.deletes == [_flow(1)]
    assert first.modifies == [_flow(3, goto="ConntrackZone")] and len(first) == 3
    assert len(second) == 1  # left as it was
