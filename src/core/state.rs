//! State that replicas share: the one door through which the core reaches it.
//!
//! One process keeps this state in memory; a team service runs several replicas behind a load
//! balancer (or side by side in Socket Mode or gateway mode) and keeps it on Redis, so that a
//! `/go/` id issued by one replica works on another, a request delivered to two replicas is
//! answered once, a rate limit and Planhat's 429 pause hold for all, and a pending Discord
//! expiry edit survives a restart. The core only sees [`SharedState`]; which implementation it
//! gets is decided once, at start-up (`adapters::state::build`), and nowhere else.
//!
//! Every method is bounded in time and never fails the request: where the store can't answer,
//! the implementation falls back the way the operations below document (fail open for
//! dedupe, the process's own rate limit, no `/go/` link but a link minted directly, a
//! "try again" page that keeps a `/go/` id). The fallbacks are counted in `/metrics`.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::onetime::GoError;

/// What the store keeps for a `/go/` id, under the id's keyed digest (never the id): the sealed
/// claim, opaque to the store ([`super::onetime`] seals and opens it), and what happened to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoRecord {
    pub sealed: String,
    /// Slack's time (unix ms) of the latest click on its button by its asker, once the click
    /// reached the bot ([`SharedState::arm_go`]).
    pub clicked_ms: Option<u64>,
    /// Browsers that asked for it while it was not armed: the first request of each (at most
    /// [`MAX_SIGHTINGS`]).
    pub sightings: Vec<Sighting>,
    /// More browsers than that asked for it while it was not armed.
    pub crowded: bool,
}

/// A browser's request for a `/go/` id: a keyed digest of who it is and when it began (unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sighting {
    pub client: u64,
    pub began_ms: u64,
}

/// Browsers a `/go/` record remembers before it is armed; one more makes it `crowded`.
pub const MAX_SIGHTINGS: usize = 16;

/// What a delivery claim found ([`SharedState::claim_delivery`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Nobody answered this delivery before: answer it.
    First,
    /// Already claimed (a retry, a redelivered envelope, another replica): don't answer again.
    Duplicate,
    /// The shared store can't answer, and this process has not seen it: answer (silence is
    /// worse than a rare duplicate), but only where the platform routes the answer to the
    /// asker (Slack's `response_url`, Discord's edit), never inline to whoever sent it: during
    /// a store outage a replayed request is not recognised.
    Unchecked,
}

/// The store can't answer right now (unreachable, too slow, or full). The caller falls back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("the shared state store is unavailable: {0}")]
    Unavailable(String),
    #[error("the shared state store is full")]
    Full,
}

/// The answer of [`SharedState::admit`]: the rate limit and Planhat's shared pause, read in
/// one round trip.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Admission {
    /// Set: the asker is over their rate limit; the next request is allowed after this.
    pub retry_after: Option<Duration>,
    /// Set: some replica saw Planhat answer 429; nobody calls it before this has passed.
    pub planhat_paused: Option<Duration>,
}

/// A scheduled job whose time has come (see [`SharedState::schedule`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub key: String,
    /// Whatever the scheduler stored (the adapter's own encoding; may hold a platform token,
    /// so it is never logged).
    pub payload: String,
}

/// Shared state, in memory or on Redis. Implementations live in `adapters::state`.
#[async_trait]
/// [`Holds`](crate::core::held::Holds): what the store keeps in this process, for `/metrics`.
pub trait SharedState: crate::core::held::Holds {
    /// `"memory"` or `"redis"`, for logs and `check`.
    fn kind(&self) -> &'static str;

    /// Claims the delivery `id` for `ttl` across every replica: a redelivered request, or an
    /// interaction that reached two replicas, is answered by whoever claims it first. Every
    /// claim is also remembered by this process, so a store outage doesn't make it forget what
    /// it answered; when the store can't answer and this process hasn't seen `id`, the answer
    /// is [`Delivery::Unchecked`].
    async fn claim_delivery(&self, id: &str, ttl: Duration) -> Delivery;

    /// Takes one request from `key`'s rate limit of `per_minute` (when `count` is false, only
    /// reads the Planhat pause), and reports Planhat's shared pause.
    async fn admit(&self, key: &str, per_minute: u32, count: bool) -> Admission;

    /// Planhat said 429: pause every replica for `wait` (a longer pause already set stays).
    async fn pause_planhat(&self, wait: Duration);

    /// Stores a new `/go/` record under `name` (its id's digest) for `lifetime`.
    async fn issue_go(
        &self,
        name: &str,
        sealed: &str,
        lifetime: Duration,
    ) -> Result<(), StateError>;

    /// The record under `name` if it can still be used (not used, not expired), without using
    /// it. `seen`, when given, is noted among its sightings while it is not armed (no click
    /// within `arm_window` of now): the first request of each browser.
    async fn look_go(
        &self,
        name: &str,
        seen: Option<Sighting>,
        arm_window: Duration,
    ) -> Result<GoRecord, GoError>;

    /// Uses the record under `name` up, atomically (exactly one of two simultaneous takes on
    /// two replicas wins), and returns it. The caller decided beforehand that it may.
    async fn take_go(&self, name: &str) -> Result<GoRecord, GoError>;

    /// Its asker clicked its button in Slack at `clicked_ms` (Slack's time): noted, if the
    /// record is usable. The caller checked that the clicker is its asker.
    async fn arm_go(&self, name: &str, clicked_ms: u64) -> bool;

    /// Makes a taken record usable again (its click failed for a passing reason).
    async fn release_go(&self, name: &str);

    /// Schedules a job under `key` for `due` (a job already under `key` is replaced). Durable
    /// on Redis: a job survives the replica that scheduled it, and exactly one replica runs it.
    async fn schedule(&self, key: &str, due: SystemTime, payload: &str) -> Result<(), StateError>;

    /// Cancels the job under `key`, if any.
    async fn cancel(&self, key: &str);

    /// Removes and returns up to `max` jobs due at `now`; each is handed to exactly one caller.
    async fn take_due(&self, now: SystemTime, max: usize) -> Vec<Due>;

    /// When the next job is due, if the store can tell (a hint: the worker also wakes
    /// periodically, so jobs another replica scheduled are never missed).
    async fn next_due(&self) -> Option<SystemTime>;

    /// Stores `value` under `key` for `ttl`, replacing what was there (approval requests,
    /// decisions and grants: [`crate::core::approvals`] seals what it stores).
    async fn put_record(&self, key: &str, value: &str, ttl: Duration) -> Result<(), StateError>;

    /// Stores `value` under `key` for `ttl` only if nothing is there: true when this call
    /// stored it (of two replicas racing, exactly one gets true).
    async fn put_record_once(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, StateError>;

    /// The value under `key`, while its time lasts.
    async fn get_record(&self, key: &str) -> Result<Option<String>, StateError>;

    /// Adds `calls` (Planhat calls this replica made since its last report) to the cluster's
    /// count, and answers the cluster's calls in the last minute. `None`: there is no cluster
    /// (in memory) or the store can't answer; each replica then counts its own.
    async fn count_planhat_calls(&self, _calls: u64) -> Option<u64> {
        None
    }

    /// Periodic clean-up off the request path (expired rate-limit buckets and the like).
    fn housekeep(&self) {}

    /// Whether the store answers (always true in memory). `/readyz` and `check` use it.
    async fn ping(&self) -> Result<(), StateError>;
}
