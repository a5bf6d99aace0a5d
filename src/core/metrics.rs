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
    lookups_skipped: Counter,
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
        registry.register(
            "planhat_lookups_skipped",
            "Name lookups not made because Planhat's per-minute budget was nearly spent",
            lookups_skipped.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            requests,
            latency,
            planhat,
            reconnects,
            deliveries_failed,
            in_flight,
            lookups_skipped,
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

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}
