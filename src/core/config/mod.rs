//! The configuration: TOML on disk, secrets from the environment, validated once at start.
//!
//! Operators meet this module first, usually at 3 a.m. with a typo in a file, so every problem
//! is reported as one line that names the key (`planhat.timeout: invalid duration "5 secs"`)
//! and nothing here panics. What comes out is a [`Config`] whose values are already checked:
//! the rest of the bot never re-validates a URL or a duration.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::secret::Secret;

mod approvals;
mod sign_in;

pub use self::approvals::ApprovalsConfig;
pub use self::sign_in::{DiscordProvider, OidcProvider, SignInConfig};

/// A configuration problem, phrased for the operator: one line naming the key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl ConfigError {
    fn at(key: &str, problem: impl std::fmt::Display) -> Self {
        ConfigError(format!("{key}: {problem}"))
    }
}

/// Which environment variable overrides which key. The variable wins over the file so that no
/// secret has to be written into it.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("planhat.token", "PLANHAT_API_TOKEN"),
    ("slack.signing_secret", "SLACK_SIGNING_SECRET"),
    ("slack.bot_token", "SLACK_BOT_TOKEN"),
    ("slack.app_token", "SLACK_APP_TOKEN"),
    ("discord.token", "DISCORD_TOKEN"),
    ("discord.public_key", "DISCORD_PUBLIC_KEY"),
    ("state.redis_url", "PORTAL_BOT_REDIS_URL"),
    ("audit.database_url", "PORTAL_BOT_AUDIT_DATABASE_URL"),
    ("state.seal_key", "PORTAL_BOT_SEAL_KEY"),
    ("sign_in.cookie_key", "PORTAL_BOT_COOKIE_KEY"),
    ("sign_in.slack.client_secret", "SLACK_CLIENT_SECRET"),
    ("sign_in.discord.client_secret", "DISCORD_CLIENT_SECRET"),
    (
        "sign_in.oidc.client_secret",
        "PORTAL_BOT_OIDC_CLIENT_SECRET",
    ),
];

/// The validated configuration of one bot process.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub planhat: PlanhatConfig,
    pub slack: Option<SlackConfig>,
    pub discord: Option<DiscordConfig>,
    pub access: AccessConfig,
    pub limits: LimitsConfig,
    pub audit: AuditConfig,
    pub state: StateConfig,
    pub notify: NotifyConfig,
    /// `[sign_in]`: who is at the browser of a `/go/` link; `None`: no sign-in.
    pub sign_in: Option<SignInConfig>,
    /// `[search]`: find end users by name; `None`: ids and emails only.
    pub search: Option<SearchConfig>,
    /// `[approvals]`: askers refused by scope may ask the owner; `None`: a flat refusal.
    pub approvals: Option<ApprovalsConfig>,
}

/// `[search]`: the local index of Planhat's end users.
#[derive(Debug, Clone)]
pub struct SearchConfig {
    /// How often the index is read again in full; zero: only at start.
    pub refresh: Duration,
    /// The most end users the index holds (the rest are left out, and said so in the log).
    pub max_end_users: usize,
}

/// `[notify]`: the transparency channel; each set channel gets one line per link, `/go/`
/// click and scope refusal.
#[derive(Debug, Clone, Default)]
pub struct NotifyConfig {
    /// A Slack channel id (`C…`); the bot must be a member of it.
    pub slack_channel: Option<String>,
    /// A Discord channel id.
    pub discord_channel: Option<u64>,
}

/// `[state]`: where replicas share state. No `redis_url`: in this process (one replica).
#[derive(Debug, Clone)]
pub struct StateConfig {
    /// `redis://` or `rediss://` (TLS), password and database in the URL; a [`Secret`]
    /// because of the password.
    pub redis_url: Option<Secret>,
    /// Put before every key, so several bots can share one Redis.
    pub key_prefix: String,
    /// The key that seals what replicas keep in the store (`/go/` records, Discord edits), so
    /// write access to Redis alone can't forge one. Unset: derived from `sign_in.cookie_key`,
    /// else from the Planhat token (see [`Config::seal_root`]).
    pub seal_key: Option<Secret>,
}

/// `[server]`: where the HTTP endpoints listen and how long a chat reply may wait inline.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Where `/metrics` is served: its own listener, loopback by default, never the public one.
    pub metrics_listen: SocketAddr,
    /// Set: link buttons point at `{public_url}/go/{id}` and mint at click time.
    pub public_url: Option<Url>,
    /// How long a chat request waits for its link before it is acknowledged and the answer is
    /// delivered later. Both platforms give 3 s; the default leaves room for the network.
    pub reply_budget: Duration,
    /// How long one incoming request may take, body upload included (slow-loris guard).
    pub request_timeout: Duration,
    /// How long a `/go/` id lives (30 s to 10 min).
    pub go_lifetime: Duration,
    /// How long a connection may take to send a request's head; hyper starts the clock when it
    /// starts waiting for one, so this is also how long a keep-alive connection may sit idle.
    pub header_read_timeout: Duration,
    /// Connections open at once, on all listeners together; more wait in the accept queue.
    pub max_connections: usize,
    /// Connections open at once from one peer address (an IPv6 /64 counts as one); more are
    /// closed at once.
    pub max_connections_per_peer: usize,
    /// How long a connection may wait between requests (and before its first) with nothing
    /// sent: kept short so idle keep-alives can't hold the connection slots.
    pub idle_timeout: Duration,
    /// Proxies whose `X-Forwarded-For` is believed: the client is the rightmost hop not among
    /// them. Empty: the TCP peer is the client, whatever the header says.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// `[planhat]`: where Planhat is and how to talk to it.
#[derive(Debug, Clone)]
pub struct PlanhatConfig {
    /// API base, without a trailing slash.
    pub api_url: Url,
    /// Portal base, without a trailing slash; signed URLs must start with `{portal_url}/redirect/`.
    pub portal_url: Url,
    pub token: Secret,
    pub timeout: Duration,
    pub max_in_flight: usize,
    /// How long a signed URL lives after it is minted (Planhat: 30 s).
    pub link_lifetime: Duration,
    /// Planhat's soft limit of calls per minute for this token (about 200): optional calls
    /// (name lookups) stop while the last minute's calls near it, so links keep the budget.
    pub calls_per_minute: u32,
    /// `[planhat.notes] enabled`: a Note on the company's timeline for each portal opened.
    pub notes: bool,
}

/// How Slack reaches the bot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlackMode {
    /// Signed webhooks to `/slack/commands` and `/slack/interactions`.
    Http,
    /// Socket Mode: the bot dials out over a WebSocket.
    Socket,
}

/// `[slack]`: present means Slack is on.
#[derive(Debug, Clone)]
pub struct SlackConfig {
    pub mode: SlackMode,
    pub signing_secret: Secret,
    pub bot_token: Secret,
    pub app_token: Secret,
    pub api_url: Url,
    /// How long fetched user-group members are trusted before a background refresh.
    pub usergroup_ttl: Duration,
    /// Socket Mode connections held at once (Slack allows up to 10 per app): with two or
    /// more, a reconnect never leaves a gap.
    pub socket_connections: usize,
}

/// How Discord reaches the bot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiscordMode {
    /// The bot holds a gateway WebSocket.
    Gateway,
    /// Discord posts signed interactions to `/discord/interactions`.
    Http,
}

/// `[discord]`: present means Discord is on.
#[derive(Debug, Clone)]
pub struct DiscordConfig {
    pub mode: DiscordMode,
    pub token: Secret,
    pub application_id: u64,
    /// The application's Ed25519 public key (32 bytes), checked to be well-formed.
    pub public_key: [u8; 32],
    pub guild_ids: Vec<u64>,
    pub api_url: Url,
}

