//! Shared state kept in this process: the default, right for one replica (and the fallback of
//! the Redis store while Redis can't be reached).
//!
//! Every structure is bounded and evicts in O(1) amortised, in the manner of mini-redis's
//! `db.rs`: entries sit in a map and, beside it, in the order they expire; clean-up pops from
//! the front of that order and stops at the first live entry, so nothing on the request path
//! ever scans a map. What each does when full is said where it is.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;

use crate::core::held::{table_bytes, Held, Holds};
use crate::core::onetime::{now_ms, GoError};
use crate::core::ratelimit::RateLimiter;
use crate::core::state::{
    Admission, Delivery, Due, GoRecord, SharedState, Sighting, StateError, MAX_SIGHTINGS,
};

/// Delivery ids remembered at once; when full, the oldest is forgotten first (a redelivery
/// that old has long been answered). Each is held as a 64-bit keyed digest, not as its text,
/// with its deadline in milliseconds ([`Expiring`]): about 40 bytes an entry with the tables'
/// spare room and no allocation per request, so a full memory is about 4 MB.
const MAX_DELIVERIES: usize = 100_000;
/// `/go/` ids held at once; when full of live ids, no new one is issued and the asker gets a
/// link minted directly instead.
const MAX_GO: usize = 100_000;
/// Scheduled jobs held at once; when full, a new job is refused (the caller logs it).
const MAX_JOBS: usize = 10_000;
/// Records (approval requests, decisions, grants) held at once; when full of live ones, a new
/// one is refused (the asker is told to try again).
const MAX_RECORDS: usize = 20_000;

/// Keys with a time after which they are forgotten, in insertion order beside the map.
///
/// Times are kept as milliseconds since the structure began (rounded up: an entry is forgotten
/// at most a millisecond late), 8 bytes where an `Instant` takes 16: delivery ids, the largest
/// map at load, then take 16 bytes an entry in each table instead of 24 (issue 23).
struct Expiring<K, V> {
    map: HashMap<K, (u64, V)>,
    /// (forget-at, key) in insertion order. A key inserted again leaves a stale pair behind;
    /// popping it removes nothing, because the map's forget-at no longer matches.
    order: VecDeque<(u64, K)>,
    epoch: Instant,
    cap: usize,
}

impl<K: Hash + Eq + Clone, V> Expiring<K, V> {
    fn new(cap: usize) -> Self {
        Expiring {
            map: HashMap::new(),
            order: VecDeque::new(),
            epoch: Instant::now(),
            cap,
        }
    }

    /// `t` in milliseconds since the epoch, rounded up or down.
    fn tick(&self, t: Instant, up: bool) -> u64 {
        let d = t.saturating_duration_since(self.epoch);
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        ms.saturating_add(u64::from(up && !d.subsec_nanos().is_multiple_of(1_000_000)))
    }

    /// Forgets entries whose time has passed, from the front; stops at the first live one.
    fn purge(&mut self, now: Instant) {
        let now = self.tick(now, false);
        while let Some((at, _)) = self.order.front() {
            if *at > now {
                break;
            }
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((at, key)) = self.order.pop_front() {
            if self.map.get(&key).is_some_and(|(t, _)| *t == at) {
                self.map.remove(&key);
            }
        }
    }

    fn live(&self, key: &K, now: Instant) -> Option<&V> {
        let now = self.tick(now, false);
        self.map
            .get(key)
            .filter(|(at, _)| *at > now)
            .map(|(_, v)| v)
    }

    /// [`Self::live`], to change.
    fn live_mut<Q>(&mut self, key: &Q, now: Instant) -> Option<&mut V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let now = self.tick(now, false);
        self.map
            .get_mut(key)
            .filter(|(at, _)| *at > now)
            .map(|(_, v)| v)
    }

    fn insert(&mut self, key: K, forget_at: Instant, value: V) {
        let at = self.tick(forget_at, true);
        self.order.push_back((at, key.clone()));
        self.map.insert(key, (at, value));
    }

