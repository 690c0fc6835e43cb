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

use std::borrow::Cow;

pub mod code;

use bytes::Bytes;
use quick_xml::escape::escape;
use quick_xml::events::Event;
use quick_xml::{NsReader, Reader};

use crate::secret::Secret;

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
    /// Unlike [`display_name`](Self::display_name), nothing of it comes from the client.
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Check,
    Info,
    Poll,
    Transfer,
    Create,
    Delete,
    Renew,
    Update,
    Login,
    Logout,
}

impl Verb {
    fn from_name(name: &str) -> Option<Verb> {
        Some(match name {
            "check" => Verb::Check,
            "info" => Verb::Info,
            "poll" => Verb::Poll,
            "transfer" => Verb::Transfer,
            "create" => Verb::Create,
            "delete" => Verb::Delete,
            "renew" => Verb::Renew,
            "update" => Verb::Update,
            "login" => Verb::Login,
            "logout" => Verb::Logout,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Verb::Check => "check",
            Verb::Info => "info",
            Verb::Poll => "poll",
            Verb::Transfer => "transfer",
            Verb::Create => "create",
            Verb::Delete => "delete",
            Verb::Renew => "renew",
            Verb::Update => "update",
            Verb::Login => "login",
            Verb::Logout => "logout",
        }
    }

    /// The `op` values the EPP schema allows (`pollOpType`, `transferOpType`); empty when the verb
    /// has no `op`.
    fn ops(self) -> &'static [&'static str] {
        match self {
            Verb::Poll => &["req", "ack"],
            Verb::Transfer => &["query", "request", "approve", "reject", "cancel"],
            _ => &[],
        }
    }

    /// Commands whose one child is the object element (`readWriteType`, `transferType`).
    fn has_object(self) -> bool {
        !matches!(self, Verb::Poll | Verb::Login | Verb::Logout)
    }
}

/// Where under `<command>` the sniffer is: what may come next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Verb,
    AfterVerb,
    AfterExtension,
    AfterClTrid,
}

/// An open element, as far as the sniffer cares. The stack of these replaces a path of names, so
/// nothing is allocated per element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    Epp,
    Hello,
    Command(Stage),
    /// The verb under `<command>`, and how many element children it has had so far.
    Verb(Verb, u8),
    Greeting,
    SvcMenu,
    SvcExtension,
    Response,
    /// `<result>`; true for the first one, whose code and message are read.
    Result(bool),
    TrId,
    /// An element whose text is a value (clTRID, clID, msg, …): no child elements.
    Field,
    /// Content eppmux does not interpret (objects, extensions, resData, dcp, …).
    Opaque,
}

impl Node {
    /// Elements of these kinds hold elements only: text there must be whitespace.
    fn element_only(self) -> bool {
        matches!(
            self,
            Node::Epp | Node::Hello | Node::Command(_) | Node::Verb(..)
        )
    }
}

/// One attribute of a start tag, as written.
#[derive(Debug, Clone, Copy)]
struct Attr<'a> {
    prefix: &'a str,
    local: &'a str,
    raw: &'a str,
    /// The namespace of the attribute's expanded name, once resolved.
    ns: Option<&'a str>,
}

impl Attr<'_> {
    /// `xmlns="…"` or `xmlns:p="…"`: a namespace declaration, not an attribute.
    fn is_declaration(&self) -> bool {
        self.prefix == "xmlns" || (self.prefix.is_empty() && self.local == "xmlns")
    }
}

/// In-scope namespace bindings, innermost last. Hand-written rather than quick-xml's resolver,
/// which binds the raw bytes of a declaration and lets `xmlns:p=""` and the reserved names through.
struct Scope<'a> {
    /// (depth of the declaring element, prefix or "" for the default namespace, namespace name)
    bindings: Vec<(usize, &'a str, &'a str)>,
}

impl<'a> Scope<'a> {
    /// The namespace of a prefix ("" for the default one); `None` for no namespace.
    fn resolve(&self, prefix: &str) -> Result<Option<&'a str>, SniffError> {
        if prefix == "xml" {
            return Ok(Some(XML_NS));
        }
        match self.bindings.iter().rev().find(|(_, p, _)| *p == prefix) {
            Some((_, _, "")) | None if prefix.is_empty() => Ok(None),
            Some((_, _, uri)) => Ok(Some(uri)),
            None => Err(SniffError::Namespace("undeclared namespace prefix")),
        }
    }

    fn leave(&mut self, depth: usize) {
        while self.bindings.last().is_some_and(|(d, _, _)| *d >= depth) {
            self.bindings.pop();
        }
    }
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
    check_chars(text.as_bytes())?;
    let declared = check_declaration(text)?;
    Sniffer::new(text).run(declared)
}

struct Sniffer<'a> {
    text: &'a str,
    nodes: Vec<Node>,
    scope: Scope<'a>,
    attrs: Vec<Attr<'a>>,
    /// The message element under `<epp>`: hello, greeting, command, response (or `extension`,
    /// read as a command).
    kind: Option<&'static str>,
    root_done: bool,
    cmd: Command,
    resp: Response,
    greeting: Greeting,
    seen_result: bool,
    seen_msg: bool,
    seen_trid: bool,
    seen_cltrid: bool,
    seen_svtrid: bool,
    seen_clid: bool,
    seen_pw: bool,
    new_pw: bool,
    capture: Option<(Field, String)>,
}

impl<'a> Sniffer<'a> {
    fn new(text: &'a str) -> Self {
        Sniffer {
            text,
            nodes: Vec::with_capacity(16),
            scope: Scope {
                bindings: Vec::with_capacity(8),
            },
            attrs: Vec::new(),
            kind: None,
            root_done: false,
            cmd: Command::default(),
            resp: Response::default(),
            greeting: Greeting::default(),
            seen_result: false,
            seen_msg: false,
            seen_trid: false,
            seen_cltrid: false,
            seen_svtrid: false,
            seen_clid: false,
            seen_pw: false,
            new_pw: false,
            capture: None,
        }
    }