/// `[access]`: who may mint links. Empty lists allow nobody (deny by default).
#[derive(Debug, Clone)]
pub struct AccessConfig {
    pub slack_users: Vec<String>,
    pub slack_usergroups: Vec<String>,
    pub slack_channels: Vec<String>,
    pub discord_users: Vec<u64>,
    pub discord_roles: Vec<u64>,
    pub discord_guilds: Vec<u64>,
    /// Whose portals a listed asker may open.
    pub scope: Scope,
    /// Admins bypass `scope` (on-call); they may ask like listed users.
    pub admin_slack_users: Vec<String>,
    pub admin_slack_usergroups: Vec<String>,
    pub admin_discord_users: Vec<u64>,
    pub admin_discord_roles: Vec<u64>,
    /// Discord gives bots no emails: Discord user id → email, for `scope = "owned"`.
    pub discord_emails: HashMap<u64, String>,
    /// How long an answer of the ownership chain is trusted (a company's owners, Planhat's user
    /// list, an end user's company, a Slack asker's email): `access.ownership_ttl`, 1 to 60
    /// minutes. Removing someone as owner takes effect within it.
    pub ownership_ttl: Duration,
    /// At a `/go/` click, ownership answers older than this are read again: a minute (or
    /// `ownership_ttl`, if shorter). Not a key of the file: a field so that tests can shorten it.
    pub ownership_at_click: Duration,
}

impl Default for AccessConfig {
    /// Nobody listed; the ownership lifetimes as an empty file gives them.
    fn default() -> Self {
        AccessConfig {
            slack_users: Vec::new(),
            slack_usergroups: Vec::new(),
            slack_channels: Vec::new(),
            discord_users: Vec::new(),
            discord_roles: Vec::new(),
            discord_guilds: Vec::new(),
            scope: Scope::Any,
            admin_slack_users: Vec::new(),
            admin_slack_usergroups: Vec::new(),
            admin_discord_users: Vec::new(),
            admin_discord_roles: Vec::new(),
            discord_emails: HashMap::new(),
            ownership_ttl: DEFAULT_OWNERSHIP_TTL,
            ownership_at_click: OWNERSHIP_AT_CLICK,
        }
    }
}

/// `access.ownership_ttl` when the file doesn't say.
pub const DEFAULT_OWNERSHIP_TTL: Duration = Duration::from_secs(300);
/// `access.ownership_ttl` may be set from this…
const MIN_OWNERSHIP_TTL: Duration = Duration::from_secs(60);
/// …to this.
const MAX_OWNERSHIP_TTL: Duration = Duration::from_secs(3600);
/// At a `/go/` click, ownership answers older than this are read again.
pub const OWNERSHIP_AT_CLICK: Duration = Duration::from_secs(60);

/// `[access] scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Any end user (the default).
    #[default]
    Any,
    /// Only end users of companies the asker owns or co-owns in Planhat.
    Owned,
}

/// `[limits]`.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    pub per_user_per_minute: u32,
}

/// `[audit]`.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Unset: audit events go to the log.
    pub path: Option<PathBuf>,
    /// True: no link is handed out unless its audit event was written.
    pub required: bool,
    /// When the trail moves on to a new file; unset: one file that only grows.
    pub rotate: Option<Rotate>,
    /// How many rotated files are kept; the oldest beyond that are deleted (never one younger
    /// than a day). With `database_url`: how many days rows are kept.
    pub keep: usize,
    /// `postgres://…`: every replica writes to one table there, and `portal-bot audit` reads it;
    /// `path` is then only the local fallback for events the database can't take yet. A secret
    /// (it may carry a password): never printed, not even in a config error.
    pub database_url: Option<Secret>,
}

/// When the audit writer closes its file and starts a new one (`[audit] rotate`). Rotated
/// files keep their lines for `portal-bot audit`; see `core::audit::files` for their names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotate {
    /// `"daily"`: at the first write of each UTC day.
    Daily,
    /// A size such as `"100MB"`: before a write that would take the file past this many bytes.
    Size(u64),
}

impl AuditConfig {
    /// Reads only the `[audit]` section of the file at `path`: `portal-bot audit` reads the
    /// trail on machines where the chat and Planhat secrets are not in the environment, so the
    /// rest of the file is neither required nor checked (a TOML syntax error still is).
    pub fn load(path: &Path) -> Result<AuditConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        let mut table = toml_table(&text)?;
        let audit = table
            .remove("audit")
            .unwrap_or_else(|| toml::Value::Table(toml::Table::new()));
        let raw: RawAudit = serde_path_to_error::deserialize(audit).map_err(|e| {
            let path = e.path().to_string();
            let message = one_line(e.inner().message());
            if path == "." || path.is_empty() {
                ConfigError::at("audit", message)
            } else {
                ConfigError::at(&format!("audit.{path}"), message)
            }
        })?;
        raw.validate(&|name| std::env::var(name).ok())
    }
}

impl Config {
    /// Reads and validates the file at `path`, letting the process environment override secrets.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        let env: HashMap<String, String> = std::env::vars().collect();
        Config::parse(&text, &|name| env.get(name).cloned())
    }

    /// Parses and validates TOML text; `env` looks up environment variables (tests pass a map).
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let table = toml_table(text)?;
        let raw: RawConfig =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let path = e.path().to_string();
                let message = one_line(e.inner().message());
                if path == "." || path.is_empty() {
                    ConfigError(message)
                } else {
                    ConfigError::at(&path, message)
                }
            })?;
        raw.validate(env)
    }

    /// The secret the seals of shared state derive from ([`crate::core::seal::Sealer`]): one
    /// every replica has and Redis never does. `state.seal_key` when set, else
    /// `sign_in.cookie_key`, else the Planhat token; `None` when there is neither (one process: a random key does).
    pub fn seal_root(&self) -> Option<&Secret> {
        self.state
            .seal_key
            .as_ref()
            .or(self.sign_in.as_ref().map(|s| &s.cookie_key))
            .or((!self.planhat.token.is_empty()).then_some(&self.planhat.token))
    }

    /// A configuration for the built-in sandbox Planhat at `base` (demo, `serve --sandbox`).
    pub fn point_at_sandbox(&mut self, base: &Url, token: Secret) {
        self.planhat.api_url = base.clone();
        self.planhat.portal_url = base.clone();
        self.planhat.token = token;
    }
}

/// The file as a TOML table; a syntax error names its line.
fn toml_table(text: &str) -> Result<toml::Table, ConfigError> {
    text.parse().map_err(|e: toml::de::Error| {
        let line = e
            .span()
            .map(|s| text.get(..s.start).unwrap_or(text).lines().count().max(1))
            .unwrap_or(1);
        ConfigError(format!(
            "config file, line {line}: {}",
            one_line(e.message())
        ))
    })
}

