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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quick_cache::sync::{Cache, EntryAction, EntryResult};
use quick_cache::Weighter;

use super::enduser::EndUserId;
use super::held::{Held, Holds};
use super::planhat::EndUserSummary;

/// How long a failed (or still running) lookup blocks the next one for the same end user.
pub const RETRY_AFTER: Duration = Duration::from_secs(30);

/// What a cached name is assumed to weigh when sizing the cache from a count of names: the
/// measured mean of [`Entry::bytes`] for a sandbox end user (id, name, email; company shared)
/// is about 145 bytes (`cargo bench --bench load -- --drive`), rounded up for longer real names.
pub const NAME_BYTES: u64 = 256;

/// A company's id and name, held once however many of its end users are cached.
struct Company {
    id: Option<Box<str>>,
    name: Option<Box<str>>,
}

/// One end user's name as the cache keeps it: boxed strings (no spare capacity), the id not
/// repeated (it is the key), the company shared ([`Companies`]).
struct Known {
    name: Option<Box<str>>,
    email: Option<Box<str>>,
    company: Option<Arc<Company>>,
}

/// One end user's name and company if fetched, and when it was fetched or claimed.
#[derive(Clone)]
struct Entry {
    who: Option<Arc<Known>>,
    at: Instant,
}

fn boxed(s: Option<String>) -> Option<Box<str>> {
    s.map(String::into_boxed_str)
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

    fn summary(&self, id: &EndUserId) -> Option<EndUserSummary> {
        let who = self.who.as_ref()?;
        let company = who.company.as_deref();
        Some(EndUserSummary {
            id: id.as_str().to_string(),
            name: who.name.as_deref().map(str::to_string),
            company: company.and_then(|c| c.name.as_deref()).map(str::to_string),
            company_id: company.and_then(|c| c.id.as_deref()).map(str::to_string),
            email: who.email.as_deref().map(str::to_string),
        })
    }

    /// Bytes this entry holds, its key's included: the slot (key, entry, the cache's own
    /// bookkeeping) and the heap blocks of its strings. A shared company is not counted here.
    fn bytes(&self, id: &EndUserId) -> u64 {
        const SLOT: usize = std::mem::size_of::<(EndUserId, Entry)>() + 16;
        let text = |s: &Option<Box<str>>| s.as_ref().map_or(0, |s| s.len());
        let heap = id.as_str().len()
            + self.who.as_ref().map_or(0, |w| {
                std::mem::size_of::<Known>() + 16 + text(&w.name) + text(&w.email)
            });
        (SLOT + heap) as u64
    }
}

/// Weighs entries in bytes ([`Entry::bytes`]), so the cache is bounded by memory, not count.
#[derive(Clone)]
struct ByBytes;

impl Weighter<EndUserId, Entry> for ByBytes {
    fn weight(&self, key: &EndUserId, entry: &Entry) -> u64 {
        entry.bytes(key)
    }
}

/// Companies by id, so that a company's name is held once for all its cached end users. Itself
/// bounded: an evicted company is only made again (its end users keep theirs).
struct Companies(Cache<Box<str>, Arc<Company>>);

impl Companies {
    fn intern(&self, id: Option<String>, name: Option<String>) -> Option<Arc<Company>> {
        if id.is_none() && name.is_none() {
            return None;
        }
        let key: Box<str> = id.as_deref().unwrap_or_default().into();
        if let Some(c) = self.0.get(&key) {
            if c.name.as_deref() == name.as_deref() {
                return Some(c);
            }
        }
        let made = Arc::new(Company {
            id: boxed(id),
            name: boxed(name),
        });
        if !key.is_empty() {
            self.0.insert(key, made.clone());
        }
        Some(made)
    }
}

/// End-user id → name and company. See the module documentation for what happens when full.
pub struct NameCache {
    entries: Cache<EndUserId, Entry, ByBytes>,
    companies: Companies,
    ttl: Duration,
    /// Names served from the cache, and lookups claimed (each a Planhat call).
    hits: AtomicU64,
    misses: AtomicU64,
}

