//! The audit trail: one event per command a client sent through eppmux, and one per local login,
//! refusal and logout, with what a registry's support desk or an auditor asks for — which
//! registry and account, which client connection and upstream session, the command and the objects
//! it named, clTRID, the registry's svTRID, result code and latency. Never a password or authInfo:
//! the object identifiers come from the sniffer, which reads names and ids only.
//!
//! The events are ordinary `tracing` events with the target [`TARGET`], so they are fields in the
//! JSON log; with `audit_log` they are also written as JSON lines to a file of their own
//! ([`AuditFile`]), reopened on SIGHUP so that logrotate can move it away.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::info;
use tracing_subscriber::fmt::MakeWriter;

use crate::shown::MAX_CHARS;

/// The `tracing` target of every audit event.
pub const TARGET: &str = "eppmux::audit";

/// More objects than this in one command are counted, not listed (a `<check>` of a few hundred
/// names would otherwise make one huge line).
const MAX_OBJECTS: usize = 100;

/// Who sent a command: the local connection.
pub struct Client<'a> {
    pub registry: &'a str,
    pub conn: u64,
    pub peer: IpAddr,
}

/// How a forwarded command ended, for its audit event.
pub enum Outcome<'a> {
    /// The registry answered.
    Answered {
        code: u16,
        svtrid: Option<&'a str>,
        session: u64,
    },
    /// It was written to the registry and its answer was lost: it may have run. The client's
    /// connection was closed and nothing was replayed.
    Lost,
    /// eppmux answered 2400 without sending it.
    NotSent,
}

/// One forwarded command.
pub struct CommandEvent<'a> {
    pub client: Client<'a>,
    pub account: &'a str,
    /// From a fixed set (`domain:create`): see `Command::metric_name`.
    pub command: &'static str,
    pub objects: &'a [String],
    pub cltrid: Option<&'a str>,
    pub outcome: Outcome<'a>,
    pub latency: Duration,
}

/// Records one forwarded command.
pub fn command(e: &CommandEvent<'_>) {
    // Nobody listens (a log level above info, no audit file): spare the fields' formatting,
    // which would cost more than the forwarding itself.
    if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
        return;
    }
    let objects = objects_field(e.objects);
    let cltrid = e.cltrid.map(crate::shown::shown);
    let (outcome, code, svtrid, session) = match &e.outcome {
        Outcome::Answered {
            code,
            svtrid,
            session,
        } => (
            "answered",
            Some(*code),
            svtrid.map(crate::shown::shown),
            Some(*session),
        ),
        Outcome::Lost => ("lost", None, None, None),
        Outcome::NotSent => (
            "not_sent",
            Some(crate::epp::code::COMMAND_FAILED),
            None,
            None,
        ),
    };
    info!(
        target: TARGET,
        event = "command",
        registry = e.client.registry,
        account = e.account,
        conn = e.client.conn,
        peer = %e.client.peer,
        session,
        command = e.command,
        objects = %objects,
        object_count = e.objects.len(),
        cltrid = cltrid.map(tracing::field::display),
        svtrid = svtrid.map(tracing::field::display),
        outcome,
        code,
        latency_us = e.latency.as_micros() as u64,
    );
}

/// What happened to a local login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Session {
    LoggedIn,
    /// Wrong clID or password.
    Refused,
    /// Refused, and the connection closed (too many failures, or the login limiter).
    RefusedClosing,
    LoggedOut,
}

/// Records a local login, refusal or logout. `clid` is what the client sent (shown escaped);
/// `account` the account it logged in as.
pub fn session(client: &Client<'_>, what: Session, clid: &str, account: Option<&str>) {
    let event = match what {
        Session::LoggedIn => "login",
        Session::Refused => "login_refused",
        Session::RefusedClosing => "login_refused_closing",
        Session::LoggedOut => "logout",
    };
    info!(
        target: TARGET,
        event,
        registry = client.registry,
        conn = client.conn,
        peer = %client.peer,
        clid = %crate::shown::shown(clid),
        account,
    );
}

