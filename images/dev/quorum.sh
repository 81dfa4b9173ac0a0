#!/usr/bin/env bash
# The deployment guide's Step 2 on one machine: three journals on 127.0.0.1, .2 and .3
# (port 9443 each, Raft on 9444, metrics on 9091), started from PACT_JOURNAL_* variables
# exactly as the guide's journal.env files give them, `--bootstrap` on node 1 only; then the
# guide's check (bootstrap-quorum.sh) waits for a leader and prints the member table.
#
#   images/dev/quorum.sh [--keep]      (--keep leaves the journals running)
#
# Work files (CA, data dirs, logs) go to $PACT_QUORUM_DIR (default: a new temp dir).
# The three journals share this machine, so each runs CPUs/3 executors (at least 1;
# $PACT_QUORUM_CORES overrides), not one per CPU as a journal on its own machine does.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
keep=0
[ "${1:-}" = "--keep" ] && keep=1
bin=${PACT_BIN_DIR:-$root/target/debug}
if [ ! -x "$bin/pact-journal" ] || [ ! -x "$bin/pact" ]; then
  . images/dev/check-tools.sh
  cargo build -p pact-journal -p pact-cli
fi
work=${PACT_QUORUM_DIR:-$(mktemp -d /tmp/pact-quorum.XXXXXX)}
mkdir -p "$work"
PACT_CA_DIR=$work/ca PACT_ETC=$work/etc images/deploy/setup-ca.sh "$work/certs" journal-1 journal-2 journal-3 >/dev/null

export PACT_CA_CERT=$work/ca/ca.crt PACT_CA_KEY=$work/ca/ca.key
export PACT_OIDC_HMAC_SECRET=${PACT_OIDC_HMAC_SECRET:-$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')}
export PACT_OIDC_ISSUER=${PACT_OIDC_ISSUER:-pact-quorum-demo} PACT_OIDC_AUDIENCE=${PACT_OIDC_AUDIENCE:-pact}
cores=${PACT_QUORUM_CORES:-$(( $(nproc) / 3 ))}
[ "$cores" -ge 1 ] || cores=1
PEERS="1=127.0.0.1:9443,2=127.0.0.2:9443,3=127.0.0.3:9443"
pids=()
stop() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
[ $keep -eq 0 ] && trap stop EXIT
for i in 1 2 3; do
  extra=()
  [ "$i" = 1 ] && extra=(--bootstrap)
  PACT_JOURNAL_NODE_ID=$i PACT_JOURNAL_LISTEN=127.0.0.$i:9443 PACT_JOURNAL_DATA_DIR=$work/journal-$i \
    PACT_JOURNAL_PEERS=$PEERS "$bin/pact-journal" --metrics-listen "127.0.0.$i:9091" --cores "$cores" "${extra[@]}" \
    >"$work/journal-$i.log" 2>&1 &
  pids+=($!)
done
PACT_TOKEN=$("$bin/pact-journal" --dev --mint-token quorum-check)
export PACT_TOKEN PACT_TLS_CA=$work/ca/ca.crt PACT_BIN=$bin/pact
images/deploy/bootstrap-quorum.sh 127.0.0.1:9443 60
echo "work dir: $work (logs: journal-N.log)"
if [ $keep -eq 1 ]; then
  echo "journals left running: pids ${pids[*]}; PACT_TOKEN, PACT_TLS_CA as above"
  echo "export PACT_TOKEN=$PACT_TOKEN PACT_TLS_CA=$PACT_TLS_CA"
fi
