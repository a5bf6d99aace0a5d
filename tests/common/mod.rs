//! Shared test helpers: the real app on a random loopback port, a wiremock Planhat, and
//! requests signed exactly as Slack and Discord sign them. Every address here is 127.0.0.1.
#![allow(dead_code)]

pub mod browser;
pub mod discord;
pub mod idp;
pub mod portal;
pub mod postgres;
pub mod redis;

use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signer, SigningKey};
use hmac::{KeyInit, Mac};
use portal_bot::{Config, Running};
use serde_json::{json, Value};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

pub const API_TOKEN: &str = "test-planhat-token-7f3a";
pub const SIGNING_SECRET: &str = "test-slack-signing-secret-91bc";
pub const BOT_TOKEN: &str = "xoxb-test-bot-token-55de";
pub const APP_TOKEN: &str = "xapp-test-app-token-66ef";
pub const DISCORD_TOKEN: &str = "test-discord-bot-token-77aa";
pub const PORTAL: &str = "https://share.example.test";
pub const APP_ID: u64 = 1200000000000000002;
pub const GUILD: u64 = 1300000000000000003;
pub const CHANNEL: u64 = 1400000000000000004;

/// The Discord test key (a fixed seed: tests only).
pub fn discord_key() -> SigningKey {
    SigningKey::from_bytes(&[42u8; 32])
}

pub fn discord_public_key_hex() -> String {
    hex::encode(discord_key().verifying_key().to_bytes())
}

/// A config pointing at `planhat`, with `extra` TOML appended (sections other than [planhat]).
pub fn config(planhat: &str, extra: &str) -> Config {
    config_with_server(planhat, "", extra)
}

/// [`config`] with `server` TOML added to its `[server]` section.
pub fn config_with_server(planhat: &str, server: &str, extra: &str) -> Config {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\nreply_budget = \"400ms\"\n{server}\
         [planhat]\napi_url = \"{planhat}\"\nportal_url = \"{PORTAL}\"\ntoken = \"{API_TOKEN}\"\ntimeout = \"2s\"\n{extra}"
    );
    Config::parse(&text, &|_| None).expect("test config must be valid")
}

/// Starts the real app.
pub async fn spawn(config: Config) -> Running {
    portal_bot::start(config).await.expect("app starts")
}

/// Starts the real app with `server.public_url` naming its own address, which must be known
/// before start: a free port is picked, and picked again if another test took it meanwhile
/// (between the probe's release and the app's bind, a parallel test can be handed the same
/// ephemeral port).
pub async fn spawn_with_public_url(config: Config) -> Running {
    for _ in 0..10 {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let mut cfg = config.clone();
        cfg.server.listen = addr;
        cfg.server.public_url = Some(url::Url::parse(&format!("http://{addr}")).unwrap());
        match portal_bot::start(cfg).await {
            Ok(running) => return running,
            Err(portal_bot::StartError::Listen { .. }) => continue,
            Err(e) => panic!("app starts: {e:?}"),
        }
    }
    panic!("no free port in ten tries")
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Headers Slack would send with `body`, signed at `ts`.
pub fn slack_headers(secret: &str, ts: u64, body: &str) -> reqwest::header::HeaderMap {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("v0:{ts}:{body}").as_bytes());
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        "x-slack-signature",
        format!("v0={}", hex::encode(mac.finalize().into_bytes()))
            .parse()
            .unwrap(),
    );
    h.insert("x-slack-request-timestamp", ts.to_string().parse().unwrap());
    h.insert(
        "content-type",
        "application/x-www-form-urlencoded".parse().unwrap(),
    );
    h
}

/// A slash-command form body.
pub fn slash_body(
    user: &str,
    channel: &str,
    text: &str,
    response_url: &str,
    trigger: &str,
) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("token", "deprecated")
        .append_pair("team_id", "T0001")
        .append_pair("team_domain", "acme")
        .append_pair("channel_id", channel)
        .append_pair("channel_name", "cs")
        .append_pair("user_id", user)
        .append_pair("user_name", "csm")
        .append_pair("command", "/portal")
        .append_pair("text", text)
        .append_pair("api_app_id", "A0001")
        .append_pair("response_url", response_url)
        .append_pair("trigger_id", trigger)
        .finish()
}

/// Headers Discord would send with `body`.
pub fn discord_headers(body: &[u8]) -> reqwest::header::HeaderMap {
    let ts = now().to_string();
    let sig = discord_key().sign(&[ts.as_bytes(), body].concat());
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        "x-signature-ed25519",
        hex::encode(sig.to_bytes()).parse().unwrap(),
    );
    h.insert("x-signature-timestamp", ts.parse().unwrap());
    h.insert("content-type", "application/json".parse().unwrap());
    h
}

/// A `/portal` APPLICATION_COMMAND interaction in the test guild.
pub fn discord_command(id: u64, user: u64, roles: &[u64], enduser: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id.to_string(), "application_id": APP_ID.to_string(), "type": 2, "token": format!("itok-{id}"),
        "version": 1, "guild_id": GUILD.to_string(), "channel_id": CHANNEL.to_string(), "locale": "en-US",
        "entitlements": [], "attachment_size_limit": 8388608,
        "member": {"user": {"id": user.to_string(), "username": "csm"},
                   "roles": roles.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
                   "deaf": false, "mute": false, "flags": 0},
        "data": {"id": "1700000000000000007", "name": "portal", "type": 1,
                 "options": [{"name": "enduser", "type": 3, "value": enduser}]}
    })
}

