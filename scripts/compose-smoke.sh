#!/usr/bin/env bash
# Runs the shipped docker-compose.yml on a real Docker engine and drives it with real epplib.
#
# What it proves that scripts/check-compose.sh and tests/compose.rs cannot: the paths inside the
# image, uid 65532 reading the mounted certificates and the secret, binding port 700 as that user
# (the sysctl), the registry found by its service name, the container healthcheck, and the port
# published on 127.0.0.1 reaching eppmux.
#
# Steps: install docker.io + docker-compose (Debian) if missing; start dockerd if no engine answers
# (and stop it afterwards); build the image the compose file names; run its `registry` and `eppmux`
# services unchanged but for a generated override that publishes eppmux's port 700 on 127.0.0.1
# (an ephemeral host port) — `up --no-build` skips the `build:` key; wait (bounded) for `healthy`;
# then, from the host, through that port only: real epplib login, check, create, info, delete,
# poll, logout (tests/interop/compose_client.py), and a second client with a wrong password (2200);
# the eppmux log must hold no ERROR, no `<pw>` and not the password. Always `down -v` at the end,
# and one summary line.
#
# The image: the shipped Dockerfile builds FROM rust:… and gcr.io/distroless/…, which cannot be
# pulled here (no registry but the package registries is reachable). When both base images are
# already present locally, the Dockerfile itself is built. Otherwise a stand-in is assembled
# FROM scratch out of target/release/eppmux, the shared libraries `ldd` lists, the CA bundle and a
# passwd entry for uid 65532 — what distroless `cc` holds — and the rest of the Dockerfile's run
# stage (USER, EXPOSE, HEALTHCHECK, ENTRYPOINT) is taken from the Dockerfile itself, so the
# container runs as the real one does.
#
# Environment:
#   COMPOSE_SMOKE_FILE=path      compose file to run instead of docker-compose.yml (relative paths
#                                in it still resolve against the repository)
#   COMPOSE_SMOKE_OVERRIDE=path  one more override file, applied last (e.g. a broken setup)
#   COMPOSE_SMOKE_REQUIRED=1     a skip (no engine can be had here) is a failure
#   COMPOSE_SMOKE_HEALTHY_WAIT=90  seconds to wait for `healthy`
#
# Exit status: 0 passed (or skipped, said so on the summary line), 1 failed.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
started=$(date +%s)
compose_file=$(realpath "${COMPOSE_SMOKE_FILE:-docker-compose.yml}")
extra_override=${COMPOSE_SMOKE_OVERRIDE:+$(realpath "$COMPOSE_SMOKE_OVERRIDE")}
healthy_wait=${COMPOSE_SMOKE_HEALTHY_WAIT:-90}
# One project per checkout, so that two checkouts on one engine do not tear down each other's
# containers, and a second run finds and removes what a failed first run left.
project="eppmuxsmoke$(printf %s "$repo" | md5sum | cut -c1-8)"
work=$(mktemp -d)
dockerd_pid=""
compose_up=0
result="FAIL"
summary=""

say() { printf 'compose smoke: %s\n' "$*"; }

finish() {
  local status=$?
  set +e
  if [ "$compose_up" = 1 ]; then
    if [ "$result" != "PASS" ]; then
      say "last log lines of the services:"
      timeout 30 "${compose[@]}" logs --no-color --tail 30 registry eppmux 2>&1 | sed 's/^/  /'
    fi
    timeout 120 "${compose[@]}" down -v --remove-orphans >"$work/down.log" 2>&1 \
      || { say "docker-compose down failed:"; sed 's/^/  /' "$work/down.log"; }
  fi
  if [ -n "$dockerd_pid" ]; then
    kill "$dockerd_pid" 2>/dev/null
    # dockerd is not our child (setsid): wait for its pid to go away, bounded.
    timeout 30 tail --pid="$dockerd_pid" -f /dev/null || say "dockerd ($dockerd_pid) did not stop within 30 s"
  fi
  rm -rf "$work"
  if [ "$result" = "PASS" ] || [ "$result" = "SKIPPED" ]; then
    say "$result: $summary ($(( $(date +%s) - started )) s)"
    exit 0
  fi
  say "FAIL: ${summary:-stopped with status $status} ($(( $(date +%s) - started )) s)"
  exit 1
}
trap finish EXIT
trap 'summary="interrupted"; exit 1' INT TERM

fail() { summary="$*"; exit 1; }

skip() {
  if [ "${COMPOSE_SMOKE_REQUIRED:-0}" = 1 ]; then
    fail "no Docker engine could be had, and COMPOSE_SMOKE_REQUIRED=1: $*"
  fi
  result="SKIPPED"
  summary="no Docker engine could be had here: $*; only scripts/check-compose.sh checked the compose file"
  exit 0
}

