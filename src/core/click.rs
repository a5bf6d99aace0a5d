//! A `/go/` click: the browser hop that finishes a request asked for in chat.
//!
//! A `GET` looks and has no side effect, except where a Slack id was opened by its asker's own
//! click (see [`super::onetime::may_open`]); the page's `POST` is the deliberate act that uses
//! the id up and mints for its asker, as they are now (groups re-read, access re-checked). Every
//! attempt on an id that exists is audited, with the browser's address and User-Agent (never
//! the id), up to [`AUDITED_PER_CLIENT`] refusals a minute per client address; the rest, and
//! every attempt on an id that does not exist (which anyone can make by the thousand), are
//! counted in `portal_bot_go_unaudited_total` and logged at most once per [`LOG_EVERY`], so
//! a flood can't rotate genuine events out of the trail, fill the disk or bury the log.
//!
//! With `[sign_in]` ([`super::signin`]) the browser must be signed in as the id's asker: one
//! without a session is sent to the provider first; one signed in as someone else gets a page
//! that says so, and the id stays usable for its asker. Slack ids then need no arming.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::asker::Groups;
use super::audit::{Audit, AuditEvent};
use super::budget::ClientBudget;
use super::directory::NoEmail;
use super::metrics::Metrics;
use super::onetime::{may_open, now_ms, unix_ms, GoClaim, GoError, GoIds, Visit, ARM_WAIT};
use super::portal::{Action, PortalService, Reply};
use super::signin::{Match, ProviderKind, Session, SignIn, SignInError, LOGIN_COOKIE};
use super::throttle::LogThrottle;

/// Refused `/go/` attempts audited per client address a minute; a person clicking their own
/// links never comes near it.
pub const AUDITED_PER_CLIENT: u32 = 20;
/// Client addresses whose audit budget is remembered at once (bounded: see `core::budget`).
const CLIENTS_REMEMBERED: usize = 16_384;
/// How often, at most, attempts that are not audited are logged (the count is in the metric).
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// What a `/go/` request should get.
#[derive(Debug)]
pub enum GoView {
    /// The click minted (or was refused for a reason of the use case): redirect or say why.
    Done(Reply),
    /// Show the one-button page; its POST is the deliberate act that uses the id.
    Confirm,
    /// The id can't be used (used, unknown, expired, not armed, store unavailable, …).
    Refused(GoError),
    /// Send the browser to sign in at `url`, keeping `login` (the sign-in in progress) in its
    /// [`LOGIN_COOKIE`].
    SignIn {
        provider: ProviderKind,
        url: String,
        login: String,
    },
    /// Back to the link's page (a `POST` without a session: the `GET` sends it to sign in).
    Again,
    /// The browser is signed in as someone else (`who`): the id stays usable for its asker.
    NotYours { who: String },
    /// The company's provider is matched by email, and the asker's is not known.
    NoEmail,
    /// The provider sent the browser back signed in: set the session cookie `cookie` (named
    /// `name`), drop the login cookie, and go on to `/go/{go}`.
    SignedIn {
        name: &'static str,
        cookie: String,
        go: String,
    },
    /// The sign-in did not complete; the line says what to do.
    SignInFailed(&'static str),
}

/// The browser's cookies the click path reads (the adapter's job to find them).
pub trait Cookies: Send + Sync {
    fn get(&self, name: &str) -> Option<&str>;
}

/// The browser behind a `/go/` request, as the audit trail records it, and when its request
/// began.
#[derive(Debug, Clone)]
pub struct GoClient {
    /// The client's address: the TCP peer, or behind a trusted proxy the hop it vouches for
    /// (`adapters::forwarded`). Also the key of the per-client audit budget.
    pub address: Option<IpAddr>,
    pub user_agent: Option<String>,
    pub began: SystemTime,
    /// With `[sign_in]`: who the browser is signed in as, once known.
    pub signed_in_as: Option<String>,
}

impl Default for GoClient {
    fn default() -> Self {
        GoClient {
            address: None,
            user_agent: None,
            began: SystemTime::now(),
            signed_in_as: None,
        }
    }
}

/// The click use case. One per process.
pub struct Clicks {
    portal: Arc<PortalService>,
    ids: Arc<GoIds>,
    sign_in: Option<Arc<SignIn>>,
    audit: Arc<Audit>,
    metrics: Arc<Metrics>,
    /// Audited refusals per client a minute.
    audit_budget: ClientBudget,
    /// The sampled log lines of attempts that are not audited.
    unknown_log: LogThrottle,
    throttled_log: LogThrottle,
}

/// Where a signed-in check left a request.
enum Checked {
    /// The browser is the asker's: go on.
    Asker(Session),
    /// Answer with this instead.
    Stop(GoView),
}

impl Clicks {
    pub fn new(
        portal: Arc<PortalService>,
        ids: Arc<GoIds>,
        sign_in: Option<Arc<SignIn>>,
        audit: Arc<Audit>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Clicks {
            portal,
            ids,
            sign_in,
            audit,
            metrics,
            audit_budget: ClientBudget::new(AUDITED_PER_CLIENT, CLIENTS_REMEMBERED),
            unknown_log: LogThrottle::new(LOG_EVERY),
            throttled_log: LogThrottle::new(LOG_EVERY),
        }
    }

