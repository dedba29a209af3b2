#!/usr/bin/env bash
# Sets everything up and runs the whole test suite (the README's test command; CI runs it).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k status_machine`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
bash scripts/system-packages.sh
eval "$(bash scripts/services.sh)"
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
