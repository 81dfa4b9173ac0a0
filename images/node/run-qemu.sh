#!/usr/bin/env bash
# Boots a node image made by build-image.sh under QEMU, the serial console on stdout.
#
#   images/node/run-qemu.sh [--image DIR] [--timeout SECS] [--append "PARAMS"] [--hostfwd SPEC]...
#                           [--node-id ID] [--print]
#
#   --image DIR     the image (default target/node-image); DIR/image.env says what is in it
#   --timeout SECS  hard limit on the whole run (default 120); QEMU is killed past it (exit 124)
#   --append PARAMS more kernel parameters (pact.test_check=..., pact.test_poweroff_after_ready=1)
#   --hostfwd SPEC  forward a host port to the node, e.g. tcp:127.0.0.1:19445-10.0.2.15:9445
#   --node-id ID    the node's id and hostname (default node-001)
#   --print         print the QEMU command line and exit
#
# Acceleration: KVM (-cpu host) only when the CPU offers it (vmx or svm in /proc/cpuinfo) and
# /dev/kvm is writable; otherwise TCG with -cpu max (a nested /dev/kvm without those flags hangs
# a guest). The network is
# QEMU's user mode: the node is 10.0.2.15/24, the host's 127.0.0.1 is 10.0.2.2 (the gateway).
# The guest powers off by itself (-no-reboot turns a reboot or a panic, panic=-1, into an exit),
# stdin is /dev/null. Exit status: QEMU's (0 after a poweroff), 124 on the timeout.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
IMAGE=${CARGO_TARGET_DIR:-$REPO/target}/node-image
TIMEOUT=120
EXTRA=""
FWD=""
NODE=node-001
PRINT=0
die() { echo "run-qemu: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case $1 in
    --image) IMAGE=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --append) EXTRA="$EXTRA $2"; shift 2 ;;
    --hostfwd) FWD="$FWD,hostfwd=$2"; shift 2 ;;
    --node-id) NODE=$2; shift 2 ;;
    --print) PRINT=1; shift ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[ -f "$IMAGE/image.env" ] || die "$IMAGE/image.env is missing (images/node/build-image.sh --out $IMAGE)"
KERNEL="" INITRD="" DISK="" APPEND=""
. "$IMAGE/image.env"
command -v qemu-system-x86_64 >/dev/null 2>&1 || die "qemu-system-x86_64 is missing (apt-get install --no-install-recommends qemu-system-x86)"

# The CPU model: the host's under KVM; under TCG `max`, which has RDRAND. With the default
# qemu64 model the guest kernel's random pool takes about a second to initialise, and every
# getrandom(2) (TLS to the journal) waits for it: measured 1.1 s of the agent's boot stream
# phase, 0.08 s with `-cpu max`. Real nodes' CPUs have RDRAND.
ACCEL=tcg CPU=max
if grep -qwE 'vmx|svm' /proc/cpuinfo 2>/dev/null && [ -w /dev/kvm ]; then ACCEL=kvm CPU=host; fi

CMDLINE="console=ttyS0 loglevel=4 panic=-1 ip=10.0.2.15::10.0.2.2:255.255.255.0:$NODE:eth0:off pact.node_id=$NODE${APPEND:+ $APPEND}$EXTRA"
ARGS=(
  -accel "$ACCEL" -cpu "$CPU" -m 512 -smp 1 -nographic -no-reboot
  -kernel "$KERNEL" -initrd "$INITRD" -append "$CMDLINE"
  -netdev "user,id=n0$FWD"
  # romfile= : no iPXE option ROM, which only costs SeaBIOS time under TCG (the kernel is given)
  -device virtio-net-pci,netdev=n0,romfile=
)
[ -z "$DISK" ] || ARGS+=(-drive "file=$DISK,if=virtio,format=raw,readonly=on")
if [ $PRINT = 1 ]; then
  printf '%q ' qemu-system-x86_64 "${ARGS[@]}"
  echo
  exit 0
fi
echo "run-qemu: accel=$ACCEL cpu=$CPU timeout=${TIMEOUT}s append: $CMDLINE" >&2
exec timeout -k 5 "$TIMEOUT" qemu-system-x86_64 "${ARGS[@]}" </dev/null
