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
        None,
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
            format!("<epp xmlns=\"{EPP_NS}\" xmlns:a=\"urn:a\" a:xmlns=\"urn:x\"><hello/></epp>"),
        ),
    ] {
        assert!(sniff(frame.as_bytes()).is_err(), "{what}: {frame}");
    }
    // What the recommendation allows.
    for frame in [
        format!("<epp xmlns=\"{EPP_NS}\" xmlns:xml=\"{XML_NS}\" xml:lang=\"en\"><hello/></epp>"),
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
        let Ok(Message::Command(c)) = cmd(&format!("<transfer op=\"{op}\">{d}</transfer>")) else {
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

#[test]
fn object_ids_are_read_in_order_in_every_prefix_style() {
    for (name, want) in [
        ("domain-check.xml", vec!["example.gov", "example-two.gov"]),
        ("epplib-create-domain.xml", vec!["example.gov"]),
        ("epplib-update-host.xml", vec!["example.gov"]),
        ("epplib-transfer-contact.xml", vec!["example.gov"]),
        ("domain-delete.xml", vec!["example.gov"]),
    ] {
        assert_eq!(command(name).objects, want, "{name}");
    }
    assert!(command("poll-req.xml").objects.is_empty());
    assert!(command("login-epplib.xml").objects.is_empty());
}

#[test]
fn object_ids_are_only_the_identifiers_directly_under_the_object_element() {
    let frame = format!(
        r#"<epp xmlns="{EPP_NS}"><command><create><domain:create xmlns:domain="{DOMAIN_NS}" xmlns:x="urn:example:other">
        <domain:name> a.gov </domain:name><x:name>foreign.gov</x:name>
        <domain:ns><domain:hostObj>ns1.other.gov</domain:hostObj></domain:ns>
        <domain:registrant>reg-1</domain:registrant><domain:contact type="admin">adm-1</domain:contact>
        <domain:authInfo><domain:pw>auth-S3cret</domain:pw></domain:authInfo>
        </domain:create></create><clTRID>c-1</clTRID></command></epp>"#
    );
    let Ok(Message::Command(c)) = sniff(frame.as_bytes()) else {
        panic!("not read as a command");
    };
    assert_eq!(c.objects, vec!["a.gov"]);
    assert!(!format!("{c:?}").contains("auth-S3cret"));

    let update = format!(
        r#"<epp xmlns="{EPP_NS}"><command><update><host:update xmlns:host="{HOST_NS}">
        <host:name>ns1.a.gov</host:name><host:chg><host:name>ns9.a.gov</host:name></host:chg>
        </host:update></update></command></epp>"#
    );
    let Ok(Message::Command(c)) = sniff(update.as_bytes()) else {
        panic!("not read as a command");
    };
    assert_eq!(c.objects, vec!["ns1.a.gov"]);

    let contacts = format!(
        r#"<epp xmlns="{EPP_NS}"><command><check><c:check xmlns:c="{CONTACT_NS}">
        <c:id>sh8013</c:id><c:id>sah8013</c:id></c:check></check></command></epp>"#
    );
    let Ok(Message::Command(c)) = sniff(contacts.as_bytes()) else {
        panic!("not read as a command");
    };
    assert_eq!(c.objects, vec!["sh8013", "sah8013"]);
}

#[test]
fn the_login_eppmux_writes_carries_a_new_password_only_when_asked() {
    let plain = login(
        "r1",
        &Secret::new("old"),
        None,
        &[DOMAIN_NS.into()],
        &[],
        "l-1",
    );
    let Ok(Message::Command(c)) = sniff(&plain) else {
        panic!("unreadable login");
    };
    let l = c.login.expect("login fields");
    assert!(!l.has_new_pw && l.new_pw.is_none());
    let change = login(
        "r1",
        &Secret::new("old"),
        Some(&Secret::new("n&w<pw")),
        &[DOMAIN_NS.into()],
        &[],
        "l-2",
    );
    let Ok(Message::Command(c)) = sniff(&change) else {
        panic!("unreadable login");
    };
    let l = c.login.expect("login fields");
    assert!(l.pw.ct_eq("old"));
    assert!(l.has_new_pw);
    assert!(l.new_pw.expect("newPW").ct_eq("n&w<pw"));
}
