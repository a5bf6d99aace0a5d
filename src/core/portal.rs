//! The portal-link use case: from (asker, what they typed) to what they should see.
//!
//! This is the one place where the spec's order is enforced: authorise → rate limit →
//! access check + mint (concurrently: one round trip) → URL check → audit. Adapters call
//! [`PortalService::handle`] or [`PortalService::link_for`] and render the [`Reply`]; they
//! never talk to Planhat themselves, so no adapter can skip a step.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::access::{AccessPolicy, Denied};
use super::asker::Asker;
use super::audit::{Audit, AuditEvent};
use super::command::{parse_command, Command};
use super::enduser::{BadEndUser, EndUserId, Target};
use super::metrics::Metrics;
use super::names::NameCache;
use super::onetime::{GoError, OneTimeLinks, LIFETIME as GO_LIFETIME};
use super::planhat::{EndUserSummary, Planhat, PlanhatError};
use super::ratelimit::RateLimiter;
use super::secret::Secret;

/// At most this many matches of an email are offered as buttons (a screenful).
pub const MAX_CHOICES: usize = 5;

/// What the asker asked for, as the audit trail names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `/portal <enduser>`.
    Link,
    /// `/portal check <enduser>`.
    Check,
    /// The New link button.
    NewLink,
    /// A click on a `/go/` one-time link.
    Go,
    /// `/portal help` (or no argument).
    Help,
    /// A button on someone else's message.
    Button,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Link => "link",
            Action::Check => "check",
            Action::NewLink => "new_link",
            Action::Go => "go",
            Action::Help => "help",
            Action::Button => "button",
        }
    }
    fn mints(self) -> bool {
        !matches!(self, Action::Check | Action::Help | Action::Button)
    }
}

/// A freshly minted login link. `Debug` shows no URL.
#[derive(Debug, Clone)]
pub struct PortalLink {
    pub url: Secret,
    pub end_user: EndUserId,
    /// Name and company, when Planhat gave them (email lookups).
    pub who: Option<EndUserSummary>,
    /// When the link stops working: Planhat's 30 seconds (counted from before the mint call,
    /// conservatively), or a `/go/` link's ten minutes.
    pub expires_at: SystemTime,
    /// True for a `/go/` link: the signed URL is minted when the person clicks.
    pub at_click: bool,
}

/// What the asker sees, platform-neutral. Adapters render it.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Usage text ([`super::command::USAGE`]).
    Help,
    /// A link to show ephemerally.
    Link(PortalLink),
    /// The answer to `check`.
    Access {
        end_user: EndUserId,
        who: Option<EndUserSummary>,
        has_access: bool,
    },
    /// An email matched several end users: let the asker pick.
    Choose {
        email: String,
        matches: Vec<EndUserSummary>,
        more: bool,
    },
    /// One clear line for the asker.
    Refused(Refusal),
}

/// Why no link. `Display` is the line the asker sees (no input is echoed in it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    NotAllowed(Denied),
    #[error("That is not an end-user id: {0}. Try /portal help.")]
    BadInput(BadEndUser),
    #[error("You have asked for many links in a short time; try again in {}s.", .0.as_secs().max(1))]
    RateLimited(Duration),
    #[error("Planhat has no such end user.")]
    NotFound,
    #[error("This end user has no portal access in Planhat, so no link was made.")]
    NoAccess,
    #[error("Planhat is busy (rate limited); try again in {}s.", .0.as_secs().max(1))]
    UpstreamRateLimited(Duration),
    #[error("Planhat did not answer in time; try again in a moment.")]
    UpstreamSlow,
    #[error("Planhat can't be reached right now; try again in a moment.")]
    UpstreamUnreachable,
    #[error("Planhat failed to answer; try again in a moment.")]
    UpstreamFailed,
    #[error(
        "Planhat rejected the bot's API token: the bot is misconfigured. Please tell its admins."
    )]
    TokenRejected,
    #[error("Planhat answered something the bot can't use, so no link was shown. Please tell the bot's admins.")]
    Unusable,
    #[error("The audit trail can't be written, so no link was handed out. Please tell the bot's admins.")]
    AuditUnavailable,
    #[error("Something went wrong inside the bot, so no link was made; try again, and tell its admins if it keeps happening.")]
    Internal,
}

