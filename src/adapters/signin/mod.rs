//! The identity providers behind `[sign_in]`: OpenID Connect (Slack, the company's own) and
//! Discord OAuth2. Each implements the core's [`IdentityProvider`]; the sign-in use case itself
//! (sessions, matching) is `core::signin`, and its HTTP pages are `adapters::go`.

mod discord;
mod oidc;

use std::sync::Arc;
use std::time::Duration;

use crate::core::config::Config;
use crate::core::signin::{IdentityProvider, ProviderKind, SignIn};

/// The sign-in use case for `config`, when `[sign_in]` is set (it needs `server.public_url`,
/// which the config's validation ensured).
pub fn build(config: &Config) -> Result<Option<Arc<SignIn>>, String> {
    let (Some(sign_in), Some(public_url)) = (&config.sign_in, &config.server.public_url) else {
        return Ok(None);
    };
    // Redirects are never followed (an identity provider that redirects its token endpoint is
    // misconfigured, and following them opens the bot to SSRF); every call is bounded.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| format!("sign_in: cannot build an HTTP client ({e})"))?;
    let mut providers: Vec<Arc<dyn IdentityProvider>> = Vec::new();
    if let Some(slack) = &sign_in.slack {
        providers.push(Arc::new(
            oidc::Oidc::new(ProviderKind::Slack, slack, http.clone())
                .map_err(|e| format!("sign_in.slack.issuer: {e}"))?,
        ));
    }
    if let Some(company) = &sign_in.oidc {
        providers.push(Arc::new(
            oidc::Oidc::new(ProviderKind::Oidc, company, http.clone())
                .map_err(|e| format!("sign_in.oidc.issuer: {e}"))?,
        ));
    }
    if let Some(d) = &sign_in.discord {
        providers.push(Arc::new(discord::DiscordOAuth::new(d, http.clone())));
    }
    Ok(Some(Arc::new(SignIn::new(sign_in, public_url, providers))))
}
