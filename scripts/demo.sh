#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh), then runs Plumb's main job: the lab demo. Two nodes
# made of network namespaces, each with its own Open vSwitch and plumb agent; pods on both; the
# reachability matrix; a NetworkPolicy; the matrix again; one pod's flows. The lab stays up to
# be explored afterwards (see the commands printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
LAB=${PLUMB_DEMO_LAB:-demo}
# A previous run's lab of the same name, if any: a fresh one each time.
plumbctl lab down --name "$LAB" >/dev/null 2>&1 || true
plumbctl lab demo --name "$LAB"
cat <<TXT

The lab "$LAB" is still up. Look around, then take it down:
  plumbctl lab get pods --name $LAB
  plumbctl flows --lab $LAB --pod demo/web
  plumbctl trace --lab $LAB --from demo/client --to demo/web --port 80
  plumbctl explain --lab $LAB demo/client demo/web --port 81
  plumbctl lab down --name $LAB
TXT
