//! EPP message sniffing and the few messages eppmux writes itself.
//!
//! The proxy never builds a DOM of what it forwards: [`sniff`] streams through a frame once with
//! quick-xml's namespace-aware reader and keeps only what routing needs (what kind of message, the
//! command verb, clTRID, login fields, result code). Elements are matched by namespace URI and
//! local name, so `<login>`, `<epp:login>` and lxml's `<ns0:login>` are the same thing.
//!
//! A frame that is not a single well-formed `<epp>` message in the EPP namespace is refused with
//! a [`SniffError`]: no DOCTYPE (so no entity is ever declared or expanded), no undeclared entity
//! references, no nesting deeper than [`MAX_DEPTH`], one command per frame.

pub mod code;

use bytes::Bytes;
use quick_xml::escape::{escape, resolve_predefined_entity};
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::{Namespace, ResolveResult};
use quick_xml::NsReader;

use crate::secret::Secret;

pub const EPP_NS: &str = "urn:ietf:params:xml:ns:epp-1.0";

/// Far deeper than any EPP schema needs (a secDNS create is about 7 levels).
pub const MAX_DEPTH: usize = 64;

/// What a frame is, as far as routing cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello,
    Greeting(Greeting),
    Command(Command),
    Response(Response),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Greeting {
    pub sv_id: String,
    pub sv_date: String,
    pub obj_uris: Vec<String>,
    pub ext_uris: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Command {
    /// Local name of the element under `<command>` (`login`, `check`, `poll`, …), or `extension`
    /// for a protocol extension that stands directly under `<epp>`.
    pub verb: String,
    /// Short name of the object the command acts on, from its namespace (`domain`, `host`, …).
    pub object: Option<String>,
    pub cltrid: Option<String>,
    /// The `op` attribute of the verb element (`<poll op="req">`, `<transfer op="query">`).
    pub op: Option<String>,
    pub login: Option<Login>,
}

impl Command {
    /// True for commands that change nothing at the registry (RFC 5730 §2.9.2 query commands):
    /// only these may be sent again after their response was lost. Anything unknown is a transform.
    pub fn is_query(&self) -> bool {
        match self.verb.as_str() {
            "check" | "info" | "hello" => true,
            "poll" => self.op.as_deref() == Some("req"),
            "transfer" => self.op.as_deref() == Some("query"),
            _ => false,
        }
    }

    /// `domain:check`-style name for logs and metrics.
    pub fn display_name(&self) -> String {
        match &self.object {
            Some(obj) => format!("{obj}:{}", self.verb),
            None => self.verb.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Login {
    pub clid: String,
    pub pw: Secret,
    pub has_new_pw: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    pub code: u16,
    pub msg: String,
    pub cltrid: Option<String>,
    /// The registry's transaction id. Every answer gets a new one, so an answer whose svTRID was
    /// already delivered on the same session is a duplicate, whatever its clTRID says.
    pub svtrid: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SniffError {
    #[error("frame is not valid UTF-8")]
    NotUtf8,
    #[error("XML is not well-formed: {0}")]
    Malformed(String),
    #[error("DOCTYPE/DTD is not allowed in EPP")]
    DocType,
    #[error("undeclared entity reference &{0};")]
    Entity(String),
    #[error("root element is not <epp> in namespace {EPP_NS}")]
    NotEpp,
    #[error("frame holds more than one EPP message")]
    Several,
    #[error("frame holds no EPP message")]
    Empty,
    #[error("elements nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("result code is missing or not a number")]
    BadResultCode,
}

/// Which text the sniffer is collecting at the moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    ClTrid,
    SvTrid,
    ClId,
    Pw,
    ResultMsg,
    SvId,
    SvDate,
    ObjUri,
    ExtUri,
}

/// Streams through `frame` and returns what it is. Also collects clTRID on every command, the
/// fields of `<login>` and the first `<result>` of a response.
pub fn sniff(frame: &[u8]) -> Result<Message, SniffError> {
    let text = std::str::from_utf8(frame).map_err(|_| SniffError::NotUtf8)?;
    // Text is not trimmed per event: that would also eat the spaces around an entity reference
    // (`a &amp; b`); captured values are trimmed whole instead (EPP's values are XML tokens).
    let mut reader = NsReader::from_str(text);

    // Path of (is-EPP-namespace, which element) from the root down to the current element. Only
    // the handful of names routing looks at are told apart, so nothing is allocated per element.
    let mut path: Vec<(bool, Tag)> = Vec::with_capacity(16);
    let mut kind: Option<&'static str> = None;
    let mut cmd = Command::default();
    let mut resp = Response::default();
    let mut greeting = Greeting::default();
    let mut seen_result = false;
    let mut capture: Option<(Field, String)> = None;
    let mut new_pw = false;

    loop {
        let (ns, event) = reader
            .read_resolved_event()
            .map_err(|e| SniffError::Malformed(e.to_string()))?;
        let is_epp = matches!(ns, ResolveResult::Bound(Namespace(n)) if n == EPP_NS.as_bytes());
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let empty = matches!(event, Event::Empty(_));
                let local_bytes = e.local_name();
                let local =
                    std::str::from_utf8(local_bytes.as_ref()).map_err(|_| SniffError::NotUtf8)?;
                let depth = path.len();
                if depth >= MAX_DEPTH {
                    return Err(SniffError::TooDeep);
                }
                let parent = path.last().map(|(epp, t)| (*epp, t.name()));
                let grand = if depth >= 2 {
                    path.get(depth - 2).map(|(epp, t)| (*epp, t.name()))
                } else {
                    None
                };
                match (depth, parent) {
                    (0, _) if !(is_epp && local == "epp") => return Err(SniffError::NotEpp),
                    (0, _) => {}
                    (1, _) => {
                        let k = match (is_epp, local) {
                            (true, "hello") => "hello",
                            (true, "greeting") => "greeting",
                            (true, "command") => "command",
                            (true, "response") => "response",
                            (true, "extension") => {
                                cmd.verb = "extension".into();
                                "command"
                            }
                            _ => {
                                return Err(SniffError::Malformed(format!(
                                    "unexpected <{local}> under <epp>"
                                )))
                            }
                        };
                        if kind.replace(k).is_some() {
                            return Err(SniffError::Several);
                        }
                    }
                    (2, Some((true, "command"))) if is_epp => match local {
                        "clTRID" => capture = Some((Field::ClTrid, String::new())),
                        "extension" => {}
                        verb => {
                            if !cmd.verb.is_empty() {
                                return Err(SniffError::Several);
                            }
                            cmd.verb = verb.to_string();
                            cmd.op = attribute(e, b"op")?;
                        }
                    },
                    (3, Some((true, verb))) if grand == Some((true, "command")) => {
                        if verb == "login" && is_epp {
                            match local {
                                "clID" => capture = Some((Field::ClId, String::new())),
                                "pw" => capture = Some((Field::Pw, String::new())),
                                "newPW" => new_pw = true,
                                _ => {}
                            }
                        } else if cmd.object.is_none() && !is_epp {
                            if let ResolveResult::Bound(Namespace(n)) = ns {
                                cmd.object = Some(short_object_name(n));
                            }
                        }
                    }
                    (2, Some((true, "response")))
                        if is_epp && local == "result" && !seen_result =>
                    {
                        seen_result = true;
                        let code = attribute(e, b"code")?.ok_or(SniffError::BadResultCode)?;
                        resp.code = code.parse().map_err(|_| SniffError::BadResultCode)?;
                    }
                    (3, Some((true, "result")))
                        if is_epp && local == "msg" && resp.msg.is_empty() =>
                    {
                        capture = Some((Field::ResultMsg, String::new()));
                    }
                    (3, Some((true, "trID"))) if is_epp && local == "clTRID" => {
                        capture = Some((Field::ClTrid, String::new()));
                    }
                    (3, Some((true, "trID"))) if is_epp && local == "svTRID" => {
                        capture = Some((Field::SvTrid, String::new()));
                    }
                    (2, Some((true, "greeting"))) if is_epp && local == "svID" => {
                        capture = Some((Field::SvId, String::new()));
                    }
                    (2, Some((true, "greeting"))) if is_epp && local == "svDate" => {
                        capture = Some((Field::SvDate, String::new()));
                    }
                    (3, Some((true, "svcMenu"))) if is_epp && local == "objURI" => {
                        capture = Some((Field::ObjUri, String::new()));
                    }
                    (4, Some((true, "svcExtension"))) if is_epp && local == "extURI" => {
                        capture = Some((Field::ExtUri, String::new()));
                    }
                    _ => {}
                }
                if empty {
                    // An empty element has no text: a captured field is simply empty.
                    if let Some((field, value)) = capture.take() {
                        store(field, value, &mut cmd, &mut resp, &mut greeting);
                    }
                } else {
                    let tag = match (depth, parent) {
                        // The verb under <command> is kept as "the verb": its children are matched
                        // on whether it is <login>.
                        (2, Some((true, "command"))) if is_epp && local == "login" => Tag::Login,
                        (2, Some((true, "command"))) => Tag::Verb,
                        _ => Tag::of(local),
                    };
                    path.push((is_epp, tag));
                }
            }
            Event::End(_) => {
                path.pop();
                if let Some((field, value)) = capture.take() {
                    store(field, value, &mut cmd, &mut resp, &mut greeting);
                }
            }
            Event::Text(t) => {
                if path.is_empty() && !t.iter().all(u8::is_ascii_whitespace) {
                    return Err(SniffError::Malformed(
                        "text outside the root element".into(),
                    ));
                }
                if let Some((_, buf)) = capture.as_mut() {
                    buf.push_str(
                        &t.decode()
                            .map_err(|e| SniffError::Malformed(e.to_string()))?,
                    );
                }
            }
            Event::CData(t) => {
                if let Some((_, buf)) = capture.as_mut() {
                    buf.push_str(
                        &t.decode()
                            .map_err(|e| SniffError::Malformed(e.to_string()))?,
                    );
                }
            }
            Event::GeneralRef(r) => {
                let resolved = if r.is_char_ref() {
                    r.resolve_char_ref()
                        .map_err(|e| SniffError::Malformed(e.to_string()))?
                        .ok_or_else(|| SniffError::Malformed("bad character reference".into()))?
                        .to_string()
                } else {
                    let name = r
                        .decode()
                        .map_err(|e| SniffError::Malformed(e.to_string()))?;
                    resolve_predefined_entity(&name)
                        .ok_or_else(|| SniffError::Entity(name.to_string()))?
                        .to_string()
                };
                if let Some((_, buf)) = capture.as_mut() {
                    buf.push_str(&resolved);
                }
            }
            Event::DocType(_) => return Err(SniffError::DocType),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if !path.is_empty() {
        return Err(SniffError::Malformed(
            "document ends inside an element".into(),
        ));
    }
    match kind {
        None => Err(SniffError::Empty),
        Some("hello") => Ok(Message::Hello),
        Some("greeting") => Ok(Message::Greeting(greeting)),
        Some("response") => {
            if !seen_result {
                return Err(SniffError::BadResultCode);
            }
            Ok(Message::Response(resp))
        }
        Some(_) => {
            if cmd.verb.is_empty() {
                return Err(SniffError::Empty);
            }
            if cmd.verb == "login" {
                if let Some(login) = cmd.login.as_mut() {
                    login.has_new_pw = new_pw;
                } else {
                    cmd.login = Some(Login {
                        has_new_pw: new_pw,
                        ..Login::default()
                    });
                }
            }
            Ok(Message::Command(cmd))
        }
    }
}

/// Best effort for a frame [`sniff`] refused: the text of the first `clTRID` element, if it is
/// plain text, so that the 2001 answer can carry it. Never expands anything.
pub fn salvage_cltrid(frame: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(frame).ok()?;
    let mut reader = NsReader::from_str(text);
    let mut inside = false;
    let mut value = String::new();
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) if e.local_name().as_ref() == b"clTRID" => inside = true,
            Event::Text(t) if inside => value.push_str(&t.decode().ok()?),
            Event::End(_) if inside => {
                let value = value.trim();
                return (!value.is_empty() && value.len() <= 64).then(|| value.to_string());
            }
            // An entity reference inside the clTRID: give up rather than resolve anything.
            Event::GeneralRef(_) if inside => return None,
            Event::Eof => return None,
            _ => {}
        }
    }
}

/// The elements whose children the sniffer looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Epp,
    Command,
    Response,
    Greeting,
    Result,
    TrId,
    SvcMenu,
    SvcExtension,
    Login,
    Verb,
    Other,
}