impl Refusal {
    /// Stable outcome name for audit events and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::NotAllowed(_) => "denied",
            Refusal::BadInput(_) => "invalid_input",
            Refusal::RateLimited(_) => "rate_limited",
            Refusal::NotFound => "not_found",
            Refusal::NoAccess => "no_access",
            Refusal::UpstreamRateLimited(_) => "upstream_rate_limited",
            Refusal::UpstreamSlow => "upstream_timeout",
            Refusal::UpstreamUnreachable => "upstream_unreachable",
            Refusal::UpstreamFailed => "upstream_failed",
            Refusal::TokenRejected => "token_rejected",
            Refusal::Unusable => "upstream_unusable",
            Refusal::AuditUnavailable => "audit_failed",
            Refusal::Internal => "internal_error",
        }
    }
}

/// The answer to `check`, worded once for every platform; the caller passes the end user and
/// their name already escaped for its markup.
pub fn access_line(end_user: &str, who: &str, has_access: bool) -> String {
    let has = if has_access { "has" } else { "has no" };
    format!("{end_user}{who} {has} portal access.")
}

/// The heading above an email's matches, worded once for every platform (`email` escaped).
pub fn choose_line(email: &str, matches: usize, more: bool) -> String {
    let cut = if more { " (the first shown)" } else { "" };
    format!("{email} matches {matches} end users{cut}; pick one:")
}

impl Refusal {
    /// True for refusals that may well not happen on the next try (Planhat slow, down or
    /// rate limiting): a `/go/` link refused for one of these stays usable.
    pub fn is_passing(&self) -> bool {
        matches!(
            self,
            Refusal::UpstreamRateLimited(_)
                | Refusal::UpstreamSlow
                | Refusal::UpstreamUnreachable
                | Refusal::UpstreamFailed
                | Refusal::AuditUnavailable
        )
    }
}

impl From<PlanhatError> for Refusal {
    fn from(e: PlanhatError) -> Self {
        match e {
            PlanhatError::NotFound => Refusal::NotFound,
            PlanhatError::TokenRejected(_) => Refusal::TokenRejected,
            PlanhatError::RateLimited(d) => Refusal::UpstreamRateLimited(d),
            PlanhatError::Unreachable(_) => Refusal::UpstreamUnreachable,
            PlanhatError::TooSlow(_) => Refusal::UpstreamSlow,
            PlanhatError::Failed(_) => Refusal::UpstreamFailed,
            PlanhatError::Unusable(_) => Refusal::Unusable,
        }
    }
}

impl Reply {
    fn outcome(&self) -> &'static str {
        match self {
            Reply::Help => "help",
            Reply::Link(_) => "ok",
            Reply::Access {
                has_access: true, ..
            } => "ok",
            Reply::Access {
                has_access: false, ..
            } => "no_access",
            Reply::Choose { .. } => "choose",
            Reply::Refused(r) => r.kind(),
        }
    }
}

/// The use case and everything it needs. One per process, shared by every adapter.
pub struct PortalService {
    planhat: Planhat,
    policy: AccessPolicy,
    limiter: RateLimiter,
    audit: Arc<Audit>,
    metrics: Arc<Metrics>,
    link_lifetime: Duration,
    /// Set: links are `/go/` links under this base, minted at click time.
    public_url: Option<String>,
    onetime: OneTimeLinks,
    names: Arc<NameCache>,
}

/// One-time links held at once, at most.
const MAX_ONETIME: usize = 100_000;

/// End users' names cached at once, about (a full cache evicts as it inserts: [`NameCache`]).
const MAX_NAMES: usize = 10_000;

