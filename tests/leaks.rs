//! No leaks: every flow runs with logging at trace level and the audit on; then all captured
//! log output, the audit file and `/metrics` are searched for every token the fake Planhat
//! minted, the Planhat API token, the Slack signing secret, and the bot tokens. Zero hits.

mod common;

use std::time::Duration;

use axum::routing::{any, patch, put};
use common::*;
use serde_json::{json, Value};
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The chat platforms' side: Slack response_url posts and Discord REST, all answered.
async fn chat_fake() -> String {
    let message = discord_message();
    let app = axum::Router::new()
        .route(
            "/response/{n}",
            any(|| async { axum::Json(json!({"ok": true})) }),
        )
        .route(
            "/api/v10/applications/{a}/guilds/{g}/commands",
            put(|| async { axum::Json(json!([])) }),
        )
        .route(
            "/api/v10/webhooks/{a}/{t}/messages/@original",
            patch(move || async move { axum::Json(message) }),
        )
        .route(
            "/api/usergroups.users.list",
            any(|| async { axum::Json(json!({"ok": true, "users": ["U2"]})) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

async fn mint_sequence(planhat: &MockServer, id: &str, tokens: &[&str]) {
    Mock::given(method("GET"))
        .and(path(format!("/shareabletokens/access/{id}")))
        .respond_with(ResponseTemplate::new(200).set_body_string("true"))
        .mount(planhat)
        .await;
    for (i, t) in tokens.iter().enumerate() {
        Mock::given(method("GET"))
            .and(path(format!("/shareabletokens/{id}")))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"url": format!("{PORTAL}/redirect/{t}")}))
                    .set_delay(if id == "slow" {
                        Duration::from_millis(900)
                    } else {
                        Duration::ZERO
                    }),
            )
            .up_to_n_times(1)
            .with_priority((i + 1) as u8)
            .mount(planhat)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_logs_audit_or_metrics() {
    let capture = Capture::default();
    // Everything the bot and its libraries log, at trace, once per RUST_LOG an operator might
    // try: plain trace, and directives aimed at exactly the libraries and spans that hold
    // credentials (more specific than the caps, so they would win in one EnvFilter). One layer
    // per directive, all into the same buffer. wiremock is off: it is the fake Planhat (it logs
    // the requests it receives), not part of the bot.
    let directives = [
        "trace",
        "serenity::http=trace",
        "serenity::http::client=trace,serenity::http::ratelimiting=trace",
        "serenity=trace,slack_morphism=trace",
        "[{token}]=trace",
        "[{request}]=trace,[{route}]=trace",
        "[fire]=trace,[request]=trace",
        "hyper=trace,hyper_util=trace,reqwest=trace,h2=trace,rustls=trace",
        "slack_morphism::hyper_tokio=trace,slack_morphism=debug",
    ];
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let layers: Vec<_> = directives
        .iter()
        .map(|d| {
            tracing_subscriber::fmt::layer()
                .with_writer(capture.clone())
                .with_filter(portal_bot::cli::log_filter(&format!("{d},wiremock=off")))
                .boxed()
        })
        .collect();
    tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .expect("the only subscriber in this test binary");

    let planhat = MockServer::start().await;
    let minted: Vec<String> = (0..12)
        .map(|i| format!("leaktok{i}x{}", std::process::id()))
        .collect();
    let m: Vec<&str> = minted.iter().map(String::as_str).collect();
    mint_sequence(&planhat, "e1", &m[0..8]).await;
    mint_sequence(&planhat, "slow", &m[8..10]).await;
    // A URL that is not shown (no access): it must not appear anywhere either.
    Mock::given(path("/shareabletokens/access/noacc"))
        .respond_with(ResponseTemplate::new(200).set_body_string("false"))
        .mount(&planhat)
        .await;
    Mock::given(path("/shareabletokens/noacc"))
        .respond_with(
            ResponseTemplate::new(200).set_body_string(format!("{PORTAL}/redirect/{}", m[10])),
        )
        .mount(&planhat)
        .await;
    // One on a foreign host: dropped unseen.
    Mock::given(path("/shareabletokens/access/evil"))
        .respond_with(ResponseTemplate::new(200).set_body_string("true"))
        .mount(&planhat)
        .await;
    Mock::given(path("/shareabletokens/evil"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_string(format!("https://evil.example/redirect/{}", m[11])),
        )
        .mount(&planhat)
        .await;
    Mock::given(path("/endusers"))
        .and(query_param("email", "jane@acme.example"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!([{"_id": "e1", "name": "Jane", "companyName": "Acme"}])),
        )
        .mount(&planhat)
        .await;

    let chat = chat_fake().await;
    let dir = std::env::temp_dir().join(format!("pb-leaks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let audit = dir.join("audit.jsonl");
    let _ = std::fs::remove_file(&audit);
    let mut cfg = config(
        &planhat.uri(),
        &format!(
            "[slack]\nmode = \"http\"\nsigning_secret = \"{SIGNING_SECRET}\"\nbot_token = \"{BOT_TOKEN}\"\napi_url = \"{chat}/api\"\n\
             [discord]\nmode = \"http\"\ntoken = \"{DISCORD_TOKEN}\"\napplication_id = \"{APP_ID}\"\npublic_key = \"{}\"\nguild_ids = [\"{GUILD}\"]\napi_url = \"{chat}/api/v10\"\n\
             [access]\nslack_users = [\"U1\"]\nslack_usergroups = [\"S1\"]\ndiscord_users = [\"1500000000000000005\"]\n\
             [audit]\npath = \"{}\"\n",
            discord_public_key_hex(),
            audit.display()
        ),
    );
    cfg.planhat.link_lifetime = Duration::from_secs(1);
    let running = spawn(cfg).await;
    let base = format!("http://{}", running.addr);
    let http = client();

    // Slack: inline link, late link, email, refusals, a forged request, button clicks.
    let mut slack_replies = Vec::new();
    for (i, text) in [
        "e1",
        "slow",
        "jane@acme.example",
        "noacc",
        "evil",
        "<!channel>",
        "help",
        "check e1",
    ]
    .iter()
    .enumerate()
    {
        let body = slash_body(
            "U1",
            "C1",
            text,
            &format!("{chat}/response/{i}"),
            &format!("trig-{i}"),
        );
        let r = post_slack(&base, "/slack/commands", SIGNING_SECRET, body).await;
        assert_eq!(r.status(), 200);
        slack_replies.push(r.text().await.unwrap());
    }
    let forged = slash_body("U1", "C1", "e1", &format!("{chat}/response/x"), "trig-x");
    let r = post_slack(&base, "/slack/commands", "wrong", forged).await;
    assert_eq!(r.status(), 401);
    for action in ["open_portal", "new_link"] {
        let payload = json!({"type": "block_actions", "team": {"id": "T1"}, "user": {"id": "U1"}, "api_app_id": "A1",
            "trigger_id": "t", "container": {"type": "message", "message_ts": "1.2"}, "channel": {"id": "C1"},
            "response_url": format!("{chat}/response/click"),
            "actions": [{"type": "button", "action_id": action, "value": "U1:e1", "action_ts": "1.3"}]});
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", &payload.to_string())
            .finish();
        let r = post_slack(&base, "/slack/interactions", SIGNING_SECRET, body).await;
        assert_eq!(r.status(), 200);
    }

    // Discord: inline link (expires in 1 s: edited away), a late one, a New link press.
    for (n, enduser) in [(1u64, "e1"), (2, "slow")] {
        let body =
            discord_command(1100000000000000000 + n, 1500000000000000005, &[], enduser).to_string();
        let r = post_discord(&base, body).await;
        assert_eq!(r.status(), 200);
    }
    let mut press = discord_command(1100000000000000009, 1500000000000000005, &[], "e1");
    press["type"] = json!(3);
    press["data"] = json!({"custom_id": "new:1500000000000000005:e1", "component_type": 2});
    press["message"] = discord_message();
    let body = press.to_string();
    let r = post_discord(&base, body).await;
    assert_eq!(r.status(), 200);

    // Let late deliveries and expiry edits happen, then read everything.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let metrics = http
        .get(format!("http://{}/metrics", running.metrics_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    running.stop().await;

    let shown_somewhere = slack_replies.iter().any(|r| r.contains(&minted[0]));
    assert!(
        shown_somewhere,
        "the first link must reach the asker (else this test proves nothing)"
    );
    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    assert!(
        logs.lines().count() > 10 && logs.contains("request answered"),
        "trace logging must actually be on: {} lines",
        logs.lines().count()
    );
    let audit_text = std::fs::read_to_string(&audit).unwrap();
    assert!(audit_text.lines().count() >= 10, "{audit_text}");
    let mut secrets: Vec<&str> = minted.iter().map(String::as_str).collect();
    // Discord interaction tokens (the fixtures' `itok-{id}`) and Slack response_urls are
    // credentials too: whoever has one can post as the bot.
    secrets.extend([
        API_TOKEN,
        SIGNING_SECRET,
        BOT_TOKEN,
        DISCORD_TOKEN,
        "itok-",
        "/response/",
    ]);
    // A secret logged as a list of bytes (how some libraries print bodies) is still a leak.
    let as_bytes: Vec<String> = minted
        .iter()
        .map(|t| {
            t.bytes()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect();
    secrets.extend(as_bytes.iter().map(String::as_str));
    for secret in secrets {
        for (name, text) in [
            ("logs", &logs),
            ("audit", &audit_text),
            ("metrics", &metrics),
        ] {
            if let Some(at) = text.find(secret) {
                let start = at.saturating_sub(200);
                panic!(
                    "{secret} leaked into {name}: …{}…",
                    &text[start..(at + secret.len() + 50).min(text.len())]
                );
            }
        }
    }
    let _: Vec<Value> = audit_text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
}