# --- 1. the tools ---------------------------------------------------------------------------
if ! command -v dockerd >/dev/null || ! command -v docker-compose >/dev/null; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    command -v docker >/dev/null && docker info >/dev/null 2>&1 && command -v docker-compose >/dev/null \
      || skip "dockerd or docker-compose is not in PATH, and apt-get cannot install them as $(id -un)"
  else
    say "installing docker.io and docker-compose (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get update -qq >"$work/apt.log" 2>&1 \
      && timeout 900 apt-get install -y -qq --no-install-recommends docker.io docker-compose >>"$work/apt.log" 2>&1 \
      || { tail -20 "$work/apt.log"; skip "apt-get could not install docker.io and docker-compose (log above)"; }
  fi
fi
# Every engine call is bounded: a wedged engine fails the run instead of hanging CI.
docker() { timeout 300 "$(type -P docker)" "$@"; }
compose=(timeout 300 docker-compose --project-name "$project" --project-directory "$repo"
         -f "$compose_file" -f "$work/smoke-override.yml")
[ -n "$extra_override" ] && compose+=(-f "$extra_override")

# --- 2. the engine --------------------------------------------------------------------------
start_dockerd() {
  local log=$1; shift
  setsid dockerd "$@" >"$log" 2>&1 &
  dockerd_pid=$!
  # dockerd has no readiness notification outside systemd: ask its API, bounded.
  local deadline=$(( $(date +%s) + 60 ))
  until docker info >/dev/null 2>&1; do
    if ! kill -0 "$dockerd_pid" 2>/dev/null; then dockerd_pid=""; return 1; fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      kill "$dockerd_pid"; timeout 30 tail --pid="$dockerd_pid" -f /dev/null; dockerd_pid=""; return 1
    fi
    sleep 0.5
  done
}
if ! docker info >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || skip "no engine answers and dockerd needs root"
  say "no engine answers; starting dockerd"
  if ! start_dockerd "$work/dockerd.log"; then
    # overlay2 needs a kernel and a backing filesystem that support it; vfs works anywhere.
    if grep -qiE 'overlay|graphdriver|storage-driver' "$work/dockerd.log"; then
      say "dockerd failed with its default storage driver; retrying with vfs"
      start_dockerd "$work/dockerd-vfs.log" --storage-driver vfs \
        || { tail -20 "$work/dockerd-vfs.log"; skip "dockerd did not start (log above)"; }
    else
      tail -20 "$work/dockerd.log"; skip "dockerd did not start (log above)"
    fi
  fi
fi
say "$(docker version --format 'engine: Docker {{.Server.Version}}, API {{.Server.APIVersion}}, {{.Server.Os}}/{{.Server.Arch}}')"\
"$(docker info --format ', storage {{.Driver}}, cgroup v{{.CgroupVersion}}')"
say "$(docker-compose version --short | sed 's/^/docker-compose /')"

# --- 3. the image ---------------------------------------------------------------------------
command -v python3 >/dev/null || fail "python3 is needed"
python3 -c 'import yaml' 2>/dev/null || timeout 300 python3 -m pip install -q PyYAML
image=$(python3 -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["services"]["eppmux"]["image"])' "$compose_file") \
  || fail "cannot read services.eppmux.image from $compose_file"
mapfile -t bases < <(awk 'toupper($1) == "FROM" { print $2 }' Dockerfile)
missing=()
for b in "${bases[@]}"; do docker image inspect "$b" >/dev/null 2>&1 || missing+=("$b"); done
if [ "${#missing[@]}" = 0 ]; then
  say "building the shipped Dockerfile as $image (its base images are present)"
  docker build -q -t "$image" . >"$work/build.log" 2>&1 \
    || { tail -20 "$work/build.log"; fail "docker build of the shipped Dockerfile failed (log above)"; }
