//! The Cloud Foundry sidecar of deploy/cloudfoundry/, run without Cloud Foundry: the manifest
//! fragment checked against the keys Cloud Foundry documents for sidecars, and the exact commands
//! it gives the sidecar and the web process, started in an app directory laid out as the
//! manifest expects, with getgov's credentials handed over as Cloud Foundry hands them (a
//! user-provided service in VCAP_SERVICES, certificate and encrypted key as base64 PEM). Only
//! what the platform would supply is mapped to this machine: the registry is the mock registry
//! on loopback, ports 1700/1790 become free ports, and the registry's CA is the example CA.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::Ordering::Relaxed;

use base64::Engine;
use common::*;
use eppmux_mock::MockConfig;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const PASSPHRASE: &str = "eppmux fixture passphrase";

fn deploy(name: &str) -> PathBuf {
    Path::new(ROOT).join("deploy/cloudfoundry").join(name)
}

fn key_fixture(name: &str) -> PathBuf {
    Path::new(ROOT).join("tests/fixtures/keys").join(name)
}

/// A file's content as base64, as getgov keeps REGISTRY_CERT and REGISTRY_KEY.
fn b64(path: &Path) -> String {
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).unwrap())
}

async fn check_manifest(path: &Path) -> Output {
    Command::new("python3")
        .arg(deploy("check-manifest.py"))
        .arg(path)
        .output()
        .await
        .expect("python3 (with PyYAML: scripts/install-test-deps.sh)")
}

#[tokio::test]
async fn the_manifest_fragment_declares_a_valid_cloud_foundry_sidecar() {
    let out = check_manifest(&deploy("manifest-eppmux.yml")).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ok (1 sidecar(s): eppmux)"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The check is not a formality: each of these breaks it, naming what is wrong.
    let text = std::fs::read_to_string(deploy("manifest-eppmux.yml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (from, to, named) in [
        (
            "memory: 64M",
            "memory_limit: 64M",
            "unknown key 'memory_limit'",
        ),
        ("memory: 64M", "memory: lots", "not a size"),
        (
            "EPPMUX_LISTEN_TLS: 127.0.0.1:1700",
            "EPPMUX_LISTEN_TLS: 127.0.0.1:700",
            "needs root",
        ),
        ("EPP_PORT: \"1700\"", "EPP_PORT: \"700\"", "env.EPP_PORT"),
        (
            "process_types: [web]",
            "process_types: [worker]",
            "includes web",
        ),
        (
            "command: ./eppmux/sidecar.sh",
            "command: ./eppmux/missing.sh",
            "names no executable script",
        ),
        (
            "EPPMUX_POOL_MIN: \"2\"",
            "EPPMUX_POOL_MIN: \"2\"\n      REGISTRY_PASSWORD: hunter2",
            "does not belong in the manifest",
        ),
    ] {
        assert!(text.contains(from), "{from}");
        let broken = dir.path().join("manifest.yml");
        std::fs::write(&broken, text.replace(from, to)).unwrap();
        let out = check_manifest(&broken).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success() && stdout.contains(named),
            "{to}: expected a failure naming {named:?}, got:\n{stdout}"
        );
    }
}

/// The application of the manifest fragment, as JSON.
fn manifest_app() -> serde_json::Value {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(deploy("manifest-eppmux.yml"))
        .output()
        .expect("python3 with PyYAML");
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["applications"][0].clone()
}

/// An app directory laid out as the manifest expects (src/eppmux/… in getgov), whose `run.sh`
/// stands in for getgov's gunicorn with the getgov-shaped epplib workers.
fn app_dir(root: &Path) -> PathBuf {
    let app = root.join("app");
    std::fs::create_dir_all(app.join("eppmux")).unwrap();
    for script in ["sidecar.sh", "web.sh"] {
        std::fs::copy(deploy(script), app.join("eppmux").join(script)).unwrap();
    }
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_eppmux"), app.join("eppmux/eppmux")).unwrap();
    // The CA of the listener certificate below (tests/fixtures/keys/ec.pem).
    std::fs::copy(cert("ca.pem"), app.join("eppmux/local-ca.pem")).unwrap();
    std::fs::write(
        app.join("run.sh"),
        format!(
            "#!/bin/sh\nexec python3 {ROOT}/tests/interop/getgov_workers.py --workers 3 --pool 5 --greenlets 10 --total 30 --max-requests 10\n"
        ),
    )
    .unwrap();
    let mut perms = std::fs::metadata(app.join("run.sh")).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(app.join("run.sh"), perms).unwrap();
    app
}