/// The objects as a JSON array of strings (escaped by JSON's rules, each cut like any value a
/// client chose), so that a list survives both log formats unambiguously.
fn objects_field(objects: &[String]) -> String {
    let cut: Vec<String> = objects
        .iter()
        .take(MAX_OBJECTS)
        .map(|o| o.chars().take(MAX_CHARS).collect())
        .collect();
    serde_json::to_string(&cut).unwrap_or_default()
}

/// The audit file: JSON lines appended to `path`, reopened by [`AuditFile::reopen`] (on SIGHUP,
/// after logrotate moved it). Without a path, writes go nowhere. Hand-written because the
/// appenders of `tracing-appender` rotate by time themselves and cannot be told to reopen.
#[derive(Clone, Default)]
pub struct AuditFile {
    inner: Arc<Mutex<Option<(PathBuf, File)>>>,
    /// Whether a file is open, read without the lock for every event: without one, the audit
    /// layer turns the events down before they are formatted.
    open: Arc<AtomicBool>,
}

impl AuditFile {
    /// Opens (creates, appends to) `path`; None writes nowhere.
    pub fn open(path: Option<&Path>) -> io::Result<AuditFile> {
        let file = AuditFile::default();
        file.reopen(path)?;
        Ok(file)
    }

    /// Opens `path` again (the same or a new one) for the lines that follow; on error the file
    /// in use stays.
    pub fn reopen(&self, path: Option<&Path>) -> io::Result<()> {
        let next = match path {
            Some(path) => Some((path.to_path_buf(), open_append(path)?)),
            None => None,
        };
        self.open.store(next.is_some(), Ordering::Relaxed);
        *self.lock() = next;
        Ok(())
    }

    /// Whether the audit events have a file to go to.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(PathBuf, File)>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o640);
    options.open(path)
}

/// One event's line, written whole when the formatter is done with it (appends of one buffer
/// keep concurrent events from interleaving).
pub struct AuditLine {
    file: AuditFile,
    buf: Vec<u8>,
}

impl Write for AuditLine {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for AuditLine {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if let Some((path, file)) = self.file.lock().as_mut() {
            if let Err(e) = file.write_all(&self.buf) {
                // Not through tracing: this runs inside the subscriber.
                eprintln!("eppmux: cannot write the audit log {}: {e}", path.display());
            }
        }
    }
}

impl<'a> MakeWriter<'a> for AuditFile {
    type Writer = AuditLine;

    fn make_writer(&'a self) -> AuditLine {
        AuditLine {
            file: self.clone(),
            buf: Vec::with_capacity(512),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_a_json_list_cut_in_count_and_length() {
        let many: Vec<String> = (0..150).map(|i| format!("d{i}.gov")).collect();
        let field = objects_field(&many);
        let parsed: Vec<String> = serde_json::from_str(&field).unwrap();
        assert_eq!(parsed.len(), MAX_OBJECTS);
        let forged = vec!["a.gov\"]\n{\"x".to_string(), "b".repeat(500)];
        let field = objects_field(&forged);
        assert!(!field.contains('\n'));
        let parsed: Vec<String> = serde_json::from_str(&field).unwrap();
        assert_eq!(parsed[0], forged[0]);
        assert_eq!(parsed[1].len(), MAX_CHARS);
    }

    #[test]
    fn the_audit_file_is_reopened_at_its_path_after_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let file = AuditFile::open(Some(&path)).unwrap();
        writeln!(file.make_writer(), "one").unwrap();
        let rotated = dir.path().join("audit.jsonl.1");
        std::fs::rename(&path, &rotated).unwrap();
        writeln!(file.make_writer(), "two").unwrap();
        file.reopen(Some(&path)).unwrap();
        writeln!(file.make_writer(), "three").unwrap();
        assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "one\ntwo\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");
    }
}
