#!/usr/bin/env bash
# Validates docker-compose.yml and the Dockerfile without a Docker engine: `docker compose config`
# or `docker-compose config` and hadolint when present, and in any case a structural check in
# Python (PyYAML) of what eppmux and the app rely on. tests/compose.rs then runs the exact command
# lines the compose file gives eppmux, the mock registry and the app's client, and
# scripts/compose-smoke.sh runs the registry and eppmux services on a real engine (CI runs both).
set -euo pipefail
cd "$(dirname "$0")/.."
if docker compose version >/dev/null 2>&1; then
  docker compose -f docker-compose.yml config --quiet && echo "docker compose config: ok"
elif command -v docker-compose >/dev/null 2>&1; then
  docker-compose -f docker-compose.yml config --quiet && echo "docker-compose config: ok"
fi
if command -v hadolint >/dev/null 2>&1; then
  hadolint Dockerfile && echo "hadolint: ok"
fi
python3 - <<'PY'
import os, re, subprocess, sys, yaml

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
# The app: real epplib, trusting the system roots plus eppmux's CA (README, "Container").
app = services.get("app") or {}
app_env = app.get("environment") or {}
if not str(app_env.get("SSL_CERT_FILE", "")).startswith("/tmp/"):
    errors.append("app: SSL_CERT_FILE should name the bundle its command writes under /tmp")
if "cisagov/epplib" not in str(app_env.get("EPPLIB", "")):
    errors.append("app: EPPLIB should name cisagov/epplib (a git archive URL or a mounted archive)")
app_cmd = app.get("command") or []
script = app_cmd[2] if len(app_cmd) == 3 and app_cmd[:2] == ["sh", "-c"] else ""
steps = [s.strip() for s in script.replace("$$", "$").split(" && ")]
if len(steps) != 3:
    errors.append("app: command should be sh -c 'BUNDLE && INSTALL EPPLIB && exec python CLIENT'")
else:
    if steps[0] != 'cat /etc/ssl/certs/ca-certificates.crt /certs/ca.pem > "$SSL_CERT_FILE"':
        errors.append(f"app: the bundle step should be the system roots plus /certs/ca.pem: {steps[0]}")
    if not (steps[1].startswith("pip install ") and steps[1].endswith('"$EPPLIB"')):
        errors.append(f"app: the second step should pip install \"$EPPLIB\": {steps[1]}")
    client = steps[2].split()
    if client[:4] != ["exec", "python", "/app/compose_client.py", "session"] or client[4:7] != [
        "eppmux", cmd[cmd.index("--listen-tls") + 1].rsplit(":", 1)[1] if "--listen-tls" in cmd else "?",
        cmd[cmd.index("--clid") + 1] if "--clid" in cmd else "?",
    ]:
        errors.append(f"app: the client should be compose_client.py session eppmux PORT CLID …: {steps[2]}")
mounts = dict(v.split(":")[1::-1] for v in app.get("volumes") or [])
if mounts.get("/app") != "./tests/interop" or not os.path.isfile("tests/interop/compose_client.py"):
    errors.append("app: /app should mount ./tests/interop, which holds compose_client.py")
if mounts.get("/certs") != "./certs-example":
    errors.append("app: /certs should mount ./certs-example (eppmux's CA)")
if "epp_password" not in (app.get("secrets") or []):
    errors.append("app: the password should come from the epp_password secret")
# The app verifies eppmux's certificate against the name it connects to.
san = subprocess.run(["openssl", "x509", "-in", "certs-example/server.pem", "-noout", "-ext",
                      "subjectAltName"], capture_output=True, text=True).stdout
if "DNS:eppmux" not in san:
    errors.append(f"certs-example/server.pem: no DNS:eppmux in its subjectAltName ({san.strip()})")
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