/// `bash -c COMMAND` in `app`, as Cloud Foundry runs a process's command, with an environment
/// holding nothing of this machine's EPPMUX_* or SSL_CERT_* variables.
fn cf_process(app: &Path, command: &str, env: &HashMap<String, String>) -> Command {
    let mut cmd = Command::new("bash");
    cmd.args(["-c", command]).current_dir(app);
    for (key, _) in std::env::vars() {
        if key.starts_with("EPPMUX_") || key.starts_with("SSL_CERT_") || key.starts_with("EPP_") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(env).env("RUST_BACKTRACE", "0").kill_on_drop(true);
    cmd
}

/// The summary line of tests/interop/getgov_workers.py.
#[derive(Debug, serde::Deserialize)]
struct Total {
    requests: usize,
    retries: usize,
    failures: usize,
    connections: usize,
    errors: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifest_commands_run_eppmux_from_getgov_credentials_and_serve_real_epplib() {
    const TEST: &str =
        "the_manifest_commands_run_eppmux_from_getgov_credentials_and_serve_real_epplib";
    if let Err(why) = python_modules(&["epplib", "gevent", "yaml"]) {
        return skip(TEST, &why);
    }
    let mock = start_mock(MockConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let app = app_dir(dir.path());
    let manifest = manifest_app();
    let (listen_port, admin_port) = (free_port(), free_port());

    // The manifest's env, with its ports mapped to free ones on this machine.
    let mut env: HashMap<String, String> = HashMap::new();
    for (key, value) in manifest["env"].as_object().unwrap() {
        let value = value
            .as_str()
            .unwrap()
            .replace("1700", &listen_port.to_string())
            .replace("1790", &admin_port.to_string());
        env.insert(key.clone(), value);
    }
    assert_eq!(env["EPP_PORT"], listen_port.to_string());
    // What Cloud Foundry supplies: the user-provided service getgov reads its secrets from, with
    // the registry (the mock here) and the listener's certificate and encrypted key.
    let credentials = serde_json::json!({
        "REGISTRY_CL_ID": CLID,
        "REGISTRY_PASSWORD": PASSWORD,
        "REGISTRY_CERT": b64(&key_fixture("rsa.pem")),
        "REGISTRY_KEY": b64(&key_fixture("rsa-key-pkcs8-aes256.pem")),
        "REGISTRY_KEY_PASSPHRASE": PASSPHRASE,
        "REGISTRY_HOSTNAME": "localhost",
        "REGISTRY_PORT": mock.addr.port().to_string(),
        "EPPMUX_TLS_CERT_PEM": b64(&key_fixture("ec.pem")),
        "EPPMUX_TLS_KEY_PEM": b64(&key_fixture("ec-key-legacy-aes128.pem")),
        "EPPMUX_TLS_KEY_PASSPHRASE": PASSPHRASE,
        "DJANGO_SECRET_KEY": "not for eppmux",
    });
    let vcap = serde_json::json!({
        "user-provided": [{"name": "getgov-credentials", "credentials": credentials}],
    });
    env.insert("VCAP_SERVICES".into(), vcap.to_string());
    env.insert("TMPDIR".into(), dir.path().display().to_string());
    // Only a failure guard: web.sh stops waiting for a sidecar that never becomes ready (in Cloud
    // Foundry the exited sidecar would take the instance down instead).
    env.insert("EPPMUX_WAIT".into(), "20".into());
    // The mock registry's CA stands in for the registry's public one.
    env.insert(
        "EPPMUX_UPSTREAM_CA".into(),
        cert("ca.pem").display().to_string(),
    );

    // Cloud Foundry starts the web process and its sidecar in no set order: here the web process
    // first, so its wrapper has to wait for eppmux.
    let web = cf_process(&app, manifest["command"].as_str().unwrap(), &env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sidecar = &manifest["sidecars"][0];
    assert_eq!(sidecar["process_types"][0], "web");
    let mut eppmux = cf_process(&app, sidecar["command"].as_str().unwrap(), &env)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(eppmux.stderr.take().unwrap()).lines();
    let log_task = tokio::spawn(async move {
        let mut log = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            log.push_str(&line);
            log.push('\n');
        }
        log
    });

    let out = web.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let total: Total = stdout
        .lines()
        .find_map(|l| l.strip_prefix("TOTAL "))
        .map(|t| serde_json::from_str(t).unwrap())
        .unwrap_or_else(|| {
            panic!(
                "the web process printed no TOTAL:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(
        out.status.success() && total.failures == 0 && total.retries == 0,
        "{total:#?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!((total.requests, total.connections), (30, 15), "{total:?}");
    assert!(total.errors.is_empty());
    // Trust came from web.sh's bundle: this environment has no SSL_CERT_FILE of its own.
    assert!(dir.path().join("eppmux-trust-bundle.pem").is_file());
    let logins = mock.stats().logins.load(Relaxed);
    assert!(
        (2..=4).contains(&logins),
        "{logins} registry sessions for 15 client connections (EPPMUX_POOL_MIN 2, MAX 4)"
    );

    let pid = eppmux.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let exit = eppmux.wait().await.unwrap();
    let log = log_task.await.unwrap();
    assert!(exit.success(), "{exit:?}\n{log}");
    assert!(log.contains("shutdown complete"), "{log}");
    for secret in [
        PASSWORD,
        PASSPHRASE,
        "PRIVATE KEY",
        &b64(&key_fixture("rsa-key-pkcs8-aes256.pem"))[..40],
    ] {
        assert!(!log.contains(secret), "the sidecar's log shows {secret:?}");
    }
    assert_eq!(
        commands_named(&mock, "logout"),
        logins,
        "every registry session logged out"
    );
    mock.shutdown().await;
}

/// `sidecar.sh ARGS` with getgov's REGISTRY_* variables set directly in the environment (the
/// fallback getgov's settings use when there is no service), base64 as getgov keeps them.
async fn sidecar_with_registry_env(
    registry_port: u16,
    key: &str,
    passphrase: &str,
    args: &[&str],
) -> Output {
    let env: HashMap<String, String> = [
        ("REGISTRY_CL_ID", CLID.to_string()),
        ("REGISTRY_PASSWORD", PASSWORD.to_string()),
        ("REGISTRY_CERT", b64(&key_fixture("rsa.pem"))),
        ("REGISTRY_KEY", b64(&key_fixture(key))),
        ("REGISTRY_KEY_PASSPHRASE", passphrase.to_string()),
        ("REGISTRY_HOSTNAME", "localhost".to_string()),
        ("REGISTRY_PORT", registry_port.to_string()),
        ("EPPMUX_UPSTREAM_CA", cert("ca.pem").display().to_string()),
        ("EPPMUX_BIN", env!("CARGO_BIN_EXE_eppmux").to_string()),
        ("EPPMUX_LISTEN_TLS", format!("127.0.0.1:{}", free_port())),
        ("EPPMUX_ADMIN", format!("127.0.0.1:{}", free_port())),
        // The listener's certificate and key as plain PEM text this time.
        (
            "EPPMUX_TLS_CERT_PEM",
            std::fs::read_to_string(cert("server.pem")).unwrap(),
        ),
        (
            "EPPMUX_TLS_KEY_PEM",
            std::fs::read_to_string(cert("server-key.pem")).unwrap(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let script = deploy("sidecar.sh");
    let command = std::iter::once(script.display().to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .collect::<Vec<_>>()
        .join(" ");
    cf_process(Path::new(ROOT), &command, &env)
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_script_hands_base64_registry_variables_to_eppmux_check_and_print_config() {
    let mock = start_mock(MockConfig::default()).await;
    let port = mock.addr.port();
    // The legacy OpenSSL form (`openssl rsa -aes256 -traditional`) this time.
    let key = "rsa-key-legacy-aes256.pem";
    let out = sidecar_with_registry_env(port, key, PASSPHRASE, &["check"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("account registrar1") && stdout.contains("OK"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mock.stats().logins.load(Relaxed), 1);

    let out = sidecar_with_registry_env(port, key, PASSPHRASE, &["--print-config"]).await;
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    for expected in [
        format!("upstream = \"localhost:{port}\""),
        "# upstream_cert = <from EPPMUX_UPSTREAM_CERT_PEM>".into(),
        "# upstream_key = <from EPPMUX_UPSTREAM_KEY_PEM> (passphrase <redacted>)".into(),
        "# tls_key = <from EPPMUX_TLS_KEY_PEM>".into(),
        "pool_max = 4".into(),
    ] {
        assert!(shown.contains(&expected), "{expected} not in:\n{shown}");
    }
    for secret in [PASSWORD, PASSPHRASE, "PRIVATE KEY", "CERTIFICATE"] {
        assert!(!shown.contains(secret), "--print-config shows {secret:?}");
    }

    // A wrong passphrase stops eppmux at start (in Cloud Foundry: the instance), naming the
    // variable and the cause, never the content.
    let out = sidecar_with_registry_env(port, key, "not the passphrase", &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("<from EPPMUX_UPSTREAM_KEY_PEM>: wrong passphrase")
            && !stderr.contains("not the passphrase"),
        "{stderr}"
    );
    mock.shutdown().await;
}