// ---- raw, as written in the file -------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    planhat: RawPlanhat,
    slack: Option<RawSlack>,
    discord: Option<RawDiscord>,
    #[serde(default)]
    access: RawAccess,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    state: RawState,
    #[serde(default)]
    notify: RawNotify,
    sign_in: Option<sign_in::RawSignIn>,
    search: Option<RawSearch>,
    approvals: Option<approvals::RawApprovals>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNotes {
    #[serde(default)]
    enabled: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSearch {
    #[serde(default = "default_search_refresh")]
    refresh: HumanDuration,
    #[serde(default = "default_max_end_users")]
    max_end_users: i64,
}

fn default_search_refresh() -> HumanDuration {
    HumanDuration(Duration::from_secs(15 * 60))
}

fn default_max_end_users() -> i64 {
    500_000
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    slack_channel: Option<String>,
    discord_channel: Option<DiscordId>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    redis_url: Option<SecretText>,
    seal_key: Option<SecretText>,
    #[serde(default = "default_key_prefix")]
    key_prefix: String,
}

impl Default for RawState {
    fn default() -> Self {
        RawState {
            redis_url: None,
            seal_key: None,
            key_prefix: default_key_prefix(),
        }
    }
}

fn default_key_prefix() -> String {
    "portal-bot:".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default = "default_metrics_listen")]
    metrics_listen: String,
    public_url: Option<String>,
    #[serde(default = "default_reply_budget")]
    reply_budget: HumanDuration,
    #[serde(default = "default_request_timeout")]
    request_timeout: HumanDuration,
    #[serde(default = "default_go_lifetime")]
    go_lifetime: HumanDuration,
    #[serde(default = "default_header_read_timeout")]
    header_read_timeout: HumanDuration,
    #[serde(default = "default_max_connections")]
    max_connections: i64,
    #[serde(default = "default_max_connections_per_peer")]
    max_connections_per_peer: i64,
    #[serde(default = "default_idle_timeout")]
    idle_timeout: HumanDuration,
    #[serde(default)]
    trusted_proxies: Vec<String>,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: default_listen(),
            metrics_listen: default_metrics_listen(),
            public_url: None,
            reply_budget: default_reply_budget(),
            request_timeout: default_request_timeout(),
            go_lifetime: default_go_lifetime(),
            header_read_timeout: default_header_read_timeout(),
            max_connections: default_max_connections(),
            max_connections_per_peer: default_max_connections_per_peer(),
            idle_timeout: default_idle_timeout(),
            trusted_proxies: Vec::new(),
        }
    }
}

fn default_listen() -> String {
    "0.0.0.0:3000".into()
}
fn default_metrics_listen() -> String {
    "127.0.0.1:9090".into()
}
fn default_reply_budget() -> HumanDuration {
    HumanDuration(Duration::from_millis(2500))
}
fn default_go_lifetime() -> HumanDuration {
    HumanDuration(crate::core::onetime::LIFETIME)
}
fn default_request_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_header_read_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}
fn default_max_connections() -> i64 {
    1024
}
fn default_max_connections_per_peer() -> i64 {
    64
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlanhat {
    #[serde(default)]
    cluster: String,
    api_url: Option<String>,
    portal_url: Option<String>,
    #[serde(default)]
    token: SecretText,
    #[serde(default = "default_timeout")]
    timeout: HumanDuration,
    #[serde(default = "default_max_in_flight")]
    max_in_flight: i64,
    #[serde(default = "default_link_lifetime")]
    link_lifetime: HumanDuration,
    #[serde(default = "default_calls_per_minute")]
    calls_per_minute: i64,
    #[serde(default)]
    notes: RawNotes,
}

impl Default for RawPlanhat {
    fn default() -> Self {
        RawPlanhat {
            cluster: String::new(),
            api_url: None,
            portal_url: None,
            token: SecretText::default(),
            timeout: default_timeout(),
            max_in_flight: default_max_in_flight(),
            link_lifetime: default_link_lifetime(),
            calls_per_minute: default_calls_per_minute(),
            notes: RawNotes::default(),
        }
    }
}

fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_max_in_flight() -> i64 {
    32
}
fn default_link_lifetime() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_calls_per_minute() -> i64 {
    200
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlack {
    #[serde(default = "default_slack_mode")]
    mode: SlackMode,
    #[serde(default)]
    signing_secret: SecretText,
    #[serde(default)]
    bot_token: SecretText,
    #[serde(default)]
    app_token: SecretText,
    api_url: Option<String>,
    #[serde(default = "default_usergroup_ttl")]
    usergroup_ttl: HumanDuration,
    #[serde(default = "default_socket_connections")]
    socket_connections: i64,
}

fn default_socket_connections() -> i64 {
    2
}

fn default_slack_mode() -> SlackMode {
    SlackMode::Http
}
fn default_usergroup_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDiscord {
    #[serde(default = "default_discord_mode")]
    mode: DiscordMode,
    #[serde(default)]
    token: SecretText,
    #[serde(default)]
    application_id: Option<DiscordId>,
    #[serde(default)]
    public_key: SecretText,
    #[serde(default)]
    guild_ids: Vec<DiscordId>,
    api_url: Option<String>,
}

fn default_discord_mode() -> DiscordMode {
    DiscordMode::Gateway
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAccess {
    #[serde(default)]
    scope: Scope,
    #[serde(default)]
    admin_slack_users: Vec<String>,
    #[serde(default)]
    admin_slack_usergroups: Vec<String>,
    #[serde(default)]
    admin_discord_users: Vec<DiscordId>,
    #[serde(default)]
    admin_discord_roles: Vec<DiscordId>,
    #[serde(default)]
    discord_emails: HashMap<String, String>,
    ownership_ttl: Option<HumanDuration>,
    #[serde(default)]
    slack_users: Vec<String>,
    #[serde(default)]
    slack_usergroups: Vec<String>,
    #[serde(default)]
    slack_channels: Vec<String>,
    #[serde(default)]
    discord_users: Vec<DiscordId>,
    #[serde(default)]
    discord_roles: Vec<DiscordId>,
    #[serde(default)]
    discord_guilds: Vec<DiscordId>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default = "default_per_user")]
    per_user_per_minute: i64,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            per_user_per_minute: default_per_user(),
        }
    }
}

fn default_per_user() -> i64 {
    10
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    path: Option<PathBuf>,
    #[serde(default)]
    required: bool,
    rotate: Option<String>,
    #[serde(default = "default_keep")]
    keep: i64,
    database_url: Option<SecretText>,
}

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit {
            path: None,
            required: false,
            rotate: None,
            keep: default_keep(),
            database_url: None,
        }
    }
}

fn default_keep() -> i64 {
    30
}

impl RawAudit {
    fn validate(self, env: &dyn Fn(&str) -> Option<String>) -> Result<AuditConfig, ConfigError> {
        let url = secret(
            "audit.database_url",
            self.database_url.unwrap_or_default(),
            env,
        );
        let database_url = if url.is_empty() {
            None
        } else {
            // Never echo the URL: it may carry a password.
            if let Err(why) = crate::core::audit::db::check_url(url.expose()) {
                return Err(ConfigError::at("audit.database_url", why));
            }
            Some(url)
        };
        let path = self.path.filter(|p| !p.as_os_str().is_empty());
        let rotate = self
            .rotate
            .as_deref()
            .map(|text| parse_rotate(text).map_err(|e| ConfigError::at("audit.rotate", e)))
            .transpose()?;
        if rotate.is_some() && database_url.is_some() {
            return Err(ConfigError::at(
                "audit.rotate",
                "not with audit.database_url: the file then only holds events the database could not take yet, until it takes them",
            ));
        }
        if rotate.is_some() && path.is_none() {
            return Err(ConfigError::at(
                "audit.rotate",
                "needs audit.path (without it audit events go to the log, which has no files to rotate)",
            ));
        }
        if let Some(p) = &path {
            if p.file_name().is_none() {
                return Err(ConfigError::at(
                    "audit.path",
                    format!("{:?} must name a file", p.display().to_string()),
                ));
            }
        }
        Ok(AuditConfig {
            path,
            required: self.required,
            rotate,
            keep: positive("audit.keep", self.keep, 100_000)? as usize,
            database_url,
        })
    }
}

/// `[audit] rotate`: `"daily"`, or a size: a whole number and a unit, `B`, `KB`, `MB`, `GB`
/// (powers of 1000) or `KiB`, `MiB`, `GiB` (powers of 1024), any case, a space allowed between.
/// The error is the problem alone; the caller names the key.
pub fn parse_rotate(text: &str) -> Result<Rotate, String> {
    let t = text.trim();
    let bad = || format!("{text:?} is not \"daily\" or a size like \"100MB\"");
    if t.eq_ignore_ascii_case("daily") {
        return Ok(Rotate::Daily);
    }
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    if number.is_empty() {
        return Err(bad());
    }
    let scale: u64 = match unit.trim_start().to_ascii_lowercase().as_str() {
        "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    let bytes = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("{text:?} is too large a size"))?;
    if bytes == 0 {
        return Err(format!("{text:?} must be more than 0 bytes"));
    }
    Ok(Rotate::Size(bytes))
}

/// A duration written as a human string: `"5s"`, `"250ms"`, `"1m 30s"`.
#[derive(Clone, Copy)]
struct HumanDuration(pub(super) Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(text.trim())
            .map(HumanDuration)
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "invalid duration {text:?}: write it like \"5s\" or \"250ms\""
                ))
            })
    }
}

