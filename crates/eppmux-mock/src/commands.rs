//! What a mock registry does with each command: login against its accounts (a `<newPW>` changes
//! the password) and session cap,
//! logout, and domain check/info/create/delete/poll against its in-memory domains, with the
//! `hold-*` and `mismatch-*` behaviours tests rely on.

use bytes::Bytes;
use quick_xml::events::Event;
use quick_xml::name::{Namespace, ResolveResult};
use quick_xml::NsReader;
use std::sync::atomic::Ordering;
use tokio::time::Instant;
use tracing::{info, warn};

use eppmux_wire::epp::{self, Command, Message, EPP_NS};

use crate::clock;
use crate::state::{DomainRecord, LedgerEntry, Session, Shared};

const DOMAIN_NS: &str = "urn:ietf:params:xml:ns:domain-1.0";

/// What the session loop does after answering.
#[derive(PartialEq, Eq)]
pub(crate) enum After {
    Continue,
    Close,
}

/// The answer to one frame, and whether the session goes on after it. `processed` is when the
/// network model says its processing ends: a login is checked against the cap only then, plus
/// the login time, so that sessions count against the cap when a registry would count them.
pub(crate) async fn answer(
    frame: &[u8],
    sniffed: Result<Message, epp::SniffError>,
    session: &mut Session,
    shared: &Shared,
    processed: Instant,
) -> (Bytes, After) {
    let sv = shared.svtrid();
    let reply = |code: u16, msg: &str, cltrid: Option<&str>| epp::response(code, msg, cltrid, &sv);
    let cmd = match sniffed {
        Ok(Message::Hello) => {
            shared.bump(&shared.stats.hellos);
            return (greeting(&shared.cfg.sv_id), After::Continue);
        }
        Ok(Message::Command(c)) => c,
        Ok(_) => return (reply(2001, "Command syntax error", None), After::Continue),
        Err(e) => {
            let msg = format!("Command syntax error: {e}");
            return (reply(2001, &msg, None), After::Continue);
        }
    };
    let cltrid_ok = cmd
        .cltrid
        .as_ref()
        .is_none_or(|c| (3..=64).contains(&c.chars().count()));
    if shared.cfg.strict_cltrid && !cltrid_ok {
        // The schema refuses the frame, so its clTRID is not "read" either.
        let msg = "Command syntax error: clTRID length";
        return (reply(2001, msg, None), After::Continue);
    }
    let Some(owner) = session.clid.clone() else {
        if cmd.verb == "login" {
            clock::sleep_until(processed + shared.cfg.login_latency).await;
        }
        return login(&cmd, session, shared, &sv);
    };
    let cltrid = cmd.cltrid.as_deref();
    if cmd.verb == "logout" {
        let msg = "Command completed successfully; ending session";
        return (reply(1500, msg, cltrid), After::Close);
    }
    if session.forgotten {
        let msg = &shared.cfg.forgotten_message;
        return (reply(2002, msg, cltrid), After::Continue);
    }
    let response = process(frame, &cmd, &owner, session.id, shared, &sv).await;
    (response, After::Continue)
}

/// A logged-in session's command on the registry's objects; transforms go in the ledger.
async fn process(
    frame: &[u8],
    cmd: &Command,
    owner: &str,
    connection: u64,
    shared: &Shared,
    sv: &str,
) -> Bytes {
    let names = domain_names(frame);
    let wrong_cltrid = cmd.cltrid.as_ref().map(|c| format!("not-{c}"));
    let cltrid = if names.iter().any(|n| n.starts_with("mismatch-")) {
        wrong_cltrid.as_deref()
    } else {
        cmd.cltrid.as_deref()
    };
    if names.iter().any(|n| n.starts_with("hold-")) {
        shared.held.send_modify(|n| *n += 1);
        if let Ok(permit) = shared.release.acquire().await {
            permit.forget();
        }
        shared.held.send_modify(|n| *n -= 1);
    }
    let (code, msg, res_data) = execute(cmd, &names, owner, shared);
    if !cmd.is_query() {
        shared.state().ledger.push(LedgerEntry {
            connection,
            verb: cmd.verb.clone(),
            names,
            cltrid: cmd.cltrid.clone(),
            code,
        });
    }
    epp::response_with_data(code, msg, &res_data, cltrid, sv)
}

