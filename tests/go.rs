//! Mint at click: with `server.public_url` set, the button points at `/go/{id}` and the signed
//! URL is minted only by a deliberate act: the page's POST (Discord), or the asker's own click
//! in Slack that arms the id. A `GET` alone (a preview, a scanner, a copied link) spends nothing.

mod common;

use common::*;
use portal_bot::core::asker::{Asker, Groups, Platform};
use portal_bot::core::portal::Reply;
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::test]
async fn go_links_mint_once_at_click() {
    let planhat = MockServer::start().await;
    planhat_link(&planhat, "e1", "minted-at-click").await;
    let cfg = config(
        &planhat.uri(),
        "[access]\ndiscord_users = [\"1500000000000000005\"]\n",
    );
    let running = spawn_with_public_url(cfg).await;
    let addr = running.addr;

    // A Discord asker: Discord's link buttons send no click event, so the page's POST is the
    // deliberate act.
    let asker = Asker {
        platform: Platform::Discord,
        user_id: "1500000000000000005".into(),
        team_id: Some(GUILD.to_string()),
        channel_id: Some(CHANNEL.to_string()),
        groups: Groups::Known(vec![]),
    };
    let reply = running.app.portal.handle(&asker, "e1").await;
    let Reply::Link(link) = reply else {
        panic!("{reply:?}")
    };
    assert!(link.at_click);
    let go = link.url.expose().to_string();
    assert!(go.starts_with(&format!("http://{addr}/go/")), "{go}");
    let id = go.rsplit('/').next().unwrap();
    assert!(id.len() >= 32, "128+ bits: {id}");
    assert_eq!(
        mint_calls(&planhat, "e1").await,
        0,
        "nothing minted before the click"
    );

    let no_redirect = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // HEAD, link previews, scanners, any GET: a page with one button, and the id unused.
    let head = no_redirect.head(&go).send().await.unwrap();
    assert_eq!(head.status(), 200);
    for agent in [
        "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
        "Iframely/1.3.1 (+https://iframely.com/docs/about)",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
        "",
    ] {
        let page = no_redirect
            .get(&go)
            .header("user-agent", agent)
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200, "{agent}");
        assert_eq!(page.headers()["cache-control"], "no-store");
        assert_eq!(page.headers()["referrer-policy"], "no-referrer");
        let body = page.text().await.unwrap();
        assert!(body.contains("<form method=\"post\">"), "{body}");
    }
    assert_eq!(mint_calls(&planhat, "e1").await, 0, "no GET spends the id");

    let click = no_redirect
        .post(&go)
        .header("user-agent", "Mozilla/5.0")
        .send()
        .await
        .unwrap();
    assert_eq!(click.status(), 302);
    assert_eq!(
        click.headers()["location"],
        format!("{PORTAL}/redirect/minted-at-click").as_str()
    );
    assert_eq!(click.headers()["cache-control"], "no-store");
    assert_eq!(click.headers()["referrer-policy"], "no-referrer");
    assert_eq!(mint_calls(&planhat, "e1").await, 1, "minted at the click");

    let again = no_redirect.post(&go).send().await.unwrap();
    assert_eq!(again.status(), 410);
    let page = again.text().await.unwrap();
    assert!(
        page.contains("already used") && page.contains("/portal"),
        "{page}"
    );
    assert!(!page.contains("minted-at-click"));

    let unknown = no_redirect
        .get(format!("http://{addr}/go/0123456789abcdef0123456789abcdef"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert!(unknown.text().await.unwrap().contains("not known"));
    assert_eq!(mint_calls(&planhat, "e1").await, 1);
    // A click that fails for a passing reason (Planhat 503) leaves the link usable.
    Mock::given(wiremock::matchers::path("/shareabletokens/e2"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&planhat)
        .await;
    planhat_link(&planhat, "e2", "second-try").await;
    let Reply::Link(link) = running.app.portal.handle(&asker, "e2").await else {
        panic!("no link")
    };
    let go2 = link.url.expose().to_string();
    let failed = no_redirect.post(&go2).send().await.unwrap();
    assert_eq!(failed.status(), 502);
    assert!(failed.text().await.unwrap().contains("try again"));
    let retried = no_redirect.post(&go2).send().await.unwrap();
    assert_eq!(
        retried.status(),
        302,
        "the same link works once Planhat is back"
    );
    assert_eq!(
        retried.headers()["location"],
        format!("{PORTAL}/redirect/second-try").as_str()
    );
    running.stop().await;
}

/// The Open portal button of a Slack answer: its `/go/` URL and its value.
fn open_button(answer: &serde_json::Value) -> (String, String) {
    let button = answer["blocks"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|b| b["elements"].as_array().into_iter().flatten())
        .find(|e| e["action_id"] == "open_portal")
        .unwrap_or_else(|| panic!("no Open portal button: {answer}"))
        .clone();
    (
        button["url"].as_str().unwrap().to_string(),
        button["value"].as_str().unwrap().to_string(),
    )
}

/// Slack `/go/` ids open only for their asker: armed by the asker's own click in Slack (the
/// `block_actions` event), never by a copied link, a GET alone, a POST alone, or someone
/// else's click; a browser that arrives before the click event waits for it. Failed attempts
/// are audited without the id.
#[tokio::test(flavor = "multi_thread")]
async fn slack_go_links_open_only_after_their_asker_clicked_in_slack() {
    let planhat = MockServer::start().await;
    planhat_link(&planhat, "e1", "armed-token").await;
    let dir = std::env::temp_dir().join(format!("pb-go-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let audit = dir.join("armed.jsonl");
    let _ = std::fs::remove_file(&audit);
    let cfg = config(
        &planhat.uri(),
        &format!(
            "[slack]\nmode = \"http\"\nsigning_secret = \"{SIGNING_SECRET}\"\nbot_token = \"{BOT_TOKEN}\"\n\
             api_url = \"http://127.0.0.1:9/api\"\n[access]\nslack_users = [\"U1\", \"U2\"]\n\
             [audit]\npath = \"{}\"\n",
            audit.display()
        ),
    );
    let app = spawn_with_public_url(cfg).await;
    let addr = app.addr;
    let base = format!("http://{addr}");
    let browser = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let ask = |trigger: &'static str| {
        let base = base.clone();
        async move {
            let body = slash_body("U1", "C1", "e1", "http://127.0.0.1:9/hook", trigger);
            let r = post_slack(&base, "/slack/commands", SIGNING_SECRET, body).await;
            open_button(&r.json().await.unwrap())
        }
    };
    let slack_click = |user: &'static str, value: String| {
        let base = base.clone();
        async move {
            let body = block_actions(user, "open_portal", &value, "http://127.0.0.1:9/click");
            let r = post_slack(&base, "/slack/interactions", SIGNING_SECRET, body).await;
            assert_eq!(r.status(), 200);
        }
    };

    // A copied link: neither GET (after waiting for a click that never comes) nor POST mints.
    let (go, value) = ask("trig-armed-1").await;
    assert!(value.ends_with(go.rsplit('/').next().unwrap()), "{value}");
    let started = std::time::Instant::now();
    let copy = "Mozilla/5.0 (someone with a copy of the link)";
    let (get, post) = tokio::join!(
        browser.get(&go).header("user-agent", copy).send(),
        browser.post(&go).header("user-agent", copy).send()
    );
    let (get, post) = (get.unwrap(), post.unwrap());
    assert!(started.elapsed() >= std::time::Duration::from_millis(2900));
    assert_eq!(get.status(), 403);
    assert!(get
        .text()
        .await
        .unwrap()
        .contains("only from the Slack message"));
    assert_eq!(post.status(), 403);
    // Someone else's click doesn't arm it either.
    slack_click("U2", value.clone()).await;
    assert_eq!(
        browser
            .post(&go)
            .header("user-agent", copy)
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        mint_calls(&planhat, "e1").await,
        0,
        "nothing minted, the id unused"
    );

    // The asker's own click arms it: the GET of the browser the click opened redirects (the
    // browser that had the copy open before the click is refused, see tests/browser.rs).
    slack_click("U1", value).await;
    let opened = browser.get(&go).send().await.unwrap();
    assert_eq!(opened.status(), 302);
    assert_eq!(
        opened.headers()["location"],
        format!("{PORTAL}/redirect/armed-token").as_str()
    );
    assert_eq!(browser.get(&go).send().await.unwrap().status(), 410);

    // The browser often arrives before Slack's click event: it waits for it.
    let (go, value) = ask("trig-armed-2").await;
    let clicked = std::time::SystemTime::now();
    let early = tokio::spawn({
        let (browser, go) = (browser.clone(), go.clone());
        async move { browser.get(&go).send().await.unwrap().status() }
    });
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let body = block_actions_at(
        "U1",
        "open_portal",
        &value,
        "http://127.0.0.1:9/click",
        clicked,
    );
    let r = post_slack(&base, "/slack/interactions", SIGNING_SECRET, body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(early.await.unwrap(), 302);
    assert_eq!(mint_calls(&planhat, "e1").await, 2);

    // Every failed attempt on an existing id is in the audit trail, with the browser but never
    // the id; an id that doesn't exist is only counted (issue 19, item 1).
    let unknown = format!("{base}/go/{}", "ab".repeat(20));
    assert_eq!(browser.get(&unknown).send().await.unwrap().status(), 404);
    let used = browser
        .get(&go)
        .header("user-agent", "curl/8")
        .send()
        .await
        .unwrap();
    assert_eq!(used.status(), 410);
    app.stop().await;
    let trail = std::fs::read_to_string(&audit).unwrap();
    let failed: Vec<serde_json::Value> = trail
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &serde_json::Value| e["action"] == "go" && e["outcome"] != "ok")
        .collect();
    let outcomes: Vec<&str> = failed
        .iter()
        .filter_map(|e| e["outcome"].as_str())
        .collect();
    assert!(outcomes.contains(&"not_armed"), "{outcomes:?}");
    assert!(outcomes.contains(&"used"), "{outcomes:?}");
    assert!(!outcomes.contains(&"unknown"), "{outcomes:?}");
    let curl = failed.iter().find(|e| e["user_agent"] == "curl/8").unwrap();
    assert_eq!(curl["outcome"], "used", "{curl}");
    assert_eq!(curl["client"], "127.0.0.1", "{curl}");
    assert_eq!(curl["user_agent"], "curl/8", "{curl}");
    assert!(
        !trail.contains(&"ab".repeat(20)),
        "no id in the audit trail"
    );
    assert!(!trail.contains("armed-token"));
}

/// Every file of an audit trail in `dir` (the current one and the rotated ones), as events.
fn trail_events(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let mut events = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        events.extend(text.lines().map(|l| serde_json::from_str(l).unwrap()));
    }
    events
}

/// A fresh, empty directory for one test's audit trail.
fn fresh_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pb-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A Discord asker allowed by [`go_config`] (Discord `/go/` ids need no arming: the page's POST
/// is the deliberate act).
fn discord_asker() -> Asker {
    Asker {
        platform: Platform::Discord,
        user_id: "1500000000000000005".into(),
        team_id: Some(GUILD.to_string()),
        channel_id: Some(CHANNEL.to_string()),
        groups: Groups::Known(vec![]),
    }
}

/// A config with `/go/` links for [`discord_asker`] and an audit trail in `dir`, plus `server`
/// TOML in `[server]`.
fn go_config(planhat: &str, dir: &std::path::Path, server: &str) -> portal_bot::Config {
    config_with_server(
        planhat,
        server,
        &format!(
            "[access]\ndiscord_users = [\"1500000000000000005\"]\n\
             [audit]\npath = \"{}\"\nrotate = \"50KB\"\nkeep = 2\n",
            dir.join("trail.jsonl").display()
        ),
    )
}

/// Issue 19, item 1: anyone can send `/go/<40 hex>` by the thousand. Ids that don't exist are
/// counted in a metric and logged now and then, never audited, so a flood can neither rotate
/// genuine events out of a trail kept as `rotate = "50KB"`, `keep = 2` (10,000 audited probes
/// are about 2.5 MB) nor fill the disk or the log.
#[tokio::test]
async fn a_flood_of_unknown_go_ids_leaves_the_audit_trail_and_the_log_alone() {
    // Current-thread runtime: the app's tasks run on this thread, under this subscriber.
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(capture.clone())
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _log = tracing::subscriber::set_default(subscriber);
    let planhat = MockServer::start().await;
    planhat_link(&planhat, "e1", "genuine-token").await;
    let dir = fresh_dir("go-flood");
    let running = spawn_with_public_url(go_config(&planhat.uri(), &dir, "")).await;
    let addr = running.addr;
    let no_redirect = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // The genuine events: a link, its click, and a second click on the used link.
    let Reply::Link(link) = running.app.portal.handle(&discord_asker(), "e1").await else {
        panic!("no link")
    };
    let go = link.url.expose().to_string();
    assert_eq!(no_redirect.post(&go).send().await.unwrap().status(), 302);
    assert_eq!(no_redirect.post(&go).send().await.unwrap().status(), 410);

    // The flood: 10,000 well-formed ids nobody was given, over 8 keep-alive connections.
    const PROBES: usize = 10_000;
    let mut flood = tokio::task::JoinSet::new();
    for worker in 0..8usize {
        let base = format!("http://{addr}");
        flood.spawn(async move {
            let probe = client();
            for i in 0..PROBES / 8 {
                let id = format!("{:040x}", (worker << 32) + i + 1);
                let r = probe.get(format!("{base}/go/{id}")).send().await.unwrap();
                assert_eq!(r.status(), 404);
            }
        });
    }
    let flooding = std::time::Instant::now();
    while let Some(done) = flood.join_next().await {
        done.unwrap();
    }
    let flood_secs = flooding.elapsed().as_secs() as usize;
    let metrics = client()
        .get(format!("http://{}/metrics", running.metrics_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    running.stop().await;

    let events = trail_events(&dir);
    let go_events: Vec<&str> = events
        .iter()
        .filter(|e| e["action"] == "go")
        .filter_map(|e| e["outcome"].as_str())
        .collect();
    assert!(
        go_events.contains(&"ok") && go_events.contains(&"used"),
        "the genuine click and the attempt on the used link are in the trail; it holds {} /go/ events, the first {:?}",
        go_events.len(),
        &go_events[..go_events.len().min(5)]
    );
    assert_eq!(go_events.len(), 2, "no probe is audited");
    assert!(
        events.iter().any(|e| e["platform"] == "discord"),
        "the link's own event is still in the trail: {events:?}"
    );
    let logs = capture.text();
    let go_lines = logs.lines().filter(|l| l.contains("/go/")).count();
    // The attempt on the used link, and one line per 10 s about the probes.
    assert!(
        go_lines <= 3 + flood_secs / 10,
        "{go_lines} log lines about /go/ for {PROBES} probes:\n{}",
        logs.lines().take(20).collect::<Vec<_>>().join("\n")
    );
    let line = format!("portal_bot_go_unaudited_total{{why=\"unknown\"}} {PROBES}");
    assert!(metrics.contains(&line), "{line} missing from {metrics}");
}

/// A client whose connections come from `ip` (any 127.0.0.0/8 address on Linux).
fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(std::net::IpAddr::from(ip))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Issue 19, item 5: the audited address is the TCP peer's; an `X-Forwarded-For` a client
/// wrote itself is not believed.
#[tokio::test]
async fn a_spoofed_forwarded_for_from_an_untrusted_peer_is_not_audited() {
    let planhat = MockServer::start().await;
    planhat_link(&planhat, "e1", "spoof-token").await;
    let dir = fresh_dir("go-spoof");
    let running = spawn_with_public_url(go_config(&planhat.uri(), &dir, "")).await;
    let Reply::Link(link) = running.app.portal.handle(&discord_asker(), "e1").await else {
        panic!("no link")
    };
    let go = link.url.expose().to_string();
    let spoofer = client_from([127, 0, 0, 9]);
    assert_eq!(spoofer.post(&go).send().await.unwrap().status(), 302);
    let again = spoofer
        .post(&go)
        .header("x-forwarded-for", "203.0.113.7")
        .header("user-agent", "spoofer/1")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 410);
    running.stop().await;
    let events = trail_events(&dir);
    let used = events
        .iter()
        .find(|e| e["action"] == "go" && e["outcome"] == "used")
        .unwrap_or_else(|| panic!("the attempt on the used link is audited: {events:?}"));
    assert_eq!(used["client"], "127.0.0.9", "{used}");
    assert_eq!(used["user_agent"], "spoofer/1", "{used}");
    assert!(
        !events.iter().any(|e| e.to_string().contains("203.0.113.7")),
        "the spoofed address is nowhere in the trail"
    );
}

/// Issue 19, items 5 and 1: behind a proxy listed in `server.trusted_proxies`, the client is
/// the rightmost `X-Forwarded-For` hop that is not a trusted proxy (what the client wrote to
/// the left of it is not believed); the audit of refusals is throttled per such client (20 a
/// minute, the rest counted), each client with its own budget.
#[tokio::test]
async fn behind_a_trusted_proxy_the_rightmost_untrusted_hop_is_the_client() {
    let planhat = MockServer::start().await;
    planhat_link(&planhat, "e1", "proxied-token").await;
    let dir = fresh_dir("go-proxied");
    let running = spawn_with_public_url(go_config(
        &planhat.uri(),
        &dir,
        "trusted_proxies = [\"127.0.0.10/32\", \"10.0.0.0/8\"]\n",
    ))
    .await;
    let Reply::Link(link) = running.app.portal.handle(&discord_asker(), "e1").await else {
        panic!("no link")
    };
    let go = link.url.expose().to_string();
    let proxy = client_from([127, 0, 0, 10]);
    let through = |xff: &'static str| {
        let (proxy, go) = (proxy.clone(), go.clone());
        async move {
            proxy
                .post(&go)
                .header("x-forwarded-for", xff)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    // The client wrote 203.0.113.66; the internet-facing proxy saw 198.51.100.23; an inner
    // proxy (10.1.2.3, trusted) passed it on to the trusted 127.0.0.10.
    assert_eq!(through("203.0.113.66, 198.51.100.23, 10.1.2.3").await, 302);
    for _ in 0..25 {
        assert_eq!(through("203.0.113.66, 198.51.100.23, 10.1.2.3").await, 410);
    }
    assert_eq!(through("192.0.2.44").await, 410);
    // Not through the proxy: the header is the client's own.
    let direct = client_from([127, 0, 0, 11])
        .post(&go)
        .header("x-forwarded-for", "192.0.2.45")
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 410);
    let metrics = client()
        .get(format!("http://{}/metrics", running.metrics_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    running.stop().await;

    let events = trail_events(&dir);
    let clients = |outcome: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["action"] == "go" && e["outcome"] == outcome)
            .map(|e| e["client"].as_str().unwrap_or("-").to_string())
            .collect()
    };
    assert_eq!(clients("ok"), ["198.51.100.23"]);
    let used = clients("used");
    assert_eq!(
        used.iter().filter(|c| *c == "198.51.100.23").count(),
        20,
        "20 audited refusals a minute for one client: {used:?}"
    );
    assert!(used.contains(&"192.0.2.44".to_string()), "{used:?}");
    assert!(used.contains(&"127.0.0.11".to_string()), "{used:?}");
    assert_eq!(used.len(), 22, "{used:?}");
    let text = serde_json::to_string(&events).unwrap();
    assert!(!text.contains("203.0.113.66") && !text.contains("192.0.2.45"));
    let line = "portal_bot_go_unaudited_total{why=\"throttled\"} 5";
    assert!(metrics.contains(line), "{line} missing from {metrics}");
}
