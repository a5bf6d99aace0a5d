//! The Slack adapter driven as Slack drives it: signed slash commands and interactions over
//! HTTP, and Socket Mode over a WebSocket, against loopback fakes of Planhat (wiremock), the
//! Slack Web API (wiremock), the `response_url` receiver (wiremock) and the Socket Mode server
//! (tokio-tungstenite). Every assertion is about what the Slack user or Slack itself observes.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use portal_bot::Running;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The three HTTP fakes every Slack test needs.
struct Fakes {
    planhat: MockServer,
    /// The Slack Web API, under `/api`.
    slack: MockServer,
    /// Receives `response_url` posts (any path).
    hook: MockServer,
}

async fn fakes() -> Fakes {
    let hook = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .mount(&hook)
        .await;
    Fakes {
        planhat: MockServer::start().await,
        slack: MockServer::start().await,
        hook,
    }
}

impl Fakes {
    fn api_url(&self) -> String {
        format!("{}/api", self.slack.uri())
    }

    /// A `response_url` on the fake receiver; each test names its own.
    fn hook_url(&self, name: &str) -> String {
        format!("{}/hook/{name}", self.hook.uri())
    }

    /// The app in http mode with these `[access]` lines.
    async fn http_app(&self, access: &str) -> Running {
        let extra = format!(
            "[slack]\nmode = \"http\"\nsigning_secret = \"{SIGNING_SECRET}\"\nbot_token = \"{BOT_TOKEN}\"\n\
             api_url = \"{}\"\n[access]\n{access}\n",
            self.api_url()
        );
        spawn(config(&self.planhat.uri(), &extra)).await
    }

    /// JSON bodies posted to `/hook/{name}` so far.
    async fn posts(&self, name: &str) -> Vec<Value> {
        let want = format!("/hook/{name}");
        self.hook
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter(|r| r.url.path() == want)
            .map(|r| serde_json::from_slice(&r.body).expect("response_url body is JSON"))
            .collect()
    }

