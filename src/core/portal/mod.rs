//! The portal-link use case: from (asker, what they typed) to what they should see.
//!
//! This is the one place where the spec's order is enforced: authorise → rate limit →
//! access check + mint (concurrently: one round trip) → URL check → audit. Adapters call
//! [`PortalService::handle`] or [`PortalService::link_for`] and render the [`Reply`]; they
//! never talk to Planhat themselves, so no adapter can skip a step.
//!
//! The use case is split by what each part does: this file admits, runs and records a
//! request; [`round`] is the Planhat round (access check, mint, name and scope beside them);
//! [`reply`] is what the asker sees. A `/go/` click finishing a request is a use case of its
//! own ([`crate::core::click`]), which comes back here for the mint.

mod find;
mod reply;
mod round;

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::access::AccessPolicy;
use super::asker::{Asker, Platform};
use super::audit::{Audit, AuditEvent};
use super::click::GoClient;
use super::command::{parse_command, Command};
use super::directory::Directory;
use super::enduser::{BadEndUser, EndUserId, Target};
use super::metrics::Metrics;
use super::names::NameCache;
use super::onetime::GoIds;
use super::ownership::{MaxAge, Ownership, ScopeDenied};
use super::planhat::Planhat;
use super::state::SharedState;

pub use self::reply::{
    access_line, choose_line, id_of, Action, PortalLink, Refusal, Reply, MAX_CHOICES,
};

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
    /// The one-time ids a `/go/` link carries.
    ids: Arc<GoIds>,
    /// `[search]`: the end-user index, when on.
    search: Option<Arc<crate::core::search::Search>>,
    /// True with `[sign_in]`: the browser proves who is there, so Slack ids need no arming, and
    /// no link is handed out without that proof (none minted directly when no `/go/` id can be
    /// issued).
    signed_in_browsers: bool,
    names: Arc<NameCache>,
    /// `scope = "owned"`: who owns which company.
    ownership: Ownership,
    /// How old an ownership answer may be at a `/go/` click (re-read when older).
    ownership_at_click: Duration,
    /// The transparency channel's outlets (`[notify]`), registered by the chat adapters.
    notifier: super::notify::Notifier,
    /// `[approvals]`: a scope refusal offers to ask the owner; grants let askers past scope.
    approvals: Option<super::config::ApprovalsConfig>,
    grants: Option<super::approvals::Grants>,
    /// `[planhat.notes]`: a Note on the company's timeline per portal opened.
    notes: Option<super::notes::Notes>,
    /// Each chat platform's directory (emails, current groups), registered at start-up.
    directories: std::sync::RwLock<std::collections::HashMap<Platform, Arc<dyn Directory>>>,
}

