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

use super::asker::Asker;
use super::enduser::EndUserId;
use super::onetime::GoError;

/// What a `/go/` id stands for: who asked, for which end user.
#[derive(Debug, Clone)]
pub struct GoClaim {
    pub asker: Asker,
    pub end_user: EndUserId,
    /// True for Slack: the id mints only after its asker's own click on the button reached
    /// the bot ([`SharedState::arm_go`]), so a copied link opens for no one.
    pub needs_arming: bool,
}

/// What a look at a `/go/` id found (it is usable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoPeek {
    pub needs_arming: bool,
    /// Its asker's click arrived within the arming window.
    pub armed: bool,
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
pub trait SharedState: Send + Sync {
    /// `"memory"` or `"redis"`, for logs and `check`.
    fn kind(&self) -> &'static str;

    /// True the first time `id` is claimed within `ttl` across every replica: a redelivered
    /// request, or an interaction that reached two replicas, is answered by whoever claims it
    /// first. Fails open (true) when the store can't answer: a rare duplicate beats silence.
    async fn claim_delivery(&self, id: &str, ttl: Duration) -> bool;

    /// Takes one request from `key`'s rate limit of `per_minute` (when `count` is false, only
    /// reads the Planhat pause), and reports Planhat's shared pause.
    async fn admit(&self, key: &str, per_minute: u32, count: bool) -> Admission;

    /// Planhat said 429: pause every replica for `wait` (a longer pause already set stays).
    async fn pause_planhat(&self, wait: Duration);

    /// Stores a new `/go/` id for `lifetime`.
    async fn issue_go(
        &self,
        id: &str,
        claim: &GoClaim,
        lifetime: Duration,
    ) -> Result<(), StateError>;

    /// Uses `id` up, atomically (exactly one of two simultaneous takes on two replicas wins),
    /// and returns what it stands for. An id that needs arming and isn't armed is refused
    /// ([`GoError::NotArmed`]) and, like [`GoError::Unavailable`], left unused.
    async fn take_go(&self, id: &str) -> Result<GoClaim, GoError>;

    /// Whether `id` could be used, without using it.
    async fn peek_go(&self, id: &str) -> Result<GoPeek, GoError>;

    /// The Slack user `user_id` clicked the button of `id`: if that user is its asker, the id
    /// may mint for a browser within `window`. False when it is not theirs, or not usable.
    async fn arm_go(&self, id: &str, user_id: &str, window: Duration) -> bool;

    /// Makes a taken id usable again (its click failed for a passing reason).
    async fn release_go(&self, id: &str);

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

    /// Periodic clean-up off the request path (expired rate-limit buckets and the like).
    fn housekeep(&self) {}

    /// Whether the store answers (always true in memory). `/readyz` and `check` use it.
    async fn ping(&self) -> Result<(), StateError>;
}
