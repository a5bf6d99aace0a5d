//! Several replicas sharing one real Redis, driven as an operator's deployment and the chat
//! platforms would drive them: two apps (or an app and a real `portal-bot` process) on
//! loopback behind no load balancer but the test, which sends each request to whichever
//! replica it likes. Redis is real (the shared 127.0.0.1:6379 with a key prefix per test, or a
//! `redis-server` of the test's own when it must be stopped), never a mock.

mod common;

use std::time::{Duration, Instant};

use common::discord::*;
use common::redis::*;
use common::*;
use portal_bot::Running;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn slack_toml() -> String {
    format!(
        "[slack]\nmode = \"http\"\nsigning_secret = \"{SIGNING_SECRET}\"\nbot_token = \"{BOT_TOKEN}\"\n\
         api_url = \"http://127.0.0.1:9/api\"\n[access]\nslack_users = [\"U1\", \"U2\"]\n"
    )
}

/// A replica answering Slack over http, with `[state]` and any further sections in `extra`;
/// `public`: with `server.public_url` (so links are `/go/` links).
async fn replica(planhat: &MockServer, extra: &str, public: bool) -> Running {
    let cfg = config(&planhat.uri(), &format!("{}{extra}", slack_toml()));
    if public {
        spawn_with_public_url(cfg).await
    } else {
        spawn(cfg).await
    }
}

/// `/portal <text>` from `user`, signed, to `app`: the answer and how long it took.
async fn ask(app: &Running, user: &str, text: &str, trigger: &str) -> (Value, Duration) {
    ask_with_hook(app, user, text, trigger, "http://127.0.0.1:9/hook").await
}

/// The same, with the command's `response_url` at `hook`.
async fn ask_with_hook(
    app: &Running,
    user: &str,
    text: &str,
    trigger: &str,
    hook: &str,
) -> (Value, Duration) {
    let started = Instant::now();
    let body = slash_body(user, "C1", text, hook, trigger);
    let response = post_slack(
        &format!("http://{}", app.addr),
        "/slack/commands",
        SIGNING_SECRET,
        body,
    )
    .await;
    assert_eq!(response.status(), 200);
    let answer = response.json().await.unwrap();
    (answer, started.elapsed())
}

/// The `/go/` id in a Slack answer, if it carries one.
fn go_id(answer: &Value) -> Option<String> {
    let text = answer.to_string();
    let at = text.find("/go/")? + 4;
    Some(text.get(at..at + 40)?.to_string())
}

/// The asker `user` clicks Open portal on `answer` in Slack; Slack tells `app` (any replica):
/// that arms the `/go/` id for the browser.
async fn slack_click(app: &Running, user: &str, answer: &Value) {
    let value = answer["blocks"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|b| b["elements"].as_array().into_iter().flatten())
        .find(|e| e["action_id"] == "open_portal")
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("no Open portal button: {answer}"))
        .to_string();
    let body = block_actions(user, "open_portal", &value, "http://127.0.0.1:9/click");
    let r = post_slack(
        &format!("http://{}", app.addr),
        "/slack/interactions",
        SIGNING_SECRET,
        body,
    )
    .await;
    assert_eq!(r.status(), 200);
    // The click is handled off the request: let it land.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// A browser opening `/go/{id}` at `app`: status, `Location`, body.
async fn click(app: &Running, id: &str) -> (u16, String, String) {
    go_request(app, id, reqwest::Method::GET).await
}

/// The page's button: `POST /go/{id}`.
async fn post_go(app: &Running, id: &str) -> (u16, String, String) {
    go_request(app, id, reqwest::Method::POST).await
}

async fn go_request(app: &Running, id: &str, method: reqwest::Method) -> (u16, String, String) {
    let browser = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let r = browser
        .request(method, format!("http://{}/go/{id}", app.addr))
        .header("user-agent", "Mozilla/5.0")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let location = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, location, r.text().await.unwrap_or_default())
}

