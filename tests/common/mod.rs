//! Test harness: a mock registry and an eppmux in front of it, both on loopback with ephemeral
//! ports and the certificates in certs-example, plus a small EPP client over TLS or plain TCP.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use eppmux::config::{Config, EnvSecrets, Options};
use eppmux::epp::{self, Message, Response};
use eppmux::frame::EppCodec;
use eppmux::secret::Secret;
use eppmux::Proxy;
use eppmux_mock::{MockConfig, MockRegistry};
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

pub const CLID: &str = "registrar1";
pub const PASSWORD: &str = "s3cret-Pw";

pub fn certs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("certs-example")
}

pub fn cert(name: &str) -> PathBuf {
    certs().join(name)
}

/// A sample frame from tests/frames.
pub fn sample(name: &str) -> Bytes {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("crates/eppmux-wire/tests/frames")
        .join(name);
    Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// A free loopback address: bound, then released for a process that binds it again.
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The port of [`free_addr`].
pub fn free_port() -> u16 {
    free_addr().port()
}

/// What `python3 args…` prints as JSON (PyYAML at hand, from scripts/install-test-deps.sh, as the
/// repository's scripts expect).
pub fn python_json<T: serde::de::DeserializeOwned>(
    args: impl IntoIterator<Item = impl AsRef<std::ffi::OsStr>>,
) -> T {
    let out = std::process::Command::new("python3")
        .args(args)
        .output()
        .expect("python3 (with PyYAML: scripts/install-test-deps.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Turns a hang into a failure naming what did not happen.
pub async fn within<T>(secs: u64, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {secs} s"))
}

pub fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

pub async fn start_mock(cfg: MockConfig) -> MockRegistry {
    let tls = eppmux::tls::server_config(
        &cert("server.pem"),
        &cert("server-key.pem"),
        Some(&cert("ca.pem")),
    )
    .unwrap();
    MockRegistry::start(loopback(), tls, cfg).await.unwrap()
}

/// The options of a proxy for a registry at `upstream`, with both listeners on ephemeral ports.
pub fn proxy_options(upstream: SocketAddr) -> Options {
    let mut o = Options::default();
    o.process.admin = Some(loopback());
    let r = &mut o.registry;
    r.listen = Some(loopback());
    r.listen_tls = Some(loopback());
    r.tls_cert = Some(cert("server.pem"));
    r.tls_key = Some(cert("server-key.pem"));
    r.upstream = Some(upstream.to_string());
    r.upstream_server_name = Some("localhost".into());
    r.upstream_ca = Some(cert("ca.pem"));
    r.upstream_cert = Some(cert("client.pem"));
    r.upstream_key = Some(cert("client-key.pem"));
    r.upstream_timeout = Some(Duration::from_secs(5));
    r.response_timeout = Some(Duration::from_secs(30));
    r.greeting_wait = Some(Duration::from_secs(5));
    r.queue_wait = Some(Duration::from_secs(5));
    r.clid = Some(CLID.into());
    r.pool_min = Some(1);
    r.pool_max = Some(2);
    // Tests churn sessions on purpose; the budget's own tests set it low.
    r.session.max_logins_per_minute = Some(6000);
    o
}

/// The environment's secrets the harness runs with: the account's password.
pub fn test_env() -> EnvSecrets {
    EnvSecrets {
        password: Some(Secret::new(PASSWORD)),
        ..EnvSecrets::default()
    }
}

/// A proxy configuration for a registry at `upstream`, with both listeners on ephemeral ports.
pub fn proxy_config(upstream: SocketAddr) -> Config {
    Config::from_options(proxy_options(upstream), &test_env()).expect("the test configuration")
}

pub struct Harness {
    pub mock: MockRegistry,
    pub proxy: Proxy,
}

impl Harness {
    pub async fn start(mock_cfg: MockConfig, tweak: impl FnOnce(&mut Config)) -> Harness {
        init_tracing();
        let mock = start_mock(mock_cfg).await;
        let mut cfg = proxy_config(mock.addr);
        tweak(&mut cfg);
        let proxy = Proxy::start(&cfg, CancellationToken::new()).await.unwrap();
        Harness { mock, proxy }
    }

    pub async fn tls_client(&self) -> Client {
        Client::tls(self.proxy.tls_addr.unwrap(), None).await
    }

    pub async fn plain_client(&self) -> Client {
        Client::plain(self.proxy.plain_addr.unwrap()).await
    }

    /// A TLS client that has read the greeting and logged in.
    pub async fn logged_in(&self) -> Client {
        let mut c = self.tls_client().await;
        c.greeting().await;
        let r = c.command(&login_xml(CLID, PASSWORD, "LOGIN-1")).await;
        assert_eq!(r.code, 1000, "login: {r:?}");
        c
    }

    pub async fn stop(self) {
        self.proxy.shutdown().await;
        self.mock.shutdown().await;
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("EPPMUX_TEST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A minimal EPP client: frames in, frames out, no interpretation beyond `epp::sniff`.
pub struct Client {
    pub framed: Framed<Box<dyn Io>, EppCodec>,
    /// The fingerprint (`sha256:hex`) of the certificate the server presented, over TLS.
    pub server_cert: Option<String>,
}

pub fn client_tls_config(identity: Option<(&str, &str)>) -> Arc<rustls::ClientConfig> {
    let id = identity.map(|(c, k)| (cert(c), cert(k)));
    eppmux::tls::client_config(
        Some(&cert("ca.pem")),
        id.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
    )
    .unwrap()
}

impl Client {
    pub async fn tls(addr: SocketAddr, identity: Option<(&str, &str)>) -> Client {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let connector = TlsConnector::from(client_tls_config(identity));
        let tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let server_cert = tls.get_ref().1.peer_certificates();
        let server_cert = server_cert
            .and_then(|c| c.first())
            .map(|c| eppmux::fingerprint(c));
        Client {
            framed: Framed::new(Box::new(tls), EppCodec::default()),
            server_cert,
        }
    }

    pub async fn plain(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.unwrap();
        Client {
            framed: Framed::new(Box::new(tcp), EppCodec::default()),
            server_cert: None,
        }
    }

    /// The same connection with another frame limit (for tests that send or expect huge frames).
    pub fn with_max_frame(self, max: usize) -> Client {
        let old = self.framed.into_parts();
        let mut parts = tokio_util::codec::FramedParts::new::<Bytes>(old.io, EppCodec::new(max));
        parts.read_buf = old.read_buf;
        parts.write_buf = old.write_buf;
        Client {
            framed: Framed::from_parts(parts),
            server_cert: self.server_cert,
        }
    }

    pub async fn send(&mut self, frame: impl Into<Bytes>) {
        self.framed.send(frame.into()).await.unwrap();
    }

    /// The next frame, or None when the peer closed cleanly between frames.
    pub async fn recv(&mut self) -> Option<Bytes> {
        match self.framed.next().await {
            None => None,
            Some(Ok(f)) => Some(f),
            Some(Err(e)) => panic!("reading a frame: {e}"),
        }
    }

    pub async fn recv_response(&mut self) -> Response {
        let frame = self
            .recv()
            .await
            .expect("a response, got a closed connection");
        match epp::sniff(&frame) {
            Ok(Message::Response(r)) => r,
            other => panic!(
                "expected a response, got {other:?}: {}",
                String::from_utf8_lossy(&frame)
            ),
        }
    }

    pub async fn greeting(&mut self) -> Bytes {
        let frame = self.recv().await.expect("a greeting");
        assert!(
            matches!(epp::sniff(&frame), Ok(Message::Greeting(_))),
            "not a greeting: {}",
            String::from_utf8_lossy(&frame)
        );
        frame
    }

    pub async fn command(&mut self, xml: &str) -> Response {
        self.send(Bytes::from(xml.to_string())).await;
        self.recv_response().await
    }

    /// Asserts that the peer closes the connection with no further frame.
    pub async fn expect_closed(&mut self) {
        if let Some(f) = self.recv().await {
            panic!(
                "expected the connection to close, got a frame: {}",
                String::from_utf8_lossy(&f)
            );
        }
    }
}

pub fn login_xml(clid: &str, pw: &str, cltrid: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><epp xmlns="urn:ietf:params:xml:ns:epp-1.0"><command><login><clID>{clid}</clID><pw>{pw}</pw><options><version>1.0</version><lang>en</lang></options><svcs><objURI>urn:ietf:params:xml:ns:domain-1.0</objURI></svcs></login><clTRID>{cltrid}</clTRID></command></epp>"#
    )
}

pub fn domain_cmd(verb: &str, name: &str, cltrid: &str) -> String {
    let extra = if verb == "create" {
        "<domain:period unit=\"y\">1</domain:period>"
    } else {
        ""
    };
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><epp xmlns="urn:ietf:params:xml:ns:epp-1.0"><command><{verb}><domain:{verb} xmlns:domain="urn:ietf:params:xml:ns:domain-1.0"><domain:name>{name}</domain:name>{extra}</domain:{verb}></{verb}><clTRID>{cltrid}</clTRID></command></epp>"#
    )
}

pub fn logout_xml(cltrid: &str) -> String {
    format!(
        r#"<epp xmlns="urn:ietf:params:xml:ns:epp-1.0"><command><logout/><clTRID>{cltrid}</clTRID></command></epp>"#
    )
}

/// The eppmux binary, without EPPMUX_* variables from the developer's shell or backtraces.
pub fn eppmux_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_eppmux"));
    for (key, _) in std::env::vars() {
        if key.starts_with("EPPMUX_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_BACKTRACE", "0");
    cmd
}

/// How many commands with this verb the registry has received.
pub fn commands_named(mock: &MockRegistry, verb: &str) -> usize {
    mock.transcript()
        .iter()
        .filter(|x| matches!(epp::sniff(&x.command), Ok(Message::Command(c)) if c.verb == verb))
        .count()
}

/// A child process's log, read line by line.
pub type LogLines = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>;

/// Reads log lines until one contains `needle`; returns everything read, that line last.
pub async fn read_log_until(lines: &mut LogLines, needle: &str) -> String {
    let mut seen = String::new();
    while let Some(line) = lines.next_line().await.expect("read the log") {
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(needle) {
            return seen;
        }
    }
    panic!("the process exited before logging {needle:?}:\n{seen}");
}

/// Reports a test that could not run, in a line `scripts/test.sh` counts: written straight to the
/// process's stderr, past the test harness's output capture, so it shows even when the test
/// passes. A skip is never silent.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: {test}: {why}");
}

/// `Err(why)` unless `python3` can import every one of `modules`.
pub fn python_modules(modules: &[&str]) -> Result<(), String> {
    let probe = format!("import {}", modules.join(", "));
    let out = std::process::Command::new("python3")
        .args(["-c", &probe])
        .output()
        .map_err(|e| format!("python3 cannot run: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let cause = stderr.lines().last().unwrap_or("").trim();
    Err(format!(
        "python3 cannot `{probe}`{}; scripts/install-test-deps.sh installs them",
        if cause.is_empty() {
            String::new()
        } else {
            format!(" ({cause})")
        }
    ))
}

/// Sends the example frames `examples/{name}.xml` through `scripts/epp-send.sh` (`openssl
/// s_client`, as the README shows) to the TLS listener on `port`, and checks each answer's
/// result code by its clTRID (`EXAMPLE-{NAME}-1`): 1500 for logout, 1000 for the rest.
pub async fn epp_send_examples(port: u16, names: &[&str]) {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = tokio::process::Command::new(format!("{root}/scripts/epp-send.sh"))
        .arg(format!("localhost:{port}"))
        .args(names.iter().map(|n| format!("{root}/examples/{n}.xml")))
        .output()
        .await
        .expect("run scripts/epp-send.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "epp-send.sh failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("<greeting>"), "{stdout}");
    for name in names {
        let cltrid = format!("EXAMPLE-{}-1", name.to_uppercase());
        let code = if *name == "logout" { 1500 } else { 1000 };
        let frame = stdout
            .split("-- frame")
            .find(|f| f.contains(&cltrid))
            .unwrap_or_else(|| panic!("no answer for {cltrid}:\n{stdout}"));
        assert!(
            frame.contains(&format!("result code=\"{code}\"")),
            "{cltrid}: {frame}"
        );
    }
}
