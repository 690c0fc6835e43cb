//! The sniffer itself: one pass over quick-xml's events, a stack of [`Node`]s (what each open
//! element is to EPP, so nothing is allocated per element), namespace bindings resolved as
//! Namespaces 1.0 says, and where each element may stand decided by its parent's kind.

use std::borrow::Cow;

use quick_xml::events::Event;
use quick_xml::Reader;

use super::node::{Field, Node, Stage, Verb};
use super::xml::{
    attribute_value, check_pi_target, is_xml_space, is_xml_whitespace, reference, scan_attributes,
    short_object_name, split_qname, Attr, Scope,
};
use super::{
    malformed, Command, Greeting, Login, Message, Response, SniffError, CONTACT_NS, DOMAIN_NS,
    EPP_NS, HOST_NS, MAX_DEPTH, XMLNS_NS, XML_NS, XSI_NS,
};
use crate::secret::Secret;

pub(super) struct Sniffer<'a> {
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
    pub(super) fn new(text: &'a str) -> Self {
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

    pub(super) fn run(mut self, declared: bool) -> Result<Message, SniffError> {
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

    /// Where this element stands in the EPP message, and what is read from it: decided by its
    /// parent's kind, one function per kind of parent.
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
        match parent {
            Node::Epp => self.under_epp(is_epp, local),
            Node::Hello => Err(SniffError::Structure("element inside <hello>")),
            Node::Command(stage) => self.under_command(stage, is_epp, local),
            Node::Verb(Verb::Login, _) if is_epp => self.under_login(local),
            Node::Verb(Verb::Login, _) => Ok(Node::Opaque),
            Node::Verb(verb, children) => {
                self.object(verb, children, ns.filter(|_| !is_epp), local)
            }
            Node::Field => Err(SniffError::Structure("element inside a text value")),
            Node::Object => Ok(self.under_object(ns, local)),
            _ if is_epp => self.under_reply(parent, local),
            _ => Ok(Node::Opaque),
        }
    }

    /// Under `<epp>`: the one message element.
    fn under_epp(&mut self, is_epp: bool, local: &str) -> Result<Node, SniffError> {
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
        Ok(node)
    }

    /// Under `<command>`: one verb, then `<extension>`, then `<clTRID>`, in that order.
    fn under_command(
        &mut self,
        stage: Stage,
        is_epp: bool,
        local: &str,
    ) -> Result<Node, SniffError> {
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
        Ok(node)
    }

    /// Under `<login>` (EPP namespace): clID, pw and newPW, each at most once.
    fn under_login(&mut self, local: &str) -> Result<Node, SniffError> {
        let seen = match local {
            "clID" => {
                self.capture = Some((Field::ClId, String::new()));
                &mut self.seen_clid
            }
            "pw" => {
                self.capture = Some((Field::Pw, String::new()));
                &mut self.seen_pw
            }
            "newPW" => {
                self.capture = Some((Field::NewPw, String::new()));
                &mut self.new_pw
            }
            _ => return Ok(Node::Opaque),
        };
        if std::mem::replace(seen, true) {
            return Err(SniffError::Structure("a login field appears twice"));
        }
        Ok(Node::Field)
    }

    /// The object element of an object command: exactly one, outside the EPP namespace (`ns` is
    /// `None` otherwise), named like the verb.
    fn object(
        &mut self,
        verb: Verb,
        children: u8,
        ns: Option<&str>,
        local: &str,
    ) -> Result<Node, SniffError> {
        if !verb.has_object() {
            return Err(SniffError::Structure("element inside an empty command"));
        }
        if children > 0 {
            return Err(SniffError::Structure("more than one object in a command"));
        }
        let Some(ns) = ns else {
            return Err(SniffError::Structure(
                "the object element is not in an object namespace",
            ));
        };
        // A registry may dispatch on the object element: `<info><domain:delete>` must not read
        // as an info here and as a delete there.
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
        Ok(Node::Object)
    }

    /// Under the object element: the object's identifiers, for the audit trail (one name or id
    /// per object the command names; several in a `<check>`). Everything else is the registry's.
    fn under_object(&mut self, ns: Option<&str>, local: &str) -> Node {
        let is_id = match ns {
            Some(ns) if Some(ns) != self.cmd.object_ns.as_deref() => false,
            Some(DOMAIN_NS | HOST_NS) => local == "name",
            Some(CONTACT_NS) => local == "id",
            _ => false,
        };
        if is_id {
            self.field(Field::ObjectId)
        } else {
            Node::Opaque
        }
    }

    /// EPP elements inside a greeting or a response: the few values routing reads.
    fn under_reply(&mut self, parent: Node, local: &str) -> Result<Node, SniffError> {
        Ok(match (parent, local) {
            (Node::Greeting, "svID") => self.field(Field::SvId),
            (Node::Greeting, "svDate") => self.field(Field::SvDate),
            (Node::Greeting, "svcMenu") => Node::SvcMenu,
            (Node::SvcMenu, "objURI") => self.field(Field::ObjUri),
            (Node::SvcMenu, "svcExtension") => Node::SvcExtension,
            (Node::SvcExtension, "extURI") => self.field(Field::ExtUri),
            (Node::Response, "result") => {
                let first = !std::mem::replace(&mut self.seen_result, true);
                if first {
                    let code = self
                        .attribute(None, "code")?
                        .ok_or(SniffError::BadResultCode)?;
                    self.resp.code = code.parse().map_err(|_| SniffError::BadResultCode)?;
                }
                Node::Result(first)
            }
            (Node::Response, "trID") => {
                if std::mem::replace(&mut self.seen_trid, true) {
                    return Err(SniffError::Structure("a response with two <trID>s"));
                }
                Node::TrId
            }
            (Node::Result(true), "msg") if !self.seen_msg => {
                self.seen_msg = true;
                self.field(Field::ResultMsg)
            }
            (Node::TrId, "clTRID" | "svTRID") => {
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
            Field::NewPw => {
                self.cmd.login.get_or_insert_with(Login::default).new_pw = Some(Secret::new(value))
            }
            Field::ResultMsg => self.resp.msg = value,
            Field::SvId => self.greeting.sv_id = value,
            Field::SvDate => self.greeting.sv_date = value,
            Field::ObjUri => self.greeting.obj_uris.push(value),
            Field::ExtUri => self.greeting.ext_uris.push(value),
            Field::ObjectId => self.cmd.objects.push(value),
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
