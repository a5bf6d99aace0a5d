//! Who may mint links: the `[access]` lists, deny by default.
//!
//! A link logs its holder in as a customer, so nobody may mint one until an operator lists them
//! (directly, through a Slack user group or a Discord role). Channel and guild lists narrow
//! where the command works at all. The terminal (`portal-bot link`) is trusted: whoever holds
//! the config holds the Planhat token anyway.

use std::collections::HashSet;

use super::asker::{Asker, Groups, Platform};
use super::config::{AccessConfig, Scope};

/// Why an asker was refused. `Display` is the line the asker sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error(
        "you are not allowed to open customer portals with this bot; ask its admins to add you"
    )]
    NotListed,
    #[error("/portal is not enabled in this channel.")]
    Channel,
    #[error("/portal is not enabled in this server.")]
    Guild,
    #[error("Your group membership could not be checked right now, so no link was made; try again in a minute.")]
    MembershipUnknown,
}

/// The access lists, as sets.
#[derive(Debug, Clone, Default)]
pub struct AccessPolicy {
    slack_users: HashSet<String>,
    slack_usergroups: Vec<String>,
    slack_channels: HashSet<String>,
    discord_users: HashSet<String>,
    discord_roles: HashSet<String>,
    discord_guilds: HashSet<String>,
    scope: Scope,
    admin_slack_users: HashSet<String>,
    admin_slack_usergroups: Vec<String>,
    admin_discord_users: HashSet<String>,
    admin_discord_roles: HashSet<String>,
}

fn strings(ids: &[u64]) -> HashSet<String> {
    ids.iter().map(u64::to_string).collect()
}

impl AccessPolicy {
    /// Builds the policy from `[access]`.
    pub fn new(config: &AccessConfig) -> Self {
        AccessPolicy {
            slack_users: config.slack_users.iter().cloned().collect(),
            slack_usergroups: config.slack_usergroups.clone(),
            slack_channels: config.slack_channels.iter().cloned().collect(),
            discord_users: strings(&config.discord_users),
            discord_roles: strings(&config.discord_roles),
            discord_guilds: strings(&config.discord_guilds),
            scope: config.scope,
            admin_slack_users: config.admin_slack_users.iter().cloned().collect(),
            admin_slack_usergroups: config.admin_slack_usergroups.clone(),
            admin_discord_users: strings(&config.admin_discord_users),
            admin_discord_roles: strings(&config.admin_discord_roles),
        }
    }

    /// The Slack user groups the policy asks about (members may ask, or are admins); the
    /// Slack adapter keeps them fetched.
    pub fn slack_usergroups(&self) -> Vec<String> {
        let mut all = self.slack_usergroups.clone();
        all.extend(self.admin_slack_usergroups.iter().cloned());
        all.sort();
        all.dedup();
        all
    }

    /// True when listing the user directly is enough (no group lookup needed).
    pub fn is_listed_user(&self, asker: &Asker) -> bool {
        match asker.platform {
            Platform::Slack => {
                self.slack_users.contains(&asker.user_id)
                    || self.admin_slack_users.contains(&asker.user_id)
            }
            Platform::Discord => {
                self.discord_users.contains(&asker.user_id)
                    || self.admin_discord_users.contains(&asker.user_id)
            }
            Platform::Cli => true,
        }
    }

    /// True when groups (Slack user groups, Discord roles) matter to this policy on `platform`.
    pub fn uses_groups_on(&self, platform: Platform) -> bool {
        match platform {
            Platform::Slack => {
                !self.slack_usergroups.is_empty() || !self.admin_slack_usergroups.is_empty()
            }
            Platform::Discord => {
                !self.discord_roles.is_empty() || !self.admin_discord_roles.is_empty()
            }
            Platform::Cli => false,
        }
    }

    /// An admin: listed in an `admin_*` list (directly or by group/role). Admins bypass the
    /// scope; the terminal counts as one (it holds the Planhat token anyway).
    pub fn is_admin(&self, asker: &Asker) -> bool {
        let (users, groups): (&HashSet<String>, Vec<&str>) = match asker.platform {
            Platform::Cli => return true,
            Platform::Slack => (
                &self.admin_slack_users,
                self.admin_slack_usergroups
                    .iter()
                    .map(String::as_str)
                    .collect(),
            ),
            Platform::Discord => (
                &self.admin_discord_users,
                self.admin_discord_roles
                    .iter()
                    .map(String::as_str)
                    .collect(),
            ),
        };
        users.contains(&asker.user_id)
            || matches!(&asker.groups, Groups::Known(mine) if mine.iter().any(|g| groups.contains(&g.as_str())))
    }

    /// True when this asker may open only their own companies' portals.
    pub fn scoped(&self, asker: &Asker) -> bool {
        self.scope == Scope::Owned && !self.is_admin(asker)
    }

