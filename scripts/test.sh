#!/usr/bin/env bash
# Quick start, command 2: set everything up and run all the tests (CI runs this).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