    fn full(&self) -> bool {
        self.map.len() >= self.cap
    }

    /// Entries and bytes: the map's and the order's tables as allocated, plus `heap(k, v)`
    /// for what an entry points to.
    fn held(&self, holder: &'static str, heap: impl Fn(&K, &V) -> usize) -> Held {
        let slot = std::mem::size_of::<(K, (u64, V))>();
        let order = std::mem::size_of::<(u64, K)>();
        // Sampled (the first 64 entries, scaled), so a scrape never walks a full map.
        let sample: Vec<usize> = self
            .map
            .iter()
            .take(64)
            .map(|(k, (_, v))| heap(k, v))
            .collect();
        let heap = match sample.len() {
            0 => 0,
            n => sample.iter().sum::<usize>() * self.map.len() / n,
        };
        Held {
            holder,
            entries: self.map.len(),
            bytes: table_bytes(self.map.capacity(), slot) + self.order.capacity() * order + heap,
            capacity: table_bytes(self.cap, slot) + self.cap.next_power_of_two() * order,
        }
    }
}

struct GoEntry {
    record: GoRecord,
    expires: Instant,
    used: bool,
}

impl GoEntry {
    /// Notes a browser's first request while the id is not armed (see [`GoRecord`]).
    fn saw(&mut self, seen: Sighting, arm_window: Duration) {
        let r = &mut self.record;
        let armed = r
            .clicked_ms
            .is_some_and(|c| now_ms() <= c.saturating_add(arm_window.as_millis() as u64));
        if armed || r.sightings.iter().any(|s| s.client == seen.client) {
            return;
        }
        if r.sightings.len() >= MAX_SIGHTINGS {
            r.crowded = true;
        } else {
            r.sightings.push(seen);
        }
    }
}

/// Jobs by due time (ties broken by a sequence number) and by key.
#[derive(Default)]
struct Jobs {
    by_time: BTreeMap<(SystemTime, u64), String>,
    by_key: HashMap<String, (SystemTime, u64, String)>,
    seq: u64,
}

/// The in-process store.
pub struct MemoryState {
    /// Delivery ids by digest (see [`MAX_DELIVERIES`]). The digest is keyed at random per
    /// process, so no one can choose two ids that collide; by chance, two of 100,000 live ids
    /// share a digest about once in 10^9 fills.
    deliveries: Mutex<Expiring<u64, ()>>,
    digest: RandomState,
    limiter: RateLimiter,
    /// `/go/` records by their ids' keyed digests (never the ids).
    go: Mutex<Expiring<String, GoEntry>>,
    jobs: Mutex<Jobs>,
    /// Records by key, each with its own lifetime.
    records: Mutex<Expiring<String, String>>,
}

impl MemoryState {
    /// A store whose rate limit allows `per_minute` requests per asker.
    pub fn new(per_minute: u32) -> Self {
        MemoryState {
            deliveries: Mutex::new(Expiring::new(MAX_DELIVERIES)),
            digest: RandomState::new(),
            limiter: RateLimiter::new(per_minute),
            go: Mutex::new(Expiring::new(MAX_GO)),
            jobs: Mutex::new(Jobs::default()),
            records: Mutex::new(Expiring::new(MAX_RECORDS)),
        }
    }

    /// Stores a record (`once`: only where none is live); true when stored. Lifetimes differ
    /// between kinds of record, so the front of the order may outlive what is behind it: a
    /// record past its time is never answered ([`Expiring::live`]) and goes when the front
    /// reaches it, and the cap bounds what waits.
    pub(super) fn put_record_now(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
        once: bool,
    ) -> Result<bool, StateError> {
        let now = Instant::now();
        let mut records = lock(&self.records);
        records.purge(now);
        let key = key.to_string();
        if once && records.live(&key, now).is_some() {
            return Ok(false);
        }
        if records.full() && records.live(&key, now).is_none() {
            return Err(StateError::Full);
        }
        records.insert(key, now + ttl, value.to_string());
        Ok(true)
    }

