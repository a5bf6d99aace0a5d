//! Book-of-business scope (`[access] scope = "owned"`): a CSM may open portals only for end
//! users of companies they own or co-own in Planhat.
//!
//! The chain, each link looked up once and cached: end user → `companyId` (the end-user
//! lookup the bot already makes for names) → the company's `owner`/`coOwner` (Planhat user
//! ids) → those users' emails (`GET /users`, one list refreshed in the background) → compared
//! with the asker's email (from the chat platform, through a [`Directory`]). Where a link of
//! the chain can't be established the answer is a refusal that says why and who can help:
//! this check fails closed, never into a link.
//!
//! [`Directory`]: super::directory::Directory

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, RwLock};

use super::asker::Platform;
use super::directory::NoEmail;
use super::enduser::EndUserId;
use super::names::NameCache;
use super::planhat::{CompanyOwners, EndUserSummary, Planhat, PlanhatError};

/// Companies cached at once (O(1) eviction when full: the least useful goes).
const MAX_COMPANIES: usize = 10_000;
/// An owner missing from the user list triggers a refresh at most this often.
const USERS_MIN_AGE: Duration = Duration::from_secs(60);

/// How old an ownership answer may be when it decides: `access.ownership_ttl`, and less at a
/// `/go/` click (the moment a portal actually opens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxAge {
    pub ttl: Duration,
    pub at_click: Duration,
}

/// Why a scoped asker may not open this portal. `Display` is the line they see: why, and who
/// can help. It names no company and no end user: the asker may not be told whose customer
/// someone else's is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeDenied {
    #[error("You may open portals only for companies you own or co-own in Planhat, and this end user's company is not one of yours. Ask its owner, or an admin (on-call) if it's urgent.")]
    NotYours,
    /// An email's matches are all at companies that aren't the asker's.
    #[error("You may open portals only for companies you own or co-own in Planhat, and no end user with this email is at one of yours. Ask an admin (on-call) if it's urgent.")]
    NoneYours,
    #[error("The bot can't read your email from Slack, so it can't tell which companies are yours. Please tell the bot's admins (it needs the users:read.email scope).")]
    NoSlackEmail,
    #[error("The bot has no email for your Discord account, so it can't tell which companies are yours. Ask the bot's admins to add you to access.discord_emails.")]
    NoDiscordEmail,
    #[error("Your Slack account is deactivated, so the bot can't go by its email to tell which companies are yours.")]
    Deactivated,
    #[error("You are not a member of this Slack workspace (Slack Connect), so the bot can't go by your Slack email to tell which companies are yours. Ask someone in this workspace, or the bot's admins.")]
    External,
    #[error("Your email address in Slack is not confirmed, so the bot can't go by it to tell which companies are yours. Confirm it in Slack (or ask your Slack admin), then try again.")]
    Unconfirmed,
    #[error("Planhat names no company for this end user, so the bot can't tell whether it is one of yours. Ask an admin (on-call) to open it.")]
    NoCompany,
    #[error("This end user's company has no owner or co-owner in Planhat, so the bot can't tell whether it is yours. Ask an admin (on-call), or set an owner in Planhat.")]
    NoOwner,
    #[error("The owners of this end user's company have no email in Planhat that the bot can see, so it can't tell whether it is yours. Ask an admin (on-call).")]
    NoOwnerEmail,
    #[error("The bot could not check who owns this end user's company right now, so no link was made; try again in a moment.")]
    LookupFailed,
}

impl ScopeDenied {
    /// The refusal for an asker of `platform` with no known email.
    pub fn no_email(platform: Platform) -> Self {
        match platform {
            Platform::Discord => ScopeDenied::NoDiscordEmail,
            _ => ScopeDenied::NoSlackEmail,
        }
    }

    /// The refusal for an asker of `platform` whose email the platform doesn't vouch for.
    pub fn untrusted(platform: Platform, why: &NoEmail) -> Self {
        match why {
            NoEmail::Missing => ScopeDenied::no_email(platform),
            NoEmail::Deactivated => ScopeDenied::Deactivated,
            NoEmail::External => ScopeDenied::External,
            NoEmail::Unconfirmed => ScopeDenied::Unconfirmed,
            NoEmail::Unavailable(_) => ScopeDenied::LookupFailed,
        }
    }
}

