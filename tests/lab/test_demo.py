"""`plumbctl lab demo`, the README's tour, runs end to end and says what it saw."""

from __future__ import annotations

import re

import pytest

from flows.cookie import Category
from tests.lab.conftest import LabFactory

pytestmark = pytest.mark.lab


def test_demo_shows_matrices_the_policy_outcome_and_a_pods_flows(make_lab: LabFactory) -> None:
    lab = make_lab(up=False)
    out = lab.cli("demo", timeout=180).stdout
    assert out.count("TCP/80\n-\tdemo/client\tdemo/db\tdemo/web") == 2
    assert "18/18 connected" in out.split("NetworkPolicy\n")[0]  # before the policy: all open
    assert "kind: NetworkPolicy" in out
    after = out.split("web-allow-client")[1]
    assert "15/18 connected" in after  # web now takes only client, only on port 80
    assert "demo/db\t.\t.\tX" in after and "demo/client\t.\t.\tX" in after  # rows of TCP/81
    assert "# The policy took effect: 3 probe(s) changed, all as the policy says." in out
    ofport = int(re.search(r"pod demo/web on node2, ofport (\d+)", out).group(1))  # type: ignore[union-attr]
    cookies = [int(c, 16) for c in re.findall(r"^ cookie=(0x[0-9a-f]+),", out, re.MULTILINE)]
    assert cookies, "no flows shown"
    assert all((c >> 40) & 0xFF == Category.POD and c & 0xFFFFFFFF == ofport for c in cookies)
    assert 'table=Classifier, priority=190,in_port="web-' in out  # --names: tables and ports
