#!/usr/bin/env bash
# Checks deploy/kubernetes, deploy/prometheus and deploy/grafana without a cluster or a
# Prometheus server:
#   - renders the kustomize base and the two-replicas overlay with `kubectl kustomize` from
#     Debian's kubernetes-client (kubectl 1.20, whose embedded kustomize is old: the files must
#     stay within what it knows), and with any other kubectl on PATH too (a current kustomize);
#   - validates every rendered object with kubernetes-validate (PyPI, pinned) against the
#     Kubernetes API schemas of 1.30 (the oldest release the manifests claim: the preStop sleep
#     action) and 1.37, strictly (unknown fields are errors);
#   - checks what schemas cannot: the ports, paths, Secrets and selectors that must agree between
#     the Deployment, eppmux.toml, the Service, the PodDisruptionBudget and the Prometheus files;
#   - checks the alert rules and runs their unit tests with promtool, taken from Debian's
#     prometheus package without installing it (the package would start a Prometheus server);
#   - checks the Grafana dashboard's structure, and every one of its queries with promtool.
# Installs what it needs (pip, apt-get), each step bounded in time. A tool that cannot be had is
# reported as SKIPPED with the reason and its checks are left out; a check that runs and fails
# fails the script. tests/deploy.rs checks every metric name these files query against a real
# eppmux scrape.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
KUBERNETES_VALIDATE_VERSION=1.37.0
cache=${XDG_CACHE_HOME:-$HOME/.cache}/eppmux-check-deploy
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$cache"
say() { echo "check-deploy: $*"; }
skipped=()
skip() { skipped+=("$1"); say "SKIPPED: $1"; }
pip=(timeout 300 python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore)
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
apt_updated=""
apt_update() {
  [ -n "$apt_updated" ] && return 0
  apt_updated=1
  timeout 300 $sudo apt-get update -qq >>"$work/apt.log" 2>&1
}

# --- Tools ------------------------------------------------------------------------------------
python3 -c 'import yaml' 2>/dev/null || "${pip[@]}" "PyYAML==6.0.3" || true
python3 -c 'import yaml' 2>/dev/null || { say "FAIL: python3 with PyYAML is needed and could not be installed"; exit 1; }

have_kv=""
if [ "$(python3 -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))' 2>/dev/null)" = "$KUBERNETES_VALIDATE_VERSION" ] \
  || "${pip[@]}" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >"$work/pip.log" 2>&1; then
  have_kv=1
else
  tail -5 "$work/pip.log" >&2 || true
  skip "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION could not be installed with pip (log above)"
fi

# Fetches Debian package $1 with apt-get and extracts the file $2 from it into $cache, installing
# nothing (no maintainer scripts run, no service starts). Prints the extracted file's path.
from_deb() {
  local pkg=$1 file=$2 out
  out="$cache/$pkg-$(basename "$file")"
  if [ ! -x "$out" ]; then
    command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || return 1
    local dir="$work/deb-$pkg"
    mkdir -p "$dir"
    # apt-get download writes into the current directory; _apt cannot write into our temporary
    # directory, which only costs a warning.
    if ! (cd "$dir" && timeout 300 apt-get download -qq "$pkg" >>"$work/apt.log" 2>&1); then
      apt_update || return 1
      (cd "$dir" && timeout 300 apt-get download -qq "$pkg" >>"$work/apt.log" 2>&1) || return 1
    fi
    dpkg-deb --fsys-tarfile "$dir"/"$pkg"_*.deb | tar -xO ".$file" >"$out.part" || return 1
    chmod +x "$out.part" && mv "$out.part" "$out"
  fi
  echo "$out"
}

# kubectl from Debian's kubernetes-client: the one the files must render with. If another
# kubectl owns /usr/bin/kubectl (the packages conflict), Debian's is extracted beside it.
kubectls=()
if dpkg -s kubernetes-client >/dev/null 2>&1; then
  kubectls+=("$(command -v kubectl)")
elif ! command -v kubectl >/dev/null; then
  if command -v apt-get >/dev/null && { [ "$(id -u)" -eq 0 ] || command -v sudo >/dev/null; }; then
    say "installing kubernetes-client (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    { apt_update && timeout 600 $sudo apt-get install -y -qq --no-install-recommends kubernetes-client >>"$work/apt.log" 2>&1; } || true
  fi
  if command -v kubectl >/dev/null; then kubectls+=("$(command -v kubectl)"); fi
