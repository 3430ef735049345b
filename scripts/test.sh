#!/usr/bin/env bash
# Quick start, command 2: set everything up and run all the tests (CI runs this).
#
# Where the machine allows it (root, or unprivileged user namespaces), pytest runs in a network
# namespace of its own: only a loopback interface, on which no service of the host is reachable
# (a PostgreSQL on 5432, an Orthanc on 4242). The tests start every peer they talk to, and this
# proves it. NODE_TESTS_SHARED_NETWORK=1 runs them on the host's network instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PYTEST=(.venv/bin/python -m pytest "$@")
if [ "${NODE_TESTS_SHARED_NETWORK:-0}" != 1 ] && [ "$(id -u)" -eq 0 ] && unshare --net true 2>/dev/null; then
  echo "test: running pytest in a network namespace of its own (loopback only)"
  exec unshare --net -- bash -c 'ip link set lo up && NODE_TESTS_ISOLATED=1 exec "$@"' test "${PYTEST[@]}"
fi
exec "${PYTEST[@]}"
