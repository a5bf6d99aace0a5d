//! Prometheus counters for operators: how many requests, how they ended, how long they took.
//!
//! Labels are closed sets (platform, outcome, Planhat call kind), never user input, so the
//! number of series is bounded and nothing a user types (or a URL) can reach `/metrics`.
//!
//! Being closed, the sets are known here ([`PLATFORMS`], [`OUTCOMES`], [`CALLS`],
//! [`RESULTS`]): each series is resolved from its family once, on first use, and kept in a
//! table, so a request finds its counters by index instead of hashing its labels every time.
//! A series still appears in `/metrics` only once it has been used.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    platform: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlatformLabels {
    platform: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    call: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabels {
    connection: &'static str,
}

/// Every platform a request can come from.
pub const PLATFORMS: [&str; 4] = ["slack", "discord", "cli", "web"];
/// Every outcome a request can have ([`crate::core::portal`]'s replies and refusals, and the
/// adapters' own refusals).
pub const OUTCOMES: [&str; 32] = [
    "out_of_scope",
    "no_match",
    "search_unavailable",
    "state_unavailable",
    "opened_before_click",
    "forged",
    "not_yours",
    "signed_in",
    "sign_in_failed",
    "no_email",
    "used",
    "unknown",
    "expired",
    "unavailable",
    "not_armed",
    "ok",
    "help",
    "no_access",
    "choose",
    "denied",
    "invalid_input",
    "rate_limited",
    "not_found",
    "upstream_rate_limited",
    "upstream_timeout",
    "upstream_unreachable",
    "upstream_failed",
    "token_rejected",
    "upstream_unusable",
    "audit_failed",
    "internal_error",
    "not_owner",
];
/// The Planhat calls the bot makes.
pub const CALLS: [&str; 4] = ["access", "mint", "lookup", "index"];
/// How a Planhat call can end.
pub const RESULTS: [&str; 8] = [
    "ok",
    "not_found",
    "token_rejected",
    "upstream_rate_limited",
    "upstream_unreachable",
    "upstream_timeout",
    "upstream_failed",
    "upstream_unusable",
];

fn index(set: &[&str], name: &str) -> Option<usize> {
    set.iter().position(|s| *s == name)
}

/// One family's series, resolved on first use and then found by index.
struct Resolved<M> {
    slots: Box<[OnceLock<M>]>,
}

impl<M: Clone> Resolved<M> {
    fn new(len: usize) -> Self {
        Resolved {
            slots: (0..len).map(|_| OnceLock::new()).collect(),
        }
    }

    /// The series in slot `i`, created with `make` the first time.
    fn get(&self, i: usize, make: impl FnOnce() -> M) -> &M {
        self.slots[i].get_or_init(make)
    }
}

/// The process's metrics, shared by every part of the bot.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    requests_by: Resolved<Counter>,
    latency: Family<PlatformLabels, Histogram>,
    latency_by: Resolved<Histogram>,
    planhat: Family<CallLabels, Histogram>,
    planhat_by: Resolved<Histogram>,
    reconnects: Family<ConnectionLabels, Counter>,
    deliveries_failed: Family<PlatformLabels, Counter>,
    in_flight: Gauge,
    state: StateMetrics,
    connections_open: Gauge,
    connections_refused: Family<ReasonLabels, Counter>,
    unsigned: Family<PlatformLabels, Counter>,
    notices_failed: Family<ReasonLabels, Counter>,
    lookups_skipped: Counter,
    forged: Family<WhatLabels, Counter>,
    notes: Family<ReasonLabels, Counter>,
    go_unaudited: Family<WhyLabels, Counter>,
    idle_closed: Family<ReasonLabels, Counter>,
    audit: AuditMetrics,
}

