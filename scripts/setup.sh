#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine for dicom-node: Debian packages (DCMTK, Orthanc and its Web
# Viewer, Chromium for viewer tests, PostgreSQL's server binaries for the tests' throwaway
# clusters, iproute2), a virtual environment in .venv with PyTorch and the project.
# Idempotent: a second run only checks. Installing leaves no service running: Debian's orthanc
# package would start a DICOM listener on 4242 and postgresql a cluster on 5432.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "setup: $*"; }

APT_PACKAGES=(dcmtk orthanc orthanc-webviewer chromium postgresql iproute2 prometheus)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  # No PostgreSQL cluster is created (the tests make their own), and no service is started
  # while apt runs (policy-rc.d answering 101 is Debian's switch for that).
  $SUDO mkdir -p /etc/postgresql-common
  if [ ! -f /etc/postgresql-common/createcluster.conf ]; then
    echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.conf >/dev/null
  fi
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    trap '$SUDO rm -f "$policy"' EXIT
  fi
  say "updating the Debian package lists"
  $SUDO apt-get update -qq
  say "installing ${missing[*]} (a few minutes on a fresh machine)"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confold "${missing[@]}" >/dev/null
  [ -n "$policy" ] && $SUDO rm -f "$policy"
  # Where an init system started Orthanc anyway, stop it and keep it from starting at boot:
  # the node and the tests start their own Orthanc on free ports.
  if command -v systemctl >/dev/null && systemctl is-active --quiet orthanc 2>/dev/null; then
    $SUDO systemctl disable --now orthanc >/dev/null 2>&1 || true
  elif [ -x /etc/init.d/orthanc ]; then
    $SUDO /etc/init.d/orthanc stop >/dev/null 2>&1 || true
  fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  say "creating the virtual environment .venv"
  "$PYTHON" -m venv .venv
fi
# torch==2.13.0: the CPU wheel where the machine carries one, the CUDA build from the registry elsewhere.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  say "installing torch==2.13.0 (a minute from the local wheel; several GB of CUDA packages elsewhere)"
  .venv/bin/pip install -q torch==2.13.0
fi
say "installing the project and its test tools into .venv"
.venv/bin/pip install -q -e ".[test]"
say "ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
