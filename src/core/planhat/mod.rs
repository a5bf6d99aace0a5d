//! The Planhat API client: the only code that talks to Planhat.
//!
//! One `reqwest` client (rustls, pooled, kept warm) is shared by every request. Calls are
//! bounded (`max_in_flight`), time-limited, and paused for everyone at once when Planhat says
//! 429. Every call sent is counted in a one-minute window ([`budget`]), so optional calls can
//! give way before Planhat's per-minute budget runs out. Errors are typed so the chat adapters
//! can say one clear line, and their `Display` never contains a body, a URL with a token, or
//! the API token.

pub mod answer;
pub mod budget;
pub mod list;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, RETRY_AFTER};
use reqwest::StatusCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use answer::{CompanyOwners, EndUserSummary};
use budget::{CallWindow, CallsCollector};

use super::config::PlanhatConfig;
use super::enduser::EndUserId;
use super::metrics::Metrics;
use super::secret::Secret;
use super::state::SharedState;

/// What went wrong talking to Planhat. `Display` is for the operator's log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanhatError {
    #[error("Planhat has no such end user (404)")]
    NotFound,
    #[error(
        "Planhat rejected the API token (HTTP {0}): wrong token, or a token of another cluster"
    )]
    TokenRejected(u16),
    #[error("Planhat is rate limiting this token (429); pausing calls for {}s", .0.as_secs().max(1))]
    RateLimited(Duration),
    #[error("Planhat is unreachable: {0}")]
    Unreachable(String),
    #[error("Planhat did not answer within {}ms", .0.as_millis())]
    TooSlow(Duration),
    #[error("Planhat failed (HTTP {0})")]
    Failed(u16),
    #[error("Planhat answered something unusable: {0}")]
    Unusable(String),
}

impl PlanhatError {
    /// A short stable name for audit events and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PlanhatError::NotFound => "not_found",
            PlanhatError::TokenRejected(_) => "token_rejected",
            PlanhatError::RateLimited(_) => "upstream_rate_limited",
            PlanhatError::Unreachable(_) => "upstream_unreachable",
            PlanhatError::TooSlow(_) => "upstream_timeout",
            PlanhatError::Failed(_) => "upstream_failed",
            PlanhatError::Unusable(_) => "upstream_unusable",
        }
    }
}

/// The largest Planhat answer the bot reads (64 KiB, like the bodies it accepts itself). Its
/// answers are a boolean, a URL or a short list; anything bigger is not one of them.
pub const MAX_ANSWER: usize = 64 * 1024;

/// Users per page of `GET /users`. With only `_id` and `email` selected a user is at most about
/// 300 bytes (a 24-character id, an email of up to 254 characters, the JSON around them), so a
/// full page stays under [`MAX_ANSWER`].
pub const USERS_PAGE: usize = 200;
/// Pages read at most (200,000 users): an API that kept answering full pages can't keep the
/// refresh going forever.
const MAX_USER_PAGES: usize = 1000;

const _: () = assert!(USERS_PAGE * 300 + 2 <= MAX_ANSWER);

/// The Planhat calls the bot makes, by name (metrics label).
#[derive(Clone, Copy)]
enum Call {
    Access,
    Mint,
    Lookup,
    /// A page of a list, for the search index.
    Index,
    /// Notes on companies' timelines (`[planhat.notes]`).
    Notes,
}

impl Call {
    fn name(self) -> &'static str {
        match self {
            Call::Access => "access",
            Call::Mint => "mint",
            Call::Lookup => "lookup",
            Call::Index => "index",
            Call::Notes => "notes",
        }
    }
}

/// One Note on a company's timeline, as Planhat's `/conversations` takes it. Built by
/// `core::notes`, which never puts a URL in one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NoteBody {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(rename = "companyId")]
    pub company_id: String,
    pub subject: String,
    pub description: String,
    pub endusers: Vec<String>,
}

