//! Prometheus metrics: one registry per running proxy, counters and histograms updated where
//! things happen (pool counters are mirrored from the pools' own counts as they change), pool
//! gauges set by the pools at scrape time, encoded in the OpenMetrics text format by
//! `prometheus-client`. This module knows no other part of eppmux.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AccountLabel {
    /// The registry's name; empty for the single registry of the flat form.
    pub registry: String,
    pub account: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SessionStateLabel {
    pub registry: String,
    pub account: String,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub registry: String,
    pub account: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabel {
    pub registry: String,
    pub account: String,
    /// From `Command::metric_name`'s fixed set, never a client's string.
    pub command: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabel {
    pub listener: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabel {
    pub registry: String,
    /// `upstream_client`, `upstream_ca`, `listener` or `listener_client_ca`.
    pub certificate: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `ok` or `failed`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabel {
    pub registry: String,
    pub account: String,
    /// `not_logged_in`, `lost_query` or `handoff`.
    pub kind: &'static str,
}

type HistogramFamily = Family<AccountLabel, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 250 µs to ~16 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 17))
}

pub struct Metrics {
    registry: Registry,
    pub sessions: Family<SessionStateLabel, Gauge>,
    pub logins: Family<ResultLabel, Counter>,
    pub reconnects: Family<AccountLabel, Counter>,
    pub commands: Family<CommandLabel, Counter>,
    pub command_duration: HistogramFamily,
    pub queue_wait: HistogramFamily,
    pub queue_length: Family<AccountLabel, Gauge>,
    pub pool_exhausted: Family<AccountLabel, Counter>,
    pub clients_current: Family<ListenerLabel, Gauge>,
    pub clients_total: Family<ListenerLabel, Counter>,
    pub connections_refused: Family<RefusedLabel, Counter>,
    pub frames_rejected: Family<ReasonLabel, Counter>,
    pub keepalives: Family<AccountLabel, Counter>,
    pub retries: Family<RetryLabel, Counter>,
    pub retries_refused: Family<AccountLabel, Counter>,
    pub duplicate_answers: Family<AccountLabel, Counter>,
    pub login_budget_waits: Family<AccountLabel, Counter>,
    pub login_tokens: Family<AccountLabel, Gauge>,
    pub commands_throttled: Family<AccountLabel, Counter>,
    pub certificate_expiry: Family<CertificateLabel, Gauge>,
    pub reloads: Family<OutcomeLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Counts a configuration reload (SIGHUP), applied or refused.
    pub fn count_reload(&self, applied: bool) {
        let result = if applied { "ok" } else { "failed" };
        self.reloads.get_or_create(&OutcomeLabel { result }).inc();
    }

    /// Long because: one registration per metric, each with its help text; split, the list of
    /// what eppmux exports would only be scattered.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("eppmux");
        let m = Metrics {
            sessions: Family::default(),
            logins: Family::default(),
            reconnects: Family::default(),
            commands: Family::default(),
            command_duration: Family::new_with_constructor(latency_histogram),
            queue_wait: Family::new_with_constructor(latency_histogram),
            queue_length: Family::default(),
            pool_exhausted: Family::default(),
            clients_current: Family::default(),
            clients_total: Family::default(),
            connections_refused: Family::default(),
            frames_rejected: Family::default(),
            keepalives: Family::default(),
            retries: Family::default(),
            retries_refused: Family::default(),
            duplicate_answers: Family::default(),
            login_budget_waits: Family::default(),
            login_tokens: Family::default(),
            commands_throttled: Family::default(),
            certificate_expiry: Family::default(),
            reloads: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "upstream_sessions",
            "Upstream sessions by account and state (connecting, idle, busy, dead)",
            m.sessions.clone(),
        );
        r.register(
            "upstream_logins",
            "Upstream login attempts by account and result code ('error' when no answer)",
            m.logins.clone(),
        );
        r.register(
            "upstream_reconnects",
            "Upstream sessions opened to replace one that was lost, retired or failed",
            m.reconnects.clone(),
        );
        r.register(
            "commands_forwarded",
            "Commands forwarded by account, command and registry result code",
            m.commands.clone(),
        );
        r.register(
            "command_duration_seconds",
            "Time from a command's arrival to its answer, queue wait included",
            m.command_duration.clone(),
        );
        r.register(
            "queue_wait_seconds",
            "Time a command waited for a free upstream session",
            m.queue_wait.clone(),
        );
        r.register(
            "queue_length",
            "Commands waiting for a free upstream session",
            m.queue_length.clone(),
        );
        r.register(
            "pool_exhausted",
            "2400 answers: no upstream session free within the wait, or the queue full",
            m.pool_exhausted.clone(),
        );
        r.register(
            "client_connections",
            "Client connections open now, by listener",
            m.clients_current.clone(),
        );
        r.register(
            "client_connections_accepted",
            "Client connections accepted, by listener",
            m.clients_total.clone(),
        );
        r.register(
            "client_connections_refused",
            "Client connections refused, by listener and reason",
            m.connections_refused.clone(),
        );
        r.register(
            "frames_rejected",
            "Client frames refused, by reason",
            m.frames_rejected.clone(),
        );
        r.register(
            "keepalive_hellos",
            "Keepalive <hello>s sent on idle upstream sessions",
            m.keepalives.clone(),
        );
        r.register("retries", "Commands sent again because the registry certainly did not execute them (or they were queries)", m.retries.clone());
        r.register(
            "retries_refused",
            "Transforms whose response was lost and that were not replayed",
            m.retries_refused.clone(),
        );
        r.register(
            "upstream_duplicate_answers",
            "Registry answers received twice on a session (same svTRID) and dropped",
            m.duplicate_answers.clone(),
        );
        r.register(
            "login_budget_waits",
            "Times opening an upstream session had to wait for the login budget",
            m.login_budget_waits.clone(),
        );
        r.register(
            "login_budget_tokens",
            "Upstream logins the budget allows right now",
            m.login_tokens.clone(),
        );
        r.register(
            "commands_throttled",
            "Commands that waited for the per-account command rate limit",
            m.commands_throttled.clone(),
        );
        r.register(
            "certificate_expiry_seconds",
            "Seconds until each configured certificate expires (the earliest of a bundle)",
            m.certificate_expiry.clone(),
        );
        r.register(
            "config_reloads",
            "Configuration reloads (SIGHUP) by result",
            m.reloads.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Everything, in the OpenMetrics text format (gauges as last set).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Shorthand for the label most metrics carry.
pub fn account(registry: &str, clid: &str) -> AccountLabel {
    AccountLabel {
        registry: registry.to_string(),
        account: clid.to_string(),
    }
}