    /// A live record.
    pub(super) fn get_record_now(&self, key: &str) -> Option<String> {
        let now = Instant::now();
        lock(&self.records).live(&key.to_string(), now).cloned()
    }

    /// Synchronous forms (also the Redis store's fallback paths).
    pub(super) fn claim_sync(&self, id: &str, ttl: Duration) -> bool {
        let key = self.digest.hash_one(id);
        let now = Instant::now();
        let mut seen = lock(&self.deliveries);
        seen.purge(now);
        if seen.live(&key, now).is_some() {
            return false;
        }
        if seen.full() {
            seen.pop_front();
        }
        seen.insert(key, now + ttl, ());
        true
    }

    pub(super) fn admit_sync(&self, key: &str, count: bool) -> Admission {
        if !count {
            return Admission::default();
        }
        Admission {
            retry_after: self.limiter.check(key, Instant::now()).err(),
            planhat_paused: None,
        }
    }

    fn issue_now(&self, name: &str, sealed: &str, lifetime: Duration) -> Result<(), StateError> {
        let now = Instant::now();
        let mut go = lock(&self.go);
        go.purge(now);
        if go.full() {
            return Err(StateError::Full);
        }
        // Kept for twice its lifetime, so "used" and "expired" stay precise until then.
        let entry = GoEntry {
            record: GoRecord {
                sealed: sealed.to_string(),
                clicked_ms: None,
                sightings: Vec::new(),
                crowded: false,
            },
            expires: now + lifetime,
            used: false,
        };
        go.insert(name.to_string(), now + lifetime * 2, entry);
        Ok(())
    }

