//! eppmux driven by the real cisagov/epplib (installed by scripts/install-test-deps.sh from the
//! source archive beside the repository), as getgov runs it: the snippet docs/epplib.md shows,
//! read from the doc itself; the trust bundle `eppmux ca-bundle` writes; and a getgov-shaped load
//! (tests/interop/getgov_workers.py: worker processes with gevent, a pool of connections per
//! worker, getgov's retry rules, workers recycled every N requests).
//!
//! When epplib or gevent cannot be imported, each test prints a `SKIPPED:` line with the reason
//! (counted by scripts/test.sh) and returns: the library is not on PyPI, so a machine without the
//! archive and without access to GitHub cannot have it.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Output;
use std::sync::atomic::Ordering::Relaxed;

use common::*;
use eppmux_mock::MockConfig;
use tokio::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The first ```python block of docs/epplib.md, exactly as the reader sees it.
fn documented_snippet() -> String {
    let doc = std::fs::read_to_string(format!("{ROOT}/docs/epplib.md")).unwrap();
    let start = doc
        .find("```python\n")
        .expect("docs/epplib.md has a python block")
        + 10;
    let len = doc[start..].find("```").expect("the python block ends");
    doc[start..start + len].to_string()
}

/// `eppmux ca-bundle --ca certs-example/ca.pem` into `dir`, with a decoy SSL_CERT_FILE that the
/// command must not take for the system store.
fn write_bundle(dir: &Path) -> std::path::PathBuf {
    let out = dir.join("trust-bundle.pem");
    let run = eppmux_command()
        .args(["ca-bundle", "--ca"])
        .arg(cert("ca.pem"))
        .arg("--out")
        .arg(&out)
        .env("SSL_CERT_FILE", cert("ca.pem"))
        .env_remove("SSL_CERT_DIR")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "ca-bundle: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    out
}

/// python3 with only `cert_file` as its trust (SSL_CERT_DIR removed, since a directory of system
/// CAs would hide what the file lacks), or with the platform default when `None`.
fn python(cert_file: Option<&Path>) -> Command {
    let mut cmd = Command::new("python3");
    cmd.env_remove("SSL_CERT_DIR").env_remove("SSL_CERT_FILE");
    if let Some(f) = cert_file {
        cmd.env("SSL_CERT_FILE", f);
    }
    cmd
}

