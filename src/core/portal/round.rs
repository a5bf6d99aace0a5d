//! The Planhat round of a request: the access check and the mint at once, with the name
//! lookup or the scope check beside them (never one after the other), or, with `public_url`,
//! the access check now and a `/go/` id for the mint at click time.

use std::time::{Duration, SystemTime};

use super::{Action, PortalLink, PortalService, Refusal, Reply, MAX_CHOICES};
use crate::core::approvals::Grant;
use crate::core::asker::{Asker, Platform};
use crate::core::directory::NoEmail;
use crate::core::enduser::EndUserId;
use crate::core::ownership::{OwnershipError, ScopeDenied};
use crate::core::planhat::{EndUserSummary, PlanhatError};
use crate::core::secret::Secret;

use super::id_of;

/// Of an email's matches, at most this many are checked for a scoped asker's ownership (each
/// new company costs a Planhat call); an email rarely matches more than a few end users.
const MAX_SCOPED_MATCHES: usize = 20;

/// What let a request past scope: the end user as the lookups found them, and, for someone
/// else's company, the grant (approval or break-glass) that opened it, which the link carries
/// to its audit event and Note.
#[derive(Default)]
pub(super) struct Cleared {
    who: Option<EndUserSummary>,
    grant: Option<Grant>,
}

