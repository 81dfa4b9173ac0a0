#!/usr/bin/env bash
# Fetches the node kernel from Debian's own packages and caches what the node image needs:
#
#   target/node-kernel/<kver>/vmlinuz
#   target/node-kernel/<kver>/lib/modules/<kver>/kernel/.../<module>.ko   (uncompressed)
#   target/node-kernel/<kver>/modules.net       the virtio_net chain, in load order, one path a line
#   target/node-kernel/<kver>/modules.root      virtio_blk squashfs loop overlay (SquashFS root)
#   target/node-kernel/<kver>/modules.watchdog  watchdog softdog (build-image.sh --softdog)
#   target/node-kernel/current                  the <kver> last fetched
#
# The meta package (linux-image-cloud-amd64, or $PACT_NODE_KERNEL_PACKAGE) names the versioned
# package; its ABI changes with security updates, so it is resolved at every run and the
# modules always come from the same .deb as the kernel. Needs `apt-get update` done and
# the package registry reachable; nothing else on the network. Idempotent: a complete cache
# for the resolved version is used as it is. When the package cannot be resolved (no apt
# lists, no registry) it falls back to the last complete cache, and says so.
#
# Prints the cache directory as the last line of stdout. Exit 1 when there is no kernel.
set -euo pipefail
cd "$(dirname "$0")/../.."
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
BASE=$TARGET/node-kernel
META=${PACT_NODE_KERNEL_PACKAGE:-linux-image-cloud-amd64}
NET_MODULES="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net"
ROOT_MODULES="virtio_blk squashfs loop overlay"
# The cloud kernel has no emulated hardware watchdog driver (i6300esb): softdog is the kernel's
# own, a real /dev/watchdog that resets the machine when nobody writes to it.
WATCHDOG_MODULES="watchdog softdog"

say() { echo "fetch-kernel: $*" >&2; }
# complete DIR: a finished cache with every list this version of the script makes
complete() { [ -f "$1/.complete" ] && [ -f "$1/modules.watchdog" ]; }

resolve() {
  command -v apt-cache >/dev/null 2>&1 || return 1
  apt-cache depends "$META" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}

fallback() {
  if [ -f "$BASE/current" ] && complete "$BASE/$(cat "$BASE/current")"; then
    say "$1; using the cached kernel $(cat "$BASE/current")"
    echo "$BASE/$(cat "$BASE/current")"
    exit 0
  fi
  say "$1, and no kernel is cached under $BASE"
  exit 1
}

PKG=$(resolve || true)
if [ -z "$PKG" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  say "$META is unknown to apt; running apt-get update"
  apt-get update -qq >&2 || true
  PKG=$(resolve || true)
fi
[ -n "$PKG" ] || fallback "cannot resolve $META with apt-cache"
KVER=${PKG#linux-image-}
DIR=$BASE/$KVER
if complete "$DIR"; then
  echo "$KVER" >"$BASE/current"
  echo "$DIR"
  exit 0
fi

say "fetching $PKG"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pact-node-kernel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# apt-get download writes into the current directory; _apt cannot write a mktemp dir, which
# only makes apt warn that it downloads unsandboxed.
if ! (cd "$WORK" && apt-get download "$PKG" >&2 2>"$WORK/download.err"); then
  cat "$WORK/download.err" >&2 || true
  fallback "apt-get download $PKG failed"
fi
DEB=$(ls "$WORK"/*.deb)
mkdir -p "$WORK/x"
dpkg-deb --fsys-tarfile "$DEB" | tar -x -C "$WORK/x" ./boot "./lib/modules/$KVER/kernel" "./lib/modules/$KVER/modules.builtin"

rm -rf "$DIR.partial"
mkdir -p "$DIR.partial"
cp "$WORK/x/boot/vmlinuz-$KVER" "$DIR.partial/vmlinuz"
MODROOT=lib/modules/$KVER

# find_module NAME -> the module's path relative to the extracted tree, decompressed if needed
find_module() {
  local name=$1 f
  f=$(cd "$WORK/x" && find "$MODROOT/kernel" \( -name "$name.ko" -o -name "$name.ko.xz" -o -name "$name.ko.zst" \) | head -n1)
  if [ -z "$f" ]; then
    name_dash=${name//_/-}
    f=$(cd "$WORK/x" && find "$MODROOT/kernel" \( -name "$name_dash.ko" -o -name "$name_dash.ko.xz" -o -name "$name_dash.ko.zst" \) | head -n1)
  fi
  [ -n "$f" ] || return 1
  case $f in
    *.xz) xz -d "$WORK/x/$f"; f=${f%.xz} ;;
    *.zst) zstd -q -d --rm "$WORK/x/$f"; f=${f%.zst} ;;
  esac
  echo "$f"
}

# copy_list "NAMES" OUT: copies the modules, writes their image paths in order to OUT and checks
# that every module's own dependencies (its .modinfo `depends=`) come earlier in the order.
LOADED=""
copy_list() {
  local names=$1 out=$2 m rel dep
  : >"$out"
  for m in $names; do
    if ! rel=$(find_module "$m"); then
      if grep -qE "/$m\.ko\$" "$WORK/x/$MODROOT/modules.builtin" 2>/dev/null; then
        say "$m is built into $KVER; not listed"
        LOADED="$LOADED $m"
        continue
      fi
      say "module $m not found in $PKG"
      exit 1
    fi
    for dep in $(tr '\0' '\n' <"$WORK/x/$rel" | sed -n 's/^depends=//p' | tr ',' ' ' | tr '-' '_'); do
      case " $LOADED " in
        *" $dep "*) ;;
        *) say "module $m needs $dep, which is not loaded before it"; exit 1 ;;
      esac
    done
    mkdir -p "$DIR.partial/$(dirname "$rel")"
    cp "$WORK/x/$rel" "$DIR.partial/$rel"
    echo "/$rel" >>"$out"
    LOADED="$LOADED $m"
  done
}
copy_list "$NET_MODULES" "$DIR.partial/modules.net"
copy_list "$ROOT_MODULES" "$DIR.partial/modules.root"
copy_list "$WATCHDOG_MODULES" "$DIR.partial/modules.watchdog"
echo "$KVER" >"$DIR.partial/version"
touch "$DIR.partial/.complete"
rm -rf "$DIR"
mv "$DIR.partial" "$DIR"
echo "$KVER" >"$BASE/current"
say "cached $KVER in $DIR ($(du -sh "$DIR" | cut -f1))"
echo "$DIR"