/// A shared handle to Planhat. Cheap to clone.
#[derive(Clone)]
pub struct Planhat {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// The API base, parsed once: each call's URL is this with its path set, so no call parses
    /// (and IDNA-maps) the host again.
    api_url: reqwest::Url,
    /// The base's own path without a trailing slash (`""`, or a proxy's prefix).
    api_path: String,
    redirect_prefix: String,
    timeout: Duration,
    permits: Arc<Semaphore>,
    /// Unix milliseconds until which every call is refused after a 429 (0: not paused).
    paused_until_ms: AtomicU64,
    /// Calls sent in the last minute, and the count below which optional calls may be made.
    calls: Arc<CallWindow>,
    optional_below: u64,
    started: Instant,
    metrics: Arc<Metrics>,
    /// Where a 429 is told, so every replica pauses (set once, at start-up).
    shared: std::sync::OnceLock<Arc<dyn SharedState>>,
}

impl Planhat {
    /// Builds the client. Fails only if the TLS backend cannot start.
    pub fn new(config: &PlanhatConfig, metrics: Arc<Metrics>) -> Result<Planhat, PlanhatError> {
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", config.token.expose()))
            .map_err(|_| {
                PlanhatError::Unusable("the API token has characters a header can't carry".into())
            })?;
        // Keeps the header out of any debug output of reqwest/hyper.
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, auth);
        // No client-wide timeout: `get` bounds each call as a whole (queueing, retry and body
        // included), and a second timer per call would only cost.
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(config.timeout.min(Duration::from_secs(3)))
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(config.max_in_flight)
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("portal-bot/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| PlanhatError::Unreachable(format!("cannot start the HTTP client: {e}")))?;
        let portal = config.portal_url.as_str().trim_end_matches('/');
        let calls = Arc::new(CallWindow::new());
        metrics.register_collector(Box::new(CallsCollector(calls.clone())));
        Ok(Planhat {
            inner: Arc::new(Inner {
                http,
                api_url: config.api_url.clone(),
                api_path: config.api_url.path().trim_end_matches('/').to_string(),
                redirect_prefix: format!("{portal}/redirect/"),
                timeout: config.timeout,
                permits: Arc::new(Semaphore::new(config.max_in_flight)),
                paused_until_ms: AtomicU64::new(0),
                calls,
                optional_below: u64::from(config.calls_per_minute) * 3 / 4,
                started: Instant::now(),
                metrics,
                shared: std::sync::OnceLock::new(),
            }),
        })
    }

    /// May this end user use the portal?
    pub async fn check_access(&self, id: &EndUserId) -> Result<bool, PlanhatError> {
        let url = self.url(&format!("/shareabletokens/access/{}", id.path_segment()));
        let body = self.get(Call::Access, &url).await?;
        answer::parse_access(&body).ok_or_else(|| {
            PlanhatError::Unusable(format!(
                "the access check answer ({} bytes) is not true/false",
                body.len()
            ))
        })
    }

    /// Mints a signed login URL. It is only returned when it starts with
    /// `{portal_url}/redirect/`; otherwise it is dropped unseen.
    pub async fn mint(&self, id: &EndUserId) -> Result<Secret, PlanhatError> {
        let url = self.url(&format!("/shareabletokens/{}", id.path_segment()));
        let body = self.get(Call::Mint, &url).await?;
        answer::parse_signed_url(&body, &self.inner.redirect_prefix)
            .map(Secret::new)
            .ok_or_else(|| {
                PlanhatError::Unusable(format!(
                    "no URL starting with {} in the answer ({} bytes)",
                    self.inner.redirect_prefix,
                    body.len()
                ))
            })
    }

    /// End users with this email address.
    pub async fn find_by_email(&self, email: &str) -> Result<Vec<EndUserSummary>, PlanhatError> {
        let mut url = self.url("/endusers");
        url.query_pairs_mut().append_pair("email", email);
        let body = self.get(Call::Lookup, &url).await?;
        answer::parse_endusers(&body).ok_or_else(|| {
            PlanhatError::Unusable(format!(
                "the end-user search answer ({} bytes) is not a list",
                body.len()
            ))
        })
    }

    /// Name and company of one end user (`GET /endusers/{id}`), for showing whom the asker is
    /// about to become.
    pub async fn find_by_id(&self, id: &EndUserId) -> Result<EndUserSummary, PlanhatError> {
        let url = self.url(&format!("/endusers/{}", id.path_segment()));
        let body = self.get(Call::Lookup, &url).await?;
        answer::parse_enduser(&body).ok_or_else(|| {
            PlanhatError::Unusable(format!(
                "the end-user answer ({} bytes) is not an end user",
                body.len()
            ))
        })
    }