impl PortalService {
    /// Assembles the use case from its parts.
    pub fn new(
        planhat: Planhat,
        policy: AccessPolicy,
        limiter: RateLimiter,
        audit: Arc<Audit>,
        metrics: Arc<Metrics>,
        link_lifetime: Duration,
        public_url: Option<&url::Url>,
    ) -> Self {
        PortalService {
            planhat,
            policy,
            limiter,
            audit,
            metrics,
            link_lifetime,
            public_url: public_url.map(|u| u.as_str().trim_end_matches('/').to_string()),
            onetime: OneTimeLinks::new(MAX_ONETIME),
            names: Arc::new(NameCache::new(MAX_NAMES, Duration::from_secs(3600))),
        }
    }

    /// The access policy (adapters ask it which groups to keep fetched).
    pub fn policy(&self) -> &AccessPolicy {
        &self.policy
    }

    /// The Planhat client (for start-up warm-up and `check`).
    pub fn planhat(&self) -> &Planhat {
        &self.planhat
    }

    /// Forgets rate-limit buckets of quiet askers and expired `/go/` ids (called periodically,
    /// off the request path). Cached names need no sweep: their cache evicts as it inserts.
    pub fn sweep(&self) {
        self.limiter.sweep(Instant::now());
        self.onetime.sweep();
    }

    /// `GET /go/{id}`: uses the id up, then runs the whole flow for its asker and end user
    /// (re-authorised, rate limited, access re-checked, minted now, audited).
    pub async fn go(&self, id: &str) -> Result<Reply, GoError> {
        let claim = self.onetime.take(id)?;
        let reply = self
            .link_for(&claim.asker, claim.end_user, Action::Go)
            .await;
        if let Reply::Refused(r) = &reply {
            if r.is_passing() {
                self.onetime.release(id);
            }
        }
        Ok(reply)
    }

    /// Whether a `/go/` id could be used, without using it.
    pub fn peek_go(&self, id: &str) -> Result<(), GoError> {
        self.onetime.peek(id)
    }

    /// `/portal <text>` from `asker`.
    pub async fn handle(&self, asker: &Asker, text: &str) -> Reply {
        self.handle_command(asker, parse_command(text)).await
    }

    /// A command already parsed (the terminal parses its own arguments).
    pub async fn handle_command(
        &self,
        asker: &Asker,
        command: Result<Command, BadEndUser>,
    ) -> Reply {
        let started = Instant::now();
        let (action, target) = match &command {
            Ok(Command::Help) => {
                return self
                    .finish(asker, Action::Help, None, Reply::Help, started)
                    .await
            }
            Ok(Command::Link(t)) => (Action::Link, Some(t.clone())),
            Ok(Command::Check(t)) => (Action::Check, Some(t.clone())),
            Err(_) => (Action::Link, None),
        };
        let end_user = target.as_ref().map(target_name);
        let reply = match (self.admit(asker, action), command) {
            (Err(refusal), _) => Reply::Refused(refusal),
            (Ok(()), Err(bad)) => Reply::Refused(Refusal::BadInput(bad)),
            (Ok(()), Ok(_)) => match target {
                Some(Target::EndUser(id)) => self.run(asker, id, None, action).await,
                Some(Target::Email(email)) => self.by_email(asker, email, action).await,
                _ => Reply::Help,
            },
        };
        self.finish(asker, action, end_user, reply, started).await
    }

    /// A link (or check) for an end user already known by id: the New link button, a pick from
    /// an email's matches, a `/go/` click. Authorised, rate limited and audited like a command.
    pub async fn link_for(&self, asker: &Asker, id: EndUserId, action: Action) -> Reply {
        let started = Instant::now();
        let end_user = Some(id.to_string());
        let reply = match self.admit(asker, action) {
            Err(refusal) => Reply::Refused(refusal),
            Ok(()) => self.run(asker, id, None, action).await,
        };
        self.finish(asker, action, end_user, reply, started).await
    }

    /// Records a refusal that happened before the use case (e.g. someone pressing a button on
    /// another person's message), so the audit trail has every attempt.
    pub async fn record_refusal(
        &self,
        asker: &Asker,
        end_user: Option<String>,
        outcome: &'static str,
    ) {
        let event = AuditEvent {
            time: AuditEvent::now(),
            platform: asker.platform.name(),
            team: asker.team_id.clone(),
            channel: asker.channel_id.clone(),
            asker: asker.user_id.clone(),
            action: Action::Button.name(),
            end_user,
            outcome,
            latency_ms: 0,
        };
        if let Err(e) = self.audit.record(event).await {
            tracing::error!(error = %e, "audit event lost");
        }
        self.metrics
            .request(asker.platform.name(), outcome, Duration::ZERO);
    }

