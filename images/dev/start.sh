#!/usr/bin/env bash
# Starts a local development stack, the README's first command:
# - a `--dev` journal: throw-away CA, certificate and tokens in ./.pact-dev/dev/, TLS on
#   127.0.0.1:9443, metrics on 127.0.0.1:9091, data in ./.pact-dev;
# - beside it, an agent as node `dev-node` (an ordinary service, not PID 1), configured by the
#   journal's ./.pact-dev/dev/agent.toml, with its API on 127.0.0.1:9445.
# The `pact` CLI run from this directory finds the endpoint, token and CA by itself.
# Ctrl-C stops both. Arguments go to the journal (`--cores N`, ...); keep its data dir the
# default so the agent finds its configuration.
#
# What is declared for dev-node (`pact node assign dev-node --vcluster V`) is applied to THIS
# machine by the agent: run as root it really writes files, sysctls and mounts; as another user
# what needs root is reported as failed, item by item. Its services run in cgroup v2 scopes when
# the machine gives it a writable cgroup2, else in their own process groups without limits.
set -euo pipefail
cd "$(dirname "$0")/../.."
. images/dev/check-tools.sh
cargo build --release -p pact-journal -p pact-agent -p pact-cli
bin=./target/release

journal_pid=
agent_pid=
stop() {
  trap - EXIT INT TERM
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null || true
  [ -n "$agent_pid" ] && wait "$agent_pid" 2>/dev/null || true
  [ -n "$journal_pid" ] && kill "$journal_pid" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap stop EXIT INT TERM

"$bin/pact-journal" --dev "$@" &
journal_pid=$!
# The journal rewrites ./.pact-dev/dev/{cli,agent}.toml before it serves; it is up once the
# CLI gets an answer.
for _ in $(seq 1 150); do
  if ! kill -0 "$journal_pid" 2>/dev/null; then
    echo "start.sh: the journal exited; see its messages above" >&2
    exit 1
  fi
  "$bin/pact" status >/dev/null 2>&1 && break
  sleep 0.2
done
"$bin/pact" status >/dev/null || { echo "start.sh: the journal did not answer within 30 s" >&2; exit 1; }

"$bin/pact-agent" --config .pact-dev/dev/agent.toml &
agent_pid=$!

cat >&2 <<EOF

pact dev stack: journal on 127.0.0.1:9443 (pid $journal_pid), agent dev-node on 127.0.0.1:9445 (pid $agent_pid).
In another terminal, from $(pwd):
  $bin/pact apply images/examples/ml-training.toml
  $bin/pact log
  $bin/pact service status dev-node --agent-endpoint 127.0.0.1
Ctrl-C stops both.

EOF
# Whichever ends first ends the stack.
wait -n "$journal_pid" "$agent_pid" || true
echo "start.sh: stopping" >&2
