#!/usr/bin/env bash
# Builds a diskless node image: the pact agent as PID 1, Debian's cloud kernel, nothing else
# (no busybox, no shell unless --extra adds one). See images/node/README.md.
#
#   images/node/build-image.sh [--agent PATH] [--out DIR] [--input DIR] [--squashfs]
#                              [--kernel DIR] [--extra PATH]... [--compress zstd|gzip|none]
#                              [--softdog SECS]
#
#   --agent PATH   the agent binary (default target/debug/pact-agent); a stripped copy goes in
#   --out DIR      where the image goes (default target/node-image, or target/node-image-squashfs)
#   --input DIR    the node's configuration, each file optional:
#                    agent.toml   -> /etc/pact/agent.toml
#                    ca.crt       -> /etc/pact/ca.crt
#                    agent.token  -> /etc/pact/agent.token (mode 0600)
#                    agent.crt    -> /etc/pact/agent.crt (the node's certificate: mutual TLS to
#                                    the journal, and the API server on 9445)
#                    agent.key    -> /etc/pact/agent.key (mode 0600)
#                    hosts        -> appended to /etc/hosts
#                    rootfs/      -> copied over the root file system as it is
#   --squashfs     the root file system as a SquashFS (DIR/root.squashfs, a virtio disk) and a
#                  small initramfs that mounts it under a tmpfs overlay and switches root
#                  (kernel parameter pact.root=squashfs:/dev/vda)
#   --kernel DIR   a kernel cache made by fetch-kernel.sh (default: run fetch-kernel.sh)
#   --extra PATH   also copy this host binary, at the same path, with the libraries ldd names
#   --compress     the initramfs's compression (default zstd when the zstd tool is there, else
#                  gzip; the kernel has both built in)
#   --softdog SECS load the kernel's software watchdog (softdog, soft_margin=SECS) early, so the
#                  node has a /dev/watchdog that the agent, as PID 1, arms and pets (a third of
#                  the timeout); a node whose agent stops petting resets. For machines without a
#                  hardware watchdog driver in the image, and for the QEMU test.
#
# Writes DIR/vmlinuz, DIR/initrd.img, DIR/root.squashfs (--squashfs) and DIR/image.env (what
# run-qemu.sh reads: KERNEL, INITRD, DISK, APPEND). Needs no root: the one device node
# (/dev/console, c 5 1) is written into the cpio archive directly.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
AGENT=$TARGET/debug/pact-agent
OUT=""
INPUT=""
SQUASHFS=0
KERNEL=""
EXTRAS=()
COMPRESS=""
SOFTDOG=""

die() { echo "build-image: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case $1 in
    --agent) AGENT=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --input) INPUT=$2; shift 2 ;;
    --squashfs) SQUASHFS=1; shift ;;
    --kernel) KERNEL=$2; shift 2 ;;
    --extra) EXTRAS+=("$2"); shift 2 ;;
    --compress) COMPRESS=$2; shift 2 ;;
    --softdog) SOFTDOG=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[ -n "$OUT" ] || OUT=$TARGET/node-image$([ $SQUASHFS = 1 ] && echo -squashfs)
[ -x "$AGENT" ] || die "no agent binary at $AGENT (cargo build -p pact-agent)"
[ -z "$INPUT" ] || [ -d "$INPUT" ] || die "--input $INPUT is not a directory"
case $SOFTDOG in ''|*[!0-9]*) [ -z "$SOFTDOG" ] || die "--softdog $SOFTDOG: expected whole seconds" ;; esac
if [ -z "$COMPRESS" ]; then
  if command -v zstd >/dev/null 2>&1; then COMPRESS=zstd; else COMPRESS=gzip; fi
fi
case $COMPRESS in zstd|gzip|none) ;; *) die "--compress zstd|gzip|none" ;; esac
for t in cpio ldd; do command -v $t >/dev/null 2>&1 || die "$t is missing (apt-get install cpio libc-bin)"; done
[ $SQUASHFS = 0 ] || command -v mksquashfs >/dev/null 2>&1 || die "mksquashfs is missing (apt-get install squashfs-tools)"
if [ -z "$KERNEL" ]; then
  KERNEL=$("$REPO/images/node/fetch-kernel.sh" | tail -n1) || die "no kernel (images/node/fetch-kernel.sh failed)"
