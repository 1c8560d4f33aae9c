"""ovs-ofctl text for the skeleton and the sample flows, against golden files.

The OVS tier installs the same flows and compares a real dump with the same goldens.
"""

from flows.ofctl import port_text, render_flows
from flows.skeleton import skeleton_flows
from tests.unit.flows.goldens import check_golden
from tests.unit.flows.samples import sample_flows


def test_skeleton_renders_to_golden():
    check_golden("skeleton", render_flows(skeleton_flows(1)))


def test_every_table_has_exactly_one_miss_flow():
    misses = [f for f in skeleton_flows(1) if f.priority == 0 and not f.match.entries]
    assert len(misses) == len({f.table for f in misses}) == 29


def test_samples_render_to_golden():
    check_golden("samples", render_flows(sample_flows()))


def test_port_names_are_quoted_like_ovs():
    names = {5: "web-1-abcd", 6: "plain", 7: "12"}
    assert port_text(5, names) == '"web-1-abcd"'
    assert port_text(6, names) == "plain"
    assert port_text(7, names) == '"12"'
    assert port_text(8, names) == "8"
