//! The deployment files against the eppmux they deploy. Every metric name and label that the
//! Grafana dashboard (deploy/grafana/eppmux.json), the alert rules (deploy/prometheus/alerts.yml)
//! and the rules' unit tests query must be in a real /metrics scrape taken after a workload; and
//! the Kubernetes base and overlay run the real binary against the mock registry, with only what
//! the cluster supplies mapped to this machine. scripts/check-deploy.sh checks the same files'
//! syntax and structure with kubectl, kubernetes-validate and promtool.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use eppmux_mock::{Fault, MockConfig};
use tokio::io::{AsyncBufReadExt, BufReader};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Labels a query may use on any eppmux series without a scrape showing them: the ones
/// Prometheus adds to every target (`instance`, `job`, and `namespace`/`pod` from
/// deploy/prometheus/scrape.yml), and `registry`, which every per-account metric is about to
/// get (queries aggregate `by (registry, account)` so they keep working; today it is empty).
const TARGET_LABELS: [&str; 5] = ["instance", "job", "namespace", "pod", "registry"];

/// The only series a query may name outside eppmux's own: Prometheus's scrape health.
const PROMETHEUS_SERIES: [&str; 1] = ["up"];

/// A series name Prometheus stores for eppmux, with the labels seen on its samples.
#[derive(Debug, Default)]
struct Series {
    family: String,
    kind: String,
    labels: BTreeSet<String>,
    sampled: bool,
}

/// The series names an OpenMetrics scrape defines: a family appears in its `# TYPE` line even
/// before it has a sample; counters are stored as `<family>_total`, histograms as
/// `<family>_bucket` (with `le`), `_sum` and `_count`, gauges under the family's own name.
fn series_of_scrape(text: &str) -> BTreeMap<String, Series> {
    let mut series = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(family), Some(kind)) = (words.next(), words.next()) else {
            panic!("unreadable TYPE line: {line}");
        };
        let names: Vec<String> = match kind {
            "counter" => vec![format!("{family}_total")],
            "histogram" => ["_bucket", "_sum", "_count"]
                .iter()
                .map(|s| format!("{family}{s}"))
                .collect(),
            "gauge" => vec![family.to_string()],
            other => panic!("{family}: a {other}, which no query here expects"),
        };
        for name in names {
            series.insert(
                name,
                Series {
                    family: family.to_string(),
                    kind: kind.to_string(),
                    ..Default::default()
                },
            );
        }
    }
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..end];
        let s = series
            .get_mut(name)
            .unwrap_or_else(|| panic!("a sample of {name} without a # TYPE line: {line}"));
        s.sampled = true;
        if line[end..].starts_with('{') {
            let (labels, _) = selector(&line[end..]);
            s.labels.extend(labels);
        }
    }
    series
}

/// What one query uses: the series it names, with the label names matched on each, and the
/// label names it groups or joins by.
#[derive(Debug, Default)]
struct Uses {
    series: Vec<(String, Vec<String>)>,
    grouping: Vec<String>,
}

/// The label names of a `{name op "value", …}` selector at the start of `s`, and the bytes it
/// takes.
fn selector(s: &str) -> (Vec<String>, usize) {
    let b = s.as_bytes();
    assert_eq!(b[0], b'{');
    let (mut i, mut names) = (1, Vec::new());
    loop {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b',') {
            i += 1;
        }
        if i >= b.len() || b[i] == b'}' {
            return (names, i + 1);
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        names.push(s[start..i].to_string());
        while i < b.len() && b[i] != b'"' && b[i] != b'\'' {
            i += 1;
        }
        i += string_len(&s[i..]);
    }
}

/// The length of the quoted string at the start of `s`, quotes included.
fn string_len(s: &str) -> usize {
    let b = s.as_bytes();
    let quote = b[0];
    let mut i = 1;
    while i < b.len() && b[i] != quote {
        i += if b[i] == b'\\' && quote != b'`' { 2 } else { 1 };
    }
    i + 1
}

