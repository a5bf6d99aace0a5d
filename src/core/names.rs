//! A small cache of end users' names and companies, so the reply can say whom the asker is
//! about to become without asking Planhat every time. Bounded in size and age.

use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::enduser::EndUserId;
use super::planhat::EndUserSummary;

/// End-user id → (name and company if fetched, when fetched or claimed).
pub struct NameCache {
    entries: DashMap<EndUserId, (Option<EndUserSummary>, Instant)>,
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
            .and_then(|e| e.0.clone())
    }

    /// True when the caller should fetch this name: nobody has it or is fetching it (a claim
    /// lasts 30 s). A burst of requests for one end user makes one lookup, not thousands.
    pub fn claim(&self, id: &EndUserId) -> bool {
        if self.entries.len() >= self.cap {
            self.sweep();
            if self.entries.len() >= self.cap {
                return false;
            }
        }
        match self.entries.entry(id.clone()) {
            dashmap::Entry::Occupied(mut e) => {
                let (who, at) = e.get();
                let stale = match who {
                    Some(_) => at.elapsed() >= self.ttl,
                    None => at.elapsed() >= Duration::from_secs(30),
                };
                if stale {
                    e.insert((None, Instant::now()));
                }
                stale
            }
            dashmap::Entry::Vacant(e) => {
                e.insert((None, Instant::now()));
                true
            }
        }
    }

    /// Remembers a fetched name (or, with `None`, that the lookup failed: retried after 30 s).
    pub fn put(&self, id: EndUserId, who: Option<EndUserSummary>) {
        self.entries.insert(id, (who, Instant::now()));
    }

    /// Drops names older than the TTL.
    pub fn sweep(&self) {
        let ttl = self.ttl;
        self.entries.retain(|_, e| e.1.elapsed() < ttl);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::portal::id_of;

    #[test]
    fn one_lookup_at_a_time_then_cached() {
        let cache = NameCache::new(10, Duration::from_secs(60));
        let id = id_of("e1").unwrap();
        assert!(cache.claim(&id));
        assert!(!cache.claim(&id), "already being fetched");
        assert!(cache.get(&id).is_none());
        cache.put(
            id.clone(),
            Some(EndUserSummary {
                id: "e1".into(),
                name: Some("Jane".into()),
                company: None,
                company_id: None,
            }),
        );
        assert_eq!(cache.get(&id).unwrap().name.as_deref(), Some("Jane"));
        assert!(!cache.claim(&id), "fresh");
    }
}
