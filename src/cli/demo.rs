//! `portal-bot demo`: the whole flow on this machine, no credentials needed.
//!
//! It starts the sandbox Planhat and a stand-in for the chat platforms (it receives Slack's
//! `response_url` posts and Discord's REST calls), starts the real server configured for both
//! platforms in http mode, and then sends it what Slack and Discord would send: signed slash
//! commands, signed interactions, button clicks, a forged request. For each step it prints what
//! the chat user would see and how long the step took.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{patch, post, put};
use axum::{Json, Router};
use ed25519_dalek::{Signer, SigningKey};
use hmac::{KeyInit, Mac};
use rand::RngExt;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Mutex};

mod owner;

use super::exit;
use crate::core::config::Config;
use crate::sandbox::{Sandbox, SandboxOptions, END_USERS};

const SLACK_USER: &str = "U0DEMO";
const DISCORD_USER: u64 = 1500000000000000005;
const APP_ID: u64 = 1200000000000000002;
const GUILD: u64 = 1300000000000000003;
/// Short, so the demo can show the expiry clean-up without a 30 s wait.
const DEMO_LINK_LIFETIME: Duration = Duration::from_secs(6);

/// What the chat stand-in received.
#[derive(Debug)]
struct Received {
    what: &'static str,
    body: Value,
}

type Inbox = Arc<Mutex<mpsc::Receiver<Received>>>;

pub async fn run() -> u8 {
    match demo().await {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("demo failed: {e}");
            exit::UPSTREAM
        }
    }
}

