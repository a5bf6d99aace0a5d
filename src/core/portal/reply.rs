//! What the asker sees, platform-neutral: a [`Reply`], or one clear [`Refusal`] line.
//! Adapters render it; the audit trail names it by [`Reply::outcome`].

use std::time::{Duration, SystemTime};

use crate::core::access::Denied;
use crate::core::enduser::{BadEndUser, EndUserId, Target};
use crate::core::ownership::ScopeDenied;
use crate::core::planhat::{EndUserSummary, PlanhatError};
use crate::core::secret::Secret;

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
    /// `/portal find <words>`.
    Find,
}

impl Action {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Action::Link => "link",
            Action::Check => "check",
            Action::NewLink => "new_link",
            Action::Go => "go",
            Action::Help => "help",
            Action::Button => "button",
            Action::Find => "find",
        }
    }
    pub(super) fn mints(self) -> bool {
        !matches!(
            self,
            Action::Check | Action::Help | Action::Button | Action::Find
        )
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
    /// The approval or break-glass that opened someone else's company to the asker, if any.
    pub grant: Option<crate::core::approvals::Grant>,
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
    /// An email matched several end users, or a search found some: let the asker pick.
    Choose {
        /// The email, or the words searched for.
        query: String,
        matches: Vec<EndUserSummary>,
        more: bool,
    },
    /// One clear line for the asker.
    Refused(Refusal),
    /// Refused for someone else's company ([`ScopeDenied::NotYours`]) where `[approvals]` is
    /// on: the asker may ask the owner, and on call (`break_glass`) open it with a reason.
    AskOwner {
        end_user: EndUserId,
        break_glass: bool,
    },
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
    #[error("No end user's name, email or company matches that. Try part of their name, their email, or their Planhat id.")]
    NoMatch,
    #[error("Finding end users by name is not set up here: use their Planhat id or their email.")]
    NoSearch,
    #[error("The bot is still reading Planhat's end users for search: use their Planhat id or their email, or try again in a minute.")]
    SearchCold,
    #[error("The bot can't make a one-time link right now (its shared store is not answering); try again in a moment.")]
    NoOneTimeLink,
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
            Refusal::NoMatch => "no_match",
            Refusal::NoSearch | Refusal::SearchCold => "search_unavailable",
            Refusal::NoOneTimeLink => "state_unavailable",
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

/// The heading above an email's or a search's matches, worded once for every platform
/// (`query` escaped).
pub fn choose_line(query: &str, matches: usize, more: bool) -> String {
    let cut = if more { " (the best shown)" } else { "" };
    let n = if matches == 1 {
        "1 end user".to_string()
    } else {
        format!("{matches} end users")
    };
    format!("{query} matches {n}{cut}; pick one:")
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
                | Refusal::NoOneTimeLink
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
    pub(super) fn outcome(&self) -> &'static str {
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
            Reply::AskOwner { .. } => "out_of_scope",
        }
    }

    /// The end user's company for the audit trail, when the reply names the end user.
    pub(super) fn company(&self) -> Option<String> {
        match self {
            Reply::Link(link) => link.who.as_ref()?.company.clone(),
            Reply::Access { who, .. } => who.as_ref()?.company.clone(),
            _ => None,
        }
    }
}

/// An id that Planhat itself gave us still goes through the same plausibility check.
pub fn id_of(text: &str) -> Option<EndUserId> {
    match crate::core::enduser::parse_target(text) {
        Ok(Target::EndUser(id)) => Some(id),
        _ => None,
    }
}
