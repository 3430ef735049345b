#!/usr/bin/env bash
# Quick start, command 1: set everything up and run the whole loop on a synthetic study.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/dicom-node demo "$@"