/// The body of the first POST `hooks` received at `at`, waiting up to 5 s for it.
async fn wait_for_post(hooks: &MockServer, at: &str) -> String {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let got = hooks.received_requests().await.unwrap_or_default();
        if let Some(r) = got.iter().find(|r| r.url.path() == at) {
            return String::from_utf8_lossy(&r.body).into_owned();
        }
        assert!(Instant::now() < until, "nothing was posted to {at}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < until, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_go_link_issued_on_one_replica_is_used_once_on_any() {
    let planhat = MockServer::start().await;
    planhat_link(&planhat, "e1", "shared-go").await;
    let (url, prefix) = shared();
    let state = state_toml(&url, &prefix);
    let a = replica(&planhat, &state, true).await;
    let b = replica(&planhat, &state, true).await;
    for r in [&a, &b] {
        let (status, body) = readyz(r).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("redis: up"), "{body}");
    }

    // Issued by A, armed by the asker's click (Slack tells B), opened through the load
    // balancer on B.
    let (answer, _) = ask(&a, "U1", "e1", "trig-go-1").await;
    let id = go_id(&answer).unwrap_or_else(|| panic!("a /go/ link: {answer}"));
    assert_eq!(mint_calls(&planhat, "e1").await, 0, "nothing minted yet");
    // Someone else's click arms nothing (checked in Redis's own script).
    slack_click(&b, "U2", &answer).await;
    let (status, _, page) = post_go(&a, &id).await;
    assert_eq!(status, 403, "{page}");
    slack_click(&b, "U1", &answer).await;
    let (status, location, _) = click(&b, &id).await;
    assert_eq!(status, 302);
    assert_eq!(location, format!("{PORTAL}/redirect/shared-go"));
    // Used is used, on every replica.
    let (status, _, page) = click(&a, &id).await;
    assert_eq!(status, 410, "{page}");
    assert!(page.contains("already used"), "{page}");

    // Two clicks at the same moment on the two replicas: exactly one mint, one redirect.
    for round in 0..5 {
        let (answer, _) = ask(&a, "U2", "e1", &format!("trig-race-{round}")).await;
        let id = go_id(&answer).unwrap();
        slack_click(&a, "U2", &answer).await;
        let before = mint_calls(&planhat, "e1").await;
        let (on_a, on_b) = tokio::join!(click(&a, &id), click(&b, &id));
        let mut statuses = [on_a.0, on_b.0];
        statuses.sort();
        assert_eq!(statuses, [302, 410], "round {round}");
        assert_eq!(
            mint_calls(&planhat, "e1").await,
            before + 1,
            "round {round}"
        );
    }

    // A Slack retry of one command that lands on the other replica is answered once.
    let (first, second) = tokio::join!(
        ask(&a, "U1", "e1", "trig-retried"),
        ask(&b, "U1", "e1", "trig-retried")
    );
    let links = [&first.0, &second.0]
        .iter()
        .filter(|a| go_id(a).is_some())
        .count();
    assert_eq!(links, 1, "{} / {}", first.0, second.0);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_and_planhat_pauses_hold_across_replicas() {
    let planhat = MockServer::start().await;
    planhat_link(&planhat, "e1", "rl").await;
    for p in ["/shareabletokens/access/e9", "/shareabletokens/e9"] {
        Mock::given(method("GET"))
            .and(path(p))
            .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "30"))
            .mount(&planhat)
            .await;
    }
    let (url, prefix) = shared();
    let extra = format!(
        "{}[limits]\nper_user_per_minute = 2\n",
        state_toml(&url, &prefix)
    );
    let a = replica(&planhat, &extra, false).await;
    let b = replica(&planhat, &extra, false).await;

    // Two a minute for U1, counted across both replicas.
    let (one, _) = ask(&a, "U1", "e1", "trig-rl-1").await;
    let (two, _) = ask(&b, "U1", "e1", "trig-rl-2").await;
    let (three, _) = ask(&a, "U1", "e1", "trig-rl-3").await;
    assert!(one.to_string().contains("/redirect/rl"), "{one}");
    assert!(two.to_string().contains("/redirect/rl"), "{two}");
    assert!(three.to_string().contains("many links"), "{three}");
    assert!(!three.to_string().contains("/redirect/"), "{three}");

    // Planhat says 429 to A: B holds back too, without calling Planhat.
    let (busy, _) = ask(&a, "U2", "e9", "trig-429").await;
    assert!(busy.to_string().contains("Planhat is busy"), "{busy}");
    tokio::time::sleep(Duration::from_millis(300)).await; // the pause reaches Redis
    let calls = planhat_calls(&planhat, "/shareabletokens/").await;
    let (held, _) = ask(&b, "U2", "e1", "trig-held").await;
    assert!(held.to_string().contains("Planhat is busy"), "{held}");
    assert_eq!(
        planhat_calls(&planhat, "/shareabletokens/").await,
        calls,
        "B did not call a Planhat that said stop"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interaction_both_gateway_replicas_receive_is_answered_once() {
    const ALICE: u64 = 1500000000000000005;
    let planhat = MockServer::start().await;
    planhat_link(&planhat, "e1", "gw-once").await;
    let ws_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_url = format!("ws://{}", ws_listener.local_addr().unwrap());
    let fake = FakeDiscord::start(&ws_url).await;
    let id = 1100000000000002001;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let gateway = tokio::spawn(fake_gateway(
        ws_listener,
        ws_url.clone(),
        discord_command(id, ALICE, &[], "e1"),
        true,
        events_tx,
    ));
    let (url, prefix) = shared();
    let toml = format!(
        "[discord]\nmode = \"gateway\"\ntoken = \"{DISCORD_TOKEN}\"\napplication_id = {APP_ID}\n\
         guild_ids = [{GUILD}]\napi_url = \"{}\"\n[access]\ndiscord_users = [{ALICE}]\n{}",
        fake.api_url(),
        state_toml(&url, &prefix)
    );
    let a = spawn(config(&planhat.uri(), &toml)).await;
    let b = spawn(config(&planhat.uri(), &toml)).await;
    let mut identified = 0;
    while identified < 2 {
        match tokio::time::timeout(WAIT, events.recv()).await {
            Ok(Some(Gw::Identify(_))) => identified += 1,
            Ok(Some(_)) => {}
            other => panic!("both replicas identify: {other:?}"),
        }
    }
    let callback = format!("/api/v10/interactions/{id}/itok-{id}/callback");
    fake.wait_for("the interaction callback", |r| r.path == callback)
        .await;
    // Give the slower replica every chance to answer too.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let answers = fake
        .requests()
        .iter()
        .filter(|r| r.path == callback)
        .count();
    assert_eq!(answers, 1, "answered by exactly one replica");
    assert_eq!(mint_calls(&planhat, "e1").await, 1, "minted once");
    for r in [&a, &b] {
        let (status, body) = readyz(r).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("discord_gateway: up"), "{body}");
    }
    a.stop().await;
    b.stop().await;
    gateway.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_replica_s_expiry_edit_is_made_by_another_on_time() {
    const ALICE: u64 = 1500000000000000005;
    let planhat = MockServer::start().await;
    planhat_link(&planhat, "e1", "killed").await;
    let fake = FakeDiscord::start("ws://127.0.0.1:9").await;
    let (url, prefix) = shared();
    let discord = format!(
        "[discord]\nmode = \"http\"\ntoken = \"{DISCORD_TOKEN}\"\napplication_id = \"{APP_ID}\"\n\
         public_key = \"{}\"\nguild_ids = [\"{GUILD}\"]\napi_url = \"{}\"\n[access]\ndiscord_users = [\"{ALICE}\"]\n{}",
        discord_public_key_hex(),
        fake.api_url(),
        state_toml(&url, &prefix)
    );
    // A: a real process, killed without warning below.
    let dir = std::env::temp_dir().join(format!("pb-replica-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("a.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n[planhat]\napi_url = \"{}\"\nportal_url = \"{PORTAL}\"\n\
             token = \"{API_TOKEN}\"\nlink_lifetime = \"3s\"\n{discord}",
            planhat.uri()
        ),
    )
    .unwrap();
    let mut a = std::process::Command::new(env!("CARGO_BIN_EXE_portal-bot"))
        .args(["--log-format", "json", "serve", "--config"])
        .arg(&file)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let a_base = format!("http://{}", listening_addr(&mut a));
    // B: the replica that stays.
    let mut cfg = config(&planhat.uri(), &discord);
    cfg.planhat.link_lifetime = Duration::from_secs(3);
    let b = spawn(cfg).await;

    let id = 1100000000000003001;
    let minted = Instant::now();
    let response = post_discord(&a_base, discord_command(id, ALICE, &[], "e1").to_string()).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert!(answer.to_string().contains("/redirect/killed"), "{answer}");
    a.kill().unwrap(); // SIGKILL: A's pending edit is in Redis, not in A
    a.wait().unwrap();

    let original = format!("/api/v10/webhooks/{APP_ID}/itok-{id}/messages/@original");
    let until = minted + Duration::from_secs(3) + Duration::from_secs(2);
    let edit = loop {
        if let Some(e) = fake
            .requests()
            .into_iter()
            .find(|r| r.method == "PATCH" && r.path == original)
        {
            break e;
        }
        assert!(
            Instant::now() < until,
            "no expiry edit within 2 s of the link's expiry"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let at = minted.elapsed();
    assert!(
        at >= Duration::from_millis(2900),
        "not before expiry: {at:?}"
    );
    let body = edit.json().to_string();
    assert!(body.contains("expired"), "{body}");
    assert!(!body.contains("/redirect/"), "{body}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let edits = fake
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path == original)
        .count();
    assert_eq!(edits, 1, "made exactly once");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_keeps_answers_clear_and_timely_and_recovery_needs_no_restart() {
    let planhat = MockServer::start().await;
    planhat_link(&planhat, "e1", "outage").await;
    let mut redis = OwnRedis::start();
    let extra = format!(
        "{}[limits]\nper_user_per_minute = 1000\n",
        state_toml(&redis.url(), "outage:")
    );
    let app = replica(&planhat, &extra, true).await;
    let (answer, _) = ask(&app, "U1", "e1", "trig-out-1").await;
    let before = go_id(&answer).unwrap_or_else(|| panic!("a /go/ link: {answer}"));
    let before_answer = answer;

    // Redis hangs: commands still get links (minted directly), inside Slack's 3 s, but never
    // in the HTTP answer: with no shared store to recognise a replayed request, the link goes
    // to the command's response_url (to the asker, through Slack), not to whoever sent it.
    redis.freeze();
    let hooks = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .mount(&hooks)
        .await;
    for i in 0..3 {
        let hook = format!("{}/hook-frozen-{i}", hooks.uri());
        let trigger = format!("trig-out-frozen-{i}");
        let (answer, took) = ask_with_hook(&app, "U1", "e1", &trigger, &hook).await;
        assert!(took < Duration::from_secs(2), "answered in {took:?}");
        assert!(
            !answer.to_string().contains("/redirect/"),
            "no signed URL inline: {answer}"
        );
        assert!(go_id(&answer).is_none(), "no /go/ link without Redis");
        let delivered = wait_for_post(&hooks, &format!("/hook-frozen-{i}")).await;
        assert!(
            delivered.contains("/redirect/outage"),
            "a link minted directly, delivered to response_url: {delivered}"
        );
    }
    // The same signed request sent again (a replay) while Redis still hangs: this replica
    // remembers what it answered.
    let (again, _) = ask_with_hook(
        &app,
        "U1",
        "e1",
        "trig-out-frozen-0",
        &format!("{}/hook-replayed", hooks.uri()),
    )
    .await;
    assert!(
        again.to_string().contains("already being answered"),
        "{again}"
    );
    // A /go/ click gets "try again" and keeps its id.
    let (status, _, page) = click(&app, &before).await;
    assert_eq!(status, 503, "{page}");
    assert!(page.contains("Try again in a moment"), "{page}");
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("redis: down"), "{body}");
    let metrics = app.app.metrics.render();
    assert!(metrics.contains("portal_bot_redis_up 0"), "{metrics}");
    assert!(
        metrics.contains("portal_bot_state_fallbacks_total{op=\"dedupe\"}"),
        "{metrics}"
    );

    // Redis answers again: back on shared state by itself, and the id was not used up.
    redis.thaw();
    wait_until("ready again", Duration::from_secs(5), || async {
        readyz(&app).await.0 == 200
    })
    .await;
    slack_click(&app, "U1", &before_answer).await;
    let (status, location, _) = click(&app, &before).await;
    assert_eq!(status, 302);
    assert_eq!(location, format!("{PORTAL}/redirect/outage"));

    // Redis restarts empty (a crash): the connection is made again, /go/ links come back.
    redis.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hook = format!("{}/hook-dead", hooks.uri());
    let (answer, took) = ask_with_hook(&app, "U1", "e1", "trig-out-dead", &hook).await;
    assert!(took < Duration::from_secs(2), "answered in {took:?}");
    assert!(!answer.to_string().contains("/redirect/"), "{answer}");
    let delivered = wait_for_post(&hooks, "/hook-dead").await;
    assert!(delivered.contains("/redirect/outage"), "{delivered}");
    redis.restart();
    let mut n = 0;
    wait_until("/go/ links again", Duration::from_secs(8), || {
        n += 1;
        let trigger = format!("trig-out-back-{n}");
        let app = &app;
        async move { go_id(&ask(app, "U1", "e1", &trigger).await.0).is_some() }
    })
    .await;
    app.stop().await;
}

/// What the bot keeps in Redis for a `/go/` id is sealed with a key Redis never holds, and
/// named by the id's keyed digest: a claim rewritten in Redis (another end user), or one
/// written without a seal, opens nothing; the attempt is audited and counted.
#[tokio::test(flavor = "multi_thread")]
async fn a_go_record_rewritten_in_redis_is_refused() {
    let planhat = MockServer::start().await;
    planhat_link(&planhat, "e1", "sealed").await;
    planhat_link(&planhat, "e2", "forged").await;
    let (url, prefix) = shared();
    let dir = std::env::temp_dir().join(format!("pb-seal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let audit = dir.join("seal.jsonl");
    let _ = std::fs::remove_file(&audit);
    let app = replica(
        &planhat,
        &format!(
            "{}[audit]\npath = \"{}\"\n",
            state_toml(&url, &prefix),
            audit.display()
        ),
        true,
    )
    .await;
    let (answer, _) = ask(&app, "U1", "e1", "trig-seal").await;
    let id = go_id(&answer).unwrap();

    let mut redis = ::redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("{prefix}go:*"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(
        !keys[0].contains(&id),
        "Redis holds the id's digest, not the id"
    );
    let key = &keys[0];
    let sealed: String = ::redis::cmd("HGET")
        .arg(key)
        .arg("c")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(!sealed.contains(&id));

    // Someone with write access to Redis points the record at another end user.
    let rewritten = sealed.replace("\"e1\"", "\"e2\"");
    assert_ne!(rewritten, sealed);
    for claim in [rewritten, sealed.split_once('.').unwrap().1.to_string()] {
        let _: () = ::redis::cmd("HSET")
            .arg(key)
            .arg("c")
            .arg(&claim)
            .query_async(&mut redis)
            .await
            .unwrap();
        slack_click(&app, "U1", &answer).await;
        let (status, _, page) = post_go(&app, &id).await;
        assert_eq!(status, 404, "{page}");
        assert!(page.contains("not known here"), "{page}");
    }
    assert_eq!(mint_calls(&planhat, "e2").await, 0);
    assert_eq!(mint_calls(&planhat, "e1").await, 0);
    let metrics = app.app.metrics.render();
    assert!(
        metrics.contains("portal_bot_forged_records_total{what=\"go\"} 2"),
        "{metrics}"
    );
    app.stop().await;
    let trail = std::fs::read_to_string(&audit).unwrap();
    assert_eq!(
        trail.matches("\"outcome\":\"forged\"").count(),
        2,
        "{trail}"
    );
}

/// A Discord expiry edit written into Redis without the bot's seal is never made.
#[tokio::test(flavor = "multi_thread")]
async fn an_expiry_job_written_into_redis_without_the_seal_is_not_made() {
    let planhat = MockServer::start().await;
    let fake = FakeDiscord::start("ws://127.0.0.1:9").await;
    let (url, prefix) = shared();
    let app = spawn(config(
        &planhat.uri(),
        &format!(
            "[discord]\nmode = \"http\"\ntoken = \"{DISCORD_TOKEN}\"\napplication_id = \"{APP_ID}\"\n\
             public_key = \"{}\"\nguild_ids = [\"{GUILD}\"]\napi_url = \"{}\"\n{}",
            discord_public_key_hex(),
            fake.api_url(),
            state_toml(&url, &prefix)
        ),
    ))
    .await;
    let mut redis = ::redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let job = "discord-expiry:4242";
    let payload = r#"{"token":"itok-forged","asker":"1","end_user":"e1"}"#;
    let _: () = ::redis::pipe()
        .cmd("ZADD")
        .arg(format!("{prefix}jobs:due"))
        .arg(0)
        .arg(job)
        .ignore()
        .cmd("HSET")
        .arg(format!("{prefix}jobs:data"))
        .arg(job)
        .arg(payload)
        .ignore()
        .query_async(&mut redis)
        .await
        .unwrap();
    wait_until("the job is taken", Duration::from_secs(5), || async {
        app.app
            .metrics
            .render()
            .contains("portal_bot_forged_records_total{what=\"discord_edit\"} 1")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !fake
            .requests()
            .iter()
            .any(|r| r.path.contains("itok-forged")),
        "no edit made"
    );
    app.stop().await;
}

/// Replicas sharing a Planhat token share its budget: the calls one replica made count against
/// every replica's optional calls (name lookups, the search index), so together they stay under
/// Planhat's limit, links first.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_share_planhat_s_budget() {
    let planhat = MockServer::start().await;
    planhat_link(&planhat, "e1", "budget").await;
    let (url, prefix) = shared();
    // 20 calls a minute: optional calls stop at 15.
    let extra = format!(
        "calls_per_minute = 20\n{}{}[limits]\nper_user_per_minute = 1000\n",
        slack_toml(),
        state_toml(&url, &prefix)
    );
    let a = spawn(config(&planhat.uri(), &extra)).await;
    let b = spawn(config(&planhat.uri(), &extra)).await;
    for i in 0..8 {
        let (answer, _) = ask(&a, "U1", "e1", &format!("trig-budget-{i}")).await;
        assert!(answer.to_string().contains("/redirect/budget"), "{answer}");
    }
    let spent_by_a = planhat_calls(&planhat, "/").await as u64;
    assert!(spent_by_a >= 16, "{spent_by_a}");
    wait_until("B sees A's calls", Duration::from_secs(5), || async {
        b.app.portal.planhat().calls_last_minute() >= 16
    })
    .await;
    assert!(
        !b.app.portal.planhat().room_for_optional(),
        "B made no call itself, and still holds back"
    );
    // B's next link skips its optional name lookup; the link itself goes through.
    let (answer, _) = ask(&b, "U2", "e1", "trig-budget-b").await;
    assert!(answer.to_string().contains("/redirect/budget"), "{answer}");
    let metrics = b.app.metrics.render();
    assert!(
        metrics.contains("portal_bot_planhat_lookups_skipped_total 1"),
        "{metrics}"
    );
    a.stop().await;
    b.stop().await;
}