    /// Authorise, then rate limit: nothing reaches Planhat before both pass.
    /// A `/go/` click is not counted again: it finishes a request that was counted when asked.
    fn admit(&self, asker: &Asker, action: Action) -> Result<(), Refusal> {
        self.policy.authorize(asker).map_err(Refusal::NotAllowed)?;
        if action == Action::Go {
            return Ok(());
        }
        self.limiter
            .check(&asker.rate_key(), Instant::now())
            .map_err(Refusal::RateLimited)
    }

    async fn by_email(&self, asker: &Asker, email: String, action: Action) -> Reply {
        let mut matches = match self.planhat.find_by_email(&email).await {
            Ok(m) => m,
            Err(e) => return self.upstream(e),
        };
        match matches.len() {
            0 => Reply::Refused(Refusal::NotFound),
            1 => {
                let who = matches.pop();
                match who.as_ref().and_then(|w| id_of(&w.id)) {
                    Some(id) => self.run(asker, id, who, action).await,
                    None => self.upstream(PlanhatError::Unusable(
                        "the matching end user has an unusable id".into(),
                    )),
                }
            }
            n => {
                matches.truncate(MAX_CHOICES);
                Reply::Choose {
                    email,
                    matches,
                    more: n > MAX_CHOICES,
                }
            }
        }
    }

    /// The Planhat round: access check and mint at once; a URL is kept only on "yes".
    async fn run(
        &self,
        asker: &Asker,
        id: EndUserId,
        who: Option<EndUserSummary>,
        action: Action,
    ) -> Reply {
        if action.mints() && action != Action::Go && self.public_url.is_some() {
            let who_lookup = self.lookup_who(&id, who);
            let access = self.planhat.check_access(&id).await;
            let who = who_lookup.now().await;
            return match access {
                Ok(true) => match self.at_click(asker, id.clone(), who.clone()) {
                    Some(reply) => reply,
                    // The store is full: fall back to a link minted now.
                    None => self.mint_now(id, who).await,
                },
                Ok(false) => Reply::Refused(Refusal::NoAccess),
                Err(e) => self.upstream(e),
            };
        }
        if !action.mints() {
            let who_lookup = self.lookup_who(&id, who);
            let access = self.planhat.check_access(&id).await;
            let who = who_lookup.now().await;
            return match access {
                Ok(has_access) => Reply::Access {
                    end_user: id,
                    who,
                    has_access,
                },
                Err(e) => self.upstream(e),
            };
        }
        self.mint_now(id, who).await
    }

    /// Looks the end user's name up beside the other calls; never waits for it afterwards.
    /// Names are cached (they rarely change), so asking again for the same end user costs
    /// Planhat only the access check and the mint. The lookup is optional: while Planhat's
    /// per-minute budget is nearly spent it is skipped (and counted), so links keep the budget.
    fn lookup_who(&self, id: &EndUserId, known: Option<EndUserSummary>) -> WhoLookup {
        if known.is_some() {
            return WhoLookup::Known(known);
        }
        if let Some(cached) = self.names.get(id) {
            return WhoLookup::Known(Some(cached));
        }
        if !self.planhat.room_for_optional() {
            self.metrics.lookup_skipped();
            return WhoLookup::Known(None);
        }
        if !self.names.claim(id) {
            return WhoLookup::Known(None); // another request is fetching it right now
        }
        let (planhat, id, names) = (self.planhat.clone(), id.clone(), self.names.clone());
        // Runs to its end even when the reply doesn't wait for it, so the next reply has the
        // name, and its Planhat call is never cut off mid-flight (max_in_flight stays true).
        WhoLookup::Pending(tokio::spawn(async move {
            let who = planhat.find_by_id(&id).await.ok();
            names.put(id, who.clone());
            who
        }))
    }