    /// A company's name and owners (`GET /companies/{id}`), for `scope = "owned"`.
    pub async fn find_company(&self, id: &str) -> Result<CompanyOwners, PlanhatError> {
        // One path segment: everything but RFC 3986's unreserved characters is escaped.
        const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
            .remove(b'-')
            .remove(b'_')
            .remove(b'.')
            .remove(b'~');
        if id.is_empty() || id.chars().all(|c| c == '.') {
            return Err(PlanhatError::Unusable(
                "the company id is not usable".into(),
            ));
        }
        let segment: String = percent_encoding::utf8_percent_encode(id, SEGMENT).collect();
        let url = self.url(&format!("/companies/{segment}"));
        let body = self.get(Call::Lookup, &url).await?;
        answer::parse_company(&body).ok_or_else(|| {
            PlanhatError::Unusable(format!(
                "the company answer ({} bytes) is not a company",
                body.len()
            ))
        })
    }

    /// Planhat's users and their emails (`GET /users`), for `scope = "owned"`: read in pages of
    /// [`USERS_PAGE`] with only `_id` and `email` selected, so every page fits [`MAX_ANSWER`]
    /// however many users the tenant has (the whole list in one answer did not, past about a
    /// hundred users). A page that fails fails the whole list: a part of it is not the list.
    pub async fn list_users(&self) -> Result<Vec<(String, String)>, PlanhatError> {
        let mut users = Vec::new();
        let mut previous_first: Option<String> = None;
        for page in 0..MAX_USER_PAGES {
            let mut url = self.url("/users");
            url.set_query(Some(&format!(
                "limit={USERS_PAGE}&offset={}&select=_id,email",
                page * USERS_PAGE
            )));
            let body = self.get(Call::Lookup, &url).await?;
            let found = answer::parse_users(&body).ok_or_else(|| {
                PlanhatError::Unusable(format!(
                    "a page of the users answer ({} bytes) is not a list",
                    body.len()
                ))
            })?;
            if found.items > 0 && found.first_id.is_some() && found.first_id == previous_first {
                return Err(PlanhatError::Unusable(
                    "Planhat answered the same page of users twice (offset ignored)".into(),
                ));
            }
            users.extend(found.users);
            if found.items < USERS_PAGE {
                return Ok(users);
            }
            previous_first = found.first_id;
        }
        Err(PlanhatError::Unusable(format!(
            "Planhat lists more than {} users",
            MAX_USER_PAGES * USERS_PAGE
        )))
    }

    /// Writes Notes on companies' timelines in one bulk call (`PUT /conversations`, an array of
    /// up to 5,000). Under the same limits as every call (429 pause, `max_in_flight`, the
    /// timeout); never retried here: the Notes writer decides when to try again.
    pub async fn put_notes(&self, notes: &[NoteBody]) -> Result<(), PlanhatError> {
        let started = Instant::now();
        let url = self.url("/conversations");
        let send = self.send_unbounded(|| self.inner.http.put(url.clone()).json(notes), 64 * 1024);
        let result = match tokio::time::timeout(self.inner.timeout, send).await {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(PlanhatError::TooSlow(self.inner.timeout)),
        };
        let label = match &result {
            Ok(_) => "ok",
            Err(e) => e.kind(),
        };
        self.inner
            .metrics
            .planhat_call(Call::Notes.name(), label, started.elapsed());
        result
    }

    /// One authenticated call that proves the token and the host work (for `check` and to warm
    /// the connection pool at start-up, so the first user doesn't pay DNS + TCP + TLS).
    pub async fn probe(&self) -> Result<(), PlanhatError> {
        let mut url = self.url("/endusers");
        url.set_query(Some("limit=1"));
        self.get(Call::Lookup, &url).await.map(|_| ())
    }

    /// `{api_url}{path}`; `path` starts with `/` and its end-user part is already one escaped
    /// segment ([`EndUserId::path_segment`]), which setting the path keeps as it is.
    fn url(&self, path: &str) -> reqwest::Url {
        let mut url = self.inner.api_url.clone();
        url.set_path(&format!("{}{path}", self.inner.api_path));
        url
    }

    /// True while an optional call (a name lookup) fits Planhat's budget: the last minute's
    /// calls are below three quarters of `planhat.calls_per_minute`. The last quarter is kept
    /// for links, so names never push links into a 429.
    pub fn room_for_optional(&self) -> bool {
        self.inner.calls.last_minute() < self.inner.optional_below
    }

