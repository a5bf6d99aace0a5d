//! The `/go/` pages as a person meets them: in a real headless Chromium, following the
//! button's POST and its 302 to the portal (another origin), and reading the pages that say
//! why a link can't be used. An HTTP client can't see what a browser refuses to do (a
//! Content-Security-Policy that blocks the redirect), so these tests drive the browser.

mod common;

use std::time::Duration;

use common::browser::Browser;
use common::portal::Portal;
use common::*;
use portal_bot::core::asker::{Asker, Groups, Platform};
use portal_bot::core::portal::Reply;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

fn discord_asker(user: &str) -> Asker {
    Asker {
        platform: Platform::Discord,
        user_id: user.into(),
        team_id: Some(GUILD.to_string()),
        channel_id: Some(CHANNEL.to_string()),
        groups: Groups::Known(vec![]),
    }
}

const DISCORD_USER: &str = "1500000000000000005";

/// The link a Discord asker gets: a `/go/` URL.
async fn discord_go(app: &portal_bot::Running, end_user: &str) -> String {
    let reply = app
        .app
        .portal
        .handle(&discord_asker(DISCORD_USER), end_user)
        .await;
    let Reply::Link(link) = reply else {
        panic!("{reply:?}")
    };
    assert!(link.at_click);
    link.url.expose().to_string()
}

/// The bug from the field: Chromium applies the page's `form-action` to the 302 that follows
/// the button's POST, so with `form-action 'self'` the press did nothing (and used the id).
/// Now the press lands on the portal, signed in, and the link is used.
#[tokio::test(flavor = "multi_thread")]
async fn discord_button_page_opens_the_portal_in_chromium() {
    let portal = Portal::start().await;
    portal.end_user("e1", "chromium-token").await;
    let app = spawn_with_public_url(
        portal.config(&format!("[access]\ndiscord_users = [\"{DISCORD_USER}\"]\n")),
    )
    .await;
    let go = discord_go(&app, "e1").await;
    let browser = Browser::start().await;

    browser.open(&go).await;
    assert_eq!(browser.url().await, go, "a GET shows the page and stays");
    assert!(browser.text().await.contains("Open the portal"));
    assert_eq!(portal.mints("e1").await, 0, "nothing minted by looking");

    browser.press_button().await;
    assert_eq!(
        browser.url().await,
        format!("{}/redirect/chromium-token", portal.uri()),
        "the press follows the POST's 302 to the portal"
    );
    assert!(
        browser
            .text()
            .await
            .contains("Signed in to the portal as e1"),
        "{}",
        browser.text().await
    );
    assert_eq!(portal.mints("e1").await, 1);

    // Back to the link: it was used.
    browser.open(&go).await;
    let page = browser.text().await;
    assert!(page.contains("already used"), "{page}");
    assert_eq!(portal.mints("e1").await, 1);

    browser.close().await;
    app.stop().await;
}

/// A Discord REST fake that answers who is in which role: `roles` for every member.
async fn discord_rest(roles: &[&str]) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(wiremock::matchers::path_regex(
            r"^/api/v10/guilds/\d+/members/\d+$",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "user": {"id": DISCORD_USER, "username": "csm", "discriminator": "0"},
            "roles": roles, "joined_at": "2024-01-01T00:00:00+00:00",
            "deaf": false, "mute": false, "flags": 0
        })))
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!([])))
        .mount(&server)
        .await;
    server
}

const ROLE: &str = "1600000000000000006";

/// The pages that say why a link can't be used, as the browser shows them: unknown, used,
/// not allowed any more (the asker left the allowed role before pressing), and a Slack link
/// opened without its asker's click in Slack (a copied link).
#[tokio::test(flavor = "multi_thread")]
async fn refusal_pages_read_right_in_chromium() {
    let portal = Portal::start().await;
    portal.end_user("e1", "refusal-token").await;
    let discord = discord_rest(&[]).await;
    let app = spawn_with_public_url(portal.config(&format!(
        "[access]\ndiscord_roles = [\"{ROLE}\"]\nslack_users = [\"U1\"]\n\
         [discord]\nmode = \"http\"\ntoken = \"{DISCORD_TOKEN}\"\napplication_id = \"{APP_ID}\"\n\
         public_key = \"{}\"\nguild_ids = [\"{GUILD}\"]\napi_url = \"{}/api/v10\"\n\
         [slack]\nmode = \"http\"\nsigning_secret = \"{SIGNING_SECRET}\"\nbot_token = \"{BOT_TOKEN}\"\n\
         api_url = \"http://127.0.0.1:9/api\"\n",
        discord_public_key_hex(),
        discord.uri()
    )))
    .await;
    let base = format!("http://{}", app.addr);
    let browser = Browser::start().await;

    // Unknown (mistyped, or long gone).
    browser
        .open(&format!("{base}/go/{}", "ab".repeat(20)))
        .await;
    let page = browser.text().await;
    assert!(page.contains("not known here"), "{page}");

    // Not allowed any more: asked while in the role, pressed after leaving it.
    let member = Asker {
        groups: Groups::Known(vec![ROLE.to_string()]),
        ..discord_asker(DISCORD_USER)
    };
    let Reply::Link(link) = app.app.portal.handle(&member, "e1").await else {
        panic!("the member gets a link")
    };
    browser.open(link.url.expose()).await;
    browser.press_button().await;
    let page = browser.text().await;
    assert!(page.contains("No portal link this time"), "{page}");
    assert!(page.contains("not allowed"), "{page}");
    assert_eq!(portal.mints("e1").await, 0);

    // A Slack link opened from a copy, without its asker's click in Slack: after waiting for
    // the click that never comes, the page says where it opens; nothing is minted.
    let body = slash_body(
        "U1",
        "C1",
        "e1",
        "http://127.0.0.1:9/hook",
        "trig-browser-1",
    );
    let answer: serde_json::Value = post_slack(&base, "/slack/commands", SIGNING_SECRET, body)
        .await
        .json()
        .await
        .unwrap();
    let go = open_button_url(&answer);
    browser.open(&go).await;
    let page = browser.text().await;
    assert!(page.contains("only from the Slack message"), "{page}");
    assert_eq!(portal.mints("e1").await, 0);

    browser.close().await;
    app.stop().await;
}

