//! Readiness: whether this replica should be sent traffic (`GET /readyz`), as opposed to
//! whether it runs at all (`/healthz`).
//!
//! Each part that needs an outside connection before it can answer (Redis when configured,
//! Slack's Socket Mode, Discord's gateway) registers a named check at start-up and keeps its
//! flag up to date; the replica is ready when every flag is up and it is not shutting down.
//! A load balancer or Kubernetes then sends requests only to replicas that can answer them,
//! and stops sending them to one that is draining during a rolling deploy.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The named checks of one process.
#[derive(Default)]
pub struct Readiness {
    checks: Mutex<Vec<(&'static str, Arc<AtomicBool>)>>,
}

impl Readiness {
    /// Registers a check named `name`, not yet up; the caller keeps the flag current.
    pub fn check(&self, name: &'static str) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        self.checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name, flag.clone()));
        flag
    }

    /// Every check, with whether it is up.
    pub fn report(&self) -> Vec<(&'static str, bool)> {
        self.checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(name, flag)| (*name, flag.load(Ordering::Relaxed)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_report_their_flags() {
        let r = Readiness::default();
        let redis = r.check("redis");
        assert_eq!(r.report(), vec![("redis", false)]);
        redis.store(true, Ordering::Relaxed);
        assert_eq!(r.report(), vec![("redis", true)]);
    }
}