    /// The sign-in use case, when `[sign_in]` is on.
    pub fn sign_in(&self) -> Option<&Arc<SignIn>> {
        self.sign_in.as_ref()
    }

    fn visit(&self, client: &GoClient) -> Visit {
        Visit {
            client: self.ids.client_digest(
                &client.address.map(|a| a.to_string()).unwrap_or_default(),
                client.user_agent.as_deref().unwrap_or(""),
            ),
            began_ms: unix_ms(client.began),
        }
    }

    /// `GET /go/{id}`: the one-button page, or why the id can't be used; a Slack id opened by
    /// its asker's click mints and redirects at once. A browser that arrives before Slack's
    /// click event waits for it up to [`ARM_WAIT`].
    pub async fn get(&self, id: &str, client: &GoClient, cookies: &dyn Cookies) -> GoView {
        let visit = self.visit(client);
        let started = Instant::now();
        loop {
            let (claim, record) = match self.ids.look(id, Some(&visit)).await {
                Ok(found) => found,
                Err(e) => return self.refused(e, None, client).await,
            };
            if let Some(sign_in) = &self.sign_in {
                return match self
                    .signed_in_as_asker(sign_in, id, &claim, client, cookies, true)
                    .await
                {
                    Checked::Asker(_) => GoView::Confirm,
                    Checked::Stop(view) => view,
                };
            }
            if !claim.needs_arming {
                return GoView::Confirm;
            }
            match may_open(&claim, &record, &visit, now_ms()) {
                Ok(()) => return self.open(id, client).await,
                Err(GoError::NotArmed) if started.elapsed() < ARM_WAIT => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => return self.refused(e, Some(&claim), client).await,
            }
        }
    }

    /// `POST /go/{id}` (the page's button): uses the id up and mints, if it may be opened here.
    pub async fn post(&self, id: &str, client: &GoClient, cookies: &dyn Cookies) -> GoView {
        let visit = self.visit(client);
        let (claim, record) = match self.ids.look(id, Some(&visit)).await {
            Ok(found) => found,
            Err(e) => return self.refused(e, None, client).await,
        };
        let mut signed_in = None;
        if let Some(sign_in) = &self.sign_in {
            match self
                .signed_in_as_asker(sign_in, id, &claim, client, cookies, false)
                .await
            {
                Checked::Asker(session) => signed_in = Some(session.who()),
                Checked::Stop(view) => return view,
            }
        }
        if let Err(e) = may_open(&claim, &record, &visit, now_ms()) {
            return self.refused(e, Some(&claim), client).await;
        }
        let client = GoClient {
            signed_in_as: signed_in,
            ..client.clone()
        };
        self.open(id, &client).await
    }

