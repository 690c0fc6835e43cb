//! EPP message sniffing and the few messages eppmux writes itself.
//!
//! The proxy never builds a DOM of what it forwards: [`sniff`] streams through a frame once and
//! keeps only what routing needs (what kind of message, the command verb, its object namespace and
//! `op`, clTRID, login fields, result code). Elements and attributes are matched by namespace URI
//! and local name, so `<login>`, `<epp:login>` and lxml's `<ns0:login>` are the same thing.
//!
//! # One reading of a frame
//!
//! eppmux decides from its own reading whether a command may be sent again after a lost answer (a
//! query), must never be (a transform), or is answered here (hello, login, logout); the registry
//! acts on its own reading of the same bytes with a conforming XML parser. Wherever two conforming
//! readings could differ, or eppmux's reading could differ from a conforming one, the frame is
//! refused with a [`SniffError`] (eppmux answers 2001 and forwards nothing):
//! - the frame is UTF-8: a UTF-8 byte order mark is allowed, any other encoding declaration is
//!   refused (XML 1.0 §4.3.3), and only XML 1.0 is read;
//! - it is well-formed XML 1.0 (only `Char`s, ASCII names, attribute syntax, references to the five
//!   predefined entities or to `Char`s, one root, a declaration only at the very start), without a
//!   DOCTYPE, so no entity is ever declared or expanded, and no deeper than [`MAX_DEPTH`];
//! - it is namespace-well-formed (XML Namespaces 1.0): namespace declarations are not attributes,
//!   undeclared prefixes and duplicate attributes (by expanded name) are errors, `xml`/`xmlns` are
//!   used only as the recommendation allows; a namespace name containing a reference or a
//!   tab/newline is refused rather than resolved (no EPP URI needs one, and refusing leaves one
//!   byte-for-byte reading of every namespace name);
//! - it is one EPP message: `<epp>` holds exactly one of hello/greeting/command/response/extension;
//!   `<command>` holds exactly one known verb, then an optional `<extension>`, then an optional
//!   `<clTRID>`, all in the EPP namespace, and no other element or text; `op` is read only from
//!   the unprefixed attribute of `<poll>` (req, ack) and `<transfer>` (query, request, approve,
//!   reject, cancel) and must be one of those values; an object command holds exactly one object
//!   element, named like the verb (`<info><domain:info>`), in a namespace other than EPP's.
//!
//! quick-xml splits the frame into markup, text and references, matches end tags and checks
//! comments. It is deliberately lenient for speed (it takes names, attribute lists, references,
//! characters and the XML declaration as they come, and compares namespace declarations as raw
//! bytes), so the checks XML 1.0 and Namespaces 1.0 make on top of that are written out here.
//! `tests/differential.rs` and the `differential` fuzz target hold this reading against roxmltree.

pub mod code;
mod node;
mod sniff;
#[cfg(test)]
mod tests;
mod write;
mod xml;

use quick_xml::events::Event;
use quick_xml::NsReader;

use crate::secret::Secret;

pub use write::{hello, login, logout, response, response_with_data};

pub const EPP_NS: &str = "urn:ietf:params:xml:ns:epp-1.0";
pub const DOMAIN_NS: &str = "urn:ietf:params:xml:ns:domain-1.0";
pub const HOST_NS: &str = "urn:ietf:params:xml:ns:host-1.0";
pub const CONTACT_NS: &str = "urn:ietf:params:xml:ns:contact-1.0";
const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";
const XMLNS_NS: &str = "http://www.w3.org/2000/xmlns/";
const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// Far deeper than any EPP schema needs (a secDNS create is about 7 levels).
pub const MAX_DEPTH: usize = 64;

/// Attributes (namespace declarations included) on one element. An EPP root with every object and
/// extension namespace declared has about 15; the limit bounds the pairwise duplicate check.
pub const MAX_ATTRIBUTES: usize = 64;

