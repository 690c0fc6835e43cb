//! Values a client chose, made safe to log. A clID, a clTRID or an error message quoting a frame
//! could otherwise forge log lines (a newline and a fake `client logged in` line) or flood the
//! log (a megabyte-long value): [`shown`] escapes every control character, quote and backslash
//! the way `char::escape_debug` does, and cuts the value after [`MAX_CHARS`] characters.

use std::fmt;

/// Longer values are cut, with the length they had.
pub const MAX_CHARS: usize = 64;

/// A client-chosen value for a log field: `clid = %shown(&login.clid)`.
pub fn shown(value: &str) -> Shown<'_> {
    Shown(value)
}

pub struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.0.chars().enumerate() {
            if i == MAX_CHARS {
                return write!(f, "…({} bytes)", self.0.len());
            }
            write!(f, "{}", c.escape_debug())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newlines_are_escaped_and_long_values_cut() {
        let forged = "x\n2026-11-27T00:00:00Z  INFO client logged in clid=registrar1";
        let out = shown(forged).to_string();
        assert!(!out.contains('\n'), "{out}");
        assert!(out.starts_with("x\\n"));
        let long = "a".repeat(100_000);
        let out = shown(&long).to_string();
        assert_eq!(out, format!("{}…(100000 bytes)", "a".repeat(MAX_CHARS)));
        assert_eq!(shown("ABC-1").to_string(), "ABC-1");
        assert_eq!(shown("q\"\\\u{1b}[31m").to_string(), "q\\\"\\\\\\u{1b}[31m");
    }
}