impl Tag {
    fn of(local: &str) -> Tag {
        match local {
            "epp" => Tag::Epp,
            "command" => Tag::Command,
            "response" => Tag::Response,
            "greeting" => Tag::Greeting,
            "result" => Tag::Result,
            "trID" => Tag::TrId,
            "svcMenu" => Tag::SvcMenu,
            "svcExtension" => Tag::SvcExtension,
            _ => Tag::Other,
        }
    }

    /// The name the matching in [`sniff`] compares against.
    fn name(self) -> &'static str {
        match self {
            Tag::Epp => "epp",
            Tag::Command => "command",
            Tag::Response => "response",
            Tag::Greeting => "greeting",
            Tag::Result => "result",
            Tag::TrId => "trID",
            Tag::SvcMenu => "svcMenu",
            Tag::SvcExtension => "svcExtension",
            Tag::Login => "login",
            Tag::Verb => "verb",
            Tag::Other => "",
        }
    }
}

fn store(field: Field, value: String, cmd: &mut Command, resp: &mut Response, g: &mut Greeting) {
    let value = match value.trim() {
        trimmed if trimmed.len() == value.len() => value,
        trimmed => trimmed.to_string(),
    };
    match field {
        Field::ClTrid => {
            // The same element name is used by commands and responses; only one of them is filled.
            cmd.cltrid = Some(value.clone());
            resp.cltrid = Some(value);
        }
        Field::SvTrid => resp.svtrid = Some(value),
        Field::ClId => cmd.login.get_or_insert_with(Login::default).clid = value,
        Field::Pw => cmd.login.get_or_insert_with(Login::default).pw = Secret::new(value),
        Field::ResultMsg => resp.msg = value,
        Field::SvId => g.sv_id = value,
        Field::SvDate => g.sv_date = value,
        Field::ObjUri => g.obj_uris.push(value),
        Field::ExtUri => g.ext_uris.push(value),
    }
}

