//! Discord OAuth2 (scope `identify`): who the browser's person is on Discord.
//!
//! Plain OAuth2 (Discord has no OpenID Connect): the oauth2 crate's authorization code flow
//! with `state` and PKCE, then `GET {oauth_url}/api/users/@me` with the access token, whose `id`
//! is matched against the asker's Discord user id. `prompt=none` skips Discord's consent screen
//! for someone who has authorised the app before.
//!
//! Errors name what failed and never carry a code, a token or an answer's body.

use async_trait::async_trait;
use oauth2::basic::BasicClient;
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope, TokenResponse, TokenUrl,
};
use serde::Deserialize;

use crate::core::config::DiscordProvider;
use crate::core::signin::{Identity, IdentityProvider, PendingLogin, ProviderKind, SignInError};

/// Discord's OAuth2 endpoints under one base.
pub struct DiscordOAuth {
    base: String,
    client_id: ClientId,
    secret: ClientSecret,
    http: reqwest::Client,
}

/// What `/users/@me` says (the fields read).
#[derive(Deserialize)]
struct Me {
    id: String,
    username: Option<String>,
    global_name: Option<String>,
}

impl DiscordOAuth {
    pub fn new(config: &DiscordProvider, http: reqwest::Client) -> DiscordOAuth {
        DiscordOAuth {
            base: config.oauth_url.as_str().trim_end_matches('/').to_string(),
            client_id: ClientId::new(config.client_id.clone()),
            secret: ClientSecret::new(config.client_secret.expose().to_string()),
            http,
        }
    }

    fn client(
        &self,
        redirect: &str,
    ) -> Result<
        BasicClient<
            oauth2::EndpointSet,
            oauth2::EndpointNotSet,
            oauth2::EndpointNotSet,
            oauth2::EndpointNotSet,
            oauth2::EndpointSet,
        >,
        SignInError,
    > {
        let bad = |e: url::ParseError| SignInError::Provider(format!("bad URL ({e})"));
        Ok(BasicClient::new(self.client_id.clone())
            .set_client_secret(self.secret.clone())
            .set_auth_uri(AuthUrl::new(format!("{}/oauth2/authorize", self.base)).map_err(bad)?)
            .set_token_uri(TokenUrl::new(format!("{}/api/oauth2/token", self.base)).map_err(bad)?)
            .set_redirect_uri(RedirectUrl::new(redirect.to_string()).map_err(bad)?))
    }
}

#[async_trait]
impl IdentityProvider for DiscordOAuth {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Discord
    }

    async fn authorize_url(
        &self,
        login: &PendingLogin,
        redirect: &str,
    ) -> Result<String, SignInError> {
        let challenge = PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(
            login.verifier.clone(),
        ));
        let state = login.state.clone();
        let (url, _) = self
            .client(redirect)?
            .authorize_url(move || CsrfToken::new(state))
            .add_scope(Scope::new("identify".into()))
            .set_pkce_challenge(challenge)
            .add_extra_param("prompt", "none")
            .url();
        Ok(url.to_string())
    }

    async fn identify(
        &self,
        code: &str,
        login: &PendingLogin,
        redirect: &str,
    ) -> Result<Identity, SignInError> {
        let token = self
            .client(redirect)?
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .set_pkce_verifier(PkceCodeVerifier::new(login.verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(|e| match e {
                RequestTokenError::ServerResponse(r) => {
                    SignInError::Refused(format!("Discord's token endpoint said {}", r.error()))
                }
                RequestTokenError::Request(_) => {
                    SignInError::Provider("Discord's token endpoint can't be reached".into())
                }
                RequestTokenError::Parse(_, _) => {
                    SignInError::Provider("Discord's token answer is unusable".into())
                }
                RequestTokenError::Other(s) => SignInError::Provider(s),
            })?;
        let answer = self
            .http
            .get(format!("{}/api/users/@me", self.base))
            .bearer_auth(token.access_token().secret())
            .send()
            .await
            .map_err(|_| SignInError::Provider("Discord's /users/@me can't be reached".into()))?;
        if !answer.status().is_success() {
            return Err(SignInError::Provider(format!(
                "Discord's /users/@me answered HTTP {}",
                answer.status().as_u16()
            )));
        }
        let me: Me = answer
            .json()
            .await
            .map_err(|_| SignInError::Provider("Discord's /users/@me answer is unusable".into()))?;
        if me.id.is_empty() || !me.id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SignInError::Provider(
                "Discord's /users/@me named no user id".into(),
            ));
        }
        Ok(Identity {
            subject: me.id,
            team: None,
            name: me.global_name.or(me.username),
            authenticated_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        })
    }

    async fn check(&self) -> Result<(), SignInError> {
        // Discord publishes no discovery document: the authorize page answering is the check.
        let answer = self
            .http
            .get(format!("{}/oauth2/authorize", self.base))
            .send()
            .await
            .map_err(|_| SignInError::Provider("Discord's OAuth2 can't be reached".into()))?;
        if answer.status().is_server_error() {
            return Err(SignInError::Provider(format!(
                "Discord's OAuth2 answered HTTP {}",
                answer.status().as_u16()
            )));
        }
        Ok(())
    }
}