    /// May this asker mint a link here?
    pub fn authorize(&self, asker: &Asker) -> Result<(), Denied> {
        let (places, place_denied, groups): (&HashSet<String>, Denied, HashSet<&str>) =
            match asker.platform {
                Platform::Cli => return Ok(()),
                Platform::Slack => (
                    &self.slack_channels,
                    Denied::Channel,
                    self.slack_usergroups
                        .iter()
                        .chain(&self.admin_slack_usergroups)
                        .map(String::as_str)
                        .collect(),
                ),
                Platform::Discord => (
                    &self.discord_guilds,
                    Denied::Guild,
                    self.discord_roles
                        .iter()
                        .chain(&self.admin_discord_roles)
                        .map(String::as_str)
                        .collect(),
                ),
            };
        let place = match asker.platform {
            Platform::Slack => asker.channel_id.as_deref(),
            _ => asker.team_id.as_deref(),
        };
        if !places.is_empty() && !place.is_some_and(|p| places.contains(p)) {
            return Err(place_denied);
        }
        if self.is_listed_user(asker) {
            return Ok(());
        }
        if groups.is_empty() {
            return Err(Denied::NotListed);
        }
        match &asker.groups {
            Groups::Known(mine) if mine.iter().any(|g| groups.contains(g.as_str())) => Ok(()),
            Groups::Known(_) => Err(Denied::NotListed),
            Groups::Unknown => Err(Denied::MembershipUnknown),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asker(platform: Platform, user: &str, place: Option<&str>, groups: Groups) -> Asker {
        Asker {
            platform,
            user_id: user.into(),
            team_id: place.map(str::to_string),
            channel_id: place.map(str::to_string),
            groups,
        }
    }

    fn policy() -> AccessPolicy {
        AccessPolicy::new(&AccessConfig {
            slack_users: vec!["U1".into()],
            slack_usergroups: vec!["S1".into()],
            slack_channels: vec![],
            discord_users: vec![10],
            discord_roles: vec![20],
            discord_guilds: vec![30],
            admin_slack_users: vec!["UADMIN".into()],
            admin_discord_roles: vec![40],
            scope: Scope::Owned,
            ..Default::default()
        })
    }

    #[test]
    fn admins_may_ask_and_bypass_the_scope() {
        let p = policy();
        let admin = asker(Platform::Slack, "UADMIN", None, Groups::Known(vec![]));
        assert!(p.authorize(&admin).is_ok());
        assert!(p.is_admin(&admin) && !p.scoped(&admin));
        let csm = asker(Platform::Slack, "U1", None, Groups::Known(vec![]));
        assert!(p.authorize(&csm).is_ok());
        assert!(!p.is_admin(&csm) && p.scoped(&csm));
        let on_call = asker(
            Platform::Discord,
            "99",
            Some("30"),
            Groups::Known(vec!["40".into()]),
        );
        assert!(p.authorize(&on_call).is_ok());
        assert!(!p.scoped(&on_call), "an admin role bypasses the scope");
        let cli = Asker::local_user();
        assert!(!p.scoped(&cli), "the terminal is trusted");
    }

    #[test]
    fn deny_by_default() {
        let empty = AccessPolicy::new(&AccessConfig::default());
        let a = asker(Platform::Slack, "U1", Some("C1"), Groups::Known(vec![]));
        assert_eq!(empty.authorize(&a), Err(Denied::NotListed));
    }

    #[test]
    fn users_groups_and_places() {
        let p = policy();
        let ok = |a: &Asker| p.authorize(a);
        assert_eq!(
            ok(&asker(Platform::Slack, "U1", Some("C"), Groups::Unknown)),
            Ok(())
        );
        assert_eq!(
            ok(&asker(
                Platform::Slack,
                "U2",
                Some("C"),
                Groups::Known(vec!["S1".into()])
            )),
            Ok(())
        );
        assert_eq!(
            ok(&asker(
                Platform::Slack,
                "U2",
                Some("C"),
                Groups::Known(vec!["S9".into()])
            )),
            Err(Denied::NotListed)
        );
        assert_eq!(
            ok(&asker(Platform::Slack, "U2", Some("C"), Groups::Unknown)),
            Err(Denied::MembershipUnknown)
        );
        assert_eq!(
            ok(&asker(
                Platform::Discord,
                "10",
                Some("30"),
                Groups::Known(vec![])
            )),
            Ok(())
        );
        assert_eq!(
            ok(&asker(
                Platform::Discord,
                "11",
                Some("30"),
                Groups::Known(vec!["20".into()])
            )),
            Ok(())
        );
        assert_eq!(
            ok(&asker(
                Platform::Discord,
                "10",
                Some("31"),
                Groups::Known(vec![])
            )),
            Err(Denied::Guild)
        );
        assert_eq!(
            ok(&asker(Platform::Discord, "10", None, Groups::Known(vec![]))),
            Err(Denied::Guild)
        );
        assert_eq!(ok(&Asker::local_user()), Ok(()));
    }

    #[test]
    fn slack_channels_narrow() {
        let p = AccessPolicy::new(&AccessConfig {
            slack_users: vec!["U1".into()],
            slack_channels: vec!["C1".into()],
            ..Default::default()
        });
        assert_eq!(
            p.authorize(&asker(Platform::Slack, "U1", Some("C1"), Groups::Unknown)),
            Ok(())
        );
        assert_eq!(
            p.authorize(&asker(Platform::Slack, "U1", Some("C2"), Groups::Unknown)),
            Err(Denied::Channel)
        );
    }
}
