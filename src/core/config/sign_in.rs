//! `[sign_in]`: who is at the browser when a `/go/` link is opened (see `core::signin`).
//!
//! Kept apart from the rest of the file's checks because it is a feature of its own with rules
//! that span sections: it needs `server.public_url` (the providers send the browser back to
//! `{public_url}/go/signed-in`), a provider for every chat that is on, and for the company's
//! own provider, a way to know each asker's email.

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::{base_url, secret, ConfigError, HumanDuration, SecretText};
use crate::core::secret::Secret;

/// `[sign_in]`, validated.
#[derive(Debug, Clone)]
pub struct SignInConfig {
    /// Signs the session cookies; the same on every replica (32 bytes or more).
    pub cookie_key: Secret,
    /// How long a signed-in browser opens links without signing in again.
    pub session_lifetime: Duration,
    /// Sign in with Slack (OpenID Connect).
    pub slack: Option<OidcProvider>,
    /// Discord OAuth2 (`identify`).
    pub discord: Option<DiscordProvider>,
    /// The company's own OpenID Connect provider, for askers of both chats.
    pub oidc: Option<OidcProvider>,
}

/// An OpenID Connect provider: Slack's, or the company's.
#[derive(Debug, Clone)]
pub struct OidcProvider {
    /// Discovery is at `{issuer}/.well-known/openid-configuration`.
    pub issuer: Url,
    pub client_id: String,
    pub client_secret: Secret,
    /// The claim matched against the asker's email (the company's provider).
    pub claim: String,
    /// Step-up: the person must have authenticated at the provider this recently.
    pub max_age: Option<Duration>,
}

/// Discord's OAuth2: `{oauth_url}/oauth2/authorize`, `{oauth_url}/api/oauth2/token`,
/// `{oauth_url}/api/users/@me`.
#[derive(Debug, Clone)]
pub struct DiscordProvider {
    pub oauth_url: Url,
    pub client_id: String,
    pub client_secret: Secret,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSignIn {
    #[serde(default)]
    cookie_key: SecretText,
    #[serde(default = "default_session_lifetime")]
    session_lifetime: HumanDuration,
    slack: Option<RawOidc>,
    discord: Option<RawDiscord>,
    oidc: Option<RawOidc>,
}

fn default_session_lifetime() -> HumanDuration {
    HumanDuration(Duration::from_secs(12 * 3600))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOidc {
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    client_secret: SecretText,
    issuer: Option<String>,
    claim: Option<String>,
    max_age: Option<HumanDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDiscord {
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    client_secret: SecretText,
    oauth_url: Option<String>,
}

/// What the rest of the file says that `[sign_in]` depends on.
pub(super) struct Context<'a> {
    pub public_url: Option<&'a Url>,
    pub slack_on: bool,
    pub discord_on: bool,
    pub discord_emails: bool,
}

fn client_id(key: &str, id: String) -> Result<String, ConfigError> {
    let id = id.trim().to_string();
    if id.is_empty() || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError::at(
            key,
            "missing: the client id the provider gave this app",
        ));
    }
    Ok(id)
}

