#!/usr/bin/env bash
# Set up everything (scripts/bootstrap.sh), then lint and run the whole test suite:
# unit tests plus integration tests against real Docker, Nginx, sshd and a local registry.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export TESTCONTAINERS_RYUK_DISABLED=true
ruff check .
python3 -m pytest "$@"