else
  if debian_kubectl=$(from_deb kubernetes-client /usr/bin/kubectl); then
    kubectls+=("$debian_kubectl")
  fi
  kubectls+=("$(command -v kubectl)")
fi
if ! dpkg -s kubernetes-client >/dev/null 2>&1 && [ -z "${debian_kubectl:-}" ]; then
  tail -5 "$work/apt.log" 2>/dev/null >&2 || true
  skip "Debian's kubernetes-client (kubectl 1.20, the old kustomize) could not be had with apt-get"
fi
[ ${#kubectls[@]} -gt 0 ] || skip "no kubectl at all: the kustomizations are not rendered"

promtool=""
if command -v promtool >/dev/null; then
  promtool=$(command -v promtool)
elif promtool=$(from_deb prometheus /usr/bin/promtool); then
  :
else
  promtool=""
  tail -5 "$work/apt.log" 2>/dev/null >&2 || true
  skip "promtool (Debian's prometheus package) could not be had: the rules are only parsed, not run"
fi

# --- Kubernetes -------------------------------------------------------------------------------
renders=()
for kubectl in "${kubectls[@]}"; do
  version=$("$kubectl" version --client 2>/dev/null | grep -oE 'v[0-9]+\.[0-9]+\.[0-9]+' | head -1 || true)
  for dir in deploy/kubernetes/base deploy/kubernetes/overlays/two-replicas; do
    out="$work/$(basename "$dir")-${version:-unknown}.yaml"
    # Deprecation warnings from a newer kustomize (bases, patchesStrategicMerge) are expected.
    if ! timeout 60 "$kubectl" kustomize "$dir" >"$out" 2>"$work/kustomize.err"; then
      cat "$work/kustomize.err" >&2
      say "FAIL: kubectl ${version} kustomize $dir"
      exit 1
    fi
    say "rendered $dir with kubectl ${version:-?} ($(grep -c '^kind:' "$out") objects)"
    renders+=("$out")
  done
done
if [ -n "$have_kv" ]; then
  for r in "${renders[@]}"; do
    for k8s in 1.30.0 1.37.0; do
      if ! timeout 120 kubernetes-validate --strict --quiet -k "$k8s" "$r"; then
        say "FAIL: kubernetes-validate --strict -k $k8s $(basename "$r")"
        exit 1
      fi
    done
  done
  say "kubernetes-validate: ${#renders[@]} renderings valid against Kubernetes 1.30 and 1.37 (strict)"
fi

# --- Consistency, rules, dashboard ------------------------------------------------------------
PROMTOOL="$promtool" WORK="$work" python3 - "${renders[@]}" <<'PY'
import json, os, re, subprocess, sys, tomllib, yaml

errors = []
work, promtool = os.environ["WORK"], os.environ["PROMTOOL"]
renders = sys.argv[1:]

def objects(path):
    return {(d["kind"], re.sub(r"-[a-z0-9]{10}$", "", d["metadata"]["name"])): d
            for d in yaml.safe_load_all(open(path)) if d}

# Every kubectl renders the same objects (names compared without the ConfigMap hash).
by_dir = {}
for r in renders:
    by_dir.setdefault(os.path.basename(r).split("-v")[0], []).append(r)
for name, paths in by_dir.items():
    sets = [sorted(objects(p)) for p in paths]
    if any(s != sets[0] for s in sets):
        errors.append(f"{name}: kubectl versions render different objects: {sets}")

def duration(text):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", text)
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]

def check(path):
    objs = objects(path)
    where = os.path.basename(path)
    def err(msg): errors.append(f"{where}: {msg}")
    dep, svc, pdb = objs.get(("Deployment", "eppmux")), objs.get(("Service", "eppmux")), \
        objs.get(("PodDisruptionBudget", "eppmux"))
    cms = [o for (k, _), o in objs.items() if k == "ConfigMap"]
    if not (dep and svc and pdb and len(cms) == 1):
        return err(f"expected a Deployment, a Service, a PodDisruptionBudget and one ConfigMap: {sorted(objs)}")
    pod = dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    (c,) = pod["containers"]
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    if psc.get("runAsUser") != 65532 or psc.get("runAsGroup") != 65532 or not psc.get("runAsNonRoot"):
        err("the pod must run as uid/gid 65532 (the Dockerfile's) with runAsNonRoot")
    if not csc.get("readOnlyRootFilesystem") or csc.get("allowPrivilegeEscalation") is not False \
            or csc.get("capabilities", {}).get("drop") != ["ALL"]:
        err("the container needs readOnlyRootFilesystem, no privilege escalation, all capabilities dropped")
    if pod.get("enableServiceLinks") is not False:
        err("enableServiceLinks must be false: the Service `eppmux` would inject EPPMUX_* variables")
    if "memory" not in c.get("resources", {}).get("limits", {}) or "requests" not in c.get("resources", {}):
        err("the container needs resource requests and a memory limit")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    # The TOML from the ConfigMap the Deployment mounts, read the way eppmux will.
    mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    files = {}  # path in the container -> (kind, source name, key)
    for vname, mpath in mounts.items():
        v = vols.get(vname)
        if v is None:
            err(f"volumeMount {vname} has no volume"); continue
        if "configMap" in v:
            cm = next((o for o in cms if o["metadata"]["name"] == v["configMap"]["name"]), None)
            if cm is None:
                err(f"volume {vname}: ConfigMap {v['configMap']['name']} is not in the rendering"); continue
            for key in cm["data"]:
                files[f"{mpath}/{key}"] = ("configMap", cm, key)
        elif "secret" in v:
            for item in v["secret"].get("items", []):
                files[f"{mpath}/{item['path']}"] = ("secret", v["secret"]["secretName"], item["key"])
            mode = v["secret"].get("defaultMode", 0o644)
            if mode & 0o007:
                err(f"volume {vname}: Secret files readable by every user (defaultMode {mode:o})")
    args = c.get("args", [])
    if "--config" not in args:
        return err("eppmux is not started with --config")
    conf_path = args[args.index("--config") + 1]
    kind, cm, key = files.get(conf_path, (None, None, None))
    if kind != "configMap":
        return err(f"--config {conf_path} is not a file of the mounted ConfigMap")
    conf = tomllib.loads(cm["data"][key])
    if conf.get("listen_tls", "").rsplit(":", 1)[-1] != str(ports.get("epp")):
        err(f"listen_tls {conf.get('listen_tls')} is not the container port named epp ({ports.get('epp')})")
    if conf.get("admin") != f"0.0.0.0:{ports.get('admin')}":
        err(f"admin {conf.get('admin')} must listen on the pod's address at the container port named admin")
    if "listen" in conf:
        err("no plain listener: clients reach eppmux across the pod network")
    for opt in ["admin_token_file"] + [f"account.{i}.password_file" for i in range(len(conf.get("account", [])))]:
        value = conf
        for part in opt.split("."):
            value = value[int(part)] if part.isdigit() else value.get(part)
            if value is None: break
        if value is None:
            err(f"{opt} is not set"); continue
        if files.get(value, ("",))[0] != "secret":
            err(f"{opt} = {value} is not a file of a mounted Secret")
    env = {e["name"]: e for e in c.get("env", [])}
    for var in ["EPPMUX_UPSTREAM_CERT_PEM", "EPPMUX_UPSTREAM_KEY_PEM", "EPPMUX_TLS_CERT_PEM", "EPPMUX_TLS_KEY_PEM"]:
        if "secretKeyRef" not in env.get(var, {}).get("valueFrom", {}):
            err(f"{var} must come from a Secret")
    if not env.get("EPPMUX_UPSTREAM_KEY_PASSPHRASE", {}).get("valueFrom", {}).get("secretKeyRef", {}).get("optional"):
        err("EPPMUX_UPSTREAM_KEY_PASSPHRASE must come from an optional Secret key")
    # Probes on the admin port: liveness the process, readiness the registry session.
    for probe, want in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        g = c.get(probe, {}).get("httpGet", {})
        if g.get("path") != want or g.get("port") not in ("admin", ports.get("admin")):
            err(f"{probe} must GET {want} on the admin port")
    # The grace period covers the preStop sleep, the drain and the logouts.
    sleep = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    drain = duration(conf.get("shutdown_timeout", "10s"))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace < sleep + drain + 5:
        err(f"terminationGracePeriodSeconds {grace} < preStop {sleep} s + shutdown_timeout {drain} s + 5 s")
    if dep["spec"].get("minReadySeconds", 0) <= sleep + drain:
        err("minReadySeconds should outlast an old pod's drain (preStop + shutdown_timeout)")
    for name, sel in (("Service", svc["spec"]["selector"]), ("PodDisruptionBudget", pdb["spec"]["selector"]["matchLabels"]),
                      ("Deployment", dep["spec"]["selector"]["matchLabels"])):
        if any(labels.get(k) != v for k, v in sel.items()):
            err(f"the {name}'s selector {sel} does not match the pod's labels {labels}")
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    if svc_ports.get("epp", {}).get("port") != 700 or svc_ports["epp"].get("targetPort") not in ("epp", ports.get("epp")):
        err("the Service should offer EPP on port 700 (epplib's default) to the container port epp")
    if svc_ports.get("admin", {}).get("targetPort") not in ("admin", ports.get("admin")):
        err("the Service should offer the admin port")
    if "prometheus.io/scrape" in dep["spec"]["template"]["metadata"].get("annotations", {}):
        err("no prometheus.io/scrape annotation: the generic job sends no token and gets 401")
    replicas = dep["spec"].get("replicas", 1)
    pools = [(a["clid"], a.get("pool_max", 4)) for a in conf.get("account", [])]
    return {"replicas": replicas, "pools": pools, "labels": labels, "ports": ports, "pod": pod,
            "admin_secret": next((s for f, (k, s, key) in files.items() if f == conf.get("admin_token_file")), None),
            "admin_key": files.get(conf.get("admin_token_file"), (None, None, None))[2]}

facts = [check(r) for r in renders]
facts = [f for f in facts if f]
for f in facts:
    print(f"check-deploy: {f['replicas']} replica(s) × pool_max {f['pools']}")

# Prometheus: the PodMonitor and the scrape job find the pods and send the token.
if facts:
    f = facts[0]
    pm = yaml.safe_load(open("deploy/prometheus/podmonitor.yaml"))
    sel = pm["spec"]["selector"]["matchLabels"]
    if any(f["labels"].get(k) != v for k, v in sel.items()):
        errors.append(f"podmonitor.yaml: selector {sel} does not match the pod's labels")
    (ep,) = pm["spec"]["podMetricsEndpoints"]
    if ep.get("port") not in f["ports"] or ep["port"] != "admin":
        errors.append("podmonitor.yaml: should scrape the container port named admin")
    cred = ep.get("authorization", {}).get("credentials", {})
    if (cred.get("name"), cred.get("key")) != (f["admin_secret"], f["admin_key"]):
        errors.append(f"podmonitor.yaml: the bearer token should be {f['admin_secret']}/{f['admin_key']}, the one eppmux reads")
    sc = yaml.safe_load(open("deploy/prometheus/scrape.yml"))
    (job,) = sc["scrape_configs"]
    keeps = {r["source_labels"][0]: r["regex"] for r in job["relabel_configs"] if r.get("action") == "keep"}
    if keeps.get("__meta_kubernetes_pod_label_app_kubernetes_io_name") != f["labels"].get("app.kubernetes.io/name") \
            or keeps.get("__meta_kubernetes_pod_container_port_name") != "admin":
        errors.append("scrape.yml: should keep eppmux's pods (by label) and their admin port only")
    if job.get("authorization", {}).get("type") != "Bearer":
        errors.append("scrape.yml: the job must send the admin bearer token")
    if promtool:
        # Debian's promtool is built without Kubernetes discovery: check the rest of the job
        # with a static target and a token file that exists.
        token = os.path.join(work, "token"); open(token, "w").write("x")
        job = dict(job); job.pop("kubernetes_sd_configs"); job["static_configs"] = [{"targets": ["127.0.0.1:9700"]}]
        job["authorization"] = dict(job["authorization"], credentials_file=token)
        cfg = os.path.join(work, "scrape-static.yml"); yaml.safe_dump({"scrape_configs": [job]}, open(cfg, "w"))
        r = subprocess.run([promtool, "check", "config", cfg], capture_output=True, text=True)
        if r.returncode: errors.append(f"scrape.yml: promtool check config: {r.stdout}{r.stderr}")

# Alert rules: promtool checks them and runs alerts.test.yml; without it, the structure only.
rules = yaml.safe_load(open("deploy/prometheus/alerts.yml"))
alerts = [r for g in rules["groups"] for r in g["rules"]]
for r in alerts:
    if not (r.get("alert") and r.get("expr") and r.get("labels", {}).get("severity") in ("warning", "critical")
            and r.get("annotations", {}).get("summary") and r["annotations"].get("description")):
        errors.append(f"alerts.yml: {r.get('alert')}: needs alert, expr, a severity, a summary and a description")
tested = {t["alertname"] for c in yaml.safe_load(open("deploy/prometheus/alerts.test.yml"))["tests"]
          for t in c.get("alert_rule_test", []) if t.get("exp_alerts")}
for r in alerts:
    if r["alert"] not in tested:
        errors.append(f"alerts.test.yml: no test makes {r['alert']} fire")
if promtool:
    for cmd in (["check", "rules", "deploy/prometheus/alerts.yml"], ["test", "rules", "deploy/prometheus/alerts.test.yml"]):
        r = subprocess.run([promtool, *cmd], capture_output=True, text=True)
        if r.returncode: errors.append(f"promtool {' '.join(cmd)}:\n{r.stdout}{r.stderr}")
    print(f"check-deploy: promtool: {len(alerts)} alert rules checked, their unit tests pass")

# Grafana: structure, and every query parsed by promtool (as recording rules, with Grafana's
# variables replaced by values of the same shape).
dash = json.load(open("deploy/grafana/eppmux.json"))
exprs, ids, cells = [], set(), {}
for p in dash["panels"]:
    if p["id"] in ids: errors.append(f"eppmux.json: duplicate panel id {p['id']}")
    ids.add(p["id"])
    g = p["gridPos"]
    if g["x"] + g["w"] > 24: errors.append(f"eppmux.json: panel {p['title']!r} is wider than the grid")
    for x in range(g["x"], g["x"] + g["w"]):
        for y in range(g["y"], g["y"] + g["h"]):
            if (x, y) in cells: errors.append(f"eppmux.json: {p['title']!r} overlaps {cells[(x, y)]!r}")
            cells[(x, y)] = p["title"]
    if p["type"] == "row": continue
    if not p.get("description"): errors.append(f"eppmux.json: {p['title']!r} has no description (what it answers)")
    if p.get("datasource", {}).get("uid") != "${datasource}":
        errors.append(f"eppmux.json: {p['title']!r} should use the $datasource variable")
    for t in p.get("targets", []):
        exprs.append((p["title"], t["expr"]))
for v in dash["templating"]["list"]:
    if v["type"] == "query":
        exprs.append((f"variable {v['name']}", re.sub(r"label_values\((.*), *\w+\)$", r"\1", v["definition"])))
if not exprs: errors.append("eppmux.json: no queries")
if promtool:
    subst = {"$__rate_interval": "5m", "$__range": "6h", "$registry": ".*", "$account": ".*"}
    rec = []
    for i, (title, e) in enumerate(exprs):
        for k, v in subst.items(): e = e.replace(k, v)
        if "$" in e: errors.append(f"eppmux.json: {title}: unknown variable in {e}")
        rec.append({"record": f"dashboard:query_{i}", "expr": e})
    rf = os.path.join(work, "dashboard-rules.yml")
    yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rec}]}, open(rf, "w"))
    r = subprocess.run([promtool, "check", "rules", rf], capture_output=True, text=True)
    if r.returncode: errors.append(f"eppmux.json: promtool rejects a query:\n{r.stdout}{r.stderr}")
print(f"check-deploy: dashboard: {len(ids)} panels, {len(exprs)} queries"
      + (" parsed by promtool" if promtool else " (promtool missing: not parsed)"))
if errors:
    print("\n".join("check-deploy: FAIL: " + e for e in errors)); sys.exit(1)
PY
if [ ${#skipped[@]} -gt 0 ]; then
  say "PASS with ${#skipped[@]} check(s) skipped ($(( $(date +%s) - start )) s)"
else
  say "PASS ($(( $(date +%s) - start )) s)"
fi
