//! The reference reading of an EPP frame, shared by `tests/differential.rs` and the `differential`
//! fuzz target (both include this file): what a registry with a conforming XML parser reads.
//!
//! It is roxmltree (a strict, namespace-aware XML 1.0 parser that builds a tree) plus two rules of
//! the XML spec it does not apply in full: line breaks normalized on input (§2.11; see [`read`]),
//! and the encoding rule: it reads every `&str` as UTF-8 whatever the
//! declaration says, while a conforming processor reads a frame declaring `encoding="UTF-7"` as
//! UTF-7 (XML 1.0 §4.3.3, Appendix F). Such a frame has no UTF-8 reading to compare, so eppmux must
//! refuse it. The EPP rules are then read off the tree, written independently of eppmux's
//! streaming sniffer: `<epp>` holds exactly one message element; `<command>` holds one known verb,
//! then an optional `<extension>`, then an optional `<clTRID>`, all in the EPP namespace; `op` is
//! the unprefixed attribute, with the values the EPP schema allows; an object command holds one
//! object element named like the verb, outside the EPP namespace.
//!
//! [`compare`] holds eppmux's [`sniff`] to it: eppmux may refuse more, but whatever it reads it must
//! read as the reference does.

use eppmux_wire::epp::{sniff, Message};
use roxmltree::{Document, Node, ParsingOptions};

const EPP: &str = "urn:ietf:params:xml:ns:epp-1.0";

/// What routing depends on, from either reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    Hello,
    Greeting,
    Command {
        verb: String,
        object_ns: Option<String>,
        op: Option<String>,
        cltrid: Option<String>,
        /// For `<login>`: the clID and whether a newPW is present.
        login: Option<(String, bool)>,
        /// The identifiers of the objects named (for the audit trail).
        objects: Vec<String>,
    },
    Response {
        code: u16,
        msg: String,
        cltrid: Option<String>,
        svtrid: Option<String>,
    },
}

/// Why the reference has no reading of a frame as one EPP message. eppmux must refuse each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreadable {
    NotUtf8,
    /// Declares an encoding other than UTF-8: a conforming parser reads other characters.
    Encoding(String),
    Xml(String),
    Epp(&'static str),
}

/// How one frame came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Both read it, the same way.
    Agreed,
    /// Neither reads it.
    BothRefused,
    /// The reference reads it; eppmux refuses (allowed: eppmux may be stricter).
    OnlyEppmuxRefused,
}

/// Runs both readings; `Err` describes a disagreement.
pub fn compare(frame: &[u8]) -> Result<Outcome, String> {
    let reference = read(frame);
    match (sniff(frame), reference) {
        (Err(_), Err(_)) => Ok(Outcome::BothRefused),
        (Err(_), Ok(_)) => Ok(Outcome::OnlyEppmuxRefused),
        (Ok(ours), Err(why)) => Err(format!(
            "eppmux read {ours:?} but a conforming reader does not: {why:?}\nframe: {:?}",
            String::from_utf8_lossy(frame)
        )),
        (Ok(ours), Ok(theirs)) => {
            let ours = reading_of(&ours);
            if ours == theirs {
                Ok(Outcome::Agreed)
            } else {
                Err(format!(
                    "eppmux read {ours:?}, the reference {theirs:?}\nframe: {:?}",
                    String::from_utf8_lossy(frame)
                ))
            }
        }
    }
}

/// eppmux's reading, in the reference's terms.
pub fn reading_of(m: &Message) -> Reading {
    match m {
        Message::Hello => Reading::Hello,
        Message::Greeting(_) => Reading::Greeting,
        Message::Command(c) => Reading::Command {
            verb: c.verb.clone(),
            object_ns: c.object_ns.clone(),
            op: c.op.clone(),
            cltrid: c.cltrid.clone(),
            login: c.login.as_ref().map(|l| (l.clid.clone(), l.has_new_pw)),
            objects: c.objects.clone(),
        },
        Message::Response(r) => Reading::Response {
            code: r.code,
            msg: r.msg.clone(),
            cltrid: r.cltrid.clone(),
            svtrid: r.svtrid.clone(),
        },
    }
}

