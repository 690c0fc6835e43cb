//! eppmux: a local proxy that lets many unmodified EPP clients share a few persistent,
//! pre-logged-in registry sessions.
//!
//! Read top-down as the data flows: `config` (what to run) → `proxy` (wiring, one
//! [`RegistryHandle`] per registry) → `listener` (accept, TLS, admission) → `client_session`
//! (one client's EPP state machine) → `pool` (the sessions of one account: a pure bookkeeping
//! core and its driver) → `upstream` (one registry session). Beside the flow: `access` (who may
//! connect), `admin` (health, readiness, metrics, status over HTTP), `metrics`, `tls`, `keys`
//! (PEM and encrypted keys) and `shown` (what a log line may say). The wire formats — framing,
//! EPP sniffing, the answers eppmux writes — are the `eppmux-wire` crate, re-exported here as
//! [`frame`], [`epp`] and [`secret`]; the mock registry is a crate of its own, which only the
//! binary and the tests use.
//!
//! The public surface is what the `eppmux` binary and the integration tests need; everything
//! else is private so that it can change freely.

#![forbid(unsafe_code)]

mod access;
pub mod admin;
pub mod audit;
pub mod cli;
mod client_session;
pub mod config;
mod keys;
mod listener;
mod metrics;
mod pool;
mod proxy;
mod shown;
pub mod tls;
mod upstream;

pub use access::fingerprint;
pub use eppmux_wire::{epp, frame, secret};
pub use keys::{KeySource, PemSource};
pub use metrics::Metrics;
pub use proxy::{Proxy, RegistryHandle, ReloadError};
pub use upstream::{Session as UpstreamSession, UpstreamTarget};
