//! Asking the owner (`[approvals]`): the middle path between `scope = "owned"`'s flat refusal
//! and `scope = "any"`.
//!
//! A scoped asker refused for someone else's company may ask its owner: a [`Request`] with a
//! reason goes to the company's owner and co-owner (the chat adapters find them by the emails
//! the ownership chain knows) and to the approvers' channel. Whoever may decide (the owner, the
//! co-owner, an admin, an approver group; never the asker) approves or denies it once; an
//! approval is a [`Grant`]: for `grant_for`, that asker passes scope for that company. On call,
//! the break-glass groups grant themselves a short one with a stated reason, and the owners are
//! told afterwards. Every step is audited with its reason.
//!
//! Requests, decisions and grants live in shared state, so a request made through one replica
//! is decided through another. Each record is sealed ([`Sealer`]) under its key, so write
//! access to the store can't forge an approval; a decision is written once
//! ([`SharedState::put_record_once`]), so two owners clicking at once make one decision.
//! Nothing here knows Slack or Discord: adapters post what [`Requested`] and [`Decided`] say.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::RngExt;
use serde::{Deserialize, Serialize};

use super::access::Denied;
use super::asker::{Asker, Groups, Platform};
use super::audit::AuditEvent;
use super::config::ApprovalsConfig;
use super::enduser::EndUserId;
use super::onetime::now_ms;
use super::ownership::{OwnershipError, ScopeDenied};
use super::portal::{Action, PortalService, Reply};
use super::seal::{Purpose, Sealer};
use super::state::SharedState;
use super::text;

/// A break-glass grant lasts this long (or `grant_for`, if shorter): long enough to open the
/// link it came with (a `/go/` link lives ten minutes), not a standing pass.
pub const BREAK_GLASS_FOR: Duration = Duration::from_secs(15 * 60);
/// Characters of a reason kept (the rest is cut, marked `…`).
pub const MAX_REASON: usize = 500;
/// A decided request is remembered this much longer than its lifetime, so late clicks on its
/// buttons are told what happened rather than "unknown".
const DECISION_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Where an adapter posted a request (so it can update it in place): opaque to the core.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posted {
    pub platform: Platform,
    pub channel: String,
    /// The message's id on its platform (Slack's `ts`, Discord's message id).
    pub message: String,
}

/// A request to open a company's end users, waiting for a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// 128 random bits, hex: the key of the request and the value of its buttons.
    pub id: String,
    pub asker: Asker,
    pub end_user: String,
    /// The end user's name and company as Planhat gave them (sanitised: one line).
    pub end_user_name: Option<String>,
    pub company_id: String,
    pub company: Option<String>,
    /// Sanitised, one line, at most [`MAX_REASON`] characters.
    pub reason: String,
    pub expires_ms: u64,
    /// The owners' emails (lowercased) the request went to.
    pub owners: Vec<String>,
    /// Where the request was posted, as the adapters report it.
    #[serde(default)]
    pub posted: Vec<Posted>,
}

impl Request {
    /// The end user as shown: their name, else their id.
    pub fn whom(&self) -> String {
        self.end_user_name
            .clone()
            .unwrap_or_else(|| self.end_user.clone())
    }

    /// The company as shown: its name, else its id.
    pub fn company_shown(&self) -> String {
        self.company
            .clone()
            .unwrap_or_else(|| self.company_id.clone())
    }
}

/// What was decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Verdict {
    Approved,
    Denied { reason: Option<String> },
    Expired,
}

impl Verdict {
    /// A denial's reason, if it gave one.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Verdict::Denied { reason } => reason.as_deref(),
            _ => None,
        }
    }
}

/// A decision, as stored (once) and reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub verdict: Verdict,
    /// Who decided (none for an expiry).
    pub by: Option<Asker>,
    pub at_ms: u64,
    /// Approved: the grant lasts until then.
    pub until_ms: Option<u64>,
}

/// Leave to open one company's end users: from an approval or from break-glass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// `slack:U123`: who approved; none for break-glass.
    pub approver: Option<String>,
    pub reason: String,
    pub until_ms: u64,
    pub break_glass: bool,
}

