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
use super::asker::{Groups, Platform};
use super::audit::{Audit, AuditEvent};
use super::command::{parse_command, Command};
use super::directory::Directory;
use super::enduser::{BadEndUser, EndUserId, Target};
use super::metrics::Metrics;
use super::names::NameCache;
use super::onetime::{new_id, GoError, ARM_WAIT, ARM_WINDOW};
use super::ownership::{Ownership, OwnershipError, ScopeDenied};
use super::planhat::{EndUserSummary, Planhat, PlanhatError};
use super::secret::Secret;
use super::state::{GoClaim, SharedState};

/// What a `/go/` request should get.
#[derive(Debug)]
pub enum GoView {
    /// The click minted (or was refused for a reason of the use case): redirect or say why.
    Done(Reply),
    /// Show the one-button page; its POST is the deliberate act that uses the id.
    Confirm,
    /// The id can't be used (used, unknown, expired, not armed, store unavailable).
    Refused(GoError),
}

/// The browser behind a `/go/` request, for the audit trail of failed attempts.
#[derive(Debug, Clone, Default)]
pub struct GoClient {
    pub address: Option<String>,
    pub user_agent: Option<String>,
}

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
        /// Set: this asker may not open that portal (`scope = "owned"`), and why.
        scope: Option<ScopeDenied>,
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
    #[error("{0}")]
    OutOfScope(ScopeDenied),
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
            Refusal::OutOfScope(_) => "out_of_scope",
        }
    }
}

/// The answer to `check`, worded once for every platform; the caller passes the end user and
/// their name already escaped for its markup. `scope`: why this asker may not open it.
pub fn access_line(
    end_user: &str,
    who: &str,
    has_access: bool,
    scope: Option<&ScopeDenied>,
) -> String {
    let has = if has_access { "has" } else { "has no" };
    match scope {
        None => format!("{end_user}{who} {has} portal access."),
        Some(why) => format!("{end_user}{who} {has} portal access, but you may not open it: {why}"),
    }
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
                | Refusal::OutOfScope(ScopeDenied::LookupFailed)
                | Refusal::NotAllowed(Denied::MembershipUnknown)
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

    /// The end user's company for the audit trail, when the reply names the end user.
    fn company(&self) -> Option<String> {
        match self {
            Reply::Link(link) => link.who.as_ref()?.company.clone(),
            Reply::Access { who, .. } => who.as_ref()?.company.clone(),
            _ => None,
        }
    }
}

/// The use case and everything it needs. One per process, shared by every adapter.
pub struct PortalService {
    planhat: Planhat,
    policy: AccessPolicy,
    /// Rate limits, `/go/` ids and Planhat's pause: in memory or shared by replicas.
    state: Arc<dyn SharedState>,
    per_minute: u32,
    audit: Arc<Audit>,
    metrics: Arc<Metrics>,
    link_lifetime: Duration,
    /// Set: links are `/go/` links under this base, minted at click time.
    public_url: Option<String>,
    /// How long a `/go/` id lives.
    go_lifetime: Duration,
    names: Arc<NameCache>,
    /// `scope = "owned"`: who owns which company.
    ownership: Ownership,
    /// The transparency channel's outlets (`[notify]`), registered by the chat adapters.
    notifier: super::notify::Notifier,
    /// Each chat platform's directory (emails, current groups), registered at start-up.
    directories: std::sync::RwLock<std::collections::HashMap<Platform, Arc<dyn Directory>>>,
}

/// End users' names cached at once, about (a full cache evicts as it inserts: [`NameCache`]).
const MAX_NAMES: usize = 10_000;