    fn run(mut self, declared: bool) -> Result<Message, SniffError> {
        let mut reader = Reader::from_str(self.text);
        reader.config_mut().check_comments = true;
        let mut first = true;
        loop {
            let event = reader
                .read_event()
                .map_err(|e| SniffError::Malformed(e.to_string()))?;
            match event {
                Event::Start(e) => self.start(self.within(&e)?, e.name().as_ref().len(), false)?,
                Event::Empty(e) => self.start(self.within(&e)?, e.name().as_ref().len(), true)?,
                Event::End(_) => self.end()?,
                Event::Text(t) => {
                    let raw = self.within(&t)?;
                    // Never character data (XML 1.0 §2.4); it cannot straddle two events, which
                    // end only at `<` and `&`.
                    if raw.contains("]]>") {
                        return Err(malformed("`]]>` in text"));
                    }
                    match self.nodes.last() {
                        None if !is_xml_whitespace(raw) => {
                            return Err(malformed("text outside the root element"))
                        }
                        Some(n) if n.element_only() && !is_xml_whitespace(raw) => {
                            return Err(SniffError::Structure(
                                "text where EPP allows elements only",
                            ))
                        }
                        _ => self.collect(raw),
                    }
                }
                Event::CData(t) => {
                    let raw = self.within(&t)?;
                    match self.nodes.last() {
                        None => return Err(malformed("CDATA outside the root element")),
                        Some(n) if n.element_only() => {
                            return Err(SniffError::Structure(
                                "CDATA where EPP allows elements only",
                            ))
                        }
                        _ => self.collect(raw),
                    }
                }
                Event::GeneralRef(r) => {
                    let c = reference(self.within(&r)?)?;
                    match self.nodes.last() {
                        None => return Err(malformed("reference outside the root element")),
                        Some(n) if n.element_only() => {
                            return Err(SniffError::Structure(
                                "reference where EPP allows elements only",
                            ))
                        }
                        _ => {
                            if let Some((_, buf)) = self.capture.as_mut() {
                                buf.push(c);
                            }
                        }
                    }
                }
                Event::Decl(_) if first && declared => {}
                Event::Decl(_) => return Err(malformed("XML declaration not at the start")),
                Event::PI(pi) => check_pi_target(pi.target())?,
                Event::Comment(_) => {}
                Event::DocType(_) => return Err(SniffError::DocType),
                Event::Eof => break,
            }
            first = false;
        }
        if !self.nodes.is_empty() {
            return Err(malformed("document ends inside an element"));
        }
        self.finish()
    }