/// A chat platform's side of asking the owner, registered by its adapter
/// ([`Approvals::register_chat`]): the core decides, the chats carry the messages. A request
/// goes to the owners on every platform where the bot can find them by email.
#[async_trait::async_trait]
pub trait ApprovalChat: Send + Sync {
    /// Sends `request` to its owners (by email, skipping the asker) and this platform's
    /// approvers' channel; where it was posted.
    async fn post_request(&self, request: &Request) -> Vec<Posted>;
    /// Updates this platform's copies of a decided request, and tells its asker when they are
    /// on this platform.
    async fn announce(&self, decided: &Decided);
    /// Tells these owners (emails) that `asker` opened `end_user`'s portal (of `company`) on
    /// call, for `reason`.
    async fn tell_owners(
        &self,
        owners: &[String],
        asker: &Asker,
        end_user: &str,
        company: &str,
        reason: &str,
    );
}

/// A request made: the adapters send it to these owners (and the approvers' channel).
#[derive(Debug, Clone)]
pub struct Requested {
    pub request: Request,
}

/// A decision taken: the adapters update every posted copy and tell the asker.
#[derive(Debug, Clone)]
pub struct Decided {
    pub request: Request,
    pub decision: Decision,
}

/// A break-glass request answered: the reply for the asker (the owners were told).
#[derive(Debug)]
pub struct BrokeGlass {
    pub reply: Reply,
}

/// Why a request, decision or break-glass did not happen. `Display` is the line the person
/// sees; it names no one else's customer to someone who may not see it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalRefusal {
    #[error("Asking the owner is not set up here.")]
    Off,
    #[error("Please give a reason of at least {0} characters: the owner decides on it.")]
    ReasonTooShort(usize),
    #[error("{0}")]
    NotAllowed(Denied),
    #[error("You may already open this end user's portal: no need to ask. Try /portal again.")]
    AlreadyYours,
    #[error("{0}")]
    Scope(ScopeDenied),
    #[error("Planhat has no such end user.")]
    NotFound,
    #[error("This request is no longer open (it expired, or was never made).")]
    Gone,
    #[error("You can't decide your own request: it needs someone else.")]
    OwnRequest,
    #[error(
        "Only the company's owner or co-owner, an admin or an approver may decide this request."
    )]
    NotApprover,
    #[error("This request was already decided.")]
    AlreadyDecided,
    #[error("Only on-call (break-glass) members may open a portal this way.")]
    NotOnCall,
    #[error("The bot can't record this right now (its shared store is not answering); try again in a moment.")]
    Unavailable,
}

impl ApprovalRefusal {
    /// Stable outcome name for the audit trail.
    pub fn kind(&self) -> &'static str {
        match self {
            ApprovalRefusal::Off => "off",
            ApprovalRefusal::ReasonTooShort(_) => "invalid_input",
            ApprovalRefusal::NotAllowed(_) => "denied",
            ApprovalRefusal::AlreadyYours => "in_scope",
            ApprovalRefusal::Scope(_) => "out_of_scope",
            ApprovalRefusal::NotFound => "not_found",
            ApprovalRefusal::Gone => "gone",
            ApprovalRefusal::OwnRequest => "own_request",
            ApprovalRefusal::NotApprover => "not_approver",
            ApprovalRefusal::AlreadyDecided => "already_decided",
            ApprovalRefusal::NotOnCall => "not_on_call",
            ApprovalRefusal::Unavailable => "state_unavailable",
        }
    }
}

/// The use case. One per process.
pub struct Approvals {
    portal: Arc<PortalService>,
    config: ApprovalsConfig,
    state: Arc<dyn SharedState>,
    sealer: Arc<Sealer>,
    grants: Grants,
    chats: std::sync::RwLock<Vec<Arc<dyn ApprovalChat>>>,
    shutdown: crate::shutdown::Shutdown,
}

/// The grants, as the portal use case reads them when scope says "not yours".
pub struct Grants {
    state: Arc<dyn SharedState>,
    sealer: Arc<Sealer>,
}