impl PortalService {
    /// Assembles the use case from its parts.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        planhat: Planhat,
        policy: AccessPolicy,
        state: Arc<dyn SharedState>,
        per_minute: u32,
        audit: Arc<Audit>,
        metrics: Arc<Metrics>,
        link_lifetime: Duration,
        public_url: Option<&url::Url>,
        go_lifetime: Duration,
    ) -> Self {
        planhat.share_pauses(state.clone());
        let names = Arc::new(NameCache::new(MAX_NAMES, Duration::from_secs(3600)));
        let ownership = Ownership::new(planhat.clone(), names.clone());
        PortalService {
            planhat,
            policy,
            state,
            per_minute,
            audit,
            metrics,
            link_lifetime,
            public_url: public_url.map(|u| u.as_str().trim_end_matches('/').to_string()),
            go_lifetime,
            ownership,
            names,
            directories: Default::default(),
            notifier: Default::default(),
        }
    }

    fn directory(&self, platform: Platform) -> Option<Arc<dyn Directory>> {
        self.directories
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&platform)
            .cloned()
    }

    /// The transparency channel (a chat adapter with a `[notify]` channel takes an outlet).
    pub fn notifier(&self) -> &super::notify::Notifier {
        &self.notifier
    }

    /// Tells the transparency channel about links handed out, `/go/` clicks and scope
    /// refusals. Never waits; never a URL. Called only when the notifier is listening.
    fn notify(&self, asker: &Asker, action: Action, reply: &Reply, end_user: Option<&str>) {
        use super::notify::{Notice, NoticeKind};
        let (kind, who) = match reply {
            Reply::Link(l) if action == Action::Go => (NoticeKind::Opened, l.who.as_ref()),
            Reply::Link(l) => (NoticeKind::Link, l.who.as_ref()),
            Reply::Refused(Refusal::OutOfScope(ScopeDenied::NotYours(_))) => {
                (NoticeKind::RefusedScope, None)
            }
            _ => return,
        };
        let end_user = who
            .and_then(|w| w.name.clone())
            .or_else(|| end_user.map(str::to_string))
            .unwrap_or_else(|| "an end user".into());
        let notice = Notice {
            kind,
            platform: asker.platform,
            asker: asker.user_id.clone(),
            end_user,
            company: who.and_then(|w| w.company.clone()),
        };
        let dropped = self.notifier.send(&notice);
        for _ in 0..dropped {
            self.metrics.notice_failed("dropped");
        }
    }

    /// A chat adapter registers its platform's directory (emails, current groups).
    pub fn register_directory(&self, platform: Platform, directory: Arc<dyn Directory>) {
        self.directories
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(platform, directory);
    }

    /// The ownership lookups (the app refreshes Planhat's user list in the background).
    pub fn ownership(&self) -> &Ownership {
        &self.ownership
    }

    /// The access policy (adapters ask it which groups to keep fetched).
    pub fn policy(&self) -> &AccessPolicy {
        &self.policy
    }

    /// The Planhat client (for start-up warm-up and `check`).
    pub fn planhat(&self) -> &Planhat {
        &self.planhat
    }

    /// The shared state (adapters claim deliveries and schedule jobs through it).
    pub fn state(&self) -> &Arc<dyn SharedState> {
        &self.state
    }

    /// Periodic clean-up off the request path (called by the app's housekeeping task). Cached
    /// names need no sweep: their cache evicts as it inserts.
    pub fn sweep(&self) {
        self.state.housekeep();
    }

    /// `GET /go/{id}`: no side effect, except where the id's own asker has armed it with their
    /// click in Slack (that click is the deliberate act): then it mints and redirects. A Slack
    /// id whose click event hasn't arrived yet waits for it up to [`ARM_WAIT`]. Anything else
    /// gets the one-button page (or says why the id can't be used).
    pub async fn go_get(&self, id: &str, client: &GoClient) -> GoView {
        let started = Instant::now();
        loop {
            match self.state.peek_go(id).await {
                Err(e) => return self.go_refused(e, client).await,
                Ok(p) if !p.needs_arming => return GoView::Confirm,
                Ok(p) if p.armed => return self.go_post(id, client).await,
                Ok(_) if started.elapsed() >= ARM_WAIT => {
                    return self.go_refused(GoError::NotArmed, client).await
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// `POST /go/{id}` (the page's button) or an armed `GET`: uses the id up, then runs the
    /// whole flow for its asker and end user (re-authorised, access re-checked, minted now,
    /// audited). A click refused for a passing reason leaves the id usable.
    pub async fn go_post(&self, id: &str, client: &GoClient) -> GoView {
        let claim = match self.state.take_go(id).await {
            Ok(claim) => claim,
            Err(e) => return self.go_refused(e, client).await,
        };
        // Membership as it is now, not as it was when the link was issued: someone removed
        // from the group or role since gets no portal.
        let mut asker = claim.asker;
        if self.policy.uses_groups_on(asker.platform) {
            asker.groups = match self.directory(asker.platform) {
                Some(d) => d.groups_now(&asker).await,
                None => Groups::Unknown,
            };
        }
        let reply = self.link_for(&asker, claim.end_user, Action::Go).await;
        if let Reply::Refused(r) = &reply {
            if r.is_passing() {
                self.state.release_go(id).await;
            }
        }
        GoView::Done(reply)
    }

    /// Whether a `/go/` id could be used, without using it (`HEAD`).
    pub async fn peek_go(&self, id: &str) -> Result<(), GoError> {
        self.state.peek_go(id).await.map(|_| ())
    }

    /// Slack told the bot that `user_id` clicked the button of `/go/` id `id`: if it is theirs,
    /// a browser may now open it (for [`ARM_WINDOW`]).
    pub async fn arm_go(&self, id: &str, user_id: &str) -> bool {
        self.state.arm_go(id, user_id, ARM_WINDOW).await
    }

    /// A `/go/` attempt that could not use its id: audited (never the id), counted, logged.
    async fn go_refused(&self, e: GoError, client: &GoClient) -> GoView {
        let event = AuditEvent {
            time: AuditEvent::now(),
            platform: "web",
            team: None,
            channel: None,
            asker: "-".into(),
            action: Action::Go.name(),
            end_user: None,
            email: None,
            outcome: e.kind(),
            latency_ms: 0,
            company: None,
            client: client.address.clone(),
            user_agent: client.user_agent.clone(),
        };
        if let Err(err) = self.audit.record(event).await {
            tracing::error!(error = %err, "audit event lost");
        }
        self.metrics.request("web", e.kind(), Duration::ZERO);
        tracing::info!(
            outcome = e.kind(),
            client = client.address.as_deref(),
            "a /go/ link could not be used"
        );
        GoView::Refused(e)
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
                    .finish(
                        asker,
                        Action::Help,
                        Audited::default(),
                        Reply::Help,
                        started,
                    )
                    .await
            }
            Ok(Command::Link(t)) => (Action::Link, Some(t.clone())),
            Ok(Command::Check(t)) => (Action::Check, Some(t.clone())),
            Err(_) => (Action::Link, None),
        };
        let mut audited = match &target {
            Some(Target::EndUser(id)) => Audited::id(id),
            Some(Target::Email(email)) => Audited {
                end_user: None,
                email: Some(email.clone()),
            },
            _ => Audited::default(),
        };
        let reply = match (self.admit(asker, action).await, command) {
            (Err(refusal), _) => Reply::Refused(refusal),
            (Ok(()), Err(bad)) => Reply::Refused(Refusal::BadInput(bad)),
            (Ok(()), Ok(_)) => match target {
                Some(Target::EndUser(id)) => self.run(asker, id, None, action).await,
                Some(Target::Email(email)) => {
                    let (resolved, reply) = self.by_email(asker, email, action).await;
                    audited.end_user = resolved.map(|id| id.to_string());
                    reply
                }
                _ => Reply::Help,
            },
        };
        self.finish(asker, action, audited, reply, started).await
    }

    /// A link (or check) for an end user already known by id: the New link button, a pick from
    /// an email's matches, a `/go/` click. Authorised, rate limited and audited like a command.
    pub async fn link_for(&self, asker: &Asker, id: EndUserId, action: Action) -> Reply {
        let started = Instant::now();
        let audited = Audited::id(&id);
        let reply = match self.admit(asker, action).await {
            Err(refusal) => Reply::Refused(refusal),
            Ok(()) => self.run(asker, id, None, action).await,
        };
        self.finish(asker, action, audited, reply, started).await
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
            email: None,
            outcome,
            latency_ms: 0,
            company: None,
            client: None,
            user_agent: None,
        };
        if let Err(e) = self.audit.record(event).await {
            tracing::error!(error = %e, "audit event lost");
        }
        self.metrics
            .request(asker.platform.name(), outcome, Duration::ZERO);
    }

    /// Authorise, then rate limit, then Planhat's pause (one shared-state round trip for
    /// both): nothing reaches Planhat before all pass. A `/go/` click is not counted again:
    /// it finishes a request that was counted when asked.
    async fn admit(&self, asker: &Asker, action: Action) -> Result<(), Refusal> {
        self.policy.authorize(asker).map_err(Refusal::NotAllowed)?;
        if matches!(action, Action::Help | Action::Button) {
            return Ok(());
        }
        let admission = self
            .state
            .admit(&asker.rate_key(), self.per_minute, action != Action::Go)
            .await;
        if let Some(wait) = admission.retry_after {
            return Err(Refusal::RateLimited(wait));
        }
        if let Some(wait) = admission.planhat_paused {
            // Another replica saw a 429: this one holds back too, without calling Planhat.
            self.planhat.pause_for(wait);
            return Err(Refusal::UpstreamRateLimited(wait));
        }
        Ok(())
    }

    /// An email's end user: the reply, and the id it resolved to (for the audit trail) when it
    /// matched exactly one.
    async fn by_email(
        &self,
        asker: &Asker,
        email: String,
        action: Action,
    ) -> (Option<EndUserId>, Reply) {
        let mut matches = match self.planhat.find_by_email(&email).await {
            Ok(m) => m,
            Err(e) => return (None, self.upstream(e)),
        };
        match matches.len() {
            0 => (None, Reply::Refused(Refusal::NotFound)),
            1 => {
                let who = matches.pop();
                match who.as_ref().and_then(|w| id_of(&w.id)) {
                    Some(id) => (Some(id.clone()), self.run(asker, id, who, action).await),
                    None => (
                        None,
                        self.upstream(PlanhatError::Unusable(
                            "the matching end user has an unusable id".into(),
                        )),
                    ),
                }
            }
            n => {
                matches.truncate(MAX_CHOICES);
                (
                    None,
                    Reply::Choose {
                        email,
                        matches,
                        more: n > MAX_CHOICES,
                    },
                )
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
            let (access, scope) = self
                .beside_scope(asker, &id, who, self.planhat.check_access(&id))
                .await;
            return match (access, scope) {
                (Err(e), _) => self.upstream(e),
                (_, Err(refusal)) => Reply::Refused(refusal),
                (Ok(false), _) => Reply::Refused(Refusal::NoAccess),
                (Ok(true), Ok(who)) => match self.at_click(asker, id.clone(), who.clone()).await {
                    Some(reply) => reply,
                    // The store is full or unreachable: fall back to a link minted now (the
                    // scope was checked a moment ago).
                    None => self.mint_now(asker, id, who, false).await,
                },
            };
        }
        if !action.mints() {
            let (access, scope) = self
                .beside_scope(asker, &id, who, self.planhat.check_access(&id))
                .await;
            let (who, scope) = match scope {
                Ok(who) => (who, None),
                Err(Refusal::NotFound) => return Reply::Refused(Refusal::NotFound),
                Err(Refusal::OutOfScope(d)) => (None, Some(d)),
                Err(_) => (None, Some(ScopeDenied::LookupFailed)),
            };
            return match access {
                Ok(has_access) => Reply::Access {
                    end_user: id,
                    who,
                    has_access,
                    scope,
                },
                Err(e) => self.upstream(e),
            };
        }
        self.mint_now(asker, id, who, true).await
    }

    /// Runs `work` (the Planhat round) beside the scope check when the asker is scoped, else
    /// beside the name lookup; never one after the other. The second value is the end user's
    /// name (when known), or the scope's refusal.
    async fn beside_scope<T>(
        &self,
        asker: &Asker,
        id: &EndUserId,
        who: Option<EndUserSummary>,
        work: impl std::future::Future<Output = T>,
    ) -> (T, Result<Option<EndUserSummary>, Refusal>) {
        if !self.policy.scoped(asker) {
            return self.beside_name(id, who, work).await;
        }
        tokio::join!(work, self.scope_check(asker, id, who))
    }

    /// Runs `work` beside the name lookup (which it never waits for long).
    async fn beside_name<T>(
        &self,
        id: &EndUserId,
        who: Option<EndUserSummary>,
        work: impl std::future::Future<Output = T>,
    ) -> (T, Result<Option<EndUserSummary>, Refusal>) {
        let lookup = self.lookup_who(id, who);
        let out = work.await;
        (out, Ok(lookup.now().await))
    }

    /// `scope = "owned"`: the asker's email (from their chat platform) against the owners of
    /// the end user's company. Fails closed with the reason.
    async fn scope_check(
        &self,
        asker: &Asker,
        id: &EndUserId,
        who: Option<EndUserSummary>,
    ) -> Result<Option<EndUserSummary>, Refusal> {
        let email = match self.directory(asker.platform) {
            None => None,
            Some(d) => match d.email(asker).await {
                Ok(email) => email,
                Err(why) => {
                    tracing::warn!(platform = asker.platform.name(), error = %why, "the asker's email could not be looked up");
                    return Err(Refusal::OutOfScope(ScopeDenied::LookupFailed));
                }
            },
        };
        let Some(email) = email else {
            return Err(Refusal::OutOfScope(ScopeDenied::no_email(asker.platform)));
        };
        match self.ownership.check(&email, id, who.as_ref()).await {
            Ok(summary) => Ok(Some(summary)),
            Err(OwnershipError::NotFound) => Err(Refusal::NotFound),
            Err(OwnershipError::Denied(d)) => Err(Refusal::OutOfScope(d)),
        }
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

    /// Access check and mint at once (and the scope check beside them when `check_scope` and
    /// the asker is scoped); a URL is kept only when every answer is yes.
    async fn mint_now(
        &self,
        asker: &Asker,
        id: EndUserId,
        who: Option<EndUserSummary>,
        check_scope: bool,
    ) -> Reply {
        let before_mint = SystemTime::now();
        let round = async { tokio::join!(self.planhat.check_access(&id), self.planhat.mint(&id)) };
        let ((access, minted), scope) = if check_scope {
            self.beside_scope(asker, &id, who, round).await
        } else {
            self.beside_name(&id, who, round).await
        };
        // A URL that is not shown below is dropped here, unseen and unlogged.
        match (access, scope) {
            (Err(e), _) => self.upstream(e),
            (_, Err(refusal)) => Reply::Refused(refusal),
            (Ok(false), _) => Reply::Refused(Refusal::NoAccess),
            (Ok(true), Ok(who)) => match minted {
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
    async fn at_click(
        &self,
        asker: &Asker,
        id: EndUserId,
        who: Option<EndUserSummary>,
    ) -> Option<Reply> {
        let base = self.public_url.as_ref()?;
        let go = new_id();
        let claim = GoClaim {
            asker: asker.clone(),
            end_user: id.clone(),
            // Slack tells the bot about its asker's own click; Discord's link buttons don't.
            needs_arming: asker.platform == Platform::Slack,
        };
        if let Err(e) = self.state.issue_go(&go, &claim, self.go_lifetime).await {
            tracing::warn!(error = %e, "no /go/ link this time; the link is minted directly");
            return None;
        }
        Some(Reply::Link(PortalLink {
            url: Secret::new(format!("{base}/go/{go}")),
            end_user: id,
            who,
            expires_at: SystemTime::now() + self.go_lifetime,
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
        audited: Audited,
        reply: Reply,
        started: Instant,
    ) -> Reply {
        let took = started.elapsed();
        let outcome = reply.outcome();
        // A notice (and the copy of the end user it needs) only when a channel listens.
        let listening = self.notifier.listening();
        let notice_end_user = if listening {
            audited.end_user.clone()
        } else {
            None
        };
        let event = AuditEvent {
            time: AuditEvent::now(),
            platform: asker.platform.name(),
            team: asker.team_id.clone(),
            channel: asker.channel_id.clone(),
            asker: asker.user_id.clone(),
            action: action.name(),
            end_user: audited.end_user,
            email: audited.email,
            outcome,
            latency_ms: took.as_millis() as u64,
            company: reply.company(),
            client: None,
            user_agent: None,
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
        if listening {
            self.notify(asker, action, &reply, notice_end_user.as_deref());
        }
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

/// Whom a request was about, as the audit trail records it.
#[derive(Default)]
struct Audited {
    /// The end-user id (for an email, the one it resolved to).
    end_user: Option<String>,
    /// The email typed, for a lookup by email.
    email: Option<String>,
}

impl Audited {
    fn id(id: &EndUserId) -> Self {
        Audited {
            end_user: Some(id.to_string()),
            email: None,
        }
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

/// An id that Planhat itself gave us still goes through the same plausibility check.
pub fn id_of(text: &str) -> Option<EndUserId> {
    match super::enduser::parse_target(text) {
        Ok(Target::EndUser(id)) => Some(id),
        _ => None,
    }
}
