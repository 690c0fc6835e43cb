//! eppmux's sniffer against a conforming reading (roxmltree plus the XML encoding rule, in
//! `fuzz/reference.rs`, shared with the `differential` fuzz target): on the sample frames, on the
//! frames eppmux writes, and on a few thousand generated frames built from EPP's shapes and the
//! tricks a hostile client would use (namespace declarations named `op`, prefixed and repeated
//! attributes, references in namespace names, foreign elements, encodings, byte order marks, …),
//! a third of them then mutated byte-wise. For every frame eppmux must either refuse it or read the
//! same kind, verb, object namespace, op, clTRID and login fields as the reference.
//!
//! The generator draws its choices from a tape of numbers that proptest supplies (a fixed seed, so
//! CI runs the same cases each time; `DIFFERENTIAL_CASES` sets how many); choice 0 is always the
//! plain one, so a failing case shrinks towards an ordinary frame.

#[path = "../../../fuzz/reference.rs"]
mod reference;

use std::cell::Cell;
use std::path::Path;

use eppmux_wire::epp::{self, sniff, Message, DOMAIN_NS, EPP_NS, HOST_NS, VERBS};
use eppmux_wire::secret::Secret;
use proptest::collection::vec;
use proptest::prelude::any;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use reference::{compare, Outcome};

