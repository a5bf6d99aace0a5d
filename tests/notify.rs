//! The transparency channel (`[notify]`): one line per link handed out and per `/go/` click,
//! posted to the fake Slack's `chat.postMessage` and the fake Discord's channel endpoint,
//! never with a URL, batched, and never slowing the asker's answer even when the channel's
//! API hangs.

mod common;

use std::time::{Duration, Instant};

use common::discord::*;
use common::*;
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const DISCORD_ALICE: u64 = 1500000000000000005;
const NOTIFY_DISCORD: u64 = 1700000000000000042;

async fn app_with(
    planhat: &MockServer,
    slack: &MockServer,
    discord: &FakeDiscord,
) -> portal_bot::Running {
    let extra = format!(
        "[slack]\nmode = \"http\"\nsigning_secret = \"{SIGNING_SECRET}\"\nbot_token = \"{BOT_TOKEN}\"\napi_url = \"{}/api\"\n\
         [discord]\nmode = \"http\"\ntoken = \"{DISCORD_TOKEN}\"\napplication_id = \"{APP_ID}\"\npublic_key = \"{}\"\n\
         guild_ids = [\"{GUILD}\"]\napi_url = \"{}\"\n\
         [access]\nslack_users = [\"U1\"]\ndiscord_users = [\"{DISCORD_ALICE}\"]\n\
         [limits]\nper_user_per_minute = 1000\n[notify]\nslack_channel = \"C0NOTIFY\"\ndiscord_channel = \"{NOTIFY_DISCORD}\"\n",
        slack.uri(),
        discord_public_key_hex(),
        discord.api_url()
    );
    spawn(config(&planhat.uri(), &extra)).await
}

async fn ask(app: &portal_bot::Running, n: u32) -> (String, Duration) {
    let t = Instant::now();
    let body = slash_body(
        "U1",
        "C1",
        "e1",
        "http://127.0.0.1:9/hook",
        &format!("trig-notify-{n}"),
    );
    let r = post_slack(
        &format!("http://{}", app.addr),
        "/slack/commands",
        SIGNING_SECRET,
        body,
    )
    .await;
    (r.text().await.unwrap(), t.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn links_are_announced_without_urls_batched_on_both_platforms() {
    let planhat = MockServer::start().await;
    planhat_link(&planhat, "e1", "notify-secret-token").await;
    let slack = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/chat.postMessage"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"ok": true, "channel": "C0NOTIFY", "ts": "1.2"})),
        )
        .mount(&slack)
        .await;
    let discord = FakeDiscord::start("ws://127.0.0.1:9").await;
    let app = app_with(&planhat, &slack, &discord).await;

    // A burst of five links becomes one message per channel.
    for n in 0..5 {
        let (answer, _) = ask(&app, n).await;
        assert!(answer.contains("/redirect/notify-secret-token"), "{answer}");
    }
    let discord_link = post_discord(
        &format!("http://{}", app.addr),
        discord_command(1100000000000007001, DISCORD_ALICE, &[], "e1").to_string(),
    )
    .await;
    assert_eq!(discord_link.status(), 200);

    let until = Instant::now() + Duration::from_secs(6);
    let posts = loop {
        let posts: Vec<serde_json::Value> = slack
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter(|r| r.url.path() == "/api/chat.postMessage")
            .map(|r| {
                let body = String::from_utf8_lossy(&r.body).into_owned();
                serde_json::from_str(&body).unwrap_or_else(|_| json!({ "raw": body }))
            })
            .collect();
        let lines: usize = posts
            .iter()
            .map(|p| p.to_string().matches("got a portal link").count())
            .sum();
        if lines >= 6 || Instant::now() > until {
            break posts;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let all = posts.iter().map(|p| p.to_string()).collect::<String>();
    assert_eq!(all.matches("got a portal link").count(), 6, "{all}");
    assert!(posts.len() <= 3, "batched: {} posts", posts.len());
    assert!(all.contains("<@U1>") && all.contains("C0NOTIFY"), "{all}");
    assert!(
        !all.contains("redirect") && !all.contains("notify-secret-token"),
        "{all}"
    );

    let channel = format!("/api/v10/channels/{NOTIFY_DISCORD}/messages");
    let sent = discord
        .wait_for("the transparency line", |r| {
            r.method == "POST" && r.path == channel
        })
        .await;
    let body = sent.json();
    assert!(
        body["content"]
            .as_str()
            .unwrap()
            .contains("got a portal link"),
        "{body}"
    );
    assert_eq!(
        body["allowed_mentions"]["parse"],
        json!([]),
        "pings no one: {body}"
    );
    assert!(!sent.body.contains("redirect"), "{}", sent.body);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_channel_api_does_not_slow_the_asker() {
    let planhat = MockServer::start().await;
    planhat_link(&planhat, "e1", "notify-hang").await;
    let slack = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/chat.postMessage"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(30)))
        .mount(&slack)
        .await;
    let discord = FakeDiscord::start("ws://127.0.0.1:9").await;
    let app = app_with(&planhat, &slack, &discord).await;
    let mut slowest = Duration::ZERO;
    for n in 0..30 {
        let (answer, took) = ask(&app, 100 + n).await;
        assert!(answer.contains("/redirect/notify-hang"), "{answer}");
        slowest = slowest.max(took);
    }
    assert!(
        slowest < Duration::from_millis(300),
        "slowest answer {slowest:?}"
    );
    app.stop().await;
}
