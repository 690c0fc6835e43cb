#!/usr/bin/env bash
# eppmux as a Cloud Foundry sidecar of getgov's web process (README.md in this directory).
#
# Takes getgov's registry credentials where getgov takes them — the user-provided service
# `getgov-credentials` in VCAP_SERVICES, else the environment — and hands them to eppmux under
# eppmux's names, in its environment only (nothing is written to disk):
#   REGISTRY_CL_ID          -> EPPMUX_CLID
#   REGISTRY_PASSWORD       -> EPPMUX_PASSWORD
#   REGISTRY_CERT           -> EPPMUX_UPSTREAM_CERT_PEM        (base64 of the PEM, as getgov keeps it)
#   REGISTRY_KEY            -> EPPMUX_UPSTREAM_KEY_PEM         (likewise; may be encrypted)
#   REGISTRY_KEY_PASSPHRASE -> EPPMUX_UPSTREAM_KEY_PASSPHRASE
#   REGISTRY_HOSTNAME       -> EPPMUX_UPSTREAM (HOST:700, or HOST:$REGISTRY_PORT)
# An EPPMUX_* value already set (in the manifest, or as a key of the same service) wins; the
# service is also where the listener's EPPMUX_TLS_CERT_PEM / EPPMUX_TLS_KEY_PEM live.
#
# Arguments go to eppmux: no argument runs the proxy; `sidecar.sh check` opens one registry
# session and reports each step; `sidecar.sh --print-config` shows the result, secrets redacted.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
eppmux=${EPPMUX_BIN:-$here/eppmux}
service=${EPPMUX_CF_SERVICE:-getgov-credentials}

if [ -n "${VCAP_SERVICES:-}" ]; then
  # REGISTRY_* and EPPMUX_* credentials of the service, except those the environment already sets.
  exports=$(python3 - "$service" <<'PY'
import json, os, shlex, sys
name = sys.argv[1]
found = False
for instances in json.loads(os.environ["VCAP_SERVICES"]).values():
    for instance in instances:
        if instance.get("name") != name:
            continue
        found = True
        for key, value in (instance.get("credentials") or {}).items():
            if (key.startswith(("REGISTRY_", "EPPMUX_")) and key.isidentifier()
                    and key not in os.environ and isinstance(value, (str, int))):
                print(f"export {key}={shlex.quote(str(value))}")
if not found:
    print(f"sidecar.sh: no service named {name} in VCAP_SERVICES; using the environment", file=sys.stderr)
PY
  )
  eval "$exports"
fi

# map TARGET SOURCE: TARGET=$SOURCE unless TARGET is already set.
map() {
  if [ -z "${!1:-}" ] && [ -n "${!2:-}" ]; then export "$1=${!2}"; fi
}
map EPPMUX_CLID REGISTRY_CL_ID
map EPPMUX_PASSWORD REGISTRY_PASSWORD
# A file set for eppmux (EPPMUX_UPSTREAM_CERT …) wins over the content: both would be an error.
[ -n "${EPPMUX_UPSTREAM_CERT:-}" ] || map EPPMUX_UPSTREAM_CERT_PEM REGISTRY_CERT
[ -n "${EPPMUX_UPSTREAM_KEY:-}" ] || map EPPMUX_UPSTREAM_KEY_PEM REGISTRY_KEY
[ -n "${EPPMUX_UPSTREAM_KEY_PASSPHRASE_FILE:-}" ] || map EPPMUX_UPSTREAM_KEY_PASSPHRASE REGISTRY_KEY_PASSPHRASE
if [ -z "${EPPMUX_UPSTREAM:-}" ] && [ -n "${REGISTRY_HOSTNAME:-}" ]; then
  export EPPMUX_UPSTREAM="$REGISTRY_HOSTNAME:${REGISTRY_PORT:-700}"
fi
for var in EPPMUX_CLID EPPMUX_PASSWORD EPPMUX_UPSTREAM; do
  if [ -z "${!var:-}" ]; then
    echo "sidecar.sh: $var is not set, and neither is its REGISTRY_* source (environment or service $service)" >&2
    exit 2
  fi
done

# The registry's CA, named explicitly: eppmux's default (the system roots) would follow
# SSL_CERT_FILE, which the app may point at its own bundle.
export EPPMUX_UPSTREAM_CA=${EPPMUX_UPSTREAM_CA:-/etc/ssl/certs/ca-certificates.crt}
# A high loopback port: a non-root process cannot bind 700, and Cloud Foundry grants no capability.
export EPPMUX_LISTEN_TLS=${EPPMUX_LISTEN_TLS:-127.0.0.1:1700}
export EPPMUX_ADMIN=${EPPMUX_ADMIN:-127.0.0.1:1790}
export EPPMUX_POOL_MIN=${EPPMUX_POOL_MIN:-2}
export EPPMUX_POOL_MAX=${EPPMUX_POOL_MAX:-4}
export EPPMUX_LOG_FORMAT=${EPPMUX_LOG_FORMAT:-json}
# eppmux has them under its own names now; do not keep two copies in its environment.
unset REGISTRY_PASSWORD REGISTRY_CERT REGISTRY_KEY REGISTRY_KEY_PASSPHRASE
exec "$eppmux" "$@"
