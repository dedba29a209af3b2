#!/usr/bin/env bash
# Makes sure a Docker-compatible container engine answers on this machine and prints the
# DOCKER_HOST that points at it. Idempotent: a second run only checks.
#
# - an existing DOCKER_HOST (or /var/run/docker.sock) that answers is used as it is;
# - otherwise podman's Docker API: podman, runc and busybox-static are installed with apt-get
#   when missing (root only), /etc/containers/containers.conf gets the settings this sandbox
#   needs (runc, cgroupfs, ulimits it allows; see shared/ENVIRONMENT.md) and
#   `podman system service` is started in the background on /run/podman/podman.sock.
#
# Usage: eval "$(bash scripts/container-engine.sh)"   (diagnostics go to stderr)
set -uo pipefail

SOCKET=${JOBLIFE_PODMAN_SOCKET:-/run/podman/podman.sock}
log() { echo "container-engine: $*" >&2; }

answers() { # $1: a unix socket path; true if a Docker API answers _ping on it
  [ -S "$1" ] && curl -fsS --max-time 3 --unix-socket "$1" http://d/_ping >/dev/null 2>&1
}

if [ -n "${DOCKER_HOST:-}" ] && [[ "$DOCKER_HOST" == unix://* ]] && answers "${DOCKER_HOST#unix://}"; then
  echo "export DOCKER_HOST=$DOCKER_HOST"
  exit 0
fi
if answers /var/run/docker.sock; then
  echo "export DOCKER_HOST=unix:///var/run/docker.sock"
  exit 0
fi

if ! command -v podman >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1 \
  || [ ! -x /usr/bin/busybox ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    log "podman is not installed and cannot be installed here (needs root and apt-get)"
    exit 0
  fi
  log "installing podman, runc, busybox-static"
  export DEBIAN_FRONTEND=noninteractive
  # Another apt process (unattended-upgrades on a fresh machine) may hold the dpkg lock:
  # wait for it instead of failing at once, and retry an update that failed anyway once.
  apt_opts=(-o DPkg::Lock::Timeout=600)
  apt-get "${apt_opts[@]}" update -qq >&2 \
    || { sleep 5; apt-get "${apt_opts[@]}" update -qq >&2; } || true
  if ! apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends \
    podman runc busybox-static curl >&2; then
    log "apt-get install failed: no container engine"
    exit 0
  fi
fi

CONF=/etc/containers/containers.conf
if [ "$(id -u)" = 0 ] && ! grep -qs 'joblife: container-engine.sh' "$CONF"; then
  mkdir -p /etc/containers
  cat >"$CONF" <<'EOF'
# joblife: container-engine.sh. crun cannot run under this sandbox's hybrid cgroup layout,
# and podman's default ulimits exceed what it allows.
[containers]
default_ulimits = ["nofile=1024:1024","nproc=1000:1000"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
EOF
fi

if ! answers "$SOCKET"; then
  mkdir -p "$(dirname "$SOCKET")"
  rm -f "$SOCKET"
  log "starting podman system service on $SOCKET"
  # setsid: the service outlives this script and the shell that evaluates its output.
  setsid podman system service --time=0 "unix://$SOCKET" \
    >/var/log/joblife-podman-service.log 2>&1 </dev/null &
  for _ in $(seq 1 60); do answers "$SOCKET" && break; sleep 0.5; done
fi
if answers "$SOCKET"; then
  echo "export DOCKER_HOST=unix://$SOCKET"
else
  log "podman's Docker API does not answer on $SOCKET (see /var/log/joblife-podman-service.log)"
fi
