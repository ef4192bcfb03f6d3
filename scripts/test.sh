#!/usr/bin/env bash
# The test command: install what the tests need (scripts/setup.sh), then run them all.
# End-to-end tests use real podman and a real sshd on 127.0.0.1, as root and rootless.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
status=$?
set -e
if [ "$status" = 5 ]; then
    echo "pytest collected no tests: failing the run" >&2
    exit 1
fi
exit "$status"
