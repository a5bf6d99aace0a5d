//! A bounded cache of end users' names and companies, so a reply can say whom the asker is
//! about to become without asking Planhat every time.
//!
//! Every operation is O(1) however many end users the process has seen: the entries live in a
//! `quick_cache` (S3-FIFO, sharded), which evicts as it inserts; nothing ever scans the map,
//! on the request path or off it. When it is full, a new name pushes out one that was asked for
//! once and not since (the small FIFO's tail), or else the coldest of the rest; the only cost of
//! an evicted name is one more lookup if that end user is asked for again. Age is kept with each
//! entry: a name older than the TTL is not served (it is fetched again), a failed lookup is
//! retried after [`RETRY_AFTER`].
//!
//! Single flight: [`NameCache::claim`] marks an end user as being looked up, atomically (under
//! the cache shard's lock), so a burst of requests for one end user makes one lookup. A claim
//! that is itself evicted (the cache filled with other names while the lookup ran) lets a second
//! lookup start; that takes thousands of new end users within one lookup's time.

use std::time::{Duration, Instant};

use quick_cache::sync::{Cache, EntryAction, EntryResult};

use super::enduser::EndUserId;
use super::planhat::EndUserSummary;

/// How long a failed (or still running) lookup blocks the next one for the same end user.
pub const RETRY_AFTER: Duration = Duration::from_secs(30);

/// One end user's name and company if fetched, and when it was fetched or claimed.
#[derive(Clone)]
struct Entry {
    who: Option<EndUserSummary>,
    at: Instant,
}

impl Entry {
    /// True when the entry no longer stands: an old name, or a claim or failure past its retry.
    fn stale(&self, now: Instant, ttl: Duration) -> bool {
        let age = now.saturating_duration_since(self.at);
        match self.who {
            Some(_) => age >= ttl,
            None => age >= RETRY_AFTER,
        }
    }
}

/// End-user id → name and company. See the module documentation for what happens when full.
pub struct NameCache {
    entries: Cache<EndUserId, Entry>,
    ttl: Duration,
}

impl NameCache {
    /// At most about `cap` names (the cache's own estimate), each trusted for `ttl`.
    pub fn new(cap: usize, ttl: Duration) -> Self {
        NameCache {
            entries: Cache::new(cap.max(1)),
            ttl,
        }
    }

    /// A fresh cached name.
    pub fn get(&self, id: &EndUserId) -> Option<EndUserSummary> {
        let entry = self.entries.get(id)?;
        if entry.stale(Instant::now(), self.ttl) {
            return None;
        }
        entry.who
    }

    /// A cached name fetched less than `max_age` ago (and fresh): for answers that must be
    /// more recent than a name needs to be (ownership's end user → company).
    pub fn get_within(&self, id: &EndUserId, max_age: Duration) -> Option<EndUserSummary> {
        let entry = self.entries.get(id)?;
        let now = Instant::now();
        if entry.stale(now, self.ttl) || now.saturating_duration_since(entry.at) >= max_age {
            return None;
        }
        entry.who
    }

    /// True when the caller should fetch this name: nobody has it or is fetching it (a claim
    /// lasts [`RETRY_AFTER`]). A burst of requests for one end user makes one lookup.
    pub fn claim(&self, id: &EndUserId) -> bool {
        let now = Instant::now();
        let claimed = || Entry { who: None, at: now };
        let ttl = self.ttl;
        // A zero timeout: never wait for another thread's placeholder (it is held only for the
        // instant between its claim and its insert below; that thread is the one fetching).
        match self.entries.entry(id, Some(Duration::ZERO), |_, entry| {
            if entry.stale(now, ttl) {
                *entry = claimed();
                EntryAction::Retain(true)
            } else {
                EntryAction::Retain(false)
            }
        }) {
            EntryResult::Retained(claimed) => claimed,
            EntryResult::Vacant(guard) => {
                let _ = guard.insert(claimed());
                true
            }
            EntryResult::Timeout | EntryResult::Removed(..) | EntryResult::Replaced(..) => false,
        }
    }

    /// Remembers a fetched name (or, with `None`, that the lookup failed: retried after
    /// [`RETRY_AFTER`]).
    pub fn put(&self, id: EndUserId, who: Option<EndUserSummary>) {
        self.entries.insert(
            id,
            Entry {
                who,
                at: Instant::now(),
            },
        );
    }

    /// Names held now (at most about the capacity).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no name is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::portal::id_of;

    fn jane() -> Option<EndUserSummary> {
        Some(EndUserSummary {
            id: "e1".into(),
            name: Some("Jane".into()),
            company: None,
            company_id: None,
            email: None,
        })
    }

    #[test]
    fn one_lookup_at_a_time_then_cached() {
        let cache = NameCache::new(10, Duration::from_secs(60));
        let id = id_of("e1").unwrap();
        assert!(cache.claim(&id));
        assert!(!cache.claim(&id), "already being fetched");
        assert!(cache.get(&id).is_none());
        cache.put(id.clone(), jane());
        assert_eq!(cache.get(&id).unwrap().name.as_deref(), Some("Jane"));
        assert!(!cache.claim(&id), "fresh");
    }

    #[test]
    fn an_old_name_is_not_served_and_is_fetched_again() {
        let cache = NameCache::new(10, Duration::from_millis(30));
        let id = id_of("e1").unwrap();
        assert!(cache.claim(&id));
        cache.put(id.clone(), jane());
        assert!(cache.get(&id).is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(cache.get(&id).is_none(), "older than the TTL");
        assert!(cache.claim(&id), "stale: fetch again");
        assert!(!cache.claim(&id), "and only once");
    }

    #[test]
    fn concurrent_claims_for_one_end_user_make_one_lookup() {
        let cache = std::sync::Arc::new(NameCache::new(1000, Duration::from_secs(60)));
        let id = id_of("e1").unwrap();
        let winners: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let (cache, id) = (cache.clone(), id.clone());
                    s.spawn(move || (0..1000).filter(|_| cache.claim(&id)).count())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(winners, 1);
    }

    #[test]
    fn full_means_evicting_not_growing() {
        let cache = NameCache::new(1000, Duration::from_secs(60));
        for i in 0..20_000 {
            let id = id_of(&format!("e{i}")).unwrap();
            assert!(cache.claim(&id), "a new end user is always claimable");
            cache.put(id, jane());
        }
        assert!(cache.len() <= 1100, "{}", cache.len());
        let last = id_of("e19999").unwrap();
        assert!(cache.get(&last).is_some(), "the newest name is kept");
    }
}