impl NameCache {
    /// At most about `bytes` of names ([`Entry::bytes`]), each trusted for `ttl`.
    pub fn new(bytes: u64, ttl: Duration) -> Self {
        let bytes = bytes.max(NAME_BYTES);
        NameCache {
            entries: Cache::with_weighter((bytes / NAME_BYTES) as usize, bytes, ByBytes),
            companies: Companies(Cache::new(((bytes / NAME_BYTES) as usize / 8).max(16))),
            ttl,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The cache worth keeping when Planhat's budget lets `per_minute` name lookups through
    /// and a name is trusted for `ttl`: every name that can have been fetched within one TTL,
    /// at [`NAME_BYTES`] each, and never more than `max_bytes`. A bigger cache would hold only
    /// names too old to serve; a smaller one would fetch again names it could have kept.
    pub fn sized_for(per_minute: u64, ttl: Duration, max_bytes: u64) -> Self {
        let names = per_minute.saturating_mul(ttl.as_secs().div_ceil(60));
        NameCache::new(names.saturating_mul(NAME_BYTES).min(max_bytes), ttl)
    }

    /// A fresh cached name.
    pub fn get(&self, id: &EndUserId) -> Option<EndUserSummary> {
        let entry = self.entries.get(id)?;
        if entry.stale(Instant::now(), self.ttl) {
            return None;
        }
        let who = entry.summary(id);
        if who.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        who
    }

    /// A cached name fetched less than `max_age` ago (and fresh): for answers that must be
    /// more recent than a name needs to be (ownership's end user → company).
    pub fn get_within(&self, id: &EndUserId, max_age: Duration) -> Option<EndUserSummary> {
        let entry = self.entries.get(id)?;
        let now = Instant::now();
        if entry.stale(now, self.ttl) || now.saturating_duration_since(entry.at) >= max_age {
            return None;
        }
        entry.summary(id)
    }

    /// True when the caller should fetch this name: nobody has it or is fetching it (a claim
    /// lasts [`RETRY_AFTER`]). A burst of requests for one end user makes one lookup.
    pub fn claim(&self, id: &EndUserId) -> bool {
        let now = Instant::now();
        let claimed = || Entry { who: None, at: now };
        let ttl = self.ttl;
        // A zero timeout: never wait for another thread's placeholder (it is held only for the
        // instant between its claim and its insert below; that thread is the one fetching).
        let won = match self.entries.entry(id, Some(Duration::ZERO), |_, entry| {
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
        };
        if won {
            self.misses.fetch_add(1, Ordering::Relaxed);
        }
        won
    }

    /// Remembers a fetched name (or, with `None`, that the lookup failed: retried after
    /// [`RETRY_AFTER`]).
    pub fn put(&self, id: EndUserId, who: Option<EndUserSummary>) {
        let who = who.map(|w| {
            Arc::new(Known {
                name: boxed(w.name),
                email: boxed(w.email),
                company: self.companies.intern(w.company_id, w.company),
            })
        });
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

impl Holds for NameCache {
    fn held(&self, out: &mut Vec<Held>) {
        out.push(Held {
            holder: "names",
            entries: self.entries.len(),
            bytes: self.entries.weight() as usize,
            capacity: self.entries.capacity() as usize,
        });
        // A company: its slot in the interner, its two strings.
        const COMPANY: usize = std::mem::size_of::<(Box<str>, Arc<Company>)>() + 16 + 64;
        let companies = self.companies.0.len();
        out.push(Held {
            holder: "names_companies",
            entries: companies,
            bytes: companies * COMPANY,
            capacity: self.companies.0.capacity() as usize * COMPANY,
        });
    }

    fn counted(&self, out: &mut Vec<(&'static str, &'static str, u64)>) {
        out.push(("names", "hit", self.hits.load(Ordering::Relaxed)));
        out.push(("names", "miss", self.misses.load(Ordering::Relaxed)));
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
        let cache = NameCache::new(10 * NAME_BYTES, Duration::from_secs(60));
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
        let cache = NameCache::new(10 * NAME_BYTES, Duration::from_millis(30));
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
        let cache = std::sync::Arc::new(NameCache::new(1000 * NAME_BYTES, Duration::from_secs(60)));
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
        let cache = NameCache::new(1000 * NAME_BYTES, Duration::from_secs(60));
        for i in 0..20_000 {
            let id = id_of(&format!("e{i}")).unwrap();
            assert!(cache.claim(&id), "a new end user is always claimable");
            cache.put(id, jane());
        }
        assert!(
            cache.entries.weight() <= cache.entries.capacity(),
            "bounded by bytes: {} of {}",
            cache.entries.weight(),
            cache.entries.capacity()
        );
        assert!(cache.len() > 500, "and full: {}", cache.len());
        let last = id_of("e19999").unwrap();
        assert!(cache.get(&last).is_some(), "the newest name is kept");
    }

    #[test]
    fn a_company_is_held_once_for_all_its_end_users() {
        let cache = NameCache::new(1000 * NAME_BYTES, Duration::from_secs(60));
        for i in 0..3 {
            cache.put(
                id_of(&format!("e{i}")).unwrap(),
                Some(EndUserSummary {
                    id: format!("e{i}"),
                    name: Some(format!("Person {i}")),
                    company: Some("Acme".into()),
                    company_id: Some("c1".into()),
                    email: None,
                }),
            );
        }
        let company = |i: usize| {
            let entry = cache
                .entries
                .get(&id_of(&format!("e{i}")).unwrap())
                .unwrap();
            entry.who.unwrap().company.clone().unwrap()
        };
        assert!(Arc::ptr_eq(&company(0), &company(2)));
        let back = cache.get(&id_of("e1").unwrap()).unwrap();
        assert_eq!(
            (
                back.id.as_str(),
                back.name.as_deref(),
                back.company.as_deref(),
                back.company_id.as_deref()
            ),
            ("e1", Some("Person 1"), Some("Acme"), Some("c1"))
        );
    }
}
