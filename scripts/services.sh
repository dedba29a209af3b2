#!/usr/bin/env bash
# Makes sure the services the tests use are running on this machine, when it has them
# installed (as the development machines and CI do), and prints the environment variables
# that point the tests at them. A laptop without them gets nothing exported: the tests then
# start PostgreSQL with testcontainers or the embedded server, or skip (never in CI).
# Usage: eval "$(bash scripts/services.sh)"
set -uo pipefail

log() { echo "$*" >&2; }

pg_ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if command -v pg_isready >/dev/null 2>&1; then
  if ! pg_ready && command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    log "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start >&2 || true
    for _ in $(seq 1 30); do pg_ready && break; sleep 1; done
  fi
  if pg_ready; then
    echo "export JOBLIFE_TEST_DATABASE_URL=\${JOBLIFE_TEST_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/postgres}"
  fi
fi

amqp_ready() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
if ! amqp_ready && command -v rabbitmq-server >/dev/null 2>&1; then
  log "starting RabbitMQ"
  rabbitmq-server -detached >&2 || true
  for _ in $(seq 1 60); do amqp_ready && break; sleep 1; done
fi
if ! amqp_ready && command -v rabbitmq-server >/dev/null 2>&1; then
  log "RabbitMQ did not come up on 127.0.0.1:5672"
fi
if amqp_ready; then
  echo "export JOBLIFE_TEST_AMQP_URL=\${JOBLIFE_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2F}"
fi

# A container engine with the Docker API (podman here and in CI), for the docker runner's
# tests: installed and started by its own script, which prints DOCKER_HOST.
bash "$(dirname "$0")/container-engine.sh"
