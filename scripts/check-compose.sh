#!/usr/bin/env bash
# Validates docker-compose.yml and the Dockerfile without a Docker engine (none runs on these
# machines): `docker compose config` or hadolint when present, and in any case a structural check
# in Python (PyYAML) of what eppmux relies on. tests/compose.rs then runs the exact command lines
# the compose file gives eppmux and the mock registry.
set -euo pipefail
cd "$(dirname "$0")/.."
if docker compose version >/dev/null 2>&1; then
  docker compose -f docker-compose.yml config --quiet && echo "docker compose config: ok"
fi
if command -v hadolint >/dev/null 2>&1; then
  hadolint Dockerfile && echo "hadolint: ok"
fi
python3 - <<'PY'
import re, sys, yaml

errors = []
doc = yaml.safe_load(open("docker-compose.yml"))
services = doc.get("services") or {}
for name in ("registry", "eppmux", "app"):
    if name not in services:
        errors.append(f"service {name} missing")
eppmux = services.get("eppmux", {})
if eppmux.get("sysctls", {}).get("net.ipv4.ip_unprivileged_port_start") not in ("0", 0):
    errors.append("eppmux: port 700 as non-root needs net.ipv4.ip_unprivileged_port_start=0")
# The image's HEALTHCHECK needs eppmux's admin endpoint: other services of the image must not
# inherit it (the mock registry would turn "unhealthy" on a real engine).
for sname, s in services.items():
    if sname != "eppmux" and s.get("image") == eppmux.get("image") \
            and not (s.get("healthcheck") or {}).get("disable"):
        errors.append(f"{sname}: uses the eppmux image; set healthcheck: disable: true")
hc = (eppmux.get("healthcheck") or {}).get("test") or []
if "healthcheck" not in hc:
    errors.append("eppmux: healthcheck should run `eppmux healthcheck`")
cmd = eppmux.get("command") or []
if "--listen-tls" not in cmd or "0.0.0.0:700" not in cmd:
    errors.append("eppmux: should listen with TLS on port 700 inside the compose network")
app_env = (services.get("app") or {}).get("environment") or {}
if "SSL_CERT_FILE" not in app_env:
    errors.append("app: SSL_CERT_FILE should point at the CA that signed eppmux's certificate")
for sname, s in services.items():
    for secret in s.get("secrets") or []:
        if secret not in (doc.get("secrets") or {}):
            errors.append(f"{sname}: secret {secret} is not defined")

# Dockerfile: known instructions only, a multi-stage build, a non-root final user.
known = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
         "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}
lines, cont = [], ""
for raw in open("Dockerfile"):
    line = raw.rstrip("\n")
    if not cont and (not line.strip() or line.lstrip().startswith("#")):
        continue
    cont += line
    if cont.endswith("\\"):
        cont = cont[:-1] + " "
        continue
    lines.append(cont.strip()); cont = ""
instrs = [l.split()[0].upper() for l in lines]
for i, word in enumerate(instrs):
    if word not in known:
        errors.append(f"Dockerfile: unknown instruction {word!r} in {lines[i]!r}")
if instrs.count("FROM") < 2:
    errors.append("Dockerfile: expected a multi-stage build")
users = [l for l in lines if l.upper().startswith("USER ")]
if not users or users[-1].split()[1].split(":")[0] in ("root", "0"):
    errors.append("Dockerfile: the final stage must run as a non-root user")
if errors:
    print("\n".join(errors)); sys.exit(1)
print(f"compose: {len(services)} services ok; Dockerfile: {len(lines)} instructions ok")
PY
