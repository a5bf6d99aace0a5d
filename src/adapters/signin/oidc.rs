//! OpenID Connect: Sign in with Slack, and the company's own provider (Okta, Google, Entra…).
//!
//! The protocol is openidconnect's: discovery (cached, re-read every [`METADATA_TTL`] so a
//! rotated signing key is picked up), the authorization code flow with `state`, `nonce` and
//! PKCE, the code exchange, and the id_token's verification against the provider's JWKS
//! (signature, issuer, audience, expiry, nonce). What is read afterwards from the verified
//! token (Slack's user and team, the configured claim) is read here.
//!
//! Errors name what failed and never carry a code, a token or an answer's body.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthType, AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope,
};
use tokio::sync::Mutex;

use crate::core::config::OidcProvider;
use crate::core::signin::{Identity, IdentityProvider, PendingLogin, ProviderKind, SignInError};

/// How long a discovery document (and its keys) is trusted before it is read again.
const METADATA_TTL: Duration = Duration::from_secs(600);
/// Clock skew allowed when checking `auth_time` against `max_age`.
const SKEW: u64 = 60;

/// One OpenID Connect provider.
pub struct Oidc {
    kind: ProviderKind,
    issuer: IssuerUrl,
    client_id: ClientId,
    secret: ClientSecret,
    /// The claim matched against the asker's email (the company's provider).
    claim: String,
    max_age: Option<Duration>,
    http: reqwest::Client,
    metadata: Mutex<Option<(CoreProviderMetadata, Instant)>>,
}

impl Oidc {
    /// `kind` is [`ProviderKind::Slack`] (Slack's claims) or [`ProviderKind::Oidc`].
    pub fn new(
        kind: ProviderKind,
        config: &OidcProvider,
        http: reqwest::Client,
    ) -> Result<Oidc, String> {
        let issuer = IssuerUrl::new(config.issuer.as_str().trim_end_matches('/').to_string())
            .map_err(|e| format!("not an issuer URL ({e})"))?;
        Ok(Oidc {
            kind,
            issuer,
            client_id: ClientId::new(config.client_id.clone()),
            secret: ClientSecret::new(config.client_secret.expose().to_string()),
            claim: config.claim.clone(),
            max_age: config.max_age,
            http,
            metadata: Mutex::new(None),
        })
    }

    /// The discovery document (with the provider's keys), from the cache or read now.
    async fn metadata(&self) -> Result<CoreProviderMetadata, SignInError> {
        let mut cached = self.metadata.lock().await;
        if let Some((m, at)) = cached.as_ref() {
            if at.elapsed() < METADATA_TTL {
                return Ok(m.clone());
            }
        }
        let m = CoreProviderMetadata::discover_async(self.issuer.clone(), &self.http)
            .await
            .map_err(|e| SignInError::Provider(format!("discovery failed: {}", discovery(&e))))?;
        *cached = Some((m.clone(), Instant::now()));
        Ok(m)
    }

    fn client(
        &self,
        metadata: CoreProviderMetadata,
        redirect: &str,
    ) -> Result<
        CoreClient<
            openidconnect::EndpointSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointMaybeSet,
            openidconnect::EndpointMaybeSet,
        >,
        SignInError,
    > {
        // Slack's token endpoint takes the client's credentials in the body only.
        let basic = metadata
            .token_endpoint_auth_methods_supported()
            .is_none_or(|methods| {
                methods.contains(&openidconnect::core::CoreClientAuthMethod::ClientSecretBasic)
            });
        let redirect = RedirectUrl::new(redirect.to_string())
            .map_err(|e| SignInError::Provider(format!("bad redirect URL ({e})")))?;
        Ok(CoreClient::from_provider_metadata(
            metadata,
            self.client_id.clone(),
            Some(self.secret.clone()),
        )
        .set_redirect_uri(redirect)
        .set_auth_type(if basic {
            AuthType::BasicAuth
        } else {
            AuthType::RequestBody
        }))
    }
}

/// What a discovery error was, without any body.
fn discovery<E: std::error::Error>(e: &openidconnect::DiscoveryError<E>) -> String {
    match e {
        openidconnect::DiscoveryError::Request(_) => "the provider can't be reached".into(),
        openidconnect::DiscoveryError::Response(status, _, _) => {
            format!("the provider answered HTTP {status}")
        }
        openidconnect::DiscoveryError::Parse(_) => "the discovery document is unusable".into(),
        openidconnect::DiscoveryError::Validation(v) => format!("invalid discovery document ({v})"),
        openidconnect::DiscoveryError::UrlParse(_) => "bad discovery URL".into(),
        openidconnect::DiscoveryError::Other(s) => s.clone(),
        _ => "discovery failed".into(),
    }
}