/// The series and labels a PromQL expression (or a Grafana `label_values(…)`) uses.
///
/// Written here rather than taken from the `promql-parser` crate, which parses PromQL fully
/// but builds its grammar at compile time (lrlex/lrpar): about 50 s more of test build on 2
/// cores for what needs only identifiers, selectors and grouping lists. Whether the queries
/// parse is promtool's job in scripts/check-deploy.sh.
fn uses(expr: &str) -> Uses {
    const KEYWORDS: [&str; 12] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "atan2",
    ];
    const AGGREGATIONS: [&str; 14] = [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    let b = expr.as_bytes();
    let mut u = Uses::default();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            i += string_len(&expr[i..]);
        } else if c == b'[' {
            // A range or subquery duration, Grafana variables included.
            i += expr[i..].find(']').expect("an unclosed [") + 1;
        } else if c == b'{' {
            // A selector without a metric name.
            let (labels, len) = selector(&expr[i..]);
            u.series.push((String::new(), labels));
            i += len;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            let word = &expr[start..i];
            let next = expr[i..].trim_start();
            let skipped = expr.len() - i - next.len();
            if KEYWORDS.contains(&word) {
                if matches!(
                    word,
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                ) && next.starts_with('(')
                {
                    let close = next.find(')').expect("an unclosed (");
                    u.grouping.extend(
                        next[1..close]
                            .split(',')
                            .map(str::trim)
                            .filter(|l| !l.is_empty())
                            .map(str::to_string),
                    );
                    i += skipped + close + 1;
                }
            } else if next.starts_with('(') || AGGREGATIONS.contains(&word) {
                // A function (rate, histogram_quantile, label_values, …) or an aggregation,
                // whose `by (…)` may come before its parenthesis.
            } else {
                let mut labels = Vec::new();
                if next.starts_with('{') {
                    let (l, len) = selector(next);
                    labels = l;
                    i += skipped + len;
                }
                u.series.push((word.to_string(), labels));
            }
        } else if c.is_ascii_digit() || c == b'.' {
            // A number; `1e3` and `0x1F` are read whole so their letters are no metric.
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    u
}

/// `(where, query)` for every query of the dashboard: panel targets (rows' nested panels
/// included) and the template variables.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = format!("{ROOT}/deploy/grafana/eppmux.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut out = Vec::new();
    fn panels(list: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for p in list.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((format!("panel {:?}", p["title"]), e.to_string()));
                }
            }
            panels(&p["panels"], out);
        }
    }
    panels(&dash["panels"], &mut out);
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(d) = v["definition"].as_str() {
            out.push((format!("variable {}", v["name"]), variable_query(d)));
        }
    }
    out
}

/// A Grafana variable's `label_values(SELECTOR, LABEL)` as the PromQL that uses the same
/// series and label: `count by (LABEL) (SELECTOR)`.
fn variable_query(definition: &str) -> String {
    let inner = definition
        .strip_prefix("label_values(")
        .and_then(|d| d.strip_suffix(')'))
        .unwrap_or_else(|| panic!("a variable that is not label_values(…, …): {definition}"));
    let (selector, label) = inner
        .rsplit_once(',')
        .unwrap_or_else(|| panic!("label_values without a metric: {definition}"));
    format!("count by ({}) ({selector})", label.trim())
}

