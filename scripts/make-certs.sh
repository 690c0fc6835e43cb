#!/usr/bin/env bash
# Makes the EXAMPLE certificates in certs-example/: a private CA, a server certificate for
# localhost, 127.0.0.1, ::1 and the docker-compose service names eppmux and registry (used by
# eppmux's local TLS listener and by the mock registry), and a
# client certificate (used by eppmux towards the registry, and by local clients when local mTLS is on).
# These keys are public (they are in the repository): use them for demos and tests only.
#
# Usage: scripts/make-certs.sh [OUT_DIR]      (default: certs-example)
set -euo pipefail
out=${1:-certs-example}
days=${DAYS:-3650}
mkdir -p "$out"
cd "$out"

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

key ca-key.pem
openssl req -x509 -new -key ca-key.pem -sha256 -days "$days" -out ca.pem \
  -subj "/O=eppmux example/CN=eppmux example CA" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign"

issue() { # name subject extensions
  key "$1-key.pem"
  openssl req -new -key "$1-key.pem" -subj "$2" -out "$1.csr"
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
    -days "$days" -sha256 -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}

issue server "/O=eppmux example/CN=localhost" \
"basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,DNS:eppmux,DNS:registry,IP:127.0.0.1,IP:::1"

issue client "/O=eppmux example/CN=registrar1" \
"basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"

rm -f ca.srl
# Private keys readable by the owner only, as a real deployment should keep them.
chmod 600 ./*-key.pem
echo "wrote $(pwd): ca.pem ca-key.pem server.pem server-key.pem client.pem client-key.pem"
