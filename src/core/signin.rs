//! Sign-in: proving who is at the browser of a `/go/` link (`[sign_in]`).
//!
//! The chat side proves who asked; the login itself happens in a browser, which anyone with a
//! copy of the link could be. With sign-in, a `/go/` link opens only in a browser signed in as
//! its asker: Sign in with Slack, Discord OAuth2, or the company's own OpenID Connect provider
//! (whose `max_age` makes it re-authenticate, with its MFA, when the last sign-in is older).
//!
//! This module is the use case's platform-neutral part: which provider serves an asker, the
//! browser's session (a cookie signed with `cookie_key`, the same on every replica, so a
//! sign-in through one replica holds on all), the sign-in in progress (`state`, `nonce` and
//! the PKCE verifier, kept in a signed cookie of the browser until the provider sends it back),
//! and whether a session is the asker's. The providers' protocols are adapters
//! ([`IdentityProvider`], in `adapters::signin`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{KeyInit, Mac};
use rand::RngExt;
use serde::{Deserialize, Serialize};

use super::asker::{Asker, Platform};
use super::config::SignInConfig;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// A kind of identity provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Sign in with Slack: the person's Slack user (and workspace).
    Slack,
    /// Discord OAuth2: the person's Discord user.
    Discord,
    /// The company's OpenID Connect provider: a claim (their email) matched to the asker's.
    Oidc,
}

impl ProviderKind {
    /// Stable lower-case name (cookies, audit, logs).
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Slack => "slack",
            ProviderKind::Discord => "discord",
            ProviderKind::Oidc => "oidc",
        }
    }

    /// What the person sees on the page that sends them to sign in.
    pub fn label(self) -> &'static str {
        match self {
            ProviderKind::Slack => "Slack",
            ProviderKind::Discord => "Discord",
            ProviderKind::Oidc => "your company's sign-in",
        }
    }
}

/// Who a provider says signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Slack: the user id; Discord: the user id; the company's provider: the configured
    /// claim's value (an email, compared without case).
    pub subject: String,
    /// Slack: the workspace (team) id.
    pub team: Option<String>,
    /// A name to show ("signed in as …"), when the provider gave one.
    pub name: Option<String>,
    /// When the person last authenticated at the provider (unix seconds).
    pub authenticated_at: u64,
}

/// A browser's session with one provider, as its cookie holds it (signed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    #[serde(rename = "p")]
    pub provider: ProviderKind,
    #[serde(rename = "s")]
    pub subject: String,
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// When the person authenticated at the provider (unix seconds).
    #[serde(rename = "a")]
    pub authenticated_at: u64,
    /// When the session ends (unix seconds).
    #[serde(rename = "e")]
    pub expires: u64,
}

impl Session {
    /// Who this is, for a page and the audit trail: `slack:U123`, `oidc:jane@acme.com`.
    pub fn who(&self) -> String {
        format!("{}:{}", self.provider.name(), self.subject)
    }
}

/// A sign-in in progress: what the provider's answer is checked against. Kept in a signed,
/// HttpOnly cookie of the browser that started it (so the answer must come back to the same
/// browser: no login CSRF), for [`LOGIN_LIFETIME`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingLogin {
    pub provider: ProviderKind,
    /// OAuth2 `state`, sent to the provider and expected back.
    pub state: String,
    /// OpenID Connect `nonce`, expected in the id_token.
    pub nonce: String,
    /// PKCE code verifier (the provider gets its SHA-256 challenge).
    pub verifier: String,
    /// The `/go/` id to return to.
    pub go: String,
    /// Started at (unix seconds).
    pub started: u64,
}

/// How long a browser may take at the provider.
pub const LOGIN_LIFETIME: Duration = Duration::from_secs(600);

/// The cookie that holds a [`PendingLogin`].
pub const LOGIN_COOKIE: &str = "portal_bot_login";

/// Why a sign-in did not complete. `Display` is for the operator's log: it never holds a code,
/// a token or a secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SignInError {
    /// The provider could not be reached, or answered something unusable.
    #[error("the identity provider failed: {0}")]
    Provider(String),
    /// The provider's answer did not verify (signature, issuer, audience, expiry, nonce, state).
    #[error("the identity provider's answer was refused: {0}")]
    Refused(String),
    /// The browser came back without a sign-in in progress (expired, or another browser's).
    #[error("no sign-in in progress for this browser")]
    NoLogin,
    /// The person declined, or the provider said no.
    #[error("the provider did not sign the person in: {0}")]
    Declined(String),
}

