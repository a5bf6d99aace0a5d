//! Discord's side of the core's [`Directory`]: emails from `[access] discord_emails` (Discord
//! gives bots none), and a member's roles as Discord has them now (REST), so a `/go/` click is
//! checked against today's roles, not those of the moment the link was issued.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use serenity::all::{GuildId, UserId};
use serenity::http::Http;

use super::rest;
use crate::core::asker::{Asker, Groups};
use crate::core::directory::{Directory, NoEmail};

/// The Discord directory.
pub struct DiscordDirectory {
    emails: HashMap<u64, String>,
    http: Arc<Http>,
}

impl DiscordDirectory {
    /// A directory over the configured emails and the bot's REST client.
    pub fn new(emails: HashMap<u64, String>, http: Arc<Http>) -> Self {
        DiscordDirectory { emails, http }
    }
}

#[async_trait]
impl Directory for DiscordDirectory {
    async fn email(&self, asker: &Asker) -> Result<String, NoEmail> {
        asker
            .user_id
            .parse::<u64>()
            .ok()
            .and_then(|id| self.emails.get(&id).cloned())
            .ok_or(NoEmail::Missing)
    }

    async fn groups_now(&self, asker: &Asker) -> Groups {
        let ids = (
            asker.team_id.as_deref().and_then(|g| g.parse::<u64>().ok()),
            asker.user_id.parse::<u64>().ok(),
        );
        let (Some(guild), Some(user)) = ids else {
            return Groups::Unknown;
        };
        if guild == 0 || user == 0 {
            return Groups::Unknown;
        }
        let call = self.http.get_member(GuildId::new(guild), UserId::new(user));
        match tokio::time::timeout(std::time::Duration::from_secs(5), call).await {
            Ok(Ok(member)) => Groups::Known(member.roles.iter().map(|r| r.to_string()).collect()),
            Ok(Err(e)) => {
                tracing::warn!(error = %rest::describe(&e), "a member's current roles could not be read");
                Groups::Unknown
            }
            Err(_) => Groups::Unknown,
        }
    }
}