fn login(cmd: &Command, session: &mut Session, shared: &Shared, sv: &str) -> (Bytes, After) {
    let cltrid = cmd.cltrid.as_deref();
    let reply = |code: u16, msg: &str| epp::response(code, msg, cltrid, sv);
    if cmd.verb != "login" {
        return (reply(2002, "Command use error"), After::Continue);
    }
    shared.bump(&shared.stats.login_attempts);
    if let Some(code) = shared.next_login_refusal() {
        let msg = match code {
            2200 => "Authentication error",
            2501 => "Authentication error; server closing connection",
            2502 => "Session limit exceeded; server closing connection",
            _ => "Command failed",
        };
        let after = if code >= 2500 {
            After::Close
        } else {
            After::Continue
        };
        return (reply(code, msg), after);
    }
    let login = cmd.login.clone().unwrap_or_default();
    {
        let mut st = shared.state();
        let ok = st
            .passwords
            .get(&login.clid)
            .is_some_and(|pw| login.pw.ct_eq(pw));
        if !ok {
            return (reply(2200, "Authentication error"), After::Continue);
        }
        let n = st.sessions.get(&login.clid).copied().unwrap_or(0);
        if n >= shared.cfg.session_cap {
            warn!(clid = %login.clid, cap = shared.cfg.session_cap, "mock registry: session limit reached");
            return (
                reply(2502, "Session limit exceeded; server closing connection"),
                After::Close,
            );
        }
        if let Some(new_pw) = &login.new_pw {
            // The EPP schema's pwType: 6 to 16 characters. A registry's own policy refuses
            // more; this one stands for all of them.
            let new_pw = new_pw.expose();
            if !(6..=16).contains(&new_pw.chars().count()) {
                return (reply(2004, "Parameter value range error"), After::Continue);
            }
            info!(clid = %login.clid, "mock registry: password changed by a login with newPW");
            st.passwords.insert(login.clid.clone(), new_pw.to_string());
        }
        *st.sessions.entry(login.clid.clone()).or_default() += 1;
        if let Some(cert) = &session.cert {
            *st.logins_by_cert.entry(cert.clone()).or_default() += 1;
            *st.live_by_cert.entry(cert.clone()).or_default() += 1;
        }
    }
    let active = shared.stats.active_sessions.fetch_add(1, Ordering::Relaxed) + 1;
    shared
        .stats
        .peak_sessions
        .fetch_max(active, Ordering::Relaxed);
    shared.bump(&shared.stats.logins);
    session.clid = Some(login.clid);
    (
        reply(1000, "Command completed successfully"),
        After::Continue,
    )
}

