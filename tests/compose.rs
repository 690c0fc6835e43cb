//! The docker-compose file, run without Docker: the exact command lines it gives the mock registry,
//! eppmux and the app, with only what a container runtime would supply mapped to this machine —
//! mounted paths and secrets to their files in the repository, service host names to the
//! processes' loopback addresses, and `0.0.0.0:PORT` to an ephemeral loopback port.

mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

struct Service {
    command: Vec<String>,
    environment: HashMap<String, String>,
    /// container path → repository path
    mounts: Vec<(String, String)>,
}

fn service(name: &str) -> Service {
    let out = std::process::Command::new("python3")
        .arg(format!("{ROOT}/scripts/compose-service.py"))
        .arg(format!("{ROOT}/docker-compose.yml"))
        .arg(name)
        .output()
        .expect("python3 (with PyYAML: scripts/install-test-deps.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
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
    Service {
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

    // The app service's own command: an epplib-style client trusting the CA via SSL_CERT_FILE.
    let app = service("app");
    let port = tls_addr.rsplit(':').next().unwrap().to_string();
    let args: Vec<String> = app.command[1..]
        .iter()
        .map(|a| match a.as_str() {
            "eppmux" => "localhost".to_string(),
            "700" => port.clone(),
            a => localise(a, &app, &no_hosts),
        })
        .collect();
    let envs: HashMap<String, String> = app
        .environment
        .iter()
        .map(|(k, v)| (k.clone(), localise(v, &app, &no_hosts)))
        .collect();
    let out = Command::new("python3")
        .args(&args)
        .envs(&envs)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "app: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("OK logout") && stdout.contains("OK closed"),
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