    /// Optional calls (name lookups) the budget lets through in a minute, at most.
    pub fn optional_per_minute(&self) -> u64 {
        self.inner.optional_below
    }

    /// Calls sent to Planhat in the last 60 seconds (by the cluster, when it shares a count).
    pub fn calls_last_minute(&self) -> u64 {
        self.inner.calls.last_minute()
    }

    /// Reports this process's calls since the last report to `state` and takes back the
    /// cluster's count (once a second, with `[state]`; see [`budget`]).
    pub async fn share_budget(&self, state: &dyn SharedState) {
        let calls = self.inner.calls.take_unreported();
        match state.count_planhat_calls(calls).await {
            Some(total) => self.inner.calls.set_cluster(total),
            None => self.inner.calls.unreport(calls),
        }
    }

    fn now_ms(&self) -> u64 {
        self.inner.started.elapsed().as_millis() as u64
    }

    /// One GET with the shared limits: global 429 pause, `max_in_flight`, overall timeout.
    async fn get(&self, call: Call, url: &reqwest::Url) -> Result<bytes_body::Body, PlanhatError> {
        self.get_capped(call, url, MAX_ANSWER).await
    }

    /// [`Self::get`] reading at most `cap` bytes (list pages are larger than other answers).
    async fn get_capped(
        &self,
        call: Call,
        url: &reqwest::Url,
        cap: usize,
    ) -> Result<bytes_body::Body, PlanhatError> {
        let started = Instant::now();
        // One retry, only for a connection that could not be made (nothing reached Planhat, so
        // repeating the GET is safe), and only inside the same time budget.
        let attempts = async {
            match self.get_unbounded(url, cap).await {
                Err(PlanhatError::Unreachable(_)) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    self.get_unbounded(url, cap).await
                }
                other => other,
            }
        };
        let result = match tokio::time::timeout(self.inner.timeout, attempts).await {
            Ok(r) => r,
            Err(_) => Err(PlanhatError::TooSlow(self.inner.timeout)),
        };
        let label = match &result {
            Ok(_) => "ok",
            Err(e) => e.kind(),
        };
        self.inner
            .metrics
            .planhat_call(call.name(), label, started.elapsed());
        result
    }

    async fn get_unbounded(
        &self,
        url: &reqwest::Url,
        cap: usize,
    ) -> Result<bytes_body::Body, PlanhatError> {
        self.send_unbounded(|| self.inner.http.get(url.clone()), cap)
            .await
    }

    /// One request (`request` builds it) under the shared limits, its answer read up to `cap`.
    async fn send_unbounded(
        &self,
        request: impl FnOnce() -> reqwest::RequestBuilder,
        cap: usize,
    ) -> Result<bytes_body::Body, PlanhatError> {
        self.refuse_if_paused()?;
        let permit = self
            .inner
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PlanhatError::Unreachable("shutting down".into()))?;
        // Re-check: the pause may have started while this call waited for its turn.
        self.refuse_if_paused()?;
        self.inner.calls.record();
        self.inner.metrics.planhat_in_flight(1);
        let _gauge = InFlight(&self.inner.metrics);
        let response = Placed::new(request().send(), permit)
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = response.status();
        match status {
            s if s.is_success() => self.read_capped(response, cap).await,
            StatusCode::NOT_FOUND => Err(PlanhatError::NotFound),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Err(PlanhatError::TokenRejected(status.as_u16()))
            }
            StatusCode::TOO_MANY_REQUESTS => {
                let wait = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs)
                    .unwrap_or(Duration::from_secs(5))
                    .min(Duration::from_secs(300));
                self.pause_for(wait);
                if let Some(shared) = self.inner.shared.get() {
                    let shared = shared.clone();
                    tokio::spawn(async move { shared.pause_planhat(wait).await });
                }
                Err(PlanhatError::RateLimited(wait))
            }
            s if s.is_server_error() => Err(PlanhatError::Failed(s.as_u16())),
            s => Err(PlanhatError::Unusable(format!(
                "unexpected HTTP {}",
                s.as_u16()
            ))),
        }
    }

    /// Reads a body of at most `cap` bytes ([`MAX_ANSWER`] but for list pages), chunk by
    /// chunk; a longer one is an unusable answer and is not read further (the connection is
    /// dropped with the response). reqwest has no size limit of its own, and `bytes()` would
    /// buffer whatever arrives.
    async fn read_capped(
        &self,
        mut response: reqwest::Response,
        cap: usize,
    ) -> Result<bytes_body::Body, PlanhatError> {
        let too_big =
            || PlanhatError::Unusable(format!("the answer is larger than {} KiB", cap / 1024));
        if response.content_length().is_some_and(|n| n > cap as u64) {
            return Err(too_big());
        }
        let mut body = bytes::BytesMut::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport_error(e))?
        {
            if body.len() + chunk.len() > cap {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(bytes_body::Body(body.freeze()))
    }

    fn refuse_if_paused(&self) -> Result<(), PlanhatError> {
        let until = self.inner.paused_until_ms.load(Ordering::Relaxed);
        let now = self.now_ms();
        if until > now {
            return Err(PlanhatError::RateLimited(Duration::from_millis(
                until - now,
            )));
        }
        Ok(())
    }

    /// Tells `state` of every 429 from now on, so that all replicas pause (the first call wins).
    pub fn share_pauses(&self, state: Arc<dyn SharedState>) {
        let _ = self.inner.shared.set(state);
    }

    /// Refuses every call for `wait` (a longer pause already set stays).
    pub fn pause_for(&self, wait: Duration) {
        let until = self.now_ms() + wait.as_millis() as u64;
        self.inner
            .paused_until_ms
            .fetch_max(until, Ordering::Relaxed);
    }

    /// Maps a transport error without its URL (which names the end user's endpoint).
    fn transport_error(&self, e: reqwest::Error) -> PlanhatError {
        if e.is_timeout() {
            return PlanhatError::TooSlow(self.inner.timeout);
        }
        let e = e.without_url();
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            detail.push_str(": ");
            detail.push_str(&s.to_string());
            source = s.source();
        }
        if e.is_connect() || e.is_request() {
            PlanhatError::Unreachable(detail)
        } else {
            PlanhatError::Unusable(format!("the answer could not be read: {detail}"))
        }
    }
}

