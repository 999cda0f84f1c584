#!/usr/bin/env bash
# Makes a development CA, one server certificate for the three services, and one client
# certificate, for deploy/compose.tls.yml:
#
#   bash deploy/tls/make-dev-certs.sh [DIR]      # default: deploy/tls/certs
#
# DEVELOPMENT ONLY: use your own CA (or cert-manager on Kubernetes) for anything real.
set -euo pipefail
dir="${1:-$(dirname "$0")/certs}"
mkdir -p "$dir"
cd "$dir"
days=825
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
  -subj "/CN=licensing development CA" -keyout ca-key.pem -out ca.pem \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
issue() { # name, subjectAltName, extendedKeyUsage
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
    -keyout "$1-key.pem" -out "$1.csr" 2>/dev/null
  printf 'subjectAltName=%s\nextendedKeyUsage=%s\nbasicConstraints=CA:FALSE\n' "$2" "$3" >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days "$days" \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
issue server "DNS:account,DNS:activation,DNS:seat,DNS:localhost,IP:127.0.0.1" serverAuth
issue client "DNS:licensing-client" clientAuth
# Readable by the containers' user (uid 10001): development keys only.
chmod 644 ./*-key.pem
echo "certificates in $dir: ca.pem, server.pem/server-key.pem, client.pem/client-key.pem"
