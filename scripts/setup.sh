#!/usr/bin/env bash
# Creates .venv (Python 3.11+) and installs joblife into it, editable, with the test extras.
# Idempotent: a second run only refreshes the install.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "joblife needs Python 3.11 or newer (found: $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
echo "joblife installed in .venv ($(.venv/bin/joblife --version 2>/dev/null || echo 'joblife'))"
