//! What only the chat platform knows about a person, asked for when the core needs it: their
//! email (for `scope = "owned"`) and their groups or roles as they are now (a `/go/` click
//! re-checks membership instead of trusting the moment the link was issued).
//!
//! Each chat adapter registers its [`Directory`] with the portal service at start-up, so the
//! core stays free of Slack and Discord types.

use async_trait::async_trait;

use super::asker::{Asker, Groups};

/// A chat platform's directory of people.
#[async_trait]
pub trait Directory: Send + Sync {
    /// The asker's email. `Ok(None)`: the platform has none for them; `Err`: it could not be
    /// asked right now (the caller refuses, naming the reason).
    async fn email(&self, asker: &Asker) -> Result<Option<String>, String>;

    /// The asker's groups (Slack user groups, Discord roles) as they are now, as far as the
    /// policy cares; [`Groups::Unknown`] when that can't be established.
    async fn groups_now(&self, asker: &Asker) -> Groups;
}
