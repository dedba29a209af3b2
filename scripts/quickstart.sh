#!/usr/bin/env bash
# Sets everything up and runs `joblife demo` on the embedded defaults: an embedded
# PostgreSQL under your data directory, the local executor, local storage and the local
# publication spool; no other service needed. The demo's jobs stay in a database of their
# own on that server (joblife_demo, emptied at the next demo run), for the commands the
# demo prints at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
.venv/bin/joblife demo
cat <<'TXT'

To look at the demo's jobs, first activate the environment in your shell:
  source .venv/bin/activate
then run the commands the demo printed above ("next:"); they carry the
JOBLIFE_DATABASE_URL of the demo's own database. `joblife --help` lists the others.
The web dashboard is the `joblife web` line (or `joblife demo --web` next time):
open http://127.0.0.1:8080/ and log in as admin with the password it prints the
first time.

The embedded PostgreSQL the demo started is still running (every joblife command
reuses it). Stop it with:
  joblife db stop
TXT
