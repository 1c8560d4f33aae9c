"""The transcribed upstream NetworkPolicy suite in a real lab: one lab (2 nodes, upstream's 9
pods) for the module; per case, each step's world is written, the agents are waited for until
their flows are exactly what the model asks for, and every pair is probed against the expected
table. A mismatch fails with upstream's three grids (expected, observed, comparison).

SCTP probes skip with the lab's reason where the kernel has no SCTP; the SCTP cases' policies
are still applied and must still be realised by the agents."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from tests.netpol_conformance import cases as c
from tests.netpol_conformance.lab_runner import ConformanceLab

pytestmark = pytest.mark.lab

CASES = c.all_cases()


@pytest.fixture(scope="module")
def lab() -> Iterator[ConformanceLab]:
    lab = ConformanceLab(f"np{uuid.uuid4().hex[:6]}")
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_upstream_case_in_the_lab(lab: ConformanceLab, case: c.Case) -> None:
    start = time.monotonic()
    results = lab.run(case)
    skipped = {r.skipped for r in results if r.skipped}
    print(f"{case.id}: {len(results)} checks in {time.monotonic() - start:.1f}s")
    if skipped and all(r.skipped for r in results):
        pytest.skip("; ".join(sorted(skipped)))
