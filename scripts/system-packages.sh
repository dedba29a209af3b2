#!/usr/bin/env bash
# Installs the Debian packages the test suite uses besides Python's, when they are missing
# and this machine can (root with apt-get): hdf5-tools (the HDF Group's h5repack, used by
# the h5repack chain's tool path), pgbouncer (the tests start a private PgBouncer in
# front of the test server: tests/support/pgbouncer.py; the package's own service is not
# used) and chromium + chromium-driver (the dashboard's browser tests drive it through
# Playwright: tests/support/browser.py; Playwright never downloads a browser of its own).
# The container engine has its own script
# (container-engine.sh). Elsewhere it only says what is missing; the tests that need it
# then skip on a laptop and fail in CI.
set -uo pipefail

missing=()
command -v h5repack >/dev/null 2>&1 || missing+=(hdf5-tools)
# Debian puts pgbouncer in /usr/sbin, not on a non-root user's PATH.
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system-packages: missing ${missing[*]} (install them with your package manager)" >&2
  exit 0
fi
echo "system-packages: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Another apt process (unattended-upgrades on a fresh machine) may hold the dpkg lock:
# wait for it instead of failing at once, and retry an update that failed anyway once.
apt_opts=(-o DPkg::Lock::Timeout=600)
apt-get "${apt_opts[@]}" update -qq >&2 \
  || { sleep 5; apt-get "${apt_opts[@]}" update -qq >&2; } || true
apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends "${missing[@]}" >&2 \
  || echo "system-packages: apt-get install ${missing[*]} failed" >&2
