#!/usr/bin/env bash
# Installs everything Plumb needs on a Debian 12 machine, as root: Debian packages (Open vSwitch,
# iproute2, the reference CNI plugins, iperf3, podman and containerd for the runtime tier) and a
# virtual environment in .venv holding Plumb with its test extra. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  openvswitch-switch iproute2 iperf3 ethtool curl procps kmod iputils-ping arping
  containernetworking-plugins python3-venv python3-pip gcc libc6-dev
  podman runc containerd busybox-static
)
if ! dpkg -s "${APT_PACKAGES[@]}" >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${APT_PACKAGES[@]}"
fi
# Debian starts the packaged OVS where an init system exists; Plumb never uses the system
# instance (every node runs a private one), so it is left alone either way.

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
# The plumb CNI executable (C, static): build/cni/plumb.
.venv/bin/python -m cni.executable >/dev/null
