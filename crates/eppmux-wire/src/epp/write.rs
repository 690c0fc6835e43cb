//! The few messages eppmux writes itself: its own answers, `<hello>`, `<logout>`, and the
//! upstream `<login>`. Every value that comes from a peer or from configuration is XML-escaped.

use bytes::Bytes;
use quick_xml::escape::escape;

use super::EPP_NS;
use crate::secret::Secret;

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
    new_pw: Option<&Secret>,
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
        "{XML_HEAD}<epp xmlns=\"{EPP_NS}\"><command><login><clID>{}</clID><pw>{}</pw>{}\
         <options><version>1.0</version><lang>en</lang></options><svcs>{svcs}</svcs></login>\
         <clTRID>{}</clTRID></command></epp>",
        escape(clid),
        escape(pw.expose()),
        new_pw.map_or(String::new(), |n| format!(
            "<newPW>{}</newPW>",
            escape(n.expose())
        )),
        escape(cltrid)
    ))
}
