#!/usr/bin/env bash
# Set up a virtual environment with the package and its test extras, then run the tests
# (notebooks and benchmark smoke runs included). Extra arguments go to pytest.
#   VENV=path   where the environment lives (default: .venv; reused when it exists)
#   PYTHON=exe  the interpreter that creates it (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[tests]"
exec "$VENV/bin/python" -m pytest "$@"
