//! Requests refused for a missing or wrong signature: every one is counted
//! (`portal_bot_unsigned_requests_total{platform}`), but only one log line per ten seconds per
//! platform says how many there were. Anyone can post to a webhook; a log line per forgery
//! would let them fill the disk (2,000 posts added 384 KB) and bury the lines that matter.

use std::sync::Arc;
use std::time::Duration;

use crate::core::asker::Platform;
use crate::core::metrics::Metrics;
use crate::core::throttle::LogThrottle;

/// How often, at most, a platform's refusals are logged.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// The refusal counter and sampled log of one platform's webhook.
pub struct Unsigned {
    platform: Platform,
    metrics: Arc<Metrics>,
    log: LogThrottle,
}

impl Unsigned {
    /// For `platform`'s webhook routes.
    pub fn new(platform: Platform, metrics: Arc<Metrics>) -> Self {
        Unsigned {
            platform,
            metrics,
            log: LogThrottle::new(LOG_EVERY),
        }
    }

    /// Records one refused request; `why` is the verifier's reason (never the header values).
    pub fn refused(&self, why: &'static str) {
        self.metrics.unsigned_request(self.platform.name());
        if let Some(refused) = self.log.hit() {
            let platform = match self.platform {
                Platform::Slack => "Slack",
                Platform::Discord => "Discord",
                Platform::Cli => "terminal",
            };
            tracing::warn!(
                refused,
                latest = why,
                "refused unsigned {platform} requests (count since the last such line; every one is in portal_bot_unsigned_requests_total)"
            );
        }
    }
}