    fn go_entry<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut GoEntry) -> Result<T, GoError>,
    ) -> Result<T, GoError> {
        let now = Instant::now();
        let mut go = lock(&self.go);
        let Some(entry) = go.live_mut(name, now) else {
            return Err(GoError::Unknown);
        };
        if entry.used {
            return Err(GoError::Used);
        }
        if entry.expires <= now {
            return Err(GoError::Expired);
        }
        f(entry)
    }

    pub(super) fn schedule_sync(
        &self,
        key: &str,
        due: SystemTime,
        payload: &str,
    ) -> Result<(), StateError> {
        let mut jobs = lock(&self.jobs);
        if let Some((t, s, _)) = jobs.by_key.remove(key) {
            jobs.by_time.remove(&(t, s));
        }
        if jobs.by_key.len() >= MAX_JOBS {
            return Err(StateError::Full);
        }
        jobs.seq += 1;
        let seq = jobs.seq;
        jobs.by_time.insert((due, seq), key.to_string());
        jobs.by_key
            .insert(key.to_string(), (due, seq, payload.to_string()));
        Ok(())
    }
    pub(super) fn cancel_sync(&self, key: &str) {
        let mut jobs = lock(&self.jobs);
        if let Some((t, s, _)) = jobs.by_key.remove(key) {
            jobs.by_time.remove(&(t, s));
        }
    }
    pub(super) fn take_due_sync(&self, now: SystemTime, max: usize) -> Vec<Due> {
        let mut jobs = lock(&self.jobs);
        let mut due = Vec::new();
        while due.len() < max {
            let Some(entry) = jobs.by_time.first_entry() else {
                break;
            };
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            if let Some((_, _, payload)) = jobs.by_key.remove(&key) {
                due.push(Due { key, payload });
            }
        }
        due
    }
    pub(super) fn next_due_sync(&self) -> Option<SystemTime> {
        lock(&self.jobs).by_time.keys().next().map(|(t, _)| *t)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind: keep using it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Holds for MemoryState {
    fn held(&self, out: &mut Vec<Held>) {
        out.push(lock(&self.deliveries).held("deliveries", |_, _| 0));
        // A `/go/` record: its digest key and its sightings (each a client and a user agent).
        out.push(lock(&self.go).held("go_ids", |k, e| {
            k.len() + e.record.sightings.capacity() * 64
        }));
        out.push(lock(&self.records).held("records", |k, v| k.len() + v.len()));
        let jobs = lock(&self.jobs);
        let job = std::mem::size_of::<((SystemTime, u64), String)>()
            + std::mem::size_of::<(String, (SystemTime, u64, String))>()
            + 2 * 48;
        out.push(Held {
            holder: "jobs",
            entries: jobs.by_key.len(),
            bytes: jobs.by_key.len() * job,
            capacity: MAX_JOBS * job,
        });
        drop(jobs);
        Holds::held(&self.limiter, out);
    }
}

#[async_trait]
impl SharedState for MemoryState {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn claim_delivery(&self, id: &str, ttl: Duration) -> Delivery {
        if self.claim_sync(id, ttl) {
            Delivery::First
        } else {
            Delivery::Duplicate
        }
    }

    async fn admit(&self, key: &str, _per_minute: u32, count: bool) -> Admission {
        // This process's own Planhat client holds its pause: nothing more to share.
        self.admit_sync(key, count)
    }

    async fn pause_planhat(&self, _wait: Duration) {}

    async fn issue_go(
        &self,
        name: &str,
        sealed: &str,
        lifetime: Duration,
    ) -> Result<(), StateError> {
        self.issue_now(name, sealed, lifetime)
    }

    async fn put_record(&self, key: &str, value: &str, ttl: Duration) -> Result<(), StateError> {
        self.put_record_now(key, value, ttl, false).map(|_| ())
    }

    async fn put_record_once(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, StateError> {
        self.put_record_now(key, value, ttl, true)
    }

    async fn get_record(&self, key: &str) -> Result<Option<String>, StateError> {
        Ok(self.get_record_now(key))
    }

    async fn look_go(
        &self,
        name: &str,
        seen: Option<Sighting>,
        arm_window: Duration,
    ) -> Result<GoRecord, GoError> {
        self.go_entry(name, |e| {
            if let Some(seen) = seen {
                e.saw(seen, arm_window);
            }
            Ok(e.record.clone())
        })
    }

    async fn take_go(&self, name: &str) -> Result<GoRecord, GoError> {
        self.go_entry(name, |e| {
            e.used = true;
            Ok(e.record.clone())
        })
    }

    async fn arm_go(&self, name: &str, clicked_ms: u64) -> bool {
        self.go_entry(name, |e| {
            e.record.clicked_ms = Some(clicked_ms);
            Ok(())
        })
        .is_ok()
    }

    async fn release_go(&self, name: &str) {
        if let Some((_, e)) = lock(&self.go).map.get_mut(name) {
            e.used = false;
        }
    }

    async fn schedule(&self, key: &str, due: SystemTime, payload: &str) -> Result<(), StateError> {
        self.schedule_sync(key, due, payload)
    }

    async fn cancel(&self, key: &str) {
        self.cancel_sync(key)
    }

    async fn take_due(&self, now: SystemTime, max: usize) -> Vec<Due> {
        self.take_due_sync(now, max)
    }

    async fn next_due(&self) -> Option<SystemTime> {
        self.next_due_sync()
    }

    fn housekeep(&self) {
        let now = Instant::now();
        self.limiter.sweep(now);
        lock(&self.deliveries).purge(now);
        lock(&self.go).purge(now);
    }

    async fn ping(&self) -> Result<(), StateError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(client: u64) -> Option<Sighting> {
        Some(Sighting {
            client,
            began_ms: now_ms(),
        })
    }

    #[tokio::test]
    async fn go_records_are_single_use_precise_and_bounded() {
        let s = MemoryState::new(10);
        let life = Duration::from_secs(60);
        let window = Duration::from_secs(60);
        s.issue_go("a", "sealed-a", life).await.unwrap();
        assert_eq!(
            s.look_go("a", None, window).await.unwrap().sealed,
            "sealed-a"
        );
        assert_eq!(s.take_go("a").await.unwrap().sealed, "sealed-a");
        assert_eq!(s.take_go("a").await.unwrap_err(), GoError::Used);
        assert_eq!(
            s.look_go("a", None, window).await.unwrap_err(),
            GoError::Used
        );
        s.release_go("a").await;
        assert!(s.take_go("a").await.is_ok(), "released ids work again");
        assert_eq!(s.take_go("nope").await.unwrap_err(), GoError::Unknown);
        s.issue_go("b", "sealed-b", Duration::from_millis(50))
            .await
            .unwrap();
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(s.take_go("b").await.unwrap_err(), GoError::Expired);
    }

    #[tokio::test]
    async fn sightings_are_noted_until_armed_once_per_browser_and_bounded() {
        let s = MemoryState::new(10);
        let window = Duration::from_secs(60);
        s.issue_go("a", "x", Duration::from_secs(60)).await.unwrap();
        s.look_go("a", seen(1), window).await.unwrap();
        s.look_go("a", seen(1), window).await.unwrap();
        s.look_go("a", seen(2), window).await.unwrap();
        let r = s.look_go("a", None, window).await.unwrap();
        assert_eq!(r.sightings.len(), 2, "the first request of each browser");
        assert!(s.arm_go("a", now_ms()).await);
        s.look_go("a", seen(3), window).await.unwrap();
        let r = s.look_go("a", None, window).await.unwrap();
        assert_eq!(r.sightings.len(), 2, "none noted while armed");
        assert!(r.clicked_ms.is_some());

        s.issue_go("b", "x", Duration::from_secs(60)).await.unwrap();
        for client in 0..(MAX_SIGHTINGS as u64 + 5) {
            s.look_go("b", seen(client), window).await.unwrap();
        }
        let r = s.look_go("b", None, window).await.unwrap();
        assert_eq!(r.sightings.len(), MAX_SIGHTINGS);
        assert!(r.crowded);
    }

    #[tokio::test]
    async fn deliveries_are_claimed_once_and_memory_stays_bounded() {
        let s = MemoryState::new(10);
        let ttl = Duration::from_secs(60);
        assert_eq!(s.claim_delivery("x", ttl).await, Delivery::First);
        assert_eq!(s.claim_delivery("x", ttl).await, Delivery::Duplicate);
        for i in 0..(MAX_DELIVERIES + 10) {
            s.claim_delivery(&i.to_string(), ttl).await;
        }
        let seen = lock(&s.deliveries);
        assert!(seen.map.len() <= MAX_DELIVERIES);
        assert!(seen.order.len() <= MAX_DELIVERIES + 1);
    }

    #[tokio::test]
    async fn jobs_come_due_in_order_once_and_can_be_replaced_or_cancelled() {
        let s = MemoryState::new(10);
        let t0 = SystemTime::now();
        s.schedule("a", t0 + Duration::from_secs(2), "A")
            .await
            .unwrap();
        s.schedule("b", t0 + Duration::from_secs(1), "B")
            .await
            .unwrap();
        s.schedule("c", t0 + Duration::from_secs(1), "C")
            .await
            .unwrap();
        s.cancel("c").await;
        s.schedule("a", t0 + Duration::from_secs(3), "A2")
            .await
            .unwrap();
        assert_eq!(s.next_due().await, Some(t0 + Duration::from_secs(1)));
        assert!(s.take_due(t0, 10).await.is_empty());
        let due = s.take_due(t0 + Duration::from_secs(5), 10).await;
        let got: Vec<_> = due.iter().map(|d| d.payload.as_str()).collect();
        assert_eq!(got, vec!["B", "A2"]);
        assert!(s.take_due(t0 + Duration::from_secs(5), 10).await.is_empty());
    }
}