fn sample_files() -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    // The wire samples beside this crate, and the repository's example commands.
    for dir in ["tests/frames", "../../examples"] {
        for entry in std::fs::read_dir(root.join(dir)).expect("sample directory") {
            let path = entry.expect("directory entry").path();
            if path.extension().is_some_and(|e| e == "xml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_sample_frame_is_read_alike_and_every_hostile_one_is_refused_or_read_alike() {
    let files = sample_files();
    assert!(files.len() >= 30, "{} sample files", files.len());
    for path in files {
        let frame = std::fs::read(&path).expect("sample frame");
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let outcome = compare(&frame).unwrap_or_else(|e| panic!("{name}: {e}"));
        if !name.starts_with("hostile-") {
            assert_eq!(outcome, Outcome::Agreed, "{name}");
        }
    }
}

#[test]
fn the_frames_eppmux_writes_are_read_alike() {
    let frames = [
        epp::hello(),
        epp::logout("out-1"),
        epp::response(2400, "pool <exhausted> & more", Some("a&b"), "sv-1"),
        epp::response(1000, "ok", None, "sv-2"),
        epp::response_with_data(
            1000,
            "ok",
            "<resData><x:y xmlns:x=\"urn:x\"/></resData>",
            Some("c"),
            "s",
        ),
        epp::login(
            "reg&1",
            &Secret::new("p<w"),
            None,
            &[DOMAIN_NS.into(), HOST_NS.into()],
            &["urn:ietf:params:xml:ns:secDNS-1.1".into()],
            "login-1",
        ),
        epp::login(
            "reg1",
            &Secret::new("old"),
            Some(&Secret::new("n&w<")),
            &[DOMAIN_NS.into()],
            &[],
            "login-2",
        ),
    ];
    for frame in frames {
        assert_eq!(
            compare(&frame),
            Ok(Outcome::Agreed),
            "{:?}",
            String::from_utf8_lossy(&frame)
        );
    }
}

#[test]
fn eppmux_reads_generated_and_mutated_frames_as_a_conforming_parser_does_or_refuses_them() {
    let cases = std::env::var("DIFFERENTIAL_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(4000);
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let (agreed, both_refused, only_eppmux_refused) = (Cell::new(0), Cell::new(0), Cell::new(0));
    let (mutated_agreed, commands) = (Cell::new(0), Cell::new(0));
    let result = runner.run(&vec(any::<u32>(), 0..160), |choices| {
        let mut tape = Tape {
            choices: &choices,
            at: 0,
        };
        let (frame, mutated) = generate(&mut tape);
        match compare(&frame).map_err(TestCaseError::fail)? {
            Outcome::Agreed => {
                agreed.set(agreed.get() + 1);
                mutated_agreed.set(mutated_agreed.get() + usize::from(mutated));
                if matches!(sniff(&frame), Ok(Message::Command(_))) {
                    commands.set(commands.get() + 1);
                }
            }
            Outcome::BothRefused => both_refused.set(both_refused.get() + 1),
            Outcome::OnlyEppmuxRefused => only_eppmux_refused.set(only_eppmux_refused.get() + 1),
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!(
        "{cases} frames: {} read alike ({} of them mutated, {} commands), {} refused by both, \
         {} refused by eppmux only",
        agreed.get(),
        mutated_agreed.get(),
        commands.get(),
        both_refused.get(),
        only_eppmux_refused.get()
    );
    // The comparison means something only if many frames are read, and some refused by both.
    let cases = cases as usize;
    assert!(agreed.get() * 5 >= cases, "too few frames read alike");
    assert!(commands.get() * 10 >= cases, "too few commands read alike");
    assert!(both_refused.get() * 4 >= cases, "too few frames refused");
}

/// The generator's source of choices; past its end every choice is 0 (the plain one).
struct Tape<'a> {
    choices: &'a [u32],
    at: usize,
}

impl Tape<'_> {
    fn pick(&mut self, n: usize) -> usize {
        let c = self.choices.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        c as usize % n.max(1)
    }

    /// True in about `percent` of draws; never for choice 0.
    fn trick(&mut self, percent: usize) -> bool {
        self.pick(100) >= 100 - percent
    }

    fn one_of<'s>(&mut self, options: &[&'s str]) -> &'s str {
        options[self.pick(options.len())]
    }
}

const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// A frame and whether it was mutated after rendering.
fn generate(t: &mut Tape) -> (Vec<u8>, bool) {
    let mut x = String::new();
    if t.trick(5) {
        x.push('\u{FEFF}');
    }
    if !t.trick(25) {
        x += t.one_of(&[
            "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"no\"?>\n",
            "",
            "<?xml version='1.0' encoding='utf-8'?>\n",
            "<?xml version=\"1.0\"?>",
        ]);
    } else if t.pick(2) == 0 {
        let enc = t.one_of(&[
            "UTF-7",
            "UTF-16",
            "ISO-8859-1",
            "utf8",
            "US-ASCII",
            "UTF-8",
            "uTF-8",
            "EBCDIC-US",
            "UTF-8 ",
            "",
        ]);
        let q = t.one_of(&["\"", "'"]);
        let space = t.one_of(&[" ", "  ", "\n", " = "]);
        x += &format!("<?xml version=\"1.0\"{space}encoding={q}{enc}{q}?>");
    } else {
        x += t.one_of(&[
            "<!-- c -->",
            "<?pi x?>",
            " \n",
            "<?xml version=\"1.1\"?>",
            "<?xml  version = \"1.0\"  encoding = \"UTF-8\" ?>",
            "<?XML version=\"1.0\"?>",
            "<?xml version=\"1.0\" standalone=\"yes\"?>\r\n",
        ]);
    }
    // The root, and the prefix EPP elements are written with.
    let style = if t.trick(15) { 3 } else { t.pick(3) };
    let (p, root_decl) = match style {
        0 => ("", format!(" xmlns=\"{}\"", ns(t, EPP_NS))),
        1 => ("epp:", format!(" xmlns:epp=\"{}\"", ns(t, EPP_NS))),
        2 => (
            "ns0:",
            format!(
                " xmlns:ns0=\"{}\" xmlns:xsi=\"{XSI}\" xsi:schemaLocation=\"{EPP_NS} epp-1.0.xsd\"",
                ns(t, EPP_NS)
            ),
        ),
        _ => (
            "",
            t.one_of(&[
                "",
                " xmlns=\"urn:ietf:params:xml:ns:epp-1.1\"",
                " xmlns=\"\"",
                " xmlns:op=\"query\" xmlns=\"urn:ietf:params:xml:ns:epp-1.0\"",
                " xmlns=\"urn:ietf:params:xml:ns:epp-1.0\" xmlns=\"urn:ietf:params:xml:ns:epp-1.0\"",
                " xmlns=\"urn:ietf:params:xml:ns:epp-1.0\" xmlns:e=\"urn:ietf:params:xml:ns:epp-1.0\"",
            ])
            .to_string(),
        ),
    };
    let extra_root = if t.trick(10) {
        t.one_of(&[
            " xml:lang=\"en\"",
            " a=\"1\" a=\"2\"",
            " x:a=\"1\"",
            " xmlns:xml=\"urn:x\"",
            " b=\"<\"",
        ])
    } else {
        ""
    };
    let body = match t.pick(9) {
        0..=4 => command(t, p),
        5 => {
            let (open, close) = tag(t, p, "hello", "");
            match t.pick(3) {
                0 => format!("{}/>", &open[..open.len() - 1]),
                1 => format!("{open}{close}"),
                _ => format!("{open}{}{close}", t.one_of(&[" ", "x", "<x/>", "<!-- -->", "&#32;"])),
            }
        }
        6 => response(t, p),
        7 => format!(
            "<{p}greeting><{p}svID>Registry</{p}svID><{p}svDate>2026-01-01T00:00:00Z</{p}svDate>\
             <{p}svcMenu><{p}version>1.0</{p}version><{p}lang>en</{p}lang><{p}objURI>{DOMAIN_NS}</{p}objURI>\
             </{p}svcMenu></{p}greeting>"
        ),
        _ => format!("<{p}extension><x:cmd xmlns:x=\"urn:example:ext\"><x:a>1</x:a></x:cmd></{p}extension>"),
    };
    let body = if t.trick(5) {
        format!("{body}{}", t.one_of(&["<hello/>", "text", "<command/>"]))
    } else {
        body
    };
    x += &format!("<{p}epp{root_decl}{extra_root}>{body}</{p}epp>");
    x += if t.trick(10) {
        t.one_of(&["x", "<epp/>", "<![CDATA[x]]>", "&amp;", "\u{FEFF}"])
    } else {
        t.one_of(&["", "\n", "\r\n", "<!-- end -->", "<?pi end?>"])
    };
    let mut frame = x.into_bytes();
    let mutated = t.pick(3) == 1;
    if mutated {
        mutate(t, &mut frame);
    }
    (frame, mutated)
}

/// A namespace name: `uri` itself, or a variant a conforming parser reads the same or not.
fn ns(t: &mut Tape, uri: &str) -> String {
    if !t.trick(20) {
        return uri.to_string();
    }
    match t.pick(6) {
        0 => uri.replacen('e', "&#101;", 1),
        1 => uri.replacen('p', "&#x70;", 1),
        2 => format!("{uri} "),
        3 => format!("{uri}\t"),
        4 => uri.replacen(':', "&#58;", 1),
        _ => "urn:example:other".to_string(),
    }
}

/// Opening and closing tags of an EPP element: usually with the frame's prefix, sometimes in
/// another way that may or may not put it in the EPP namespace.
fn tag(t: &mut Tape, p: &str, name: &str, attrs: &str) -> (String, String) {
    if !t.trick(8) {
        return (format!("<{p}{name}{attrs}>"), format!("</{p}{name}>"));
    }
    match t.pick(6) {
        0 => (
            format!("<e2:{name} xmlns:e2=\"{EPP_NS}\"{attrs}>"),
            format!("</e2:{name}>"),
        ),
        1 => {
            let uri = ns(t, EPP_NS);
            (
                format!("<{name} xmlns=\"{uri}\"{attrs}>"),
                format!("</{name}>"),
            )
        }
        2 => (format!("<q:{name}{attrs}>"), format!("</q:{name}>")),
        3 => (format!("<{name} xmlns=\"\"{attrs}>"), format!("</{name}>")),
        4 => (
            format!("<{name} xmlns=\"urn:x\"{attrs}>"),
            format!("</{name}>"),
        ),
        _ => (format!("<xml:{name}{attrs}>"), format!("</xml:{name}>")),
    }
}

/// A text value, sometimes written with references, comments, CDATA or worse.
fn value(t: &mut Tape, plain: &str) -> String {
    if !t.trick(20) {
        return plain.to_string();
    }
    t.one_of(&[
        " ABC-2 ",
        "\n ABC-3\r\n",
        "a&amp;b",
        "&#65;BC",
        "A<!-- x -->B",
        "<![CDATA[A<B]]>",
        "",
        "A\rB",
        "A\r\nB",
        "A&#13;B",
        "x&#x1F600;",
        "A]]>B",
        "&bogus;",
        "A<b/>B",
        "\u{a0}A\u{a0}",
        "A  B",
        "&#0;",
        "&#x9;A",
        "A&lt;B&gt;",
        "&#xD800;",
    ])
    .to_string()
}

fn command(t: &mut Tape, p: &str) -> String {
    let verb = if t.trick(8) {
        t.one_of(&[
            "frobnicate",
            "Info",
            "hello",
            "command",
            "extension",
            "clTRID",
            "greeting",
        ])
    } else {
        t.one_of(&VERBS)
    };
    let mut parts = vec![verb_element(t, p, verb)];
    if t.pick(3) == 1 {
        let (open, close) = tag(t, p, "extension", "");
        parts.push(format!(
            "{open}<s:ext xmlns:s=\"urn:example:ext-1.0\"><s:a>1</s:a></s:ext>{close}"
        ));
    }
    if t.pick(5) != 1 {
        let (open, close) = tag(t, p, "clTRID", "");
        parts.push(format!("{open}{}{close}", value(t, "ABC-1")));
    }
    if t.trick(25) {
        let junk = match t.pick(12) {
            0 => "<renew xmlns=\"urn:x\"><x/></renew>".to_string(),
            1 => verb_element(t, p, "delete"),
            2 => "x".to_string(),
            3 => "\n  ".to_string(),
            4 => "<!-- <delete/> -->".to_string(),
            5 => "<![CDATA[<logout/>]]>".to_string(),
            6 => "<?pi <logout/>?>".to_string(),
            7 => "&#32;".to_string(),
            8 => format!("<{p}logout/>"),
            9 => format!("<logout xmlns=\"{}\"/>", ns(t, EPP_NS)),
            10 => "<delete xmlns=\"\"/>".to_string(),
            _ => format!("<{p}clTRID>second</{p}clTRID>"),
        };
        let at = t.pick(parts.len() + 1);
        parts.insert(at, junk);
    }
    if t.trick(8) && parts.len() > 1 {
        let (a, b) = (t.pick(parts.len()), t.pick(parts.len()));
        parts.swap(a, b);
    }
    if t.trick(4) {
        parts.remove(0);
    }
    let sep = t.one_of(&["", "\n  ", "\r\n", " "]);
    let (open, close) = tag(t, p, "command", "");
    format!("{open}{}{close}", parts.join(sep))
}

fn verb_element(t: &mut Tape, p: &str, verb: &str) -> String {
    let ops: &[&str] = match verb {
        "poll" => &["req", "ack"],
        "transfer" => &["query", "request", "approve", "reject", "cancel"],
        _ => &[],
    };
    let mut attrs = String::new();
    if !ops.is_empty() && !t.trick(10) {
        attrs += &format!(" op=\"{}\"", t.one_of(ops));
        if verb == "poll" && t.pick(2) == 1 {
            attrs += " msgID=\"12345\"";
        }
    }
    if t.trick(30) {
        for _ in 0..1 + t.pick(2) {
            attrs += t.one_of(&[
                " xmlns:op=\"query\"",
                " xmlns:op=\"req\"",
                " op=\"ack\"",
                " op=\"query\"",
                " x:op=\"req\"",
                " xmlns:x=\"urn:x\" x:op=\"req\"",
                " op=\"&#114;eq\"",
                " op=\" req\"",
                " op='request'",
                " op=\"query\t\"",
                " msgID=\"1\"",
                " xmlns:a=\"urn:a\" xmlns:b=\"urn:a\" a:z=\"1\" b:z=\"2\"",
                " xmlns:a=\"urn:a\" xmlns:b=\"urn:b\" a:z=\"1\" b:z=\"2\"",
                " xsi:schemaLocation=\"x\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"",
                " xmlns=\"urn:x\"",
                " xmlns:xml=\"http://www.w3.org/XML/1998/namespace\"",
                " xml:lang=\"en\"",
                " op=\"req\"op=\"ack\"",
                " OP=\"req\"",
                " xmlns:a=\"urn:a\" a:xmlns=\"urn:x\"",
            ]);
        }
    }
    let body = match verb {
        "poll" | "logout" => {
            if t.trick(10) {
                t.one_of(&["<x/>", " ", "x", "<!-- -->"]).to_string()
            } else {
                String::new()
            }
        }
        "login" => login(t, p),
        _ => objects(t, verb),
    };
    let (open, close) = tag(t, p, verb, &attrs);
    if body.is_empty() && t.pick(2) == 0 {
        format!("{}/>", &open[..open.len() - 1])
    } else {
        format!("{open}{body}{close}")
    }
}

fn objects(t: &mut Tape, verb: &str) -> String {
    let n = if t.trick(15) { t.pick(3) } else { 1 };
    let mut out = String::new();
    for _ in 0..n {
        let name = if t.trick(10) { t.one_of(&VERBS) } else { verb };
        let (prefix, uri) = match t.pick(8) {
            0 | 5 => ("domain", DOMAIN_NS),
            1 => ("host", HOST_NS),
            2 => ("contact", "urn:ietf:params:xml:ns:contact-1.0"),
            3 => ("obj", "urn:example:thing-1.0"),
            4 => ("e3", EPP_NS),
            6 => ("", ""),
            _ => ("-", ""),
        };
        let inner = value(t, "example.gov");
        out += &match prefix {
            "" => format!("<{name} xmlns=\"\"><name>{inner}</name></{name}>"),
            "-" => format!("<{name}><name>{inner}</name></{name}>"),
            _ => format!(
                "<{prefix}:{name} xmlns:{prefix}=\"{}\"><{prefix}:name>{inner}</{prefix}:name></{prefix}:{name}>",
                ns(t, uri)
            ),
        };
        if t.trick(10) {
            out += t.one_of(&["x", " ", "<!-- -->", "&#32;"]);
        }
    }
    out
}

fn login(t: &mut Tape, p: &str) -> String {
    let clid = value(t, "registrar1");
    let mut fields = vec![
        format!("<{p}clID>{clid}</{p}clID>"),
        format!("<{p}pw>s3cret</{p}pw>"),
    ];
    if t.pick(3) == 1 {
        fields.push(format!("<{p}newPW>n3w</{p}newPW>"));
    }
    fields.push(format!(
        "<{p}options><{p}version>1.0</{p}version><{p}lang>en</{p}lang></{p}options>"
    ));
    fields.push(format!(
        "<{p}svcs><{p}objURI>{DOMAIN_NS}</{p}objURI></{p}svcs>"
    ));
    if t.trick(15) {
        let extra = t.one_of(&[
            "<clID>other</clID>",
            "<x:clID xmlns:x=\"urn:x\">other</x:clID>",
            "<newPW>n</newPW>",
            "<pw>again</pw>",
        ]);
        let at = t.pick(fields.len() + 1);
        fields.insert(at, extra.to_string());
    }
    fields.concat()
}

fn response(t: &mut Tape, p: &str) -> String {
    let mut r = String::new();
    for _ in 0..1 + usize::from(t.trick(20)) {
        let code = if t.trick(10) {
            t.one_of(&["abc", "", "1000 ", " 2400", "99999", "+1000"])
        } else {
            t.one_of(&["1000", "2002", "1301", "2400", "2500"])
        };
        let msg = value(t, "Command completed successfully");
        r += &format!("<{p}result code=\"{code}\"><{p}msg lang=\"en\">{msg}</{p}msg>");
        if t.pick(4) == 1 {
            r += &format!(
                "<{p}value><d:name xmlns:d=\"{DOMAIN_NS}\">x</d:name></{p}value>\
                 <{p}extValue><{p}value><x:y xmlns:x=\"urn:x\"/></{p}value><{p}reason>r</{p}reason></{p}extValue>"
            );
        }
        r += &format!("</{p}result>");
    }
    if t.pick(3) == 1 {
        r += &format!(
            "<{p}msgQ count=\"1\" id=\"9\"><{p}qDate>2026-01-01T00:00:00Z</{p}qDate><{p}msg>Transfer <b>requested</b></{p}msg></{p}msgQ>"
        );
    }
    if t.pick(3) == 1 {
        r += &format!(
            "<{p}resData><d:chkData xmlns:d=\"{DOMAIN_NS}\"><d:cd><d:name avail=\"1\">a.gov</d:name></d:cd></d:chkData></{p}resData>"
        );
    }
    if t.pick(4) == 1 {
        r += &format!("<{p}extension><x:e xmlns:x=\"urn:x\"><x:clTRID>not this</x:clTRID></x:e></{p}extension>");
    }
    if t.pick(6) != 1 {
        let cl = value(t, "ABC-1");
        let tr =
            format!("<{p}trID><{p}clTRID>{cl}</{p}clTRID><{p}svTRID>SV-1</{p}svTRID></{p}trID>");
        r += &tr;
        if t.trick(5) {
            r += &tr;
        }
    }
    let (open, close) = tag(t, p, "response", "");
    format!("{open}{r}{close}")
}

/// Byte-level edits, with XML's and the tricks' own tokens among the insertions.
fn mutate(t: &mut Tape, frame: &mut Vec<u8>) {
    const TOKENS: &[&str] = &[
        "<",
        ">",
        "/>",
        "</",
        "xmlns=\"",
        "xmlns:op=\"req\" ",
        " op=\"ack\"",
        "&#101;",
        "&amp;",
        "<!--",
        "-->",
        "<![CDATA[",
        "]]>",
        "<?xml version=\"1.0\" encoding=\"UTF-7\"?>",
        "+ADw-",
        "<logout/>",
        "<delete>",
        "</delete>",
        "<info>",
        "epp:",
        "ns0:",
        ":",
        "\"",
        "'",
        "=",
        " ",
        "\u{FEFF}",
        "<clTRID>X</clTRID>",
        "<extension/>",
        "xmlns=\"\"",
        "xmlns=\"urn:x\"",
        EPP_NS,
        "x:",
        "xml:",
        "xmlns:",
        "\r",
        "&#13;",
        "\t",
    ];
    for _ in 0..1 + t.pick(3) {
        let at = t.pick(frame.len() + 1);
        let len = 1 + t.pick(8);
        let end = (at + len).min(frame.len());
        match t.pick(5) {
            0 => {
                let token = t.one_of(TOKENS).as_bytes().to_vec();
                frame.splice(at..at, token);
            }
            1 => {
                frame.drain(at..end);
            }
            2 => {
                let copy = frame[at..end].to_vec();
                frame.splice(at..at, copy);
            }
            3 if at < frame.len() => {
                const BYTES: &[u8] = b"<>&;:\"'=/ x\r\n\t#";
                frame[at] = BYTES[t.pick(BYTES.len())]
            }
            _ => frame.insert(at, t.pick(256) as u8),
        }
    }
}