fn grant_key(asker: &Asker, company_id: &str) -> String {
    format!(
        "grant:{}:{}:{company_id}",
        asker.platform.name(),
        asker.user_id
    )
}

fn at(ms: u64) -> SystemTime {
    std::time::UNIX_EPOCH + Duration::from_millis(ms)
}

impl Grants {
    /// Grants kept in `state`, sealed with `sealer`.
    pub fn new(state: Arc<dyn SharedState>, sealer: Arc<Sealer>) -> Self {
        Grants { state, sealer }
    }

    /// The live grant that lets `asker` open `company_id`'s end users, if any.
    pub async fn of(&self, asker: &Asker, company_id: &str) -> Option<Grant> {
        let key = grant_key(asker, company_id);
        let stored = self.state.get_record(&key).await.ok()??;
        let Ok(data) = self.sealer.open(Purpose::Approval, &key, &stored) else {
            tracing::warn!("a grant in shared state does not carry the bot's seal: ignored");
            return None;
        };
        let grant: Grant = serde_json::from_str(data).ok()?;
        (grant.until_ms > now_ms()).then_some(grant)
    }

    async fn put(&self, asker: &Asker, company_id: &str, grant: &Grant) -> Result<(), ()> {
        let key = grant_key(asker, company_id);
        let data = serde_json::to_string(grant).map_err(|_| ())?;
        let ttl = Duration::from_millis(grant.until_ms.saturating_sub(now_ms()).max(1));
        self.state
            .put_record(&key, &self.sealer.seal(Purpose::Approval, &key, &data), ttl)
            .await
            .map_err(|e| tracing::warn!(error = %e, "a grant could not be stored"))
    }
}

fn in_groups(asker: &Asker, slack: &[String], discord: &[u64]) -> bool {
    let Groups::Known(mine) = &asker.groups else {
        return false;
    };
    match asker.platform {
        Platform::Slack => mine.iter().any(|g| slack.contains(g)),
        Platform::Discord => mine
            .iter()
            .any(|g| discord.iter().any(|d| d.to_string() == *g)),
        Platform::Cli => false,
    }
}

/// On call under `config`: a member of a break-glass group (as the asker's groups are known).
pub fn may_break_glass(config: &ApprovalsConfig, asker: &Asker) -> bool {
    in_groups(
        asker,
        &config.break_glass_slack_usergroups,
        &config.break_glass_discord_roles,
    )
}

/// The parts of a decision as one platform shows them (escaped for its markup by the caller),
/// for [`decided_line`] and [`asker_line`], which word them once for every platform.
pub struct Shown<'a> {
    /// Who decided (a mention), empty for an expiry.
    pub by: &'a str,
    pub whom: &'a str,
    pub company: &'a str,
    /// When the grant ends.
    pub until: &'a str,
    /// A denial's reason.
    pub reason: Option<&'a str>,
}

fn because(reason: Option<&str>) -> String {
    reason.map(|r| format!(": {r}")).unwrap_or_default()
}

/// The line under a decided request, where its buttons were.
pub fn decided_line(verdict: &Verdict, s: &Shown<'_>) -> String {
    match verdict {
        Verdict::Approved => format!(
            "Approved by {}: they may open {}'s end users until {}.",
            s.by, s.company, s.until
        ),
        Verdict::Denied { .. } => format!("Denied by {}{}.", s.by, because(s.reason)),
        Verdict::Expired => "Expired: nobody decided in time.".to_string(),
    }
}

/// What the asker is told of their request's end.
pub fn asker_line(verdict: &Verdict, s: &Shown<'_>) -> String {
    match verdict {
        Verdict::Approved => format!(
            "{} approved your request: you may open {}'s end users until {}. Press the button for a link as {} (or use /portal).",
            s.by, s.company, s.until, s.whom
        ),
        Verdict::Denied { .. } => format!(
            "{} denied your request to open {}'s portal{}.",
            s.by,
            s.whom,
            because(s.reason)
        ),
        Verdict::Expired => format!(
            "Your request to open {}'s portal expired: nobody decided in time. Ask again, or ask an admin (on-call).",
            s.whom
        ),
    }
}

