//! Who is asking, in platform-neutral terms.
//!
//! Each adapter translates its platform's request into an [`Asker`]; the core decides on that
//! alone, so the access policy, rate limit and audit never see a Slack or Discord type.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Slack,
    Discord,
    /// `portal-bot link` in a terminal.
    Cli,
}

impl Platform {
    /// Stable lower-case name for audit events, metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Platform::Slack => "slack",
            Platform::Discord => "discord",
            Platform::Cli => "cli",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Group or role membership as the adapter could establish it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Groups {
    /// The groups (Slack user groups, Discord roles) the asker is in, as far as the policy
    /// cares.
    Known(Vec<String>),
    /// Membership could not be established (e.g. Slack's API failed): never treated as "none".
    Unknown,
}

/// The person asking for a link, and where.
/// Serialisable so a `/go/` id can carry it to another replica (through Redis).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Asker {
    pub platform: Platform,
    /// Slack user id, Discord user id, or the local user name for the CLI.
    pub user_id: String,
    /// Slack team or Discord guild.
    pub team_id: Option<String>,
    /// Slack channel or Discord channel.
    pub channel_id: Option<String>,
    pub groups: Groups,
}

impl Asker {
    /// The person at this terminal (platform `cli`, the local user name).
    pub fn local_user() -> Asker {
        // Cron jobs and `kubectl exec` often have no $USER: fall back to the numeric uid, so
        // the audit trail still says who.
        let name = ["USER", "LOGNAME", "USERNAME"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|n| !n.trim().is_empty()))
            .or_else(|| {
                let status = std::fs::read_to_string("/proc/self/status").ok()?;
                let uid = status
                    .lines()
                    .find(|l| l.starts_with("Uid:"))?
                    .split_whitespace()
                    .nth(1)?
                    .to_string();
                Some(format!("uid:{uid}"))
            })
            .unwrap_or_else(|| "unknown".into());
        Asker {
            platform: Platform::Cli,
            user_id: name,
            team_id: None,
            channel_id: None,
            groups: Groups::Known(Vec::new()),
        }
    }

    /// The key the rate limiter counts under: one bucket per person per platform. The team
    /// (Slack workspace, Discord guild) is deliberately not part of it: Discord user ids are
    /// global, so a person in several guilds would otherwise get the limit once per guild.
    pub fn rate_key(&self) -> String {
        format!("{}:{}", self.platform.name(), self.user_id)
    }
}