fn attribute(e: &BytesStart<'_>, name: &[u8]) -> Result<Option<String>, SniffError> {
    for attr in e.attributes() {
        let attr = attr.map_err(|err| SniffError::Malformed(err.to_string()))?;
        if attr.key.local_name().as_ref() == name {
            let value = attr
                .unescape_value()
                .map_err(|err| SniffError::Malformed(err.to_string()))?;
            return Ok(Some(value.into_owned()));
        }
    }
    Ok(None)
}

/// `urn:ietf:params:xml:ns:domain-1.0` → `domain`; anything else is kept whole.
fn short_object_name(ns: &[u8]) -> String {
    let s = String::from_utf8_lossy(ns);
    let tail = s.rsplit(':').next().unwrap_or(&s);
    match tail.rsplit_once('-') {
        Some((name, _version)) if !name.is_empty() => name.to_string(),
        _ => tail.to_string(),
    }
}

/// True when a 2002 answer means the registry has forgotten the session (it then processes
/// nothing), as opposed to an ordinary "command use error". Registries word it differently
/// (.gov: "Registrar is not logged in."), so the message is normalised and matched on phrases.
pub fn is_not_logged_in(code: u16, msg: &str) -> bool {
    if code != 2002 {
        return false;
    }
    let normalised: String = msg
        .chars()
        .map(|c| {
            if c.is_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                ' '
            }
        })
        .collect();
    let words = normalised.split_whitespace().collect::<Vec<_>>().join(" ");
    [
        "not logged",
        "login required",
        "log in first",
        "must log in",
        "must login",
        "no active session",
        "session expired",
        "session has expired",
        "session timed out",
        "not authenticated",
        "must be logged in",
        "login first",
        "please log in",
        "please login",
        "not logged on",
    ]
    .iter()
    .any(|phrase| words.contains(phrase))
}