/// A reason as kept: one line without format characters, at most [`MAX_REASON`] characters.
pub fn clean_reason(text: &str) -> String {
    text::one_line(text, MAX_REASON)
}

impl Approvals {
    /// The use case over the portal service (which mints, audits and holds the grants).
    pub fn new(
        portal: Arc<PortalService>,
        config: ApprovalsConfig,
        state: Arc<dyn SharedState>,
        sealer: Arc<Sealer>,
        shutdown: crate::shutdown::Shutdown,
    ) -> Self {
        Approvals {
            portal,
            config,
            grants: Grants::new(state.clone(), sealer.clone()),
            state,
            sealer,
            chats: std::sync::RwLock::new(Vec::new()),
            shutdown,
        }
    }

    /// A chat adapter registers its side (at start-up).
    pub fn register_chat(&self, chat: Arc<dyn ApprovalChat>) {
        self.chats
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(chat);
    }

    fn chats(&self) -> Vec<Arc<dyn ApprovalChat>> {
        self.chats.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Every chat updates its copies and tells the asker.
    async fn announce(&self, decided: &Decided) {
        let chats = self.chats();
        futures_util::future::join_all(chats.iter().map(|c| c.announce(decided))).await;
    }

    /// `[approvals]` as configured.
    pub fn config(&self) -> &ApprovalsConfig {
        &self.config
    }

    /// The Slack user groups this use case asks about (approvers, break-glass).
    pub fn slack_usergroups(&self) -> Vec<String> {
        let mut all = self.config.approver_slack_usergroups.clone();
        all.extend(self.config.break_glass_slack_usergroups.iter().cloned());
        all
    }

    /// On call: a member of a break-glass group.
    pub fn may_break_glass(&self, asker: &Asker) -> bool {
        may_break_glass(&self.config, asker)
    }

    fn reason(&self, text: &str) -> Result<String, ApprovalRefusal> {
        let reason = clean_reason(text);
        if reason.chars().count() < self.config.reason_min_chars {
            return Err(ApprovalRefusal::ReasonTooShort(
                self.config.reason_min_chars,
            ));
        }
        Ok(reason)
    }

    /// Checks a reason before anything else happens (a form shows the error in place).
    pub fn check_reason(&self, text: &str) -> Result<(), ApprovalRefusal> {
        self.reason(text).map(|_| ())
    }

    /// `asker` asks to open `end_user`'s portal, whose company is not theirs, for `reason`:
    /// stored, audited, sent through every chat, and expired in time unless decided first.
    /// The request's `posted` says where it reached (empty: no owner could be found).
    pub async fn request(
        self: &Arc<Self>,
        asker: &Asker,
        end_user: EndUserId,
        reason: &str,
    ) -> Result<Requested, ApprovalRefusal> {
        let mut result = self.make_request(asker, &end_user, reason).await;
        if let Ok(made) = &mut result {
            let chats = self.chats();
            let posted: Vec<Posted> =
                futures_util::future::join_all(chats.iter().map(|c| c.post_request(&made.request)))
                    .await
                    .into_iter()
                    .flatten()
                    .collect();
            made.request.posted = posted;
            let _ = self.store(&made.request).await;
            self.expire_in_time(&made.request);
        }
        let (outcome, reason, company) = match &result {
            Ok(r) => (
                "ok",
                Some(r.request.reason.clone()),
                r.request.company.clone(),
            ),
            Err(e) => (e.kind(), Some(clean_reason(reason)), None),
        };
        self.audit(
            asker,
            "request",
            Some(end_user.as_str()),
            outcome,
            reason,
            None,
            company,
        )
        .await;
        result
    }

    async fn make_request(
        &self,
        asker: &Asker,
        end_user: &EndUserId,
        reason: &str,
    ) -> Result<Requested, ApprovalRefusal> {
        let reason = self.reason(reason)?;
        let portal = &self.portal;
        portal
            .policy()
            .authorize(asker)
            .map_err(ApprovalRefusal::NotAllowed)?;
        if !portal.policy().scoped(asker) {
            return Err(ApprovalRefusal::AlreadyYours);
        }
        let company = self.company(end_user).await?;
        let email = portal.asker_email_for(asker).await;
        if email.is_some_and(|e| company.owner_emails.contains(&e)) {
            return Err(ApprovalRefusal::AlreadyYours);
        }
        let mut bytes = [0u8; 16];
        rand::rng().fill(&mut bytes);
        let request = Request {
            id: hex::encode(bytes),
            asker: asker.clone(),
            end_user: end_user.to_string(),
            end_user_name: company.end_user.name.as_deref().map(text::name),
            company_id: company.company_id.clone(),
            company: company.name.as_deref().map(text::name),
            reason,
            expires_ms: now_ms() + self.config.request_ttl.as_millis() as u64,
            owners: company.owner_emails.clone(),
            posted: Vec::new(),
        };
        self.store(&request).await?;
        Ok(Requested { request })
    }

    async fn company(
        &self,
        end_user: &EndUserId,
    ) -> Result<super::ownership::OwnedCompany, ApprovalRefusal> {
        match self
            .portal
            .ownership()
            .company(end_user, None, self.portal.ownership_at_click())
            .await
        {
            Ok(c) => Ok(c),
            Err(OwnershipError::NotFound) => Err(ApprovalRefusal::NotFound),
            Err(OwnershipError::Denied(d)) => Err(ApprovalRefusal::Scope(d)),
        }
    }

    fn request_key(id: &str) -> String {
        format!("approval:{id}")
    }

    fn decision_key(id: &str) -> String {
        format!("decision:{id}")
    }

    async fn store(&self, request: &Request) -> Result<(), ApprovalRefusal> {
        let key = Self::request_key(&request.id);
        let data = serde_json::to_string(request).map_err(|_| ApprovalRefusal::Unavailable)?;
        self.state
            .put_record(
                &key,
                &self.sealer.seal(Purpose::Approval, &key, &data),
                self.config.request_ttl + DECISION_GRACE,
            )
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "an approval request could not be stored");
                ApprovalRefusal::Unavailable
            })
    }

    /// The request under `id`, if it exists and carries the bot's seal.
    pub async fn find(&self, id: &str) -> Result<Request, ApprovalRefusal> {
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApprovalRefusal::Gone);
        }
        let key = Self::request_key(id);
        let stored = self
            .state
            .get_record(&key)
            .await
            .map_err(|_| ApprovalRefusal::Unavailable)?
            .ok_or(ApprovalRefusal::Gone)?;
        let Ok(data) = self.sealer.open(Purpose::Approval, &key, &stored) else {
            self.portal.record_forged("approval").await;
            return Err(ApprovalRefusal::Gone);
        };
        serde_json::from_str(data).map_err(|_| ApprovalRefusal::Gone)
    }

    /// The replica that took a request expires it on time (a decision taken first, on any
    /// replica, makes this do nothing; a click after the time is refused in any case).
    fn expire_in_time(self: &Arc<Self>, request: &Request) {
        let me = self.clone();
        let id = request.id.clone();
        let mut shutdown = self.shutdown.clone();
        let wait = Self::expires(request)
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.fired() => return,
            }
            me.expire(&id).await;
        });
    }

    /// The decision already taken on `id`, if any.
    pub async fn decision(&self, id: &str) -> Option<Decision> {
        let key = Self::decision_key(id);
        let stored = self.state.get_record(&key).await.ok()??;
        let data = self.sealer.open(Purpose::Approval, &key, &stored).ok()?;
        serde_json::from_str(data).ok()
    }

    /// May `decider` decide requests for this company? Owner or co-owner (by their email, as
    /// their platform vouches for it), an admin, or an approver group; checked at the click.
    async fn may_decide(&self, decider: &Asker, request: &Request) -> bool {
        if self.portal.policy().is_admin(decider)
            || in_groups(
                decider,
                &self.config.approver_slack_usergroups,
                &self.config.approver_discord_roles,
            )
        {
            return true;
        }
        let Some(email) = self.portal.asker_email_for(decider).await else {
            return false;
        };
        // The owners as they are now, not as they were when the request was made.
        match super::portal::id_of(&request.end_user) {
            Some(id) => self
                .company(&id)
                .await
                .is_ok_and(|c| c.owner_emails.contains(&email)),
            None => false,
        }
    }

    /// `decider` approves (`verdict` Approved) or denies request `id`. Exactly one decision
    /// is taken per request, whichever replica the clicks reach.
    pub async fn decide(
        &self,
        decider: &Asker,
        id: &str,
        verdict: Verdict,
    ) -> Result<Decided, ApprovalRefusal> {
        let action = match verdict {
            Verdict::Approved => "approve",
            _ => "deny",
        };
        let result = self.take_decision(decider, id, verdict).await;
        if let Ok(decided) = &result {
            self.announce(decided).await;
        }
        let (end_user, company, reason, outcome) = match &result {
            Ok(d) => (
                Some(d.request.end_user.clone()),
                d.request.company.clone(),
                match &d.decision.verdict {
                    Verdict::Denied { reason } => reason.clone(),
                    _ => Some(d.request.reason.clone()),
                },
                "ok",
            ),
            Err(e) => (None, None, None, e.kind()),
        };
        // Decided: the event is the requester's, with the decider as `approver`. Refused: the
        // event is the clicker's.
        let (who, approver) = match &result {
            Ok(d) => (
                d.request.asker.clone(),
                Some(format!("{}:{}", decider.platform, decider.user_id)),
            ),
            Err(_) => (decider.clone(), None),
        };
        self.audit(
            &who,
            action,
            end_user.as_deref(),
            outcome,
            reason,
            approver,
            company,
        )
        .await;
        result
    }

    async fn take_decision(
        &self,
        decider: &Asker,
        id: &str,
        verdict: Verdict,
    ) -> Result<Decided, ApprovalRefusal> {
        let request = self.find(id).await?;
        if now_ms() >= request.expires_ms {
            return Err(ApprovalRefusal::Gone);
        }
        if decider.platform == request.asker.platform && decider.user_id == request.asker.user_id {
            return Err(ApprovalRefusal::OwnRequest);
        }
        if !self.may_decide(decider, &request).await {
            return Err(ApprovalRefusal::NotApprover);
        }
        let now = now_ms();
        let until_ms = matches!(verdict, Verdict::Approved)
            .then(|| now + self.config.grant_for.as_millis() as u64);
        let verdict = match verdict {
            Verdict::Denied { reason } => Verdict::Denied {
                reason: reason.map(|r| clean_reason(&r)).filter(|r| !r.is_empty()),
            },
            v => v,
        };
        let decision = Decision {
            verdict,
            by: Some(decider.clone()),
            at_ms: now,
            until_ms,
        };
        self.write_decision(&request, &decision).await?;
        if let Some(until_ms) = until_ms {
            let grant = Grant {
                approver: Some(format!("{}:{}", decider.platform, decider.user_id)),
                reason: request.reason.clone(),
                until_ms,
                break_glass: false,
            };
            if self
                .grants
                .put(&request.asker, &request.company_id, &grant)
                .await
                .is_err()
            {
                return Err(ApprovalRefusal::Unavailable);
            }
        }
        Ok(Decided { request, decision })
    }

    /// Writes the decision once: false when one was already there.
    async fn write_decision(
        &self,
        request: &Request,
        decision: &Decision,
    ) -> Result<(), ApprovalRefusal> {
        let key = Self::decision_key(&request.id);
        let data = serde_json::to_string(decision).map_err(|_| ApprovalRefusal::Unavailable)?;
        let first = self
            .state
            .put_record_once(
                &key,
                &self.sealer.seal(Purpose::Approval, &key, &data),
                self.config.request_ttl + DECISION_GRACE,
            )
            .await
            .map_err(|_| ApprovalRefusal::Unavailable)?;
        if first {
            Ok(())
        } else {
            Err(ApprovalRefusal::AlreadyDecided)
        }
    }

    /// Request `id`'s time is up: marked expired unless someone decided it first, then
    /// announced. `None`: nothing to tell anyone (decided, or gone).
    pub async fn expire(&self, id: &str) -> Option<Decided> {
        let request = self.find(id).await.ok()?;
        if now_ms() < request.expires_ms {
            return None;
        }
        let decision = Decision {
            verdict: Verdict::Expired,
            by: None,
            at_ms: now_ms(),
            until_ms: None,
        };
        self.write_decision(&request, &decision).await.ok()?;
        let asker = request.asker.clone();
        self.audit(
            &asker,
            "expire",
            Some(&request.end_user),
            "ok",
            Some(request.reason.clone()),
            None,
            request.company.clone(),
        )
        .await;
        let decided = Decided { request, decision };
        self.announce(&decided).await;
        Some(decided)
    }

    /// On call: `asker` (a break-glass member) opens `end_user`'s portal for `reason`. A
    /// short grant is recorded (so a `/go/` click, which checks scope again, passes), the link
    /// is made like any other, and the owners are returned to be told.
    pub async fn break_glass(
        &self,
        asker: &Asker,
        end_user: EndUserId,
        reason: &str,
    ) -> Result<BrokeGlass, ApprovalRefusal> {
        let granted = self.grant_break_glass(asker, &end_user, reason).await;
        let (outcome, company) = match &granted {
            Ok(c) => ("ok", c.name.clone()),
            Err(e) => (e.kind(), None),
        };
        self.audit(
            asker,
            "break_glass",
            Some(end_user.as_str()),
            outcome,
            Some(clean_reason(reason)),
            None,
            company,
        )
        .await;
        let company = granted?;
        let reply = self
            .portal
            .link_for(asker, end_user.clone(), Action::Link)
            .await;
        if matches!(reply, Reply::Link(_)) {
            // The owners are told afterwards, on every chat where the bot finds them.
            let shown = company.name.clone().unwrap_or(company.company_id.clone());
            let reason = clean_reason(reason);
            let chats = self.chats();
            futures_util::future::join_all(chats.iter().map(|c| {
                c.tell_owners(
                    &company.owner_emails,
                    asker,
                    end_user.as_str(),
                    &shown,
                    &reason,
                )
            }))
            .await;
        }
        Ok(BrokeGlass { reply })
    }

    async fn grant_break_glass(
        &self,
        asker: &Asker,
        end_user: &EndUserId,
        reason: &str,
    ) -> Result<super::ownership::OwnedCompany, ApprovalRefusal> {
        let reason = self.reason(reason)?;
        self.portal
            .policy()
            .authorize(asker)
            .map_err(ApprovalRefusal::NotAllowed)?;
        if !self.may_break_glass(asker) {
            return Err(ApprovalRefusal::NotOnCall);
        }
        let company = self.company(end_user).await?;
        let grant = Grant {
            approver: None,
            reason,
            until_ms: now_ms() + BREAK_GLASS_FOR.min(self.config.grant_for).as_millis() as u64,
            break_glass: true,
        };
        self.grants
            .put(asker, &company.company_id, &grant)
            .await
            .map_err(|_| ApprovalRefusal::Unavailable)?;
        Ok(company)
    }

    /// When request `id`'s grant ends, for the asker's message.
    pub fn until(decision: &Decision) -> Option<SystemTime> {
        decision.until_ms.map(at)
    }

    /// When a request expires.
    pub fn expires(request: &Request) -> SystemTime {
        at(request.expires_ms)
    }

    #[allow(clippy::too_many_arguments)]
    async fn audit(
        &self,
        asker: &Asker,
        action: &'static str,
        end_user: Option<&str>,
        outcome: &'static str,
        reason: Option<String>,
        approver: Option<String>,
        company: Option<String>,
    ) {
        let event = AuditEvent {
            time: AuditEvent::now(),
            platform: asker.platform.name(),
            team: asker.team_id.clone(),
            channel: asker.channel_id.clone(),
            asker: asker.user_id.clone(),
            action,
            end_user: end_user.map(str::to_string),
            outcome,
            company,
            reason,
            approver,
            ..AuditEvent::default()
        };
        self.portal.record(event).await;
    }
}
