#!/usr/bin/env bash
# Set up a virtual environment with the package and its benchmark extras, then reproduce the
# paper's Table 1 and Figure 1 beside the peers: prints the table, writes results/table1.json
# and results/figure1.png. Extra arguments go to `python -m benchmarks.table1`.
#   VENV=path   where the environment lives (default: .venv; reused when it exists)
#   PYTHON=exe  the interpreter that creates it (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[benchmarks]"
exec "$VENV/bin/python" -m benchmarks.table1 "$@"