async fn demo() -> Result<(), String> {
    let t0 = Instant::now();
    println!("portal-bot demo: everything runs on 127.0.0.1; nothing leaves this machine.\n");

    let sandbox = Sandbox::start(SandboxOptions {
        link_lifetime: DEMO_LINK_LIFETIME,
        slow: Duration::from_secs(3),
        ..Default::default()
    })
    .await
    .map_err(|e| format!("sandbox: {e}"))?;
    println!("Sandbox Planhat on {} with these end users:", sandbox.base);
    for u in END_USERS {
        println!("  {:<9} {:<24} {}", u.id, u.email, u.shows);
    }
    println!("  (any other id: Planhat has no such end user)\n");

    let (chat_url, inbox) = start_chat_standin().await?;
    let mut secret_bytes = [0u8; 32];
    rand::rng().fill(&mut secret_bytes);
    let signing_secret = hex::encode(secret_bytes);
    let mut key_bytes = [0u8; 32];
    rand::rng().fill(&mut key_bytes);
    let discord_key = SigningKey::from_bytes(&key_bytes);

    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
         [planhat]\ntoken = \"sandbox\"\nlink_lifetime = \"{}s\"\n\
         [slack]\nmode = \"http\"\nsigning_secret = \"{signing_secret}\"\nbot_token = \"xoxb-demo\"\napi_url = \"{chat_url}/slack-api\"\n\
         [discord]\nmode = \"http\"\ntoken = \"demo\"\napplication_id = \"{APP_ID}\"\npublic_key = \"{}\"\nguild_ids = [\"{GUILD}\"]\napi_url = \"{chat_url}/api/v10\"\n\
         [access]\nslack_users = [\"{SLACK_USER}\"]\ndiscord_users = [\"{DISCORD_USER}\"]\n\
         [search]\n[audit]\n",
        DEMO_LINK_LIFETIME.as_secs(),
        hex::encode(discord_key.verifying_key().to_bytes()),
    );
    let mut config = Config::parse(&text, &|_| None).map_err(|e| e.to_string())?;
    config.point_at_sandbox(&sandbox.base, sandbox.token());
    let running = crate::start(config).await.map_err(|e| e.to_string())?;
    let base = format!("http://{}", running.addr);
    println!(
        "portal-bot serving on {base} (started in {} ms)\n",
        t0.elapsed().as_millis()
    );
    let _ = next(&inbox, Duration::from_secs(3)).await; // Discord command registration

    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let signing_secret_for_go = signing_secret.clone();
    let slack = Slack {
        http: http.clone(),
        base: base.clone(),
        secret: signing_secret,
        chat: chat_url.clone(),
    };
    let discord = Discord {
        http,
        base,
        key: discord_key,
    };

    step("Slack: /portal jane");
    let t = Instant::now();
    let reply = slack.command("jane", 1).await?;
    show_slack(&reply);
    took(t);
    let open_button_value = find_button(&reply, "open_portal");

    step("Slack: /portal slow   (Planhat takes 3 s here: the bot acknowledges, then delivers)");
    let t = Instant::now();
    let ack = slack.command("slow", 2).await?;
    show_slack(&ack);
    println!(
        "  (acknowledged after {:.0} ms)",
        t.elapsed().as_secs_f64() * 1000.0
    );
    let late = next(&inbox, Duration::from_secs(8))
        .await
        .ok_or("no late delivery arrived")?;
    show_slack(&late.body);
    took(t);

    for (text, n) in [
        ("noaccess", 3),
        ("nobody", 4),
        ("broken", 5),
        ("<!channel>", 6),
        ("help", 7),
    ] {
        step(&format!("Slack: /portal {text}"));
        let t = Instant::now();
        show_slack(&slack.command(text, n).await?);
        took(t);
    }

    step("Slack: /portal pat@shared.example   (email lookup, two matches)");
    let t = Instant::now();
    show_slack(&slack.command("pat@shared.example", 8).await?);
    took(t);

    step("Slack: /portal check noaccess   (nothing is minted)");
    let t = Instant::now();
    show_slack(&slack.command("check noaccess", 9).await?);
    took(t);

    // The index of the sandbox's 20,000 people is read at start; wait for it (a few seconds).
    if let Some(search) = running.app.portal.search() {
        let until = Instant::now() + Duration::from_secs(20);
        while !search.warm() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    step("Slack: /portal find jöns ångström umbrella   (by name: the sandbox has 20,000 people)");
    let t = Instant::now();
    show_slack(&slack.command("find jöns ångström umbrella", 10).await?);
    took(t);

    step("Slack: /portal Doe, Jane   (not an id: a search, forgiving order and case)");
    let t = Instant::now();
    show_slack(&slack.command("Doe, Jane", 11).await?);
    took(t);

    if let Some(value) = open_button_value {
        step("Slack: the asker clicks \"Open portal\" (the used URL leaves the chat)");
        let t = Instant::now();
        slack.click("open_portal", &value).await?;
        let replaced = next(&inbox, Duration::from_secs(5))
            .await
            .ok_or("no replacement arrived")?;
        show_slack(&replaced.body);
        took(t);
    }

    if let Some(value) = find_button(&reply, "new_link") {
        step("Slack: the asker clicks \"New link\" (a fresh link replaces the message)");
        let t = Instant::now();
        slack.click("new_link", &value).await?;
        let replaced = next(&inbox, Duration::from_secs(5))
            .await
            .ok_or("no new link arrived")?;
        show_slack(&replaced.body);
        took(t);
    }

    step("Slack: a forged request (wrong signature)");
    let t = Instant::now();
    let status = slack.forged().await?;
    println!("  HTTP {status}: refused before anything else happens");
    took(t);

    step("Discord: /portal jane");
    let t = Instant::now();
    let response = discord.command("jane", 1).await?;
    show_discord(&response["data"]);
    took(t);

    step(
        "Discord: typing \"mria garc\" in /portal's enduser option (autocomplete, a typo and all)",
    );
    let t = Instant::now();
    let choices = discord.autocomplete("mria garc", 3).await?;
    for c in choices["data"]["choices"]
        .as_array()
        .into_iter()
        .flatten()
        .take(5)
    {
        println!(
            "  {}  → {}",
            c["name"].as_str().unwrap_or(""),
            c["value"].as_str().unwrap_or("")
        );
    }
    took(t);

    step(&format!(
        "Discord: {} s later the link expires; the bot edits its message",
        DEMO_LINK_LIFETIME.as_secs()
    ));
    let t = Instant::now();
    let edit = next(&inbox, DEMO_LINK_LIFETIME + Duration::from_secs(5))
        .await
        .ok_or("no expiry edit arrived")?;
    show_discord(&edit.body);
    took(t);

    step("Discord: /portal slow   (deferred, then the original response is edited)");
    let t = Instant::now();
    let response = discord.command("slow", 2).await?;
    println!(
        "  type {} (deferred, ephemeral flag {})",
        response["type"], response["data"]["flags"]
    );
    let edit = next(&inbox, Duration::from_secs(8))
        .await
        .ok_or("no late edit arrived")?;
    show_discord(&edit.body);
    took(t);

    running.stop().await;

    go_leg(&text, &sandbox, &inbox, &chat_url, &signing_secret_for_go).await?;
    owner::owner_leg(&text, &sandbox, &signing_secret_for_go).await?;

    println!("\nDone in {:.1} s. Try it in your own chat: see README \"Add to Slack\" / \"Add to Discord\";", t0.elapsed().as_secs_f64());
    println!("`portal-bot serve --sandbox` answers from this same sandbox before you have a Planhat token.");
    Ok(())
}