/// `(where, query)` for every rule of alerts.yml, and every input series of alerts.test.yml (a
/// series written there is a selector too), read with PyYAML as scripts/check-deploy.sh does.
fn rule_queries() -> Vec<(String, String)> {
    let script = r#"
import json, sys, yaml
rules = yaml.safe_load(open(sys.argv[1]))
tests = yaml.safe_load(open(sys.argv[2]))
out = [("alert " + r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]
out += [("alerts.test.yml", s["series"]) for t in tests["tests"] for s in t["input_series"]]
print(json.dumps(out))
"#;
    script_json(
        script,
        &[
            "deploy/prometheus/alerts.yml",
            "deploy/prometheus/alerts.test.yml",
        ],
    )
}

/// Every way `queries` do not fit `scrape`, one line each.
fn mismatches(queries: &[(String, String)], scrape: &BTreeMap<String, Series>) -> Vec<String> {
    let mut wrong = Vec::new();
    for (place, q) in queries {
        let u = uses(q);
        let mut known: BTreeSet<&str> = TARGET_LABELS.into_iter().collect();
        // Grouping labels can only be compared when every series in the query has samples.
        let mut all_sampled = true;
        for (name, labels) in &u.series {
            if name.is_empty() || PROMETHEUS_SERIES.contains(&name.as_str()) {
                known.extend(labels.iter().map(String::as_str));
                continue;
            }
            let Some(s) = scrape.get(name) else {
                let hint = scrape
                    .iter()
                    .find(|(_, s)| *name == s.family || name.starts_with(&s.family))
                    .map(|(n, s)| format!(" (eppmux has the {} {}: {n})", s.kind, s.family))
                    .unwrap_or_default();
                wrong.push(format!("{place}: {name} is not in the scrape{hint}"));
                continue;
            };
            known.extend(s.labels.iter().map(String::as_str));
            if !s.sampled {
                // No sample, so no labels to compare with (the workload did not reach it).
                all_sampled = false;
                continue;
            }
            for l in labels {
                if !s.labels.contains(l) && !TARGET_LABELS.contains(&l.as_str()) {
                    wrong.push(format!(
                        "{place}: {name} has no label {l:?} (it has {:?})",
                        s.labels
                    ));
                }
            }
        }
        for l in &u.grouping {
            if all_sampled && !known.contains(l.as_str()) {
                wrong.push(format!(
                    "{place}: groups by {l:?}, a label none of its series has"
                ));
            }
        }
    }
    wrong
}

async fn scrape_after_a_workload() -> String {
    let h = Harness::start(MockConfig::default(), |cfg| {
        cfg.registries[0].accounts[0].pool_min = 1;
        cfg.registries[0].accounts[0].pool_max = 1;
        cfg.registries[0].accounts[0].lifecycle.keepalive = Some(Duration::from_millis(50));
        cfg.registries[0].queue_max = 1;
    })
    .await;
    h.mock
        .wait_until(|m| m.stats().hellos.load(Relaxed) >= 1)
        .await;
    let mut a = h.logged_in().await;
    for (verb, name) in [
        ("check", "d1.gov"),
        ("create", "d1.gov"),
        ("info", "d1.gov"),
    ] {
        assert_eq!(a.command(&domain_cmd(verb, name, "D")).await.code, 1000);
    }
    // A forgotten session (sent again), and a transform whose answer is lost (not replayed).
    h.mock.push_fault(Fault::NotLoggedIn);
    assert_eq!(
        a.command(&domain_cmd("check", "d2.gov", "D2")).await.code,
        1000
    );
    h.mock.push_fault(Fault::DropAfterExecute);
    a.send(Bytes::from(domain_cmd("create", "d3.gov", "D3")))
        .await;
    a.expect_closed().await;
    // A refused login on the replacement session, then the one session held, one command
    // waiting, and one more refused with 2400.
    h.mock.push_login_refusal(2501);
    let pool = &h.proxy.pools()[0];
    pool.wait_for(|s| s.live == 1).await;
    let mut holder = h.logged_in().await;
    holder
        .send(Bytes::from(domain_cmd("check", "hold-d.gov", "H")))
        .await;
    h.mock.wait_held(1).await;
    let mut waiter = h.logged_in().await;
    waiter
        .send(Bytes::from(domain_cmd("check", "w.gov", "W")))
        .await;
    pool.wait_for(|s| s.waiting == 1).await;
    let mut c = h.logged_in().await;
    assert_eq!(
        c.command(&domain_cmd("check", "x.gov", "X")).await.code,
        2400
    );
    c.send(sample("hostile-entities.xml")).await;
    assert_eq!(c.recv_response().await.code, 2001);
    let (code, metrics) = eppmux::admin::get(
        h.proxy.admin_addr.unwrap(),
        "/metrics",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{metrics}");
    h.mock.release_held(1);
    assert_eq!(holder.recv_response().await.code, 1000);
    assert_eq!(waiter.recv_response().await.code, 1000);
    h.stop().await;
    metrics
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_and_label_the_dashboard_and_the_alerts_query_is_in_a_real_scrape() {
    let text = scrape_after_a_workload().await;
    let scrape = series_of_scrape(&text);
    // The label checks below are only as good as the samples: the workload reaches these.
    for name in [
        "eppmux_upstream_sessions",
        "eppmux_upstream_logins_total",
        "eppmux_commands_forwarded_total",
        "eppmux_command_duration_seconds_bucket",
        "eppmux_queue_wait_seconds_bucket",
        "eppmux_pool_exhausted_total",
        "eppmux_retries_total",
        "eppmux_retries_refused_total",
        "eppmux_client_connections",
        "eppmux_frames_rejected_total",
        "eppmux_certificate_expiry_seconds",
    ] {
        assert!(
            scrape.get(name).is_some_and(|s| s.sampled),
            "the workload left {name} without a sample:\n{text}"
        );
    }
    let dashboard = dashboard_queries();
    let rules = rule_queries();
    assert!(
        dashboard.len() >= 20 && rules.len() >= 20,
        "{} dashboard and {} rule queries: were the files read?",
        dashboard.len(),
        rules.len()
    );
    let mut used = BTreeSet::new();
    for (_, q) in dashboard.iter().chain(&rules) {
        used.extend(uses(q).series.into_iter().map(|(n, _)| n));
    }
    let unsampled: Vec<&String> = scrape
        .iter()
        .filter(|(n, s)| !s.sampled && used.contains(*n))
        .map(|(n, _)| n)
        .collect();
    println!("queried, but without a sample after the workload (names checked, labels not): {unsampled:?}");
    let wrong = mismatches(&[dashboard, rules].concat(), &scrape);
    assert!(
        wrong.is_empty(),
        "queries that a real eppmux cannot answer:\n  {}\n\nthe scrape:\n{text}",
        wrong.join("\n  ")
    );
    // Every family eppmux exposes is on the dashboard or in a rule.
    let families: BTreeSet<&str> = scrape.values().map(|s| s.family.as_str()).collect();
    let unused: Vec<&&str> = families
        .iter()
        .filter(|f| {
            !used
                .iter()
                .any(|u| scrape.get(u).is_some_and(|s| s.family == **f))
        })
        .collect();
    assert!(
        unused.is_empty(),
        "metrics neither the dashboard nor the alerts show: {unused:?}"
    );
}

#[test]
fn the_query_check_names_a_misspelt_metric_a_missing_suffix_and_a_wrong_label() {
    let scrape = series_of_scrape(
        "# TYPE eppmux_pool_exhausted counter\n\
         eppmux_pool_exhausted_total{account=\"a\"} 1\n\
         # TYPE eppmux_upstream_sessions gauge\n\
         eppmux_upstream_sessions{account=\"a\",state=\"idle\"} 1\n\
         # TYPE eppmux_queue_wait_seconds histogram\n\
         eppmux_queue_wait_seconds_bucket{account=\"a\",le=\"+Inf\"} 1\n",
    );
    let q = |s: &str| vec![("q".to_string(), s.to_string())];
    let fits = |s: &str| mismatches(&q(s), &scrape);
    assert_eq!(
        fits(
            r#"sum by (registry, account, le) (rate(eppmux_queue_wait_seconds_bucket{account=~"$account"}[$__rate_interval])) / on (instance) group_left up{job=~"(.+/)?eppmux"}"#
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        fits(r#"sum by (registry, account) (eppmux_upstream_sessions{state=~"idle|busy"}) == 0"#),
        Vec::<String>::new()
    );
    assert_eq!(
        fits("rate(eppmux_pool_exhaustd_total[5m])"),
        ["q: eppmux_pool_exhaustd_total is not in the scrape"]
    );
    assert_eq!(
        fits("rate(eppmux_pool_exhausted[5m])"),
        ["q: eppmux_pool_exhausted is not in the scrape (eppmux has the counter eppmux_pool_exhausted: eppmux_pool_exhausted_total)"]
    );
    assert_eq!(
        fits(r#"eppmux_upstream_sessions{stat="idle"}"#),
        ["q: eppmux_upstream_sessions has no label \"stat\" (it has {\"account\", \"state\"})"]
    );
    assert_eq!(
        fits("sum by (acount) (eppmux_upstream_sessions)"),
        ["q: groups by \"acount\", a label none of its series has"]
    );
    // Names in strings, durations and numbers are no metrics; a name without prefix is one.
    assert_eq!(
        fits(&format!(
            "{} > 1e3",
            variable_query(
                r#"label_values(eppmux_upstream_sessions{account=~"eppmux_x"}, account)"#
            )
        )),
        Vec::<String>::new()
    );
    assert_eq!(
        fits("pool_exhausted_total > 0"),
        ["q: pool_exhausted_total is not in the scrape"]
    );
    assert_eq!(
        fits(&variable_query(
            "label_values(eppmux_upstream_sessions, acount)"
        )),
        ["q: groups by \"acount\", a label none of its series has"]
    );
}

/// A volume mount: its kind, the Secret's name, and its items as (key, file name).
type Mount = (String, String, Vec<(String, String)>);

/// Deployment facts, read from deploy/kubernetes/base/deployment.yaml with PyYAML.
#[derive(serde::Deserialize)]
struct Container {
    args: Vec<String>,
    /// variable → (Secret, key, optional)
    env: BTreeMap<String, (String, String, bool)>,
    /// mount path → ("configMap", "", []) or ("secret", name, [(key, path)])
    mounts: BTreeMap<String, Mount>,
    grace: u64,
    pre_stop_sleep: u64,
}

fn deployment() -> Container {
    let script = r#"
import json, sys, yaml
d = yaml.safe_load(open(sys.argv[1]))
pod = d["spec"]["template"]["spec"]
(c,) = pod["containers"]
vols = {v["name"]: v for v in pod["volumes"]}
mounts = {}
for m in c["volumeMounts"]:
    v = vols[m["name"]]
    if "secret" in v:
        mounts[m["mountPath"]] = ("secret", v["secret"]["secretName"],
                                  [(i["key"], i["path"]) for i in v["secret"]["items"]])
    else:
        mounts[m["mountPath"]] = ("configMap", "", [])
env = {e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"],
                   bool(e["valueFrom"]["secretKeyRef"].get("optional"))) for e in c["env"]}
print(json.dumps({"args": c["args"], "env": env, "mounts": mounts,
                  "grace": pod["terminationGracePeriodSeconds"],
                  "pre_stop_sleep": c["lifecycle"]["preStop"]["sleep"]["seconds"]}))
"#;
    script_json(script, &["deploy/kubernetes/base/deployment.yaml"])
}

/// GET with a bearer token (eppmux::admin::get sends none).
async fn get_with_token(addr: std::net::SocketAddr, path: &str, token: &str) -> (u16, String) {
    use http_body_util::{BodyExt, Empty};
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Runs the Deployment's container as the cluster would, with `toml` as the ConfigMap: each
/// mounted file and each Secret variable made from the example certificates, and only the
/// addresses changed (flags win over the file): the listeners on loopback ports, the registry at
/// the mock. Logs in through the TLS listener, checks the admin token, then sends SIGTERM and
/// times the drain against the pod's grace period.
async fn run_as_the_deployment_does(toml_path: &Path, want_pool_max: usize) {
    init_tracing();
    let mock = start_mock(MockConfig::default()).await;
    let dep = deployment();
    let dir = tempfile::tempdir().unwrap();
    let token = "k8s-admin-token-0123456789";
    let secret = |name: &str, key: &str| -> Option<String> {
        let file = |f: &str| std::fs::read_to_string(cert(f)).unwrap();
        match (name, key) {
            ("eppmux-registry", "tls.crt") => Some(file("client.pem")),
            ("eppmux-registry", "tls.key") => Some(file("client-key.pem")),
            ("eppmux-registry", "password") => Some(format!("{PASSWORD}\n")),
            ("eppmux-registry", "key-passphrase") => None,
            ("eppmux-listener-tls", "tls.crt") => Some(file("server.pem")),
            ("eppmux-listener-tls", "tls.key") => Some(file("server-key.pem")),
            ("eppmux-admin-token", "token") => Some(token.to_string()),
            _ => panic!("the Deployment names a Secret key this test does not know: {name}/{key}"),
        }
    };
    // Mounts: every path under the temporary directory instead of /.
    let local = |p: &str| -> PathBuf { dir.path().join(p.trim_start_matches('/')) };
    let mut toml_text = std::fs::read_to_string(toml_path).unwrap();
    let mut config_mount = None;
    for (mount, (kind, name, items)) in &dep.mounts {
        std::fs::create_dir_all(local(mount)).unwrap();
        if kind == "secret" {
            for (key, path) in items {
                let value = secret(name, key).expect("a mounted Secret key must exist");
                std::fs::write(local(mount).join(path), value).unwrap();
            }
        } else {
            config_mount = Some(mount.clone());
        }
        toml_text = toml_text.replace(
            &format!("\"{mount}/"),
            &format!("\"{}/", local(mount).display()),
        );
    }
    let config_mount = config_mount.expect("the ConfigMap is mounted");
    std::fs::write(local(&config_mount).join("eppmux.toml"), &toml_text).unwrap();
    let mut args: Vec<String> = dep.args.clone();
    let at = args.iter().position(|a| a == "--config").unwrap() + 1;
    assert_eq!(args[at], format!("{config_mount}/eppmux.toml"));
    args[at] = local(&args[at]).display().to_string();
    let (epp, admin) = (free_port(), free_port());
    let mut cmd = tokio::process::Command::from(eppmux_command());
    cmd.args(&args)
        .args(["--listen-tls", &format!("127.0.0.1:{epp}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(["--upstream", &mock.addr.to_string()])
        .args(["--upstream-server-name", "localhost", "--upstream-ca"])
        .arg(cert("ca.pem"))
        .args(["--log-format", "text"])
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (var, (name, key, optional)) in &dep.env {
        match secret(name, key) {
            Some(v) => {
                cmd.env(var, v);
            }
            None => assert!(optional, "{var}: {name}/{key} is missing and not optional"),
        }
    }
    let mut child = cmd.spawn().unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
    read_log_until(&mut log, "account ready").await;
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let wait = Duration::from_secs(5);
    assert_eq!(
        eppmux::admin::get(admin, "/readyz", wait).await.unwrap().0,
        200
    );
    assert_eq!(
        eppmux::admin::get(admin, "/metrics", wait).await.unwrap().0,
        401,
        "/metrics without the token from the Secret"
    );
    let (code, metrics) = get_with_token(admin, "/metrics", token).await;
    assert_eq!(code, 200);
    assert!(metrics.contains("# TYPE eppmux_upstream_sessions gauge"));
    let (_, status) = get_with_token(admin, "/status", token).await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        status["accounts"][0]["pool_max"].as_u64(),
        Some(want_pool_max as u64),
        "{status}"
    );
    // An application's session through the TLS listener, with the listener Secret's certificate.
    let mut c = Client::tls(format!("127.0.0.1:{epp}").parse().unwrap(), None).await;
    c.greeting().await;
    assert_eq!(c.command(&login_xml(CLID, PASSWORD, "K1")).await.code, 1000);
    assert_eq!(
        c.command(&domain_cmd("check", "k8s.gov", "K2")).await.code,
        1000
    );
    // SIGTERM as the kubelet sends it after the preStop sleep: eppmux drains and exits well
    // within what is left of the grace period.
    let pid = child.id().unwrap().to_string();
    let sent = Instant::now();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let left = Duration::from_secs(dep.grace - dep.pre_stop_sleep);
    let status = tokio::time::timeout(left, child.wait())
        .await
        .expect("eppmux exits within the grace period after preStop")
        .unwrap();
    assert!(status.success(), "{status}");
    c.expect_closed().await;
    let mut rest = String::new();
    while let Ok(Some(line)) = log.next_line().await {
        rest.push_str(&line);
        rest.push('\n');
    }
    assert!(
        !rest.contains("ERROR") && !rest.contains(PASSWORD) && !rest.contains(token),
        "{rest}"
    );
    assert!(
        !rest.contains("readable by other users"),
        "key files that others can read: {rest}"
    );
    assert_eq!(
        commands_named(&mock, "logout"),
        mock.stats().logins.load(Relaxed),
        "every registry session logged out in the drain ({:?} after SIGTERM)",
        sent.elapsed()
    );
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_base_runs_eppmux_from_its_configmap_and_secrets_and_drains_on_sigterm() {
    run_as_the_deployment_does(
        Path::new(&format!("{ROOT}/deploy/kubernetes/base/eppmux.toml")),
        4,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_two_replica_overlay_runs_eppmux_with_pool_max_40() {
    run_as_the_deployment_does(
        Path::new(&format!(
            "{ROOT}/deploy/kubernetes/overlays/two-replicas/eppmux.toml"
        )),
        40,
    )
    .await;
}

#[test]
fn the_overlay_toml_is_the_base_toml_but_for_the_pool_sizes() {
    let read = |p: &str| -> toml::Table {
        toml::from_str(&std::fs::read_to_string(format!("{ROOT}/deploy/kubernetes/{p}")).unwrap())
            .unwrap()
    };
    let (mut base, mut overlay) = (
        read("base/eppmux.toml"),
        read("overlays/two-replicas/eppmux.toml"),
    );
    let pools = |t: &mut toml::Table| -> HashMap<String, toml::Value> {
        let acc = t["account"].as_array_mut().unwrap()[0]
            .as_table_mut()
            .unwrap();
        ["pool_min", "pool_max"]
            .iter()
            .map(|k| (k.to_string(), acc.remove(*k).unwrap()))
            .collect()
    };
    let (b, o) = (pools(&mut base), pools(&mut overlay));
    assert_eq!(
        base, overlay,
        "the overlay's eppmux.toml drifted from the base's"
    );
    assert_eq!(b["pool_max"].as_integer(), Some(4));
    // floor(cap × 0.8 / replicas) for .gov's cap of 100 and 2 replicas.
    assert_eq!(o["pool_max"].as_integer(), Some(100 * 8 / 10 / 2));
}

/// What a Python `script` (PyYAML at hand, as in scripts/check-deploy.sh) prints as JSON, given
/// these repository files as arguments.
fn script_json<T: serde::de::DeserializeOwned>(script: &str, files: &[&str]) -> T {
    let files = files.iter().map(|f| format!("{ROOT}/{f}"));
    python_json(
        ["-c".to_string(), script.to_string()]
            .into_iter()
            .chain(files),
    )
}
