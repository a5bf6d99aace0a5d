//! `[approvals]`: asking the owner (see `core::approvals`).
//!
//! Kept apart from the rest of the file's checks because it is a feature of its own whose rules
//! span sections: it only makes sense with `access.scope = "owned"` (without a scope nobody is
//! refused for someone else's company), and its durations bound how long anyone may open a
//! customer's portal on someone else's word.

use std::time::Duration;

use serde::Deserialize;

use super::{ids, trimmed, ConfigError, DiscordId, HumanDuration, Scope};

/// `[approvals]`, validated.
#[derive(Debug, Clone)]
pub struct ApprovalsConfig {
    /// How long an approval lets its asker open that company's end users.
    pub grant_for: Duration,
    /// Unanswered requests expire after this.
    pub request_ttl: Duration,
    /// Also post requests here (a Slack channel id), besides the owners' direct messages.
    pub slack_channel: Option<String>,
    /// Also post requests here (a Discord channel id).
    pub discord_channel: Option<u64>,
    /// Members may decide any request, besides the company's owner and co-owner.
    pub approver_slack_usergroups: Vec<String>,
    pub approver_discord_roles: Vec<u64>,
    /// On call: may open any company's end users with a stated reason.
    pub break_glass_slack_usergroups: Vec<String>,
    pub break_glass_discord_roles: Vec<u64>,
    /// The shortest reason accepted, in characters.
    pub reason_min_chars: usize,
}

/// Bounds of `grant_for` and `request_ttl`: at least a minute, at most a day.
const MIN_WINDOW: Duration = Duration::from_secs(60);
const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApprovals {
    #[serde(default = "default_grant_for")]
    grant_for: HumanDuration,
    #[serde(default = "default_request_ttl")]
    request_ttl: HumanDuration,
    slack_channel: Option<String>,
    discord_channel: Option<DiscordId>,
    #[serde(default)]
    approver_slack_usergroups: Vec<String>,
    #[serde(default)]
    approver_discord_roles: Vec<DiscordId>,
    #[serde(default)]
    break_glass_slack_usergroups: Vec<String>,
    #[serde(default)]
    break_glass_discord_roles: Vec<DiscordId>,
    #[serde(default = "default_reason_min_chars")]
    reason_min_chars: i64,
}

fn default_grant_for() -> HumanDuration {
    HumanDuration(Duration::from_secs(3600))
}

fn default_request_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(30 * 60))
}

fn default_reason_min_chars() -> i64 {
    10
}

impl RawApprovals {
    pub(super) fn validate(self, scope: Scope) -> Result<ApprovalsConfig, ConfigError> {
        if scope != Scope::Owned {
            return Err(ConfigError::at(
                "approvals",
                "needs access.scope = \"owned\": without a scope nobody is refused for someone else's company, so there is nothing to ask for",
            ));
        }
        for (key, d) in [
            ("approvals.grant_for", self.grant_for.0),
            ("approvals.request_ttl", self.request_ttl.0),
        ] {
            if !(MIN_WINDOW..=MAX_WINDOW).contains(&d) {
                return Err(ConfigError::at(key, "must be between 1m and 24h"));
            }
        }
        if !(1..=500).contains(&self.reason_min_chars) {
            return Err(ConfigError::at(
                "approvals.reason_min_chars",
                "must be between 1 and 500",
            ));
        }
        let slack_channel = self
            .slack_channel
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty());
        if let Some(c) = &slack_channel {
            if !c.chars().all(|ch| ch.is_ascii_alphanumeric()) {
                return Err(ConfigError::at(
                    "approvals.slack_channel",
                    "must be a Slack channel id such as C0123456789",
                ));
            }
        }
        Ok(ApprovalsConfig {
            grant_for: self.grant_for.0,
            request_ttl: self.request_ttl.0,
            slack_channel,
            discord_channel: self.discord_channel.map(|d| d.0),
            approver_slack_usergroups: trimmed(self.approver_slack_usergroups),
            approver_discord_roles: ids(self.approver_discord_roles),
            break_glass_slack_usergroups: trimmed(self.break_glass_slack_usergroups),
            break_glass_discord_roles: ids(self.break_glass_discord_roles),
            reason_min_chars: self.reason_min_chars as usize,
        })
    }
}
