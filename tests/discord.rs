//! Discord, driven as Discord drives it: signed interactions posted to the endpoint (http
//! mode), a fake gateway on loopback (gateway mode), and a fake Discord REST server on
//! 127.0.0.1 that records what the bot sends back (command registration, deferred edits,
//! expiry edits, gateway callbacks). Planhat is a wiremock server. Nothing leaves the machine:
//! every `api_url` points at the fake, and the fake always serves `GET /gateway`.

mod common;

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::discord::*;
use common::*;
use futures_util::{SinkExt, StreamExt};
use portal_bot::Running;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Users and roles of the test guild.
const ALICE: u64 = 1500000000000000005;
const BOB: u64 = 1500000000000000006;
const CAROL: u64 = 1500000000000000007;
const DAVE: u64 = 1500000000000000008;
const CSM_ROLE: u64 = 1600000000000000006;
const OTHER_ROLE: u64 = 1600000000000000009;
const OTHER_GUILD: u64 = 1300000000000000099;

/// A plausible Planhat end-user id.
const ENDUSER: &str = "5f2a9c0e1b2c3d4e5f6a7b8c";

// ---------------------------------------------------------------------------------------------
// Driving the app.

/// `[discord]` (http mode, registering in the test guild) plus `[access]` lines.
fn discord_toml(fake: &FakeDiscord, access: &str) -> String {
    format!(
        "[discord]\nmode = \"http\"\ntoken = \"{DISCORD_TOKEN}\"\napplication_id = \"{APP_ID}\"\n\
         public_key = \"{}\"\nguild_ids = [\"{GUILD}\"]\napi_url = \"{}\"\n[access]\n{access}\n",
        discord_public_key_hex(),
        fake.api_url()
    )
}

/// Planhat, a fake Discord and the app in http mode; `planhat_extra` goes into `[planhat]`.
async fn setup(planhat_extra: &str, access: &str) -> (MockServer, FakeDiscord, Running) {
    let planhat = MockServer::start().await;
    let fake = FakeDiscord::start("ws://127.0.0.1:9").await;
    let running = spawn(config(
        &planhat.uri(),
        &format!("{planhat_extra}\n{}", discord_toml(&fake, access)),
    ))
    .await;
    (planhat, fake, running)
}

fn endpoint(app: &Running) -> String {
    format!("http://{}/discord/interactions", app.addr)
}

/// Posts `body` signed as Discord signs it; the HTTP status and the JSON answer (Null if none).
async fn post_signed(app: &Running, body: &Value) -> (StatusCode, Value) {
    let bytes = serde_json::to_vec(body).unwrap();
    let response = client()
        .post(endpoint(app))
        .headers(discord_headers(&bytes))
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Posts a signed interaction that must be answered 200; the JSON answer.
async fn interact(app: &Running, body: &Value) -> Value {
    let (status, answer) = post_signed(app, body).await;
    assert_eq!(status, StatusCode::OK, "answer: {answer}");
    answer
}

/// Planhat answering access `true` for `id` and minting one link per token in `tokens`, in
/// order (the last one for every further call), so a fresh mint is visible as a fresh URL.
async fn planhat_links(server: &MockServer, id: &str, tokens: &[&str]) {
    Mock::given(method("GET"))
        .and(path(format!("/shareabletokens/access/{id}")))
        .respond_with(ResponseTemplate::new(200).set_body_string("true"))
        .mount(server)
        .await;
    for (i, token) in tokens.iter().enumerate() {
        let mock = Mock::given(method("GET"))
            .and(path(format!("/shareabletokens/{id}")))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"url": format!("{PORTAL}/redirect/{token}")})),
            );
        let mock = if i + 1 < tokens.len() {
            mock.up_to_n_times(1)
        } else {
            mock
        };
        mock.mount(server).await;
    }
}

/// Mint calls Planhat received for `id` (not access checks).
async fn mints(server: &MockServer, id: &str) -> usize {
    let want = format!("/shareabletokens/{id}");
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.url.path() == want)
        .count()
}

/// A click on a button with `custom_id` by `user`, on the bot's ephemeral message that answered
/// the command interaction `command` (Discord names it in the message's interaction metadata).
fn discord_click(id: u64, command: u64, user: u64, roles: &[u64], custom_id: &str) -> Value {
    let mut message = message_json(1800000000000000008, "Portal login as ...");
    message["interaction_metadata"] = json!({
        "id": command.to_string(), "type": 2, "user": {"id": user.to_string(), "username": "csm"},
        "authorizing_integration_owners": {"0": GUILD.to_string()}
    });
    message["interaction"] = json!({
        "id": command.to_string(), "type": 2, "name": "portal", "user": {"id": user.to_string(), "username": "csm"}
    });
    json!({
        "id": id.to_string(), "application_id": APP_ID.to_string(), "type": 3, "token": format!("itok-{id}"),
        "version": 1, "guild_id": GUILD.to_string(), "channel_id": CHANNEL.to_string(), "locale": "en-US",
        "entitlements": [], "attachment_size_limit": 8388608,
        "member": {"user": {"id": user.to_string(), "username": "clicker"},
                   "roles": roles.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
                   "deaf": false, "mute": false, "flags": 0},
        "data": {"custom_id": custom_id, "component_type": 2},
        "message": message
    })
}

