#!/usr/bin/env bash
# Step 1 of the deployment guide: create the cluster CA and per-host certificates.
#
#   setup-ca.sh CERT_DIR HOST [HOST...]
#
# - The CA goes to $PACT_CA_DIR (default /etc/pact/ca/): ca.crt and ca.key. An existing CA is
#   kept (re-running adds hosts; it never replaces the CA under a running cluster).
# - For each HOST: CERT_DIR/HOST.crt and CERT_DIR/HOST.key (ECDSA P-256, 825 days, names
#   HOST, localhost, 127.0.0.1), signed by the CA, for server and client use. The HOST that is
#   this machine also gets them at $PACT_ETC/agent.crt and agent.key (the guide's agent.toml).
# - The CA certificate (not its key) also goes to $PACT_ETC/ca.crt (default /etc/pact/ca.crt):
#   the agents' [agent.journal] tls_ca in the guide's agent.toml. Node images carry that file;
#   agents then enroll for their own certificates (pact enroll NODE --hardware-id ...), which the
#   journals sign with enrollment CAs certified by this CA.
# Journals find the CA at /etc/pact/ca/ (or [journal.enrollment] ca_cert/ca_key, or
# PACT_CA_CERT/PACT_CA_KEY) and make their own node certificates from it at start.
# Copy the CA directory to every other management node, as the guide says. Compute nodes need
# only ca.crt: the CA's key lets whoever holds it mint any certificate, so do not leave ca.key
# on them.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CERT_DIR HOST [HOST...]" >&2
  exit 2
fi
cert_dir=$1
shift
ca_dir=${PACT_CA_DIR:-/etc/pact/ca}
command -v openssl >/dev/null || { echo "setup-ca.sh: openssl is required (apt-get install openssl)" >&2; exit 1; }
umask 077
mkdir -p "$ca_dir" "$cert_dir"
if [ ! -s "$ca_dir/ca.crt" ] || [ ! -s "$ca_dir/ca.key" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$ca_dir/ca.key" -out "$ca_dir/ca.crt" -days 3650 -subj "/CN=pact cluster CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    2>/dev/null
  chmod 0644 "$ca_dir/ca.crt"
  echo "created CA: $ca_dir/ca.crt (key $ca_dir/ca.key, mode 0600)"
else
  echo "keeping existing CA: $ca_dir/ca.crt"
fi
etc_dir=${PACT_ETC:-/etc/pact}
mkdir -p "$etc_dir"
install -m 0644 "$ca_dir/ca.crt" "$etc_dir/ca.crt"
echo "installed $etc_dir/ca.crt (the agents' tls_ca)"
for host in "$@"; do
  key="$cert_dir/$host.key"
  crt="$cert_dir/$host.crt"
  ext=$(mktemp)
  printf 'subjectAltName=DNS:%s,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n' "$host" > "$ext"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$key" -subj "/CN=$host" 2>/dev/null |
    openssl x509 -req -CA "$ca_dir/ca.crt" -CAkey "$ca_dir/ca.key" -CAcreateserial -days 825 \
      -extfile "$ext" -out "$crt" 2>/dev/null
  rm -f "$ext"
  chmod 0644 "$crt"
  echo "created $crt"
  # This machine's own certificate also goes where the guide's agent.toml looks for it
  # ([agent.journal] tls_cert/tls_key): an agent here serves its API (9445) with it. Without a
  # token such an agent enrolls instead, and replaces these files with what a journal signs.
  if [ "$host" = "$(hostname -s 2>/dev/null || hostname)" ] || [ "$host" = "$(hostname -f 2>/dev/null || true)" ]; then
    install -m 0644 "$crt" "$etc_dir/agent.crt"
    install -m 0600 "$key" "$etc_dir/agent.key"
    echo "installed $etc_dir/agent.crt and agent.key (this host, $host)"
  fi
done