/// True for result codes with which the registry closes the session (2500, 2501, 2502).
pub fn is_closing(code: u16) -> bool {
    matches!(code, 2500..=2502)
}

// ---------------------------------------------------------------------------------------------
// Messages eppmux writes itself. Every value that comes from a peer or from configuration is
// XML-escaped.

const XML_HEAD: &str = r#"<?xml version="1.0" encoding="UTF-8" standalone="no"?>"#;

/// A `<response>` with one result and the transaction identifiers.
pub fn response(code: u16, msg: &str, cltrid: Option<&str>, svtrid: &str) -> Bytes {
    response_with_data(code, msg, "", cltrid, svtrid)
}

/// A `<response>` that also carries `res_data` (already-built XML, e.g. `<resData>…</resData>`).
pub fn response_with_data(
    code: u16,
    msg: &str,
    res_data: &str,
    cltrid: Option<&str>,
    svtrid: &str,
) -> Bytes {
    let cltrid = cltrid
        .map(|c| format!("<clTRID>{}</clTRID>", escape(c)))
        .unwrap_or_default();
    Bytes::from(format!(
        "{XML_HEAD}<epp xmlns=\"{EPP_NS}\"><response><result code=\"{code}\"><msg>{}</msg></result>\
         {res_data}<trID>{cltrid}<svTRID>{}</svTRID></trID></response></epp>",
        escape(msg),
        escape(svtrid)
    ))
}

