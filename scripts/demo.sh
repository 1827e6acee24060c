#!/usr/bin/env bash
# Set up .venv, start a local SeaweedFS S3 server on 127.0.0.1 and run syncd on ./demo/folder
# (--azure: a local Azurite, Azure Blob Storage, instead).
# Drop files into demo/folder and watch them arrive; Ctrl-C stops both.
set -euo pipefail
source "$(dirname "$0")/venv.sh"
cd "$ROOT"
exec "$VENV/bin/python" -m tests.support.demo "$@"