    /// Waits (up to `within`) until `/hook/{name}` got at least one post; returns all of them.
    async fn wait_posts(&self, name: &str, within: Duration) -> Vec<Value> {
        let until = Instant::now() + within;
        loop {
            let posts = self.posts(name).await;
            if !posts.is_empty() || Instant::now() > until {
                return posts;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Planhat mint calls for `id` (the access check has its own path).
    async fn mints(&self, id: &str) -> usize {
        exact_calls(&self.planhat, &format!("/shareabletokens/{id}")).await
    }

    /// The fake Web API's answer to `usergroups.users.list?usergroup={group}`.
    async fn usergroup(&self, group: &str, answer: Value) {
        Mock::given(method("GET"))
            .and(path("/api/usergroups.users.list"))
            .and(query_param("usergroup", group))
            .and(header(
                "authorization",
                format!("Bearer {BOT_TOKEN}").as_str(),
            ))
            .respond_with(ResponseTemplate::new(200).set_body_json(answer))
            .mount(&self.slack)
            .await;
    }

    /// Waits until the bot has asked the fake Web API for group members at least once.
    async fn wait_usergroup_fetch(&self) {
        let until = Instant::now() + Duration::from_secs(5);
        while exact_calls(&self.slack, "/api/usergroups.users.list").await == 0 {
            assert!(
                Instant::now() < until,
                "the bot never fetched the user group"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

async fn exact_calls(server: &MockServer, p: &str) -> usize {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.url.path() == p)
        .count()
}

/// POSTs `body` to `route` with these headers; returns status and body text.
async fn post(
    app: &Running,
    route: &str,
    headers: reqwest::header::HeaderMap,
    body: String,
) -> (u16, String) {
    let res = client()
        .post(format!("http://{}{route}", app.addr))
        .headers(headers)
        .body(body)
        .send()
        .await
        .expect("the app answers");
    let status = res.status().as_u16();
    (status, res.text().await.unwrap_or_default())
}

/// A slash command signed now, as Slack sends it; the JSON answer (asserting 200).
async fn command(app: &Running, body: String) -> Value {
    let (status, text) = post(
        app,
        "/slack/commands",
        slack_headers(SIGNING_SECRET, now(), &body),
        body,
    )
    .await;
    assert_eq!(status, 200, "slash command answer: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("answer is not JSON ({e}): {text}"))
}

/// Sends a signed interaction; returns the HTTP status.
async fn interaction(app: &Running, body: String) -> u16 {
    post(
        app,
        "/slack/interactions",
        slack_headers(SIGNING_SECRET, now(), &body),
        body,
    )
    .await
    .0
}

/// Every button element in a message's blocks.
fn buttons(message: &Value) -> Vec<Value> {
    message["blocks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["type"] == "actions")
        .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["type"] == "button")
        .collect()
}

fn button(message: &Value, label: &str) -> Option<Value> {
    buttons(message)
        .into_iter()
        .find(|b| b["text"]["text"] == label)
}

/// Asserts `message` is an ephemeral link message whose Open portal button opens `url`.
fn assert_link(message: &Value, url: &str) {
    assert_eq!(message["response_type"], "ephemeral", "{message}");
    let open = button(message, "Open portal")
        .unwrap_or_else(|| panic!("no Open portal button: {message}"));
    assert_eq!(open["url"], url, "{message}");
    assert!(
        button(message, "New link").is_some(),
        "no New link button: {message}"
    );
    let fallback = message["text"].as_str().unwrap_or_default();
    assert!(!fallback.trim().is_empty(), "no text fallback: {message}");
}

/// Asserts `message` is an ephemeral one-liner containing `words` and no link.
fn assert_refused(message: &Value, words: &str) {
    assert_eq!(message["response_type"], "ephemeral", "{message}");
    let text = message["text"].as_str().unwrap_or_default();
    assert!(text.contains(words), "expected {words:?} in {text:?}");
    assert!(
        !message.to_string().contains("/redirect/"),
        "a refusal shows no link: {message}"
    );
    assert!(button(message, "Open portal").is_none(), "{message}");
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn inline_link_for_an_allowed_user() {
    let f = fakes().await;
    planhat_link(&f.planhat, "e1", "tok-inline").await;
    let app = f.http_app("slack_users = [\"U1\"]").await;

    let answer = command(
        &app,
        slash_body("U1", "C1", "  e1 ", &f.hook_url("c1"), "trig-1"),
    )
    .await;

    assert_link(&answer, &format!("{PORTAL}/redirect/tok-inline"));
    assert!(
        answer.to_string().contains("e1"),
        "the reply names the end user: {answer}"
    );
    assert_eq!(f.mints("e1").await, 1);
    app.stop().await;
    assert!(
        f.posts("c1").await.is_empty(),
        "answered inline, so nothing goes to response_url"
    );
}

/// An email lookup is audited under the end user the link was minted for, with the email
/// beside it in its own field (issue 14, item 6).
#[tokio::test]
async fn an_email_lookup_audits_the_end_user_it_resolved_to() {
    let f = fakes().await;
    planhat_link(&f.planhat, "e1", "tok-email").await;
    Mock::given(path("/endusers"))
        .and(query_param("email", "jane@acme.example"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!([{"_id": "e1", "name": "Jane", "companyName": "Acme"}])),
        )
        .mount(&f.planhat)
        .await;
    Mock::given(path("/endusers"))
        .and(query_param("email", "nobody@acme.example"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&f.planhat)
        .await;
    let dir = std::env::temp_dir().join(format!("pb-slack-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let audit = dir.join("email.jsonl");
    let _ = std::fs::remove_file(&audit);
    let app = f
        .http_app(&format!(
            "slack_users = [\"U1\"]\n[audit]\npath = \"{}\"",
            audit.display()
        ))
        .await;
    for (i, text) in ["jane@acme.example", "nobody@acme.example", "e1"]
        .iter()
        .enumerate()
    {
        command(
            &app,
            slash_body(
                "U1",
                "C1",
                text,
                &f.hook_url("email"),
                &format!("trig-e{i}"),
            ),
        )
        .await;
    }
    app.stop().await;
    let lines: Vec<Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0]["outcome"], "ok");
    assert_eq!(lines[0]["end_user"], "e1", "{}", lines[0]);
    assert_eq!(lines[0]["email"], "jane@acme.example", "{}", lines[0]);
    assert_eq!(lines[1]["outcome"], "not_found");
    assert_eq!(lines[1]["end_user"], Value::Null, "{}", lines[1]);
    assert_eq!(lines[1]["email"], "nobody@acme.example", "{}", lines[1]);
    assert_eq!(lines[2]["end_user"], "e1");
    assert_eq!(lines[2]["email"], Value::Null, "{}", lines[2]);
}

#[tokio::test]
async fn slow_planhat_is_acknowledged_then_delivered_to_response_url_once() {
    let f = fakes().await;
    let slow = Duration::from_millis(1500);
    slow_planhat(&f.planhat, "e1", "tok-late", slow).await;
    let app = f.http_app("slack_users = [\"U1\"]").await;

    let ack = command(
        &app,
        slash_body("U1", "C1", "e1", &f.hook_url("slow"), "trig-slow"),
    )
    .await;
    assert_eq!(ack["response_type"], "ephemeral", "{ack}");
    assert!(
        ack["text"]
            .as_str()
            .unwrap_or_default()
            .contains("taking a moment"),
        "{ack}"
    );
    assert!(
        !ack.to_string().contains("/redirect/"),
        "the ack carries no link: {ack}"
    );

    let posts = f.wait_posts("slow", Duration::from_secs(5)).await;
    assert!(!posts.is_empty(), "the link never reached response_url");
    assert_link(&posts[0], &format!("{PORTAL}/redirect/tok-late"));
    // Stopping waits for late deliveries: whatever was going to be posted has been.
    app.stop().await;
    assert_eq!(f.posts("slow").await.len(), 1, "exactly one delivery");
}

#[tokio::test]
async fn bad_missing_and_stale_signatures_are_401_and_reach_no_one() {
    let f = fakes().await;
    planhat_link(&f.planhat, "e1", "tok-x").await;
    let app = f.http_app("slack_users = [\"U1\"]").await;
    let body = slash_body("U1", "C1", "e1", &f.hook_url("sig"), "trig-sig");

    let wrong_secret = slack_headers("not-the-secret", now(), &body);
    assert_eq!(
        post(&app, "/slack/commands", wrong_secret, body.clone())
            .await
            .0,
        401,
        "bad signature"
    );

    let signed_for_other_body = slack_headers(SIGNING_SECRET, now(), &body);
    let tampered = body.replace("text=e1", "text=e2");
    assert_ne!(tampered, body);
    assert_eq!(
        post(&app, "/slack/commands", signed_for_other_body, tampered)
            .await
            .0,
        401,
        "body changed after signing"
    );

    let mut missing = reqwest::header::HeaderMap::new();
    missing.insert(
        "content-type",
        "application/x-www-form-urlencoded".parse().unwrap(),
    );
    assert_eq!(
        post(&app, "/slack/commands", missing, body.clone()).await.0,
        401,
        "missing signature"
    );

    let mut no_ts = slack_headers(SIGNING_SECRET, now(), &body);
    no_ts.remove("x-slack-request-timestamp");
    assert_eq!(
        post(&app, "/slack/commands", no_ts, body.clone()).await.0,
        401,
        "missing timestamp"
    );

    let stale = slack_headers(SIGNING_SECRET, now() - 400, &body);
    assert_eq!(
        post(&app, "/slack/commands", stale, body.clone()).await.0,
        401,
        "stale timestamp"
    );

    let click = block_actions("U1", "new_link", "U1:e1", &f.hook_url("sig"));
    let forged = slack_headers("not-the-secret", now(), &click);
    assert_eq!(
        post(&app, "/slack/interactions", forged, click).await.0,
        401,
        "forged interaction"
    );

    app.stop().await;
    assert_eq!(planhat_calls(&f.planhat, "/shareabletokens").await, 0);
    assert!(
        f.posts("sig").await.is_empty(),
        "nothing was delivered for a forged request"
    );
}

#[tokio::test]
async fn oversized_body_is_refused() {
    let f = fakes().await;
    planhat_link(&f.planhat, "e1", "tok-x").await;
    let app = f.http_app("slack_users = [\"U1\"]").await;
    let body = slash_body(
        "U1",
        "C1",
        &"x".repeat(70 * 1024),
        &f.hook_url("big"),
        "trig-big",
    );
    assert!(body.len() > 64 * 1024);

    let (status, _) = post(
        &app,
        "/slack/commands",
        slack_headers(SIGNING_SECRET, now(), &body),
        body,
    )
    .await;

    assert_eq!(status, 413);
    assert_eq!(planhat_calls(&f.planhat, "/shareabletokens").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_user_not_allowed_is_refused() {
    let f = fakes().await;
    planhat_link(&f.planhat, "e1", "tok-x").await;
    let app = f.http_app("slack_users = [\"U1\"]").await;

    let answer = command(
        &app,
        slash_body("U9", "C1", "e1", &f.hook_url("deny"), "trig-deny"),
    )
    .await;

    assert_refused(&answer, "not allowed");
    app.stop().await;
    assert_eq!(planhat_calls(&f.planhat, "/shareabletokens").await, 0);
}

#[tokio::test]
async fn a_user_allowed_through_a_user_group_gets_a_link() {
    let f = fakes().await;
    f.usergroup("S1", json!({"ok": true, "users": ["U2"]}))
        .await;
    planhat_link(&f.planhat, "e1", "tok-group").await;
    let app = f.http_app("slack_usergroups = [\"S1\"]").await;
    f.wait_usergroup_fetch().await;

    // The cache is filled right after the fetch answers: retry briefly until it is.
    let until = Instant::now() + Duration::from_secs(3);
    let mut attempt = 0;
    let answer = loop {
        attempt += 1;
        let body = slash_body(
            "U2",
            "C1",
            "e1",
            &f.hook_url("grp"),
            &format!("trig-grp-{attempt}"),
        );
        let answer = command(&app, body).await;
        let pending = answer["text"]
            .as_str()
            .unwrap_or_default()
            .contains("could not be checked");
        if !pending || Instant::now() > until {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_link(&answer, &format!("{PORTAL}/redirect/tok-group"));

    // Someone outside the group is still refused: the group, not the fetch, let U2 in.
    let outsider = command(
        &app,
        slash_body("U3", "C1", "e1", &f.hook_url("grp"), "trig-grp-out"),
    )
    .await;
    assert_refused(&outsider, "not allowed");
    assert_eq!(f.mints("e1").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_failing_group_lookup_refuses_and_says_why() {
    let f = fakes().await;
    f.usergroup("S1", json!({"ok": false, "error": "missing_scope"}))
        .await;
    planhat_link(&f.planhat, "e1", "tok-x").await;
    let app = f.http_app("slack_usergroups = [\"S1\"]").await;
    f.wait_usergroup_fetch().await;

    let answer = command(
        &app,
        slash_body("U2", "C1", "e1", &f.hook_url("gfail"), "trig-gfail"),
    )
    .await;

    assert_refused(&answer, "group membership could not be checked");
    app.stop().await;
    assert_eq!(planhat_calls(&f.planhat, "/shareabletokens").await, 0);
}

#[tokio::test]
async fn a_channel_not_allowed_is_refused() {
    let f = fakes().await;
    planhat_link(&f.planhat, "e1", "tok-chan").await;
    let app = f
        .http_app("slack_users = [\"U1\"]\nslack_channels = [\"C_OK\"]")
        .await;

    let answer = command(
        &app,
        slash_body("U1", "C_OTHER", "e1", &f.hook_url("ch"), "trig-ch-1"),
    )
    .await;
    assert_refused(&answer, "not enabled in this channel");
    assert_eq!(planhat_calls(&f.planhat, "/shareabletokens").await, 0);

    // The same user in the allowed channel gets the link.
    let answer = command(
        &app,
        slash_body("U1", "C_OK", "e1", &f.hook_url("ch"), "trig-ch-2"),
    )
    .await;
    assert_link(&answer, &format!("{PORTAL}/redirect/tok-chan"));
    app.stop().await;
}

#[tokio::test]
async fn help_and_empty_text_show_usage() {
    let f = fakes().await;
    planhat_link(&f.planhat, "e1", "tok-x").await;
    let app = f.http_app("slack_users = [\"U1\"]").await;

    for (i, text) in ["help", "", "   ", " HELP "].iter().enumerate() {
        let answer = command(
            &app,
            slash_body(
                "U1",
                "C1",
                text,
                &f.hook_url("help"),
                &format!("trig-help-{i}"),
            ),
        )
        .await;
        assert_eq!(answer["response_type"], "ephemeral", "{text:?}: {answer}");
        let shown = answer["text"].as_str().unwrap_or_default();
        assert!(
            shown.contains("/portal"),
            "{text:?} should give usage, got {shown:?}"
        );
        assert!(shown.contains("check"), "usage mentions check: {shown:?}");
    }
    app.stop().await;
    assert_eq!(planhat_calls(&f.planhat, "/shareabletokens").await, 0);
}

#[tokio::test]
async fn mention_injection_mentions_no_one_and_reaches_no_planhat() {
    let f = fakes().await;
    planhat_link(&f.planhat, "e1", "tok-x").await;
    let app = f.http_app("slack_users = [\"U1\"]").await;

    let hostile = [
        "<!channel>",
        "<@U999>",
        "<!here>",
        "check <!everyone>",
        "<https://evil.example|click>",
    ];
    for (i, text) in hostile.iter().enumerate() {
        let answer = command(
            &app,
            slash_body(
                "U1",
                "C1",
                text,
                &f.hook_url("inj"),
                &format!("trig-inj-{i}"),
            ),
        )
        .await;
        assert_eq!(answer["response_type"], "ephemeral", "{text:?}: {answer}");
        let all = answer.to_string();
        for raw in [
            "<!channel>",
            "<@U999>",
            "<!here>",
            "<!everyone>",
            "<https://evil",
        ] {
            assert!(
                !all.contains(raw),
                "{text:?}: the reply contains raw {raw:?}: {all}"
            );
        }
        assert!(!all.contains("/redirect/"), "{text:?}: {all}");
    }
    app.stop().await;
    assert_eq!(planhat_calls(&f.planhat, "/shareabletokens").await, 0);
}

#[tokio::test]
async fn open_portal_click_is_acknowledged_and_replaces_the_message_without_the_url() {
    let f = fakes().await;
    planhat_link(&f.planhat, "e1", "tok-open").await;
    let app = f.http_app("slack_users = [\"U1\"]").await;

    let status = interaction(
        &app,
        block_actions("U1", "open_portal", "U1:e1", &f.hook_url("open")),
    )
    .await;
    assert_eq!(status, 200);

    let posts = f.wait_posts("open", Duration::from_secs(5)).await;
    assert_eq!(posts.len(), 1, "one replacement: {posts:?}");
    let replaced = &posts[0];
    assert_eq!(replaced["replace_original"], true, "{replaced}");
    assert_eq!(replaced["response_type"], "ephemeral", "{replaced}");
    assert!(
        replaced["text"]
            .as_str()
            .unwrap_or_default()
            .contains("opened at"),
        "{replaced}"
    );
    assert!(
        !replaced.to_string().contains("/redirect/"),
        "the used URL is gone: {replaced}"
    );
    assert!(button(replaced, "New link").is_some(), "{replaced}");
    app.stop().await;
    assert_eq!(f.mints("e1").await, 0, "opening mints nothing");
}

#[tokio::test]
async fn new_link_works_for_the_asker_only() {
    let f = fakes().await;
    planhat_link(&f.planhat, "e1", "tok-new").await;
    let app = f.http_app("slack_users = [\"U1\", \"U2\"]").await;

    // The asker's own button: a fresh link replaces the message.
    assert_eq!(
        interaction(
            &app,
            block_actions("U1", "new_link", "U1:e1", &f.hook_url("mine"))
        )
        .await,
        200
    );
    let posts = f.wait_posts("mine", Duration::from_secs(5)).await;
    assert_eq!(posts.len(), 1, "{posts:?}");
    assert_eq!(posts[0]["replace_original"], true, "{}", posts[0]);
    assert_link(&posts[0], &format!("{PORTAL}/redirect/tok-new"));
    assert_eq!(f.mints("e1").await, 1);

    // Someone else (allowed to use the bot) pressing U1's button: refused, nothing minted.
    assert_eq!(
        interaction(
            &app,
            block_actions("U2", "new_link", "U1:e1", &f.hook_url("theirs"))
        )
        .await,
        200
    );
    let posts = f.wait_posts("theirs", Duration::from_secs(5)).await;
    assert_eq!(posts.len(), 1, "{posts:?}");
    assert_refused(&posts[0], "Only the person who asked");
    app.stop().await;
    assert_eq!(f.mints("e1").await, 1, "no mint for another user's click");
}

#[tokio::test]
async fn a_duplicate_delivery_mints_once() {
    let f = fakes().await;
    planhat_link(&f.planhat, "e1", "tok-dup").await;
    let app = f.http_app("slack_users = [\"U1\"]").await;
    let body = slash_body("U1", "C1", "e1", &f.hook_url("dup"), "trig-dup");
    let headers = slack_headers(SIGNING_SECRET, now(), &body);

    let (s1, first) = post(&app, "/slack/commands", headers.clone(), body.clone()).await;
    let (s2, second) = post(&app, "/slack/commands", headers, body).await;

    assert_eq!((s1, s2), (200, 200));
    let first: Value = serde_json::from_str(&first).unwrap();
    let second: Value = serde_json::from_str(&second).unwrap();
    assert_link(&first, &format!("{PORTAL}/redirect/tok-dup"));
    assert_eq!(second["response_type"], "ephemeral", "{second}");
    assert!(!second.to_string().contains("/redirect/"), "{second}");
    app.stop().await;
    assert_eq!(f.mints("e1").await, 1);
}

// --- Socket Mode -----------------------------------------------------------------------------

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Next text frame from the bot (pings and pongs are skipped), as JSON.
async fn next_json(ws: &mut Ws) -> Value {
    let deadline = Duration::from_secs(5);
    loop {
        let msg = tokio::time::timeout(deadline, ws.next())
            .await
            .expect("the bot answers over the WebSocket in time")
            .expect("the WebSocket stays open")
            .expect("a valid frame");
        if let Message::Text(text) = msg {
            return serde_json::from_str(text.as_str()).expect("the bot sends JSON");
        }
    }
}

fn slash_envelope(
    envelope_id: &str,
    user: &str,
    text: &str,
    response_url: &str,
    trigger: &str,
) -> String {
    json!({
        "envelope_id": envelope_id,
        "type": "slash_commands",
        "accepts_response_payload": true,
        "payload": {
            "token": "deprecated", "team_id": "T0001", "team_domain": "acme",
            "channel_id": "C1", "channel_name": "cs", "user_id": user, "user_name": "csm",
            "command": "/portal", "text": text, "api_app_id": "A0001",
            "is_enterprise_install": "false", "response_url": response_url, "trigger_id": trigger
        }
    })
    .to_string()
}

/// The next WebSocket the bot opens to the fake server (up to 10 s).
async fn accept(conns: &mut tokio::sync::mpsc::UnboundedReceiver<Ws>) -> Option<Ws> {
    tokio::time::timeout(Duration::from_secs(10), conns.recv())
        .await
        .ok()
        .flatten()
}

const HELLO: &str = r#"{"type":"hello","num_connections":1,"connection_info":{"app_id":"A1"},"debug_info":{"host":"test"}}"#;

#[tokio::test]
async fn socket_mode_end_to_end_with_redelivery_and_reconnect() {
    let f = fakes().await;
    planhat_link(&f.planhat, "e1", "tok-socket").await;

    // The fake Socket Mode server: every accepted WebSocket is handed to the test.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_port = listener.local_addr().unwrap().port();
    let (conns_tx, mut conns) = tokio::sync::mpsc::unbounded_channel::<Ws>();
    let acceptor = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                let _ = conns_tx.send(ws);
            }
        }
    });
    Mock::given(method("POST"))
        .and(path("/api/apps.connections.open"))
        .and(header(
            "authorization",
            format!("Bearer {APP_TOKEN}").as_str(),
        ))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"ok": true, "url": format!("ws://127.0.0.1:{ws_port}/")})),
        )
        .mount(&f.slack)
        .await;

    let extra = format!(
        "[slack]\nmode = \"socket\"\nsocket_connections = 1\nbot_token = \"{BOT_TOKEN}\"\napp_token = \"{APP_TOKEN}\"\napi_url = \"{}\"\n\
         [access]\nslack_users = [\"U1\"]\n",
        f.api_url()
    );
    let app = spawn(config(&f.planhat.uri(), &extra)).await;

    let mut ws = accept(&mut conns)
        .await
        .expect("the bot opens a Socket Mode connection");
    ws.send(Message::text(HELLO)).await.unwrap();

    // A slash command envelope: acked with the ephemeral link as its payload.
    let envelope = slash_envelope("e1", "U1", "e1", &f.hook_url("sock"), "trig-sock-1");
    ws.send(Message::text(envelope.clone())).await.unwrap();
    let ack = next_json(&mut ws).await;
    assert_eq!(ack["envelope_id"], "e1", "{ack}");
    assert_link(&ack["payload"], &format!("{PORTAL}/redirect/tok-socket"));

    // Slack redelivers the same envelope: acked again, but no second link is minted.
    ws.send(Message::text(envelope)).await.unwrap();
    let again = next_json(&mut ws).await;
    assert_eq!(again["envelope_id"], "e1", "{again}");
    assert!(
        !again.to_string().contains("/redirect/"),
        "answered once: {again}"
    );
    assert_eq!(f.mints("e1").await, 1);

    // The connection drops: the bot asks for a new URL and connects again on its own.
    drop(ws);
    let mut ws = accept(&mut conns)
        .await
        .expect("the bot reconnects after a dropped connection");
    assert!(exact_calls(&f.slack, "/api/apps.connections.open").await >= 2);
    ws.send(Message::text(HELLO)).await.unwrap();
    ws.send(Message::text(slash_envelope(
        "e2",
        "U1",
        "e1",
        &f.hook_url("sock"),
        "trig-sock-2",
    )))
    .await
    .unwrap();
    let ack = next_json(&mut ws).await;
    assert_eq!(ack["envelope_id"], "e2", "{ack}");
    assert_link(&ack["payload"], &format!("{PORTAL}/redirect/tok-socket"));
    // The reconnect is visible to operators in /metrics.
    let metrics = client()
        .get(format!("http://{}/metrics", app.metrics_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("portal_bot_reconnects_total{connection=\"slack_socket\"} 1"),
        "{metrics}"
    );

    assert!(
        f.posts("sock").await.is_empty(),
        "answered in the acks, not through response_url"
    );

    // A click on "Open portal" arrives as an interactive envelope: a bare ack at once, and
    // the message is replaced through the click's response_url, without the URL.
    let click = json!({
        "envelope_id": "e3", "type": "interactive", "accepts_response_payload": false,
        "payload": block_actions_payload("U1", "open_portal", "U1:e1", &f.hook_url("sock-click")),
    });
    ws.send(Message::text(click.to_string())).await.unwrap();
    let ack = next_json(&mut ws).await;
    assert_eq!(ack, json!({"envelope_id": "e3"}));
    let posts = f.wait_posts("sock-click", Duration::from_secs(5)).await;
    assert_eq!(posts.len(), 1, "{posts:?}");
    assert_eq!(posts[0]["replace_original"], true, "{}", posts[0]);
    assert!(
        posts[0]["text"]
            .as_str()
            .unwrap_or_default()
            .contains("opened at"),
        "{}",
        posts[0]
    );
    assert!(!posts[0].to_string().contains("/redirect/"), "{}", posts[0]);

    // Stopping the app closes the connection.
    app.stop().await;
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the Socket Mode connection stays open after stop"
    );
    acceptor.abort();
    assert_eq!(f.mints("e1").await, 2);
}

/// Planhat answering `id`'s access check and mint (with `token`) after `delay` each.
async fn slow_planhat(server: &MockServer, id: &str, token: &str, delay: Duration) {
    Mock::given(method("GET"))
        .and(path(format!("/shareabletokens/access/{id}")))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_string("true")
                .set_delay(delay),
        )
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/shareabletokens/{id}")))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"url": format!("{PORTAL}/redirect/{token}")}))
                .set_delay(delay),
        )
        .mount(server)
        .await;
}

/// The fake Socket Mode server: `apps.connections.open` on the fake Web API hands out its URL,
/// and every WebSocket the bot opens is passed to the test.
async fn socket_server(
    f: &Fakes,
) -> (
    tokio::sync::mpsc::UnboundedReceiver<Ws>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_port = listener.local_addr().unwrap().port();
    let (conns_tx, conns) = tokio::sync::mpsc::unbounded_channel::<Ws>();
    let acceptor = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                let _ = conns_tx.send(ws);
            }
        }
    });
    Mock::given(method("POST"))
        .and(path("/api/apps.connections.open"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"ok": true, "url": format!("ws://127.0.0.1:{ws_port}/")})),
        )
        .mount(&f.slack)
        .await;
    (conns, acceptor)
}