/// The commands of RFC 5730 §2.9, the only verbs accepted under `<command>`.
pub const VERBS: [&str; 10] = [
    "check", "info", "poll", "transfer", "create", "delete", "renew", "update", "login", "logout",
];

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
    /// The element under `<command>` (one of [`VERBS`]), or `extension` for a protocol extension
    /// that stands directly under `<epp>`.
    pub verb: String,
    /// Short name of the object the command acts on, from its namespace (`domain`, `host`, …).
    pub object: Option<String>,
    /// The namespace of the object element (`urn:ietf:params:xml:ns:domain-1.0`).
    pub object_ns: Option<String>,
    pub cltrid: Option<String>,
    /// The `op` attribute of `<poll>` (req, ack) or `<transfer>` (query, request, …).
    pub op: Option<String>,
    pub login: Option<Login>,
    /// The identifiers of the objects it names, in order (`<domain:name>`, `<host:name>`,
    /// `<contact:id>` directly under the object element), for the audit trail. Never anything
    /// from inside authInfo: those are not identifiers.
    pub objects: Vec<String>,
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

    /// The command's name from a fixed set, for metric labels and log fields: a known verb with
    /// `domain`, `host`, `contact` or `other` (any other object namespace) for object commands,
    /// the bare verb for `login`, `logout`, `poll` and `extension`, and `other` for anything else.
    /// Nothing of it comes from the client: a label or field cannot be forged or multiplied.
    pub fn metric_name(&self) -> &'static str {
        #[rustfmt::skip]
        const OBJECT_COMMANDS: [(&str, [&str; 4]); 7] = [
            ("check",    ["domain:check",    "host:check",    "contact:check",    "other:check"]),
            ("info",     ["domain:info",     "host:info",     "contact:info",     "other:info"]),
            ("transfer", ["domain:transfer", "host:transfer", "contact:transfer", "other:transfer"]),
            ("create",   ["domain:create",   "host:create",   "contact:create",   "other:create"]),
            ("delete",   ["domain:delete",   "host:delete",   "contact:delete",   "other:delete"]),
            ("renew",    ["domain:renew",    "host:renew",    "contact:renew",    "other:renew"]),
            ("update",   ["domain:update",   "host:update",   "contact:update",   "other:update"]),
        ];
        let object = match self.object_ns.as_deref() {
            Some(DOMAIN_NS) => 0,
            Some(HOST_NS) => 1,
            Some(CONTACT_NS) => 2,
            _ => 3,
        };
        match self.verb.as_str() {
            "login" => "login",
            "logout" => "logout",
            "poll" => "poll",
            "extension" => "extension",
            verb => OBJECT_COMMANDS
                .iter()
                .find(|(v, _)| *v == verb)
                .map_or("other", |(_, names)| names[object]),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Login {
    pub clid: String,
    pub pw: Secret,
    pub has_new_pw: bool,
    /// The `<newPW>` value: eppmux refuses a client's password change, the mock registry makes
    /// it.
    pub new_pw: Option<Secret>,
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

/// Why a frame was refused. The messages hold nothing a peer chose except an entity name (cut
/// short) and quick-xml's own syntax errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SniffError {
    #[error("frame is not valid UTF-8")]
    NotUtf8,
    #[error("declared encoding is not UTF-8")]
    Encoding,
    #[error("XML is not well-formed: {0}")]
    Malformed(String),
    #[error("DOCTYPE/DTD is not allowed in EPP")]
    DocType,
    /// The name is kept for tests but never shown: an entity may stand inside a `<pw>`.
    #[error("undeclared entity reference")]
    Entity(String),
    #[error("XML namespaces: {0}")]
    Namespace(&'static str),
    #[error("an attribute appears twice on one element")]
    DuplicateAttribute,
    #[error("more than {MAX_ATTRIBUTES} attributes on one element")]
    TooManyAttributes,
    #[error("root element is not <epp> in namespace {EPP_NS}")]
    NotEpp,
    #[error("frame holds more than one EPP message")]
    Several,
    #[error("frame holds no EPP message")]
    Empty,
    #[error("not an EPP command")]
    UnknownCommand,
    #[error("op attribute missing, misplaced or not one of the command's values")]
    BadOp,
    #[error("not the structure of an EPP message: {0}")]
    Structure(&'static str),
    #[error("elements nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("result code is missing or not a number")]
    BadResultCode,
}

fn malformed(what: &str) -> SniffError {
    SniffError::Malformed(what.to_string())
}

/// Streams through `frame` and returns what it is. Also collects clTRID on every command, the
/// fields of `<login>` and the first `<result>` of a response.
pub fn sniff(frame: &[u8]) -> Result<Message, SniffError> {
    let text = std::str::from_utf8(frame).map_err(|_| SniffError::NotUtf8)?;
    // A UTF-8 byte order mark is legal XML and changes nothing in how the rest reads (XML 1.0
    // §4.3.3); any other one is not valid UTF-8 and was refused above.
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    // A second one is text before the root, but quick-xml would skip it as a byte order mark.
    if text.starts_with('\u{FEFF}') {
        return Err(malformed("text outside the root element"));
    }
    xml::check_chars(text.as_bytes())?;
    let declared = xml::check_declaration(text)?;
    sniff::Sniffer::new(text).run(declared)
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
