//! EPP result codes (RFC 5730 §3) that eppmux writes or acts on.

pub const COMPLETED: u16 = 1000;
pub const NO_MESSAGES: u16 = 1300;
pub const ENDING_SESSION: u16 = 1500;
pub const SYNTAX_ERROR: u16 = 2001;
pub const USE_ERROR: u16 = 2002;
pub const UNIMPLEMENTED_OPTION: u16 = 2102;
pub const AUTHENTICATION_ERROR: u16 = 2200;
pub const COMMAND_FAILED: u16 = 2400;
pub const CLOSING: u16 = 2500;
pub const AUTHENTICATION_CLOSING: u16 = 2501;
pub const SESSION_LIMIT: u16 = 2502;