/// Ten people ask at once over one connection while Planhat takes 4 s: every envelope is
/// acknowledged well inside Slack's 3 s (no envelope waits for another), and every asker gets
/// their link through response_url once Planhat answers.
#[tokio::test]
async fn socket_mode_never_stalls_with_ten_envelopes_at_once_and_planhat_slow() {
    let f = fakes().await;
    let slow = Duration::from_secs(4);
    slow_planhat(&f.planhat, "e1", "tok-slow", slow).await;
    let (mut conns, acceptor) = socket_server(&f).await;
    let users: Vec<String> = (1..=10).map(|i| format!("U{i}")).collect();
    let extra = format!(
        "[slack]\nmode = \"socket\"\nbot_token = \"{BOT_TOKEN}\"\napp_token = \"{APP_TOKEN}\"\napi_url = \"{}\"\n\
         [access]\nslack_users = {users:?}\n",
        f.api_url()
    );
    // Planhat's timeout in the test config is 2 s: give it room for the slow answers.
    let extra = extra.replace("[access]", "[limits]\nper_user_per_minute = 10\n[access]");
    let mut cfg = config(&f.planhat.uri(), &extra);
    cfg.planhat.timeout = Duration::from_secs(6);
    let app = spawn(cfg).await;

    // Two connections by default, so a reconnect never leaves a gap; not ready until one is up.
    let mut ws = accept(&mut conns).await.expect("a first connection");
    let mut second = accept(&mut conns).await.expect("a second connection");
    assert_eq!(readyz(&app).await.0, 503, "not ready before hello");
    ws.send(Message::text(HELLO)).await.unwrap();
    second.send(Message::text(HELLO)).await.unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while readyz(&app).await.0 != 200 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("slack_socket: up"), "{body}");

    let sent = Instant::now();
    for (i, user) in users.iter().enumerate() {
        let envelope = slash_envelope(
            &format!("env-{i}"),
            user,
            "e1",
            &f.hook_url(&format!("stall-{user}")),
            &format!("trig-stall-{i}"),
        );
        ws.send(Message::text(envelope)).await.unwrap();
    }
    let mut acked = std::collections::HashSet::new();
    let mut slowest = Duration::ZERO;
    while acked.len() < users.len() {
        let ack = next_json(&mut ws).await;
        slowest = slowest.max(sent.elapsed());
        assert!(
            ack["payload"]["text"]
                .as_str()
                .unwrap_or_default()
                .contains("taking a moment"),
            "{ack}"
        );
        acked.insert(ack["envelope_id"].as_str().unwrap().to_string());
    }
    // The reply budget here is 400 ms: one envelope after another would take 4 s.
    assert!(
        slowest < Duration::from_millis(1500),
        "the last of ten envelopes was acknowledged after {slowest:?}"
    );
    for user in &users {
        let posts = f
            .wait_posts(&format!("stall-{user}"), Duration::from_secs(8))
            .await;
        assert_eq!(posts.len(), 1, "{user}: {posts:?}");
        assert_link(&posts[0], &format!("{PORTAL}/redirect/tok-slow"));
    }
    app.stop().await;
    acceptor.abort();
}

