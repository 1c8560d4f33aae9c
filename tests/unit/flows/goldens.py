"""Golden ovs-ofctl text shared by the unit tier (rendering) and the OVS tier (real dumps).

Set PLUMB_UPDATE_GOLDEN=1 to rewrite a golden from the current rendering; review the diff like
code.
"""

from __future__ import annotations

import os
from pathlib import Path

GOLDEN_DIR = Path(__file__).parent / "golden"


def golden_lines(name: str) -> list[str]:
    return (GOLDEN_DIR / f"{name}.flows").read_text().splitlines()


def check_golden(name: str, lines: list[str]) -> None:
    """Compare sorted lines with the golden file (or rewrite it when asked)."""
    path = GOLDEN_DIR / f"{name}.flows"
    got = sorted(lines)
    if os.environ.get("PLUMB_UPDATE_GOLDEN") == "1":
        path.write_text("\n".join(got) + "\n")
    want = sorted(path.read_text().splitlines())
    assert got == want, "\n".join(
        [f"- {w}" for w in want if w not in got] + [f"+ {g}" for g in got if g not in want]
    )
