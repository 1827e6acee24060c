# Sourced by the other scripts: create .venv (Python >= 3.11) and install syncd into it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "syncd needs Python >= 3.11 (found: $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
    exit 1
fi
VENV="$ROOT/.venv"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[${SYNCD_EXTRAS:-test}]"
# Azurite, the Azure Blob Storage emulator the Azure store's tests run against (npm; Node is on
# the machine). Into build/node, where tests/support/azurite.py looks first.
if [ ! -x "$ROOT/build/node/node_modules/.bin/azurite-blob" ] && command -v npm >/dev/null; then
    npm install --silent --no-audit --no-fund --prefix "$ROOT/build/node" azurite@3
fi
