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
use serde::Deserialize;
use serenity::all::{CommandInteraction, Interaction};

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
    let interaction = match parse_interaction(&body) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(error = %e, "malformed or unsupported Discord interaction");
            return (StatusCode::BAD_REQUEST, "unsupported interaction").into_response();
        }
    };
    let budget = state.discord.app.config.server.reply_budget;
    // Boxed: the handler's future (moved at each layer above it) stays a few hundred bytes.
    match Box::pin(state.discord.interaction(interaction, budget)).await {
        Some(response) => Json(response).into_response(),
        None => (StatusCode::BAD_REQUEST, "unsupported interaction").into_response(),
    }
}

/// An interaction from its JSON. A slash command (type 2: nearly every request) is read
/// straight into serenity's `CommandInteraction`; serenity's `Interaction` parser first builds
/// a JSON map of the whole body to find the type, then reads the command out of that map,
/// which costs about twice as much. Every other type goes through serenity's parser.
pub fn parse_interaction(body: &[u8]) -> serde_json::Result<Interaction> {
    #[derive(Deserialize)]
    struct Kind {
        #[serde(rename = "type")]
        kind: u8,
    }
    match serde_json::from_slice::<Kind>(body) {
        Ok(Kind { kind: 2 }) => {
            serde_json::from_slice::<CommandInteraction>(body).map(Interaction::Command)
        }
        _ => serde_json::from_slice(body),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serenity::all::Interaction;

    #[test]
    fn a_command_reads_the_same_as_through_serenitys_parser() {
        let body = serde_json::json!({
            "id": "1100000000000000001", "application_id": "1200000000000000002", "type": 2,
            "token": "itok", "version": 1, "guild_id": "1300000000000000003",
            "channel_id": "1400000000000000004", "locale": "en-US", "entitlements": [],
            "attachment_size_limit": 8388608,
            "member": {"user": {"id": "1500000000000000005", "username": "csm"},
                       "roles": ["1600000000000000006"], "deaf": false, "mute": false, "flags": 0},
            "data": {"id": "1700000000000000007", "name": "portal", "type": 1,
                     "options": [{"name": "enduser", "type": 3, "value": "5f2a"}]}
        })
        .to_string();
        let fast = super::parse_interaction(body.as_bytes()).unwrap();
        let serenity: Interaction = serde_json::from_str(&body).unwrap();
        assert!(matches!(fast, Interaction::Command(_)));
        assert_eq!(
            serde_json::to_value(&fast).unwrap(),
            serde_json::to_value(&serenity).unwrap()
        );
        let ping = super::parse_interaction(
            br#"{"id":"1","application_id":"2","type":1,"token":"t","version":1}"#,
        )
        .unwrap();
        assert!(matches!(ping, Interaction::Ping(_)));
        assert!(super::parse_interaction(br#"{"type":2}"#).is_err());
    }

    proptest! {
        #[test]
        fn any_body_parses_or_fails_without_panic(body in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = serde_json::from_slice::<Interaction>(&body);
            let _ = super::parse_interaction(&body);
        }

        #[test]
        fn any_json_value_is_safe(ty in 0u8..12, token in "\\PC{0,40}", name in "\\PC{0,20}", value in "\\PC{0,200}") {
            let body = serde_json::json!({
                "id": "1", "application_id": "2", "type": ty, "token": token, "version": 1,
                "channel_id": "3", "locale": "en", "entitlements": [], "attachment_size_limit": 1,
                "data": {"id": "4", "name": name, "type": 1, "options": [{"name": "enduser", "type": 3, "value": value}]}
            });
            let _ = super::parse_interaction(body.to_string().as_bytes());
            let _ = serde_json::from_value::<Interaction>(body);
        }
    }
}
