//! What a mock registry is told to be: its accounts, timings and session cap ([`MockConfig`]),
//! and the ways a command can go wrong on it ([`Fault`], drawn at random by [`Chaos`]).

use std::collections::HashMap;
use std::time::Duration;

/// What a forgotten session answers by default (the .gov registry's wording).
pub const NOT_LOGGED_IN: &str = "Registrar is not logged in.";

/// What a mock registry is told to be.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// clID → password.
    pub accounts: HashMap<String, String>,
    /// Processing time of each command, serial per session.
    pub latency: Duration,
    /// Network round trip: every frame takes half of it each way, and opening a connection
    /// (TCP, then TLS) takes two of it before the greeting leaves.
    pub rtt: Duration,
    /// Logged-in sessions allowed per clID.
    pub session_cap: usize,
    /// A session idle this long is closed by the registry (or forgotten, see `idle_forget`).
    pub idle_timeout: Duration,
    /// At the idle timeout, keep the connection but answer every command with 2002
    /// "Registrar is not logged in." (as the .gov registry does) instead of closing.
    pub idle_forget: bool,
    /// Random faults on commands and logins (for soaks); None for a well-behaved registry.
    pub chaos: Option<Chaos>,
    /// Largest frame it reads; bigger ones close the connection.
    pub max_frame: usize,
    /// What a forgotten session answers (with 2002); registries word it differently.
    pub forgotten_message: String,
    /// Answer commands whose clTRID the EPP schema refuses (shorter than 3 or longer than 64
    /// characters) with 2001 and no clTRID, as schema-validating registries do.
    pub strict_cltrid: bool,
    /// Time the registry takes to check a login (passwords, audit rows), before answering it.
    pub login_latency: Duration,
    /// The svID of its greeting (tests tell registries apart by it).
    pub sv_id: String,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            accounts: HashMap::from([("registrar1".to_string(), "s3cret-Pw".to_string())]),
            latency: Duration::ZERO,
            rtt: Duration::ZERO,
            session_cap: 100,
            idle_timeout: Duration::from_secs(3600),
            idle_forget: false,
            chaos: None,
            max_frame: eppmux_wire::frame::DEFAULT_MAX_FRAME,
            forgotten_message: NOT_LOGGED_IN.to_string(),
            strict_cltrid: false,
            login_latency: Duration::ZERO,
            sv_id: "eppmux mock registry".to_string(),
        }
    }
}

/// Something going wrong with one command, after login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Close the connection without processing the command.
    DropBeforeExecute,
    /// Process the command, then close without answering.
    DropAfterExecute,
    /// Forget the session: this and every later command get 2002 "Registrar is not logged in."
    /// and are not processed.
    NotLoggedIn,
    /// Answer 2500 without processing, then close.
    Close2500,
    /// Answer after an extra delay.
    Delay(Duration),
    /// Process the command, send half of the answer, then go silent.
    StallMidFrame,
    /// Process the command, then answer with a header claiming a 64 MiB frame.
    OversizeResponse,
    /// Process the command, then answer with a frame that is not well-formed XML.
    MalformedResponse,
    /// Answer normally, then send a second response that nothing asked for (no clTRID).
    Unsolicited,
    /// Process the command and answer, then send the very same answer again after this delay
    /// (same clTRID, same svTRID), as a registry that retransmits does.
    AnswerTwice(Duration),
    /// Answer 2001 without clTRID and without processing, as a registry does to a command it
    /// cannot read.
    NoClTrid,
    /// Answer 2002 "Command use error" without processing; the session stays logged in.
    UseError,
    /// Stop reading from the connection and answer nothing more; close after the idle timeout.
    StopReading,
    /// Answer 1500 (session ended) without processing, and forget the session without closing
    /// the connection: a registry that read the command as a `<logout>` (and is slow to close).
    EndSession,
}

impl Fault {
    /// A short stable name, for the transcript and a soak's report.
    pub fn name(&self) -> &'static str {
        match self {
            Fault::DropBeforeExecute => "drop-before-execute",
            Fault::DropAfterExecute => "drop-after-execute",
            Fault::NotLoggedIn => "2002-not-logged-in",
            Fault::Close2500 => "2500-close",
            Fault::Delay(_) => "delay",
            Fault::StallMidFrame => "stall-mid-frame",
            Fault::OversizeResponse => "oversize-response",
            Fault::MalformedResponse => "malformed-response",
            Fault::Unsolicited => "unsolicited-response",
            Fault::AnswerTwice(_) => "answer-twice",
            Fault::NoClTrid => "no-cltrid-2001",
            Fault::UseError => "2002-use-error",
            Fault::StopReading => "stop-reading",
            Fault::EndSession => "1500-end-session",
        }
    }
}

/// Random faults: each command (after login) meets a fault with `command_fault_probability`,
/// drawn evenly from every [`Fault`]; each login is refused (2502 or 2501, with a close) with
/// `login_refusal_probability`.
#[derive(Debug, Clone, Copy)]
pub struct Chaos {
    /// Chance that a command meets a fault.
    pub command_fault_probability: f64,
    /// Chance that a login is refused.
    pub login_refusal_probability: f64,
    /// Longest delay for [`Fault::Delay`] and [`Fault::AnswerTwice`].
    pub max_delay: Duration,
    /// Seed of the draws, so a failing soak can be replayed.
    pub seed: u64,
}
