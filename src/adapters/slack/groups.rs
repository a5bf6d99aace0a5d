//! Slack user-group membership, fetched in the background so no asker waits on it.
//!
//! `[access] slack_usergroups` lets whole teams ask. Members come from
//! `usergroups.users.list`, refreshed every `usergroup_ttl`. A group that was never fetched, or
//! whose last good answer is older than three TTLs, is *unknown*: its would-be members are
//! refused with a clear line rather than silently allowed or silently denied.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::client::SlackApi;
use crate::core::asker::Groups;
use crate::shutdown::Shutdown;

/// Last known members of each configured group.
pub struct GroupCache {
    groups: Vec<String>,
    members: DashMap<String, (HashSet<String>, Instant)>,
    ttl: Duration,
}

impl GroupCache {
    /// A cache for these group ids (nothing fetched yet).
    pub fn new(groups: Vec<String>, ttl: Duration) -> Self {
        GroupCache {
            groups,
            members: DashMap::new(),
            ttl,
        }
    }

    /// The configured groups `user` is in, or `Unknown` if any group's membership is unknown.
    pub fn groups_of(&self, user: &str) -> Groups {
        let mut mine = Vec::new();
        for g in &self.groups {
            match self.members.get(g) {
                Some(entry) if entry.1.elapsed() <= self.ttl * 3 => {
                    if entry.0.contains(user) {
                        mine.push(g.clone());
                    }
                }
                _ => return Groups::Unknown,
            }
        }
        Groups::Known(mine)
    }

    /// Fetches every group once; failures are logged and leave the last good answer in place.
    pub async fn refresh(&self, api: &SlackApi) -> bool {
        let mut all_ok = true;
        for g in &self.groups {
            match api.usergroup_members(g).await {
                Ok(users) => {
                    self.members
                        .insert(g.clone(), (users.into_iter().collect(), Instant::now()));
                }
                Err(e) => {
                    all_ok = false;
                    tracing::warn!(usergroup = %g, error = %e, "cannot fetch Slack user group members");
                }
            }
        }
        all_ok
    }

    /// Keeps the cache fresh until shutdown: every TTL, sooner (30 s) after a failure.
    pub async fn run(self: Arc<Self>, api: Arc<SlackApi>, mut shutdown: Shutdown) {
        if self.groups.is_empty() {
            return;
        }
        loop {
            let ok = self.refresh(&api).await;
            let wait = if ok {
                self.ttl
            } else {
                self.ttl.min(Duration::from_secs(30))
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.fired() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_until_fetched() {
        let c = GroupCache::new(vec!["S1".into()], Duration::from_secs(60));
        assert_eq!(c.groups_of("U1"), Groups::Unknown);
        c.members.insert(
            "S1".into(),
            (["U1".to_string()].into_iter().collect(), Instant::now()),
        );
        assert_eq!(c.groups_of("U1"), Groups::Known(vec!["S1".into()]));
        assert_eq!(c.groups_of("U2"), Groups::Known(vec![]));
    }
}
