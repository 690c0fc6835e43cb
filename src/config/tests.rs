use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches};

use super::options::{NamedRegistry, Options};
use super::*;
use crate::cli::Cli;

fn base() -> Options {
    let mut o = Options::default();
    o.registry.listen = Some("127.0.0.1:1700".parse().unwrap());
    o.registry.upstream = Some("epp.example.net:700".into());
    o.registry.upstream_cert = Some("c.pem".into());
    o.registry.upstream_key = Some("k.pem".into());
    o.registry.clid = Some("r1".into());
    o
}

fn pw() -> EnvSecrets {
    EnvSecrets {
        password: Some(Secret::new("pw")),
        ..EnvSecrets::default()
    }
}

fn err(o: Options, env: &EnvSecrets) -> ConfigError {
    Config::from_options(o, env).expect_err("an invalid configuration")
}

fn err_key(o: Options, env: &EnvSecrets) -> String {
    match err(o, env) {
        ConfigError::Invalid { key, .. } => key,
        other => panic!("expected an invalid-key error, got {other:?}"),
    }
}

/// Parses a command line the way the binary does: flags and variables only, defaults apart.
fn parse(argv: &[&str]) -> Explicit {
    let matches = Cli::command().try_get_matches_from(argv).unwrap();
    let cli = Cli::from_arg_matches(&matches).unwrap();
    cli.run.explicit(&matches).unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn single_account_from_flags() {
    let cfg = Config::from_options(base(), &pw()).unwrap();
    let r = &cfg.registries[0];
    assert_eq!(r.upstream.server_name, "epp.example.net");
    assert_eq!(r.accounts.len(), 1);
    assert_eq!((r.accounts[0].pool_min, r.accounts[0].pool_max), (1, 4));
    assert!(
        !format!("{cfg:?}").contains("pw\""),
        "password must not be in Debug output"
    );
}

#[test]
fn defaults_come_from_the_declarations() {
    let cfg = Config::from_options(base(), &pw()).unwrap();
    let r = &cfg.registries[0];
    assert_eq!(r.queue_wait, Duration::from_secs(2));
    assert_eq!(r.upstream.response_timeout, Duration::from_secs(60));
    assert_eq!(
        r.accounts[0].lifecycle.keepalive,
        Some(Duration::from_secs(60))
    );
    assert_eq!(cfg.limits.max_clients, 4096);
    assert_eq!(cfg.limits.max_frame, 1 << 20);
    // And --help shows the same defaults, from the same place.
    let help = Cli::command().render_long_help().to_string();
    assert!(
        help.contains("[default: 2s]") && help.contains("[env: EPPMUX_QUEUE_WAIT="),
        "{help}"
    );
}

#[test]
fn bad_values_name_their_key() {
    assert_eq!(err_key(base(), &EnvSecrets::default()), "password");
    let mut o = base();
    o.registry.pool_min = Some(5);
    o.registry.pool_max = Some(2);
    assert_eq!(err_key(o, &pw()), "pool_min");
    let mut o = base();
    o.registry.listen = None;
    assert_eq!(err_key(o, &pw()), "listen");
    let mut o = base();
    o.registry.listen_tls = Some("127.0.0.1:700".parse().unwrap());
    assert_eq!(err_key(o, &pw()), "tls_cert");
    let mut o = base();
    o.registry.upstream = Some("no-port".into());
    assert_eq!(err_key(o, &pw()), "upstream");
    let mut o = base();
    o.registry.upstream_cert = None;
    assert_eq!(err_key(o, &pw()), "upstream_cert");
    let mut o = base();
    o.registry.listen = Some("0.0.0.0:1700".parse().unwrap());
    assert_eq!(
        err_key(o.clone(), &pw()),
        "listen",
        "plain TCP off loopback needs an explicit opt-in"
    );
    o.registry.allow_insecure_plain = Some(true);
    assert!(Config::from_options(o, &pw()).is_ok());
    let mut o = base();
    o.registry.tls_client_allow = Some(vec!["sha256:1234".into()]);
    assert_eq!(err_key(o, &pw()), "tls_client_allow");
}

#[test]
fn errors_say_where_a_value_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "eppmux.toml",
        "listen = \"127.0.0.1:1701\"\nupstream = \"127.0.0.1:700\"\nupstream_cert = \"c.pem\"\nupstream_key = \"k.pem\"\n\n[[account]]\nclid = \"a1\"\npassword = \"x\"\npool_min = 9\n",
    );
    let msg = Config::from_sources(&Explicit::default(), Some(&file), &pw())
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with("pool_min (")
            && msg.contains("eppmux.toml:9")
            && msg.contains("account a1"),
        "{msg}"
    );
    // A flag, and a variable.
    let explicit = parse(&[
        "eppmux",
        "--config",
        file.to_str().unwrap(),
        "--pool-max",
        "0",
    ]);
    let msg = Config::from_sources(&explicit, Some(&file), &pw())
        .unwrap_err()
        .to_string();
    assert!(msg.starts_with("pool_max (flag --pool-max)"), "{msg}");
    // Unknown keys, with their line, anywhere in the file.
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:1\"\n[[account]]\nclid = \"a\"\nbogus_key = 1\n",
    )
    .unwrap();
    let msg = Config::from_sources(&Explicit::default(), Some(&file), &pw())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("account.0.bogus_key") && msg.contains("eppmux.toml:4"),
        "{msg}"
    );
}