impl PortalService {
    /// An email's end user: the reply, and the id it resolved to (for the audit trail) when it
    /// matched exactly one. A scoped asker sees only the matches at their own companies.
    pub(super) async fn by_email(
        &self,
        asker: &Asker,
        email: String,
        action: Action,
    ) -> (Option<EndUserId>, Reply) {
        let mut matches = match self.planhat.find_by_email(&email).await {
            Ok(m) => m,
            Err(e) => return (None, self.upstream(e)),
        };
        // A scoped asker is shown only the matches at their own companies.
        if !matches.is_empty() && self.policy.scoped(asker) {
            matches = match self.own_matches(asker, matches).await {
                Ok(own) => own,
                Err(refusal) => return (None, Reply::Refused(refusal)),
            };
        }
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
                        query: email,
                        matches,
                        more: n > MAX_CHOICES,
                    },
                )
            }
        }
    }

    /// `scope = "owned"`: of an email's matches (the first [`MAX_SCOPED_MATCHES`]), those at the
    /// asker's own companies. When none is, a refusal that says nothing of whom the email
    /// matched: that none is at one of theirs, or, for a single match, why that can't be told
    /// (no company, no owner; a lookup failing).
    async fn own_matches(
        &self,
        asker: &Asker,
        matches: Vec<EndUserSummary>,
    ) -> Result<Vec<EndUserSummary>, Refusal> {
        let email = self.asker_email(asker).await?;
        let verdicts = futures_util::future::join_all(
            matches.into_iter().take(MAX_SCOPED_MATCHES).map(|m| async {
                let verdict = match id_of(&m.id) {
                    Some(id) => {
                        self.ownership
                            .check(&email, &id, Some(&m), Duration::MAX)
                            .await
                    }
                    None => Err(OwnershipError::NotFound),
                };
                (m, verdict)
            }),
        )
        .await;
        let single = verdicts.len() == 1;
        let mut failed = false;
        let mut why = ScopeDenied::NoneYours;
        let mut own = Vec::new();
        for (m, verdict) in verdicts {
            match verdict {
                Ok(_) => own.push(m),
                Err(OwnershipError::Denied(ScopeDenied::LookupFailed)) => failed = true,
                Err(OwnershipError::Denied(ScopeDenied::NotYours)) => {}
                Err(OwnershipError::Denied(d)) if single => why = d,
                Err(_) => {}
            }
        }
        match (own.is_empty(), failed) {
            (false, _) => Ok(own),
            (true, true) => Err(Refusal::OutOfScope(ScopeDenied::LookupFailed)),
            (true, false) => Err(Refusal::OutOfScope(why)),
        }
    }

    /// The Planhat round: access check and mint at once; a URL is kept only on "yes".
    ///
    /// Boxed here: the round's future, two Planhat calls side by side, is about 8 KB, most of
    /// a request's, and each future enclosing it would otherwise be as large and copy it as it
    /// starts (measured: about 28k instructions a command; issue 23).
    pub(super) async fn run(
        &self,
        asker: &Asker,
        id: EndUserId,
        who: Option<EndUserSummary>,
        action: Action,
    ) -> Reply {
        Box::pin(self.round(asker, id, who, action)).await
    }

    async fn round(
        &self,
        asker: &Asker,
        id: EndUserId,
        who: Option<EndUserSummary>,
        action: Action,
    ) -> Reply {
        if action.mints() && action != Action::Go && self.public_url.is_some() {
            let (access, scope) = self
                .beside_scope(asker, &id, who, action, self.planhat.check_access(&id))
                .await;
            return match (access, scope) {
                (Err(e), _) => self.upstream(e),
                (_, Err(refusal)) => Reply::Refused(refusal),
                (Ok(false), _) => Reply::Refused(Refusal::NoAccess),
                (Ok(true), Ok(cleared)) => match self.at_click(asker, id.clone(), &cleared).await {
                    Some(reply) => reply,
                    // With sign-in, no link without the browser's proof.
                    None if self.signed_in_browsers => Reply::Refused(Refusal::NoOneTimeLink),
                    // The store is full or unreachable: fall back to a link minted now (the
                    // scope was checked a moment ago).
                    None => self.mint_now(asker, id, cleared, action, false).await,
                },
            };
        }
        if !action.mints() {
            let (access, scope) = self
                .beside_scope(asker, &id, who, action, self.planhat.check_access(&id))
                .await;
            let (who, scope) = match scope {
                Ok(cleared) => (cleared.who, None),
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
        let known = Cleared { who, grant: None };
        self.mint_now(asker, id, known, action, true).await
    }

    /// Runs `work` (the Planhat round) beside the scope check when the asker is scoped, else
    /// beside the name lookup; never one after the other. The second value is what cleared the
    /// request (the end user's name when known, the grant), or the scope's refusal.
    async fn beside_scope<T>(
        &self,
        asker: &Asker,
        id: &EndUserId,
        who: Option<EndUserSummary>,
        action: Action,
        work: impl std::future::Future<Output = T>,
    ) -> (T, Result<Cleared, Refusal>) {
        if !self.policy.scoped(asker) {
            return self.beside_name(id, who, work).await;
        }
        tokio::join!(work, self.scope_check(asker, id, who, action))
    }

    /// Runs `work` beside the name lookup (which it never waits for long).
    async fn beside_name<T>(
        &self,
        id: &EndUserId,
        who: Option<EndUserSummary>,
        work: impl std::future::Future<Output = T>,
    ) -> (T, Result<Cleared, Refusal>) {
        let lookup = self.lookup_who(id, who);
        let out = work.await;
        let who = lookup.now().await;
        (out, Ok(Cleared { who, grant: None }))
    }

    /// `scope = "owned"`: the asker's email (from their chat platform) against the owners of
    /// the end user's company. Fails closed with the reason. At a `/go/` click (the moment a
    /// portal opens) cached ownership older than a minute is read again, so someone removed as
    /// owner doesn't keep opening portals from links issued before.
    async fn scope_check(
        &self,
        asker: &Asker,
        id: &EndUserId,
        who: Option<EndUserSummary>,
        action: Action,
    ) -> Result<Cleared, Refusal> {
        let email = self.asker_email(asker).await?;
        let max_age = if action == Action::Go {
            self.ownership_at_click
        } else {
            Duration::MAX
        };
        match self
            .ownership
            .check(&email, id, who.as_ref(), max_age)
            .await
        {
            Ok(summary) => Ok(Cleared {
                who: Some(summary),
                grant: None,
            }),
            Err(OwnershipError::NotFound) => Err(Refusal::NotFound),
            Err(OwnershipError::Denied(ScopeDenied::NotYours)) => {
                // Not theirs: an approval (or break-glass) may still let them in. The company
                // was just looked up, so this reads the caches.
                let not_yours = Refusal::OutOfScope(ScopeDenied::NotYours);
                let grants = self.grants.as_ref().ok_or(not_yours.clone())?;
                let company = self
                    .ownership
                    .company(id, who.as_ref(), max_age)
                    .await
                    .map_err(|_| not_yours.clone())?;
                let grant = grants
                    .of(asker, &company.company_id)
                    .await
                    .ok_or(not_yours)?;
                Ok(Cleared {
                    who: Some(company.end_user),
                    grant: Some(grant),
                })
            }
            Err(OwnershipError::Denied(d)) => Err(Refusal::OutOfScope(d)),
        }
    }

    /// The asker's email, from their chat platform's directory; a refusal that says why when
    /// there is none the bot can go by.
    pub(super) async fn asker_email(&self, asker: &Asker) -> Result<String, Refusal> {
        let Some(directory) = self.directory(asker.platform) else {
            return Err(Refusal::OutOfScope(ScopeDenied::no_email(asker.platform)));
        };
        directory.email(asker).await.map_err(|why| {
            match &why {
                NoEmail::Unavailable(_) => tracing::warn!(platform = asker.platform.name(), error = %why, "the asker's email could not be looked up"),
                _ => tracing::info!(platform = asker.platform.name(), asker = %asker.user_id, why = %why, "the asker's email is not one the bot goes by"),
            }
            Refusal::OutOfScope(ScopeDenied::untrusted(asker.platform, &why))
        })
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
    /// the asker is scoped; otherwise `known` says what cleared it already); a URL is kept
    /// only when every answer is yes.
    async fn mint_now(
        &self,
        asker: &Asker,
        id: EndUserId,
        known: Cleared,
        action: Action,
        check_scope: bool,
    ) -> Reply {
        let before_mint = SystemTime::now();
        let round = async { tokio::join!(self.planhat.check_access(&id), self.planhat.mint(&id)) };
        let Cleared { who, grant } = known;
        let ((access, minted), scope) = if check_scope {
            self.beside_scope(asker, &id, who, action, round).await
        } else {
            let (out, cleared) = self.beside_name(&id, who, round).await;
            (out, cleared.map(|c| Cleared { grant, ..c }))
        };
        // A URL that is not shown below is dropped here, unseen and unlogged.
        match (access, scope) {
            (Err(e), _) => self.upstream(e),
            (_, Err(refusal)) => Reply::Refused(refusal),
            (Ok(false), _) => Reply::Refused(Refusal::NoAccess),
            (Ok(true), Ok(cleared)) => match minted {
                Ok(url) => Reply::Link(PortalLink {
                    url,
                    end_user: id,
                    who: cleared.who,
                    expires_at: before_mint + self.link_lifetime,
                    at_click: false,
                    grant: cleared.grant,
                }),
                Err(e) => self.upstream(e),
            },
        }
    }

    /// With `public_url`: check access now, mint when the person clicks `/go/{id}`.
    async fn at_click(&self, asker: &Asker, id: EndUserId, cleared: &Cleared) -> Option<Reply> {
        let base = self.public_url.as_ref()?;
        // Slack tells the bot about its asker's own click; Discord's link buttons don't.
        let needs_arming = !self.signed_in_browsers && asker.platform == Platform::Slack;
        let go = match self.ids.issue(asker, &id, needs_arming).await {
            Ok(go) => go,
            Err(e) => {
                tracing::warn!(error = %e, "no /go/ link this time; the link is minted directly");
                return None;
            }
        };
        Some(Reply::Link(PortalLink {
            url: Secret::new(format!("{base}/go/{go}")),
            end_user: id,
            who: cleared.who.clone(),
            expires_at: SystemTime::now() + self.ids.lifetime(),
            at_click: true,
            grant: cleared.grant.clone(),
        }))
    }

    pub(super) fn upstream(&self, e: PlanhatError) -> Reply {
        match e {
            PlanhatError::NotFound => {}
            _ => tracing::warn!(error = %e, "Planhat call failed"),
        }
        Reply::Refused(e.into())
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