fn client_secret(
    key: &str,
    value: SecretText,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Secret, ConfigError> {
    let s = secret(key, value, env);
    super::require(key, &s, "the provider's client secret for this app")?;
    Ok(s)
}

impl RawSignIn {
    pub(super) fn validate(
        self,
        cx: Context<'_>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<SignInConfig, ConfigError> {
        if cx.public_url.is_none() {
            return Err(ConfigError::at(
                "sign_in",
                "needs server.public_url: providers send the browser back to {public_url}/go/signed-in",
            ));
        }
        let cookie_key = secret("sign_in.cookie_key", self.cookie_key, env);
        super::require(
            "sign_in.cookie_key",
            &cookie_key,
            "it signs the session cookies, the same on every replica",
        )?;
        if cookie_key.expose().len() < 32 {
            return Err(ConfigError::at(
                "sign_in.cookie_key",
                "must be at least 32 characters (e.g. `openssl rand -base64 32`)",
            ));
        }
        let session_lifetime = self.session_lifetime.0;
        if session_lifetime < Duration::from_secs(60)
            || session_lifetime > Duration::from_secs(30 * 86_400)
        {
            return Err(ConfigError::at(
                "sign_in.session_lifetime",
                "must be between 1m and 30d",
            ));
        }
        let slack = self
            .slack
            .map(|raw| {
                if raw.claim.is_some() || raw.max_age.is_some() {
                    return Err(ConfigError::at(
                        "sign_in.slack",
                        "takes client_id, client_secret and issuer only (Slack askers are matched by their Slack user id)",
                    ));
                }
                Ok(OidcProvider {
                    issuer: base_url(
                        "sign_in.slack.issuer",
                        raw.issuer.as_deref().unwrap_or("https://slack.com"),
                    )?,
                    client_id: client_id("sign_in.slack.client_id", raw.client_id)?,
                    client_secret: client_secret(
                        "sign_in.slack.client_secret",
                        raw.client_secret,
                        env,
                    )?,
                    claim: String::new(),
                    max_age: None,
                })
            })
            .transpose()?;
        let discord = self
            .discord
            .map(|raw| -> Result<DiscordProvider, ConfigError> {
                Ok(DiscordProvider {
                    oauth_url: base_url(
                        "sign_in.discord.oauth_url",
                        raw.oauth_url.as_deref().unwrap_or("https://discord.com"),
                    )?,
                    client_id: client_id("sign_in.discord.client_id", raw.client_id)?,
                    client_secret: client_secret(
                        "sign_in.discord.client_secret",
                        raw.client_secret,
                        env,
                    )?,
                })
            })
            .transpose()?;
        let oidc = self
            .oidc
            .map(|raw| -> Result<OidcProvider, ConfigError> {
                let Some(issuer) = raw.issuer.as_deref() else {
                    return Err(ConfigError::at(
                        "sign_in.oidc.issuer",
                        "missing: your identity provider's issuer URL (discovery is at {issuer}/.well-known/openid-configuration)",
                    ));
                };
                let claim = raw.claim.unwrap_or_else(|| "email".into()).trim().to_string();
                if claim.is_empty() || claim.chars().any(|c| c.is_whitespace()) {
                    return Err(ConfigError::at(
                        "sign_in.oidc.claim",
                        "must name a claim of the id_token, like \"email\"",
                    ));
                }
                let max_age = raw.max_age.map(|d| d.0);
                if let Some(m) = max_age {
                    if m < Duration::from_secs(60) || m > Duration::from_secs(86_400) {
                        return Err(ConfigError::at(
                            "sign_in.oidc.max_age",
                            "must be between 1m and 24h",
                        ));
                    }
                }
                Ok(OidcProvider {
                    issuer: base_url("sign_in.oidc.issuer", issuer)?,
                    client_id: client_id("sign_in.oidc.client_id", raw.client_id)?,
                    client_secret: client_secret(
                        "sign_in.oidc.client_secret",
                        raw.client_secret,
                        env,
                    )?,
                    claim,
                    max_age,
                })
            })
            .transpose()?;
        if slack.is_none() && discord.is_none() && oidc.is_none() {
            return Err(ConfigError::at(
                "sign_in",
                "names no provider: add [sign_in.slack], [sign_in.discord] or [sign_in.oidc]",
            ));
        }
        if oidc.is_none() {
            if cx.slack_on && slack.is_none() {
                return Err(ConfigError::at(
                    "sign_in",
                    "has no provider for Slack askers: add [sign_in.slack] or [sign_in.oidc]",
                ));
            }
            if cx.discord_on && discord.is_none() {
                return Err(ConfigError::at(
                    "sign_in",
                    "has no provider for Discord askers: add [sign_in.discord] or [sign_in.oidc]",
                ));
            }
        } else if cx.discord_on && !cx.discord_emails {
            return Err(ConfigError::at(
                "sign_in.oidc",
                "matches askers by email, and Discord gives bots none: list Discord askers in access.discord_emails",
            ));
        }
        Ok(SignInConfig {
            cookie_key,
            session_lifetime,
            slack,
            discord,
            oidc,
        })
    }
}
