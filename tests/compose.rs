//! The docker-compose file, run without Docker: the exact command lines it gives the mock registry,
//! eppmux and the app, with only what a container runtime would supply mapped to this machine —
//! mounted paths and secrets to their files in the repository, service host names to the
//! processes' loopback addresses, and `0.0.0.0:PORT` to an ephemeral loopback port. The app's
//! image (python) cannot be pulled here, so what of its command needs the image or the network
//! (installing epplib) is checked statically. `scripts/compose-smoke.sh` runs the registry and
//! eppmux services on a real Docker engine.

mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

struct Service {
    image: Option<String>,
    /// service → condition
    depends_on: HashMap<String, String>,
    command: Vec<String>,
    environment: HashMap<String, String>,
    /// container path → repository path
    mounts: Vec<(String, String)>,
}

fn service(name: &str) -> Service {
    let v: serde_json::Value = python_json([
        format!("{ROOT}/scripts/compose-service.py"),
        format!("{ROOT}/docker-compose.yml"),
        name.to_string(),
    ]);
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let mut mounts = Vec::new();
    for vol in strings(&v["volumes"]) {
        let mut parts = vol.split(':');
        let (host, container) = (parts.next().unwrap(), parts.next().unwrap());
        mounts.push((
            container.to_string(),
            format!("{ROOT}/{}", host.trim_start_matches("./")),
        ));
    }
    for (target, file) in v["secrets"].as_object().unwrap() {
        mounts.push((
            target.clone(),
            format!("{ROOT}/{}", file.as_str().unwrap().trim_start_matches("./")),
        ));
    }
    let environment = v["environment"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    let depends_on = v["depends_on"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    Service {
        image: v["image"].as_str().map(str::to_string),
        depends_on,
        command: strings(&v["command"]),
        environment,
        mounts,
    }
}

fn localise(arg: &str, svc: &Service, hosts: &HashMap<&str, String>) -> String {
    for (container, host) in &svc.mounts {
        if let Some(rest) = arg.strip_prefix(container.as_str()) {
            return format!("{host}{rest}");
        }
    }
    if let Some((host, _port)) = arg.rsplit_once(':') {
        if host == "0.0.0.0" {
            return "127.0.0.1:0".into();
        }
        if let Some(addr) = hosts.get(host) {
            return addr.clone();
        }
    }
    arg.to_string()
}

/// The value after `flag` in a command line.
fn flag<'a>(command: &'a [String], flag: &str) -> &'a str {
    let i = command
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("{flag} missing from {command:?}"));
    &command[i + 1]
}

/// The repository file that a container path of this service is (a mount or a secret).
fn host_path(svc: &Service, container_path: &str) -> String {
    let path = localise(container_path, svc, &HashMap::new());
    assert_ne!(path, container_path, "{container_path} is not mounted");
    path
}

/// The app's `sh -c` script, with `$$` unescaped as compose does, cut into its `&&` steps.
fn app_steps(app: &Service) -> Vec<String> {
    assert_eq!(app.command.len(), 3, "app: {:?}", app.command);
    assert_eq!(app.command[..2], ["sh", "-c"], "app: {:?}", app.command);
    app.command[2]
        .replace("$$", "$")
        .split(" && ")
        .map(|s| s.trim().to_string())
        .collect()
}

fn spawn(svc: &Service, hosts: &HashMap<&str, String>) -> (Child, LogLines) {
    let mut child = Command::from(eppmux_command())
        .args(svc.command.iter().map(|a| localise(a, svc, hosts)))
        .envs(&svc.environment)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    (child, lines)
}

/// The log line that contains `needle`.
async fn wait_log(lines: &mut LogLines, needle: &str) -> String {
    let seen = read_log_until(lines, needle).await;
    seen.lines().last().unwrap_or_default().to_string()
}