/// A secret as written in the file. Only a quoted string is accepted, and anything else is
/// refused *without* its value: serde's own message ("invalid type: integer `9876…`") would put
/// a token that someone forgot to quote into the operator's terminal and logs.
#[derive(Default)]
struct SecretText(String);

impl<'de> Deserialize<'de> for SecretText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Text(String),
            Other(serde::de::IgnoredAny),
        }
        match Either::deserialize(d) {
            Ok(Either::Text(text)) => Ok(SecretText(text)),
            // `IgnoredAny` takes any value, so an error here is the deserializer's own (no value
            // of ours in it); still, say the same thing.
            Ok(Either::Other(_)) | Err(_) => {
                Err(serde::de::Error::custom("must be a quoted string"))
            }
        }
    }
}

/// A Discord snowflake, accepted as a string or an integer.
#[derive(Clone, Copy)]
struct DiscordId(pub(super) u64);

impl<'de> Deserialize<'de> for DiscordId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Int(i64),
            Text(String),
        }
        let bad = |shown: String| {
            serde::de::Error::custom(format!("{shown} is not a Discord id (a positive number)"))
        };
        match Either::deserialize(d)? {
            Either::Int(n) if n > 0 => Ok(DiscordId(n as u64)),
            Either::Int(n) => Err(bad(n.to_string())),
            Either::Text(s) => match s.trim().parse::<u64>() {
                Ok(n) if n > 0 => Ok(DiscordId(n)),
                _ => Err(bad(format!("{s:?}"))),
            },
        }
    }
}

/// `access.discord_emails`: keys are Discord user ids, values look like emails. Two keys that
/// name the same user (`"123"`, `"0123"`, `" 123"`) are refused, naming both: otherwise one
/// would silently win, and which one would depend on the map's order.
fn discord_emails(raw: HashMap<String, String>) -> Result<HashMap<u64, String>, ConfigError> {
    let key = "access.discord_emails";
    // In key order, so that the error names the same pair on every start.
    let mut raw: Vec<(String, String)> = raw.into_iter().collect();
    raw.sort();
    let mut emails: HashMap<u64, String> = HashMap::with_capacity(raw.len());
    let mut written: HashMap<u64, String> = HashMap::with_capacity(raw.len());
    for (text, email) in raw {
        let id = text
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| ConfigError::at(key, format!("{text:?} is not a Discord user id")))?;
        let email = email.trim().to_ascii_lowercase();
        if !email.contains('@') || email.chars().any(char::is_whitespace) {
            return Err(ConfigError::at(
                key,
                format!("{email:?} (for {id}) is not an email address"),
            ));
        }
        if let Some(first) = written.get(&id) {
            return Err(ConfigError::at(
                key,
                format!("{first:?} and {text:?} are the same Discord user ({id}); keep one"),
            ));
        }
        written.insert(id, text);
        emails.insert(id, email);
    }
    Ok(emails)
}

fn ids(list: Vec<DiscordId>) -> Vec<u64> {
    list.into_iter().map(|d| d.0).collect()
}

/// Parses an absolute http(s) URL and drops a trailing slash, so `{base}/path` joins cleanly.
fn base_url(key: &str, text: &str) -> Result<Url, ConfigError> {
    let trimmed = text.trim().trim_end_matches('/');
    let url = Url::parse(trimmed)
        .map_err(|e| ConfigError::at(key, format!("{text:?} is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ConfigError::at(
            key,
            format!("{text:?} must be an http(s) URL with a host"),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::at(
            key,
            format!("{text:?} must not have a query or fragment"),
        ));
    }
    // Every one of these URLs is sent a credential (the Planhat or a chat token) or hands out
    // signed URLs; over plain http anyone on the path reads it. Loopback stays allowed for tests,
    // the sandbox and a local TLS-terminating proxy.
    if url.scheme() == "http" && !is_loopback(&url) {
        return Err(ConfigError::at(
            key,
            format!(
                "{text:?} must be https (plain http is allowed only for 127.0.0.1, ::1 or localhost)"
            ),
        ));
    }
    Ok(url)
}

/// True for 127.0.0.0/8, ::1 and `localhost`.
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// The value of a secret: the environment variable when set and non-empty, else the file's.
fn secret(key: &str, file_value: SecretText, env: &dyn Fn(&str) -> Option<String>) -> Secret {
    let var = ENV_OVERRIDES
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| *v);
    match var.and_then(env).filter(|v| !v.trim().is_empty()) {
        Some(v) => Secret::new(v.trim()),
        None => Secret::new(file_value.0.trim()),
    }
}

fn require(key: &str, value: &Secret, why: &str) -> Result<(), ConfigError> {
    if value.is_empty() {
        let var = ENV_OVERRIDES
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v);
        let hint = var.map(|v| format!(" (or set {v})")).unwrap_or_default();
        return Err(ConfigError::at(key, format!("missing: {why}{hint}")));
    }
    Ok(())
}

/// One entry of `server.trusted_proxies`: a CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a bare
/// address (one host). Host bits are dropped (`10.1.2.3/8` is `10.0.0.0/8`).
fn parse_cidr(text: &str) -> Option<ipnet::IpNet> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .map(|net| net.trunc())
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .ok()
}

fn positive(key: &str, value: i64, max: i64) -> Result<i64, ConfigError> {
    if value < 1 || value > max {
        return Err(ConfigError::at(
            key,
            format!("{value} is out of range (1 to {max})"),
        ));
    }
    Ok(value)
}

/// Both Planhat URLs for a cluster name (`""` is app.planhat.com).
pub fn cluster_urls(cluster: &str) -> Result<(Url, Url), ConfigError> {
    let c = cluster.trim();
    if !c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-') {
        return Err(ConfigError::at(
            "planhat.cluster",
            format!(
                "{cluster:?} is not a cluster name (like \"eu5\", or \"\" for app.planhat.com)"
            ),
        ));
    }
    let (api, share) = if c.is_empty() {
        (
            "https://api.planhat.com".to_string(),
            "https://share.planhat.com".to_string(),
        )
    } else {
        (
            format!("https://api-{c}.planhat.com"),
            format!("https://share-{c}.planhat.com"),
        )
    };
    Ok((
        base_url("planhat.cluster", &api)?,
        base_url("planhat.cluster", &share)?,
    ))
}