fi
[ -f "$KERNEL/.complete" ] || die "$KERNEL is not a complete kernel cache (run images/node/fetch-kernel.sh)"
KVER=$(cat "$KERNEL/version")

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pact-node-image.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"

# copy_bin SRC ROOT DEST: the binary (dereferenced) at DEST in ROOT, and every library ldd
# names at its own path, so the dynamic loader finds them as on the host.
copy_bin() {
  local src=$1 root=$2 dest=$3 lib
  mkdir -p "$root$(dirname "$dest")"
  cp -L "$src" "$root$dest"
  for lib in $(ldd "$src" 2>/dev/null | grep -oE '/[^ ]+' || true); do
    [ -e "$root$lib" ] && continue
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  if ! ldd "$src" >/dev/null 2>&1; then
    file "$src" 2>/dev/null | grep -q 'statically linked' || echo "build-image: note: ldd cannot read $src" >&2
  fi
}

# base_root ROOT: directories, /etc, the CA, token and config from --input
base_root() {
  local r=$1
  mkdir -p "$r"/{dev,proc,sys,run,tmp,mnt,root,var/lib/pact,var/log,etc/pact,sbin,usr/sbin}
  chmod 1777 "$r/tmp"
  chmod 0700 "$r/root"
  printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$r/etc/hosts"
  printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files\n' >"$r/etc/nsswitch.conf"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' >"$r/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$r/etc/group"
  echo "$KVER" >"$r/etc/pact/kernel-version"
  if [ -n "$INPUT" ]; then
    [ ! -f "$INPUT/agent.toml" ] || install -m 0644 "$INPUT/agent.toml" "$r/etc/pact/agent.toml"
    [ ! -f "$INPUT/ca.crt" ] || install -m 0644 "$INPUT/ca.crt" "$r/etc/pact/ca.crt"
    [ ! -f "$INPUT/agent.token" ] || install -m 0600 "$INPUT/agent.token" "$r/etc/pact/agent.token"
    [ ! -f "$INPUT/agent.crt" ] || install -m 0644 "$INPUT/agent.crt" "$r/etc/pact/agent.crt"
    [ ! -f "$INPUT/agent.key" ] || install -m 0600 "$INPUT/agent.key" "$r/etc/pact/agent.key"
    [ ! -f "$INPUT/hosts" ] || cat "$INPUT/hosts" >>"$r/etc/hosts"
    [ ! -d "$INPUT/rootfs" ] || cp -a "$INPUT/rootfs/." "$r/"
  fi
  for x in "${EXTRAS[@]}"; do
    [ -e "$x" ] || die "--extra $x does not exist"
    copy_bin "$x" "$r" "$x"
  done
}

# add_modules ROOT LISTFILE...: the listed .ko files into ROOT and /etc/pact/early-modules
add_modules() {
  local r=$1 l m
  shift
  {
    echo "# kernel modules PID 1 loads before anything else (finit_module, in this order)"
    echo "# kernel $KVER, from Debian's package; made by images/node/build-image.sh"
  } >"$r/etc/pact/early-modules"
  for l in "$@"; do
    while read -r m; do
      [ -n "$m" ] || continue
      mkdir -p "$r$(dirname "$m")"
      cp "$KERNEL$m" "$r$m"
      echo "$m" >>"$r/etc/pact/early-modules"
    done <"$l"
  done
}

# add_softdog ROOT: the watchdog modules into ROOT, listed in /etc/pact/background-modules
# (loaded by PID 1 on a thread of its own, while the boot stream waits on the network; the
# watchdog is opened once they are in), softdog with soft_margin=$SOFTDOG (nothing without
# --softdog)
add_softdog() {
  local r=$1 m
  [ -n "$SOFTDOG" ] || return 0
  [ -f "$KERNEL/modules.watchdog" ] || die "$KERNEL has no modules.watchdog (run images/node/fetch-kernel.sh again)"
  while read -r m; do
    [ -n "$m" ] || continue
    mkdir -p "$r$(dirname "$m")"
    cp "$KERNEL$m" "$r$m"
    case $m in
      */softdog.ko) echo "$m soft_margin=$SOFTDOG" >>"$r/etc/pact/background-modules" ;;
      *) echo "$m" >>"$r/etc/pact/background-modules" ;;
    esac
  done <"$KERNEL/modules.watchdog"
}