#[test]
fn the_command_line_keeps_only_what_it_was_given() {
    let explicit = parse(&["eppmux", "--queue-wait", "1s", "--upstream", "x:1"]);
    assert_eq!(
        explicit.options.registry.queue_wait,
        Some(Duration::from_secs(1))
    );
    assert_eq!(
        explicit.options.registry.session.keepalive, None,
        "a default is not an explicit value: the file may set it"
    );
}

#[test]
fn the_example_file_is_valid_and_names_every_option() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("eppmux.example.toml")).unwrap();
    // Every option a file can hold appears in the example, at least as a comment.
    let options = Options::augment_args(clap::Command::new("eppmux"));
    for arg in options.get_arguments() {
        let key = arg.get_id().as_str();
        if ["clid", "password_file", "pool_min", "pool_max"].contains(&key) {
            continue;
        }
        assert!(
            text.contains(&format!("{key} =")),
            "eppmux.example.toml lacks `{key}`"
        );
    }
    // And it parses, once its password file is a real one; and so does its commented second
    // registry.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "x\n").unwrap();
    let text = text.replace(
        "/run/secrets/registrar1",
        &dir.path().join("pw").display().to_string(),
    );
    let path = write(dir.path(), "eppmux.toml", &text);
    let cfg =
        Config::from_sources(&Explicit::default(), Some(&path), &EnvSecrets::default()).unwrap();
    assert_eq!(cfg.registries[0].accounts[0].clid, "registrar1");
    assert_eq!(cfg.registries[0].queue_wait, Duration::from_secs(2));
    // The several-registries form it shows behind `# ~ ` is valid too (alone: never both forms).
    let named: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("# ~ ").or((l == "# ~").then_some("")))
        .collect::<Vec<_>>()
        .join("\n");
    let path = write(dir.path(), "named.toml", &named);
    let cfg =
        Config::from_sources(&Explicit::default(), Some(&path), &EnvSecrets::default()).unwrap();
    assert_eq!(cfg.registries.len(), 2, "{named}");
}

