#!/usr/bin/env bash
# Wraps the web process's command for the eppmux sidecar (README.md in this directory):
#   command: ./eppmux/web.sh ./run.sh
# 1. Writes the trust bundle — the system's CAs and the CA of eppmux's listener certificate — and
#    exports SSL_CERT_FILE to it: epplib then trusts eppmux, and every other HTTPS call of the app
#    still trusts the system's CAs (eppmux's CA alone in SSL_CERT_FILE would replace them).
# 2. Waits until eppmux answers ready (up to EPPMUX_WAIT seconds, default 60): Cloud Foundry starts
#    a sidecar and its app in no set order, and getgov's workers log in as they start; a worker that
#    finds no eppmux then has no registry client until it is recycled.
# 3. Runs the command.
set -euo pipefail
if [ $# -eq 0 ]; then
  echo "usage: web.sh COMMAND [ARG...]   (e.g. web.sh ./run.sh)" >&2
  exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
eppmux=${EPPMUX_BIN:-$here/eppmux}
bundle=${EPPMUX_TRUST_BUNDLE:-${TMPDIR:-/tmp}/eppmux-trust-bundle.pem}
"$eppmux" ca-bundle --ca "${EPPMUX_LOCAL_CA:-$here/local-ca.pem}" --out "$bundle"
export SSL_CERT_FILE=$bundle

admin=${EPPMUX_ADMIN:-127.0.0.1:1790}
wait=${EPPMUX_WAIT:-60}
start=$SECONDS
until "$eppmux" healthcheck --admin "$admin" --timeout 2s >/dev/null 2>&1; do
  if ((SECONDS - start >= wait)); then
    echo "web.sh: eppmux at $admin not ready after ${wait}s; starting anyway (see the eppmux sidecar's log)" >&2
    break
  fi
  sleep 1
done
exec "$@"