/// Every button in a message's (or response data's) action rows.
fn buttons(message: &Value) -> Vec<Value> {
    message["components"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|row| row["components"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// The one link button (style 5) of a message.
fn link_button(message: &Value) -> Value {
    let links: Vec<Value> = buttons(message)
        .into_iter()
        .filter(|b| b["style"] == 5)
        .collect();
    assert_eq!(links.len(), 1, "want exactly one link button in {message}");
    links[0].clone()
}

/// The custom_id of the New link button of a message.
fn new_link_id(message: &Value) -> String {
    buttons(message)
        .into_iter()
        .find(|b| {
            b["style"] != 5
                && b["custom_id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with("new:"))
        })
        .and_then(|b| b["custom_id"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no New link button in {message}"))
}

/// Asserts an ephemeral one-line refusal: type 4, flag 64, no URL anywhere, no mentions.
fn assert_refusal(answer: &Value, says: &str) {
    assert_eq!(answer["type"], 4, "{answer}");
    assert_eq!(
        answer["data"]["flags"], 64,
        "refusals are ephemeral: {answer}"
    );
    let content = answer["data"]["content"].as_str().unwrap_or_default();
    assert!(
        content.to_lowercase().contains(says),
        "refusal should say {says:?}: {content:?}"
    );
    assert!(
        !answer.to_string().contains("/redirect/"),
        "a refusal carries no link: {answer}"
    );
    assert!(
        buttons(&answer["data"]).iter().all(|b| b["style"] != 5),
        "no link button: {answer}"
    );
}

fn assert_no_mentions(allowed_mentions: &Value) {
    assert_eq!(
        allowed_mentions["parse"],
        json!([]),
        "allowed_mentions must allow nothing: {allowed_mentions}"
    );
    for key in ["users", "roles"] {
        assert!(
            allowed_mentions[key]
                .as_array()
                .is_none_or(|a| a.is_empty()),
            "allowed_mentions.{key}: {allowed_mentions}"
        );
    }
}

fn redirect(token: &str) -> String {
    format!("{PORTAL}/redirect/{token}")
}

fn original_path(interaction: u64) -> String {
    format!("/api/v10/webhooks/{APP_ID}/itok-{interaction}/messages/@original")
}

// ---------------------------------------------------------------------------------------------
// The interactions endpoint (http mode).

#[tokio::test]
async fn ping_is_answered_with_pong() {
    let (_planhat, _fake, app) = setup("", "").await;
    let ping = json!({"id": "1100000000000000001", "application_id": APP_ID.to_string(), "type": 1, "token": "t", "version": 1});
    let answer = interact(&app, &ping).await;
    assert_eq!(answer["type"], 1, "PONG: {answer}");
    assert!(
        answer.get("data").is_none_or(Value::is_null),
        "PONG carries no data: {answer}"
    );
    app.stop().await;
}

#[tokio::test]
async fn bad_or_missing_signatures_get_401_and_never_reach_planhat() {
    let (planhat, _fake, app) = setup("", &format!("discord_users = [\"{ALICE}\"]")).await;
    planhat_link(&planhat, ENDUSER, "sigtok").await;
    let command =
        serde_json::to_vec(&discord_command(1100000000000000201, ALICE, &[], ENDUSER)).unwrap();
    let http = client();

    // No signature headers at all.
    let r = http
        .post(endpoint(&app))
        .header("content-type", "application/json")
        .body(command.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "missing signature");

    // Signed by another key (as Discord's own endpoint probe does).
    let ts = now().to_string();
    let other = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let forged = ed25519_dalek::Signer::sign(&other, &[ts.as_bytes(), &command].concat());
    let r = http
        .post(endpoint(&app))
        .header("content-type", "application/json")
        .header("x-signature-ed25519", hex::encode(forged.to_bytes()))
        .header("x-signature-timestamp", &ts)
        .body(command.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "signature by another key"
    );

    // A valid signature over a different body (tampered in transit).
    let ping = br#"{"id":"1100000000000000001","application_id":"1200000000000000002","type":1,"token":"t","version":1}"#;
    let r = http
        .post(endpoint(&app))
        .headers(discord_headers(ping))
        .body(command.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "signature over another body"
    );

    // Signature present, timestamp header missing; and a garbage signature.
    let mut headers = discord_headers(&command);
    headers.remove("x-signature-timestamp");
    let r = http
        .post(endpoint(&app))
        .headers(headers)
        .body(command.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "missing timestamp");
    let mut headers = discord_headers(&command);
    headers.insert("x-signature-ed25519", "zz".repeat(64).parse().unwrap());
    let r = http
        .post(endpoint(&app))
        .headers(headers)
        .body(command.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "non-hex signature");

    assert_eq!(
        planhat_calls(&planhat, "/shareabletokens").await,
        0,
        "a refused request must not reach Planhat"
    );

    // Control: the very same body, correctly signed, does reach Planhat.
    let r = http
        .post(endpoint(&app))
        .headers(discord_headers(&command))
        .body(command.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(planhat_calls(&planhat, "/shareabletokens").await > 0);
    app.stop().await;
}

#[tokio::test]
async fn a_fast_link_is_answered_inline_ephemeral_with_a_link_button() {
    let (planhat, _fake, app) = setup("", &format!("discord_users = [\"{ALICE}\"]")).await;
    planhat_link(&planhat, ENDUSER, "inlinetok").await;
    let answer = interact(
        &app,
        &discord_command(1100000000000000301, ALICE, &[], &format!("  {ENDUSER} ")),
    )
    .await;

    assert_eq!(answer["type"], 4, "inline message: {answer}");
    let data = &answer["data"];
    assert_eq!(data["flags"], 64, "ephemeral: {answer}");
    let button = link_button(data);
    assert_eq!(button["url"], redirect("inlinetok"));
    assert_eq!(button["label"], "Open portal");
    let content = data["content"].as_str().unwrap();
    assert!(
        content.contains("<t:"),
        "the expiry as a Discord timestamp: {content:?}"
    );
    assert!(
        content.contains(ENDUSER),
        "names whom the link is for: {content:?}"
    );
    assert_no_mentions(&data["allowed_mentions"]);
    assert_eq!(new_link_id(data), format!("new:{ALICE}:{ENDUSER}"));
    app.stop().await;
}

#[tokio::test]
async fn a_slow_planhat_gets_a_deferred_answer_then_an_edit_with_the_link() {
    let (planhat, fake, app) = setup("", &format!("discord_users = [\"{ALICE}\"]")).await;
    let slow = Duration::from_millis(1500);
    Mock::given(method("GET"))
        .and(path(format!("/shareabletokens/access/{ENDUSER}")))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_string("true")
                .set_delay(slow),
        )
        .mount(&planhat)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/shareabletokens/{ENDUSER}")))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"url": redirect("slowtok")}))
                .set_delay(slow),
        )
        .mount(&planhat)
        .await;

    let id = 1100000000000000401;
    let answer = interact(&app, &discord_command(id, ALICE, &[], ENDUSER)).await;
    assert_eq!(answer["type"], 5, "deferred: {answer}");
    assert_eq!(
        answer["data"]["flags"], 64,
        "a defer fixes ephemeral for good, so it must carry flag 64: {answer}"
    );
    assert!(!answer.to_string().contains("/redirect/"));

    let edit = fake
        .wait_for("PATCH @original with the link", |r| {
            r.method == "PATCH" && r.path == original_path(id)
        })
        .await;
    let body = edit.json();
    assert_eq!(
        link_button(&body)["url"],
        redirect("slowtok"),
        "the edit delivers the link: {body}"
    );
    assert!(body["content"].as_str().unwrap().contains("<t:"), "{body}");
    assert_no_mentions(&body["allowed_mentions"]);
    app.stop().await;
}

#[tokio::test]
async fn a_late_failure_still_reaches_the_user_as_one_clear_line() {
    let (planhat, fake, app) = setup("", &format!("discord_users = [\"{ALICE}\"]")).await;
    Mock::given(method("GET"))
        .and(path("/shareabletokens/access/nosuchuser"))
        .respond_with(ResponseTemplate::new(404).set_delay(Duration::from_millis(1500)))
        .mount(&planhat)
        .await;
    Mock::given(method("GET"))
        .and(path("/shareabletokens/nosuchuser"))
        .respond_with(ResponseTemplate::new(404).set_delay(Duration::from_millis(1500)))
        .mount(&planhat)
        .await;
    let id = 1100000000000000451;
    let answer = interact(&app, &discord_command(id, ALICE, &[], "nosuchuser")).await;
    assert_eq!(answer["type"], 5, "{answer}");
    assert_eq!(answer["data"]["flags"], 64, "{answer}");
    let edit = fake
        .wait_for("the edit with the failure", |r| {
            r.method == "PATCH" && r.path == original_path(id)
        })
        .await;
    let body = edit.json();
    let content = body["content"].as_str().unwrap_or_default();
    assert!(
        content.to_lowercase().contains("no such end user"),
        "{body}"
    );
    assert!(!content.contains('\n'), "one line: {content:?}");
    assert!(buttons(&body).iter().all(|b| b["style"] != 5), "{body}");
    assert_no_mentions(&body["allowed_mentions"]);
    app.stop().await;
}

#[tokio::test]
async fn who_may_ask_users_roles_and_guilds() {
    let access = format!("discord_users = [\"{ALICE}\"]\ndiscord_roles = [{CSM_ROLE}]");
    let (planhat, _fake, app) = setup("", &access).await;
    for id in ["eu-alice", "eu-carol", "eu-dave"] {
        planhat_link(&planhat, id, &format!("tok-{id}")).await;
    }

    // Listed by user id.
    let answer = interact(
        &app,
        &discord_command(1100000000000000501, ALICE, &[], "eu-alice"),
    )
    .await;
    assert_eq!(
        link_button(&answer["data"])["url"],
        redirect("tok-eu-alice")
    );
    // Listed by role (taken from the interaction's member: no API call).
    let answer = interact(
        &app,
        &discord_command(
            1100000000000000502,
            CAROL,
            &[OTHER_ROLE, CSM_ROLE],
            "eu-carol",
        ),
    )
    .await;
    assert_eq!(
        link_button(&answer["data"])["url"],
        redirect("tok-eu-carol")
    );
    // Neither.
    let answer = interact(
        &app,
        &discord_command(1100000000000000503, DAVE, &[OTHER_ROLE], "eu-dave"),
    )
    .await;
    assert_refusal(&answer, "not allowed");
    assert_eq!(
        planhat_calls(&planhat, "eu-dave").await,
        0,
        "a denied asker must not reach Planhat"
    );

    // Outside a guild (a DM: no guild, no member, only `user`), even a listed user is refused.
    let mut dm = discord_command(1100000000000000505, ALICE, &[], "eu-alice");
    let object = dm.as_object_mut().unwrap();
    object.remove("guild_id");
    let member = object.remove("member").unwrap();
    object.insert("user".into(), member["user"].clone());
    let answer = interact(&app, &dm).await;
    assert_refusal(&answer, "server");
    assert_eq!(
        mints(&planhat, "eu-alice").await,
        1,
        "only the guild request minted a link"
    );
    assert_eq!(
        planhat_calls(&planhat, "/shareabletokens/access/eu-alice").await,
        1,
        "the DM request reached no Planhat check"
    );
    app.stop().await;

    // A listed user in a guild that is not enabled.
    let access = format!("discord_users = [\"{ALICE}\"]\ndiscord_guilds = [\"{OTHER_GUILD}\"]");
    let (planhat, _fake, app) = setup("", &access).await;
    planhat_link(&planhat, ENDUSER, "guildtok").await;
    let answer = interact(
        &app,
        &discord_command(1100000000000000504, ALICE, &[], ENDUSER),
    )
    .await;
    assert_refusal(&answer, "server");
    assert_eq!(planhat_calls(&planhat, "/shareabletokens").await, 0);
    app.stop().await;
}

/// The rate limit counts a person, not a person per server: being in many guilds must not
/// multiply what one account may mint (issue 14, item 5).
#[tokio::test]
async fn the_rate_limit_counts_a_person_across_guilds() {
    let (planhat, _fake, app) = setup(
        "[limits]\nper_user_per_minute = 2\n",
        &format!("discord_users = [\"{ALICE}\"]"),
    )
    .await;
    planhat_link(&planhat, ENDUSER, "guildstok").await;
    let guilds = [GUILD, OTHER_GUILD, 1300000000000000098];
    let mut answers = Vec::new();
    for (i, guild) in guilds.iter().enumerate() {
        let mut command = discord_command(1100000000000000510 + i as u64, ALICE, &[], ENDUSER);
        command["guild_id"] = json!(guild.to_string());
        answers.push(interact(&app, &command).await);
    }
    assert_eq!(
        link_button(&answers[0]["data"])["url"],
        redirect("guildstok")
    );
    assert_eq!(
        link_button(&answers[1]["data"])["url"],
        redirect("guildstok")
    );
    assert_refusal(&answers[2], "try again in");
    assert_eq!(
        mints(&planhat, ENDUSER).await,
        2,
        "per_user_per_minute in total, not per guild"
    );
    app.stop().await;
}

#[tokio::test]
async fn portal_is_registered_at_start_by_bulk_overwrite() {
    let (_planhat, fake, app) = setup("", "").await;
    let put = fake
        .wait_for("the guild command registration", |r| {
            r.method == "PUT"
                && r.path == format!("/api/v10/applications/{APP_ID}/guilds/{GUILD}/commands")
        })
        .await;
    assert_eq!(
        put.authorization.as_deref(),
        Some(format!("Bot {DISCORD_TOKEN}").as_str())
    );
    let body = put.json();
    let commands = body
        .as_array()
        .unwrap_or_else(|| panic!("a bulk overwrite sends a list: {body}"));
    assert_eq!(commands.len(), 1, "{body}");
    let portal = &commands[0];
    assert_eq!(portal["name"], "portal");
    assert!(!portal["description"]
        .as_str()
        .unwrap_or_default()
        .is_empty());
    assert_eq!(
        portal["contexts"],
        json!([0]),
        "usable in guilds only: {portal}"
    );
    let options = portal["options"].as_array().unwrap();
    assert_eq!(options.len(), 1, "{portal}");
    let enduser = &options[0];
    assert_eq!(enduser["name"], "enduser");
    assert_eq!(enduser["type"], 3, "a string option: {enduser}");
    assert_eq!(enduser["required"], true, "{enduser}");
    assert!(
        !enduser["description"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{enduser}"
    );
    let max = enduser["max_length"]
        .as_u64()
        .unwrap_or_else(|| panic!("length-limited: {enduser}"));
    assert!((1..=6000).contains(&max), "{enduser}");
    app.stop().await;

    // No guilds configured: one global overwrite instead.
    let planhat = MockServer::start().await;
    let fake = FakeDiscord::start("ws://127.0.0.1:9").await;
    let toml =
        discord_toml(&fake, "").replace(&format!("guild_ids = [\"{GUILD}\"]"), "guild_ids = []");
    let app = spawn(config(&planhat.uri(), &toml)).await;
    let put = fake
        .wait_for("the global command registration", |r| {
            r.method == "PUT" && r.path == format!("/api/v10/applications/{APP_ID}/commands")
        })
        .await;
    assert_eq!(put.json()[0]["name"], "portal");
    assert!(
        fake.requests().iter().all(|r| !r.path.contains("/guilds/")),
        "no guild registration without guild_ids"
    );
    app.stop().await;
}

#[tokio::test]
async fn typed_mentions_are_never_echoed_as_mentions_nor_sent_to_planhat() {
    let (planhat, _fake, app) = setup("", &format!("discord_users = [\"{ALICE}\"]")).await;
    planhat_link(&planhat, ENDUSER, "mentiontok").await;
    let hostile = [
        "@everyone",
        "@here",
        "<@1500000000000000006>",
        "<@&1600000000000000006>",
        "`@everyone`",
        "**@here**",
    ];
    for (i, text) in hostile.iter().enumerate() {
        let answer = interact(
            &app,
            &discord_command(1100000000000000701 + i as u64, ALICE, &[], text),
        )
        .await;
        assert_eq!(answer["type"], 4, "{text}: {answer}");
        let data = &answer["data"];
        assert_eq!(data["flags"], 64, "{text}: {answer}");
        assert_no_mentions(&data["allowed_mentions"]);
        let content = data["content"].as_str().unwrap_or_default();
        assert!(!content.is_empty(), "{text}: a clear refusal: {answer}");
        for raw in ["@everyone", "@here", "<@"] {
            assert!(
                !content.contains(raw),
                "{text}: the reply echoes a raw mention {raw:?}: {content:?}"
            );
        }
        assert!(
            !answer.to_string().contains("/redirect/"),
            "{text}: {answer}"
        );
    }
    assert_eq!(
        planhat_calls(&planhat, "/shareabletokens").await,
        0,
        "not plausible ids: nothing reaches Planhat"
    );
    assert_eq!(
        planhat_calls(&planhat, "everyone").await + planhat_calls(&planhat, "here").await,
        0
    );
    app.stop().await;
}

#[tokio::test]
async fn an_expired_link_is_replaced_by_an_expired_line_with_a_new_link_button() {
    let (planhat, fake, app) = setup(
        "link_lifetime = \"1s\"",
        &format!("discord_users = [\"{ALICE}\"]"),
    )
    .await;
    planhat_link(&planhat, ENDUSER, "shorttok").await;
    let id = 1100000000000000801;
    let answer = interact(&app, &discord_command(id, ALICE, &[], ENDUSER)).await;
    assert_eq!(
        link_button(&answer["data"])["url"],
        redirect("shorttok"),
        "{answer}"
    );

    let edit = fake
        .wait_for("the expiry edit of @original", |r| {
            r.method == "PATCH" && r.path == original_path(id)
        })
        .await;
    assert!(
        !edit.body.contains("/redirect/"),
        "the URL is gone from the chat: {}",
        edit.body
    );
    let body = edit.json();
    assert!(
        body["content"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase()
            .contains("expired"),
        "{body}"
    );
    assert!(
        buttons(&body)
            .iter()
            .all(|b| b["style"] != 5 && b.get("url").is_none_or(Value::is_null)),
        "{body}"
    );
    assert_eq!(new_link_id(&body), format!("new:{ALICE}:{ENDUSER}"));
    assert_no_mentions(&body["allowed_mentions"]);
    app.stop().await;
}

#[tokio::test]
async fn links_expiring_together_are_replaced_a_few_at_a_time_and_all_of_them() {
    // Forty links minted at once expire at once; Discord takes 200 ms per edit. The bot keeps
    // a bounded number of edits in flight (16), and every message is still replaced.
    let planhat = MockServer::start().await;
    let fake =
        FakeDiscord::start_with_edit_delay("ws://127.0.0.1:9", Duration::from_millis(200)).await;
    let app = spawn(config(
        &planhat.uri(),
        &format!(
            "link_lifetime = \"1s\"\n{}[limits]\nper_user_per_minute = 1000\n",
            discord_toml(&fake, &format!("discord_users = [\"{ALICE}\"]"))
        ),
    ))
    .await;
    planhat_link(&planhat, ENDUSER, "bursttok").await;
    let ids: Vec<u64> = (0..40).map(|i| 1100000000000002000 + i).collect();
    let asks = ids.iter().map(|id| {
        let app = &app;
        async move { interact(app, &discord_command(*id, ALICE, &[], ENDUSER)).await }
    });
    // Each is answered with the link, inline or (a slow first round) deferred and edited in.
    futures_util::future::join_all(asks).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let edited = || {
        fake.requests()
            .iter()
            .filter(|r| {
                r.method == "PATCH"
                    && r.body.to_lowercase().contains("expired")
                    && ids.iter().any(|id| r.path == original_path(*id))
            })
            .count()
    };
    while edited() < ids.len() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        edited(),
        ids.len(),
        "every expired link's message is replaced"
    );
    let most = fake.most_edits_at_once();
    assert!((2..=16).contains(&most), "edits at once: {most}");
    app.stop().await;
}

#[tokio::test]
async fn new_link_button_mints_afresh_for_the_asker_only() {
    let access = format!("discord_users = [\"{ALICE}\", \"{BOB}\"]");
    let (planhat, _fake, app) = setup("", &access).await;
    planhat_links(&planhat, ENDUSER, &["firsttok", "secondtok"]).await;

    let answer = interact(
        &app,
        &discord_command(1100000000000000901, ALICE, &[], ENDUSER),
    )
    .await;
    assert_eq!(link_button(&answer["data"])["url"], redirect("firsttok"));
    let custom_id = new_link_id(&answer["data"]);
    assert_eq!(mints(&planhat, ENDUSER).await, 1);

    // Alice clicks New link: the message is updated in place with a fresh link.
    let update = interact(
        &app,
        &discord_click(
            1100000000000000902,
            1100000000000000901,
            ALICE,
            &[],
            &custom_id,
        ),
    )
    .await;
    assert_eq!(update["type"], 7, "UpdateMessage: {update}");
    assert_eq!(
        link_button(&update["data"])["url"],
        redirect("secondtok"),
        "{update}"
    );
    assert!(
        update["data"]["content"]
            .as_str()
            .unwrap_or_default()
            .contains("<t:"),
        "{update}"
    );
    assert_no_mentions(&update["data"]["allowed_mentions"]);
    assert_eq!(new_link_id(&update["data"]), custom_id);
    assert_eq!(mints(&planhat, ENDUSER).await, 2, "a second mint");

    // Bob (allowed to use /portal himself) clicks Alice's button: refused, nothing minted.
    let refusal = interact(
        &app,
        &discord_click(
            1100000000000000903,
            1100000000000000901,
            BOB,
            &[],
            &custom_id,
        ),
    )
    .await;
    assert_refusal(&refusal, "only the person who asked");
    assert_eq!(
        mints(&planhat, ENDUSER).await,
        2,
        "no mint for someone else's button"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_fresh_link_is_not_hidden_by_the_expiry_of_the_link_it_replaced() {
    let (planhat, fake, app) = setup(
        "link_lifetime = \"2s\"",
        &format!("discord_users = [\"{ALICE}\"]"),
    )
    .await;
    planhat_links(&planhat, ENDUSER, &["oldtok", "freshtok"]).await;
    let command = 1100000000000000951;
    let click = 1100000000000000952;
    let answer = interact(&app, &discord_command(command, ALICE, &[], ENDUSER)).await;
    assert_eq!(link_button(&answer["data"])["url"], redirect("oldtok"));

    // New link clicked while the first link is still live: the message now shows the fresh one.
    let update = interact(
        &app,
        &discord_click(click, command, ALICE, &[], &new_link_id(&answer["data"])),
    )
    .await;
    assert_eq!(
        link_button(&update["data"])["url"],
        redirect("freshtok"),
        "{update}"
    );
    let updated_at = fake.requests().len();

    // The fresh link's own expiry edit comes (through the click's token) ...
    let expired = fake
        .wait_for("the fresh link's expiry edit", |r| {
            r.method == "PATCH" && r.path == original_path(click)
        })
        .await;
    assert!(
        expired.body.contains("expired") && !expired.body.contains("/redirect/"),
        "{}",
        expired.body
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ... but the first link's expiry must not blank the message while the fresh link is live.
    let early: Vec<Seen> = fake.requests()[updated_at..]
        .iter()
        .filter(|r| r.method == "PATCH" && r.path == original_path(command))
        .cloned()
        .collect();
    assert!(
        early.is_empty(),
        "the message was set to expired while its fresh link was still valid: {early:?}"
    );
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Gateway mode, end to end against a fake gateway.

#[tokio::test]
async fn gateway_mode_end_to_end() {
    let planhat = MockServer::start().await;
    planhat_link(&planhat, ENDUSER, "gatewaytok").await;
    let ws_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_url = format!("ws://{}", ws_listener.local_addr().unwrap());
    let fake = FakeDiscord::start(&ws_url).await;
    let id = 1100000000000001001;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let gateway = tokio::spawn(fake_gateway(
        ws_listener,
        ws_url.clone(),
        discord_command(id, ALICE, &[], ENDUSER),
        false,
        events_tx,
    ));

    let toml = format!(
        "[discord]\nmode = \"gateway\"\ntoken = \"{DISCORD_TOKEN}\"\napplication_id = {APP_ID}\n\
         guild_ids = [{GUILD}]\napi_url = \"{}\"\n[access]\ndiscord_users = [{ALICE}]\n",
        fake.api_url()
    );
    let app = spawn(config(&planhat.uri(), &toml)).await;

    // The gateway address came from the fake REST, not from Discord.
    fake.wait_for("GET /gateway", |r| {
        r.method == "GET" && r.path == "/api/v10/gateway"
    })
    .await;
    let identify = match tokio::time::timeout(WAIT, events.recv()).await {
        Ok(Some(Gw::Identify(v))) => v,
        other => panic!("no Identify from the bot: {other:?}"),
    };
    assert_eq!(
        identify["d"]["intents"], 0,
        "no intents at all, least of all privileged ones: {identify}"
    );
    assert_eq!(identify["d"]["token"], format!("Bot {DISCORD_TOKEN}"));

    fake.wait_for("the guild command registration", |r| {
        r.method == "PUT"
            && r.path == format!("/api/v10/applications/{APP_ID}/guilds/{GUILD}/commands")
    })
    .await;
    let callback_path = format!("/api/v10/interactions/{id}/itok-{id}/callback");
    let callback = fake
        .wait_for("the interaction callback", |r| {
            r.method == "POST" && r.path == callback_path
        })
        .await;
    let body = callback.json();
    assert_eq!(body["type"], 4, "inline answer: {body}");
    assert_eq!(body["data"]["flags"], 64, "ephemeral: {body}");
    assert_eq!(
        link_button(&body["data"])["url"],
        redirect("gatewaytok"),
        "{body}"
    );
    assert_no_mentions(&body["data"]["allowed_mentions"]);
    assert_eq!(
        fake.requests()
            .iter()
            .filter(|r| r.path.starts_with("/api/v10/interactions/"))
            .count(),
        1,
        "answered exactly once"
    );

    let expected = [
        ("GET", "/api/v10/gateway".to_string()),
        (
            "PUT",
            format!("/api/v10/applications/{APP_ID}/guilds/{GUILD}/commands"),
        ),
        ("POST", callback_path.clone()),
    ];
    for r in fake.requests() {
        assert!(
            expected.iter().any(|(m, p)| r.method == *m && r.path == *p),
            "unexpected Discord request: {} {}",
            r.method,
            r.path
        );
    }
    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .expect("stop() finishes promptly in gateway mode");
    // After stop the bot no longer holds the gateway connection.
    let closed = tokio::time::timeout(WAIT, async {
        while let Some(event) = events.recv().await {
            if matches!(event, Gw::Closed) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        closed,
        Ok(true),
        "the gateway connection is closed after stop"
    );
    gateway.abort();
}

/// What the test tells `scripted_gateway` to do on its current connection.
enum GwOrder {
    /// Send this INTERACTION_CREATE as the next dispatch.
    Interaction(Value),
    /// Drop the TCP connection without a close frame, as a network failure does.
    Drop,
}

/// A fake Discord gateway driven by the test: Hello on every connection; Identify is answered
/// with READY, Resume (op 6) with RESUMED, heartbeats with acks. The session (its id and
/// sequence) survives a dropped connection, as Discord's does. Reports each connection, each
/// Identify and Resume, and the end of each connection.
async fn scripted_gateway(
    listener: TcpListener,
    ws_url: String,
    events: mpsc::UnboundedSender<Gw>,
    mut orders: mpsc::UnboundedReceiver<GwOrder>,
) {
    let mut seq = 0u64;
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
            continue;
        };
        let _ = events.send(Gw::Connected);
        let hello = json!({"op": 10, "d": {"heartbeat_interval": 45000}, "s": null, "t": null});
        if ws.send(WsMessage::text(hello.to_string())).await.is_err() {
            continue;
        }
        loop {
            tokio::select! {
                frame = ws.next() => {
                    let text = match frame {
                        Some(Ok(WsMessage::Text(t))) => t.to_string(),
                        Some(Ok(WsMessage::Binary(b))) => String::from_utf8_lossy(&b).into_owned(),
                        Some(Ok(WsMessage::Close(_)) | Err(_)) | None => break,
                        Some(Ok(_)) => continue,
                    };
                    let Ok(payload) = serde_json::from_str::<Value>(&text) else {
                        continue;
                    };
                    let reply = match payload["op"].as_u64() {
                        Some(2) => {
                            seq += 1;
                            let _ = events.send(Gw::Identify(payload));
                            json!({"op": 0, "s": seq, "t": "READY", "d": {
                                "v": 10, "user": {"id": APP_ID.to_string(), "username": "portal-bot", "bot": true},
                                "guilds": [], "session_id": "fake-session", "resume_gateway_url": ws_url,
                                "application": {"id": APP_ID.to_string(), "flags": 0}}})
                        }
                        Some(6) => {
                            // Nothing was missed while away: straight to RESUMED.
                            seq = seq.max(payload["d"]["seq"].as_u64().unwrap_or(0)) + 1;
                            let _ = events.send(Gw::Resume(payload));
                            json!({"op": 0, "s": seq, "t": "RESUMED", "d": {}})
                        }
                        Some(1) => json!({"op": 11}),
                        _ => continue,
                    };
                    let _ = ws.send(WsMessage::text(reply.to_string())).await;
                }
                order = orders.recv() => match order {
                    Some(GwOrder::Interaction(d)) => {
                        seq += 1;
                        let dispatch = json!({"op": 0, "s": seq, "t": "INTERACTION_CREATE", "d": d});
                        let _ = ws.send(WsMessage::text(dispatch.to_string())).await;
                    }
                    Some(GwOrder::Drop) | None => break,
                },
            }
        }
        drop(ws);
        let _ = events.send(Gw::Closed);
    }
}

/// The next gateway event, waiting up to `within`.
async fn next_gw(events: &mut mpsc::UnboundedReceiver<Gw>, within: Duration, what: &str) -> Gw {
    match tokio::time::timeout(within, events.recv()).await {
        Ok(Some(event)) => event,
        other => panic!("waited for {what} from the fake gateway: {other:?}"),
    }
}

/// `portal_bot_reconnects_total{connection="discord_gateway"}` from `/metrics` (0 if absent).
async fn gateway_reconnects(app: &Running) -> u64 {
    let metrics = client()
        .get(format!("http://{}/metrics", app.metrics_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("portal_bot_reconnects_total{connection=\"discord_gateway\"} ")
        })
        .map_or(0, |n| n.trim().parse().expect("a counter value"))
}

#[tokio::test]
async fn gateway_reconnects_after_a_dropped_connection() {
    let planhat = MockServer::start().await;
    planhat_links(&planhat, ENDUSER, &["beforetok", "aftertok"]).await;
    let ws_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_url = format!("ws://{}", ws_listener.local_addr().unwrap());
    let fake = FakeDiscord::start(&ws_url).await;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (orders, orders_rx) = mpsc::unbounded_channel();
    let gateway = tokio::spawn(scripted_gateway(
        ws_listener,
        ws_url.clone(),
        events_tx,
        orders_rx,
    ));
    let toml = format!(
        "[discord]\nmode = \"gateway\"\ntoken = \"{DISCORD_TOKEN}\"\napplication_id = {APP_ID}\n\
         guild_ids = [{GUILD}]\napi_url = \"{}\"\n[access]\ndiscord_users = [{ALICE}]\n",
        fake.api_url()
    );
    let app = spawn(config(&planhat.uri(), &toml)).await;
    let answered = |id: u64| {
        let path = format!("/api/v10/interactions/{id}/itok-{id}/callback");
        move |r: &Seen| r.method == "POST" && r.path == path
    };

    // First connection: Hello, Identify, READY, and a working session.
    assert!(matches!(
        next_gw(&mut events, WAIT, "the first connection").await,
        Gw::Connected
    ));
    assert!(matches!(
        next_gw(&mut events, WAIT, "Identify").await,
        Gw::Identify(_)
    ));
    let before = 1100000000000001101;
    orders
        .send(GwOrder::Interaction(discord_command(
            before,
            ALICE,
            &[],
            ENDUSER,
        )))
        .unwrap();
    // Answered, so READY (dispatched before it) was handled and the session is established.
    let body = fake
        .wait_for("the callback before the drop", answered(before))
        .await
        .json();
    assert_eq!(link_button(&body["data"])["url"], redirect("beforetok"));
    assert_eq!(gateway_reconnects(&app).await, 0, "no reconnect yet");

    // The connection drops (no close frame).
    orders.send(GwOrder::Drop).unwrap();
    assert!(matches!(
        next_gw(&mut events, WAIT, "the end of the first connection").await,
        Gw::Closed
    ));

    // (a) serenity comes back on its own, within 10 s.
    assert!(matches!(
        next_gw(&mut events, Duration::from_secs(10), "a second connection").await,
        Gw::Connected
    ));
    // It resumes the session (today's serenity) or identifies afresh; the fake accepts both.
    match next_gw(&mut events, WAIT, "Resume or Identify").await {
        Gw::Resume(resume) => {
            assert_eq!(resume["d"]["session_id"], "fake-session", "{resume}");
            assert_eq!(resume["d"]["seq"], 2, "the last sequence seen: {resume}");
            assert_eq!(resume["d"]["token"], format!("Bot {DISCORD_TOKEN}"));
        }
        Gw::Identify(_) => {}
        other => panic!("neither Resume nor Identify on the new connection: {other:?}"),
    }

    // (b) An interaction on the new connection is answered through REST with the link.
    let after = 1100000000000001102;
    orders
        .send(GwOrder::Interaction(discord_command(
            after,
            ALICE,
            &[],
            ENDUSER,
        )))
        .unwrap();
    let body = fake
        .wait_for("the callback after the reconnect", answered(after))
        .await
        .json();
    assert_eq!(body["type"], 4, "inline answer: {body}");
    assert_eq!(body["data"]["flags"], 64, "ephemeral: {body}");
    assert_eq!(
        link_button(&body["data"])["url"],
        redirect("aftertok"),
        "{body}"
    );
    assert_no_mentions(&body["data"]["allowed_mentions"]);

    // (c) The reconnect is visible to operators in /metrics, counted once.
    let deadline = Instant::now() + WAIT;
    let mut reconnects = gateway_reconnects(&app).await;
    while reconnects == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(25)).await;
        reconnects = gateway_reconnects(&app).await;
    }
    assert_eq!(reconnects, 1, "one reconnect in /metrics");

    tokio::time::timeout(Duration::from_secs(5), app.stop())
        .await
        .expect("stop() finishes promptly after a reconnect");
    assert!(matches!(
        next_gw(&mut events, WAIT, "the end of the second connection").await,
        Gw::Closed
    ));
    gateway.abort();
}
