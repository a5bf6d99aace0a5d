//! Discord's interactions endpoint (http mode): `POST /discord/interactions`.
//!
//! The signature is checked on the raw body first; any failure is 401 (Discord probes this
//! with bad signatures before accepting the URL). PING is answered with PONG.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serenity::all::Interaction;

use super::verify::DiscordVerifier;
use super::DiscordState;
use crate::adapters::unsigned::Unsigned;
use crate::core::asker::Platform;

struct HttpState {
    discord: Arc<DiscordState>,
    verifier: DiscordVerifier,
    refusals: Unsigned,
}

/// The endpoint route.
pub fn router(discord: Arc<DiscordState>, verifier: DiscordVerifier) -> Router {
    let refusals = Unsigned::new(Platform::Discord, discord.app.metrics.clone());
    Router::new()
        .route("/discord/interactions", post(interactions))
        .with_state(Arc::new(HttpState {
            discord,
            verifier,
            refusals,
        }))
}

async fn interactions(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(why) = state.verifier.verify(&headers, &body) {
        // Counted, and logged in a sampled line: Discord itself sends forged probes, and
        // anyone can post here.
        state.refusals.refused(why);
        return (StatusCode::UNAUTHORIZED, "invalid request signature").into_response();
    }
    let interaction: Interaction = match serde_json::from_slice(&body) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(error = %e, "malformed or unsupported Discord interaction");
            return (StatusCode::BAD_REQUEST, "unsupported interaction").into_response();
        }
    };
    let budget = state.discord.app.config.server.reply_budget;
    match state.discord.interaction(interaction, budget).await {
        Some(response) => Json(response).into_response(),
        None => (StatusCode::BAD_REQUEST, "unsupported interaction").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serenity::all::Interaction;

    proptest! {
        #[test]
        fn any_body_parses_or_fails_without_panic(body in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = serde_json::from_slice::<Interaction>(&body);
        }

        #[test]
        fn any_json_value_is_safe(ty in 0u8..12, token in "\\PC{0,40}", name in "\\PC{0,20}", value in "\\PC{0,200}") {
            let body = serde_json::json!({
                "id": "1", "application_id": "2", "type": ty, "token": token, "version": 1,
                "channel_id": "3", "locale": "en", "entitlements": [], "attachment_size_limit": 1,
                "data": {"id": "4", "name": name, "type": 1, "options": [{"name": "enduser", "type": 3, "value": value}]}
            });
            let _ = serde_json::from_value::<Interaction>(body);
        }
    }
}
