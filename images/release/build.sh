#!/usr/bin/env bash
# Builds the release artifacts under the deployment guide's names:
#   pact-platform-<arch>.tar.gz        pact (CLI) and pact-journal
#   pact-agent-<arch>-pact.tar.gz      pact-agent, default backend "pact" (PID-1 capable)
#   pact-agent-<arch>-systemd.tar.gz   pact-agent, default backend "systemd"
# Both agent variants carry both backends; `[agent.supervisor] backend` in agent.toml always
# wins over the variant's default. The agent is built with the size-optimised `agent` profile.
#
# USAGE: images/release/build.sh [OUT_DIR]   (default target/release-artifacts)
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-target/release-artifacts}"
arch="$(uname -m)"
mkdir -p "$out"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT

cargo build --release -p pact-cli -p pact-journal
mkdir -p "$stage/platform"
cp target/release/pact target/release/pact-journal "$stage/platform/"
strip "$stage/platform/"* 2>/dev/null || true
tar -C "$stage/platform" -czf "$out/pact-platform-$arch.tar.gz" pact pact-journal

for variant in pact systemd; do
  # Both variants carry GPU discovery (NVML loaded at run time, AMD through sysfs).
  if [ "$variant" = systemd ]; then features=(--features backend-systemd,gpu); else features=(--features gpu); fi
  # A separate target dir per variant keeps both builds incremental.
  CARGO_TARGET_DIR="target/variant-$variant" cargo build --profile agent -p pact-agent "${features[@]}"
  mkdir -p "$stage/$variant"
  cp "target/variant-$variant/agent/pact-agent" "$stage/$variant/"
  tar -C "$stage/$variant" -czf "$out/pact-agent-$arch-$variant.tar.gz" pact-agent
done
ls -l "$out"
