//! Which command an answer belongs to. Registries answer in the order commands arrived (RFC 5734
//! §3), so a frame is the answer to the oldest command in flight — unless it is a duplicate or a
//! stray. What tells them apart, from what is knowable:
//! - the **svTRID**: the registry gives every answer a new one, so an answer whose svTRID was
//!   already delivered on this session is a duplicate, whatever its clTRID. It is dropped and the
//!   session goes on (the real answer is still to come).
//! - the **clTRID**: chosen by clients and not unique across them, so it can only say "not this
//!   command's": a command with a clTRID takes only an answer echoing it (compared as the schema's
//!   `token` type, whitespace collapsed, since a validating registry normalises it); a command
//!   without one takes only an answer without one. The one exception: an answer without clTRID
//!   and a code of 2000–2005 is what registries send when they could not read the command (a
//!   schema-invalid clTRID, for instance) — nothing ran, and by order it is the oldest command's.
//! - a frame while nothing is in flight that is not a duplicate: the session is out of step.
//!
//! Anything else — a mismatch, an unreadable frame, a close — ends the session: the commands in
//! flight have unknown outcomes.

use std::collections::{HashSet, VecDeque};

use bytes::Bytes;

use super::{ExchangeError, Reply};
use crate::epp::{self, Message};
use crate::frame::FrameError;

/// svTRIDs remembered per session. Duplicates follow their original closely; a few hundred
/// answers of memory is far more than any registry's retransmission window.
const REMEMBERED: usize = 256;

/// What the session is waiting for when a frame arrives.
#[derive(Debug, Clone, Copy)]
pub enum Expect<'a> {
    /// Nothing is in flight.
    Nothing,
    /// The answer to a command with this clTRID (or none).
    Answer(Option<&'a str>),
}

#[derive(Debug)]
pub enum Verdict {
    /// The oldest command's answer.
    Answer(Reply),
    /// An answer already delivered on this session (its svTRID): dropped.
    Duplicate { svtrid: String },
    /// The session is out of step or broken.
    Broken(ExchangeError),
}

/// The answers one session has delivered, by svTRID.
#[derive(Debug, Default)]
pub struct Answers {
    order: VecDeque<String>,
    seen: HashSet<String>,
}

impl Answers {
    /// Reads `next` (what the session received) against what was expected.
    pub fn classify(
        &mut self,
        next: Option<Result<Bytes, FrameError>>,
        expect: Expect<'_>,
    ) -> Verdict {
        let frame = match next {
            None => return broken("registry closed the connection"),
            Some(Err(e)) => return broken(format!("read failed: {e}")),
            Some(Ok(frame)) => frame,
        };
        let response = match epp::sniff(&frame) {
            Ok(Message::Response(r)) => r,
            Ok(Message::Greeting(_)) => return broken("registry sent a greeting nobody asked for"),
            Ok(other) => return broken(format!("registry sent {other:?} instead of a response")),
            Err(e) => return broken(format!("registry response unreadable: {e}")),
        };
        if let Some(sv) = &response.svtrid {
            if self.seen.contains(sv) {
                return Verdict::Duplicate { svtrid: sv.clone() };
            }
        }
        let sent = match expect {
            Expect::Nothing => {
                return broken(format!(
                    "unsolicited response {} {} while nothing was in flight",
                    response.code, response.msg
                ))
            }
            Expect::Answer(sent) => sent,
        };
        if !belongs(sent, response.cltrid.as_deref(), response.code) {
            return Verdict::Broken(ExchangeError::OutOfStep {
                expected: sent.map(str::to_owned),
                got: response.cltrid,
            });
        }
        if let Some(sv) = &response.svtrid {
            self.remember(sv.clone());
        }
        Verdict::Answer(Reply {
            frame,
            code: response.code,
            msg: response.msg,
            svtrid: response.svtrid,
            // Filled in by the session that read it.
            session: 0,
        })
    }

    fn remember(&mut self, svtrid: String) {
        if self.order.len() == REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.seen.insert(svtrid.clone());
        self.order.push_back(svtrid);
    }
}

fn broken(why: impl Into<String>) -> Verdict {
    Verdict::Broken(ExchangeError::Lost(why.into()))
}

