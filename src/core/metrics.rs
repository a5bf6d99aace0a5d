//! Prometheus counters for operators: how many requests, how they ended, how long they took.
//!
//! Labels are closed sets (platform, outcome, Planhat call kind), never user input, so the
//! number of series is bounded and nothing a user types (or a URL) can reach `/metrics`.

use std::sync::Mutex;
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

/// The process's metrics, shared by every part of the bot.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<PlatformLabels, Histogram>,
    planhat: Family<CallLabels, Histogram>,
    reconnects: Family<ConnectionLabels, Counter>,
    deliveries_failed: Family<PlatformLabels, Counter>,
    in_flight: Gauge,
    state: StateMetrics,
    connections_open: Gauge,
    connections_refused: Family<ReasonLabels, Counter>,
    unsigned: Family<PlatformLabels, Counter>,
    notices_failed: Family<ReasonLabels, Counter>,
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
        let notices_failed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "notices_failed",
            "Transparency-channel lines not posted, by reason (dropped: queue full; slack/discord: the post failed)",
            notices_failed.clone(),
        );
        Metrics {
            notices_failed,
            state,
            registry: Mutex::new(registry),
            unsigned,
            connections_open,
            connections_refused,
            requests,
            latency,
            planhat,
            reconnects,
            deliveries_failed,
            in_flight,
        }
    }

    /// Counts one finished request.
    pub fn request(&self, platform: &'static str, outcome: &'static str, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels { platform, outcome })
            .inc();
        self.latency
            .get_or_create(&PlatformLabels { platform })
            .observe(took.as_secs_f64());
    }

    /// Records one Planhat call.
    pub fn planhat_call(&self, call: &'static str, result: &'static str, took: Duration) {
        self.planhat
            .get_or_create(&CallLabels { call, result })
            .observe(took.as_secs_f64());
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

    /// Counts a transparency-channel line that was not posted.
    pub fn notice_failed(&self, reason: &'static str) {
        self.notices_failed
            .get_or_create(&ReasonLabels { reason })
            .inc();
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