/// The audit database's writer (`[audit] database_url`): how far behind it is, how long its
/// writes take, how often they fail, and what went to the local fallback meanwhile.
struct AuditMetrics {
    queue: Gauge,
    writes: Histogram,
    failures: Counter,
    fallback: Counter,
    up: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WhyLabels {
    why: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WhatLabels {
    what: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

/// Shared state (Redis) health: whether it answers, and what fell back while it didn't.
#[derive(Default)]
struct StateMetrics {
    fallbacks: Family<OpLabels, Counter>,
    redis_up: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

fn seconds_buckets() -> impl Iterator<Item = f64> {
    [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0,
    ]
    .into_iter()
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric the bot reports.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("portal_bot");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<PlatformLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(seconds_buckets())
        });
        let planhat = Family::<CallLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(seconds_buckets())
        });
        let reconnects = Family::<ConnectionLabels, Counter>::default();
        let deliveries_failed = Family::<PlatformLabels, Counter>::default();
        let in_flight = Gauge::default();
        let lookups_skipped = Counter::default();
        let forged = Family::<WhatLabels, Counter>::default();
        registry.register(
            "forged_records",
            "Records in shared state whose seal did not verify (refused): someone wrote to the store without the key",
            forged.clone(),
        );
        registry.register(
            "requests",
            "Link requests by platform and outcome",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a verified request to its answer",
            latency.clone(),
        );
        registry.register(
            "planhat_call_duration_seconds",
            "Planhat API calls by kind and result",
            planhat.clone(),
        );
        registry.register(
            "reconnects",
            "Socket Mode / gateway reconnects",
            reconnects.clone(),
        );
        registry.register(
            "deliveries_failed",
            "Late answers (response_url, interaction edit) that could not be delivered",
            deliveries_failed.clone(),
        );
        registry.register(
            "planhat_in_flight",
            "Planhat calls in flight",
            in_flight.clone(),
        );
        let state = StateMetrics::default();
        registry.register(
            "state_fallbacks",
            "Shared-state operations that fell back to this process because Redis did not answer",
            state.fallbacks.clone(),
        );
        registry.register(
            "redis_up",
            "1 while the shared-state Redis answers (0 when it doesn't, or none is configured)",
            state.redis_up.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "HTTP connections open, all listeners",
            connections_open.clone(),
        );
        let connections_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "HTTP connections closed unserved, by reason (per_peer: over server.max_connections_per_peer)",
            connections_refused.clone(),
        );
        let unsigned = Family::<PlatformLabels, Counter>::default();
        registry.register(
            "unsigned_requests",
            "Webhook requests refused (401) for a missing, wrong or stale signature",
            unsigned.clone(),
        );
        let notes = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "planhat_notes",
            "Notes on Planhat company timelines, by outcome (written, retried, failed: given up after retries, dropped: queue full, no_company)",
            notes.clone(),
        );
        let notices_failed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "notices_failed",
            "Transparency-channel lines not posted, by reason (dropped: queue full; else the platform whose post failed)",
            notices_failed.clone(),
        );
        registry.register(
            "planhat_lookups_skipped",
            "Name lookups not made because Planhat's per-minute budget was nearly spent",
            lookups_skipped.clone(),
        );
        let go_unaudited = Family::<WhyLabels, Counter>::default();
        registry.register(
            "go_unaudited",
            "/go/ attempts not written to the audit trail (unknown: an id that does not exist; throttled: over the client's 20 audited refusals a minute)",
            go_unaudited.clone(),
        );
        let idle_closed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "idle_connections_closed",
            "Connections closed while idle, by reason (timeout: server.idle_timeout; evicted: the oldest idle one, to make room at the connection cap)",
            idle_closed.clone(),
        );
        let audit = AuditMetrics {
            queue: Gauge::default(),
            writes: Histogram::new(seconds_buckets()),
            failures: Counter::default(),
            fallback: Counter::default(),
            up: Gauge::default(),
        };
        registry.register(
            "audit_queue_depth",
            "Audit events not yet in the audit database: queued in memory or waiting in the local fallback file",
            audit.queue.clone(),
        );
        registry.register(
            "audit_write_duration_seconds",
            "Batched inserts into the audit database that succeeded, by how long they took",
            audit.writes.clone(),
        );
        registry.register(
            "audit_write_failures",
            "Batched inserts into the audit database (or connections to it) that failed",
            audit.failures.clone(),
        );
        registry.register(
            "audit_fallback_events",
            "Audit events the database could not take at once, put in the local fallback (file or log)",
            audit.fallback.clone(),
        );
        registry.register(
            "audit_database_up",
            "1 while the audit database takes writes (0 when it doesn't, or none is configured)",
            audit.up.clone(),
        );
        Metrics {
            go_unaudited,
            idle_closed,
            audit,
            notices_failed,
            notes,
            state,
            registry: Mutex::new(registry),
            unsigned,
            connections_open,
            connections_refused,
            requests,
            requests_by: Resolved::new(PLATFORMS.len() * OUTCOMES.len()),
            latency,
            latency_by: Resolved::new(PLATFORMS.len()),
            planhat,
            planhat_by: Resolved::new(CALLS.len() * RESULTS.len()),
            reconnects,
            deliveries_failed,
            in_flight,
            lookups_skipped,
            forged,
        }
    }

    /// Adds metrics computed on each scrape (e.g. Planhat's calls in the last minute).
    pub fn register_collector(&self, collector: Box<dyn prometheus_client::collector::Collector>) {
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .register_collector(collector);
    }

    /// Counts a name lookup skipped to save Planhat's budget for links.
    pub fn lookup_skipped(&self) {
        self.lookups_skipped.inc();
    }

    /// Counts one finished request.
    pub fn request(&self, platform: &'static str, outcome: &'static str, took: Duration) {
        let labels = RequestLabels { platform, outcome };
        let make = || self.requests.get_or_create(&labels).clone();
        match (index(&PLATFORMS, platform), index(&OUTCOMES, outcome)) {
            (Some(p), Some(o)) => self.requests_by.get(p * OUTCOMES.len() + o, make).inc(),
            _ => make().inc(),
        };
        let labels = PlatformLabels { platform };
        let make = || self.latency.get_or_create(&labels).clone();
        match index(&PLATFORMS, platform) {
            Some(p) => self.latency_by.get(p, make).observe(took.as_secs_f64()),
            None => make().observe(took.as_secs_f64()),
        }
    }

    /// Records one Planhat call.
    pub fn planhat_call(&self, call: &'static str, result: &'static str, took: Duration) {
        let labels = CallLabels { call, result };
        let make = || self.planhat.get_or_create(&labels).clone();
        match (index(&CALLS, call), index(&RESULTS, result)) {
            (Some(c), Some(r)) => self
                .planhat_by
                .get(c * RESULTS.len() + r, make)
                .observe(took.as_secs_f64()),
            _ => make().observe(took.as_secs_f64()),
        }
    }

    /// Tracks calls in flight toward Planhat (+1 / -1).
    pub fn planhat_in_flight(&self, delta: i64) {
        self.in_flight.inc_by(delta);
    }

    /// Counts a reconnect of a long-lived connection ("slack_socket", "discord_gateway").
    pub fn reconnect(&self, connection: &'static str) {
        self.reconnects
            .get_or_create(&ConnectionLabels { connection })
            .inc();
    }

    /// Counts a late answer that could not be delivered.
    pub fn delivery_failed(&self, platform: &'static str) {
        self.deliveries_failed
            .get_or_create(&PlatformLabels { platform })
            .inc();
    }

    /// Counts a shared-state operation that fell back to this process (Redis unavailable).
    pub fn state_fallback(&self, op: &'static str) {
        self.state.fallbacks.get_or_create(&OpLabels { op }).inc();
    }

    /// Whether the shared-state Redis answers.
    pub fn redis_up(&self, up: bool) {
        self.state.redis_up.set(i64::from(up));
    }

    /// Tracks open HTTP connections (+1 / -1).
    pub fn connections_open(&self, delta: i64) {
        self.connections_open.inc_by(delta);
    }

    /// Counts a connection closed without being served.
    pub fn connection_refused(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts a webhook request refused for its signature.
    pub fn unsigned_request(&self, platform: &'static str) {
        self.unsigned
            .get_or_create(&PlatformLabels { platform })
            .inc();
    }

    /// Counts a record in shared state whose seal did not verify (`what`: `go`, `discord_edit`).
    pub fn forged_record(&self, what: &'static str) {
        self.forged.get_or_create(&WhatLabels { what }).inc();
    }

    /// Counts Notes by outcome (`written`, `retried`, `failed`, `dropped`, `no_company`).
    pub fn note(&self, reason: &'static str, n: u64) {
        self.notes.get_or_create(&ReasonLabels { reason }).inc_by(n);
    }

    /// Counts a `/go/` attempt that was not audited (`why`: `unknown`, `throttled`).
    pub fn go_unaudited(&self, why: &'static str) {
        self.go_unaudited.get_or_create(&WhyLabels { why }).inc();
    }

    /// Counts a connection closed while idle (`reason`: `timeout`, `evicted`).
    pub fn idle_connection_closed(&self, reason: &'static str) {
        self.idle_closed
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts a transparency-channel line that was not posted.
    pub fn notice_failed(&self, reason: &'static str) {
        self.notices_failed
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// How many audit events wait for the audit database (in memory and in the fallback file).
    pub fn audit_queue(&self, depth: usize) {
        self.audit
            .queue
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// One batch written to the audit database, and how long it took.
    pub fn audit_write(&self, took: Duration) {
        self.audit.writes.observe(took.as_secs_f64());
        self.audit.up.set(1);
    }

    /// A failed connection or batch write to the audit database.
    pub fn audit_write_failed(&self) {
        self.audit.failures.inc();
        self.audit.up.set(0);
    }

    /// Audit events put in the local fallback because the database could not take them.
    pub fn audit_fallback(&self, events: usize) {
        self.audit.fallback.inc_by(events as u64);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolved_series_are_the_familys_own_and_appear_once_used() {
        let m = Metrics::new();
        assert!(!m.render().contains("outcome=\"ok\""));
        for _ in 0..3 {
            m.request("slack", "ok", Duration::from_millis(2));
        }
        m.request("slack", "some_new_outcome", Duration::from_millis(2));
        m.planhat_call("mint", "ok", Duration::from_millis(1));
        let text = m.render();
        assert!(
            text.contains("portal_bot_requests_total{platform=\"slack\",outcome=\"ok\"} 3"),
            "{text}"
        );
        assert!(text.contains("outcome=\"some_new_outcome\"} 1"), "{text}");
        assert!(
            text.contains("portal_bot_request_duration_seconds_count{platform=\"slack\"} 4"),
            "{text}"
        );
        assert!(
            text.contains(
                "portal_bot_planhat_call_duration_seconds_count{call=\"mint\",result=\"ok\"} 1"
            ),
            "{text}"
        );
        assert!(!text.contains("discord"), "unused series stay out: {text}");
    }
}
