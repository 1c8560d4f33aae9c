#!/usr/bin/env bash
# Smoke test of Plumb on kind: build the image, create a 3-node cluster without a default CNI,
# load the image, apply manifests/plumb.yaml, wait for the DaemonSet and the nodes, run one pod
# on each worker and ping from one to the other across the tunnel.
#
# Where kind, docker, kubectl or a running docker engine is missing it says what is missing and
# exits 0: the smoke test needs them and this is not a failure of Plumb.
#
# Environment: PLUMB_KIND_CLUSTER (default plumb), PLUMB_IMAGE (default plumb:0.1.0),
# PLUMB_KEEP_CLUSTER=1 to leave the cluster up afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

cluster=${PLUMB_KIND_CLUSTER:-plumb}
image=${PLUMB_IMAGE:-plumb:0.1.0}

missing=()
for tool in kind docker kubectl; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if command -v docker >/dev/null 2>&1 && ! docker info >/dev/null 2>&1; then
  missing+=("a running docker engine ('docker info' failed)")
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "kind-smoke: skipped: missing $(IFS=,; echo "${missing[*]}" | sed 's/,/, /g')"
  exit 0
fi

k() { kubectl --context "kind-$cluster" "$@"; }

cleanup() {
  if [ "${PLUMB_KEEP_CLUSTER:-0}" != 1 ]; then
    kind delete cluster --name "$cluster" || true
  fi
}

echo "kind-smoke: building $image"
docker build -f manifests/Dockerfile -t "$image" .

echo "kind-smoke: creating cluster $cluster"
kind create cluster --name "$cluster" --config manifests/kind-config.yaml
trap cleanup EXIT
kind load docker-image "$image" --name "$cluster"

# kind nodes share this kernel: use the kernel datapath when its openvswitch module loads,
# the userspace one otherwise.
datapath=netdev
if grep -q '^openvswitch ' /proc/modules 2>/dev/null || modprobe openvswitch 2>/dev/null; then
  datapath=system
fi
echo "kind-smoke: datapath_type $datapath"
sed -e "s|^    datapath_type: .*|    datapath_type: $datapath|" \
    -e "s|image: plumb:0.1.0|image: $image|" manifests/plumb.yaml | k apply -f -

k -n plumb-system rollout status daemonset/plumb-agent --timeout=300s
k wait --for=condition=Ready nodes --all --timeout=300s

for i in 1 2; do
  worker="$cluster-worker"
  [ "$i" = 1 ] || worker="$cluster-worker$i"
  k apply -f - <<POD
apiVersion: v1
kind: Pod
metadata:
  name: smoke-$i
  namespace: default
spec:
  nodeName: $worker
  terminationGracePeriodSeconds: 0
  containers:
    - name: main
      image: $image
      imagePullPolicy: IfNotPresent
      command: ["sleep", "infinity"]
POD
done
k wait --for=condition=Ready pod/smoke-1 pod/smoke-2 --timeout=180s

target=$(k get pod smoke-2 -o jsonpath='{.status.podIP}')
echo "kind-smoke: smoke-1 -> smoke-2 ($target)"
k exec smoke-1 -- ping -c 3 -W 2 "$target"
echo "kind-smoke: PASS"
