//! What only the chat platform knows about a person, asked for when the core needs it: their
//! email (for `scope = "owned"`) and their groups or roles as they are now (a `/go/` click
//! re-checks membership instead of trusting the moment the link was issued).
//!
//! Each chat adapter registers its [`Directory`] with the portal service at start-up, so the
//! core stays free of Slack and Discord types.

use async_trait::async_trait;

use super::asker::{Asker, Groups};

/// Why a platform gives no email the bot may go by. `Display` is for the operator's log; the
/// asker is told through [`super::ownership::ScopeDenied`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoEmail {
    /// The platform has none for them (Slack shows none; Discord's map lacks them).
    #[error("the platform has no email for them")]
    Missing,
    /// Their account is deactivated.
    #[error("their account is deactivated")]
    Deactivated,
    /// They belong to another workspace (Slack Connect): their email is their own
    /// organisation's word, not this one's.
    #[error("they are not a member of the bot's workspace")]
    External,
    /// Their email address is not confirmed: anyone could have typed it.
    #[error("their email address is not confirmed")]
    Unconfirmed,
    /// The platform could not be asked right now.
    #[error("{0}")]
    Unavailable(String),
}

/// A chat platform's directory of people.
#[async_trait]
pub trait Directory: Send + Sync {
    /// The asker's email, when the platform vouches for it; otherwise why not. The caller
    /// refuses, naming the reason.
    async fn email(&self, asker: &Asker) -> Result<String, NoEmail>;

    /// The asker's groups (Slack user groups, Discord roles) as they are now, as far as the
    /// policy cares; [`Groups::Unknown`] when that can't be established.
    async fn groups_now(&self, asker: &Asker) -> Groups;
}
