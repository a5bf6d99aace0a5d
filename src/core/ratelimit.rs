//! Per-asker rate limit: a token bucket per person, so one runaway script or a stuck key
//! cannot mint links without bound or burn the team's Planhat quota.
//!
//! Buckets live in a `DashMap` (no global lock on the hot path) and a sweeper drops the ones
//! that have refilled, so the map stays as small as the set of recent askers.

use std::time::{Duration, Instant};

use dashmap::DashMap;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Allows `per_minute` requests per key per minute, with bursts up to `per_minute`.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: f64,
    buckets: DashMap<String, Bucket>,
}

impl RateLimiter {
    /// A limiter allowing `per_minute` requests per key per minute.
    pub fn new(per_minute: u32) -> Self {
        RateLimiter {
            per_minute: f64::from(per_minute.max(1)),
            buckets: DashMap::new(),
        }
    }

    fn refill_rate(&self) -> f64 {
        self.per_minute / 60.0
    }

    /// Takes one token for `key`; `Err(wait)` says when the next one will be there.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let rate = self.refill_rate();
        // A known asker's bucket is found by `&str`: no key is made for a lookup.
        let mut entry = match self.buckets.get_mut(key) {
            Some(entry) => entry,
            None => self.buckets.entry(key.to_string()).or_insert(Bucket {
                tokens: self.per_minute,
                updated: now,
            }),
        };
        let b = entry.value_mut();
        let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(self.per_minute);
        b.updated = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - b.tokens) / rate;
            Err(Duration::from_secs_f64(wait.ceil().max(1.0)))
        }
    }

    /// Drops buckets that are full again (their owners have been quiet for a minute).
    pub fn sweep(&self, now: Instant) {
        let rate = self.refill_rate();
        let cap = self.per_minute;
        self.buckets.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
            b.tokens + elapsed * rate < cap
        });
    }

    /// How many askers are being tracked (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

impl crate::core::held::Holds for RateLimiter {
    /// Buckets held: a slot each (key and bucket) in the map's tables, and the key's text (a
    /// platform and user id, about 32 bytes). Bounded by the askers of the last minute.
    fn held(&self, out: &mut Vec<crate::core::held::Held>) {
        let slot = std::mem::size_of::<(String, Bucket)>();
        out.push(crate::core::held::Held {
            holder: "rate_limit",
            entries: self.buckets.len(),
            bytes: crate::core::held::table_bytes(self.buckets.capacity(), slot)
                + self.buckets.len() * 32,
            capacity: 0,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_then_says_when() {
        let rl = RateLimiter::new(3);
        let t = Instant::now();
        for _ in 0..3 {
            assert!(rl.check("a", t).is_ok());
        }
        let wait = rl.check("a", t).unwrap_err();
        assert_eq!(wait, Duration::from_secs(20));
        assert!(
            rl.check("b", t).is_ok(),
            "another asker has their own bucket"
        );
        assert!(rl.check("a", t + Duration::from_secs(20)).is_ok());
    }

    #[test]
    fn sweep_forgets_quiet_askers_only() {
        let rl = RateLimiter::new(2);
        let t = Instant::now();
        rl.check("quiet", t).unwrap();
        rl.check("busy", t + Duration::from_secs(59)).unwrap();
        rl.sweep(t + Duration::from_secs(60));
        assert_eq!(rl.tracked(), 1);
    }
}