#[test]
fn file_with_accounts_and_relative_paths() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw2"), "second\n").unwrap();
    let path = write(
        dir.path(),
        "eppmux.toml",
        r#"
listen = "127.0.0.1:1701"
upstream = "127.0.0.1:700"
upstream_server_name = "registry.example"
upstream_cert = "client.pem"
upstream_key = "client-key.pem"
queue_wait = "250ms"
[[account]]
clid = "a1"
password = "first"
pool_max = 2
[[account]]
clid = "a2"
password_file = "pw2"
pool_min = 0
"#,
    );
    let none = EnvSecrets::default();
    let cfg = Config::from_sources(&Explicit::default(), Some(&path), &none).unwrap();
    let r = &cfg.registries[0];
    assert_eq!(r.accounts.len(), 2);
    assert!(r.accounts[1].password.ct_eq("second"));
    assert_eq!(
        r.upstream.cert,
        PemSource::File(dir.path().join("client.pem"))
    );
    assert_eq!(r.queue_wait, Duration::from_millis(250));
    // A flag beats the file.
    let explicit = parse(&["eppmux", "--queue-wait", "1s"]);
    let cfg = Config::from_sources(&explicit, Some(&path), &none).unwrap();
    assert_eq!(cfg.registries[0].queue_wait, Duration::from_secs(1));
    // Unknown keys are refused, by name.
    std::fs::write(&path, "listen = \"127.0.0.1:1\"\nbogus_key = 1\n").unwrap();
    let msg = Config::from_sources(&Explicit::default(), Some(&path), &none)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("bogus_key"), "{msg}");
}

const TWO_REGISTRIES: &str = r#"
admin = "127.0.0.1:9700"
[[registry]]
name = "gov"
listen_tls = "127.0.0.1:1700"
tls_cert = "server.pem"
tls_key = "server-key.pem"
upstream = "epp.example.gov:700"
upstream_cert = "gov.pem"
upstream_key = "gov-key.pem"
queue_wait = "5s"
[[registry.account]]
clid = "registrar1"
password = "one"
pool_max = 4
[[registry]]
name = "example"
listen = "127.0.0.1:1701"
upstream = "epp.example.net:700"
upstream_cert = "net.pem"
upstream_key = "net-key.pem"
[[registry.account]]
clid = "registrar1"
password = "two"
"#;

#[test]
fn several_registries_each_with_their_own_listeners_and_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "eppmux.toml", TWO_REGISTRIES);
    let cfg =
        Config::from_sources(&Explicit::default(), Some(&path), &EnvSecrets::default()).unwrap();
    assert_eq!(cfg.registries.len(), 2);
    let (gov, net) = (&cfg.registries[0], &cfg.registries[1]);
    assert_eq!((gov.label(), net.label()), ("gov", "example"));
    assert_eq!(gov.queue_wait, Duration::from_secs(5));
    assert_eq!(
        net.queue_wait,
        Duration::from_secs(2),
        "defaults apply per registry"
    );
    assert_eq!(
        gov.upstream.cert,
        PemSource::File(dir.path().join("gov.pem"))
    );
    assert!(gov.accounts[0].password.ct_eq("one") && net.accounts[0].password.ct_eq("two"));
    assert_eq!(cfg.admin, Some("127.0.0.1:9700".parse().unwrap()));
}

#[test]
fn flat_registry_keys_beside_registry_tables_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "eppmux.toml",
        &format!("queue_wait = \"1s\"\n{TWO_REGISTRIES}"),
    );
    let msg = Config::from_sources(&Explicit::default(), Some(&path), &EnvSecrets::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with("queue_wait (") && msg.contains("eppmux.toml:1"),
        "{msg}"
    );
    // Flags and variables set the flat form only.
    std::fs::write(&path, TWO_REGISTRIES).unwrap();
    let explicit = parse(&["eppmux", "--queue-wait", "1s"]);
    let msg = Config::from_sources(&explicit, Some(&path), &EnvSecrets::default())
        .unwrap_err()
        .to_string();
    assert!(msg.starts_with("queue_wait (flag --queue-wait)"), "{msg}");
    let msg = Config::from_sources(&Explicit::default(), Some(&path), &pw())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("EPPMUX_PASSWORD"), "{msg}");
}