pub fn read(frame: &[u8]) -> Result<Reading, Unreadable> {
    let text = std::str::from_utf8(frame).map_err(|_| Unreadable::NotUtf8)?;
    if let Some(encoding) = declared_encoding(text.strip_prefix('\u{FEFF}').unwrap_or(text)) {
        if !encoding.eq_ignore_ascii_case("UTF-8") {
            return Err(Unreadable::Encoding(encoding.to_string()));
        }
    }
    let options = ParsingOptions {
        allow_dtd: false,
        ..ParsingOptions::default()
    };
    // XML 1.0 §2.11: line breaks are normalized on input, before parsing, so that only a
    // character reference (`&#13;`) can put a CR in a value. Done here because roxmltree 0.21
    // keeps a literal CR that is followed by a reference (`\r&#13;` reads as two CRs; a
    // conforming processor reads LF, CR), which the differential fuzz target found.
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let doc =
        Document::parse_with_options(&text, options).map_err(|e| Unreadable::Xml(e.to_string()))?;
    let root = doc.root_element();
    if !is_epp(root, "epp") {
        return Err(Unreadable::Epp("root is not <epp>"));
    }
    let message = only_elements(root)?;
    let [message] = message.as_slice() else {
        return Err(Unreadable::Epp("<epp> does not hold exactly one element"));
    };
    if message.tag_name().namespace() != Some(EPP) {
        return Err(Unreadable::Epp("message element outside the EPP namespace"));
    }
    match message.tag_name().name() {
        "hello" => Ok(Reading::Hello),
        "greeting" => Ok(Reading::Greeting),
        "command" => command(*message),
        "response" => response(*message),
        "extension" => Ok(Reading::Command {
            verb: "extension".into(),
            object_ns: None,
            op: None,
            cltrid: None,
            login: None,
            objects: Vec::new(),
        }),
        _ => Err(Unreadable::Epp("unknown message element")),
    }
}