/// How long a cached name is served.
const NAME_TTL: Duration = Duration::from_secs(3600);
/// The name cache's ceiling, however high Planhat's budget is set: about 40,000 names.
const MAX_NAME_BYTES: u64 = 8 * 1024 * 1024;

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
        ids: Arc<GoIds>,
        signed_in_browsers: bool,
        ownership_age: MaxAge,
    ) -> Self {
        planhat.share_pauses(state.clone());
        // As many names as Planhat's budget lets through within one TTL (see `sized_for`).
        let names = Arc::new(NameCache::sized_for(
            planhat.optional_per_minute(),
            NAME_TTL,
            MAX_NAME_BYTES,
        ));
        let ownership = Ownership::new(planhat.clone(), names.clone(), ownership_age.ttl);
        PortalService {
            planhat,
            policy,
            state,
            per_minute,
            audit,
            metrics,
            link_lifetime,
            public_url: public_url.map(|u| u.as_str().trim_end_matches('/').to_string()),
            ids,
            signed_in_browsers,
            search: None,
            approvals: None,
            grants: None,
            notes: None,
            ownership,
            ownership_at_click: ownership_age.at_click,
            names,
            directories: Default::default(),
            notifier: Default::default(),
        }
    }

    /// Turns on finding end users by name, from `search`'s index.
    pub fn with_search(mut self, search: Option<Arc<crate::core::search::Search>>) -> Self {
        self.search = search;
        self
    }

    /// Turns on asking the owner: scope refusals offer it, and grants (kept in the shared state,
    /// sealed by `sealer`) let askers past scope.
    pub fn with_approvals(
        mut self,
        approvals: Option<super::config::ApprovalsConfig>,
        sealer: Arc<super::seal::Sealer>,
    ) -> Self {
        self.grants = approvals
            .is_some()
            .then(|| super::approvals::Grants::new(self.state.clone(), sealer));
        self.approvals = approvals;
        self
    }

    /// Turns on Notes on Planhat's company timelines (the writer runs apart, see
    /// [`super::notes::run`]).
    pub fn with_notes(mut self, notes: Option<super::notes::Notes>) -> Self {
        self.notes = notes;
        self
    }

    /// A portal actually opened (a link minted now, or a `/go/` click): its Note, queued.
    fn note_opened(
        &self,
        asker: &Asker,
        action: Action,
        reply: &Reply,
        grant: Option<&super::approvals::Grant>,
    ) {
        let (Some(notes), Reply::Link(link)) = (&self.notes, reply) else {
            return;
        };
        if link.at_click && action != Action::Go {
            return; // a `/go/` link handed out: nothing is open until it is clicked
        }
        let who = link.who.as_ref();
        notes.write(super::notes::note(&super::notes::Opened {
            asker,
            end_user: link.end_user.as_str(),
            end_user_name: who.and_then(|w| w.name.as_deref()),
            company_id: who.and_then(|w| w.company_id.as_deref()),
            action: if action == Action::Go { "go" } else { "link" },
            reason: grant.map(|g| g.reason.as_str()),
            approver: grant.and_then(|g| g.approver.as_deref()),
            break_glass: grant.is_some_and(|g| g.break_glass),
        }));
    }

    /// How old an ownership answer may be where a portal opens or an approval is decided.
    pub fn ownership_at_click(&self) -> Duration {
        self.ownership_at_click
    }

    /// The asker's email as their platform vouches for it (lowercased), if any.
    pub async fn asker_email_for(&self, asker: &Asker) -> Option<String> {
        self.asker_email(asker)
            .await
            .ok()
            .map(|e| e.trim().to_ascii_lowercase())
    }

    /// Records an audit event of another use case (approvals), logging a failure.
    pub async fn record(&self, event: AuditEvent) {
        if let Err(e) = self.audit.record(event).await {
            tracing::error!(error = %e, "audit event lost");
        }
    }

    /// A refusal for someone else's company, where asking the owner is on, becomes the offer
    /// to ask (and, on call, to open it anyway).
    fn offer(&self, asker: &Asker, id: &EndUserId, action: Action, reply: Reply) -> Reply {
        match (&self.approvals, &reply) {
            (Some(config), Reply::Refused(Refusal::OutOfScope(ScopeDenied::NotYours)))
                if matches!(action, Action::Link | Action::NewLink) =>
            {
                Reply::AskOwner {
                    end_user: id.clone(),
                    break_glass: super::approvals::may_break_glass(config, asker),
                }
            }
            _ => reply,
        }
    }

    /// The end-user index, when `[search]` is on.
    pub fn search(&self) -> Option<&Arc<crate::core::search::Search>> {
        self.search.as_ref()
    }

    /// The directory of `platform`'s chat, when its adapter registered one.
    pub fn directory(&self, platform: Platform) -> Option<Arc<dyn Directory>> {
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
    fn notify(
        &self,
        asker: &Asker,
        action: Action,
        reply: &Reply,
        end_user: Option<&str>,
        break_glass: bool,
    ) {
        use super::notify::{Notice, NoticeKind};
        let (kind, who) = match reply {
            Reply::Link(l) if break_glass => (NoticeKind::BreakGlass, l.who.as_ref()),
            Reply::Link(l) if action == Action::Go => (NoticeKind::Opened, l.who.as_ref()),
            Reply::Link(l) => (NoticeKind::Link, l.who.as_ref()),
            Reply::Refused(Refusal::OutOfScope(ScopeDenied::NotYours | ScopeDenied::NoneYours))
            | Reply::AskOwner { .. } => (NoticeKind::RefusedScope, None),
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

    /// `/portal <text>` from `asker`. With `[search]`, text that is not an id or an email (it
    /// has spaces, say) is a search for the end user by name.
    pub async fn handle(&self, asker: &Asker, text: &str) -> Reply {
        let command = match parse_command(text) {
            Err(BadEndUser::Whitespace | BadEndUser::BadCharacter) if self.search.is_some() => {
                Ok(Command::Find(text.trim().chars().take(200).collect()))
            }
            other => other,
        };
        self.handle_command(asker, command).await
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
            Ok(Command::Find(query)) => {
                let reply = match self.admit_without_counting(asker) {
                    Err(refusal) => Reply::Refused(refusal),
                    Ok(()) => Box::pin(self.find(asker, query)).await,
                };
                return self
                    .finish(asker, Action::Find, Audited::default(), reply, started)
                    .await;
            }
            Err(_) => (Action::Link, None),
        };
        let mut audited = match &target {
            Some(Target::EndUser(id)) => Audited::id(id),
            Some(Target::Email(email)) => Audited {
                email: Some(email.clone()),
                ..Audited::default()
            },
            _ => Audited::default(),
        };
        let reply = match (self.admit(asker, action).await, command) {
            (Err(refusal), _) => Reply::Refused(refusal),
            (Ok(()), Err(bad)) => Reply::Refused(Refusal::BadInput(bad)),
            (Ok(()), Ok(_)) => match target {
                Some(Target::EndUser(id)) => match self.find_instead(asker, id.as_str()).await {
                    Some(choices) if action == Action::Link => choices,
                    _ => {
                        let reply = self.run(asker, id.clone(), None, action).await;
                        self.offer(asker, &id, action, reply)
                    }
                },
                Some(Target::Email(email)) => {
                    let (resolved, reply) = Box::pin(self.by_email(asker, email, action)).await;
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
            Ok(()) => {
                let reply = self.run(asker, id.clone(), None, action).await;
                self.offer(asker, &id, action, reply)
            }
        };
        self.finish(asker, action, audited, reply, started).await
    }

    /// A `/go/` click's mint for its asker (as they are now): like [`Self::link_for`], with the
    /// browser in the audit event.
    pub async fn link_at_click(&self, asker: &Asker, id: EndUserId, client: &GoClient) -> Reply {
        let started = Instant::now();
        let audited = Audited {
            client: client.address.map(|a| a.to_string()),
            user_agent: client.user_agent.clone(),
            signed_in_as: client.signed_in_as.clone(),
            ..Audited::id(&id)
        };
        let reply = match self.admit(asker, Action::Go).await {
            Err(refusal) => Reply::Refused(refusal),
            Ok(()) => self.run(asker, id, None, Action::Go).await,
        };
        self.finish(asker, Action::Go, audited, reply, started)
            .await
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
            id: String::new(),
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
            signed_in_as: None,
            ..AuditEvent::default()
        };
        if let Err(e) = self.audit.record(event).await {
            tracing::error!(error = %e, "audit event lost");
        }
        self.metrics
            .request(asker.platform.name(), outcome, Duration::ZERO);
    }

    /// A record in shared state whose seal did not verify (`what`: `go`, `discord_edit`):
    /// refused by the caller; audited, counted and logged here. Someone wrote to the store
    /// without the key.
    pub async fn record_forged(&self, what: &'static str) {
        self.metrics.forged_record(what);
        tracing::warn!(
            what,
            "a record in shared state does not carry the bot's seal: refused (someone wrote to the store without the key)"
        );
        let event = AuditEvent {
            id: String::new(),
            time: AuditEvent::now(),
            platform: "web",
            team: None,
            channel: None,
            asker: "-".into(),
            action: what,
            end_user: None,
            email: None,
            outcome: "forged",
            latency_ms: 0,
            company: None,
            client: None,
            user_agent: None,
            signed_in_as: None,
            ..AuditEvent::default()
        };
        if let Err(e) = self.audit.record(event).await {
            tracing::error!(error = %e, "audit event lost");
        }
    }

    /// A search spends no Planhat call: only who may ask is checked (not the rate limit).
    fn admit_without_counting(&self, asker: &Asker) -> Result<(), Refusal> {
        self.policy.authorize(asker).map_err(Refusal::NotAllowed)
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

    /// Audit (refusing the link if a required audit fails), count, log.
    async fn finish(
        &self,
        asker: &Asker,
        action: Action,
        audited: Audited,
        reply: Reply,
        started: Instant,
    ) -> Reply {
        let grant = match &reply {
            Reply::Link(link) => link.grant.clone(),
            _ => None,
        };
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
            id: String::new(),
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
            client: audited.client,
            user_agent: audited.user_agent,
            signed_in_as: audited.signed_in_as,
            reason: grant.as_ref().map(|g| g.reason.clone()),
            approver: grant.as_ref().map(|g| {
                g.approver
                    .clone()
                    .unwrap_or_else(|| "break_glass".to_string())
            }),
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
        self.note_opened(asker, action, &reply, grant.as_ref());
        if listening {
            let break_glass = grant.as_ref().is_some_and(|g| g.break_glass);
            self.notify(
                asker,
                action,
                &reply,
                notice_end_user.as_deref(),
                break_glass,
            );
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
    /// A `/go/` click's browser: address and User-Agent, and whom it was signed in as.
    client: Option<String>,
    user_agent: Option<String>,
    signed_in_as: Option<String>,
}

impl Audited {
    fn id(id: &EndUserId) -> Self {
        Audited {
            end_user: Some(id.to_string()),
            ..Audited::default()
        }
    }
}
/// What the use case holds in memory: names, owners, the search index.
impl crate::core::held::Holds for PortalService {
    fn held(&self, out: &mut Vec<crate::core::held::Held>) {
        self.names.held(out);
        self.ownership.held(out);
        if let Some(search) = &self.search {
            search.held(out);
        }
    }

    fn counted(&self, out: &mut Vec<(&'static str, &'static str, u64)>) {
        crate::core::held::Holds::counted(&*self.names, out);
    }
}
