"""Lab-marked conformance tests skip, with the reason, where a lab cannot be built (the lab
tier's own check)."""

from __future__ import annotations

import pytest

from tests.lab.conftest import skip_reason

_REASON: list[str | None] = []


@pytest.fixture(autouse=True)
def _lab_prerequisites(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("lab") is None:
        return
    if not _REASON:
        _REASON.append(skip_reason())
    if _REASON[0]:
        pytest.skip(_REASON[0])