    /// The input that quick-xml's event is a view of, with the input's lifetime, so that
    /// namespace bindings and attributes can be kept without copying them.
    fn within(&self, part: &[u8]) -> Result<&'a str, SniffError> {
        let start = (part.as_ptr() as usize).wrapping_sub(self.text.as_ptr() as usize);
        start
            .checked_add(part.len())
            .and_then(|end| self.text.get(start..end))
            .filter(|s| s.as_ptr() == part.as_ptr())
            .ok_or_else(|| malformed("event outside the frame"))
    }

    /// A start tag (`empty` for `<x/>`): `content` is everything between `<` and `>` (or `/>`).
    fn start(&mut self, content: &'a str, name_len: usize, empty: bool) -> Result<(), SniffError> {
        if self.root_done {
            return Err(malformed("more than one root element"));
        }
        let depth = self.nodes.len();
        if depth >= MAX_DEPTH {
            return Err(SniffError::TooDeep);
        }
        let (qname, rest) = content
            .split_at_checked(name_len)
            .ok_or_else(|| malformed("element name"))?;
        let (prefix, local) = split_qname(qname)?;
        self.attrs.clear();
        if !rest.is_empty() {
            scan_attributes(rest, &mut self.attrs)?;
            self.declare(depth)?;
        }
        let ns = match prefix {
            "xmlns" => return Err(SniffError::Namespace("element with the xmlns prefix")),
            "xml" => return Err(SniffError::Namespace("element in the xml namespace")),
            p => self.scope.resolve(p)?,
        };
        if !self.attrs.is_empty() {
            self.resolve_attributes()?;
        }
        let is_epp = ns == Some(EPP_NS);
        let node = self.classify(ns, is_epp, local)?;
        if empty {
            self.scope.leave(depth);
            self.close(node)
        } else {
            self.nodes.push(node);
            Ok(())
        }
    }

    /// Binds this element's namespace declarations (Namespaces 1.0 §3 and the constraints of §3,
    /// "Reserved Prefixes and Namespace Names").
    fn declare(&mut self, depth: usize) -> Result<(), SniffError> {
        for a in &self.attrs {
            if !a.is_declaration() {
                // `p:xmlns` is an ordinary attribute to the recommendation, but some readers
                // (roxmltree among them) take it for a declaration of the default namespace.
                if a.local == "xmlns" {
                    return Err(SniffError::Namespace("a prefixed attribute named xmlns"));
                }
                continue;
            }
            let prefix = if a.prefix.is_empty() { "" } else { a.local };
            let uri = a.raw;
            if uri.contains('&') {
                return Err(SniffError::Namespace(
                    "reference in a namespace name (write the URI out)",
                ));
            }
            if uri.contains(['\t', '\n', '\r']) {
                return Err(SniffError::Namespace("tab or newline in a namespace name"));
            }
            match prefix {
                "xmlns" => return Err(SniffError::Namespace("the xmlns prefix is declared")),
                // Always bound to XML_NS; declaring that again is allowed and changes nothing.
                "xml" if uri == XML_NS => continue,
                "xml" => return Err(SniffError::Namespace("the xml prefix is bound elsewhere")),
                _ if uri == XML_NS || uri == XMLNS_NS => {
                    return Err(SniffError::Namespace("a reserved namespace name is bound"))
                }
                p if !p.is_empty() && uri.is_empty() => {
                    return Err(SniffError::Namespace("a prefix is undeclared"))
                }
                _ => self.scope.bindings.push((depth, prefix, uri)),
            }
        }
        Ok(())
    }

    /// Gives each attribute its namespace and refuses duplicates by expanded name (Namespaces 1.0
    /// §6.3: `a:x` and `b:x` are the same attribute when `a` and `b` name the same namespace).
    fn resolve_attributes(&mut self) -> Result<(), SniffError> {
        for a in self.attrs.iter_mut() {
            a.ns = if a.is_declaration() {
                Some(XMLNS_NS)
            } else if a.prefix.is_empty() {
                None
            } else {
                self.scope.resolve(a.prefix)?
            };
        }
        for (i, a) in self.attrs.iter().enumerate() {
            // A default declaration and `xmlns:p` declarations have distinct names within XMLNS_NS.
            fn name<'x>(a: &Attr<'x>) -> &'x str {
                if a.prefix.is_empty() && a.local == "xmlns" {
                    ""
                } else {
                    a.local
                }
            }
            if self.attrs[..i]
                .iter()
                .any(|b| b.ns == a.ns && name(b) == name(a))
            {
                return Err(SniffError::DuplicateAttribute);
            }
        }
        Ok(())
    }

    /// Where this element stands in the EPP message, and what is read from it.
    fn classify(
        &mut self,
        ns: Option<&str>,
        is_epp: bool,
        local: &str,
    ) -> Result<Node, SniffError> {
        let Some(parent) = self.nodes.last().copied() else {
            return if is_epp && local == "epp" {
                Ok(Node::Epp)
            } else {
                Err(SniffError::NotEpp)
            };
        };
        Ok(match parent {
            Node::Epp => {
                if !is_epp {
                    return Err(SniffError::Structure(
                        "element outside the EPP namespace under <epp>",
                    ));
                }
                let (kind, node) = match local {
                    "hello" => ("hello", Node::Hello),
                    "greeting" => ("greeting", Node::Greeting),
                    "command" => ("command", Node::Command(Stage::Verb)),
                    "response" => ("response", Node::Response),
                    "extension" => {
                        self.cmd.verb = "extension".into();
                        ("command", Node::Opaque)
                    }
                    _ => return Err(SniffError::Structure("unknown element under <epp>")),
                };
                if self.kind.replace(kind).is_some() {
                    return Err(SniffError::Several);
                }
                node
            }
            Node::Hello => return Err(SniffError::Structure("element inside <hello>")),
            Node::Command(stage) => {
                if !is_epp {
                    return Err(SniffError::Structure(
                        "element outside the EPP namespace under <command>",
                    ));
                }
                let (next, node) = match (local, stage) {
                    ("extension", Stage::AfterVerb) => (Stage::AfterExtension, Node::Opaque),
                    ("clTRID", Stage::AfterVerb | Stage::AfterExtension) => {
                        self.capture = Some((Field::ClTrid, String::new()));
                        (Stage::AfterClTrid, Node::Field)
                    }
                    ("extension" | "clTRID", _) => {
                        return Err(SniffError::Structure(
                            "<extension> and <clTRID> come after the command, in that order",
                        ))
                    }
                    (name, stage) => match Verb::from_name(name) {
                        Some(_) if stage != Stage::Verb => return Err(SniffError::Several),
                        Some(verb) => {
                            self.verb(verb)?;
                            (Stage::AfterVerb, Node::Verb(verb, 0))
                        }
                        None => return Err(SniffError::UnknownCommand),
                    },
                };
                if let Some(last) = self.nodes.last_mut() {
                    *last = Node::Command(next);
                }
                node
            }
            Node::Verb(Verb::Login, _) if is_epp => {
                let seen = match local {
                    "clID" => {
                        self.capture = Some((Field::ClId, String::new()));
                        &mut self.seen_clid
                    }
                    "pw" => {
                        self.capture = Some((Field::Pw, String::new()));
                        &mut self.seen_pw
                    }
                    "newPW" => &mut self.new_pw,
                    _ => return Ok(Node::Opaque),
                };
                if std::mem::replace(seen, true) {
                    return Err(SniffError::Structure("a login field appears twice"));
                }
                Node::Field
            }
            Node::Verb(Verb::Login, _) => Node::Opaque,
            Node::Verb(verb, children) => {
                if !verb.has_object() {
                    return Err(SniffError::Structure("element inside an empty command"));
                }
                if children > 0 {
                    return Err(SniffError::Structure("more than one object in a command"));
                }
                let Some(ns) = ns.filter(|_| !is_epp) else {
                    return Err(SniffError::Structure(
                        "the object element is not in an object namespace",
                    ));
                };
                // A registry may dispatch on the object element: `<info><domain:delete>` must not
                // read as an info here and as a delete there.
                if local != verb.name() {
                    return Err(SniffError::Structure(
                        "the object element does not match the command",
                    ));
                }
                self.cmd.object = Some(short_object_name(ns));
                self.cmd.object_ns = Some(ns.to_string());
                if let Some(last) = self.nodes.last_mut() {
                    *last = Node::Verb(verb, 1);
                }
                Node::Opaque
            }
            Node::Greeting if is_epp => match local {
                "svID" => self.field(Field::SvId),
                "svDate" => self.field(Field::SvDate),
                "svcMenu" => Node::SvcMenu,
                _ => Node::Opaque,
            },
            Node::SvcMenu if is_epp && local == "objURI" => self.field(Field::ObjUri),
            Node::SvcMenu if is_epp && local == "svcExtension" => Node::SvcExtension,
            Node::SvcExtension if is_epp && local == "extURI" => self.field(Field::ExtUri),
            Node::Response if is_epp && local == "result" => {
                let first = !std::mem::replace(&mut self.seen_result, true);
                if first {
                    let code = self
                        .attribute(None, "code")?
                        .ok_or(SniffError::BadResultCode)?;
                    self.resp.code = code.parse().map_err(|_| SniffError::BadResultCode)?;
                }
                Node::Result(first)
            }
            Node::Response if is_epp && local == "trID" => {
                if std::mem::replace(&mut self.seen_trid, true) {
                    return Err(SniffError::Structure("a response with two <trID>s"));
                }
                Node::TrId
            }
            Node::Result(true) if is_epp && local == "msg" && !self.seen_msg => {
                self.seen_msg = true;
                self.field(Field::ResultMsg)
            }
            Node::TrId if is_epp && (local == "clTRID" || local == "svTRID") => {
                let (field, seen) = if local == "clTRID" {
                    (Field::ClTrid, &mut self.seen_cltrid)
                } else {
                    (Field::SvTrid, &mut self.seen_svtrid)
                };
                if std::mem::replace(seen, true) {
                    return Err(SniffError::Structure("a transaction id appears twice"));
                }
                self.field(field)
            }
            Node::Field => return Err(SniffError::Structure("element inside a text value")),
            _ => Node::Opaque,
        })
    }

    fn field(&mut self, field: Field) -> Node {
        self.capture = Some((field, String::new()));
        Node::Field
    }

    /// The verb's attributes: `op` where the schema has one, `msgID` on `<poll>`, schema
    /// locations; anything else could be read differently elsewhere and is refused.
    fn verb(&mut self, verb: Verb) -> Result<(), SniffError> {
        self.cmd.verb = verb.name().to_string();
        for a in &self.attrs {
            match (a.ns, a.local) {
                _ if a.is_declaration() => {}
                (None, "op") if !verb.ops().is_empty() => {}
                (None, "msgID") if verb == Verb::Poll => {}
                (Some(XSI_NS), "schemaLocation") => {}
                (_, "op") => return Err(SniffError::BadOp),
                _ => return Err(SniffError::Structure("unexpected attribute on the command")),
            }
        }
        if !verb.ops().is_empty() {
            let op = self.attribute(None, "op")?.ok_or(SniffError::BadOp)?;
            let op = verb
                .ops()
                .iter()
                .find(|known| **known == op)
                .ok_or(SniffError::BadOp)?;
            self.cmd.op = Some(op.to_string());
        }
        Ok(())
    }

    /// The value of the attribute with this expanded name on the current start tag.
    fn attribute(&self, ns: Option<&str>, local: &str) -> Result<Option<Cow<'a, str>>, SniffError> {
        self.attrs
            .iter()
            .find(|a| a.ns == ns && a.local == local && !a.is_declaration())
            .map(|a| attribute_value(a.raw))
            .transpose()
    }

    fn end(&mut self) -> Result<(), SniffError> {
        let node = self
            .nodes
            .pop()
            .ok_or_else(|| malformed("end tag without a start tag"))?;
        self.scope.leave(self.nodes.len());
        self.close(node)
    }

    /// An element ends: store what it held and check what it must have held.
    fn close(&mut self, node: Node) -> Result<(), SniffError> {
        match node {
            Node::Field => {
                if let Some((field, value)) = self.capture.take() {
                    self.store(field, value);
                }
            }
            Node::Command(Stage::Verb) => return Err(SniffError::Empty),
            Node::Verb(verb, 0) if verb.has_object() => {
                return Err(SniffError::Structure("a command without its object"))
            }
            _ => {}
        }
        if self.nodes.is_empty() {
            self.root_done = true;
        }
        Ok(())
    }

    /// Text of a value being captured. Line ends are normalised as XML 1.0 §2.11 says; character
    /// references are not (they arrive as references).
    fn collect(&mut self, raw: &str) {
        if let Some((_, buf)) = self.capture.as_mut() {
            if raw.contains('\r') {
                buf.push_str(&raw.replace("\r\n", "\n").replace('\r', "\n"));
            } else {
                buf.push_str(raw);
            }
        }
    }

    fn store(&mut self, field: Field, value: String) {
        // EPP's values are XML tokens: surrounding XML whitespace is not part of them.
        let value = match value.trim_matches(is_xml_space) {
            trimmed if trimmed.len() == value.len() => value,
            trimmed => trimmed.to_string(),
        };
        match field {
            Field::ClTrid if self.kind == Some("response") => self.resp.cltrid = Some(value),
            Field::ClTrid => self.cmd.cltrid = Some(value),
            Field::SvTrid => self.resp.svtrid = Some(value),
            Field::ClId => self.cmd.login.get_or_insert_with(Login::default).clid = value,
            Field::Pw => self.cmd.login.get_or_insert_with(Login::default).pw = Secret::new(value),
            Field::ResultMsg => self.resp.msg = value,
            Field::SvId => self.greeting.sv_id = value,
            Field::SvDate => self.greeting.sv_date = value,
            Field::ObjUri => self.greeting.obj_uris.push(value),
            Field::ExtUri => self.greeting.ext_uris.push(value),
        }
    }

    fn finish(mut self) -> Result<Message, SniffError> {
        match self.kind {
            None => Err(SniffError::Empty),
            Some("hello") => Ok(Message::Hello),
            Some("greeting") => Ok(Message::Greeting(self.greeting)),
            Some("response") => {
                if !self.seen_result {
                    return Err(SniffError::BadResultCode);
                }
                Ok(Message::Response(self.resp))
            }
            Some(_) => {
                if self.cmd.verb == "login" {
                    self.cmd.login.get_or_insert_with(Login::default).has_new_pw = self.new_pw;
                }
                Ok(Message::Command(self.cmd))
            }
        }
    }
}

