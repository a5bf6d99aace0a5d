//! "Have I seen this delivery before?" — bounded, time-limited memory of request ids.
//!
//! Slack redelivers Socket Mode envelopes that were not acknowledged in time, and retries
//! webhooks; Discord can deliver an interaction twice across reconnects. The user must get one
//! link, not two, so each adapter remembers the platform's own request id (Slack `trigger_id`,
//! Discord interaction id) for a few minutes. The map is capped: under a flood the oldest
//! entries go first, and it can never grow without bound.

use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Remembers ids for `ttl`, at most `cap` of them.
pub struct Dedupe {
    seen: DashMap<String, Instant>,
    ttl: Duration,
    cap: usize,
}

impl Dedupe {
    /// A memory of `cap` ids for `ttl` each.
    pub fn new(ttl: Duration, cap: usize) -> Self {
        Dedupe {
            seen: DashMap::new(),
            ttl,
            cap,
        }
    }

    /// True the first time `id` is seen within the TTL.
    pub fn first_time(&self, id: &str) -> bool {
        let now = Instant::now();
        if self.seen.len() >= self.cap {
            let ttl = self.ttl;
            self.seen.retain(|_, at| now.duration_since(*at) < ttl);
            if self.seen.len() >= self.cap {
                // Still full of fresh ids: forget the oldest half rather than grow.
                let mut ages: Vec<Instant> = self.seen.iter().map(|e| *e.value()).collect();
                ages.sort_unstable();
                let cutoff = ages[ages.len() / 2];
                self.seen.retain(|_, at| *at > cutoff);
            }
        }
        match self.seen.entry(id.to_string()) {
            dashmap::Entry::Occupied(mut e) if now.duration_since(*e.get()) >= self.ttl => {
                e.insert(now);
                true
            }
            dashmap::Entry::Occupied(_) => false,
            dashmap::Entry::Vacant(e) => {
                e.insert(now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_and_bounded() {
        let d = Dedupe::new(Duration::from_secs(60), 100);
        assert!(d.first_time("a"));
        assert!(!d.first_time("a"));
        for i in 0..1000 {
            d.first_time(&i.to_string());
        }
        assert!(d.seen.len() <= 100);
    }
}
