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

struct HttpState {
    discord: Arc<DiscordState>,
    verifier: DiscordVerifier,
}

/// The endpoint route.
pub fn router(discord: Arc<DiscordState>, verifier: DiscordVerifier) -> Router {
    Router::new()
        .route("/discord/interactions", post(interactions))
        .with_state(Arc::new(HttpState { discord, verifier }))
}

async fn interactions(State(state): State<Arc<HttpState>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(why) = state.verifier.verify(&headers, &body) {
        tracing::warn!(why, "refused a Discord request: bad signature");
        return (StatusCode::UNAUTHORIZED, "invalid request signature").into_response();
    }
    let interaction: Interaction = match serde_json::from_slice(&body) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(error = %e, "malformed or unsupported Discord interaction");
            return (StatusCode::BAD_REQUEST, "unsupported interaction").into_response();
        }
    };
    match state.discord.interaction(interaction).await {
        Some(response) => Json(response).into_response(),
        None => (StatusCode::BAD_REQUEST, "unsupported interaction").into_response(),
    }
}