/// `127.0.0.1:PORT` out of a log line's `addr=` (text) or `"addr":"Some(…)"` (JSON) field.
fn addr_in(line: &str) -> String {
    let start = line
        .find("127.0.0.1:")
        .unwrap_or_else(|| panic!("no address in {line}"));
    line[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_command_lines_work_against_the_mock_registry() {
    let no_hosts = HashMap::new();
    let registry = service("registry");
    let (mut reg_child, mut reg_log) = spawn(&registry, &no_hosts);
    let registry_addr = addr_in(&wait_log(&mut reg_log, "mock registry ready").await);

    let eppmux = service("eppmux");
    let hosts = HashMap::from([("registry", registry_addr.clone())]);
    let (mut child, mut log) = spawn(&eppmux, &hosts);
    let mut tls_addr = None;
    let mut admin_addr = None;
    while tls_addr.is_none() || admin_addr.is_none() {
        let line = wait_log(&mut log, "listening").await;
        let v: serde_json::Value =
            serde_json::from_str(&line).expect("--log-format json gives JSON lines");
        if v["message"] == "admin endpoint listening" {
            admin_addr = Some(addr_in(&line));
        } else if v["listener"] == "tls" {
            tls_addr = Some(addr_in(&line));
        }
    }
    wait_log(&mut log, "account ready").await;
    let (tls_addr, admin_addr) = (tls_addr.unwrap(), admin_addr.unwrap());

    // The container healthcheck, as the compose file gives it (address localised).
    let out = Command::from(eppmux_command())
        .args(["healthcheck", "--admin", &admin_addr])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The app service's own command, step by step. Its first step builds the trust bundle for
    // real; its second installs epplib from the network (checked statically, in the test below);
    // its last runs the app's client against eppmux, trusting that bundle.
    let app = service("app");
    let steps = app_steps(&app);
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("eppmux-ca-bundle.pem");
    let bundle_step: Vec<String> = steps[0]
        .split_whitespace()
        .map(|a| localise(a, &app, &no_hosts))
        .collect();
    let out = Command::new("sh")
        .args(["-c", &bundle_step.join(" ")])
        .env("SSL_CERT_FILE", &bundle)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{bundle_step:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let built = std::fs::read_to_string(&bundle).unwrap();
    let system = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").unwrap();
    let ca = std::fs::read_to_string(format!("{ROOT}/certs-example/ca.pem")).unwrap();
    assert_eq!(
        built,
        format!("{system}{ca}"),
        "system roots, then eppmux's CA"
    );

    let port = tls_addr.rsplit(':').next().unwrap().to_string();
    let client: Vec<String> = steps[2]
        .split_whitespace()
        .skip(1) // exec
        .map(|a| match a {
            "python" => "python3".to_string(),
            "eppmux" => "localhost".to_string(),
            "700" => port.clone(),
            a => localise(a, &app, &no_hosts),
        })
        .collect();
    let has_epplib = std::process::Command::new("python3")
        .args(["-c", "import epplib"])
        .output()
        .unwrap()
        .status
        .success();
    let mut run = Command::new(&client[0]);
    if has_epplib {
        run.args(&client[1..]);
    } else {
        // scripts/install-test-deps.sh does not install epplib (yet): trust and transport are
        // still checked, by the standard-library client that mimics epplib's.
        eprintln!("epplib is not installed: running tests/interop/epplib_transport.py instead");
        run.arg(format!("{ROOT}/tests/interop/epplib_transport.py"))
            .args(["localhost", &port, CLID, PASSWORD, "compose.gov"]);
    }
    let out = run.env("SSL_CERT_FILE", &bundle).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "app: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("OK logout 1500") && stdout.ends_with("OK closed\n"),
        "{stdout}"
    );

    // And a plain client of ours through the same listener.
    let mut c = Client::tls(tls_addr.parse().unwrap(), None).await;
    c.greeting().await;
    assert_eq!(c.command(&login_xml(CLID, PASSWORD, "C")).await.code, 1000);
    assert_eq!(
        c.command(&domain_cmd("check", "compose.gov", "C1"))
            .await
            .code,
        1000
    );

    for child in [&mut child, &mut reg_child] {
        let pid = child.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "{status:?}");
    }
}

#[test]
fn the_app_service_installs_real_epplib_and_trusts_system_roots_plus_the_eppmux_ca() {
    let app = service("app");
    let eppmux = service("eppmux");
    assert!(
        app.image
            .as_deref()
            .is_some_and(|i| i.starts_with("python:3")),
        "{:?}",
        app.image
    );
    assert_eq!(
        app.depends_on.get("eppmux").map(String::as_str),
        Some("service_healthy")
    );
    let steps = app_steps(&app);
    assert_eq!(
        steps.len(),
        3,
        "bundle, install epplib, run the client: {steps:?}"
    );

    // SSL_CERT_FILE: the system roots plus the CA of the certificates eppmux serves, written
    // outside the read-only mounts.
    let bundle = &app.environment["SSL_CERT_FILE"];
    assert!(bundle.starts_with("/tmp/"), "{bundle}");
    assert_eq!(
        steps[0],
        r#"cat /etc/ssl/certs/ca-certificates.crt /certs/ca.pem > "$SSL_CERT_FILE""#
    );
    assert_eq!(
        host_path(&app, "/certs/ca.pem"),
        host_path(&eppmux, "/certs/ca.pem")
    );
    assert!(flag(&eppmux.command, "--tls-cert").starts_with("/certs/"));

    // Real epplib (not on PyPI): whatever EPPLIB names, by default cisagov's archive of a commit.
    assert!(
        steps[1].starts_with("pip install ") && steps[1].ends_with(r#" "$EPPLIB""#),
        "{}",
        steps[1]
    );
    let epplib = &app.environment["EPPLIB"];
    assert!(
        epplib.starts_with("https://github.com/cisagov/epplib/archive/")
            && epplib.ends_with(".tar.gz"),
        "{epplib}"
    );

    // The client: the app's script, at eppmux's service name and TLS port, as its account, with
    // the password from the same secret eppmux reads.
    let client: Vec<&str> = steps[2].split_whitespace().collect();
    assert_eq!(
        client[..4],
        ["exec", "python", "/app/compose_client.py", "session"]
    );
    let script = host_path(&app, client[2]);
    assert!(std::path::Path::new(&script).is_file(), "{script}");
    assert_eq!(client[4], "eppmux");
    assert_eq!(
        client[5],
        flag(&eppmux.command, "--listen-tls")
            .rsplit(':')
            .next()
            .unwrap()
    );
    assert_eq!(client[6], flag(&eppmux.command, "--clid"));
    assert_eq!(
        host_path(&app, client[7]),
        host_path(&eppmux, flag(&eppmux.command, "--password-file"))
    );
    assert_eq!(client.len(), 9, "{client:?}");

    // What the README tells a reader about the app is what the file does.
    let readme = std::fs::read_to_string(format!("{ROOT}/README.md")).unwrap();
    for needle in [
        "EPPLIB",
        "SSL_CERT_FILE",
        "compose_client.py",
        "scripts/compose-smoke.sh",
    ] {
        assert!(readme.contains(needle), "README.md should mention {needle}");
    }
}