    /// With `[sign_in]`: whether the browser is signed in as the id's asker. Without a session
    /// it is sent to sign in (`start`, from a `GET`) or back to the page (`POST`); signed in as
    /// someone else, it is told so (and the attempt audited).
    async fn signed_in_as_asker(
        &self,
        sign_in: &SignIn,
        id: &str,
        claim: &GoClaim,
        client: &GoClient,
        cookies: &dyn Cookies,
        start: bool,
    ) -> Checked {
        let Some(kind) = sign_in.provider_for(claim.asker.platform) else {
            return Checked::Stop(self.refused(GoError::Unknown, Some(claim), client).await);
        };
        let Some(session) = sign_in.session(kind, cookies.get(SignIn::cookie_name(kind))) else {
            if !start {
                return Checked::Stop(GoView::Again);
            }
            return Checked::Stop(match sign_in.start(kind, id).await {
                Ok((url, login)) => GoView::SignIn {
                    provider: kind,
                    url,
                    login,
                },
                Err(e) => {
                    tracing::warn!(provider = kind.name(), error = %e, "a sign-in could not start");
                    GoView::SignInFailed("Sign-in is not available right now. Try again in a moment: the link still works.")
                }
            });
        };
        let email = if kind == ProviderKind::Oidc {
            match self.portal.directory(claim.asker.platform) {
                None => None,
                Some(d) => match d.email(&claim.asker).await {
                    Ok(email) => Some(email),
                    // Missing, or one the platform doesn't vouch for: nothing to match.
                    Err(
                        NoEmail::Missing
                        | NoEmail::Deactivated
                        | NoEmail::External
                        | NoEmail::Unconfirmed,
                    ) => None,
                    Err(why @ NoEmail::Unavailable(_)) => {
                        tracing::warn!(error = %why, "the asker's email could not be looked up for a sign-in match");
                        return Checked::Stop(
                            self.refused(GoError::Unavailable, Some(claim), client)
                                .await,
                        );
                    }
                },
            }
        } else {
            None
        };
        match sign_in.matches(&session, &claim.asker, email.as_deref()) {
            Match::Yes => Checked::Asker(session),
            Match::SomeoneElse(who) => {
                let client = GoClient {
                    signed_in_as: Some(who.clone()),
                    ..client.clone()
                };
                self.record(Some(claim), &client, "not_yours").await;
                Checked::Stop(GoView::NotYours { who })
            }
            Match::NoEmail => {
                self.record(Some(claim), client, "no_email").await;
                Checked::Stop(GoView::NoEmail)
            }
        }
    }

    /// `GET /go/signed-in`: the provider sent the browser back. With `error` (the person
    /// declined, or the provider refused) or anything that does not verify, no session.
    pub async fn signed_in(
        &self,
        code: Option<&str>,
        state: Option<&str>,
        error: Option<&str>,
        client: &GoClient,
        cookies: &dyn Cookies,
    ) -> GoView {
        let Some(sign_in) = &self.sign_in else {
            return GoView::Refused(GoError::Unknown);
        };
        let result = match (code, state, error) {
            (_, _, Some(e)) => Err(SignInError::Declined(
                e.chars()
                    .take(64)
                    .filter(|c| c.is_ascii_graphic())
                    .collect(),
            )),
            (Some(code), Some(state), None) => {
                sign_in.finish(code, state, cookies.get(LOGIN_COOKIE)).await
            }
            _ => Err(SignInError::Refused("no code or state".into())),
        };
        match result {
            Ok((session, cookie, go)) => {
                let client = GoClient {
                    signed_in_as: Some(session.who()),
                    ..client.clone()
                };
                self.record(None, &client, "signed_in").await;
                GoView::SignedIn {
                    name: SignIn::cookie_name(session.provider),
                    cookie,
                    go,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, client = client.address.map(tracing::field::display), "a sign-in failed");
                self.record(None, client, "sign_in_failed").await;
                GoView::SignInFailed(match e {
                    SignInError::NoLogin => "This sign-in has expired, or was started in another browser. Open the link again.",
                    SignInError::Declined(_) => "The sign-in was cancelled or refused, so the link did not open. Open it again to sign in.",
                    _ => "The sign-in could not be verified, so the link did not open. Open it again; tell the bot's admins if it keeps happening.",
                })
            }
        }
    }

