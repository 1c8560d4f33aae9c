"""The source goes away: the manifests directory is moved away (root reads through chmod 000)
for a while under traffic, a policy is changed in it meanwhile, and it comes back. Nothing
changes while it is away; the change takes effect on its return. The test's outage is 5 s;
`python -m bench reliability source-down` runs the 60 s one."""

from __future__ import annotations

import json

import pytest

from bench import reliability

pytestmark = pytest.mark.lab


def test_manifests_away_five_seconds_connectivity_unaffected_change_applied_on_return() -> None:
    figures = reliability.source_down(outage=5.0)
    print(json.dumps(figures))
    assert figures["allowed_probes"] > 100
    assert figures["failed_probes"] == 0
    assert figures["leaked_while_away"] == 0, "the change took effect while the source was away"
    assert figures["change_applied_after_return_s"] < 5.0
    assert figures["agents_that_logged_the_outage"] == ["node1", "node2"]
