#!/usr/bin/env bash
# The main job on a fresh machine: install (scripts/setup.sh), then `podwarden demo`
# against the testbed on local podman.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/podwarden demo "$@"
