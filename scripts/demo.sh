#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh), then runs Plumb's main job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
plumbctl pipeline --install
