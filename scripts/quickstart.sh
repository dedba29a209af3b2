#!/usr/bin/env bash
# Sets everything up and runs joblife on its embedded defaults: an embedded PostgreSQL
# under your data directory, no other service needed.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
.venv/bin/joblife db upgrade
.venv/bin/joblife status
cat <<'TXT'

joblife is ready. Try:
  source .venv/bin/activate
  joblife --help
  joblife db url
TXT
