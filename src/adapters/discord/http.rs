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
use serenity::all::{
    ChannelId, CommandInteraction, GuildId, Interaction, InteractionId, RoleId, UserId,
};

use super::verify::DiscordVerifier;
use super::{member_asker, DiscordState, PortalCommand};
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
    let answered = match interaction {
        Parsed::Portal(c) => Box::pin(state.discord.portal_command(c, budget)).await,
        Parsed::Other(i) => Box::pin(state.discord.interaction(*i, budget)).await,
    };
    match answered {
        Some(response) => Json(response).into_response(),
        None => (StatusCode::BAD_REQUEST, "unsupported interaction").into_response(),
    }
}

/// An interaction from its JSON: a `/portal` command, or anything else as serenity reads it.
pub enum Parsed {
    Portal(PortalCommand),
    /// Boxed: rare, and several times a command's size.
    Other(Box<Interaction>),
}

/// An interaction from its JSON. A `/portal` slash command (type 2: nearly every request) is
/// read into [`PortalCommand`]'s fields alone: serenity's `CommandInteraction` builds a member,
/// a user, permissions, locales and more, about 29k instructions a command (issue 23). Anything
/// else, or a command that doesn't read that way, goes to serenity's parser: a slash command
/// straight into its `CommandInteraction` (its `Interaction` parser first builds a whole
/// `serde_json::Value` to find the type), the rest through `Interaction`.
pub fn parse_interaction(body: &[u8]) -> serde_json::Result<Parsed> {
    #[derive(Deserialize)]
    struct Kind {
        #[serde(rename = "type")]
        kind: u8,
    }
    // One pass for a /portal command (each pass over the body costs about 12k instructions).
    if let Some(c) = lean_portal_command(body) {
        return Ok(Parsed::Portal(c));
    }
    match serde_json::from_slice::<Kind>(body) {
        Ok(Kind { kind: 2 }) => serde_json::from_slice::<CommandInteraction>(body)
            .map(|c| Parsed::Other(Box::new(Interaction::Command(c)))),
        _ => serde_json::from_slice(body).map(|i| Parsed::Other(Box::new(i))),
    }
}

/// A `/portal` command read into the fields its handler uses; `None` when the body doesn't
/// read that way or is another command (serenity's parser then decides).
fn lean_portal_command(body: &[u8]) -> Option<PortalCommand> {
    #[derive(Deserialize)]
    struct Wire {
        #[serde(rename = "type")]
        kind: u8,
        id: InteractionId,
        token: String,
        guild_id: Option<GuildId>,
        channel_id: ChannelId,
        member: Option<WireMember>,
        data: WireData,
    }
    #[derive(Deserialize)]
    struct WireMember {
        user: WireUser,
        #[serde(default)]
        roles: Vec<RoleId>,
    }
    #[derive(Deserialize)]
    struct WireUser {
        id: UserId,
    }
    #[derive(Deserialize)]
    struct WireData {
        name: String,
        #[serde(default)]
        options: Vec<WireOption>,
    }
    #[derive(Deserialize)]
    struct WireOption {
        name: String,
        #[serde(default)]
        value: Option<serde_json::Value>,
    }
    let w: Wire = serde_json::from_slice(body).ok()?;
    if w.kind != 2 || w.data.name != "portal" {
        return None;
    }
    let asker = match (w.guild_id, w.member) {
        (Some(guild), Some(m)) => Some(member_asker(guild, w.channel_id, m.user.id, &m.roles)),
        _ => None,
    };
    let enduser = w
        .data
        .options
        .iter()
        .find(|o| o.name == "enduser")
        .and_then(|o| o.value.as_ref())
        .and_then(serde_json::Value::as_str)
        .unwrap_or("")
        .to_string();
    Some(PortalCommand {
        id: w.id.get(),
        token: w.token,
        asker,
        enduser,
    })
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
        let Ok(super::Parsed::Portal(lean)) = super::parse_interaction(body.as_bytes()) else {
            panic!("a /portal command reads as one");
        };
        let Interaction::Command(serenity) = serde_json::from_str(&body).unwrap() else {
            panic!("serenity reads a command");
        };
        assert!(lean == super::PortalCommand::from_serenity(&serenity));
        assert_eq!(lean.enduser, "5f2a");
        let asker = lean.asker.as_ref().unwrap();
        assert_eq!(
            (asker.user_id.as_str(), asker.team_id.as_deref()),
            ("1500000000000000005", Some("1300000000000000003"))
        );
        // Another command, and one serenity reads but the lean reading doesn't (no channel):
        // serenity's parser decides.
        let other = body.replace(r#""name":"portal""#, r#""name":"other""#);
        assert!(matches!(
            super::parse_interaction(other.as_bytes()),
            Ok(super::Parsed::Other(i)) if matches!(*i, Interaction::Command(_))
        ));
        let ping = super::parse_interaction(
            br#"{"id":"1","application_id":"2","type":1,"token":"t","version":1}"#,
        )
        .unwrap();
        assert!(matches!(ping, super::Parsed::Other(i) if matches!(*i, Interaction::Ping(_))));
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
            let lean = super::parse_interaction(body.to_string().as_bytes());
            let serenity = serde_json::from_value::<Interaction>(body);
            // Where both read a /portal command, they read the same one.
            if let (Ok(super::Parsed::Portal(lean)), Ok(Interaction::Command(s))) = (lean, serenity) {
                prop_assert!(lean == super::PortalCommand::from_serenity(&s));
            }
        }
    }
}