impl RawConfig {
    fn validate(self, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let listen = self
            .server
            .listen
            .trim()
            .parse::<SocketAddr>()
            .map_err(|_| {
                ConfigError::at(
                    "server.listen",
                    format!(
                        "{:?} is not an address like \"0.0.0.0:3000\"",
                        self.server.listen
                    ),
                )
            })?;
        let metrics_listen = self
            .server
            .metrics_listen
            .trim()
            .parse::<SocketAddr>()
            .map_err(|_| {
                ConfigError::at(
                    "server.metrics_listen",
                    format!(
                        "{:?} is not an address like \"127.0.0.1:9090\"",
                        self.server.metrics_listen
                    ),
                )
            })?;
        if metrics_listen == listen && listen.port() != 0 {
            return Err(ConfigError::at(
                "server.metrics_listen",
                "must differ from server.listen: /metrics is kept off the public listener",
            ));
        }
        let public_url = self
            .server
            .public_url
            .as_deref()
            .filter(|u| !u.trim().is_empty())
            .map(|u| base_url("server.public_url", u))
            .transpose()?;
        let reply_budget = self.server.reply_budget.0;
        if reply_budget > Duration::from_millis(2900) {
            return Err(ConfigError::at(
                "server.reply_budget",
                "must be under 2.9s: the chat platforms drop answers after 3s",
            ));
        }

        let request_timeout = self.server.request_timeout.0;
        if request_timeout < Duration::from_secs(1) || request_timeout > Duration::from_secs(120) {
            return Err(ConfigError::at(
                "server.request_timeout",
                "must be between 1s and 120s",
            ));
        }
        if request_timeout < reply_budget + Duration::from_secs(1) {
            return Err(ConfigError::at(
                "server.request_timeout",
                "must be at least server.reply_budget + 1s, or chat requests would be cut off before they are acknowledged",
            ));
        }

        let go_lifetime = self.server.go_lifetime.0;
        if go_lifetime < Duration::from_secs(30) || go_lifetime > crate::core::onetime::LIFETIME {
            return Err(ConfigError::at(
                "server.go_lifetime",
                "must be between 30s and 10m",
            ));
        }
        let header_read_timeout = self.server.header_read_timeout.0;
        if header_read_timeout < Duration::from_secs(1)
            || header_read_timeout > Duration::from_secs(120)
        {
            return Err(ConfigError::at(
                "server.header_read_timeout",
                "must be between 1s and 120s",
            ));
        }
        let max_connections = positive(
            "server.max_connections",
            self.server.max_connections,
            1_000_000,
        )?;
        let max_connections_per_peer = positive(
            "server.max_connections_per_peer",
            self.server.max_connections_per_peer,
            max_connections,
        )?;
        let idle_timeout = self.server.idle_timeout.0;
        if idle_timeout < Duration::from_millis(100) || idle_timeout > header_read_timeout {
            return Err(ConfigError::at(
                "server.idle_timeout",
                "must be between 100ms and server.header_read_timeout",
            ));
        }
        let trusted_proxies = self
            .server
            .trusted_proxies
            .iter()
            .map(|text| {
                parse_cidr(text).ok_or_else(|| {
                    ConfigError::at(
                        "server.trusted_proxies",
                        format!("{text:?} is not an address or a CIDR like \"10.0.0.0/8\""),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;

        let (cluster_api, cluster_portal) = cluster_urls(&self.planhat.cluster)?;
        let api_url = match self.planhat.api_url.as_deref() {
            Some(u) => base_url("planhat.api_url", u)?,
            None => cluster_api,
        };
        let portal_url = match self.planhat.portal_url.as_deref() {
            Some(u) => base_url("planhat.portal_url", u)?,
            None => cluster_portal,
        };
        let timeout = self.planhat.timeout.0;
        if timeout.is_zero() || timeout > Duration::from_secs(60) {
            return Err(ConfigError::at(
                "planhat.timeout",
                "must be between 1ms and 60s",
            ));
        }
        let link_lifetime = self.planhat.link_lifetime.0;
        if link_lifetime.is_zero() || link_lifetime > Duration::from_secs(600) {
            return Err(ConfigError::at(
                "planhat.link_lifetime",
                "must be between 1ms and 10m (Planhat's links live 30s)",
            ));
        }
        let token = secret("planhat.token", self.planhat.token, env);
        if token.expose().chars().any(|c| !c.is_ascii_graphic()) {
            return Err(ConfigError::at(
                "planhat.token",
                "has spaces or characters a token can't have (copy it again from Planhat)",
            ));
        }
        let planhat = PlanhatConfig {
            api_url,
            portal_url,
            token,
            timeout,
            max_in_flight: positive("planhat.max_in_flight", self.planhat.max_in_flight, 10_000)?
                as usize,
            link_lifetime,
            calls_per_minute: positive(
                "planhat.calls_per_minute",
                self.planhat.calls_per_minute,
                1_000_000,
            )? as u32,
            notes: self.planhat.notes.enabled,
        };

        let slack = self
            .slack
            .map(|s| -> Result<SlackConfig, ConfigError> {
                let cfg = SlackConfig {
                    mode: s.mode,
                    signing_secret: secret("slack.signing_secret", s.signing_secret, env),
                    bot_token: secret("slack.bot_token", s.bot_token, env),
                    app_token: secret("slack.app_token", s.app_token, env),
                    api_url: base_url(
                        "slack.api_url",
                        s.api_url.as_deref().unwrap_or("https://slack.com/api"),
                    )?,
                    usergroup_ttl: s.usergroup_ttl.0,
                    socket_connections: positive(
                        "slack.socket_connections",
                        s.socket_connections,
                        10,
                    )? as usize,
                };
                if cfg.usergroup_ttl < Duration::from_secs(10)
                    || cfg.usergroup_ttl > Duration::from_secs(86_400)
                {
                    return Err(ConfigError::at(
                        "slack.usergroup_ttl",
                        "must be between 10s and 24h",
                    ));
                }
                require("slack.bot_token", &cfg.bot_token, "Slack is on")?;
                match cfg.mode {
                    SlackMode::Http => require(
                        "slack.signing_secret",
                        &cfg.signing_secret,
                        "Slack http mode verifies every request with it",
                    )?,
                    SlackMode::Socket => require(
                        "slack.app_token",
                        &cfg.app_token,
                        "Slack socket mode connects with it",
                    )?,
                }
                Ok(cfg)
            })
            .transpose()?;

        let discord = self
            .discord
            .map(|d| -> Result<DiscordConfig, ConfigError> {
                let token = secret("discord.token", d.token, env);
                require("discord.token", &token, "Discord is on")?;
                let application_id = d.application_id.map(|i| i.0).ok_or_else(|| {
                    ConfigError::at("discord.application_id", "missing: Discord is on")
                })?;
                let key_text = secret("discord.public_key", d.public_key, env);
                let public_key = match (d.mode, key_text.is_empty()) {
                    (DiscordMode::Http, true) => {
                        return Err(ConfigError::at(
                            "discord.public_key",
                            "missing: Discord http mode verifies every request with it (or set DISCORD_PUBLIC_KEY)",
                        ))
                    }
                    (_, true) => [0u8; 32],
                    (_, false) => parse_public_key(key_text.expose())?,
                };
                Ok(DiscordConfig {
                    mode: d.mode,
                    token,
                    application_id,
                    public_key,
                    guild_ids: ids(d.guild_ids),
                    api_url: base_url(
                        "discord.api_url",
                        d.api_url.as_deref().unwrap_or("https://discord.com/api/v10"),
                    )?,
                })
            })
            .transpose()?;

        let ownership_ttl = self
            .access
            .ownership_ttl
            .map_or(DEFAULT_OWNERSHIP_TTL, |d| d.0);
        if !(MIN_OWNERSHIP_TTL..=MAX_OWNERSHIP_TTL).contains(&ownership_ttl) {
            return Err(ConfigError::at(
                "access.ownership_ttl",
                "must be between 1m and 1h",
            ));
        }
        let access = AccessConfig {
            slack_users: trimmed(self.access.slack_users),
            slack_usergroups: trimmed(self.access.slack_usergroups),
            slack_channels: trimmed(self.access.slack_channels),
            discord_users: ids(self.access.discord_users),
            discord_roles: ids(self.access.discord_roles),
            discord_guilds: ids(self.access.discord_guilds),
            scope: self.access.scope,
            admin_slack_users: trimmed(self.access.admin_slack_users),
            admin_slack_usergroups: trimmed(self.access.admin_slack_usergroups),
            admin_discord_users: ids(self.access.admin_discord_users),
            admin_discord_roles: ids(self.access.admin_discord_roles),
            discord_emails: discord_emails(self.access.discord_emails)?,
            ownership_ttl,
            ownership_at_click: OWNERSHIP_AT_CLICK.min(ownership_ttl),
        };
        let limits = LimitsConfig {
            per_user_per_minute: positive(
                "limits.per_user_per_minute",
                self.limits.per_user_per_minute,
                10_000,
            )? as u32,
        };
        let audit = self.audit.validate(env)?;
        let state = self.state.validate(env)?;
        let notify = NotifyConfig {
            slack_channel: self
                .notify
                .slack_channel
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty()),
            discord_channel: self.notify.discord_channel.map(|d| d.0),
        };
        if let Some(c) = &notify.slack_channel {
            if !c.chars().all(|ch| ch.is_ascii_alphanumeric()) {
                return Err(ConfigError::at(
                    "notify.slack_channel",
                    format!("{c:?} is not a Slack channel id (like \"C0123456789\")"),
                ));
            }
        }
        let sign_in = self
            .sign_in
            .map(|raw| {
                raw.validate(
                    sign_in::Context {
                        public_url: public_url.as_ref(),
                        slack_on: slack.is_some(),
                        discord_on: discord.is_some(),
                        discord_emails: !access.discord_emails.is_empty(),
                    },
                    env,
                )
            })
            .transpose()?;
        let search = match self.search {
            None => None,
            Some(raw) => {
                let refresh = raw.refresh.0;
                if !refresh.is_zero() && refresh < Duration::from_secs(60) {
                    return Err(ConfigError::at(
                        "search.refresh",
                        "must be 0 (read at start only) or at least 1m: each read costs Planhat calls",
                    ));
                }
                Some(SearchConfig {
                    refresh,
                    max_end_users: positive("search.max_end_users", raw.max_end_users, 5_000_000)?
                        as usize,
                })
            }
        };
        let approvals = self
            .approvals
            .map(|raw| raw.validate(access.scope))
            .transpose()?;
        Ok(Config {
            approvals,
            notify,
            state,
            sign_in,
            search,
            server: ServerConfig {
                listen,
                metrics_listen,
                public_url,
                reply_budget,
                request_timeout,
                go_lifetime,
                header_read_timeout,
                max_connections: max_connections as usize,
                max_connections_per_peer: max_connections_per_peer as usize,
                idle_timeout,
                trusted_proxies,
            },
            planhat,
            slack,
            discord,
            access,
            limits,
            audit,
        })
    }
}

impl RawState {
    fn validate(self, env: &dyn Fn(&str) -> Option<String>) -> Result<StateConfig, ConfigError> {
        let url = secret("state.redis_url", self.redis_url.unwrap_or_default(), env);
        let redis_url = if url.is_empty() {
            None
        } else {
            // Never echo the URL: it may carry a password.
            let scheme = Url::parse(url.expose())
                .ok()
                .map(|u| u.scheme().to_string());
            match scheme.as_deref() {
                Some("redis" | "rediss") => Some(url),
                _ => return Err(ConfigError::at(
                    "state.redis_url",
                    "must be a redis:// or rediss:// URL (like \"redis://:password@host:6379/0\")",
                )),
            }
        };
        let key_prefix = self.key_prefix;
        if key_prefix.len() > 64
            || key_prefix
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ConfigError::at(
                "state.key_prefix",
                "must be at most 64 characters, without spaces",
            ));
        }
        let seal_key = secret("state.seal_key", self.seal_key.unwrap_or_default(), env);
        let seal_key = if seal_key.is_empty() {
            None
        } else if seal_key.expose().len() < 32 {
            return Err(ConfigError::at(
                "state.seal_key",
                "must be at least 32 characters (e.g. `openssl rand -base64 32`)",
            ));
        } else {
            Some(seal_key)
        };
        Ok(StateConfig {
            redis_url,
            key_prefix,
            seal_key,
        })
    }
}

/// Checks that a Planhat token is configured; `serve`, `link` and `check` need one (the
/// sandbox brings its own).
pub fn require_planhat_token(config: &Config) -> Result<(), ConfigError> {
    require(
        "planhat.token",
        &config.planhat.token,
        "every Planhat call needs it",
    )
}

/// Error texts from the TOML parser may span lines; the operator gets one.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn trimmed(list: Vec<String>) -> Vec<String> {
    list.into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn parse_public_key(text: &str) -> Result<[u8; 32], ConfigError> {
    let bytes = hex::decode(text.trim()).map_err(|_| {
        ConfigError::at(
            "discord.public_key",
            "must be the hex public key from the developer portal",
        )
    })?;
    bytes.try_into().map_err(|_| {
        ConfigError::at(
            "discord.public_key",
            "must be 64 hex characters (a 32-byte Ed25519 key)",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, &no_env)
    }

    #[test]
    fn empty_file_gives_defaults_for_app_planhat_com() {
        let c = parse("").unwrap();
        assert_eq!(c.planhat.api_url.as_str(), "https://api.planhat.com/");
        assert_eq!(c.planhat.portal_url.as_str(), "https://share.planhat.com/");
        assert_eq!(c.planhat.timeout, Duration::from_secs(5));
        assert_eq!(c.planhat.max_in_flight, 32);
        assert_eq!(c.planhat.calls_per_minute, 200);
        assert_eq!(c.limits.per_user_per_minute, 10);
        assert!(c.slack.is_none() && c.discord.is_none());
        assert!(c.access.slack_users.is_empty());
    }

    #[test]
    fn cluster_derives_both_urls_and_overrides_win() {
        let c = parse("[planhat]\ncluster = \"eu5\"\n").unwrap();
        assert_eq!(c.planhat.api_url.as_str(), "https://api-eu5.planhat.com/");
        assert_eq!(
            c.planhat.portal_url.as_str(),
            "https://share-eu5.planhat.com/"
        );
        let c = parse(
            "[planhat]\ncluster = \"eu5\"\napi_url = \"http://127.0.0.1:9/x/\"\nportal_url = \"http://127.0.0.1:8\"\n",
        )
        .unwrap();
        assert_eq!(c.planhat.api_url.as_str(), "http://127.0.0.1:9/x");
        assert_eq!(c.planhat.portal_url.as_str(), "http://127.0.0.1:8/");
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[planhat]\ntimout = \"5s\"\n", "planhat"),
            ("[planhat]\ntimeout = \"5 parsecs\"\n", "planhat.timeout"),
            ("[planhat]\ntimeout = 5\n", "planhat.timeout"),
            ("[planhat]\napi_url = \"not a url\"\n", "planhat.api_url"),
            ("[planhat]\nmax_in_flight = 0\n", "planhat.max_in_flight"),
            ("[planhat]\ncalls_per_minute = 0\n", "planhat.calls_per_minute"),
            ("[server]\nlisten = \"here\"\n", "server.listen"),
            ("[server]\nmetrics_listen = \"9090\"\n", "server.metrics_listen"),
            (
                "[server]\nlisten = \"127.0.0.1:9090\"\n",
                "server.metrics_listen",
            ),
            (
                "[limits]\nper_user_per_minute = -1\n",
                "limits.per_user_per_minute",
            ),
            (
                "[slack]\nmode = \"http\"\nbot_token = \"x\"\n",
                "slack.signing_secret",
            ),
            (
                "[slack]\nmode = \"socket\"\nbot_token = \"x\"\n",
                "slack.app_token",
            ),
            ("[slack]\nmode = \"carrier-pigeon\"\n", "slack.mode"),
            ("[discord]\ntoken = \"t\"\n", "discord.application_id"),
            (
                "[discord]\nmode = \"http\"\ntoken = \"t\"\napplication_id = 1\n",
                "discord.public_key",
            ),
            (
                "[access]\ndiscord_roles = [\"abc\"]\n",
                "access.discord_roles",
            ),
            ("[bogus]\n", "bogus"),
            ("[planhat]\nlink_lifetime = \"1h\"\n", "planhat.link_lifetime"),
            ("[planhat]\ntoken = \"abc def\"\n", "planhat.token"),
            ("[server]\nrequest_timeout = \"2s\"\n", "server.request_timeout"),
            ("[server]\ngo_lifetime = \"10s\"\n", "server.go_lifetime"),
            ("[server]\ngo_lifetime = \"1h\"\n", "server.go_lifetime"),
            ("[state]\nredis_url = \"http://x\"\n", "state.redis_url"),
            ("[slack]\nsocket_connections = 11\n", "slack.socket_connections"),
            ("[server]\nheader_read_timeout = \"0s\"\n", "server.header_read_timeout"),
            ("[server]\nmax_connections = 0\n", "server.max_connections"),
            (
                "[server]\nmax_connections = 10\nmax_connections_per_peer = 11\n",
                "server.max_connections_per_peer",
            ),
            ("[slack]\nmode = \"socket\"\nbot_token = \"x\"\napp_token = \"y\"\nusergroup_ttl = \"0s\"\n", "slack.usergroup_ttl"),
            ("[audit]\npath = \"a.jsonl\"\nrotate = \"weekly\"\n", "audit.rotate"),
            ("[audit]\npath = \"a.jsonl\"\nrotate = 100\n", "audit.rotate"),
            ("[audit]\nrotate = \"daily\"\n", "audit.rotate"),
            ("[audit]\npath = \"a.jsonl\"\nkeep = 0\n", "audit.keep"),
            ("[audit]\npath = \"/\"\n", "audit.path"),
            ("[audit]\nrotat = \"daily\"\n", "rotat"),
        ];
        for (text, key) in cases {
            let err = parse(text).expect_err(text).to_string();
            assert!(
                err.contains(key),
                "{text:?} gave {err:?}, expected it to name {key}"
            );
            assert!(!err.contains('\n'), "one line please: {err:?}");
        }
    }

    #[test]
    fn syntax_errors_give_the_line() {
        let err = parse("[planhat]\ntoken = \n").unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn environment_wins_for_secrets() {
        let env = |name: &str| (name == "PLANHAT_API_TOKEN").then(|| "from-env".to_string());
        let c = Config::parse("[planhat]\ntoken = \"from-file\"\n", &env).unwrap();
        assert_eq!(c.planhat.token.expose(), "from-env");
        let c = Config::parse("[planhat]\ntoken = \"from-file\"\n", &no_env).unwrap();
        assert_eq!(c.planhat.token.expose(), "from-file");
        assert!(require_planhat_token(&parse("").unwrap())
            .unwrap_err()
            .to_string()
            .contains("PLANHAT_API_TOKEN"));
    }

    #[test]
    fn discord_ids_as_strings_or_integers() {
        let c = parse(
            "[discord]\ntoken = \"t\"\napplication_id = \"123\"\nguild_ids = [1, \"2\"]\n[access]\ndiscord_roles = [7, \"8\"]\n",
        )
        .unwrap();
        let d = c.discord.unwrap();
        assert_eq!(d.application_id, 123);
        assert_eq!(d.guild_ids, vec![1, 2]);
        assert_eq!(c.access.discord_roles, vec![7, 8]);
    }

    /// Keys that name the same Discord user (leading zeros, spaces) would collapse into one
    /// entry, and which email won would depend on the map's order: refused at start, naming
    /// both keys (issue 19, item 12).
    #[test]
    fn discord_email_keys_for_the_same_user_are_refused() {
        for (a, b) in [("123", "0123"), ("123", " 123"), ("0123", "00123 ")] {
            let text = format!(
                "[access]\ndiscord_emails = {{ \"{a}\" = \"casey@acme.com\", \"{b}\" = \"mallory@acme.com\" }}\n"
            );
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.starts_with("access.discord_emails: "), "{e}");
            assert!(
                e.contains(&format!("{a:?}")) && e.contains(&format!("{b:?}")),
                "names both keys: {e}"
            );
            assert!(e.contains("same Discord user"), "{e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        // Distinct users stay distinct.
        let c = parse(
            "[access]\ndiscord_emails = { \"123\" = \"a@acme.com\", \"1230\" = \"b@acme.com\" }\n",
        )
        .unwrap();
        assert_eq!(c.access.discord_emails.len(), 2);
    }

    /// `access.ownership_ttl`: how long ownership answers are trusted (issue 19, item 13).
    #[test]
    fn ownership_ttl_defaults_to_five_minutes_within_a_range() {
        let c = parse("").unwrap();
        assert_eq!(c.access.ownership_ttl, Duration::from_secs(300));
        assert_eq!(c.access.ownership_at_click, Duration::from_secs(60));
        let c = parse("[access]\nownership_ttl = \"90s\"\n").unwrap();
        assert_eq!(c.access.ownership_ttl, Duration::from_secs(90));
        let c = parse("[access]\nownership_ttl = \"1m\"\n").unwrap();
        assert_eq!(c.access.ownership_at_click, Duration::from_secs(60));
        for bad in ["\"30s\"", "\"2h\"", "\"soon\"", "5"] {
            let e = parse(&format!("[access]\nownership_ttl = {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("access.ownership_ttl"), "{bad}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../../../config.example.toml");
        let env = |name: &str| match name {
            "DISCORD_PUBLIC_KEY" => Some("ab".repeat(32)),
            "PORTAL_BOT_REDIS_URL" => Some("redis://127.0.0.1:6379/0".into()),
            // The file trail, as the example has it; the database is switched on below.
            "PORTAL_BOT_AUDIT_DATABASE_URL" => None,
            "PORTAL_BOT_SEAL_KEY" | "PORTAL_BOT_COOKIE_KEY" => {
                Some(format!("env-{name}-{}", "k".repeat(32)))
            }
            _ => Some(format!("env-{name}")),
        };
        let c = Config::parse(text, &env).expect("config.example.toml must stay valid");
        assert!(c.slack.is_some() && c.discord.is_some());
        // The commented-out audit rotation, switched on, is valid too.
        let on = text
            .replace("# rotate = ", "rotate = ")
            .replace("# keep = ", "keep = ");
        let c = Config::parse(&on, &env).expect("the example's rotation must be valid");
        assert_eq!((c.audit.rotate, c.audit.keep), (Some(Rotate::Daily), 30));
        // The commented-out database, switched on, is valid; with rotation it is not (the file
        // is then only the database's fallback).
        let db = text.replace("# database_url = ", "database_url = ");
        let c = Config::parse(&db, &env).expect("the example's database must be valid");
        assert!(c.audit.database_url.is_some());
        let both = db.replace("# rotate = ", "rotate = ");
        let e = Config::parse(&both, &env).unwrap_err().to_string();
        assert!(
            e.starts_with("audit.rotate: not with audit.database_url"),
            "{e}"
        );
        // The environment wins, and a bad URL is refused without being echoed.
        let bad = |name: &str| match name {
            "PORTAL_BOT_AUDIT_DATABASE_URL" => Some("mysql://u:hunter2@db/x".to_string()),
            other => env(other),
        };
        let e = Config::parse(&db, &bad).unwrap_err().to_string();
        assert!(
            e.starts_with("audit.database_url: must be a PostgreSQL URL"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let c = Config::parse(
            "[planhat]\ntoken = \"ph-secret-123\"\n[slack]\nsigning_secret = \"sig-secret-456\"\nbot_token = \"xoxb-789\"\n",
            &no_env,
        )
        .unwrap();
        let shown = format!("{c:?}");
        for s in ["ph-secret-123", "sig-secret-456", "xoxb-789"] {
            assert!(!shown.contains(s), "{s} leaked in Debug");
        }
    }

    #[test]
    fn audit_rotation_is_daily_or_a_size() {
        let c = parse("[audit]\npath = \"a.jsonl\"\n").unwrap();
        assert_eq!((c.audit.rotate, c.audit.keep), (None, 30));
        let c = parse("[audit]\npath = \"a.jsonl\"\nrotate = \"daily\"\nkeep = 7\n").unwrap();
        assert_eq!((c.audit.rotate, c.audit.keep), (Some(Rotate::Daily), 7));
        for (text, bytes) in [
            ("100MB", 100_000_000),
            ("1KB", 1_000),
            ("1 kib", 1_024),
            ("2GiB", 2 << 30),
            (" 512B ", 512),
            ("3mib", 3 << 20),
        ] {
            assert_eq!(parse_rotate(text), Ok(Rotate::Size(bytes)), "{text}");
        }
        for text in [
            "weekly",
            "",
            "MB",
            "100",
            "1.5GB",
            "-1MB",
            "0MB",
            "99999999999999999999GB",
            "1TB",
        ] {
            assert!(parse_rotate(text).is_err(), "{text}");
        }
        let err = parse("[audit]\npath = \"a.jsonl\"\nrotate = \"weekly\"\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "audit.rotate: \"weekly\" is not \"daily\" or a size like \"100MB\""
        );
    }

    #[test]
    fn the_audit_command_reads_only_the_audit_section() {
        let dir = std::env::temp_dir().join(format!("pb-config-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        // Slack on without its secrets: serve would refuse this file, the audit reader needn't.
        std::fs::write(
            &file,
            "[slack]\nmode = \"http\"\n[audit]\npath = \"t.jsonl\"\nrotate = \"1KB\"\n",
        )
        .unwrap();
        let audit = AuditConfig::load(&file).unwrap();
        assert_eq!(audit.path.as_deref(), Some(Path::new("t.jsonl")));
        assert_eq!(audit.rotate, Some(Rotate::Size(1_000)));
        std::fs::write(&file, "[audit]\nkeep = \"many\"\n").unwrap();
        let err = AuditConfig::load(&file).unwrap_err().to_string();
        assert!(err.starts_with("audit.keep:"), "{err}");
        std::fs::write(&file, "[audit\n").unwrap();
        let err = AuditConfig::load(&file).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        std::fs::write(&file, "").unwrap();
        assert!(AuditConfig::load(&file).unwrap().path.is_none());
    }

    #[test]
    fn plain_http_is_refused_unless_the_host_is_loopback() {
        let keys = [
            ("planhat", "api_url", ""),
            ("planhat", "portal_url", ""),
            ("server", "public_url", ""),
            (
                "slack",
                "api_url",
                "mode = \"socket\"\nbot_token = \"b\"\napp_token = \"a\"\n",
            ),
            ("discord", "api_url", "token = \"t\"\napplication_id = 1\n"),
        ];
        for (section, key, rest) in keys {
            for url in [
                "http://attacker.example",
                "http://10.0.0.1:8080/x",
                "http://127.0.0.1.example",
            ] {
                let text = format!("[{section}]\n{rest}{key} = \"{url}\"\n");
                let err = parse(&text).expect_err(&text).to_string();
                assert!(err.starts_with(&format!("{section}.{key}: ")), "{err}");
                assert!(err.contains("https"), "{err}");
                assert!(!err.contains('\n'), "{err}");
            }
            for url in [
                "http://127.0.0.1:9",
                "http://127.3.4.5",
                "http://[::1]:8080/api",
                "http://localhost:3000",
                "https://attacker.example",
            ] {
                let text = format!("[{section}]\n{rest}{key} = \"{url}\"\n");
                assert!(parse(&text).is_ok(), "{text:?}: {:?}", parse(&text).err());
            }
        }
    }

    /// The keys whose values are credentials (their error messages must never show them).
    const SECRET_KEYS: [(&str, &str); 6] = [
        ("planhat", "token"),
        ("slack", "signing_secret"),
        ("slack", "bot_token"),
        ("slack", "app_token"),
        ("discord", "token"),
        ("discord", "public_key"),
    ];

    #[test]
    fn a_secret_written_unquoted_is_not_echoed() {
        for (section, key) in SECRET_KEYS {
            for value in [
                "9876543210123",
                "98765.4321",
                "true",
                "[98765]",
                "{ a = 98765 }",
            ] {
                let text = format!("[{section}]\n{key} = {value}\n");
                let err = parse(&text).expect_err(&text).to_string();
                assert_eq!(
                    err,
                    format!("{section}.{key}: must be a quoted string"),
                    "{text:?}"
                );
            }
        }
    }

    #[test]
    fn trusted_proxies_and_idle_timeout() {
        let cfg = parse(
            "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \" 192.0.2.7 \", \"2001:db8::/32\", \"10.1.2.3/16\"]\nidle_timeout = \"500ms\"\n",
        )
        .unwrap();
        let nets: Vec<String> = cfg
            .server
            .trusted_proxies
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            nets,
            ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32", "10.1.0.0/16"]
        );
        assert_eq!(cfg.server.idle_timeout, Duration::from_millis(500));
        let defaults = parse("").unwrap().server;
        assert!(defaults.trusted_proxies.is_empty());
        assert_eq!(defaults.idle_timeout, Duration::from_secs(1));
        for bad in [
            "\"10.0.0.0/33\"",
            "\"proxy.internal\"",
            "\"\"",
            "\"10.0.0.0/8,10.1.0.0/16\"",
        ] {
            let err = parse(&format!("[server]\ntrusted_proxies = [{bad}]\n"))
                .expect_err(bad)
                .to_string();
            assert!(err.starts_with("server.trusted_proxies: "), "{err}");
        }
        for bad in ["\"50ms\"", "\"6s\""] {
            let err = parse(&format!("[server]\nidle_timeout = {bad}\n"))
                .expect_err(bad)
                .to_string();
            assert!(err.starts_with("server.idle_timeout: "), "{err}");
        }
    }

    proptest! {
        /// Any network written as CIDR or as a bare address reads back as itself, and nothing
        /// else an operator types makes the reader panic.
        #[test]
        fn trusted_proxies_read_back(bytes in any::<[u8; 16]>(), v4 in any::<bool>(), len in 0u8..=128, junk in "\\PC{0,40}") {
            let net = if v4 {
                ipnet::IpNet::new(std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).into(), len % 33)
            } else {
                ipnet::IpNet::new(std::net::Ipv6Addr::from(bytes).into(), len)
            }
            .unwrap();
            prop_assert_eq!(parse_cidr(&net.to_string()), Some(net.trunc()));
            prop_assert_eq!(parse_cidr(&net.addr().to_string()), Some(ipnet::IpNet::from(net.addr())));
            let _ = parse_cidr(&junk);
        }

        #[test]
        fn no_rotate_value_panics(text in "\\PC{0,30}", digits in "[0-9]{1,25}", unit in "[ kKmMgGiIbB]{0,4}") {
            let _ = parse_rotate(&text);
            let _ = parse_rotate(&format!("{digits}{unit}"));
        }

        #[test]
        fn no_input_makes_the_parser_panic(text in ".{0,400}") {
            let _ = parse(&text);
        }

        #[test]
        fn an_unquoted_secret_never_reaches_the_error(
            which in 0usize..6,
            value in prop_oneof![
                any::<i64>().prop_map(|n| n.to_string()),
                any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:?}")),
            ],
        ) {
            let (section, key) = SECRET_KEYS[which];
            let text = format!("[{section}]\n{key} = {value}\n");
            if let Err(e) = parse(&text) {
                let err = e.to_string();
                prop_assert!(!err.chars().any(|c| c.is_ascii_digit()), "{text:?} gave {err:?}");
            }
        }

        #[test]
        fn no_value_makes_a_key_panic(
            key in prop::sample::select(vec!["timeout", "api_url", "max_in_flight", "cluster", "token", "link_lifetime"]),
            value in "[ -~]{0,40}",
        ) {
            let text = format!("[planhat]\n{key} = {}\n", toml::Value::String(value));
            let _ = parse(&text);
        }
    }
}