fn is_xml_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

fn is_xml_whitespace(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

/// XML 1.0 §2.2: a document holds only `Char`s. Valid UTF-8 already excludes surrogates; what is
/// left to refuse are C0 controls other than tab, LF and CR, and U+FFFE/U+FFFF (EF BF BE/BF).
fn check_chars(bytes: &[u8]) -> Result<(), SniffError> {
    // Plain comparisons without early exits, so that the loop over the whole frame vectorises.
    let (mut control, mut ef) = (0u8, 0u8);
    for &b in bytes {
        control |= u8::from(b < 0x20) & u8::from(b != b'\t' && b != b'\n' && b != b'\r');
        ef |= u8::from(b == 0xEF);
    }
    if control != 0 {
        return Err(malformed("control character"));
    }
    if ef != 0
        && bytes
            .windows(3)
            .any(|w| matches!(w, [0xEF, 0xBF, 0xBE | 0xBF]))
    {
        return Err(malformed("U+FFFE or U+FFFF"));
    }
    Ok(())
}

/// Checks the XML declaration (XML 1.0 §2.8, §4.3.3) if the frame starts with one, and says whether
/// it does. quick-xml reports any `<?xml …?>` as a declaration without checking its grammar or
/// place, and never looks at the encoding of a `&str`; a registry's parser does, so a frame that
/// declares UTF-7 or UTF-16 would read differently there and is refused.
fn check_declaration(text: &str) -> Result<bool, SniffError> {
    let Some(rest) = text.strip_prefix("<?xml") else {
        return Ok(false);
    };
    match rest.chars().next() {
        Some(c) if is_xml_space(c) => {}
        Some('?') => return Err(malformed("XML declaration without a version")),
        // `<?xml-stylesheet …?>` and the like: a processing instruction, checked as one.
        _ => return Ok(false),
    }
    let end = rest
        .find("?>")
        .ok_or_else(|| malformed("XML declaration not closed"))?;
    let decl = &rest[..end];
    let mut at = 0;
    match next_pair(decl, &mut at)? {
        Some(("version", "1.0")) => {}
        Some(("version", _)) => return Err(malformed("XML version other than 1.0")),
        _ => return Err(malformed("XML declaration without a version")),
    }
    let mut next = next_pair(decl, &mut at)?;
    if let Some(("encoding", name)) = next {
        let valid_name = name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !valid_name || !name.eq_ignore_ascii_case("UTF-8") {
            return Err(SniffError::Encoding);
        }
        next = next_pair(decl, &mut at)?;
    }
    if let Some(("standalone", "yes" | "no")) = next {
        next = next_pair(decl, &mut at)?;
    }
    match next {
        None => Ok(true),
        Some(_) => Err(malformed("XML declaration")),
    }
}

/// A processing instruction's target is a name without a colon, and `xml` in any case is reserved
/// (XML 1.0 §2.6, Namespaces 1.0 §7). quick-xml ends the target at whitespace.
fn check_pi_target(target: &[u8]) -> Result<(), SniffError> {
    if !is_ncname(target) || target.eq_ignore_ascii_case(b"xml") {
        return Err(malformed("processing instruction target"));
    }
    Ok(())
}

/// An NCName, ASCII only. Every name in EPP is ASCII, and XML editions and parsers disagree about
/// the rest, so other names are refused rather than read one way or another.
fn is_ncname(name: &[u8]) -> bool {
    match name.split_first() {
        Some((first, rest)) => {
            (first.is_ascii_alphabetic() || *first == b'_')
                && rest
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        }
        None => false,
    }
}

/// Splits a qualified name (Namespaces 1.0 §4) into prefix ("" for none) and local part, in one
/// pass: this runs for every element and attribute name.
fn split_qname(name: &str) -> Result<(&str, &str), SniffError> {
    let bytes = name.as_bytes();
    // Where the current part (prefix, then local part) starts, and the colon between them.
    let (mut part, mut colon) = (0, None);
    for (i, &b) in bytes.iter().enumerate() {
        let valid = match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'_' => true,
            b'0'..=b'9' | b'-' | b'.' => i > part,
            b':' if colon.is_none() && i > 0 => {
                colon = Some(i);
                part = i + 1;
                true
            }
            _ => false,
        };
        if !valid {
            return Err(malformed("invalid element or attribute name"));
        }
    }
    if part == bytes.len() {
        return Err(malformed("invalid element or attribute name"));
    }
    Ok(match colon {
        Some(i) => (&name[..i], &name[i + 1..]),
        None => ("", name),
    })
}

/// Splits the attribute part of a start tag (what follows the element name) into attributes, as
/// XML 1.0 §3.1 writes them: whitespace before each, `name S? = S? "value"`, no `<` in a value,
/// only well-formed references. Hand-written because quick-xml accepts `a="1"b="2"` and `<`.
fn scan_attributes<'a>(s: &'a str, out: &mut Vec<Attr<'a>>) -> Result<(), SniffError> {
    let mut at = 0;
    while let Some((name, raw)) = next_pair(s, &mut at)? {
        let (prefix, local) = split_qname(name)?;
        if raw.contains('<') {
            return Err(malformed("`<` in an attribute value"));
        }
        if raw.contains('&') {
            attribute_value(raw)?;
        }
        if out.len() == MAX_ATTRIBUTES {
            return Err(SniffError::TooManyAttributes);
        }
        out.push(Attr {
            prefix,
            local,
            raw,
            ns: None,
        });
    }
    Ok(())
}

