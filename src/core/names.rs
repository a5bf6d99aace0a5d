//! A small cache of end users' names and companies, so the reply can say whom the asker is
//! about to become without asking Planhat every time. Bounded in size and age.

use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::enduser::EndUserId;
use super::planhat::EndUserSummary;

/// End-user id → (name and company, when fetched).
pub struct NameCache {
    entries: DashMap<EndUserId, (EndUserSummary, Instant)>,
    cap: usize,
    ttl: Duration,
}

impl NameCache {
    /// At most `cap` names, each trusted for `ttl`.
    pub fn new(cap: usize, ttl: Duration) -> Self {
        NameCache {
            entries: DashMap::new(),
            cap,
            ttl,
        }
    }

    /// A fresh cached name.
    pub fn get(&self, id: &EndUserId) -> Option<EndUserSummary> {
        self.entries
            .get(id)
            .filter(|e| e.1.elapsed() < self.ttl)
            .map(|e| e.0.clone())
    }

    /// Remembers a name; when full of fresh names, it is simply not remembered.
    pub fn put(&self, id: EndUserId, who: EndUserSummary) {
        if self.entries.len() >= self.cap {
            self.sweep();
            if self.entries.len() >= self.cap {
                return;
            }
        }
        self.entries.insert(id, (who, Instant::now()));
    }

    /// Drops names older than the TTL.
    pub fn sweep(&self) {
        let ttl = self.ttl;
        self.entries.retain(|_, e| e.1.elapsed() < ttl);
    }
}