/// How long a call given up on (its caller's time ran out) may keep its place.
const LINGER: Duration = Duration::from_secs(60);

/// A request sent to Planhat with its place under `max_in_flight`. When the caller gives up
/// before Planhat answered (the overall timeout), Planhat is still working on it: the place
/// stays taken until the answer comes after all (or [`LINGER`] has passed), in a task that
/// exists only then, so Planhat never has more than `max_in_flight` of the bot's calls at once.
struct Placed<F: Future + Send + Unpin + 'static> {
    call: Option<F>,
    permit: Option<OwnedSemaphorePermit>,
}

impl<F: Future + Send + Unpin + 'static> Placed<F> {
    fn new(call: F, permit: OwnedSemaphorePermit) -> Self {
        Placed {
            call: Some(call),
            permit: Some(permit),
        }
    }
}

/// Planhat's answer (its headers). Once it is there the call is done: the place is freed
/// with the `Placed`, right after.
impl<F: Future + Send + Unpin + 'static> Future for Placed<F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let Some(call) = self.call.as_mut() else {
            return std::task::Poll::Pending; // polled after it finished: nothing more comes
        };
        let answer = std::task::ready!(std::pin::Pin::new(call).poll(cx));
        self.call = None;
        std::task::Poll::Ready(answer)
    }
}

impl<F: Future + Send + Unpin + 'static> Drop for Placed<F> {
    fn drop(&mut self) {
        let (Some(call), Some(permit)) = (self.call.take(), self.permit.take()) else {
            return; // answered: the place is free now
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // shutting down: there is no one left to keep out
        };
        runtime.spawn(async move {
            let _ = tokio::time::timeout(LINGER, call).await;
            drop(permit);
        });
    }
}

/// Decrements the in-flight gauge however the call ends (including cancellation).
struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.planhat_in_flight(-1);
    }
}

mod bytes_body {
    /// A response body; deliberately without `Debug` so it cannot be logged by accident (a
    /// mint answer holds the signed URL).
    pub struct Body(pub bytes::Bytes);

    impl std::ops::Deref for Body {
        type Target = [u8];
        fn deref(&self) -> &[u8] {
            &self.0
        }
    }
}
