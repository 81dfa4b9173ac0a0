#!/usr/bin/env bash
# Sourced by start.sh and test.sh: makes sure the build tools are there, installing the
# Debian packages when run as root, and says what is missing otherwise.
need=()
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" ca-certificates
  else
    echo "missing: ${need[*]} (sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "missing: a Rust toolchain >= 1.85 (https://rustup.rs: curl -sSf https://sh.rustup.rs | sh)" >&2
  exit 1
fi
