//! The one way to build serenity's REST client, so that a configured `api_url` can never be
//! bypassed.
//!
//! serenity honours a proxy base only with its rate limiter off (with it on, requests go to
//! discord.com whatever the proxy says), so a non-default `api_url` always gets both. And its
//! error texts carry request URLs, which for interaction edits hold the interaction token: log
//! [`describe`] instead, which keeps the status and Discord's error code only.

use serenity::http::{Http, HttpBuilder, HttpError};
use serenity::model::id::ApplicationId;

use crate::core::config::DiscordConfig;

/// Discord's own API base: the only one for which the rate limiter stays on.
pub const DISCORD_API: &str = "https://discord.com/api/v10";

/// True when `api_url` points somewhere other than Discord (tests, a proxy).
pub fn is_custom(config: &DiscordConfig) -> bool {
    config.api_url.as_str().trim_end_matches('/') != DISCORD_API
}

/// serenity's REST client for this config.
pub fn http(config: &DiscordConfig) -> Http {
    let builder = HttpBuilder::new(config.token.expose())
        .application_id(ApplicationId::new(config.application_id));
    if !is_custom(config) {
        return builder.build();
    }
    // serenity sends to "https://discord.com/api/v10/…" with the host part replaced by the proxy.
    let base = config.api_url.as_str().trim_end_matches('/');
    let proxy = base.strip_suffix("/api/v10").unwrap_or(base);
    builder.proxy(proxy).ratelimiter_disabled(true).build()
}

/// A serenity error without anything that could hold a token (URLs, bodies).
pub fn describe(e: &serenity::Error) -> String {
    match e {
        serenity::Error::Http(HttpError::UnsuccessfulRequest(r)) => {
            format!(
                "Discord answered HTTP {} (code {}: {})",
                r.status_code.as_u16(),
                r.error.code,
                r.error.message
            )
        }
        serenity::Error::Http(HttpError::Request(r)) if r.is_timeout() => {
            "Discord did not answer in time".into()
        }
        serenity::Error::Http(HttpError::Request(r)) if r.is_connect() => {
            "cannot connect to Discord".into()
        }
        serenity::Error::Http(HttpError::Request(_)) => "the request to Discord failed".into(),
        serenity::Error::Json(_) => "Discord's answer could not be read".into(),
        serenity::Error::Gateway(g) => format!("gateway: {g}"),
        _ => "Discord request failed".into(),
    }
}

/// A failed edit, and whether retrying is safe: 404 (the edit raced the deferral it follows),
/// 5xx and connection failures yes; other 4xx no (Discord bans IPs that repeat 401/403/429),
/// timeouts no (the edit may have landed).
pub fn delivery_error(e: &serenity::Error) -> crate::adapters::deliver::DeliveryError {
    let retry = match e {
        serenity::Error::Http(HttpError::UnsuccessfulRequest(r)) => {
            r.status_code.as_u16() == 404 || r.status_code.is_server_error()
        }
        serenity::Error::Http(HttpError::Request(r)) => r.is_connect(),
        _ => false,
    };
    crate::adapters::deliver::DeliveryError {
        detail: describe(e),
        retry,
    }
}