/// One identity provider's protocol (adapters implement it).
#[async_trait]
pub trait IdentityProvider: Send + Sync {
    /// Which kind this is.
    fn kind(&self) -> ProviderKind;
    /// Where to send the browser to sign in for `login`, coming back to `redirect`.
    async fn authorize_url(
        &self,
        login: &PendingLogin,
        redirect: &str,
    ) -> Result<String, SignInError>;
    /// The provider sent the browser back with `code`: who signed in (every check done).
    async fn identify(
        &self,
        code: &str,
        login: &PendingLogin,
        redirect: &str,
    ) -> Result<Identity, SignInError>;
    /// Whether the provider answers (discovery), for `check`.
    async fn check(&self) -> Result<(), SignInError>;
}

/// Whether a session is the asker's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    Yes,
    /// Signed in as someone else (who, as [`Session::who`]).
    SomeoneElse(String),
    /// The asker's email, which the company's provider is matched against, is not known.
    NoEmail,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// 32 random bytes, URL-safe base64 (43 characters): `state`, `nonce`, PKCE verifier.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The sign-in use case. One per process (with `[sign_in]`).
pub struct SignIn {
    /// Signs cookies (derived from `cookie_key`).
    key: [u8; 32],
    lifetime: Duration,
    max_age: Option<Duration>,
    providers: HashMap<ProviderKind, Arc<dyn IdentityProvider>>,
    /// `{public_url}/go/signed-in`.
    redirect: String,
    /// Cookies carry `Secure` (the public URL is https).
    secure: bool,
}

impl SignIn {
    /// The use case for `config`, with the providers the adapters built for it.
    pub fn new(
        config: &SignInConfig,
        public_url: &url::Url,
        providers: Vec<Arc<dyn IdentityProvider>>,
    ) -> SignIn {
        let mut m = <HmacSha256 as KeyInit>::new_from_slice(config.cookie_key.expose().as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        m.update(b"portal-bot session cookies v1");
        SignIn {
            key: m.finalize().into_bytes().into(),
            lifetime: config.session_lifetime,
            max_age: config.oidc.as_ref().and_then(|o| o.max_age),
            providers: providers.into_iter().map(|p| (p.kind(), p)).collect(),
            redirect: format!("{}/go/signed-in", public_url.as_str().trim_end_matches('/')),
            secure: public_url.scheme() == "https",
        }
    }

    /// The providers, for `check`.
    pub fn providers(&self) -> impl Iterator<Item = &Arc<dyn IdentityProvider>> {
        self.providers.values()
    }

    /// Which provider serves an asker from `platform`: the company's when configured, else
    /// their own chat's.
    pub fn provider_for(&self, platform: Platform) -> Option<ProviderKind> {
        if self.providers.contains_key(&ProviderKind::Oidc) {
            return Some(ProviderKind::Oidc);
        }
        let own = match platform {
            Platform::Slack => ProviderKind::Slack,
            Platform::Discord => ProviderKind::Discord,
            Platform::Cli => return None,
        };
        self.providers.contains_key(&own).then_some(own)
    }

    /// The session cookie's name for `kind` (one per provider, so a person using both chats
    /// keeps both sessions).
    pub fn cookie_name(kind: ProviderKind) -> &'static str {
        match kind {
            ProviderKind::Slack => "portal_bot_session_slack",
            ProviderKind::Discord => "portal_bot_session_discord",
            ProviderKind::Oidc => "portal_bot_session_oidc",
        }
    }

