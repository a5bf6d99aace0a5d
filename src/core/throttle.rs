//! At most one log line per interval for events anyone on the internet can cause by the
//! thousand (unsigned requests, connections over a cap): each line says how many happened since
//! the last one, and the exact count lives in a metric.
//!
//! Written by hand: `tracing` has no rate limiting, and the crates that add it wrap the whole
//! subscriber; this is one atomic compare-and-swap on the refusal path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Lets one log line through per `every`, counting the occurrences in between.
pub struct LogThrottle {
    every_ms: u64,
    started: Instant,
    /// Milliseconds since `started` before which no line is due.
    next_ms: AtomicU64,
    /// Occurrences not yet reported in a line.
    pending: AtomicU64,
}

impl LogThrottle {
    /// A throttle letting a line through at once, then at most one per `every`.
    pub fn new(every: Duration) -> Self {
        LogThrottle {
            every_ms: every.as_millis() as u64,
            started: Instant::now(),
            next_ms: AtomicU64::new(0),
            pending: AtomicU64::new(0),
        }
    }

    /// Counts one occurrence. `Some(n)` when a line is due now: `n` occurrences (this one
    /// included) since the last line.
    pub fn hit(&self) -> Option<u64> {
        self.pending.fetch_add(1, Ordering::Relaxed);
        let now = self.started.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Ordering::Relaxed);
        if now < next {
            return None;
        }
        // Of the callers that find a line due, one wins and reports everything pending.
        self.next_ms
            .compare_exchange(
                next,
                now + self.every_ms,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .ok()?;
        Some(self.pending.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_then_silence_then_a_count() {
        let t = LogThrottle::new(Duration::from_millis(50));
        assert_eq!(t.hit(), Some(1));
        for _ in 0..1000 {
            assert_eq!(t.hit(), None);
        }
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(t.hit(), Some(1001));
        assert_eq!(t.hit(), None);
    }

    #[test]
    fn concurrent_hits_are_all_counted_once() {
        let t = std::sync::Arc::new(LogThrottle::new(Duration::from_secs(3600)));
        let reported: u64 = (0..4)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || (0..10_000).filter_map(|_| t.hit()).sum::<u64>())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        // One line got through; everything else is still pending for the next one.
        assert_eq!(reported + t.pending.load(Ordering::Relaxed), 40_000);
    }
}
