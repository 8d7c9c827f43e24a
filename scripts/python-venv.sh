#!/usr/bin/env bash
# Create (once) a Python venv with the reference implementation p2p-copy 0.1.2 and print
# its path on the last line of stdout.
#
#   P2P_COPY_PY_VENV  where the venv lives (default: <repo>/target/py-venv)
#   PYTHON            interpreter used to create it (default: python3, must be >= 3.10)
#
# Idempotent: an existing venv in which `import p2p_copy` works at version 0.1.2 is reused
# as it is; otherwise p2p-copy[security]==0.1.2 is (re)installed into it.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${P2P_COPY_PY_VENV:-$REPO/target/py-venv}"
PYTHON="${PYTHON:-python3}"
WANT="0.1.2"

venv_ok() {
    [ -x "$VENV/bin/python" ] &&
        "$VENV/bin/python" - "$WANT" >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import version
import p2p_copy, argon2, cryptography, zstandard  # security extra included
sys.exit(0 if version("p2p-copy") == sys.argv[1] else 1)
PY
}

if ! venv_ok; then
    if [ ! -x "$VENV/bin/python" ]; then
        echo "creating venv at $VENV" >&2
        mkdir -p "$(dirname "$VENV")"
        "$PYTHON" -m venv "$VENV"
    fi
    echo "installing p2p-copy[security]==$WANT into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "p2p-copy[security]==$WANT" >&2
    if ! venv_ok; then
        echo "error: p2p-copy $WANT is still not importable in $VENV" >&2
        exit 1
    fi
fi

echo "$VENV"
