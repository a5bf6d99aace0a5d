//! Slack's side of the core's [`Directory`]: a person's email (`users.info`, cached) and their
//! user groups as the group cache knows them now.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::client::SlackApi;
use super::groups::GroupCache;
use crate::core::asker::{Asker, Groups};
use crate::core::directory::Directory;

/// How long an email is trusted (people rarely change theirs).
const EMAIL_TTL: Duration = Duration::from_secs(3600);
/// Emails cached at once (O(1) eviction when full).
const MAX_EMAILS: usize = 10_000;

/// The Slack directory.
pub struct SlackDirectory {
    api: Arc<SlackApi>,
    groups: Arc<GroupCache>,
    emails: quick_cache::sync::Cache<String, (Option<String>, Instant)>,
}

impl SlackDirectory {
    /// A directory over the bot's Web API client and the user-group cache.
    pub fn new(api: Arc<SlackApi>, groups: Arc<GroupCache>) -> Self {
        SlackDirectory {
            api,
            groups,
            emails: quick_cache::sync::Cache::new(MAX_EMAILS),
        }
    }
}

#[async_trait]
impl Directory for SlackDirectory {
    async fn email(&self, asker: &Asker) -> Result<Option<String>, String> {
        if let Some((email, at)) = self.emails.get(&asker.user_id) {
            if at.elapsed() < EMAIL_TTL {
                return Ok(email);
            }
        }
        let email = self.api.user_email(&asker.user_id).await?;
        self.emails
            .insert(asker.user_id.clone(), (email.clone(), Instant::now()));
        Ok(email)
    }

    async fn groups_now(&self, asker: &Asker) -> Groups {
        self.groups.groups_of(&asker.user_id)
    }
}