/// The next `S name S? = S? "value"` of an attribute list (or of the XML declaration) from `*at`,
/// or `None` when only whitespace is left. Byte by byte: it runs for every attribute.
fn next_pair<'a>(s: &'a str, at: &mut usize) -> Result<Option<(&'a str, &'a str)>, SniffError> {
    let bytes = s.as_bytes();
    let space = |i: &mut usize| {
        while bytes
            .get(*i)
            .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        {
            *i += 1;
        }
    };
    let mut i = *at;
    space(&mut i);
    if i == bytes.len() {
        *at = i;
        return Ok(None);
    }
    if i == *at {
        return Err(malformed("attributes must be separated by whitespace"));
    }
    let name_start = i;
    while bytes
        .get(i)
        .is_some_and(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'='))
    {
        i += 1;
    }
    let name_end = i;
    space(&mut i);
    if bytes.get(i) != Some(&b'=') {
        return Err(malformed("attribute without a value"));
    }
    i += 1;
    space(&mut i);
    let quote = match bytes.get(i) {
        Some(&q @ (b'"' | b'\'')) => q,
        _ => return Err(malformed("attribute value not quoted")),
    };
    let value_start = i + 1;
    let value_end = bytes
        .get(value_start..)
        .and_then(|rest| rest.iter().position(|&b| b == quote))
        .map(|len| value_start + len)
        .ok_or_else(|| malformed("attribute value not closed"))?;
    *at = value_end + 1;
    // Every bound above is an ASCII byte or the end, so a character boundary.
    match (s.get(name_start..name_end), s.get(value_start..value_end)) {
        (Some(name), Some(value)) => Ok(Some((name, value))),
        _ => Err(malformed("attribute")),
    }
}

/// The value an XML processor reports for an attribute (XML 1.0 §3.3.3, no DTD so CDATA):
/// references resolved, each literal tab, LF, CR or CR LF turned into one space.
fn attribute_value(raw: &str) -> Result<Cow<'_, str>, SniffError> {
    if !raw.contains(['&', '\t', '\n', '\r']) {
        return Ok(Cow::Borrowed(raw));
    }
    let mut value = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find(['&', '\t', '\n', '\r']) {
        value.push_str(&rest[..i]);
        let tail = &rest[i..];
        rest = if let Some(after) = tail.strip_prefix('&') {
            let end = after
                .find(';')
                .ok_or_else(|| malformed("reference not closed"))?;
            value.push(reference(&after[..end])?);
            &after[end + 1..]
        } else {
            value.push(' ');
            tail.strip_prefix("\r\n").unwrap_or(&tail[1..])
        };
    }
    value.push_str(rest);
    Ok(Cow::Owned(value))
}

/// What `&name;` stands for: one of the five predefined entities or a character reference to a
/// `Char` (XML 1.0 §4.1, §4.6, §2.2). Hand-written because quick-xml resolves `&#1;` and `&#0;`.
fn reference(name: &str) -> Result<char, SniffError> {
    Ok(match name {
        "lt" => '<',
        "gt" => '>',
        "amp" => '&',
        "apos" => '\'',
        "quot" => '"',
        _ => {
            let Some(number) = name.strip_prefix('#') else {
                // Kept short: the name goes into the 2001 answer and the log.
                let mut end = name.len().min(32);
                while !name.is_char_boundary(end) {
                    end -= 1;
                }
                return Err(SniffError::Entity(name[..end].to_string()));
            };
            let (digits, radix) = match number.strip_prefix('x') {
                Some(hex) => (hex, 16),
                None => (number, 10),
            };
            if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
                return Err(malformed("bad character reference"));
            }
            u32::from_str_radix(digits, radix)
                .ok()
                .and_then(char::from_u32)
                .filter(|c| is_xml_char(*c))
                .ok_or_else(|| malformed("character reference to a non-XML character"))?
        }
    })
}

fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// `urn:ietf:params:xml:ns:domain-1.0` → `domain`; anything else is kept whole.
fn short_object_name(ns: &str) -> String {
    let tail = ns.rsplit(':').next().unwrap_or(ns);
    match tail.rsplit_once('-') {
        Some((name, _version)) if !name.is_empty() => name.to_string(),
        _ => tail.to_string(),
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
        assert_eq!(c.metric_name(), "domain:check");
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
            "<epp xmlns=\"{EPP_NS}\"><command><check><domain:check xmlns:domain=\"{DOMAIN_NS}\"/></check><clTRID>&x;</clTRID></command></epp>"
        );
        assert_eq!(
            sniff(entity.as_bytes()),
            Err(SniffError::Entity("x".into()))
        );
        let deep = format!(
            "<epp xmlns=\"{EPP_NS}\"><command><check><domain:check xmlns:domain=\"{DOMAIN_NS}\">{}",
            "<a>".repeat(100)
        );
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

    fn refused(name: &str) -> SniffError {
        match sniff(&sample(name)) {
            Err(e) => e,
            Ok(m) => panic!("{name}: expected a refusal, read {m:?}"),
        }
    }

    /// `<epp>` in the EPP namespace around `inner`.
    fn epp(inner: &str) -> Result<Message, SniffError> {
        sniff(format!("<epp xmlns=\"{EPP_NS}\">{inner}</epp>").as_bytes())
    }

    /// A `<command>` holding `inner`.
    fn cmd(inner: &str) -> Result<Message, SniffError> {
        epp(&format!("<command>{inner}</command>"))
    }

    const INFO: &str = "<info><domain:info xmlns:domain=\"urn:ietf:params:xml:ns:domain-1.0\"><domain:name>a.gov</domain:name></domain:info></info>";

    #[test]
    fn a_namespace_declaration_named_op_is_not_the_op_attribute() {
        // Read by the registry as a transfer request and a poll ack: so here too.
        let c = command("hostile-op-xmlns.xml");
        assert_eq!(
            (c.verb.as_str(), c.op.as_deref()),
            ("transfer", Some("request"))
        );
        assert!(!c.is_query());
        let c = command("hostile-op-xmlns-poll.xml");
        assert_eq!((c.verb.as_str(), c.op.as_deref()), ("poll", Some("ack")));
        assert!(!c.is_query());
    }

    #[test]
    fn a_prefixed_or_repeated_op_is_refused() {
        assert_eq!(refused("hostile-op-prefixed.xml"), SniffError::BadOp);
        assert_eq!(
            refused("hostile-op-duplicate.xml"),
            SniffError::DuplicateAttribute
        );
    }

    #[test]
    fn two_prefixes_for_one_namespace_make_duplicate_attributes() {
        assert_eq!(
            refused("hostile-attr-same-namespace.xml"),
            SniffError::DuplicateAttribute
        );
        // Different namespaces, or a prefixed and an unprefixed one, are different attributes.
        let ok = "<info><domain:info xmlns:domain=\"urn:ietf:params:xml:ns:domain-1.0\" \
                  xmlns:a=\"urn:a\" xmlns:b=\"urn:b\" a:x=\"1\" b:x=\"2\" x=\"3\"/></info>";
        assert!(cmd(ok).is_ok(), "{:?}", cmd(ok));
    }

    #[test]
    fn a_declared_encoding_other_than_utf8_is_refused() {
        // Read as UTF-7 (as libxml2 does), these are a logout and a delete hidden in text.
        assert_eq!(refused("hostile-utf7.xml"), SniffError::Encoding);
        assert_eq!(refused("hostile-utf7-delete.xml"), SniffError::Encoding);
        let body = format!("<epp xmlns=\"{EPP_NS}\"><hello/></epp>");
        for enc in [
            "UTF-16",
            "ISO-8859-1",
            "US-ASCII",
            "utf8",
            "UTF_8",
            "UTF-8 ",
            "",
        ] {
            let frame = format!("<?xml version=\"1.0\" encoding=\"{enc}\"?>{body}");
            assert_eq!(
                sniff(frame.as_bytes()),
                Err(SniffError::Encoding),
                "{enc:?}"
            );
        }
        for enc in ["UTF-8", "utf-8", "Utf-8"] {
            for quote in ['"', '\''] {
                let frame = format!(
                    "<?xml version={quote}1.0{quote} encoding = {quote}{enc}{quote} standalone=\"no\" ?>{body}"
                );
                assert_eq!(sniff(frame.as_bytes()), Ok(Message::Hello), "{frame}");
            }
        }
    }

    #[test]
    fn a_utf8_byte_order_mark_is_accepted_and_others_are_not() {
        let c = command("domain-check-utf8-bom.xml");
        assert_eq!(c.metric_name(), "domain:check");
        assert_eq!(c.cltrid.as_deref(), Some("BOM-1"));
        let body = format!("<epp xmlns=\"{EPP_NS}\"><hello/></epp>");
        for bom in [
            &b"\xfe\xff"[..],
            b"\xff\xfe",
            b"\x00\x00\xfe\xff",
            b"\xef\xbb\xbf\xef\xbb\xbf",
        ] {
            let frame = [bom, body.as_bytes()].concat();
            assert!(sniff(&frame).is_err(), "{bom:?}");
        }
    }

    #[test]
    fn the_xml_declaration_is_checked_and_only_at_the_start() {
        let body = format!("<epp xmlns=\"{EPP_NS}\"><hello/></epp>");
        for decl in [
            "<?xml?>",
            "<?xml encoding=\"UTF-8\"?>",
            "<?xml version=\"1.1\"?>",
            "<?xml version=\"1.0\"encoding=\"UTF-8\"?>",
            "<?xml version=\"1.0\" standalone=\"no\" encoding=\"UTF-8\"?>",
            "<?xml version=\"1.0\" standalone=\"maybe\"?>",
            "<?xml version=\"1.0\" foo=\"bar\"?>",
            " <?xml version=\"1.0\"?>",
            "<?XML version=\"1.0\"?>",
        ] {
            assert!(sniff(format!("{decl}{body}").as_bytes()).is_err(), "{decl}");
        }
        let late = format!("<epp xmlns=\"{EPP_NS}\"><?xml version=\"1.0\"?><hello/></epp>");
        assert!(sniff(late.as_bytes()).is_err());
    }

    #[test]
    fn a_reference_in_a_namespace_name_is_refused() {
        // The registry resolves `&#101;` and reads a logout (or a create) before the check.
        assert!(matches!(
            refused("hostile-ns-charref-logout.xml"),
            SniffError::Namespace(_)
        ));
        assert!(matches!(
            refused("hostile-ns-charref-create.xml"),
            SniffError::Namespace(_)
        ));
        let root = "<epp xmlns=\"urn:ietf:params:xml:ns:&#101;pp-1.0\"><hello/></epp>";
        assert!(matches!(
            sniff(root.as_bytes()),
            Err(SniffError::Namespace(_))
        ));
    }

    #[test]
    fn namespaces_follow_xml_namespaces_1_0() {
        for (what, frame) in [
            (
                "undeclared element prefix",
                format!("<x:epp xmlns=\"{EPP_NS}\"><hello/></x:epp>"),
            ),
            (
                "undeclared attribute prefix",
                format!("<epp xmlns=\"{EPP_NS}\" x:a=\"1\"><hello/></epp>"),
            ),
            (
                "undeclaring a prefix",
                format!("<e:epp xmlns:e=\"{EPP_NS}\" xmlns:x=\"\"><e:hello/></e:epp>"),
            ),
            (
                "declaring xmlns",
                format!("<epp xmlns=\"{EPP_NS}\" xmlns:xmlns=\"urn:x\"><hello/></epp>"),
            ),
            (
                "rebinding xml",
                format!("<epp xmlns=\"{EPP_NS}\" xmlns:xml=\"urn:x\"><hello/></epp>"),
            ),
            (
                "binding the xml namespace",
                format!("<epp xmlns=\"{EPP_NS}\" xmlns:x=\"{XML_NS}\"><hello/></epp>"),
            ),
            (
                "binding the xmlns namespace",
                format!("<epp xmlns=\"{EPP_NS}\" xmlns:x=\"{XMLNS_NS}\"><hello/></epp>"),
            ),
            (
                "default xml namespace",
                format!("<e:epp xmlns:e=\"{EPP_NS}\" xmlns=\"{XML_NS}\"><e:hello/></e:epp>"),
            ),
            (
                "element with the xmlns prefix",
                format!("<epp xmlns=\"{EPP_NS}\"><xmlns:hello/></epp>"),
            ),
            (
                "tab in a namespace name",
                format!("<epp xmlns=\"{EPP_NS}\t\"><hello/></epp>"),
            ),
            (
                "two colons",
                format!("<e:epp:x xmlns:e=\"{EPP_NS}\"><e:hello/></e:epp:x>"),
            ),
            (
                "empty prefix",
                format!("<:epp xmlns=\"{EPP_NS}\"><hello/></:epp>"),
            ),
            (
                "repeated declaration",
                format!("<epp xmlns=\"{EPP_NS}\" xmlns=\"{EPP_NS}\"><hello/></epp>"),
            ),
            (
                "prefixed xmlns attribute",
                format!(
                    "<epp xmlns=\"{EPP_NS}\" xmlns:a=\"urn:a\" a:xmlns=\"urn:x\"><hello/></epp>"
                ),
            ),
        ] {
            assert!(sniff(frame.as_bytes()).is_err(), "{what}: {frame}");
        }
        // What the recommendation allows.
        for frame in [
            format!(
                "<epp xmlns=\"{EPP_NS}\" xmlns:xml=\"{XML_NS}\" xml:lang=\"en\"><hello/></epp>"
            ),
            format!("<e:epp xmlns:e=\"{EPP_NS}\" xmlns=\"urn:x\"><e:hello xmlns=\"\"/></e:epp>"),
            format!("<epp xmlns=\"{EPP_NS}\" x:a=\"1\" xmlns:x=\"urn:x\"><hello/></epp>"),
        ] {
            assert_eq!(sniff(frame.as_bytes()), Ok(Message::Hello), "{frame}");
        }
    }

    #[test]
    fn nothing_but_one_verb_then_extension_then_cltrid_stands_under_command() {
        // A registry taking the first child of <command> reads a renew, a delete, a delete.
        assert!(matches!(
            refused("hostile-foreign-renew.xml"),
            SniffError::Structure(_)
        ));
        assert!(matches!(
            refused("hostile-no-namespace-delete.xml"),
            SniffError::Structure(_)
        ));
        assert!(matches!(
            refused("hostile-undeclared-prefix.xml"),
            SniffError::Namespace(_)
        ));
        let ext = "<extension><x:y xmlns:x=\"urn:x\"/></extension>";
        let tr = "<clTRID>T-1</clTRID>";
        assert!(cmd(&format!("{INFO}{ext}{tr}")).is_ok());
        assert!(cmd(&format!("{INFO}\n {ext}\n {tr}\n")).is_ok());
        assert!(cmd(INFO).is_ok());
        for (what, inner, want) in [
            (
                "second verb",
                format!("{INFO}{INFO}"),
                Some(SniffError::Several),
            ),
            (
                "verb after clTRID",
                format!("{INFO}{tr}{INFO}"),
                Some(SniffError::Several),
            ),
            ("clTRID before extension", format!("{INFO}{tr}{ext}"), None),
            ("clTRID first", format!("{tr}{INFO}"), None),
            ("two clTRIDs", format!("{INFO}{tr}{tr}"), None),
            ("two extensions", format!("{INFO}{ext}{ext}"), None),
            ("text", format!("{INFO}junk{tr}"), None),
            ("CDATA", format!("{INFO}<![CDATA[ ]]>{tr}"), None),
            ("character reference", format!("{INFO}&#32;{tr}"), None),
            (
                "foreign element",
                format!("{INFO}<x:y xmlns:x=\"urn:x\"/>{tr}"),
                None,
            ),
            (
                "unknown verb",
                "<frobnicate/>".to_string(),
                Some(SniffError::UnknownCommand),
            ),
            ("nothing", tr.to_string(), None),
        ] {
            let got = cmd(&inner);
            match want {
                Some(e) => assert_eq!(got, Err(e), "{what}"),
                None => assert!(
                    matches!(got, Err(SniffError::Structure(_))),
                    "{what}: {got:?}"
                ),
            }
        }
        // Under <epp>: one message element, in the EPP namespace.
        assert_eq!(epp("<hello/><hello/>"), Err(SniffError::Several));
        assert!(matches!(
            epp("<x:hello xmlns:x=\"urn:x\"/>"),
            Err(SniffError::Structure(_))
        ));
        assert!(matches!(epp("<bogus/>"), Err(SniffError::Structure(_))));
        assert!(matches!(epp("text<hello/>"), Err(SniffError::Structure(_))));
        assert!(matches!(
            refused("hostile-two-roots.xml"),
            SniffError::Malformed(_)
        ));
    }

    #[test]
    fn an_object_command_holds_one_object_named_like_the_verb() {
        // A registry dispatching on the object element would run a delete.
        assert!(matches!(
            refused("hostile-object-mismatch.xml"),
            SniffError::Structure(_)
        ));
        let d = "xmlns:domain=\"urn:ietf:params:xml:ns:domain-1.0\"";
        for (what, inner) in [
            ("no object", "<info/>".to_string()),
            (
                "two objects",
                format!("<info><domain:info {d}/><domain:info {d}/></info>"),
            ),
            (
                "object in the EPP namespace",
                "<info><info/></info>".to_string(),
            ),
            (
                "object in no namespace",
                "<info><info xmlns=\"\"/></info>".to_string(),
            ),
            (
                "text beside the object",
                format!("<info>x<domain:info {d}/></info>"),
            ),
            (
                "element inside poll",
                "<poll op=\"req\"><x/></poll>".to_string(),
            ),
            ("element inside logout", "<logout><x/></logout>".to_string()),
            (
                "attribute on the verb",
                format!("<info x=\"1\"><domain:info {d}/></info>"),
            ),
        ] {
            assert!(cmd(&inner).is_err(), "{what}");
        }
        let Ok(Message::Command(c)) = cmd(INFO) else {
            panic!()
        };
        assert_eq!(c.object_ns.as_deref(), Some(DOMAIN_NS));
        assert_eq!(c.object.as_deref(), Some("domain"));
    }

    #[test]
    fn op_takes_only_the_values_of_its_command() {
        let d = "<domain:transfer xmlns:domain=\"urn:ietf:params:xml:ns:domain-1.0\"/>";
        for op in ["query", "request", "approve", "reject", "cancel"] {
            let Ok(Message::Command(c)) = cmd(&format!("<transfer op=\"{op}\">{d}</transfer>"))
            else {
                panic!("{op}")
            };
            assert_eq!((c.op.as_deref(), c.is_query()), (Some(op), op == "query"));
        }
        // References resolve as a conforming parser resolves them.
        let Ok(Message::Command(c)) = cmd("<poll op=\"&#97;ck\" msgID=\"1\"/>") else {
            panic!()
        };
        assert_eq!(c.op.as_deref(), Some("ack"));
        for inner in [
            "<poll/>".to_string(),
            "<poll op=\"query\"/>".to_string(),
            "<poll op=\" req\"/>".to_string(),
            "<poll op=\"REQ\"/>".to_string(),
            "<poll op=\"req\t\"/>".to_string(),
            format!("<transfer op=\"req\">{d}</transfer>"),
            format!("<transfer>{d}</transfer>"),
            format!("<info op=\"query\"><domain:info xmlns:domain=\"{DOMAIN_NS}\"/></info>"),
        ] {
            assert_eq!(cmd(&inner), Err(SniffError::BadOp), "{inner}");
        }
    }

    #[test]
    fn well_formedness_is_checked_where_quick_xml_is_lenient() {
        let d = "xmlns:domain=\"urn:ietf:params:xml:ns:domain-1.0\"";
        for (what, inner) in [
            (
                "attributes without whitespace",
                format!("<info><domain:info {d} a=\"1\"b=\"2\"/></info>"),
            ),
            (
                "`<` in an attribute",
                format!("<info><domain:info {d} a=\"<\"/></info>"),
            ),
            (
                "unknown entity in an attribute",
                format!("<info><domain:info {d} a=\"&x;\"/></info>"),
            ),
            (
                "bare `&` in an attribute",
                format!("<info><domain:info {d} a=\"&\"/></info>"),
            ),
            (
                "reference to a control character",
                format!("<info><domain:info {d}>&#1;</domain:info></info>"),
            ),
            (
                "reference to NUL",
                format!("<info><domain:info {d}>&#0;</domain:info></info>"),
            ),
            (
                "reference to U+FFFE",
                format!("<info><domain:info {d}>&#xFFFE;</domain:info></info>"),
            ),
            (
                "reference to a surrogate",
                format!("<info><domain:info {d}>&#xD800;</domain:info></info>"),
            ),
            (
                "upper-case X in a reference",
                format!("<info><domain:info {d}>&#X41;</domain:info></info>"),
            ),
            (
                "`]]>` in text",
                format!("<info><domain:info {d}>]]></domain:info></info>"),
            ),
            (
                "control character",
                format!("<info><domain:info {d}>\u{1}</domain:info></info>"),
            ),
            (
                "U+FFFF",
                format!("<info><domain:info {d}>\u{FFFF}</domain:info></info>"),
            ),
            (
                "invalid name",
                format!("<info><domain:info {d}><1a/></domain:info></info>"),
            ),
            (
                "slash in a name",
                format!("<info><domain:info {d}/ ></info>"),
            ),
            (
                "non-ASCII name",
                format!("<info><domain:info {d}><é/></domain:info></info>"),
            ),
            ("`--` in a comment", format!("{INFO}<!-- a -- b -->")),
            ("reserved PI target", format!("{INFO}<?XmL x?>")),
            ("CDATA outside the root", String::new()),
        ] {
            let frame = if inner.is_empty() {
                format!("<epp xmlns=\"{EPP_NS}\"><hello/></epp><![CDATA[x]]>")
            } else {
                format!("<epp xmlns=\"{EPP_NS}\"><command>{inner}</command></epp>")
            };
            assert!(sniff(frame.as_bytes()).is_err(), "{what}");
        }
        // Legal, and read as a conforming parser reads it.
        let frame = format!(
            "<?xml version=\"1.0\"?>\r\n<!-- c --><?pi x?><epp\r\n xmlns = 'urn:ietf:params:xml:ns:epp-1.0' ><command>{INFO}\
             <clTRID> a&amp;b<!-- -->c<![CDATA[<d>]]>&#x1F600;\r\ne </clTRID></command></epp>\n"
        );
        let Ok(Message::Command(c)) = sniff(frame.as_bytes()) else {
            panic!()
        };
        assert_eq!(c.cltrid.as_deref(), Some("a&bc<d>\u{1F600}\ne"));
    }

    #[test]
    fn legitimate_registry_responses_are_read() {
        let resp = format!(
            "<epp xmlns=\"{EPP_NS}\" xmlns:xsi=\"{XSI_NS}\" xsi:schemaLocation=\"{EPP_NS} epp-1.0.xsd\"><response>\
             <result code=\"2004\"><msg lang=\"en\">Parameter value range error</msg>\
             <value><domain:period xmlns:domain=\"{DOMAIN_NS}\">11</domain:period></value>\
             <extValue><value><x:y xmlns:x=\"urn:x\"/></value><reason>too long</reason></extValue></result>\
             <result code=\"2306\"><msg>second</msg></result>\
             <msgQ count=\"2\" id=\"7\"><qDate>2026-01-01T00:00:00Z</qDate><msg lang=\"en\">mixed <b>content</b></msg></msgQ>\
             <resData><domain:infData xmlns:domain=\"{DOMAIN_NS}\"><domain:name>a.gov</domain:name></domain:infData></resData>\
             <extension><x:z xmlns:x=\"urn:x\"><x:clTRID>not ours</x:clTRID></x:z></extension>\
             <trID><clTRID>C-1</clTRID><svTRID>S-1</svTRID></trID></response></epp>"
        );
        let Ok(Message::Response(r)) = sniff(resp.as_bytes()) else {
            panic!("{:?}", sniff(resp.as_bytes()))
        };
        assert_eq!(
            (
                r.code,
                r.msg.as_str(),
                r.cltrid.as_deref(),
                r.svtrid.as_deref()
            ),
            (
                2004,
                "Parameter value range error",
                Some("C-1"),
                Some("S-1")
            )
        );
        for name in [
            "response-1000-check.xml",
            "response-1301-msgq.xml",
            "response-2002-not-logged-in.xml",
            "response-2500-closing.xml",
            "greeting.xml",
        ] {
            assert!(sniff(&sample(name)).is_ok(), "{name}");
        }
        let two = format!(
            "<epp xmlns=\"{EPP_NS}\"><response><result code=\"1000\"><msg>m</msg></result>\
             <trID><svTRID>1</svTRID></trID><trID><svTRID>2</svTRID></trID></response></epp>"
        );
        assert!(sniff(two.as_bytes()).is_err(), "two trIDs");
    }

    #[test]
    fn metric_names_come_from_a_fixed_set() {
        assert_eq!(command("domain-check.xml").metric_name(), "domain:check");
        assert_eq!(
            command("domain-create-secdns.xml").metric_name(),
            "domain:create"
        );
        assert_eq!(command("poll-ack.xml").metric_name(), "poll");
        assert_eq!(command("login-epplib.xml").metric_name(), "login");
        assert_eq!(command("logout.xml").metric_name(), "logout");
        let Ok(Message::Command(c)) =
            cmd("<create><x:create xmlns:x=\"urn:example:evil-label\"/></create>")
        else {
            panic!()
        };
        assert_eq!(c.metric_name(), "other:create");
        let host = format!("<info><h:info xmlns:h=\"{HOST_NS}\"/></info>");
        let Ok(Message::Command(c)) = cmd(&host) else {
            panic!()
        };
        assert_eq!(c.metric_name(), "host:info");
        let ext = "<extension><x:y xmlns:x=\"urn:x\"/></extension>";
        let Ok(Message::Command(c)) = epp(ext) else {
            panic!()
        };
        assert_eq!(c.metric_name(), "extension");
        let made_up = Command {
            verb: "<script>".into(),
            ..Command::default()
        };
        assert_eq!(made_up.metric_name(), "other");
    }

    #[test]
    fn login_fields_appear_once() {
        let login = "<login><clID>a</clID><pw>p</pw><clID>b</clID></login>";
        assert!(matches!(cmd(login), Err(SniffError::Structure(_))));
        let login = "<login><clID>a<b/></clID><pw>p</pw></login>";
        assert!(matches!(cmd(login), Err(SniffError::Structure(_))));
        let login = "<login><clID>a</clID><pw>p</pw><newPW>n</newPW><newPW>m</newPW></login>";
        assert!(matches!(cmd(login), Err(SniffError::Structure(_))));
    }

    #[test]
    fn frames_the_real_epplib_writes_are_read() {
        // Written by cisagov/epplib bd1d503 with getgov's IETF namespaces: lxml's ns0:/ns1:
        // prefixes, xsi:schemaLocation on the root and on the object, FRED's extcommand.
        for (name, metric, query) in [
            ("epplib-check-domain.xml", "domain:check", true),
            ("epplib-check-contact.xml", "contact:check", true),
            ("epplib-check-host.xml", "host:check", true),
            ("epplib-info-domain.xml", "domain:info", true),
            ("epplib-info-contact.xml", "contact:info", true),
            ("epplib-info-host.xml", "host:info", true),
            ("epplib-create-domain.xml", "domain:create", false),
            ("epplib-create-host.xml", "host:create", false),
            ("epplib-delete-domain.xml", "domain:delete", false),
            ("epplib-delete-contact.xml", "contact:delete", false),
            ("epplib-delete-host.xml", "host:delete", false),
            ("epplib-renew-domain.xml", "domain:renew", false),
            ("epplib-transfer-domain.xml", "domain:transfer", false),
            ("epplib-transfer-contact.xml", "contact:transfer", false),
            ("epplib-update-domain.xml", "domain:update", false),
            ("epplib-update-host.xml", "host:update", false),
            ("epplib-login.xml", "login", false),
            ("epplib-login-newpw.xml", "login", false),
            ("epplib-logout.xml", "logout", false),
            ("epplib-credit-info-request.xml", "extension", false),
        ] {
            let c = command(name);
            assert_eq!((c.metric_name(), c.is_query()), (metric, query), "{name}");
        }
        assert!(command("epplib-login-newpw.xml").login.unwrap().has_new_pw);
        assert_eq!(sniff(&sample("epplib-hello.xml")), Ok(Message::Hello));
    }
}