else
  say "base images not present (${missing[*]}) and none can be pulled here: assembling a stand-in" \
      "image FROM scratch with target/release/eppmux and the Dockerfile's run stage"
  [ -x target/release/eppmux ] || timeout 1800 cargo build --release --locked --bin eppmux
  ctx=$work/image
  mkdir -p "$ctx/rootfs/etc/ssl/certs" "$ctx/rootfs/tmp" "$ctx/rootfs/home/nonroot"
  chmod 1777 "$ctx/rootfs/tmp"
  chown 65532:65532 "$ctx/rootfs/home/nonroot"
  # Debug info is most of the binary's size and the image does not need it.
  objcopy --strip-debug target/release/eppmux "$ctx/eppmux"
  for lib in $(ldd target/release/eppmux | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
    cp -L --parents "$lib" "$ctx/rootfs/"
  done
  cp -L /etc/ssl/certs/ca-certificates.crt "$ctx/rootfs/etc/ssl/certs/"
  # distroless's own entries for its "nonroot" user.
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
    >"$ctx/rootfs/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$ctx/rootfs/etc/group"
  # The Dockerfile's last stage, with its FROM replaced and the binary copied from the context.
  awk -v out="$ctx/Dockerfile" '
    toupper($1) == "FROM" { n = NR }
    { line[NR] = $0 }
    END {
      if (!n) exit 2
      print "FROM scratch\nCOPY rootfs/ /" > out
      for (i = n + 1; i <= NR; i++) {
        if (line[i] ~ /^COPY --from=[^ ]+ [^ ]+ \/usr\/local\/bin\/eppmux$/) { print "COPY eppmux /usr/local/bin/eppmux" > out; copied = 1 }
        else print line[i] > out
      }
      if (!copied) exit 3
    }' Dockerfile \
    || fail "the Dockerfile's run stage no longer has 'COPY --from=… /usr/local/bin/eppmux'; update compose-smoke.sh"
  docker build -q -t "$image" "$ctx" >"$work/build.log" 2>&1 \
    || { tail -20 "$work/build.log"; fail "docker build of the stand-in image failed (log above)"; }
fi
say "image $image: user $(docker image inspect -f '{{.Config.User}}' "$image"), entrypoint $(docker image inspect -f '{{json .Config.Entrypoint}}' "$image")"

# --- 4. the services ------------------------------------------------------------------------
cat >"$work/smoke-override.yml" <<'YAML'
# Generated by scripts/compose-smoke.sh: publish eppmux's EPP port on the host's loopback only,
# on a port the engine picks.
services:
  eppmux:
    ports:
      - "127.0.0.1::700"
YAML
# Whatever a failed run left behind (same project name), first.
"${compose[@]}" down -v --remove-orphans >"$work/down0.log" 2>&1 || true
since=$(date +%s)
compose_up=1
"${compose[@]}" up -d --no-build registry eppmux >"$work/up.log" 2>&1 \
  || { sed 's/^/  /' "$work/up.log"; fail "docker-compose up failed (output above)"; }
eppmux_id=$("${compose[@]}" ps -q eppmux)
[ -n "$eppmux_id" ] || fail "no eppmux container after up"

# Wait on the engine's own events: healthy, or the container dying, or the bound.
# (--since replays what happened before this command started, so nothing is missed.)
event=""
while read -r action; do
  case "$action" in
    # unhealthy: the healthcheck failed `retries` times in a row; compose's service_healthy
    # condition gives up there too.
    "health_status: healthy" | "health_status: unhealthy" | die) event=$action; break ;;
  esac
done < <(timeout "$healthy_wait" docker events --since "$since" --filter "container=$eppmux_id" \
           --filter event=health_status --filter event=die --format '{{.Action}}')
# The event stream does not end by itself: stop it (its `timeout`) once it has told us.
kill "$!" 2>/dev/null || true
if [ "$event" != "health_status: healthy" ]; then
  state=$(docker inspect -f '{{.State.Status}}{{if eq .State.Status "exited"}} (exit code {{.State.ExitCode}}){{end}}, health {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$eppmux_id")
  # The line that says why: the first error, or else the last warning.
  docker logs "$eppmux_id" >"$work/eppmux.log" 2>&1 || true
  why=$(grep -m1 -E 'ERROR|^Error' "$work/eppmux.log" || grep -E 'WARN' "$work/eppmux.log" | tail -1 || true)
  case "$event" in
    die) what="its container exited" ;;
    "health_status: unhealthy") what="its healthcheck kept failing" ;;
    *) what="not healthy after $healthy_wait s" ;;
  esac
  fail "eppmux did not turn healthy, $what: $state${why:+; its log: $why}"
fi
uid=$(docker top "$eppmux_id" -o pid,uid | awk 'NR > 1 { print $2 }' | sort -u | tr '\n' ' ') \
  || fail "docker top of the eppmux container failed"
[ "$uid" = "65532 " ] || fail "eppmux should run as uid 65532 only, runs as: $uid"
say "eppmux healthy ($(( $(date +%s) - since )) s after up), running as uid ${uid% }"
"${compose[@]}" logs --no-color eppmux >"$work/eppmux.log" 2>&1
grep -q 'account ready' "$work/eppmux.log" \
  || fail "eppmux is healthy but never logged 'account ready' (registry:700 by service name)"