# newc_node NAME MODE MAJOR MINOR: one cpio "newc" entry with no data (a directory or device)
newc_node() {
  local name=$1 mode=$2 major=$3 minor=$4 namesize pad
  namesize=$((${#name} + 1))
  printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
    0 "$mode" 0 0 1 0 0 0 0 "$major" "$minor" "$namesize" 0
  printf '%s\0' "$name"
  pad=$(((4 - (110 + namesize) % 4) % 4))
  [ $pad = 0 ] || head -c $pad /dev/zero
}

# make_initramfs ROOT OUTFILE: ROOT as a newc cpio (all owned by root), after a small archive
# holding /dev/console (the kernel unpacks concatenated archives in order).
make_initramfs() {
  local r=$1 out=$2
  {
    newc_node dev $((0040755)) 0 0
    newc_node dev/console $((0020600)) 5 1
    newc_node TRAILER!!! 0 0 0
    (cd "$r" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0)
  } >"$WORK/initrd.cpio"
  case $COMPRESS in
    zstd) zstd -q -10 -T0 -f "$WORK/initrd.cpio" -o "$out" ;;
    gzip) gzip -9 -n -c "$WORK/initrd.cpio" >"$out" ;;
    none) cp "$WORK/initrd.cpio" "$out" ;;
  esac
}

STRIPPED=$WORK/pact-agent
cp "$AGENT" "$STRIPPED"
if command -v strip >/dev/null 2>&1; then
  strip --strip-all "$STRIPPED"
else
  echo "build-image: note: no strip (binutils); the agent goes in unstripped" >&2
fi

ROOT=$WORK/root
mkdir -p "$ROOT"
base_root "$ROOT"
copy_bin "$STRIPPED" "$ROOT" /usr/sbin/pact-agent
ln -s ../usr/sbin/pact-agent "$ROOT/sbin/init"
cp "$KERNEL/vmlinuz" "$OUT/vmlinuz"
rm -f "$OUT/root.squashfs" "$OUT/initrd.img"

if [ $SQUASHFS = 0 ]; then
  # the agent itself is /init (a symlink would do for the kernel, but a file is what people expect)
  ln "$ROOT/usr/sbin/pact-agent" "$ROOT/init"
  add_modules "$ROOT" "$KERNEL/modules.net"
  add_softdog "$ROOT"
  make_initramfs "$ROOT" "$OUT/initrd.img"
  DISK=""
  APPEND=""
else
  # The root: everything, with the network chain in its early-modules (the agent skips that
  # list after a switch, since the initramfs stage loaded it and configured the network; a
  # module loaded already would answer EEXIST, which is success).
  add_modules "$ROOT" "$KERNEL/modules.net"
  add_softdog "$ROOT"
  mksquashfs "$ROOT" "$OUT/root.squashfs" -quiet -noappend -all-root -comp gzip \
    -p "dev/console c 0600 0 0 5 1" >/dev/null
  # The initramfs: the agent as /init, its libraries, and the modules of the network and of
  # the disk: this stage brings the network up (ip=) before it switches root.
  IR=$WORK/initramfs
  mkdir -p "$IR"/{dev,proc,sys,run,tmp,etc/pact}
  copy_bin "$STRIPPED" "$IR" /init
  add_modules "$IR" "$KERNEL/modules.net" "$KERNEL/modules.root"
  make_initramfs "$IR" "$OUT/initrd.img"
  DISK=$OUT/root.squashfs
  APPEND="pact.root=squashfs:/dev/vda"
fi

cat >"$OUT/image.env" <<EOF
# made by images/node/build-image.sh; read by images/node/run-qemu.sh
KERNEL_VERSION='$KVER'
KERNEL='$OUT/vmlinuz'
INITRD='$OUT/initrd.img'
DISK='$DISK'
APPEND='$APPEND'
EOF
echo "build-image: $OUT: kernel $KVER, initrd.img $(du -h "$OUT/initrd.img" | cut -f1) ($COMPRESS)$(
  [ -z "$DISK" ] || echo ", root.squashfs $(du -h "$DISK" | cut -f1)"), agent $(du -h "$STRIPPED" | cut -f1) stripped" >&2
echo "$OUT"