/// An expired link says so (and how to ask again).
#[tokio::test(flavor = "multi_thread")]
async fn an_expired_link_says_so_in_chromium() {
    let portal = Portal::start().await;
    portal.end_user("e1", "expired-token").await;
    let mut cfg = portal.config(&format!("[access]\ndiscord_users = [\"{DISCORD_USER}\"]\n"));
    cfg.server.go_lifetime = Duration::from_secs(30);
    let app = spawn_with_public_url(cfg).await;
    let go = discord_go(&app, "e1").await;
    tokio::time::sleep(Duration::from_secs(31)).await;
    let browser = Browser::start().await;
    browser.open(&go).await;
    let page = browser.text().await;
    assert!(page.contains("expired"), "{page}");
    assert!(page.contains("/portal"), "says how to ask again: {page}");
    assert_eq!(portal.mints("e1").await, 0);
    browser.close().await;
    app.stop().await;
}

/// The Open portal button's URL in a Slack answer.
fn open_button_url(answer: &serde_json::Value) -> String {
    answer["blocks"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|b| b["elements"].as_array().into_iter().flatten())
        .find(|e| e["action_id"] == "open_portal")
        .and_then(|e| e["url"].as_str())
        .unwrap_or_else(|| panic!("no Open portal button: {answer}"))
        .to_string()
}

/// The race from the security review: someone with a copy of a Slack link keeps polling it (and
/// keeps a request waiting) from before the asker's click. When the asker clicks Open portal,
/// the browser that click opened lands on the portal; the poller never gets the redirect, and
/// its attempts are in the audit trail, flagged, with its User-Agent.
#[tokio::test(flavor = "multi_thread")]
async fn a_copy_polled_before_the_askers_click_never_opens() {
    let portal = Portal::start().await;
    portal.end_user("e1", "race-token").await;
    let dir = std::env::temp_dir().join(format!("pb-browser-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let audit = dir.join("race.jsonl");
    let _ = std::fs::remove_file(&audit);
    let app = spawn_with_public_url(portal.config(&format!(
        "[access]\nslack_users = [\"U1\"]\n\
         [slack]\nmode = \"http\"\nsigning_secret = \"{SIGNING_SECRET}\"\nbot_token = \"{BOT_TOKEN}\"\n\
         api_url = \"http://127.0.0.1:9/api\"\n[audit]\npath = \"{}\"\n",
        audit.display()
    )))
    .await;
    let base = format!("http://{}", app.addr);
    let body = slash_body("U1", "C1", "e1", "http://127.0.0.1:9/hook", "trig-race");
    let answer: serde_json::Value = post_slack(&base, "/slack/commands", SIGNING_SECRET, body)
        .await
        .json()
        .await
        .unwrap();
    let go = open_button_url(&answer);
    let value = answer["blocks"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|b| b["elements"].as_array().into_iter().flatten())
        .find(|e| e["action_id"] == "open_portal")
        .and_then(|e| e["value"].as_str())
        .unwrap()
        .to_string();

    // The poller: from well before the click until well after it, one request after another
    // (each waits up to 3 s for a click), never following a redirect.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = tokio::spawn({
        let (go, stop) = (go.clone(), stop.clone());
        async move {
            let client = reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap();
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = client
                    .get(&go)
                    .header("user-agent", "link-scanner/1.0")
                    .send()
                    .await
                    .unwrap();
                statuses.push(r.status().as_u16());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            statuses
        }
    });
    tokio::time::sleep(Duration::from_secs(4)).await;

    // The asker clicks Open portal: Slack's event reaches the bot, and the click opens the
    // asker's browser on the link.
    let clicked = std::time::SystemTime::now();
    let browser = Browser::start().await;
    let click = block_actions_at(
        "U1",
        "open_portal",
        &value,
        "http://127.0.0.1:9/click",
        clicked,
    );
    assert_eq!(
        post_slack(&base, "/slack/interactions", SIGNING_SECRET, click)
            .await
            .status(),
        200
    );
    browser.open(&go).await;
    assert_eq!(
        browser.url().await,
        format!("{}/redirect/race-token", portal.uri())
    );
    assert!(browser
        .text()
        .await
        .contains("Signed in to the portal as e1"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = poller.await.unwrap();
    assert!(statuses.len() >= 3, "{statuses:?}");
    assert!(
        !statuses.contains(&302),
        "the poller never got the redirect: {statuses:?}"
    );
    assert_eq!(portal.mints("e1").await, 1);
    browser.close().await;
    app.stop().await;

    let events: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let flagged: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["outcome"] == "opened_before_click")
        .collect();
    assert!(!flagged.is_empty(), "{events:?}");
    assert!(flagged
        .iter()
        .all(|e| e["user_agent"] == "link-scanner/1.0" && e["asker"] == "U1"));
    let opened = events
        .iter()
        .find(|e| e["action"] == "go" && e["outcome"] == "ok")
        .expect("the asker's click is audited");
    assert!(
        opened["user_agent"]
            .as_str()
            .unwrap_or("")
            .contains("Chrome"),
        "{opened}"
    );
    assert_eq!(opened["client"], "127.0.0.1");
}
