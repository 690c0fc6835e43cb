//! eppmux: a local proxy that lets many unmodified EPP clients share a few persistent,
//! pre-logged-in registry sessions.
//!
//! Read top-down: [`config`] (what to run) → [`proxy`] (wiring) → [`listener`] (accept, TLS) →
//! [`client_session`] (one client's EPP state machine) → [`pool`] (the sessions of one account) →
//! [`upstream`] (one registry session). [`frame`] and [`epp`] are the wire formats, [`tls`] builds
//! the TLS configs, and [`mock_registry`] is the registry used by the demo, tests and benchmarks.

pub mod access;
pub mod admin;
pub mod cli;
pub mod client_session;
pub mod config;
pub mod keys;
pub mod listener;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod shown;
pub mod tls;
pub mod upstream;

pub use eppmux_wire::{epp, frame, secret};