    /// `HEAD /go/{id}`: whether the id could be used, using nothing (and noting the browser,
    /// like any request before a Slack click).
    pub async fn head(&self, id: &str, client: &GoClient) -> Result<(), GoError> {
        let visit = self.visit(client);
        self.ids.look(id, Some(&visit)).await.map(|_| ())
    }

    /// Slack says `user_id` clicked the button of `id` at `clicked_ms` (Slack's time): if it is
    /// theirs, the browser that click opened may open it now.
    pub async fn arm(&self, id: &str, user_id: &str, clicked_ms: u64) -> bool {
        self.ids.arm(id, user_id, clicked_ms).await
    }

    /// Uses the id up, then runs the whole flow for its asker and end user (re-authorised with
    /// their groups as they are now, access re-checked, minted now, audited with the browser).
    /// A click refused for a passing reason leaves the id usable.
    async fn open(&self, id: &str, client: &GoClient) -> GoView {
        let claim = match self.ids.take(id).await {
            Ok(claim) => claim,
            Err(e) => return self.refused(e, None, client).await,
        };
        let mut asker = claim.asker;
        if self.portal.policy().uses_groups_on(asker.platform) {
            asker.groups = match self.portal.directory(asker.platform) {
                Some(d) => d.groups_now(&asker).await,
                None => Groups::Unknown,
            };
        }
        let reply = self
            .portal
            .link_at_click(&asker, claim.end_user, client)
            .await;
        if let Reply::Refused(r) = &reply {
            if r.is_passing() {
                self.ids.release(id).await;
            }
        }
        GoView::Done(reply)
    }

    /// A `/go/` attempt that could not use its id: audited (never the id; whose it was, when
    /// known), counted, logged; an id that does not exist only counted and sampled.
    async fn refused(&self, e: GoError, claim: Option<&GoClaim>, client: &GoClient) -> GoView {
        if e == GoError::Unknown && claim.is_none() {
            self.metrics.request("web", e.kind(), Duration::ZERO);
            self.metrics.go_unaudited("unknown");
            if let Some(refused) = self.unknown_log.hit() {
                tracing::info!(
                    refused,
                    "/go/ requests for ids that don't exist (count since the last such line; not audited, every one is in portal_bot_go_unaudited_total)"
                );
            }
            return GoView::Refused(e);
        }
        if e == GoError::Forged {
            self.metrics.forged_record("go");
            tracing::warn!("a /go/ record in shared state does not carry the bot's seal: refused (someone wrote to the store without the key)");
        }
        self.record(claim, client, e.kind()).await;
        GoView::Refused(e)
    }

    /// Audits, counts and logs a `/go/` attempt that did not mint (`outcome`), with whose id it
    /// was when known, and the browser; past the client's audit budget, only counts it.
    async fn record(&self, claim: Option<&GoClaim>, client: &GoClient, outcome: &'static str) {
        self.metrics.request("web", outcome, Duration::ZERO);
        if let Some(address) = client.address {
            if !self.audit_budget.take(address) {
                self.metrics.go_unaudited("throttled");
                if let Some(refused) = self.throttled_log.hit() {
                    tracing::warn!(
                        refused,
                        latest = outcome,
                        per_minute = AUDITED_PER_CLIENT,
                        "/go/ refusals over a client's audit budget (count since the last such line; not audited, every one is in portal_bot_go_unaudited_total)"
                    );
                }
                return;
            }
        }
        let event = AuditEvent {
            id: String::new(),
            time: AuditEvent::now(),
            platform: "web",
            team: claim.and_then(|c| c.asker.team_id.clone()),
            channel: claim.and_then(|c| c.asker.channel_id.clone()),
            asker: claim.map_or_else(|| "-".into(), |c| c.asker.user_id.clone()),
            action: Action::Go.name(),
            end_user: claim.map(|c| c.end_user.to_string()),
            outcome,
            client: client.address.map(|a| a.to_string()),
            user_agent: client.user_agent.clone(),
            signed_in_as: client.signed_in_as.clone(),
            ..AuditEvent::default()
        };
        if let Err(err) = self.audit.record(event).await {
            tracing::error!(error = %err, "audit event lost");
        }
        tracing::info!(
            outcome,
            client = client.address.map(tracing::field::display),
            "a /go/ link did not open"
        );
    }
}
