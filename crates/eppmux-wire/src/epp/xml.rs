//! XML 1.0 and Namespaces 1.0 at the level of characters and tokens, where quick-xml is lenient
//! for speed: which characters and names are allowed, the XML declaration, attribute lists and
//! values, references.

use std::borrow::Cow;

use super::{malformed, SniffError, MAX_ATTRIBUTES, XML_NS};

/// One attribute of a start tag, as written.
#[derive(Debug, Clone, Copy)]
pub(super) struct Attr<'a> {
    pub(super) prefix: &'a str,
    pub(super) local: &'a str,
    pub(super) raw: &'a str,
    /// The namespace of the attribute's expanded name, once resolved.
    pub(super) ns: Option<&'a str>,
}

impl Attr<'_> {
    /// `xmlns="…"` or `xmlns:p="…"`: a namespace declaration, not an attribute.
    pub(super) fn is_declaration(&self) -> bool {
        self.prefix == "xmlns" || (self.prefix.is_empty() && self.local == "xmlns")
    }
}

pub(super) fn is_xml_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

pub(super) fn is_xml_whitespace(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

/// XML 1.0 §2.2: a document holds only `Char`s. Valid UTF-8 already excludes surrogates; what is
/// left to refuse are C0 controls other than tab, LF and CR, and U+FFFE/U+FFFF (EF BF BE/BF).
pub(super) fn check_chars(bytes: &[u8]) -> Result<(), SniffError> {
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
pub(super) fn check_declaration(text: &str) -> Result<bool, SniffError> {
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
pub(super) fn check_pi_target(target: &[u8]) -> Result<(), SniffError> {
    if !is_ncname(target) || target.eq_ignore_ascii_case(b"xml") {
        return Err(malformed("processing instruction target"));
    }
    Ok(())
}

/// An NCName, ASCII only. Every name in EPP is ASCII, and XML editions and parsers disagree about
/// the rest, so other names are refused rather than read one way or another.
pub(super) fn is_ncname(name: &[u8]) -> bool {
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
pub(super) fn split_qname(name: &str) -> Result<(&str, &str), SniffError> {
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
pub(super) fn scan_attributes<'a>(s: &'a str, out: &mut Vec<Attr<'a>>) -> Result<(), SniffError> {
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
pub(super) fn next_pair<'a>(
    s: &'a str,
    at: &mut usize,
) -> Result<Option<(&'a str, &'a str)>, SniffError> {
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
pub(super) fn attribute_value(raw: &str) -> Result<Cow<'_, str>, SniffError> {
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
pub(super) fn reference(name: &str) -> Result<char, SniffError> {
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

pub(super) fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// `urn:ietf:params:xml:ns:domain-1.0` → `domain`; anything else is kept whole.
pub(super) fn short_object_name(ns: &str) -> String {
    let tail = ns.rsplit(':').next().unwrap_or(ns);
    match tail.rsplit_once('-') {
        Some((name, _version)) if !name.is_empty() => name.to_string(),
        _ => tail.to_string(),
    }
}

/// In-scope namespace bindings, innermost last. Hand-written rather than quick-xml's resolver,
/// which binds the raw bytes of a declaration and lets `xmlns:p=""` and the reserved names through.
pub(super) struct Scope<'a> {
    /// (depth of the declaring element, prefix or "" for the default namespace, namespace name)
    pub(super) bindings: Vec<(usize, &'a str, &'a str)>,
}

impl<'a> Scope<'a> {
    /// The namespace of a prefix ("" for the default one); `None` for no namespace.
    pub(super) fn resolve(&self, prefix: &str) -> Result<Option<&'a str>, SniffError> {
        if prefix == "xml" {
            return Ok(Some(XML_NS));
        }
        match self.bindings.iter().rev().find(|(_, p, _)| *p == prefix) {
            Some((_, _, "")) | None if prefix.is_empty() => Ok(None),
            Some((_, _, uri)) => Ok(Some(uri)),
            None => Err(SniffError::Namespace("undeclared namespace prefix")),
        }
    }

    pub(super) fn leave(&mut self, depth: usize) {
        while self.bindings.last().is_some_and(|(d, _, _)| *d >= depth) {
            self.bindings.pop();
        }
    }
}