/// A second server with `server.public_url` set: the button is a one-time `/go/` link and the
/// signed URL is minted when the browser arrives.
async fn go_leg(
    config_text: &str,
    sandbox: &Sandbox,
    inbox: &Inbox,
    chat_url: &str,
    secret: &str,
) -> Result<(), String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let mut config = Config::parse(config_text, &|_| None).map_err(|e| e.to_string())?;
    config.point_at_sandbox(&sandbox.base, sandbox.token());
    config.server.listen = ([127, 0, 0, 1], port).into();
    config.server.public_url =
        Some(url::Url::parse(&format!("http://127.0.0.1:{port}")).map_err(|e| e.to_string())?);
    config.discord = None;
    let running = crate::start(config).await.map_err(|e| e.to_string())?;
    let base = format!("http://{}", running.addr);
    let http = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())?;
    let slack = Slack {
        http: http.clone(),
        base,
        secret: secret.to_string(),
        chat: chat_url.to_string(),
    };
    let _ = inbox;

    step("With server.public_url: /portal jane gives a one-time /go/ link (nothing minted yet)");
    let t = Instant::now();
    let reply = slack.command("jane", 50).await?;
    show_slack(&reply);
    took(t);
    let open = reply["blocks"]
        .as_array()
        .and_then(|blocks| {
            blocks.iter().find_map(|b| {
                b["elements"]
                    .as_array()?
                    .iter()
                    .find(|e| e["action_id"] == "open_portal")
                    .cloned()
            })
        })
        .ok_or("no /go/ button")?;
    let go = open["url"].as_str().ok_or("no /go/ URL")?.to_string();
    let value = open["value"].as_str().unwrap_or_default().to_string();

    step(
        "The same link copied elsewhere (a paste, a screenshot): it opens for no one, stays usable",
    );
    let t = Instant::now();
    // Someone else's browser with a copy: it is told no, and remembered.
    const COPY: &str = "Mozilla/5.0 (someone else's browser, with a copy)";
    const ASKER: &str = "Mozilla/5.0 (the asker's browser)";
    let copied = http
        .post(&go)
        .header("user-agent", COPY)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = copied.status().as_u16();
    let page = copied.text().await.map_err(|e| e.to_string())?;
    println!("  HTTP {status}: {}", between(&page, "<p>", "</p>"));
    took(t);

    // A moment passes before the asker clicks.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    step("The asker clicks it in Slack; the copy opened before that click still opens nothing");
    let t = Instant::now();
    slack.click("open_portal", &value).await?;
    let raced = http
        .get(&go)
        .header("user-agent", COPY)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = raced.status().as_u16();
    let page = raced.text().await.map_err(|e| e.to_string())?;
    println!("  HTTP {status}: {}", between(&page, "<p>", "</p>"));
    took(t);

    step("The browser the asker's click opened: the bot checks access, mints now, and redirects");
    let t = Instant::now();
    let click = http
        .get(&go)
        .header("user-agent", ASKER)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let location = click
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    println!("  HTTP {} → {location}", click.status().as_u16());
    let page = http
        .get(&location)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    println!("  the portal says: {}", between(&page, "<p>", "</p>"));
    took(t);

    step("Clicking the same link again");
    let t = Instant::now();
    let again = http
        .get(&go)
        .header("user-agent", ASKER)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = again.status().as_u16();
    let page = again.text().await.map_err(|e| e.to_string())?;
    println!("  HTTP {status}: {}", between(&page, "<p>", "</p>"));
    took(t);
    running.stop().await;
    Ok(())
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    text.split_once(start)
        .and_then(|(_, rest)| rest.split_once(end))
        .map(|(inner, _)| inner)
        .unwrap_or(text)
}

fn step(title: &str) {
    println!("▶ {title}");
}

fn took(t: Instant) {
    println!("  ({:.1} ms)\n", t.elapsed().as_secs_f64() * 1000.0);
}