# Every other container is either without a healthcheck or healthy: one that inherits the image's
# HEALTHCHECK without an admin endpoint (the mock registry) would never be.
for id in $("${compose[@]}" ps -q); do
  [ "$id" = "$eppmux_id" ] && continue
  health=$(docker inspect -f '{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id")
  case "$health" in
    *" none" | *" healthy") ;;
    *) fail "container ${health% *} has a healthcheck that is ${health##* } (it cannot pass there)" ;;
  esac
done

published=$("${compose[@]}" port eppmux 700)
case "$published" in
  127.0.0.1:[0-9]*) ;;
  *) fail "eppmux's port 700 should be published on 127.0.0.1, got '$published'" ;;
esac
port=${published#127.0.0.1:}
say "eppmux's port 700 is published on $published"

# --- 5. the clients, from the host, through 127.0.0.1 only ----------------------------------
# The same trust the compose app uses: the system roots plus eppmux's CA.
cat /etc/ssl/certs/ca-certificates.crt certs-example/ca.pem >"$work/ca-bundle.pem"
export SSL_CERT_FILE=$work/ca-bundle.pem
password_file=deploy/demo-password.txt
if ! python3 -c 'import epplib' 2>/dev/null; then
  archives=("$repo"/../shared/clients/epplib-*.tar.gz)
  if [ -e "${archives[0]}" ]; then
    say "installing cisagov/epplib from ${archives[0]}"
    timeout 300 python3 -m pip install -q "${archives[0]}" >"$work/pip.log" 2>&1 \
      || { tail -20 "$work/pip.log"; fail "pip could not install ${archives[0]}"; }
  fi
fi
run_client() { # label, expected last line, command…
  local label=$1 want=$2; shift 2
  if ! timeout 60 "$@" >"$work/client.log" 2>&1 || [ "$(tail -1 "$work/client.log")" != "$want" ]; then
    sed 's/^/  /' "$work/client.log"
    fail "$label (output above)"
  fi
  sed 's/^/  /' "$work/client.log"
}
if python3 -c 'import epplib' 2>/dev/null; then
  client="real cisagov/epplib"
  run_client "epplib session through 127.0.0.1:$port" "OK closed" \
    python3 tests/interop/compose_client.py session 127.0.0.1 "$port" registrar1 "$password_file" compose-smoke.gov
  run_client "epplib with a wrong password" "OK check without a session 2002" \
    python3 tests/interop/compose_client.py wrong-password 127.0.0.1 "$port" registrar1 "$password_file" compose-smoke.gov
else
  client="tests/interop/epplib_transport.py (epplib NOT installed: no archive at ../shared/clients; no poll step)"
  say "epplib is not installed and its archive is absent: falling back to tests/interop/epplib_transport.py," \
      "the standard-library client that mimics epplib's transport (no poll step)"
  password=$(cat "$password_file")
  run_client "epplib_transport.py session through 127.0.0.1:$port" "OK closed" \
    python3 tests/interop/epplib_transport.py 127.0.0.1 "$port" registrar1 "$password" compose-smoke.gov
  # The stand-in client stops at a refused login, printing the code it got.
  say "a wrong password: the stand-in client reports the refused login as FAIL; 2200 is expected"
  if timeout 60 python3 tests/interop/epplib_transport.py 127.0.0.1 "$port" registrar1 "$password-wrong" compose-smoke.gov \
       >"$work/client.log" 2>&1 || ! grep -q '^FAIL login: code 2200 ' "$work/client.log"; then
    sed 's/^/  /' "$work/client.log"; fail "a wrong password should get 2200 (output above)"
  fi
  sed 's/^/  /' "$work/client.log"
fi

# --- 6. the log -----------------------------------------------------------------------------
"${compose[@]}" logs --no-color eppmux >"$work/eppmux.log" 2>&1
if grep -n 'ERROR' "$work/eppmux.log" >"$work/bad.log" \
   || grep -nF '<pw>' "$work/eppmux.log" >"$work/bad.log" \
   || grep -nF "$(cat "$password_file")" "$work/eppmux.log" >"$work/bad.log"; then
  sed 's/^/  /' "$work/bad.log"
  fail "eppmux's log has an ERROR line, a <pw> element or the password (lines above)"
fi
say "eppmux's log: $(wc -l <"$work/eppmux.log") lines, no ERROR, no <pw>, no password"

result="PASS"
summary="registry + eppmux on $(docker version --format '{{.Server.Version}}'), healthy as uid 65532, $client through 127.0.0.1:$port"