fn stdout_of(label: &str, out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{label} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// SHA-256 of every CA certificate Python's default context trusts.
async fn python_trust(cert_file: Option<&Path>) -> HashSet<String> {
    let out = python(cert_file)
        .args([
            "-c",
            "import hashlib, ssl\n\
             for der in ssl.create_default_context().get_ca_certs(binary_form=True):\n\
             \x20   print(hashlib.sha256(der).hexdigest())",
        ])
        .output()
        .await
        .unwrap();
    stdout_of("python trust listing", &out)
        .lines()
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trust_bundle_holds_every_system_root_and_eppmux_ca() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = write_bundle(dir.path());
    let system = python_trust(None).await;
    let eppmux_ca = python_trust(Some(&cert("ca.pem"))).await;
    let trusted = python_trust(Some(&bundle)).await;
    assert!(
        system.len() >= 10,
        "Python's default trust on this machine has {} CAs; the check below would say little",
        system.len()
    );
    // What docs/epplib.md warns about: the CA alone replaces the whole system store.
    assert_eq!(eppmux_ca.len(), 1);
    assert!(eppmux_ca.is_disjoint(&system));
    let missing: Vec<_> = system.difference(&trusted).collect();
    assert!(
        missing.is_empty(),
        "{} system CAs are missing from the bundle",
        missing.len()
    );
    assert!(
        trusted.is_superset(&eppmux_ca),
        "eppmux's CA is in the bundle"
    );
    // Written again over itself, with SSL_CERT_FILE pointing at it, it stays the same set.
    let again = eppmux_command()
        .args(["ca-bundle", "--ca"])
        .arg(cert("ca.pem"))
        .arg("--out")
        .arg(&bundle)
        .env("SSL_CERT_FILE", &bundle)
        .output()
        .unwrap();
    assert!(again.status.success());
    assert_eq!(python_trust(Some(&bundle)).await, trusted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_snippet_runs_verbatim_with_real_epplib_through_the_trust_bundle() {
    const TEST: &str =
        "the_documented_snippet_runs_verbatim_with_real_epplib_through_the_trust_bundle";
    if let Err(why) = python_modules(&["epplib"]) {
        return skip(TEST, &why);
    }
    let h = Harness::start(MockConfig::default(), |cfg| {
        cfg.registries[0].accounts[0].pool_max = 1
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let bundle = write_bundle(dir.path());
    let out = python(Some(&bundle))
        .args(["-c", &documented_snippet()])
        .env("EPP_HOSTNAME", "localhost")
        .env("EPP_PORT", h.proxy.tls_addr.unwrap().port().to_string())
        .env("EPP_CLID", CLID)
        .env("EPP_PASSWORD", PASSWORD)
        .output()
        .await
        .unwrap();
    let stdout = stdout_of("the docs/epplib.md snippet", &out);
    let mut fields = stdout.split_whitespace();
    assert_eq!(
        (fields.next(), fields.next()),
        (Some("1000"), Some("1000")),
        "login and check: {stdout}"
    );
    assert!(
        stdout.contains("name='example.gov', avail=True"),
        "{stdout}"
    );
    let check_cltrid = fields.next().unwrap();
    let at_registry = h
        .mock
        .transcript()
        .iter()
        .filter(|x| String::from_utf8_lossy(&x.command).contains(check_cltrid))
        .count();
    assert_eq!(at_registry, 1, "the check reached the registry once");
    assert_eq!(h.mock.stats().logins.load(Relaxed), 1);
    h.stop().await;
}

/// The summary line of tests/interop/getgov_workers.py.
#[derive(Debug, serde::Deserialize)]
struct Total {
    requests: usize,
    commands: usize,
    retries: usize,
    failures: usize,
    connections: usize,
    lifetimes: usize,
    errors: Vec<String>,
}

async fn run_getgov_workers(h: &Harness, args: &[&str]) -> Total {
    let out = python(Some(&cert("ca.pem")))
        .arg(format!("{ROOT}/tests/interop/getgov_workers.py"))
        .args(args)
        .env("EPP_HOSTNAME", "localhost")
        .env("EPP_PORT", h.proxy.tls_addr.unwrap().port().to_string())
        .env("REGISTRY_CL_ID", CLID)
        .env("REGISTRY_PASSWORD", PASSWORD)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let total = stdout
        .lines()
        .find_map(|l| l.strip_prefix("TOTAL "))
        .unwrap_or_else(|| {
            panic!(
                "no TOTAL line:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let total: Total = serde_json::from_str(total).unwrap();
    assert!(
        total.failures == 0 && total.retries == 0 && out.status.success(),
        "every command succeeds at the first attempt with its own clTRID and name: {total:#?}"
    );
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn getgov_shaped_workers_share_a_few_registry_sessions_and_every_answer_is_their_own() {
    const TEST: &str =
        "getgov_shaped_workers_share_a_few_registry_sessions_and_every_answer_is_their_own";
    if let Err(why) = python_modules(&["epplib", "gevent"]) {
        return skip(TEST, &why);
    }
    let h = Harness::start(MockConfig::default(), |cfg| {
        cfg.registries[0].accounts[0].pool_min = 1;
        cfg.registries[0].accounts[0].pool_max = 3;
    })
    .await;
    // gunicorn's 3 gevent workers, each with getgov's pool of 5 shared by 10 greenlets; no
    // worker is recycled here.
    let total = run_getgov_workers(
        &h,
        &[
            "--workers",
            "3",
            "--pool",
            "5",
            "--greenlets",
            "10",
            "--total",
            "90",
            "--max-requests",
            "30",
        ],
    )
    .await;
    assert_eq!((total.requests, total.commands), (90, 540), "{total:?}");
    assert_eq!(total.lifetimes, 3);
    assert_eq!(total.connections, 15, "3 workers × 5 pooled connections");
    let logins = h.mock.stats().logins.load(Relaxed);
    assert!(
        (1..=3).contains(&logins),
        "15 client connections used {logins} registry sessions (pool_max 3)"
    );
    // Every create and delete reached the registry exactly once: nothing was replayed.
    assert_eq!(commands_named(&h.mock, "create"), 90);
    assert_eq!(commands_named(&h.mock, "delete"), 90);
    assert!(total.errors.is_empty(), "{:?}", total.errors);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycled_workers_cost_no_registry_login() {
    const TEST: &str = "recycled_workers_cost_no_registry_login";
    if let Err(why) = python_modules(&["epplib", "gevent"]) {
        return skip(TEST, &why);
    }
    let h = Harness::start(MockConfig::default(), |cfg| {
        cfg.registries[0].accounts[0].pool_min = 2;
        cfg.registries[0].accounts[0].pool_max = 2;
    })
    .await;
    h.mock
        .wait_until(|m| m.stats().logins.load(Relaxed) == 2)
        .await;
    // Each worker serves 15 requests and exits, as gunicorn's --max-requests recycles it (getgov:
    // 1,000); the master starts the next one.
    let total = run_getgov_workers(
        &h,
        &["--workers", "3", "--total", "180", "--max-requests", "15"],
    )
    .await;
    assert_eq!(total.requests, 180);
    assert_eq!(
        total.lifetimes, 12,
        "12 worker lifetimes, 9 of them restarts"
    );
    assert_eq!(
        total.connections, 60,
        "every worker logged in 5 times, locally"
    );
    assert_eq!(
        h.mock.stats().logins.load(Relaxed),
        2,
        "60 client logins through 12 worker lifetimes, and the registry saw no new login"
    );
    h.stop().await;
}
