#!/usr/bin/env bash
# Set up .venv and run the whole test suite (unit, integration against a real SeaweedFS,
# crash and fault tests). Extra arguments go to pytest, e.g. scripts/test.sh -k rename
set -euo pipefail
source "$(dirname "$0")/venv.sh"
cd "$ROOT"
exec "$VENV/bin/python" -m pytest "$@"
