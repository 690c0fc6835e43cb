//! The wire formats every part of eppmux speaks: [`frame`], the RFC 5734 framing (a 4-byte length
//! that counts itself, then the XML instance); [`epp`], the one reading of an EPP frame that
//! routing needs (what kind of message, the command, its clTRID, a response's code and
//! transaction ids), the few messages eppmux writes itself, and the result codes ([`epp::code`]);
//! and [`secret`], the string type for passwords that is never printed.
#![forbid(unsafe_code)]

pub mod epp;
pub mod frame;
pub mod secret;