/// Why the chain stopped: a scope refusal, or Planhat saying the end user doesn't exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnershipError {
    Denied(ScopeDenied),
    NotFound,
}

impl From<ScopeDenied> for OwnershipError {
    fn from(d: ScopeDenied) -> Self {
        OwnershipError::Denied(d)
    }
}

/// An end user's company as the ownership chain found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedCompany {
    pub end_user: EndUserSummary,
    pub company_id: String,
    /// The company's name, when Planhat gave one.
    pub name: Option<String>,
    /// Its owner's and co-owner's emails, lowercased (at least one).
    pub owner_emails: Vec<String>,
}

/// Planhat user id → email, and when it was fetched.
struct Users {
    emails: HashMap<String, String>,
    fetched: Option<Instant>,
    /// The last fetch failed (then an empty list means "unknown", not "no emails").
    failed: bool,
}

/// The ownership lookups and their caches. One per process.
pub struct Ownership {
    planhat: Planhat,
    /// How long an answer is trusted (`access.ownership_ttl`); also how often the user list is
    /// read again.
    ttl: Duration,
    names: Arc<NameCache>,
    companies: quick_cache::sync::Cache<String, (Arc<CompanyOwners>, Instant)>,
    users: RwLock<Users>,
    /// One refresh of the user list at a time.
    refreshing: Mutex<()>,
}

impl Ownership {
    /// The lookups, sharing the end-user names cache (the same `GET /endusers/{id}` answer);
    /// answers are trusted for `ttl`.
    pub fn new(planhat: Planhat, names: Arc<NameCache>, ttl: Duration) -> Self {
        Ownership {
            planhat,
            ttl,
            names,
            companies: quick_cache::sync::Cache::new(MAX_COMPANIES),
            users: RwLock::new(Users {
                emails: HashMap::new(),
                fetched: None,
                failed: false,
            }),
            refreshing: Mutex::new(()),
        }
    }

    /// How often Planhat's user list is read again in the background (`ownership_ttl`).
    pub fn refresh_every(&self) -> Duration {
        self.ttl
    }

    /// Does `email` own or co-own the company of `end_user`? `known`: the end user as an email
    /// lookup already found them (saves a call). Cached answers older than `max_age` (at most
    /// `ownership_ttl`: less at a `/go/` click) are read again from Planhat.
    pub async fn check(
        &self,
        email: &str,
        end_user: &EndUserId,
        known: Option<&EndUserSummary>,
        max_age: Duration,
    ) -> Result<EndUserSummary, OwnershipError> {
        let company = self.company(end_user, known, max_age).await?;
        let email = email.trim().to_ascii_lowercase();
        if company.owner_emails.contains(&email) {
            Ok(company.end_user)
        } else {
            Err(ScopeDenied::NotYours.into())
        }
    }

    /// The end user's company and its owners' emails (what [`Self::check`] compares with):
    /// also whom an approval request goes to. A company with owners none of whose emails are
    /// known is a refusal, never an empty list.
    pub async fn company(
        &self,
        end_user: &EndUserId,
        known: Option<&EndUserSummary>,
        max_age: Duration,
    ) -> Result<OwnedCompany, OwnershipError> {
        let max_age = max_age.min(self.ttl);
        let summary = self.end_user(end_user, known, max_age).await?;
        let company_id = summary
            .company_id
            .clone()
            .ok_or(OwnershipError::Denied(ScopeDenied::NoCompany))?;
        let company = self.owners(&company_id, max_age).await?;
        if company.owners.is_empty() {
            return Err(ScopeDenied::NoOwner.into());
        }
        let mut emails = self.owner_emails(&company.owners).await;
        if emails.len() < company.owners.len() && self.users_older_than(USERS_MIN_AGE).await {
            // An owner the list doesn't know yet (a new colleague): refresh once, then decide.
            self.refresh_users().await;
            emails = self.owner_emails(&company.owners).await;
        }
        if emails.is_empty() && self.users.read().await.failed {
            return Err(ScopeDenied::LookupFailed.into());
        } else if emails.is_empty() {
            return Err(ScopeDenied::NoOwnerEmail.into());
        }
        let name = summary.company.clone().or_else(|| company.name.clone());
        Ok(OwnedCompany {
            end_user: summary,
            company_id,
            name,
            owner_emails: emails
                .into_iter()
                .map(|e| e.trim().to_ascii_lowercase())
                .collect(),
        })
    }

