#!/usr/bin/env bash
# Starts a local development journal: `--dev` credentials in ./.pact-dev/dev/, TLS on
# 127.0.0.1:9443, metrics on 127.0.0.1:9091. The `pact` CLI run from this directory finds
# the endpoint, token and CA by itself. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/../.."
. images/dev/check-tools.sh
cargo build --release -p pact-journal -p pact-cli
echo "In another terminal, from $(pwd):"
echo "  ./target/release/pact apply images/examples/ml-training.toml"
echo "  ./target/release/pact log"
exec ./target/release/pact-journal --dev "$@"