/// Whether an answer echoing `got` with `code` can be the answer to a command sent with `sent`.
fn belongs(sent: Option<&str>, got: Option<&str>, code: u16) -> bool {
    match (sent, got) {
        (Some(a), Some(b)) => a.split_whitespace().eq(b.split_whitespace()),
        (None, None) => true,
        // The registry could not read the command, so it could not echo its clTRID.
        (Some(_), None) => (2000..=2005).contains(&code),
        // A command without clTRID never takes an answer that carries one: that is someone
        // else's answer (defect: a client without clTRID received another client's data).
        (None, Some(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(
        code: u16,
        cltrid: Option<&str>,
        svtrid: Option<&str>,
    ) -> Option<Result<Bytes, FrameError>> {
        let cl = cltrid
            .map(|c| format!("<clTRID>{c}</clTRID>"))
            .unwrap_or_default();
        let sv = svtrid
            .map(|s| format!("<svTRID>{s}</svTRID>"))
            .unwrap_or_default();
        Some(Ok(Bytes::from(format!(
            "<epp xmlns=\"{}\"><response><result code=\"{code}\"><msg>m</msg></result><trID>{cl}{sv}</trID></response></epp>",
            epp::EPP_NS
        ))))
    }

    fn is_answer(v: &Verdict) -> bool {
        matches!(v, Verdict::Answer(_))
    }

    #[test]
    fn an_answer_already_delivered_is_a_duplicate_whatever_its_cltrid() {
        let mut a = Answers::default();
        assert!(is_answer(&a.classify(
            answer(1000, Some("A-1"), Some("sv1")),
            Expect::Answer(Some("A-1"))
        )));
        // The same answer again while a command without clTRID is in flight (defect 1).
        assert!(matches!(
            a.classify(answer(1000, Some("A-1"), Some("sv1")), Expect::Answer(None)),
            Verdict::Duplicate { .. }
        ));
        // And while nothing is in flight.
        assert!(matches!(
            a.classify(answer(1000, Some("A-1"), Some("sv1")), Expect::Nothing),
            Verdict::Duplicate { .. }
        ));
    }

    #[test]
    fn a_command_without_cltrid_never_takes_an_answer_that_carries_one() {
        let mut a = Answers::default();
        assert!(matches!(
            a.classify(answer(1000, Some("A-1"), Some("sv9")), Expect::Answer(None)),
            Verdict::Broken(ExchangeError::OutOfStep { .. })
        ));
        assert!(is_answer(&a.classify(
            answer(1000, None, Some("sv10")),
            Expect::Answer(None)
        )));
    }

    #[test]
    fn an_unreadable_command_error_without_cltrid_is_the_oldest_commands_answer() {
        // Defect 2: registries answer schema-invalid commands with 2001 and no clTRID.
        let mut a = Answers::default();
        for code in [2001, 2005] {
            assert!(is_answer(
                &a.classify(answer(code, None, None), Expect::Answer(Some("AB")))
            ));
        }
        // A success without the command's clTRID is not its answer.
        assert!(matches!(
            a.classify(answer(1000, None, Some("sv2")), Expect::Answer(Some("X-1"))),
            Verdict::Broken(ExchangeError::OutOfStep { .. })
        ));
    }

    #[test]
    fn cltrids_compare_as_tokens() {
        let mut a = Answers::default();
        assert!(is_answer(&a.classify(
            answer(1000, Some("a  b"), Some("s1")),
            Expect::Answer(Some(" a b "))
        )));
        assert!(matches!(
            a.classify(
                answer(1000, Some("ab"), Some("s2")),
                Expect::Answer(Some("a b"))
            ),
            Verdict::Broken(_)
        ));
    }

    #[test]
    fn anything_while_nothing_is_in_flight_breaks_the_session() {
        let mut a = Answers::default();
        assert!(matches!(
            a.classify(answer(1000, None, Some("new")), Expect::Nothing),
            Verdict::Broken(_)
        ));
        assert!(matches!(
            a.classify(None, Expect::Nothing),
            Verdict::Broken(_)
        ));
    }

    #[test]
    fn memory_is_bounded() {
        let mut a = Answers::default();
        for i in 0..(REMEMBERED + 10) {
            let sv = format!("sv{i}");
            a.classify(answer(1000, None, Some(&sv)), Expect::Answer(None));
        }
        assert_eq!(a.seen.len(), REMEMBERED);
        assert!(!a.seen.contains("sv0"));
    }
}
