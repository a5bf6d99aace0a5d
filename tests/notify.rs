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

/// A name Planhat holds that tries to forge the channel: a line break and a fake "opened the
/// portal" line with a mention, Slack bold, a bare link, a right-to-left override and a
/// zero-width space.
const FORGED_NAME: &str =
    "Jane\n<@U0ADMIN> opened the portal as *CEO* https://evil.example/login \u{202e}gnp.exe";
const FORGED_COMPANY: &str = "Acme\u{200b} ~Corp~";

/// Names from Planhat can't forge lines or formatting in the transparency channel or in the
/// replies: one line per notice, no format characters, Slack's `*_~` and links neutralised,
/// and an asker from the other platform shown as plain text, not as a mention (issue 19,
/// item 6).
#[tokio::test(flavor = "multi_thread")]
async fn names_from_planhat_cannot_forge_lines_or_formatting() {
    let planhat = MockServer::start().await;
    planhat_link(&planhat, "e1", "forged-name-token").await;
    Mock::given(method("GET"))
        .and(path("/endusers"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            {"_id": "e1", "name": FORGED_NAME, "companyName": FORGED_COMPANY}
        ])))
        .mount(&planhat)
        .await;
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
    let base = format!("http://{}", app.addr);

    let body = slash_body(
        "U1",
        "C1",
        "jane@acme.example",
        "http://127.0.0.1:9/hook",
        "trig-forged",
    );
    let slack_reply: serde_json::Value = post_slack(&base, "/slack/commands", SIGNING_SECRET, body)
        .await
        .json()
        .await
        .unwrap();
    let discord_reply: serde_json::Value = post_discord(
        &base,
        discord_command(1100000000000007101, DISCORD_ALICE, &[], "jane@acme.example").to_string(),
    )
    .await
    .json()
    .await
    .unwrap();

    // The replies: the name in one line, no format characters, no Slack markup or link.
    let slack_section = slack_reply["blocks"][0]["text"]["text"].as_str().unwrap();
    assert!(
        slack_section.starts_with("Portal login as `e1` (Jane "),
        "{slack_section}"
    );
    let discord_content = discord_reply["data"]["content"].as_str().unwrap();
    assert!(discord_content.contains("Jane "), "{discord_content}");
    for shown in [slack_section, discord_content] {
        assert_eq!(shown.lines().count(), 1, "{shown:?}");
        assert!(!shown.contains(['\u{202e}', '\u{200b}']), "{shown:?}");
    }
    for markup in [
        "*CEO*",
        "~Corp~",
        "https://evil",
        "evil.example",
        "<@U0ADMIN>",
    ] {
        assert!(
            !slack_section.contains(markup),
            "{markup} in {slack_section:?}"
        );
    }

    // The Slack channel: a line per notice, each starting with its asker.
    let until = Instant::now() + Duration::from_secs(6);
    let slack_lines = loop {
        let lines: Vec<String> = slack
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter(|r| r.url.path() == "/api/chat.postMessage")
            .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
            .flat_map(|p| {
                p["text"]
                    .as_str()
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect();
        if lines.len() >= 2 || Instant::now() > until {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(slack_lines.len(), 2, "one line per link: {slack_lines:#?}");
    let discord_asker = format!("Discord user {DISCORD_ALICE} ");
    for line in &slack_lines {
        assert!(
            line.starts_with("<@U1> got a portal link") || line.starts_with(&discord_asker),
            "every line is a notice of its own: {line:?}"
        );
        assert!(!line.contains(['\u{202e}', '\u{200b}']), "{line:?}");
        for markup in [
            "*CEO*",
            "~Corp~",
            "https://evil",
            "evil.example",
            "<@U0ADMIN>",
        ] {
            assert!(!line.contains(markup), "{markup} in {line:?}");
        }
    }
    assert!(
        !slack_lines
            .concat()
            .contains(&format!("<@{DISCORD_ALICE}>")),
        "a Discord asker is no mention in Slack: {slack_lines:#?}"
    );

    // The Discord channel: the same, with the Slack asker as plain text.
    let channel = format!("/api/v10/channels/{NOTIFY_DISCORD}/messages");
    let until = Instant::now() + Duration::from_secs(6);
    let discord_lines = loop {
        let lines: Vec<String> = discord
            .requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path == channel)
            .flat_map(|r| {
                r.json()["content"]
                    .as_str()
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect();
        if lines.len() >= 2 || Instant::now() > until {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(discord_lines.len(), 2, "{discord_lines:#?}");
    for line in &discord_lines {
        assert!(
            line.starts_with(&format!("<@{DISCORD_ALICE}> got a portal link"))
                || line.starts_with("Slack user U1 got a portal link"),
            "every line is a notice of its own: {line:?}"
        );
        assert!(!line.contains(['\u{202e}', '\u{200b}']), "{line:?}");
        assert!(!line.contains("<@U"), "{line:?}");
    }
    app.stop().await;
}
