#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh), then runs every check CI runs: ruff (lint and format),
# mypy, import-linter (the room boundaries) and the whole pytest suite (unit, ovs and lab tiers).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
ruff check .
ruff format --check .
mypy .
lint-imports
pytest "$@"
