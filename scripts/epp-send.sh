#!/usr/bin/env bash
# Frames EPP XML files (RFC 5734: 4-byte big-endian length that counts itself, then the XML),
# sends them through `openssl s_client` (or plain TCP with PLAIN=1), and prints every frame that
# comes back: the greeting first, then one response per file. End the list with a logout so the
# server closes the connection; otherwise the script stops after TIMEOUT seconds.
#
# Usage: scripts/epp-send.sh HOST:PORT FILE.xml [FILE.xml ...]
# Env:   CA=certs-example/ca.pem   CA that signed eppmux's certificate
#        CERT=..., KEY=...          client certificate, when eppmux requires local mTLS
#        PLAIN=1                    plain TCP instead of TLS (eppmux --listen)
#        TIMEOUT=10
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,12p' "$0" >&2
  exit 2
fi
target=$1; shift
here=$(cd "$(dirname "$0")/.." && pwd)
ca=${CA:-$here/certs-example/ca.pem}
frame() { python3 -c 'import sys; d=open(sys.argv[1],"rb").read(); sys.stdout.buffer.write((len(d)+4).to_bytes(4,"big")+d)' "$1"; }
unframe() {
  python3 -c '
import sys
data = sys.stdin.buffer.read()
n = 0
while len(data) >= 4:
    size = int.from_bytes(data[:4], "big")
    if size < 5 or len(data) < size:
        print(f"-- incomplete frame ({len(data)} of {size} bytes)"); sys.exit(1)
    n += 1
    print(f"-- frame {n} ({size} bytes)")
    print(data[4:size].decode("utf-8", "replace"))
    data = data[size:]
if n == 0:
    print("-- no frame received"); sys.exit(1)
'
}
payload=$(mktemp); trap 'rm -f "$payload"' EXIT
for f in "$@"; do frame "$f" >> "$payload"; done
if [ "${PLAIN:-0}" = 1 ]; then
  python3 - "$target" "$payload" "${TIMEOUT:-10}" <<'PY' | unframe
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
s = socket.create_connection((host, int(port)), timeout=float(sys.argv[3]))
s.sendall(open(sys.argv[2], "rb").read())
out = b""
try:
    while chunk := s.recv(65536):
        out += chunk
except socket.timeout:
    pass
sys.stdout.buffer.write(out)
PY
else
  args=(-connect "$target" -CAfile "$ca" -verify_return_error -quiet -ign_eof)
  [ -n "${CERT:-}" ] && args+=(-cert "$CERT" -key "${KEY:?KEY is needed with CERT}")
  timeout "${TIMEOUT:-10}" openssl s_client "${args[@]}" < "$payload" 2>/dev/null | unframe
fi
