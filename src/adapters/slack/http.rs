//! Slack's webhooks (http mode): `POST /slack/commands` and `POST /slack/interactions`.
//!
//! Order matters: the signature is checked on the raw body before anything is parsed, and a
//! failure is a bare 401 (no Planhat call, no audit of a forged asker).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use slack_morphism::prelude::*;

use super::verify::SlackVerifier;
use super::SlackState;

struct HttpState {
    slack: Arc<SlackState>,
    verifier: SlackVerifier,
}

/// The two webhook routes.
pub fn router(slack: Arc<SlackState>, verifier: SlackVerifier) -> Router {
    Router::new()
        .route("/slack/commands", post(commands))
        .route("/slack/interactions", post(interactions))
        .with_state(Arc::new(HttpState { slack, verifier }))
}

fn verified(state: &HttpState, headers: &HeaderMap, body: &[u8]) -> Result<(), Response> {
    state.verifier.verify(headers, body).map_err(|why| {
        tracing::warn!(why, "refused a Slack request: bad signature");
        (StatusCode::UNAUTHORIZED, "invalid signature").into_response()
    })
}

async fn commands(State(state): State<Arc<HttpState>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(refused) = verified(&state, &headers, &body) {
        return refused;
    }
    let ev: SlackCommandEvent = match serde_urlencoded::from_bytes(&body) {
        Ok(ev) => ev,
        Err(e) => {
            tracing::warn!(error = %e, "malformed Slack slash command");
            return (StatusCode::BAD_REQUEST, "malformed slash command").into_response();
        }
    };
    Json(state.slack.command(ev).await).into_response()
}

async fn interactions(State(state): State<Arc<HttpState>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(refused) = verified(&state, &headers, &body) {
        return refused;
    }
    let payload = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "payload")
        .map(|(_, v)| v.into_owned());
    match payload.as_deref().map(serde_json::from_str::<SlackInteractionEvent>) {
        Some(Ok(ev)) => {
            state.slack.interaction(ev);
            StatusCode::OK.into_response()
        }
        Some(Err(e)) => {
            // Unknown interaction kinds are acknowledged, not errors for Slack to retry.
            tracing::info!(error = %e, "ignored a Slack interaction the bot does not handle");
            StatusCode::OK.into_response()
        }
        None => (StatusCode::BAD_REQUEST, "no payload").into_response(),
    }
}