pub fn hello() -> Bytes {
    Bytes::from(format!("{XML_HEAD}<epp xmlns=\"{EPP_NS}\"><hello/></epp>"))
}

pub fn logout(cltrid: &str) -> Bytes {
    Bytes::from(format!(
        "{XML_HEAD}<epp xmlns=\"{EPP_NS}\"><command><logout/><clTRID>{}</clTRID></command></epp>",
        escape(cltrid)
    ))
}

/// The upstream `<login>`; the only place the registry password is ever written.
pub fn login(
    clid: &str,
    pw: &Secret,
    obj_uris: &[String],
    ext_uris: &[String],
    cltrid: &str,
) -> Bytes {
    let mut svcs = String::new();
    for uri in obj_uris {
        svcs.push_str(&format!("<objURI>{}</objURI>", escape(uri.as_str())));
    }
    if !ext_uris.is_empty() {
        svcs.push_str("<svcExtension>");
        for uri in ext_uris {
            svcs.push_str(&format!("<extURI>{}</extURI>", escape(uri.as_str())));
        }
        svcs.push_str("</svcExtension>");
    }
    Bytes::from(format!(
        "{XML_HEAD}<epp xmlns=\"{EPP_NS}\"><command><login><clID>{}</clID><pw>{}</pw>\
         <options><version>1.0</version><lang>en</lang></options><svcs>{svcs}</svcs></login>\
         <clTRID>{}</clTRID></command></epp>",
        escape(clid),
        escape(pw.expose()),
        escape(cltrid)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/frames/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn command(name: &str) -> Command {
        match sniff(&sample(name)) {
            Ok(Message::Command(c)) => c,
            other => panic!("{name}: expected a command, got {other:?}"),
        }
    }

    #[test]
    fn login_in_every_prefix_style() {
        for name in [
            "login-default-ns.xml",
            "login-epplib.xml",
            "login-newpw-epp-prefix.xml",
        ] {
            let c = command(name);
            assert_eq!(c.verb, "login", "{name}");
            let login = c.login.expect("login fields");
            assert_eq!(login.clid, "registrar1", "{name}");
            assert!(login.pw.ct_eq("s3cret-Pw"), "{name}");
            assert_eq!(login.has_new_pw, name.contains("newpw"), "{name}");
        }
        assert_eq!(
            command("login-epplib.xml").cltrid.as_deref(),
            Some("tj2a5q#2026-11-24T16:00:41.090077")
        );
    }

    #[test]
    fn commands_and_their_cltrids() {
        let c = command("domain-check.xml");
        assert_eq!(
            (c.verb.as_str(), c.object.as_deref()),
            ("check", Some("domain"))
        );
        assert_eq!(c.cltrid.as_deref(), Some("ABC-20001"));
        assert_eq!(c.display_name(), "domain:check");
        let c = command("domain-create-secdns.xml");
        assert_eq!(
            (c.verb.as_str(), c.cltrid.as_deref()),
            ("create", Some("ABC-30001"))
        );
        let c = command("domain-info-no-cltrid.xml");
        assert_eq!((c.verb.as_str(), c.cltrid), ("info", None));
        let c = command("poll-ack.xml");
        assert_eq!((c.verb.as_str(), c.op.as_deref()), ("poll", Some("ack")));
        assert!(!c.is_query(), "poll ack removes a message");
        assert!(command("poll-req.xml").is_query());
        assert!(command("domain-check.xml").is_query());
        assert!(command("domain-info-no-cltrid.xml").is_query());
        assert!(!command("domain-create-secdns.xml").is_query());
        assert!(!command("domain-delete.xml").is_query());
        assert_eq!(command("logout.xml").verb, "logout");
        assert_eq!(sniff(&sample("hello.xml")), Ok(Message::Hello));
    }

    #[test]
    fn responses_and_greeting() {
        let Ok(Message::Response(r)) = sniff(&sample("response-2002-not-logged-in.xml")) else {
            panic!("not a response")
        };
        assert_eq!(
            (r.code, r.msg.as_str()),
            (2002, "Registrar is not logged in.")
        );
        assert_eq!(r.cltrid.as_deref(), Some("ABC-20001"));
        assert!(r.svtrid.is_some());
        let Ok(Message::Greeting(g)) = sniff(&sample("greeting.xml")) else {
            panic!("not a greeting")
        };
        assert_eq!(g.sv_id, "Example Registry EPP");
        assert_eq!(g.obj_uris.len(), 3);
        assert_eq!(
            g.ext_uris,
            vec!["urn:ietf:params:xml:ns:secDNS-1.1".to_string()]
        );
    }

    #[test]
    fn cltrid_is_salvaged_from_refused_frames_without_expanding_anything() {
        assert_eq!(
            salvage_cltrid(&sample("hostile-entities.xml")).as_deref(),
            Some("EVIL-1")
        );
        assert_eq!(
            salvage_cltrid(&sample("hostile-two-commands.xml")).as_deref(),
            Some("T-1")
        );
        assert_eq!(salvage_cltrid(b"<epp><command><clTRID>&x;</clTRID>"), None);
        assert_eq!(salvage_cltrid(b"\xff"), None);
    }

    #[test]
    fn not_logged_in_is_recognised_in_its_wordings() {
        for msg in [
            "Registrar is not logged in.",
            "Command use error: NOT LOGGED IN",
            "not-logged-in",
            "Session expired, please login",
            "Login required",
            "You must be logged in",
            "Please login first",
            "Please log in",
        ] {
            assert!(is_not_logged_in(2002, msg), "{msg}");
        }
        assert!(!is_not_logged_in(2002, "Command use error"));
        assert!(!is_not_logged_in(2002, "Transfer already pending"));
        assert!(!is_not_logged_in(2200, "Registrar is not logged in."));
        assert!(is_closing(2500) && is_closing(2502) && !is_closing(2400));
    }

    #[test]
    fn hostile_frames_are_refused() {
        assert_eq!(
            sniff(&sample("hostile-entities.xml")),
            Err(SniffError::DocType)
        );
        assert_eq!(
            sniff(&sample("hostile-two-commands.xml")),
            Err(SniffError::Several)
        );
        assert_eq!(sniff(b"\xff\xfe<epp/>"), Err(SniffError::NotUtf8));
        assert_eq!(
            sniff(b"<epp xmlns=\"urn:other\"><hello/></epp>"),
            Err(SniffError::NotEpp)
        );
        assert!(sniff(b"<epp xmlns=\"urn:ietf:params:xml:ns:epp-1.0\"><hello>").is_err());
        let entity = format!(
            "<epp xmlns=\"{EPP_NS}\"><command><check/><clTRID>&x;</clTRID></command></epp>"
        );
        assert_eq!(
            sniff(entity.as_bytes()),
            Err(SniffError::Entity("x".into()))
        );
        let deep = format!("<epp xmlns=\"{EPP_NS}\"><command>{}", "<a>".repeat(100));
        assert_eq!(sniff(deep.as_bytes()), Err(SniffError::TooDeep));
        assert_eq!(
            sniff(format!("<epp xmlns=\"{EPP_NS}\"/>").as_bytes()),
            Err(SniffError::Empty)
        );
    }

    #[test]
    fn written_messages_sniff_back_and_escape() {
        let r = response(2400, "pool <exhausted>", Some("a&b"), "sv-1");
        let Ok(Message::Response(parsed)) = sniff(&r) else {
            panic!()
        };
        assert_eq!(parsed.code, 2400);
        assert_eq!(parsed.msg, "pool <exhausted>");
        assert_eq!(parsed.cltrid.as_deref(), Some("a&b"));
        let l = login(
            "reg&1",
            &Secret::new("p<w"),
            &["urn:a".into()],
            &["urn:b".into()],
            "t1",
        );
        let c = match sniff(&l) {
            Ok(Message::Command(c)) => c,
            other => panic!("{other:?}"),
        };
        let login = c.login.unwrap();
        assert_eq!(login.clid, "reg&1");
        assert!(login.pw.ct_eq("p<w"));
        assert_eq!(sniff(&hello()), Ok(Message::Hello));
        assert_eq!(
            sniff(&logout("x")).map(|m| matches!(m, Message::Command(c) if c.verb == "logout")),
            Ok(true)
        );
    }
}