/// The app in Socket Mode with one connection, against the fake Socket Mode server.
async fn socket_app(f: &Fakes) -> Running {
    let extra = format!(
        "[slack]\nmode = \"socket\"\nsocket_connections = 1\nbot_token = \"{BOT_TOKEN}\"\napp_token = \"{APP_TOKEN}\"\napi_url = \"{}\"\n\
         [access]\nslack_users = [\"U1\"]\n",
        f.api_url()
    );
    spawn(config(&f.planhat.uri(), &extra)).await
}

/// Waits until the bot's side of `ws` is gone (closed, reset or ended); false if it stays open
/// for `within`.
async fn closed_within(ws: &mut Ws, within: Duration) -> bool {
    tokio::time::timeout(within, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// A Socket Mode message over the bot's 1 MiB cap closes that connection; the bot connects
/// again and keeps serving (issue 19, item 10: messages up to 64 MiB were read, and one 60 MB
/// envelope took the bot from 17 to 148 MB).
#[tokio::test]
async fn an_oversized_socket_mode_message_closes_that_connection_and_the_bot_carries_on() {
    let f = fakes().await;
    planhat_link(&f.planhat, "e1", "tok-after-big").await;
    let (mut conns, acceptor) = socket_server(&f).await;
    let app = socket_app(&f).await;

    let mut ws = accept(&mut conns).await.expect("a first connection");
    ws.send(Message::text(HELLO)).await.unwrap();
    // A well-formed envelope, 2 MiB long.
    let big = json!({"envelope_id": "big", "type": "events_api",
                     "payload": {"padding": "x".repeat(2 * 1024 * 1024)}});
    ws.send(Message::text(big.to_string())).await.unwrap();
    assert!(
        closed_within(&mut ws, Duration::from_secs(5)).await,
        "the bot closes a connection that sends a message over its cap"
    );

    let mut ws = accept(&mut conns)
        .await
        .expect("the bot connects again after closing the oversized one");
    ws.send(Message::text(HELLO)).await.unwrap();
    ws.send(Message::text(slash_envelope(
        "after-big",
        "U1",
        "e1",
        &f.hook_url("big"),
        "trig-big-1",
    )))
    .await
    .unwrap();
    let ack = next_json(&mut ws).await;
    assert_eq!(ack["envelope_id"], "after-big", "{ack}");
    assert_link(&ack["payload"], &format!("{PORTAL}/redirect/tok-after-big"));
    app.stop().await;
    acceptor.abort();
}

/// Connections that die at once are retried with a growing pause, not several times a second
/// (issue 19, item 10: about six reconnects a second, for as long as it lasted).
#[tokio::test]
async fn socket_mode_connections_that_die_at_once_are_retried_with_backoff() {
    let f = fakes().await;
    let (mut conns, acceptor) = socket_server(&f).await;
    let app = socket_app(&f).await;
    let started = Instant::now();
    let mut connects = 0;
    // Each connection says hello and is closed at once, for three seconds.
    while let Ok(Some(mut ws)) = tokio::time::timeout(
        Duration::from_secs(3).saturating_sub(started.elapsed()),
        conns.recv(),
    )
    .await
    {
        connects += 1;
        let _ = ws.send(Message::text(HELLO)).await;
        let _ = ws.close(None).await;
    }
    app.stop().await;
    acceptor.abort();
    assert!(connects >= 2, "the bot keeps trying: {connects} connects");
    assert!(
        connects <= 6,
        "{connects} connects in 3 s: no backoff for connections that die at once"
    );
}