    async fn mint_now(&self, id: EndUserId, who: Option<EndUserSummary>) -> Reply {
        let before_mint = SystemTime::now();
        let who_lookup = self.lookup_who(&id, who);
        let (access, minted) = tokio::join!(self.planhat.check_access(&id), self.planhat.mint(&id));
        let who = who_lookup.now().await;
        match access {
            Err(e) => self.upstream(e),
            // A URL minted for someone without access is dropped here, unseen and unlogged.
            Ok(false) => Reply::Refused(Refusal::NoAccess),
            Ok(true) => match minted {
                Ok(url) => Reply::Link(PortalLink {
                    url,
                    end_user: id,
                    who,
                    expires_at: before_mint + self.link_lifetime,
                    at_click: false,
                }),
                Err(e) => self.upstream(e),
            },
        }
    }

    /// With `public_url`: check access now, mint when the person clicks `/go/{id}`.
    fn at_click(&self, asker: &Asker, id: EndUserId, who: Option<EndUserSummary>) -> Option<Reply> {
        let base = self.public_url.as_ref()?;
        let go = self.onetime.issue(asker, &id)?;
        Some(Reply::Link(PortalLink {
            url: Secret::new(format!("{base}/go/{go}")),
            end_user: id,
            who,
            expires_at: SystemTime::now() + GO_LIFETIME,
            at_click: true,
        }))
    }

    fn upstream(&self, e: PlanhatError) -> Reply {
        match e {
            PlanhatError::NotFound => {}
            _ => tracing::warn!(error = %e, "Planhat call failed"),
        }
        Reply::Refused(e.into())
    }

    /// Audit (refusing the link if a required audit fails), count, log.
    async fn finish(
        &self,
        asker: &Asker,
        action: Action,
        end_user: Option<String>,
        reply: Reply,
        started: Instant,
    ) -> Reply {
        let took = started.elapsed();
        let outcome = reply.outcome();
        let event = AuditEvent {
            time: AuditEvent::now(),
            platform: asker.platform.name(),
            team: asker.team_id.clone(),
            channel: asker.channel_id.clone(),
            asker: asker.user_id.clone(),
            action: action.name(),
            end_user,
            outcome,
            latency_ms: took.as_millis() as u64,
        };
        let reply = match self.audit.record(event).await {
            Ok(()) => reply,
            Err(e) if self.audit.required() => {
                tracing::error!(error = %e, "refusing the answer: audit is required");
                Reply::Refused(Refusal::AuditUnavailable)
            }
            Err(e) => {
                tracing::error!(error = %e, "audit event lost");
                reply
            }
        };
        let outcome = reply.outcome();
        self.metrics.request(asker.platform.name(), outcome, took);
        tracing::info!(
            platform = asker.platform.name(),
            asker = %asker.user_id,
            action = action.name(),
            outcome,
            latency_ms = took.as_millis() as u64,
            "request answered"
        );
        reply
    }
}

/// The name lookup that rides along with the access check and the mint.
enum WhoLookup {
    Known(Option<EndUserSummary>),
    Pending(tokio::task::JoinHandle<Option<EndUserSummary>>),
}

impl WhoLookup {
    /// The answer if it is there (or nearly): the link never waits on a name.
    async fn now(self) -> Option<EndUserSummary> {
        match self {
            WhoLookup::Known(who) => who,
            WhoLookup::Pending(mut task) => {
                match tokio::time::timeout(Duration::from_millis(20), &mut task).await {
                    Ok(Ok(who)) => who,
                    _ => None,
                }
            }
        }
    }
}

fn target_name(t: &Target) -> String {
    match t {
        Target::EndUser(id) => id.to_string(),
        Target::Email(e) => e.clone(),
        Target::Help => String::new(),
    }
}

/// An id that Planhat itself gave us still goes through the same plausibility check.
pub fn id_of(text: &str) -> Option<EndUserId> {
    match super::enduser::parse_target(text) {
        Ok(Target::EndUser(id)) => Some(id),
        _ => None,
    }
}