    async fn end_user(
        &self,
        end_user: &EndUserId,
        known: Option<&EndUserSummary>,
        max_age: Duration,
    ) -> Result<EndUserSummary, OwnershipError> {
        let cached = known
            .filter(|k| k.company_id.is_some())
            .cloned()
            .or_else(|| {
                self.names
                    .get_within(end_user, max_age)
                    .filter(|n| n.company_id.is_some())
            });
        let summary = match cached {
            Some(s) => s,
            None => match self.planhat.find_by_id(end_user).await {
                Ok(s) => {
                    self.names.put(end_user.clone(), Some(s.clone()));
                    s
                }
                Err(PlanhatError::NotFound) => return Err(OwnershipError::NotFound),
                Err(e) => {
                    tracing::warn!(error = %e, "ownership: the end-user lookup failed");
                    return Err(ScopeDenied::LookupFailed.into());
                }
            },
        };
        Ok(summary)
    }

    async fn owners(
        &self,
        company_id: &str,
        max_age: Duration,
    ) -> Result<Arc<CompanyOwners>, OwnershipError> {
        if let Some((owners, at)) = self.companies.get(company_id) {
            if at.elapsed() < max_age {
                return Ok(owners);
            }
        }
        match self.planhat.find_company(company_id).await {
            Ok(c) => {
                let c = Arc::new(c);
                self.companies
                    .insert(company_id.to_string(), (c.clone(), Instant::now()));
                Ok(c)
            }
            Err(e) => {
                tracing::warn!(error = %e, "ownership: the company lookup failed");
                Err(ScopeDenied::LookupFailed.into())
            }
        }
    }

    async fn owner_emails(&self, owners: &[String]) -> Vec<String> {
        if self.users.read().await.fetched.is_none() {
            self.refresh_users().await;
        }
        let users = self.users.read().await;
        owners
            .iter()
            .filter_map(|id| users.emails.get(id).cloned())
            .collect()
    }

    async fn users_older_than(&self, age: Duration) -> bool {
        self.users
            .read()
            .await
            .fetched
            .is_none_or(|at| at.elapsed() >= age)
    }

    /// Planhat's users (id, email) as last fetched (fetched now if never): the search index
    /// matches companies' owners to askers through them.
    pub async fn user_emails(&self) -> Vec<(String, String)> {
        if self.users.read().await.fetched.is_none() {
            self.refresh_users().await;
        }
        self.users
            .read()
            .await
            .emails
            .iter()
            .map(|(id, email)| (id.clone(), email.clone()))
            .collect()
    }

    /// Fetches Planhat's user list (one at a time; a caller that waited for another's refresh
    /// uses its result).
    pub async fn refresh_users(&self) {
        let started = Instant::now();
        let _one = self.refreshing.lock().await;
        if self
            .users
            .read()
            .await
            .fetched
            .is_some_and(|at| at >= started)
        {
            return;
        }
        match self.planhat.list_users().await {
            Ok(list) => {
                let mut users = self.users.write().await;
                users.emails = list.into_iter().collect();
                users.fetched = Some(Instant::now());
                users.failed = false;
            }
            Err(e) => {
                tracing::warn!(error = %e, "ownership: Planhat's user list could not be fetched");
                // Don't retry on every request: wait for the next refresh or the minimum age.
                let mut users = self.users.write().await;
                users.fetched.get_or_insert(Instant::now());
                users.failed = true;
            }
        }
    }
}

impl crate::core::held::Holds for Ownership {
    /// Companies' owners (an id, a name and a few owner ids each, about 200 bytes) and the
    /// user list (owner id → email, about 100 bytes a user).
    fn held(&self, out: &mut Vec<crate::core::held::Held>) {
        const COMPANY: usize = 200;
        const USER: usize = 100;
        let companies = self.companies.len();
        out.push(crate::core::held::Held {
            holder: "owners",
            entries: companies,
            bytes: companies * COMPANY,
            capacity: MAX_COMPANIES * COMPANY,
        });
        // Never waits: while the list is being replaced, it counts as empty for this scrape.
        let users = self.users.try_read().map_or(0, |u| u.emails.len());
        out.push(crate::core::held::Held {
            holder: "owner_emails",
            entries: users,
            bytes: users * USER,
            capacity: 0,
        });
    }
}