async fn next(inbox: &Inbox, wait: Duration) -> Option<Received> {
    let mut rx = inbox.lock().await;
    match tokio::time::timeout(wait, rx.recv()).await {
        Ok(Some(r)) => {
            tracing::debug!(what = r.what, "chat stand-in received");
            Some(r)
        }
        _ => None,
    }
}

struct Slack {
    http: reqwest::Client,
    base: String,
    secret: String,
    chat: String,
}

impl Slack {
    async fn post(
        &self,
        path: &str,
        body: String,
        secret: &str,
    ) -> Result<reqwest::Response, String> {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
            .map_err(|e| e.to_string())?;
        mac.update(format!("v0:{ts}:{body}").as_bytes());
        let signature = format!("v0={}", hex::encode(mac.finalize().into_bytes()));
        self.http
            .post(format!("{}{path}", self.base))
            .header("x-slack-signature", signature)
            .header("x-slack-request-timestamp", ts.to_string())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())
    }

    fn form(&self, text: &str, n: u32) -> String {
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("team_id", "T0DEMO")
            .append_pair("channel_id", "C0DEMO")
            .append_pair("user_id", SLACK_USER)
            .append_pair("command", "/portal")
            .append_pair("text", text)
            .append_pair("response_url", &format!("{}/slack/response/{n}", self.chat))
            .append_pair("trigger_id", &format!("demo-trigger-{n}"))
            .finish()
    }

    async fn command(&self, text: &str, n: u32) -> Result<Value, String> {
        let response = self
            .post("/slack/commands", self.form(text, n), &self.secret)
            .await?;
        response.json().await.map_err(|e| e.to_string())
    }

    async fn click(&self, action_id: &str, value: &str) -> Result<(), String> {
        self.click_as(SLACK_USER, action_id, value).await
    }

    /// A button pressed by `user` (its answer goes to the stand-in's `response_url`).
    async fn click_as(&self, user: &str, action_id: &str, value: &str) -> Result<(), String> {
        let payload = json!({
            "type": "block_actions", "team": {"id": "T0DEMO"}, "user": {"id": user},
            "api_app_id": "A0DEMO", "trigger_id": format!("demo-{action_id}-{user}"),
            "container": {"type": "message", "message_ts": "1.2"}, "channel": {"id": "C0DEMO"},
            "response_url": format!("{}/slack/response/{user}", self.chat),
            "actions": [{"type": "button", "action_id": action_id, "value": value,
                         "action_ts": format!("{:.6}", crate::core::onetime::now_ms() as f64 / 1000.0)}]
        });
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", &payload.to_string())
            .finish();
        self.post("/slack/interactions", body, &self.secret)
            .await
            .map(|_| ())
    }

    async fn forged(&self) -> Result<u16, String> {
        Ok(self
            .post("/slack/commands", self.form("jane", 99), "not-the-secret")
            .await?
            .status()
            .as_u16())
    }
}

struct Discord {
    http: reqwest::Client,
    base: String,
    key: SigningKey,
}

impl Discord {
    async fn command(&self, enduser: &str, n: u64) -> Result<Value, String> {
        self.interaction(2, enduser, n).await
    }

    /// What Discord sends while the asker types in the `enduser` option.
    async fn autocomplete(&self, typed: &str, n: u64) -> Result<Value, String> {
        self.interaction(4, typed, n).await
    }

    async fn interaction(&self, kind: u8, enduser: &str, n: u64) -> Result<Value, String> {
        let body = json!({
            "id": (1100000000000000000u64 + n).to_string(), "application_id": APP_ID.to_string(), "type": kind,
            "token": format!("demo-interaction-{n}"), "version": 1, "guild_id": GUILD.to_string(),
            "channel_id": "1400000000000000004", "locale": "en-US", "entitlements": [], "attachment_size_limit": 8388608,
            "member": {"user": {"id": DISCORD_USER.to_string(), "username": "csm"}, "roles": [], "deaf": false, "mute": false, "flags": 0},
            "data": {"id": "1700000000000000007", "name": "portal", "type": 1, "options": [{"name": "enduser", "type": 3, "value": enduser, "focused": kind == 4}]}
        })
        .to_string();
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs()
            .to_string();
        let signature = hex::encode(
            self.key
                .sign(&[ts.as_bytes(), body.as_bytes()].concat())
                .to_bytes(),
        );
        let response = self
            .http
            .post(format!("{}/discord/interactions", self.base))
            .header("x-signature-ed25519", signature)
            .header("x-signature-timestamp", ts)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        response.json().await.map_err(|e| e.to_string())
    }
}