/// The encoding named by the XML declaration, if there is a declaration with one. Lenient, like
/// roxmltree's reading of the declaration: any frame a conforming parser would decode differently
/// must be caught here.
fn declared_encoding(text: &str) -> Option<&str> {
    let rest = text.strip_prefix("<?xml")?;
    if !rest.starts_with(is_space) {
        return None;
    }
    let decl = &rest[..rest.find("?>")?];
    let at = decl.find("encoding")?;
    let value = decl[at + "encoding".len()..]
        .trim_start_matches(is_space)
        .strip_prefix('=')?
        .trim_start_matches(is_space);
    let quote = value.chars().next().filter(|q| *q == '"' || *q == '\'')?;
    let value = &value[1..];
    Some(&value[..value.find(quote)?])
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

fn is_epp(node: Node, name: &str) -> bool {
    node.tag_name().namespace() == Some(EPP) && node.tag_name().name() == name
}

/// The attribute in no namespace with this name. Not roxmltree's `attribute("op")`, which for a
/// name without a namespace matches any attribute with that local name (`x:op` too). Namespace
/// declarations are never attributes in roxmltree.
fn plain_attribute<'a>(node: Node<'a, '_>, name: &str) -> Option<&'a str> {
    node.attributes()
        .find(|a| a.namespace().is_none() && a.name() == name)
        .map(|a| a.value())
}

/// The element children of a node that may hold only elements (and whitespace, comments, PIs).
fn only_elements<'a, 'i>(node: Node<'a, 'i>) -> Result<Vec<Node<'a, 'i>>, Unreadable> {
    let mut elements = Vec::new();
    for child in node.children() {
        if child.is_element() {
            elements.push(child);
        } else if child.is_text() && !child.text().unwrap_or("").chars().all(is_space) {
            return Err(Unreadable::Epp("text where only elements belong"));
        }
    }
    Ok(elements)
}

/// The value of a text-only element, without surrounding XML whitespace.
fn value(node: Node) -> Result<String, Unreadable> {
    let mut text = String::new();
    for child in node.children() {
        if child.is_element() {
            return Err(Unreadable::Epp("element inside a value"));
        }
        if child.is_text() {
            text.push_str(child.text().unwrap_or(""));
        }
    }
    Ok(text.trim_matches(is_space).to_string())
}

fn command(node: Node) -> Result<Reading, Unreadable> {
    let children = only_elements(node)?;
    if children
        .iter()
        .any(|c| c.tag_name().namespace() != Some(EPP))
    {
        return Err(Unreadable::Epp(
            "element outside the EPP namespace under <command>",
        ));
    }
    let Some((verb_node, rest)) = children.split_first() else {
        return Err(Unreadable::Epp("empty <command>"));
    };
    let verb = verb_node.tag_name().name();
    const VERBS: [&str; 10] = [
        "check", "info", "poll", "transfer", "create", "delete", "renew", "update", "login",
        "logout",
    ];
    if !VERBS.contains(&verb) {
        return Err(Unreadable::Epp("unknown command"));
    }
    let mut rest = rest.iter().peekable();
    if rest
        .peek()
        .is_some_and(|n| n.tag_name().name() == "extension")
    {
        rest.next();
    }
    let cltrid = match rest.next() {
        Some(n) if n.tag_name().name() == "clTRID" => Some(value(*n)?),
        Some(_) => return Err(Unreadable::Epp("unexpected element under <command>")),
        None => None,
    };
    if rest.next().is_some() {
        return Err(Unreadable::Epp("unexpected element after <clTRID>"));
    }
    let ops: &[&str] = match verb {
        "poll" => &["req", "ack"],
        "transfer" => &["query", "request", "approve", "reject", "cancel"],
        _ => &[],
    };
    let op = plain_attribute(*verb_node, "op");
    if !ops.is_empty() && !op.is_some_and(|op| ops.contains(&op)) {
        return Err(Unreadable::Epp("missing or unknown op"));
    }
    let mut object_ns = None;
    let mut login = None;
    let mut ids = Vec::new();
    match verb {
        "poll" | "logout" => {}
        "login" => {
            let fields = only_elements(*verb_node)?;
            let field = |name: &str| fields.iter().find(|f| is_epp(**f, name));
            let clid = field("clID").map(|n| value(*n)).transpose()?;
            login = Some((clid.unwrap_or_default(), field("newPW").is_some()));
        }
        _ => {
            let objects = only_elements(*verb_node)?;
            let [object] = objects.as_slice() else {
                return Err(Unreadable::Epp("not exactly one object"));
            };
            // roxmltree reports an element under `xmlns=""` in namespace "": no namespace.
            match object.tag_name().namespace() {
                Some(ns) if ns != EPP && !ns.is_empty() && object.tag_name().name() == verb => {
                    object_ns = Some(ns.to_string())
                }
                _ => return Err(Unreadable::Epp("object element")),
            }
            let id_name = match object_ns.as_deref() {
                Some("urn:ietf:params:xml:ns:domain-1.0" | "urn:ietf:params:xml:ns:host-1.0") => {
                    "name"
                }
                Some("urn:ietf:params:xml:ns:contact-1.0") => "id",
                _ => "",
            };
            for child in object.children().filter(|c| c.is_element()) {
                let name = child.tag_name();
                if name.namespace() == object_ns.as_deref() && name.name() == id_name {
                    ids.push(value(child)?);
                }
            }
        }
    }
    Ok(Reading::Command {
        verb: verb.to_string(),
        object_ns,
        op: op.filter(|_| !ops.is_empty()).map(str::to_string),
        cltrid,
        login,
        objects: ids,
    })
}

fn response(node: Node) -> Result<Reading, Unreadable> {
    let result = node
        .children()
        .find(|n| is_epp(*n, "result"))
        .ok_or(Unreadable::Epp("response without a result"))?;
    let code = plain_attribute(result, "code")
        .and_then(|c| c.parse().ok())
        .ok_or(Unreadable::Epp("result code"))?;
    let msg = match result.children().find(|n| is_epp(*n, "msg")) {
        Some(m) => value(m)?,
        None => String::new(),
    };
    let (mut cltrid, mut svtrid) = (None, None);
    if let Some(tr) = node.children().find(|n| is_epp(*n, "trID")) {
        if let Some(c) = tr.children().find(|n| is_epp(*n, "clTRID")) {
            cltrid = Some(value(c)?);
        }
        if let Some(s) = tr.children().find(|n| is_epp(*n, "svTRID")) {
            svtrid = Some(value(s)?);
        }
    }
    Ok(Reading::Response {
        code,
        msg,
        cltrid,
        svtrid,
    })
}