    /// A `Set-Cookie` value: `name=value` for `max_age` (0: delete), HttpOnly, SameSite=Lax,
    /// under `/go/`, Secure under https.
    pub fn set_cookie(&self, name: &str, value: &str, max_age: Duration) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!(
            "{name}={value}; Max-Age={}; Path=/go/; HttpOnly; SameSite=Lax{secure}",
            max_age.as_secs()
        )
    }

    /// How long session cookies live.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    fn sign(&self, payload: &str) -> String {
        let mut m = <HmacSha256 as KeyInit>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        m.update(payload.as_bytes());
        URL_SAFE_NO_PAD.encode(m.finalize().into_bytes())
    }

    /// `value` as a signed cookie value: `{base64 json}.{base64 mac}`.
    fn encode<T: Serialize>(&self, kind: &str, value: &T) -> String {
        let json = serde_json::to_vec(value).unwrap_or_default();
        let body = format!("{kind}.{}", URL_SAFE_NO_PAD.encode(json));
        let tag = self.sign(&body);
        format!("{body}.{tag}")
    }

    /// The value of a cookie made by [`Self::encode`] for `kind`, if its signature holds.
    fn decode<T: serde::de::DeserializeOwned>(&self, kind: &str, cookie: &str) -> Option<T> {
        let (body, tag) = cookie.rsplit_once('.')?;
        let (k, data) = body.split_once('.')?;
        if k != kind {
            return None;
        }
        let mut m = <HmacSha256 as KeyInit>::new_from_slice(&self.key).ok()?;
        m.update(body.as_bytes());
        m.verify_slice(&URL_SAFE_NO_PAD.decode(tag).ok()?).ok()?;
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(data).ok()?).ok()
    }

    /// The cookie value of `session`, as a sign-in sets it (also for tools that need a
    /// signed-in browser, such as the load benchmark).
    pub fn session_cookie(&self, session: &Session) -> String {
        self.encode("s", session)
    }

    /// The session in `cookie`, if it is signed with this key, unexpired, for `kind`, and (for
    /// the company's provider with `max_age`) recent enough.
    pub fn session(&self, kind: ProviderKind, cookie: Option<&str>) -> Option<Session> {
        let session: Session = self.decode("s", cookie?)?;
        let now = unix_now();
        if session.provider != kind || session.expires <= now {
            return None;
        }
        if kind == ProviderKind::Oidc {
            if let Some(max_age) = self.max_age {
                if now.saturating_sub(session.authenticated_at) > max_age.as_secs() {
                    return None;
                }
            }
        }
        Some(session)
    }

    /// Starts a sign-in with `kind` that returns to `/go/{go}`: where to send the browser, and
    /// the login cookie's value.
    pub async fn start(
        &self,
        kind: ProviderKind,
        go: &str,
    ) -> Result<(String, String), SignInError> {
        let provider = self
            .providers
            .get(&kind)
            .ok_or_else(|| SignInError::Provider(format!("no {} provider", kind.name())))?;
        let login = PendingLogin {
            provider: kind,
            state: random_token(),
            nonce: random_token(),
            verifier: random_token(),
            go: go.to_string(),
            started: unix_now(),
        };
        let url = provider.authorize_url(&login, &self.redirect).await?;
        Ok((url, self.encode("l", &login)))
    }

    /// The provider sent the browser back with `code` and `state`; `login` is the browser's
    /// login cookie. The session (and its cookie value) and the `/go/` id to return to.
    pub async fn finish(
        &self,
        code: &str,
        state: &str,
        login: Option<&str>,
    ) -> Result<(Session, String, String), SignInError> {
        let login: PendingLogin = login
            .and_then(|c| self.decode("l", c))
            .ok_or(SignInError::NoLogin)?;
        if unix_now().saturating_sub(login.started) > LOGIN_LIFETIME.as_secs() {
            return Err(SignInError::NoLogin);
        }
        if !constant_time_eq(state.as_bytes(), login.state.as_bytes()) {
            return Err(SignInError::Refused(
                "the state does not match this browser's sign-in".into(),
            ));
        }
        let provider = self
            .providers
            .get(&login.provider)
            .ok_or_else(|| SignInError::Provider("the provider is no longer configured".into()))?;
        let who = provider.identify(code, &login, &self.redirect).await?;
        let now = unix_now();
        let session = Session {
            provider: login.provider,
            subject: who.subject,
            team: who.team,
            name: who.name,
            authenticated_at: who.authenticated_at.min(now),
            expires: now + self.lifetime.as_secs(),
        };
        let cookie = self.session_cookie(&session);
        Ok((session, cookie, login.go))
    }

    /// Whether `session` is `asker`'s. For the company's provider, `email` is the asker's (from
    /// their chat), matched without case.
    pub fn matches(&self, session: &Session, asker: &Asker, email: Option<&str>) -> Match {
        let yes = match session.provider {
            ProviderKind::Slack => {
                asker.platform == Platform::Slack
                    && session.subject == asker.user_id
                    && match (&session.team, &asker.team_id) {
                        (Some(a), Some(b)) => a == b,
                        _ => true,
                    }
            }
            ProviderKind::Discord => {
                asker.platform == Platform::Discord && session.subject == asker.user_id
            }
            ProviderKind::Oidc => match email {
                None => return Match::NoEmail,
                Some(email) => session.subject.eq_ignore_ascii_case(email.trim()),
            },
        };
        if yes {
            Match::Yes
        } else {
            Match::SomeoneElse(session.who())
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::secret::Secret;
    use proptest::prelude::*;

    fn sign_in(oidc_max_age: Option<Duration>) -> SignIn {
        let config = SignInConfig {
            cookie_key: Secret::new("k".repeat(32)),
            session_lifetime: Duration::from_secs(3600),
            slack: None,
            discord: None,
            oidc: oidc_max_age.map(|m| crate::core::config::OidcProvider {
                issuer: url::Url::parse("https://idp.example").unwrap(),
                client_id: "c".into(),
                client_secret: Secret::new("s"),
                claim: "email".into(),
                max_age: Some(m),
            }),
        };
        SignIn::new(
            &config,
            &url::Url::parse("https://bot.example").unwrap(),
            vec![],
        )
    }

    fn session(provider: ProviderKind, subject: &str, age: u64) -> Session {
        let now = unix_now();
        Session {
            provider,
            subject: subject.into(),
            team: Some("T1".into()),
            name: None,
            authenticated_at: now - age,
            expires: now + 60,
        }
    }

    #[test]
    fn a_session_cookie_holds_only_with_its_key_kind_and_time() {
        let s = sign_in(None);
        let mine = session(ProviderKind::Slack, "U1", 0);
        let cookie = s.encode("s", &mine);
        assert_eq!(
            s.session(ProviderKind::Slack, Some(&cookie)),
            Some(mine.clone())
        );
        assert_eq!(s.session(ProviderKind::Discord, Some(&cookie)), None);
        let mut other_key = sign_in(None);
        other_key.key = [7; 32];
        assert_eq!(other_key.session(ProviderKind::Slack, Some(&cookie)), None);
        let tampered = cookie.replacen('.', ".x", 1);
        assert_eq!(s.session(ProviderKind::Slack, Some(&tampered)), None);
        let expired = Session {
            expires: unix_now() - 1,
            ..mine
        };
        assert_eq!(
            s.session(ProviderKind::Slack, Some(&s.encode("s", &expired))),
            None
        );
        // A login cookie is not a session, nor the other way round.
        assert_eq!(s.decode::<PendingLogin>("l", &cookie), None);
    }

    #[test]
    fn max_age_ends_a_company_session_early() {
        let s = sign_in(Some(Duration::from_secs(900)));
        let fresh = s.encode("s", &session(ProviderKind::Oidc, "a@b.c", 60));
        let stale = s.encode("s", &session(ProviderKind::Oidc, "a@b.c", 1000));
        assert!(s.session(ProviderKind::Oidc, Some(&fresh)).is_some());
        assert!(s.session(ProviderKind::Oidc, Some(&stale)).is_none());
    }

    #[test]
    fn a_session_matches_only_its_asker() {
        let s = sign_in(None);
        let asker = Asker {
            platform: Platform::Slack,
            user_id: "U1".into(),
            team_id: Some("T1".into()),
            channel_id: None,
            groups: crate::core::asker::Groups::Known(vec![]),
        };
        let slack = session(ProviderKind::Slack, "U1", 0);
        assert_eq!(s.matches(&slack, &asker, None), Match::Yes);
        let other = session(ProviderKind::Slack, "U2", 0);
        assert_eq!(
            s.matches(&other, &asker, None),
            Match::SomeoneElse("slack:U2".into())
        );
        let other_team = Session {
            team: Some("T9".into()),
            ..slack.clone()
        };
        assert!(matches!(
            s.matches(&other_team, &asker, None),
            Match::SomeoneElse(_)
        ));
        let discord = Asker {
            platform: Platform::Discord,
            ..asker.clone()
        };
        assert!(matches!(
            s.matches(&slack, &discord, None),
            Match::SomeoneElse(_)
        ));
        let company = session(ProviderKind::Oidc, "Jane@Acme.com", 0);
        assert_eq!(
            s.matches(&company, &asker, Some("jane@acme.com")),
            Match::Yes
        );
        assert_eq!(s.matches(&company, &asker, None), Match::NoEmail);
        assert!(matches!(
            s.matches(&company, &asker, Some("bob@acme.com")),
            Match::SomeoneElse(_)
        ));
    }

    proptest! {
        #[test]
        fn no_cookie_text_panics_or_passes(text in ".{0,300}") {
            let s = sign_in(None);
            prop_assert!(s.session(ProviderKind::Slack, Some(&text)).is_none());
            prop_assert!(s.decode::<PendingLogin>("l", &text).is_none());
        }
    }
}