/// Prints a Slack message roughly as Slack shows it.
fn show_slack(message: &Value) {
    match message["response_type"].as_str() {
        Some("ephemeral") => println!("  [ephemeral, only you can see this]"),
        Some(kind) => println!("  [{kind}]"),
        None => println!("  [a message in the conversation]"),
    }
    let Some(blocks) = message["blocks"].as_array() else {
        println!("  {}", message["text"].as_str().unwrap_or(""));
        return;
    };
    for block in blocks {
        match block["type"].as_str() {
            Some("section") | Some("context") => {
                let text = block["text"]["text"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| {
                        block["elements"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|e| e["text"].as_str())
                            .collect::<Vec<_>>()
                            .join(" ")
                    });
                for line in text.lines() {
                    println!("  {line}");
                }
            }
            Some("actions") => {
                let buttons: Vec<String> = block["elements"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|b| match b["url"].as_str() {
                        Some(url) => {
                            format!("[{} → {url}]", b["text"]["text"].as_str().unwrap_or(""))
                        }
                        None => format!("[{}]", b["text"]["text"].as_str().unwrap_or("")),
                    })
                    .collect();
                println!("  {}", buttons.join(" "));
            }
            _ => {}
        }
    }
}

/// Prints a Discord message roughly as Discord shows it.
fn show_discord(data: &Value) {
    let ephemeral = data["flags"].as_u64().is_some_and(|f| f & 64 != 0);
    if ephemeral {
        println!("  [ephemeral: only you can see this]");
    }
    println!("  {}", data["content"].as_str().unwrap_or(""));
    for row in data["components"].as_array().into_iter().flatten() {
        let buttons: Vec<String> = row["components"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|b| match b["url"].as_str() {
                Some(url) => format!("[{} → {url}]", b["label"].as_str().unwrap_or("")),
                None => format!("[{}]", b["label"].as_str().unwrap_or("")),
            })
            .collect();
        println!("  {}", buttons.join(" "));
    }
}

fn find_button(message: &Value, action_id: &str) -> Option<String> {
    message["blocks"].as_array()?.iter().find_map(|b| {
        b["elements"]
            .as_array()?
            .iter()
            .find(|e| e["action_id"] == action_id)?["value"]
            .as_str()
            .map(str::to_string)
    })
}

/// The chat platforms' side: Slack response_url posts, Discord REST.
async fn start_chat_standin() -> Result<(String, Inbox), String> {
    let (tx, rx) = mpsc::channel(64);
    let app = Router::new()
        .route("/slack/response/{n}", post(slack_response))
        .route(
            "/api/v10/applications/{app}/guilds/{guild}/commands",
            put(registered),
        )
        .route(
            "/api/v10/webhooks/{app}/{token}/messages/@original",
            patch(discord_edit),
        )
        .with_state(tx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((format!("http://{addr}"), Arc::new(Mutex::new(rx))))
}

async fn slack_response(
    State(tx): State<mpsc::Sender<Received>>,
    Json(body): Json<Value>,
) -> impl IntoResponse {
    let _ = tx
        .send(Received {
            what: "slack response_url",
            body,
        })
        .await;
    Json(json!({"ok": true}))
}

async fn registered(
    State(tx): State<mpsc::Sender<Received>>,
    Json(body): Json<Value>,
) -> impl IntoResponse {
    let _ = tx
        .send(Received {
            what: "discord registration",
            body,
        })
        .await;
    Json(json!([]))
}

async fn discord_edit(
    State(tx): State<mpsc::Sender<Received>>,
    Path((_app, _token)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> impl IntoResponse {
    let _ = tx
        .send(Received {
            what: "discord edit",
            body,
        })
        .await;
    (
        StatusCode::OK,
        Json(json!({
            "id": "1800000000000000008", "channel_id": "1400000000000000004",
            "author": {"id": APP_ID.to_string(), "username": "portal-bot"}, "content": "",
            "timestamp": "2026-01-01T00:00:00+00:00", "tts": false, "mention_everyone": false,
            "mentions": [], "mention_roles": [], "attachments": [], "embeds": [], "pinned": false, "type": 0
        })),
    )
}