#[test]
fn two_listeners_on_one_address_name_both_registries() {
    let dir = tempfile::tempdir().unwrap();
    let text = TWO_REGISTRIES.replace("listen = \"127.0.0.1:1701\"", "listen = \"127.0.0.1:1700\"");
    let path = write(dir.path(), "eppmux.toml", &text);
    let msg = Config::from_sources(&Explicit::default(), Some(&path), &EnvSecrets::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("127.0.0.1:1700") && msg.contains("gov") && msg.contains("example"),
        "{msg}"
    );
    let text = TWO_REGISTRIES.replace("name = \"example\"", "name = \"gov\"");
    std::fs::write(&path, text).unwrap();
    let msg = Config::from_sources(&Explicit::default(), Some(&path), &EnvSecrets::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with("name (") && msg.contains("two [[registry]] tables"),
        "{msg}"
    );
}

#[test]
fn print_config_is_a_valid_file_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "eppmux.toml", TWO_REGISTRIES);
    let resolved = resolve(&Explicit::default(), Some(&path)).unwrap();
    let shown = resolved.to_redacted_toml();
    assert!(
        !shown.contains("\"one\"") && shown.contains("<redacted>"),
        "{shown}"
    );
    assert!(
        shown.contains("queue_wait = \"2s\""),
        "defaults shown: {shown}"
    );
    let back: Options = toml::from_str(&shown).unwrap();
    assert_eq!(back.registries.len(), 2);
    let _ = NamedRegistry::default();
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
}

#[test]
fn certificate_and_key_may_come_from_the_environment_and_never_show() {
    let key_pem = std::fs::read_to_string(fixture("rsa-key-pkcs8-aes256.pem")).unwrap();
    let cert_pem = std::fs::read_to_string(fixture("rsa.pem")).unwrap();
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    let mut o = base();
    o.registry.upstream_cert = None;
    o.registry.upstream_key = None;
    // getgov keeps both base64-encoded; the passphrase as plain text.
    let env = EnvSecrets::from_lookup(|var| match var {
        "EPPMUX_UPSTREAM_CERT_PEM" => Some(b64(&cert_pem)),
        "EPPMUX_UPSTREAM_KEY_PEM" => Some(key_pem.clone()),
        "EPPMUX_UPSTREAM_KEY_PASSPHRASE" => Some("eppmux fixture passphrase".into()),
        "EPPMUX_TLS_KEY_PASSPHRASE" => Some(String::new()),
        "EPPMUX_PASSWORD" => Some("pw".into()),
        _ => None,
    });
    let cfg = Config::from_options(o, &env).unwrap();
    let up = &cfg.registries[0].upstream;
    assert_eq!(up.cert.to_string(), "<from EPPMUX_UPSTREAM_CERT_PEM>");
    assert!(up.key.decode().is_ok(), "decrypts with the passphrase");
    let shown = cfg.sources_summary();
    assert!(
        shown.contains("upstream_key = <from EPPMUX_UPSTREAM_KEY_PEM> (passphrase <redacted>)"),
        "{shown}"
    );
    for secret in [
        "PRIVATE KEY",
        "CERTIFICATE",
        "fixture passphrase",
        &b64(&cert_pem)[..20],
    ] {
        assert!(!shown.contains(secret), "{secret} in:\n{shown}");
        assert!(!format!("{cfg:?}").contains(secret), "{secret} in Debug");
    }
}