/// Runs a command against the in-memory registry: (result code, message, resData).
fn execute(
    cmd: &Command,
    names: &[String],
    owner: &str,
    shared: &Shared,
) -> (u16, &'static str, String) {
    const OK: &str = "Command completed successfully";
    let first = names.first();
    let mut st = shared.state();
    match (cmd.verb.as_str(), cmd.object.as_deref(), first) {
        ("poll", _, _) => (
            1300,
            "Command completed successfully; no messages",
            String::new(),
        ),
        ("check", Some("domain"), _) => {
            let mut cds = String::new();
            for name in names {
                let avail = !st.domains.contains_key(name);
                cds.push_str(&format!(
                    "<domain:cd><domain:name avail=\"{}\">{}</domain:name></domain:cd>",
                    u8::from(avail),
                    esc(name)
                ));
            }
            let res = format!(
                "<resData><domain:chkData xmlns:domain=\"{DOMAIN_NS}\">{cds}</domain:chkData></resData>"
            );
            (1000, OK, res)
        }
        ("info" | "create" | "delete", Some("domain"), None) => {
            (2003, "Required parameter missing", String::new())
        }
        ("info", Some("domain"), Some(name)) => match st.domains.get(name) {
            None => (2303, "Object does not exist", String::new()),
            Some(rec) => {
                let res = format!(
                    "<resData><domain:infData xmlns:domain=\"{DOMAIN_NS}\"><domain:name>{}</domain:name>\
                     <domain:roid>{}</domain:roid><domain:status s=\"ok\"/><domain:clID>{}</domain:clID>\
                     </domain:infData></resData>",
                    esc(name),
                    esc(&rec.roid),
                    esc(&rec.owner)
                );
                (1000, OK, res)
            }
        },
        ("create", Some("domain"), Some(name)) => {
            if st.domains.contains_key(name) {
                return (2302, "Object exists", String::new());
            }
            let roid = format!("D{}-MOCK", shared.roid.fetch_add(1, Ordering::Relaxed));
            st.domains.insert(
                name.clone(),
                DomainRecord {
                    owner: owner.to_string(),
                    roid,
                },
            );
            let res = format!(
                "<resData><domain:creData xmlns:domain=\"{DOMAIN_NS}\"><domain:name>{}</domain:name>\
                 <domain:crDate>{}</domain:crDate></domain:creData></resData>",
                esc(name),
                humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            );
            (1000, OK, res)
        }
        ("delete", Some("domain"), Some(name)) => match st.domains.get(name) {
            None => (2303, "Object does not exist", String::new()),
            Some(rec) if rec.owner != owner => (2201, "Authorization error", String::new()),
            Some(_) => {
                st.domains.remove(name);
                (1000, OK, String::new())
            }
        },
        _ => (2101, "Unimplemented command", String::new()),
    }
}

fn esc(s: &str) -> std::borrow::Cow<'_, str> {
    quick_xml::escape::escape(s)
}

pub fn greeting(sv_id: &str) -> Bytes {
    Bytes::from(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"no\"?><epp xmlns=\"{EPP_NS}\"><greeting>\
         <svID>{}</svID><svDate>{}</svDate><svcMenu><version>1.0</version><lang>en</lang>\
         <objURI>{DOMAIN_NS}</objURI><objURI>urn:ietf:params:xml:ns:contact-1.0</objURI>\
         <objURI>urn:ietf:params:xml:ns:host-1.0</objURI><svcExtension>\
         <extURI>urn:ietf:params:xml:ns:secDNS-1.1</extURI></svcExtension></svcMenu>\
         <dcp><access><all/></access><statement><purpose><admin/><prov/></purpose>\
         <recipient><ours/><public/></recipient><retention><stated/></retention></statement></dcp>\
         </greeting></epp>",
        esc(sv_id),
        humantime::format_rfc3339_millis(std::time::SystemTime::now())
    ))
}

/// The `<domain:name>` values of a command, lower-cased (domain names are case-insensitive).
fn domain_names(frame: &[u8]) -> Vec<String> {
    let mut reader = NsReader::from_reader(frame);
    let mut names = Vec::new();
    let mut in_name = false;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_resolved_event_into(&mut buf) {
            Ok((ns, Event::Start(e))) => {
                in_name = e.local_name().as_ref() == b"name"
                    && matches!(ns, ResolveResult::Bound(Namespace(n)) if n == DOMAIN_NS.as_bytes());
                if in_name {
                    names.push(String::new());
                }
            }
            Ok((_, Event::Text(t))) if in_name => {
                if let (Some(last), Ok(text)) = (names.last_mut(), t.decode()) {
                    last.push_str(text.trim());
                }
            }
            Ok((_, Event::End(_))) => in_name = false,
            Ok((_, Event::Eof)) | Err(_) => break,
            _ => {}
        }
    }
    names.into_iter().map(|n| n.to_ascii_lowercase()).collect()
}
