#!/usr/bin/env bash
# Step 2 check of the deployment guide: waits until the journal quorum reachable at ENDPOINT
# has a leader and every voter answers, then prints the member table.
#
#   bootstrap-quorum.sh HOST:PORT [TIMEOUT_SECONDS]
#
# Needs a token (PACT_TOKEN, or ~/.config/pact/cli.toml) and the CA (PACT_TLS_CA, default
# /etc/pact/ca/ca.crt). Uses `pact` from PATH, or $PACT_BIN. Exit 0 healthy, 5 not healthy in
# time, 2 authentication problem, 1 other error.
set -uo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 HOST:PORT [TIMEOUT_SECONDS]" >&2
  exit 1
fi
endpoint=$1
timeout=${2:-60}
pact=${PACT_BIN:-pact}
: "${PACT_TLS_CA:=/etc/pact/ca/ca.crt}"
export PACT_TLS_CA
deadline=$(( $(date +%s) + timeout ))
while :; do
  out=$("$pact" --endpoint "$endpoint" journal status 2>&1)
  rc=$?
  if [ $rc -eq 0 ]; then
    echo "$out"
    exit 0
  fi
  if [ $rc -eq 2 ] || [ $rc -eq 1 ]; then
    echo "$out" >&2
    exit $rc
  fi
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "the journal quorum at $endpoint is not healthy after ${timeout}s:" >&2
    echo "$out" >&2
    exit 5
  fi
  sleep 1
done
