//! Slack's webhooks (http mode): `POST /slack/commands` and `POST /slack/interactions`.
//!
//! Order matters: the signature is checked on the raw body before anything is parsed, and a
//! failure is a bare 401 (no Planhat call, no audit of a forged asker).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use slack_morphism::prelude::*;

use super::verify::SlackVerifier;
use super::{SlackState, SlashCommand};
use crate::core::asker::Platform;

struct HttpState {
    slack: Arc<SlackState>,
    verifier: SlackVerifier,
    refusals: crate::adapters::unsigned::Unsigned,
}

/// The two webhook routes.
pub fn router(slack: Arc<SlackState>, verifier: SlackVerifier) -> Router {
    let refusals =
        crate::adapters::unsigned::Unsigned::new(Platform::Slack, slack.app.metrics.clone());
    Router::new()
        .route("/slack/commands", post(commands))
        .route("/slack/interactions", post(interactions))
        .with_state(Arc::new(HttpState {
            slack,
            verifier,
            refusals,
        }))
}

/// 401 for anything Slack did not sign (counted; the reason reaches the operator's log in a
/// sampled line, see `adapters::unsigned`).
fn verified(state: &HttpState, headers: &HeaderMap, body: &[u8]) -> Result<(), Unsigned> {
    state.verifier.verify(headers, body).map_err(|why| {
        state.refusals.refused(why);
        Unsigned
    })
}

struct Unsigned;

impl IntoResponse for Unsigned {
    fn into_response(self) -> Response {
        (StatusCode::UNAUTHORIZED, "invalid signature").into_response()
    }
}

/// A slash command's form body, read in one pass over its pairs. Written here rather than
/// deserialised into slack-morphism's `SlackCommandEvent` because that builds a dozen owned
/// fields and parses `response_url` into a `Url` (IDNA included) on every command, when the URL
/// is only needed for the rare late answer: about 10k instructions a command, the bot's whole
/// budget for input handling. Unknown keys are skipped; a repeated key keeps its last value,
/// as serde's reading did.
pub fn parse_command(body: &[u8]) -> Result<SlashCommand, &'static str> {
    let (mut trigger, mut user, mut team, mut channel, mut text, mut response_url) =
        (None, None, None, None, None, None);
    for (key, value) in url::form_urlencoded::parse(body) {
        let slot = match key.as_ref() {
            "trigger_id" => &mut trigger,
            "user_id" => &mut user,
            "team_id" => &mut team,
            "channel_id" => &mut channel,
            "text" => &mut text,
            "response_url" => &mut response_url,
            _ => continue,
        };
        *slot = Some(value.into_owned());
    }
    Ok(SlashCommand {
        trigger_id: trigger.ok_or("no trigger_id")?,
        user_id: user.ok_or("no user_id")?,
        team_id: team.ok_or("no team_id")?,
        channel_id: channel.ok_or("no channel_id")?,
        text: text.unwrap_or_default(),
        response_url: response_url.ok_or("no response_url")?,
    })
}

/// An interaction's form body: JSON in the `payload` field. `None`: no payload at all.
pub fn parse_interaction(body: &[u8]) -> Option<Result<SlackInteractionEvent, serde_json::Error>> {
    let payload = url::form_urlencoded::parse(body)
        .find(|(k, _)| k == "payload")
        .map(|(_, v)| v.into_owned())?;
    Some(serde_json::from_str(&payload))
}

async fn commands(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refused) = verified(&state, &headers, &body) {
        return refused.into_response();
    }
    let ev = match parse_command(&body) {
        Ok(ev) => ev,
        Err(e) => {
            tracing::warn!(error = e, "malformed Slack slash command");
            return (StatusCode::BAD_REQUEST, "malformed slash command").into_response();
        }
    };
    // Boxed: the handler's future (moved at each layer above it) stays a few hundred bytes.
    let answer = Box::pin(state.slack.command(ev)).await;
    (
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        answer.json(),
    )
        .into_response()
}

async fn interactions(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refused) = verified(&state, &headers, &body) {
        return refused.into_response();
    }
    match parse_interaction(&body) {
        Some(Ok(ev)) => match state.slack.interaction(ev) {
            Some(answer) => Json(answer).into_response(),
            None => StatusCode::OK.into_response(),
        },
        Some(Err(e)) => {
            // Unknown interaction kinds are acknowledged, not errors for Slack to retry.
            tracing::info!(error = %e, "ignored a Slack interaction the bot does not handle");
            StatusCode::OK.into_response()
        }
        None => (StatusCode::BAD_REQUEST, "no payload").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_form_body_parses_or_fails_without_panic(body in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_command(&body);
            let _ = parse_interaction(&body);
        }

        #[test]
        fn well_formed_commands_round_trip(user in "U[A-Z0-9]{1,12}", text in "\\PC{0,80}") {
            let body = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("team_id", "T1").append_pair("channel_id", "C1").append_pair("user_id", &user)
                .append_pair("command", "/portal").append_pair("text", &text)
                .append_pair("response_url", "https://hooks.slack.com/commands/1/2/3").append_pair("trigger_id", "t")
                .finish();
            let ev = parse_command(body.as_bytes()).unwrap();
            prop_assert_eq!(ev.user_id, user);
            prop_assert_eq!(ev.text, text);
            prop_assert_eq!(ev.response_url, "https://hooks.slack.com/commands/1/2/3");
        }

        #[test]
        fn any_payload_json_is_safe(payload in "\\PC{0,300}") {
            let body = url::form_urlencoded::Serializer::new(String::new()).append_pair("payload", &payload).finish();
            let _ = parse_interaction(body.as_bytes());
        }
    }
}
