#!/usr/bin/env bash
# Sets everything up and runs `joblife demo` on the embedded defaults: an embedded
# PostgreSQL under your data directory, the local executor, local storage and the local
# publication spool; no other service needed. The database stays for `joblife status`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
.venv/bin/joblife demo
cat <<'TXT'

The demo's jobs stay in the embedded database. Try:
  source .venv/bin/activate
  joblife status
  joblife jobs list
  joblife jobs show <id>
  joblife web        # the dashboard: open http://127.0.0.1:8080/ and log in as admin
                     # with the password it prints the first time
TXT