#[test]
fn a_file_and_its_environment_variable_together_are_refused_naming_both() {
    let mut env = pw();
    env.upstream_key_pem = Some(Secret::new("-----BEGIN PRIVATE KEY-----"));
    let msg = err(base(), &env).to_string();
    assert!(
        msg.starts_with("upstream_key (")
            && msg.contains("k.pem")
            && msg.contains("EPPMUX_UPSTREAM_KEY_PEM"),
        "{msg}"
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pass"), "p\n").unwrap();
    let mut o = base();
    o.registry.upstream_key_passphrase_file = Some(dir.path().join("pass"));
    let mut env = pw();
    env.upstream_key_passphrase = Some(Secret::new("p"));
    let msg = err(o, &env).to_string();
    assert!(
        msg.starts_with("upstream_key_passphrase_file (")
            && msg.contains("pass")
            && msg.contains("EPPMUX_UPSTREAM_KEY_PASSPHRASE"),
        "{msg}"
    );

    let mut o = base();
    o.registry.upstream_cert = None;
    let mut env = pw();
    env.upstream_cert_pem = Some(Secret::new("%% not base64 %%"));
    let msg = err(o, &env).to_string();
    assert!(
        msg.starts_with("upstream_cert (")
            && msg.contains("EPPMUX_UPSTREAM_CERT_PEM")
            && msg.contains("not PEM"),
        "{msg}"
    );
}

#[test]
fn passphrase_files_in_the_config_file_are_relative_to_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("up-pass"), "upstream pass\n").unwrap();
    std::fs::write(dir.path().join("tls-pass"), "listener pass\n").unwrap();
    let path = write(
        dir.path(),
        "eppmux.toml",
        r#"
listen_tls = "127.0.0.1:1700"
tls_cert = "c.pem"
tls_key = "k.pem"
tls_key_passphrase_file = "tls-pass"
upstream = "127.0.0.1:700"
upstream_cert = "client.pem"
upstream_key = "client-key.pem"
upstream_key_passphrase_file = "up-pass"
[[account]]
clid = "a1"
password = "first"
"#,
    );
    let cfg =
        Config::from_sources(&Explicit::default(), Some(&path), &EnvSecrets::default()).unwrap();
    let r = &cfg.registries[0];
    let pass = |k: &KeySource| k.passphrase.as_ref().map(|p| p.expose().to_string());
    assert_eq!(pass(&r.upstream.key).as_deref(), Some("upstream pass"));
    assert_eq!(
        pass(&r.tls.as_ref().unwrap().key).as_deref(),
        Some("listener pass")
    );
}

#[test]
fn upstream_tls_is_chosen_per_registry_and_openssl_needs_a_build_with_the_feature() {
    let cfg = Config::from_options(base(), &pw()).unwrap();
    assert_eq!(cfg.registries[0].upstream.tls, UpstreamTls::Rustls);

    let dir = tempfile::tempdir().unwrap();
    let text = TWO_REGISTRIES.replace(
        "upstream_key = \"net-key.pem\"\n",
        "upstream_key = \"net-key.pem\"\nupstream_tls = \"openssl\"\n",
    );
    let line = 1 + text
        .lines()
        .position(|l| l.starts_with("upstream_tls"))
        .unwrap();
    let path = write(dir.path(), "eppmux.toml", &text);
    let from_file = Config::from_sources(&Explicit::default(), Some(&path), &EnvSecrets::default());
    let explicit = parse(&[
        "eppmux",
        "--listen",
        "127.0.0.1:1700",
        "--upstream",
        "epp.example.net:700",
        "--upstream-cert",
        "c.pem",
        "--upstream-key",
        "k.pem",
        "--clid",
        "r1",
        "--upstream-tls",
        "openssl",
    ]);
    let from_flag = Config::from_sources(&explicit, None, &pw());
    if cfg!(feature = "openssl") {
        let cfg = from_file.unwrap();
        let stacks: Vec<_> = cfg.registries.iter().map(|r| r.upstream.tls).collect();
        assert_eq!(stacks, [UpstreamTls::Rustls, UpstreamTls::Openssl]);
        assert_eq!(
            from_flag.unwrap().registries[0].upstream.tls,
            UpstreamTls::Openssl
        );
    } else {
        let msg = from_file.unwrap_err().to_string();
        assert!(
            msg.starts_with("upstream_tls (")
                && msg.contains(&format!("eppmux.toml:{line}"))
                && msg.contains("registry example")
                && msg.contains("cargo build --release --features openssl"),
            "{msg}"
        );
        let msg = from_flag.unwrap_err().to_string();
        assert!(
            msg.starts_with("upstream_tls (flag --upstream-tls)"),
            "{msg}"
        );
    }
    // A stack that does not exist is refused in every build (serde's message, with its line).
    std::fs::write(&path, text.replace("\"openssl\"", "\"gnutls\"")).unwrap();
    let msg = Config::from_sources(&Explicit::default(), Some(&path), &EnvSecrets::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("unknown variant `gnutls`, expected `rustls` or `openssl`"),
        "{msg}"
    );
}