/// Planhat answering access `true` and minting `{PORTAL}/redirect/{token}` for `id`.
pub async fn planhat_link(server: &MockServer, id: &str, token: &str) {
    Mock::given(method("GET"))
        .and(path(format!("/shareabletokens/access/{id}")))
        .and(header(
            "authorization",
            format!("Bearer {API_TOKEN}").as_str(),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_string("true"))
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/shareabletokens/{id}")))
        .and(header(
            "authorization",
            format!("Bearer {API_TOKEN}").as_str(),
        ))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"url": format!("{PORTAL}/redirect/{token}")})),
        )
        .mount(server)
        .await;
}

/// Requests Planhat received whose path contains `part`.
pub async fn planhat_calls(server: &MockServer, part: &str) -> usize {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.url.path().contains(part))
        .count()
}

/// A plain HTTP client for talking to the app (loopback only, no proxy from the environment).
/// Its time limit turns anything that would hang into a failure.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A Message object as Discord returns it from an edit (every field serenity requires).
pub fn discord_message() -> serde_json::Value {
    serde_json::json!({
        "id": "1800000000000000008", "channel_id": CHANNEL.to_string(),
        "author": {"id": APP_ID.to_string(), "username": "portal-bot"}, "content": "",
        "timestamp": "2026-01-01T00:00:00+00:00", "tts": false, "mention_everyone": false,
        "mentions": [], "mention_roles": [], "attachments": [], "embeds": [], "pinned": false, "type": 0
    })
}

/// Posts `body` to `route` on the app at `base`, signed with `secret` as Slack signs it.
pub async fn post_slack(base: &str, route: &str, secret: &str, body: String) -> reqwest::Response {
    client()
        .post(format!("{base}{route}"))
        .headers(slack_headers(secret, now(), &body))
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Posts an interaction to the app's Discord endpoint, signed with the test key.
pub async fn post_discord(base: &str, body: String) -> reqwest::Response {
    client()
        .post(format!("{base}/discord/interactions"))
        .headers(discord_headers(body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap()
}

/// How many signed URLs Planhat minted for `id` (the mint path exactly, not the access check).
pub async fn mint_calls(server: &MockServer, id: &str) -> usize {
    let mint = format!("/shareabletokens/{id}");
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.url.path() == mint)
        .count()
}

/// Reads the server's JSON log until it says where it listens; keeps draining it afterwards.
pub fn listening_addr(child: &mut std::process::Child) -> String {
    use std::io::BufRead;
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if v["message"] == "portal-bot is listening" {
                    let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_string());
                }
            }
        }
    });
    rx.recv_timeout(std::time::Duration::from_secs(20))
        .expect("the server starts and says where it listens")
}

/// A `block_actions` interaction form body, as Slack sends it for a click (made now).
pub fn block_actions(user: &str, action_id: &str, value: &str, response_url: &str) -> String {
    let payload = block_actions_payload(user, action_id, value, response_url);
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload.to_string())
        .finish()
}

/// The same, for a click Slack stamped at `clicked` (its `action_ts`).
pub fn block_actions_at(
    user: &str,
    action_id: &str,
    value: &str,
    response_url: &str,
    clicked: SystemTime,
) -> String {
    let mut payload = block_actions_payload(user, action_id, value, response_url);
    payload["actions"][0]["action_ts"] = json!(action_ts(clicked));
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload.to_string())
        .finish()
}

/// Slack's `action_ts` for `t`: seconds and microseconds.
pub fn action_ts(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap();
    format!("{}.{:06}", d.as_secs(), d.subsec_micros())
}

/// The JSON of a `block_actions` click (the form's `payload`, or a Socket Mode envelope's).
pub fn block_actions_payload(
    user: &str,
    action_id: &str,
    value: &str,
    response_url: &str,
) -> Value {
    json!({
        "type": "block_actions",
        "token": "deprecated",
        "team": {"id": "T0001", "domain": "acme"},
        "user": {"id": user, "username": "csm", "name": "csm", "team_id": "T0001"},
        "api_app_id": "A0001",
        "container": {"type": "message", "message_ts": "1700000000.000100", "channel_id": "C1", "is_ephemeral": true},
        "trigger_id": format!("trig-{action_id}-{user}-{value}"),
        "channel": {"id": "C1", "name": "cs"},
        "response_url": response_url,
        "actions": [{
            "type": "button", "action_id": action_id, "block_id": "b1",
            "text": {"type": "plain_text", "text": "button"},
            "value": value, "action_ts": action_ts(SystemTime::now())
        }]
    })
}

/// Everything a tracing subscriber writes, in one buffer (for tests that read the log).
#[derive(Clone, Default)]
pub struct Capture(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Capture {
    /// What was written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// `GET /readyz` on the app: status and body.
pub async fn readyz(app: &Running) -> (u16, String) {
    let r = client()
        .get(format!("http://{}/readyz", app.addr))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}