/// The claims of a JWT whose signature was verified already, as JSON.
fn payload(jwt: &str) -> Option<serde_json::Value> {
    let body = jwt.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body.trim_end_matches('=')).ok()?).ok()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[async_trait]
impl IdentityProvider for Oidc {
    fn kind(&self) -> ProviderKind {
        self.kind
    }

    async fn authorize_url(
        &self,
        login: &PendingLogin,
        redirect: &str,
    ) -> Result<String, SignInError> {
        let client = self.client(self.metadata().await?, redirect)?;
        let challenge = PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(
            login.verifier.clone(),
        ));
        let (state, nonce) = (login.state.clone(), login.nonce.clone());
        let mut request = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                move || CsrfToken::new(state),
                move || Nonce::new(nonce),
            )
            .add_scope(Scope::new("email".into()))
            .add_scope(Scope::new("profile".into()))
            .set_pkce_challenge(challenge);
        if let Some(max_age) = self.max_age {
            request = request.set_max_age(max_age);
        }
        let (url, _, _) = request.url();
        Ok(url.to_string())
    }

    async fn identify(
        &self,
        code: &str,
        login: &PendingLogin,
        redirect: &str,
    ) -> Result<Identity, SignInError> {
        let client = self.client(self.metadata().await?, redirect)?;
        let token = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|_| SignInError::Provider("the provider names no token endpoint".into()))?
            .set_pkce_verifier(PkceCodeVerifier::new(login.verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(|e| match e {
                RequestTokenError::ServerResponse(r) => {
                    SignInError::Refused(format!("the token endpoint said {}", r.error()))
                }
                RequestTokenError::Request(_) => {
                    SignInError::Provider("the token endpoint can't be reached".into())
                }
                RequestTokenError::Parse(_, _) => {
                    SignInError::Provider("the token endpoint's answer is unusable".into())
                }
                RequestTokenError::Other(s) => SignInError::Provider(s),
            })?;
        let id_token = openidconnect::TokenResponse::id_token(&token)
            .ok_or_else(|| SignInError::Refused("the provider sent no id_token".into()))?;
        let verifier = client.id_token_verifier();
        let claims = id_token
            .claims(&verifier, &Nonce::new(login.nonce.clone()))
            .map_err(|e| SignInError::Refused(format!("the id_token does not verify ({e})")))?;
        let now = unix_now();
        let auth_time = claims.auth_time().map(|t| t.timestamp().max(0) as u64);
        if let Some(max_age) = self.max_age {
            let Some(at) = auth_time else {
                return Err(SignInError::Refused(
                    "the id_token has no auth_time, and max_age asks for one".into(),
                ));
            };
            if now.saturating_sub(at) > max_age.as_secs() + SKEW {
                return Err(SignInError::Refused(
                    "the person authenticated longer ago than max_age".into(),
                ));
            }
        }
        // The token verified: its other claims can be read as they are.
        let all = payload(&id_token.to_string())
            .ok_or_else(|| SignInError::Refused("the id_token's claims are unreadable".into()))?;
        let text = |name: &str| all.get(name).and_then(|v| v.as_str()).map(str::to_string);
        let name = text("name");
        let authenticated_at = auth_time.unwrap_or(now);
        match self.kind {
            ProviderKind::Slack => {
                let subject = text("https://slack.com/user_id").ok_or_else(|| {
                    SignInError::Refused("the id_token names no Slack user".into())
                })?;
                Ok(Identity {
                    subject,
                    team: text("https://slack.com/team_id"),
                    name,
                    authenticated_at,
                })
            }
            _ => {
                let subject = if self.claim == "sub" {
                    Some(claims.subject().to_string())
                } else {
                    text(&self.claim)
                };
                let subject = subject.ok_or_else(|| {
                    SignInError::Refused(format!("the id_token has no {:?} claim", self.claim))
                })?;
                if self.claim == "email" && all.get("email_verified") == Some(&false.into()) {
                    return Err(SignInError::Refused(
                        "the provider says the email is not verified".into(),
                    ));
                }
                Ok(Identity {
                    subject: subject.trim().to_ascii_lowercase(),
                    team: None,
                    name,
                    authenticated_at,
                })
            }
        }
    }

    async fn check(&self) -> Result<(), SignInError> {
        // Read now, not from the cache.
        *self.metadata.lock().await = None;
        self.metadata().await.map(|_| ())
    }
}
