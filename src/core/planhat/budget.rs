//! Planhat's budget: how many calls this process made to Planhat in the last minute.
//!
//! Planhat allows about 200 calls a minute per API token (a soft limit; 150 a second hard). A
//! link costs two calls; the optional name lookup is a third per new end user. Counting the
//! calls lets the bot skip the optional ones while the minute's count nears the soft limit, so
//! links never meet a 429 because of names, and lets operators see the count in `/metrics`.
//!
//! The window is 60 one-second buckets, each an atomic (second, count) pair: recording a call
//! is one atomic update, reading the minute sums 60 atomics: both constant, whatever the load.
//! With `[state]` on Redis, replicas sharing a token also share the count: each reports the
//! calls it made since its last report once a second, and reads back the cluster's minute
//! ([`CallWindow::set_cluster`]), so N replicas' index reads, name lookups and links together
//! stay under the one limit Planhat applies to the token. Without Redis it counts this process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;

const BUCKETS: usize = 60;

/// Calls per second over the last minute, lock-free.
#[derive(Debug)]
pub struct CallWindow {
    /// Bucket `s % 60` holds `(s << 32) | count` for second `s` since `started`.
    buckets: [AtomicU64; BUCKETS],
    started: Instant,
    /// Calls made and not yet reported to the cluster's count.
    unreported: AtomicU64,
    /// The cluster's calls in the last minute as last read, and the second it was read at
    /// (`u64::MAX`: never).
    cluster: AtomicU64,
    cluster_at: AtomicU64,
}

/// How long the cluster's count is trusted after it was read.
const CLUSTER_FRESH: u64 = 3;

impl Default for CallWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl CallWindow {
    /// An empty window starting now.
    pub fn new() -> Self {
        CallWindow {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            started: Instant::now(),
            unreported: AtomicU64::new(0),
            cluster: AtomicU64::new(0),
            cluster_at: AtomicU64::new(u64::MAX),
        }
    }

    fn second(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Counts one call made now.
    pub fn record(&self) {
        self.unreported.fetch_add(1, Ordering::Relaxed);
        self.record_at(self.second());
    }

    /// The calls made since the last call of this (for the cluster's count).
    pub fn take_unreported(&self) -> u64 {
        self.unreported.swap(0, Ordering::Relaxed)
    }

    /// Gives back calls that could not be reported (they go with the next report).
    pub fn unreport(&self, calls: u64) {
        self.unreported.fetch_add(calls, Ordering::Relaxed);
    }

    /// The cluster's calls in the last minute, as the shared store just counted them.
    pub fn set_cluster(&self, calls: u64) {
        self.cluster.store(calls, Ordering::Relaxed);
        self.cluster_at.store(self.second(), Ordering::Relaxed);
    }

    fn record_at(&self, second: u64) {
        let bucket = &self.buckets[(second % BUCKETS as u64) as usize];
        let mut current = bucket.load(Ordering::Relaxed);
        loop {
            let next = if current >> 32 == second {
                current + 1
            } else {
                (second << 32) | 1 // the bucket still holds a second a minute ago: start over
            };
            match bucket.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }

    /// Calls made in the last 60 seconds (this second included): by the whole cluster when a
    /// recent count of it is known (never less than this process's own), else by this process.
    pub fn last_minute(&self) -> u64 {
        let now = self.second();
        let mine = self.last_minute_at(now);
        let at = self.cluster_at.load(Ordering::Relaxed);
        if at != u64::MAX && now.saturating_sub(at) <= CLUSTER_FRESH {
            mine.max(self.cluster.load(Ordering::Relaxed))
        } else {
            mine
        }
    }

    fn last_minute_at(&self, second: u64) -> u64 {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .filter(|v| second.saturating_sub(v >> 32) < BUCKETS as u64 && v >> 32 <= second)
            .map(|v| v & 0xffff_ffff)
            .sum()
    }
}

/// Exposes the window as `portal_bot_planhat_calls_last_minute` on every scrape.
#[derive(Debug)]
pub struct CallsCollector(pub std::sync::Arc<CallWindow>);

impl Collector for CallsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauge = ConstGauge::new(self.0.last_minute() as i64);
        let metric = encoder.encode_descriptor(
            "planhat_calls_last_minute",
            "Calls made to Planhat in the last 60 seconds (Planhat's soft limit is per minute)",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_last_sixty_seconds_only() {
        let w = CallWindow::new();
        for _ in 0..3 {
            w.record_at(0);
        }
        w.record_at(59);
        assert_eq!(w.last_minute_at(59), 4);
        assert_eq!(w.last_minute_at(60), 1, "second 0 has left the window");
        w.record_at(60); // reuses second 0's bucket
        assert_eq!(w.last_minute_at(60), 2);
        assert_eq!(w.last_minute_at(200), 0);
    }

    #[test]
    fn the_cluster_count_counts_while_it_is_fresh() {
        let w = CallWindow::new();
        w.record();
        w.record();
        assert_eq!(w.take_unreported(), 2);
        assert_eq!(w.take_unreported(), 0);
        assert_eq!(w.last_minute(), 2);
        w.set_cluster(150);
        assert_eq!(w.last_minute(), 150, "the cluster's minute");
        w.cluster_at.store(0, Ordering::Relaxed);
        let stale = w.second() > CLUSTER_FRESH;
        if stale {
            assert_eq!(w.last_minute(), 2);
        }
    }

    #[test]
    fn concurrent_calls_are_all_counted() {
        let w = std::sync::Arc::new(CallWindow::new());
        std::thread::scope(|s| {
            for _ in 0..4 {
                let w = w.clone();
                s.spawn(move || (0..10_000).for_each(|_| w.record()));
            }
        });
        assert_eq!(w.last_minute(), 40_000);
    }
}
