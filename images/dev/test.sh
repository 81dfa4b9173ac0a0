#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every test in the workspace (unit,
# integration with real journal processes over real TLS, codegen check). This is the
# README's test command and what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/../.."
. images/dev/check-tools.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Builds every binary first, so tests that run pact-journal and pact find them.
cargo build --workspace --all-targets
cargo test --workspace --all-targets --no-fail-fast -- --test-threads="${PACT_TEST_THREADS:-2}"
