//! The portal-link use case against a fake Planhat on loopback: every outcome the spec lists,
//! every answer shape it accepts, and the rules that keep Planhat untouched (authorisation,
//! plausible ids, rate limits, a global pause on 429).

mod common;

use std::time::Duration;

use common::*;
use portal_bot::core::asker::{Asker, Groups, Platform};
use portal_bot::core::portal::{Refusal, Reply};
use portal_bot::App;
use wiremock::matchers::{method, path, path_regex, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn csm(user: &str) -> Asker {
    Asker {
        platform: Platform::Slack,
        user_id: user.into(),
        team_id: Some("T1".into()),
        channel_id: Some("C1".into()),
        groups: Groups::Known(vec![]),
    }
}

const ACCESS: &str = "[access]\nslack_users = [\"U1\", \"U2\"]\n";

fn app(planhat: &MockServer, extra: &str) -> std::sync::Arc<App> {
    App::build(config(&planhat.uri(), &format!("{ACCESS}{extra}"))).unwrap()
}

async fn answer(planhat: &MockServer, access: ResponseTemplate, mint: ResponseTemplate) -> Reply {
    Mock::given(method("GET"))
        .and(path("/shareabletokens/access/e1"))
        .respond_with(access)
        .mount(planhat)
        .await;
    Mock::given(method("GET"))
        .and(path("/shareabletokens/e1"))
        .respond_with(mint)
        .mount(planhat)
        .await;
    app(planhat, "").portal.handle(&csm("U1"), "e1").await
}

fn ok(body: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_string(body)
}

fn url_of(reply: &Reply) -> String {
    match reply {
        Reply::Link(l) => l.url.expose().to_string(),
        other => panic!("expected a link, got {other:?}"),
    }
}

#[tokio::test]
async fn every_accepted_answer_shape_gives_the_link() {
    let url = format!("{PORTAL}/redirect/tok123");
    let accesses = [
        "true",
        " TRUE\n",
        "{\"access\":true}",
        "{\"hasAccess\":true}",
    ];
    let mints = [
        url.clone(),
        format!("\"{url}\""),
        serde_json::json!({"url": url}).to_string(),
        serde_json::json!({"data": {"n": 1, "links": [{"signed": url}]}}).to_string(),
    ];
    for (a, m) in accesses.iter().zip(mints.iter()) {
        let planhat = MockServer::start().await;
        let reply = answer(&planhat, ok(a), ok(m)).await;
        assert_eq!(url_of(&reply), url, "access {a:?} mint {m:?}");
    }
}

#[tokio::test]
async fn link_expiry_is_thirty_seconds_from_the_mint() {
    let planhat = MockServer::start().await;
    planhat_link(&planhat, "e1", "t").await;
    let before = std::time::SystemTime::now();
    let reply = app(&planhat, "").portal.handle(&csm("U1"), "e1").await;
    let after = std::time::SystemTime::now();
    let Reply::Link(link) = reply else {
        panic!("no link")
    };
    // Counted from just before the mint call: never later than Planhat's own clock.
    assert!(link.expires_at >= before + Duration::from_secs(30));
    assert!(link.expires_at <= after + Duration::from_secs(30));
    assert!(
        !format!("{link:?}").contains("/redirect/"),
        "Debug must not show the URL"
    );
}

#[tokio::test]
async fn failures_each_get_their_own_refusal() {
    let cases: Vec<(ResponseTemplate, ResponseTemplate, Refusal)> = vec![
        (
            ResponseTemplate::new(404),
            ResponseTemplate::new(404),
            Refusal::NotFound,
        ),
        (
            ok("false"),
            ok(&format!("{PORTAL}/redirect/x")),
            Refusal::NoAccess,
        ),
        (
            ok("{\"hasAccess\":false}"),
            ok(&format!("{PORTAL}/redirect/x")),
            Refusal::NoAccess,
        ),
        (
            ResponseTemplate::new(401),
            ResponseTemplate::new(401),
            Refusal::TokenRejected,
        ),
        (
            ResponseTemplate::new(403),
            ResponseTemplate::new(403),
            Refusal::TokenRejected,
        ),
        (
            ResponseTemplate::new(500),
            ResponseTemplate::new(500),
            Refusal::UpstreamFailed,
        ),
        (ResponseTemplate::new(503), ok("x"), Refusal::UpstreamFailed),
        (ok("<html>oops</html>"), ok("x"), Refusal::Unusable),
        (ok("{\"access\":tr"), ok("x"), Refusal::Unusable),
        (
            ok("true"),
            ok("https://share.example.test.evil.com/redirect/x"),
            Refusal::Unusable,
        ),
        (
            ok("true"),
            ok("{\"url\":\"https://evil.example/redirect/x\"}"),
            Refusal::Unusable,
        ),
        (ok("true"), ok("<html>login</html>"), Refusal::Unusable),
        (
            ok("true"),
            ResponseTemplate::new(500),
            Refusal::UpstreamFailed,
        ),
    ];
    for (access, mint, want) in cases {
        let planhat = MockServer::start().await;
        match answer(&planhat, access, mint).await {
            Reply::Refused(got) => assert_eq!(got, want),
            other => panic!("expected {want:?}, got {other:?}"),
        }
    }
}

/// Planhat's answers are read up to 64 KiB and no further: a larger body is an unusable
/// answer, whether it says how long it is or streams without end (issue 14, item 12).
#[tokio::test]
async fn an_oversized_planhat_answer_is_unusable_and_not_buffered() {
    // A valid link followed by a megabyte of padding, with a Content-Length.
    let planhat = MockServer::start().await;
    let big = format!("{PORTAL}/redirect/bigtok {}", " ".repeat(1024 * 1024));
    let reply = answer(&planhat, ok("true"), ok(&big)).await;
    assert!(
        matches!(reply, Reply::Refused(Refusal::Unusable)),
        "{reply:?}"
    );
    // 64 KiB exactly is still read.
    let planhat = MockServer::start().await;
    let edge = format!("{PORTAL}/redirect/edgetok");
    let edge = format!("{edge}{}", " ".repeat(64 * 1024 - edge.len()));
    let reply = answer(&planhat, ok("true"), ok(&edge)).await;
    assert!(matches!(reply, Reply::Link(_)), "{reply:?}");

    // An endless chunked answer: the bot stops reading long before its 2 s timeout.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                    .await;
                let chunk = format!("4000\r\n{}\r\n", "t".repeat(0x4000));
                // At most 64 MiB, so a bot that never stops still lets this test end.
                for _ in 0..4096 {
                    if s.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let app = App::build(config(&format!("http://{addr}"), ACCESS)).unwrap();
    let started = std::time::Instant::now();
    let reply = app.portal.handle(&csm("U1"), "check e1").await;
    assert!(
        matches!(reply, Reply::Refused(Refusal::Unusable)),
        "{reply:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "stopped reading at the cap: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_url_for_someone_without_access_is_dropped() {
    let planhat = MockServer::start().await;
    let reply = answer(
        &planhat,
        ok("false"),
        ok(&format!("{PORTAL}/redirect/secret-token-1")),
    )
    .await;
    assert!(!format!("{reply:?}").contains("secret-token-1"));
    assert!(matches!(reply, Reply::Refused(Refusal::NoAccess)));
}

#[tokio::test]
async fn too_slow_and_unreachable() {
    let planhat = MockServer::start().await;
    let slow = ok("true").set_delay(Duration::from_secs(5));
    let started = std::time::Instant::now();
    let reply = answer(&planhat, slow.clone(), slow).await;
    assert!(
        matches!(reply, Reply::Refused(Refusal::UpstreamSlow)),
        "{reply:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the 2s timeout applies"
    );

    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let app = App::build(config(&format!("http://{addr}"), ACCESS)).unwrap();
    let reply = app.portal.handle(&csm("U1"), "e1").await;
    assert!(
        matches!(reply, Reply::Refused(Refusal::UpstreamUnreachable)),
        "{reply:?}"
    );
}

#[tokio::test]
async fn rate_limited_by_planhat_pauses_everyone() {
    let planhat = MockServer::start().await;
    Mock::given(path_regex("^/shareabletokens/"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "30"))
        .mount(&planhat)
        .await;
    let app = app(&planhat, "");
    let first = app.portal.handle(&csm("U1"), "e1").await;
    assert!(
        matches!(first, Reply::Refused(Refusal::UpstreamRateLimited(d)) if d.as_secs() == 30),
        "{first:?}"
    );
    let calls = planhat_calls(&planhat, "/shareabletokens").await;
    // Another asker during the pause: refused without a call.
    let second = app.portal.handle(&csm("U2"), "e2").await;
    assert!(
        matches!(second, Reply::Refused(Refusal::UpstreamRateLimited(_))),
        "{second:?}"
    );
    assert_eq!(planhat_calls(&planhat, "/shareabletokens").await, calls);
}

#[tokio::test]
async fn ids_are_escaped_as_one_path_segment() {
    let planhat = MockServer::start().await;
    Mock::given(path_regex("^/shareabletokens/"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&planhat)
        .await;
    app(&planhat, "").portal.handle(&csm("U1"), "a+b=c:d").await;
    let paths: Vec<String> = planhat
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r.url.path().to_string())
        .collect();
    assert!(
        paths.contains(&"/shareabletokens/access/a%2Bb%3Dc%3Ad".to_string()),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"/shareabletokens/a%2Bb%3Dc%3Ad".to_string()),
        "{paths:?}"
    );
}

#[tokio::test]
async fn nothing_reaches_planhat_without_authorisation_or_a_plausible_id() {
    let planhat = MockServer::start().await;
    planhat_link(&planhat, "e1", "t").await;
    let app = app(&planhat, "");
    let denied = app.portal.handle(&csm("U_STRANGER"), "e1").await;
    assert!(matches!(denied, Reply::Refused(Refusal::NotAllowed(_))));
    for bad in [
        "a/b",
        "..",
        "%2e%2e",
        "a?b",
        "a#b",
        "a\0b",
        "a\u{200f}b",
        "😀",
        "<!channel>",
        &"x".repeat(10_000),
    ] {
        let reply = app.portal.handle(&csm("U1"), bad).await;
        assert!(
            matches!(reply, Reply::Refused(Refusal::BadInput(_))),
            "{bad:?} gave {reply:?}"
        );
    }
    assert_eq!(planhat.received_requests().await.unwrap().len(), 0);
}

#[tokio::test]
async fn per_asker_rate_limit_says_when_to_retry() {
    let planhat = MockServer::start().await;
    planhat_link(&planhat, "e1", "t").await;
    let app = app(&planhat, "[limits]\nper_user_per_minute = 2\n");
    for _ in 0..2 {
        assert!(matches!(
            app.portal.handle(&csm("U1"), "e1").await,
            Reply::Link(_)
        ));
    }
    let calls = planhat_calls(&planhat, "/shareabletokens").await;
    match app.portal.handle(&csm("U1"), "e1").await {
        Reply::Refused(r @ Refusal::RateLimited(wait)) => {
            assert!(wait.as_secs() >= 1 && wait.as_secs() <= 30, "{wait:?}");
            assert!(r.to_string().contains("try again in"), "{r}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        planhat_calls(&planhat, "/shareabletokens").await,
        calls,
        "refused before Planhat"
    );
    assert!(
        matches!(app.portal.handle(&csm("U2"), "e1").await, Reply::Link(_)),
        "others unaffected"
    );
}

#[tokio::test]
async fn email_lookup_with_none_one_and_several_matches() {
    let planhat = MockServer::start().await;
    let users = |list: serde_json::Value| ResponseTemplate::new(200).set_body_json(list);
    Mock::given(path("/endusers"))
        .and(query_param("email", "none@x.example"))
        .respond_with(users(serde_json::json!([])))
        .mount(&planhat)
        .await;
    Mock::given(path("/endusers"))
        .and(query_param("email", "jane@x.example"))
        .respond_with(users(
            serde_json::json!([{"_id": "e1", "name": "Jane", "companyName": "Acme"}]),
        ))
        .mount(&planhat)
        .await;
    let many: Vec<_> = (0..8)
        .map(|i| serde_json::json!({"_id": format!("p{i}"), "name": format!("Pat {i}")}))
        .collect();
    Mock::given(path("/endusers"))
        .and(query_param("email", "pat@x.example"))
        .respond_with(users(many.into()))
        .mount(&planhat)
        .await;
    planhat_link(&planhat, "e1", "t").await;
    let app = app(&planhat, "");
    assert!(matches!(
        app.portal.handle(&csm("U1"), "none@x.example").await,
        Reply::Refused(Refusal::NotFound)
    ));
    match app.portal.handle(&csm("U1"), "Jane@X.example").await {
        Reply::Link(l) => {
            assert_eq!(l.end_user.as_str(), "e1");
            assert_eq!(l.who.unwrap().company.as_deref(), Some("Acme"));
        }
        other => panic!("{other:?}"),
    }
    match app.portal.handle(&csm("U1"), "pat@x.example").await {
        Reply::Choose { matches, more, .. } => {
            assert_eq!(matches.len(), 5);
            assert!(more);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn check_mints_nothing() {
    let planhat = MockServer::start().await;
    planhat_link(&planhat, "e1", "t").await;
    let reply = app(&planhat, "")
        .portal
        .handle(&csm("U1"), "check e1")
        .await;
    assert!(
        matches!(
            reply,
            Reply::Access {
                has_access: true,
                ..
            }
        ),
        "{reply:?}"
    );
    let mints = mint_calls(&planhat, "e1").await;
    assert_eq!(mints, 0);
}

#[tokio::test]
async fn audit_has_one_line_per_request_and_never_the_url() {
    let dir = std::env::temp_dir().join(format!("pb-core-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let audit = dir.join("audit.jsonl");
    let _ = std::fs::remove_file(&audit);
    let planhat = MockServer::start().await;
    planhat_link(&planhat, "e1", "audit-secret-token").await;
    let app = app(
        &planhat,
        &format!("[audit]\npath = \"{}\"\n", audit.display()),
    );
    app.portal.handle(&csm("U1"), "e1").await;
    app.portal.handle(&csm("U_NOPE"), "e1").await;
    app.portal.handle(&csm("U1"), "nobody").await;
    app.audit.close().await;
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(!text.contains("audit-secret-token") && !text.contains("/redirect/"));
    assert!(!text.contains(API_TOKEN));
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    let outcomes: Vec<&str> = lines
        .iter()
        .map(|l| l["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["ok", "denied", "not_found"]);
    for l in &lines {
        for key in [
            "time",
            "platform",
            "team",
            "channel",
            "asker",
            "end_user",
            "email",
            "outcome",
            "latency_ms",
        ] {
            assert!(l.get(key).is_some(), "{key} missing in {l}");
        }
    }
}

#[tokio::test]
async fn required_audit_that_cannot_be_written_refuses_the_link() {
    let planhat = MockServer::start().await;
    planhat_link(&planhat, "e1", "t").await;
    let app = app(&planhat, "[audit]\npath = \"/dev/full\"\nrequired = true\n");
    let reply = app.portal.handle(&csm("U1"), "e1").await;
    assert!(
        matches!(reply, Reply::Refused(Refusal::AuditUnavailable)),
        "{reply:?}"
    );
}

#[tokio::test]
async fn healthz_and_metrics_are_served() {
    let planhat = MockServer::start().await;
    planhat_link(&planhat, "e1", "metrics-secret-token").await;
    let running = spawn(config(&planhat.uri(), ACCESS)).await;
    running.app.portal.handle(&csm("U1"), "e1").await;
    let base = format!("http://{}", running.addr);
    let health = client()
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // /metrics is not on the public listener (issue 14, item 10).
    let public = client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 404);
    let metrics = client()
        .get(format!("http://{}/metrics", running.metrics_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("portal_bot_requests_total{platform=\"slack\",outcome=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("portal_bot_request_duration_seconds_bucket"));
    assert!(metrics
        .contains("portal_bot_planhat_call_duration_seconds_count{call=\"mint\",result=\"ok\"}"));
    assert!(!metrics.contains("metrics-secret-token") && !metrics.contains(API_TOKEN));
    running.stop().await;
}

#[tokio::test]
async fn names_ride_along_in_the_same_round_and_never_delay_the_link() {
    let planhat = MockServer::start().await;
    planhat_link(&planhat, "e1", "t").await;
    Mock::given(path("/endusers/e1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            serde_json::json!({"_id": "e1", "name": "Jane Doe", "companyName": "Acme"}),
        ))
        .mount(&planhat)
        .await;
    let app = app(&planhat, "");
    match app.portal.handle(&csm("U1"), "e1").await {
        Reply::Link(l) => {
            let who = l.who.expect("name and company shown");
            assert_eq!(
                (who.name.as_deref(), who.company.as_deref()),
                (Some("Jane Doe"), Some("Acme"))
            );
        }
        other => panic!("{other:?}"),
    }
    match app.portal.handle(&csm("U1"), "check e1").await {
        Reply::Access {
            who: Some(w),
            has_access: true,
            ..
        } => assert_eq!(w.name.as_deref(), Some("Jane Doe")),
        other => panic!("{other:?}"),
    }

    // A slow name lookup is dropped, not waited for.
    let slow = MockServer::start().await;
    planhat_link(&slow, "e1", "t").await;
    Mock::given(path("/endusers/e1"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_string("{}")
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&slow)
        .await;
    let started = std::time::Instant::now();
    let reply = App::build(config(&slow.uri(), ACCESS))
        .unwrap()
        .portal
        .handle(&csm("U1"), "e1")
        .await;
    assert!(
        matches!(&reply, Reply::Link(l) if l.who.is_none()),
        "{reply:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn near_planhats_budget_names_give_way_and_links_still_work() {
    // A budget of 8 calls a minute: names may be looked up below 6. Each link is two calls
    // and each new end user's name a third, so the first two links bring names (3 + 3 = 6
    // calls) and every later one is a link alone.
    let planhat = MockServer::start().await;
    for i in 0..6 {
        planhat_link(&planhat, &format!("e{i}"), &format!("tok{i}")).await;
    }
    Mock::given(path_regex("^/endusers/e[0-9]+$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            serde_json::json!({"_id": "e", "name": "Jane Doe", "companyName": "Acme"}),
        ))
        .mount(&planhat)
        .await;
    let hook = MockServer::start().await;
    let extra = format!(
        "calls_per_minute = 8\n\
         [slack]\nmode = \"http\"\nsigning_secret = \"{SIGNING_SECRET}\"\nbot_token = \"{BOT_TOKEN}\"\n\
         api_url = \"{}/api\"\n{ACCESS}",
        hook.uri()
    );
    let running = spawn(config(&planhat.uri(), &extra)).await;
    let base = format!("http://{}", running.addr);
    for i in 0..6 {
        let body = slash_body(
            "U1",
            "C1",
            &format!("e{i}"),
            &format!("{}/r", hook.uri()),
            &format!("t{i}"),
        );
        let answer = post_slack(&base, "/slack/commands", SIGNING_SECRET, body)
            .await
            .text()
            .await
            .unwrap();
        assert!(
            answer.contains(&format!("{PORTAL}/redirect/tok{i}")),
            "link {i} is shown: {answer}"
        );
        // Let the name lookup (which never delays the link) land before the next request.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        planhat_calls(&planhat, "/endusers/").await,
        2,
        "names stopped at the budget"
    );
    assert_eq!(
        planhat_calls(&planhat, "/shareabletokens/").await,
        12,
        "every link was made"
    );
    // Every call Planhat received is counted (the start-up probe included).
    let sent = planhat.received_requests().await.unwrap_or_default().len() as u64;
    assert_eq!(running.app.portal.planhat().calls_last_minute(), sent);
    let metrics = running.app.metrics.render();
    assert!(
        metrics.contains(&format!("portal_bot_planhat_calls_last_minute {sent}")),
        "{metrics}"
    );
    assert!(
        metrics.contains("portal_bot_planhat_lookups_skipped_total 4"),
        "{metrics}"
    );
    running.stop().await;
}

/// A fake Planhat that, like a real server, goes on working on a call whose client gave up:
/// each call is in flight for `work` from its arrival, whatever the client does meanwhile.
/// Returns its base URL and the most calls it ever had in flight at once.
async fn busy_planhat(
    work: Duration,
) -> (
    String,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (n, p) = (now.clone(), peak.clone());
    let app = axum::Router::new().fallback(move || {
        let (n, p) = (n.clone(), p.clone());
        async move {
            let working = tokio::spawn(async move {
                p.fetch_max(n.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                tokio::time::sleep(work).await;
                n.fetch_sub(1, Ordering::SeqCst);
            });
            let _ = working.await;
            "true"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (base, peak, server)
}

#[tokio::test]
async fn a_call_given_up_on_keeps_its_place_until_planhat_answers() {
    // Planhat takes 1.5 s; the bot gives up after 0.5 s. Calls asked for after that must wait
    // for the abandoned ones: Planhat is still working on them.
    let (base, peak, _server) = busy_planhat(Duration::from_millis(1500)).await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\nreply_budget = \"400ms\"\n\
         [planhat]\napi_url = \"{base}\"\nportal_url = \"{PORTAL}\"\ntoken = \"{API_TOKEN}\"\ntimeout = \"500ms\"\nmax_in_flight = 2\n{ACCESS}"
    );
    let app = App::build(portal_bot::Config::parse(&text, &|_| None).unwrap()).unwrap();
    let first = app.portal.handle(&csm("U1"), "e1").await;
    assert!(
        matches!(first, Reply::Refused(Refusal::UpstreamSlow)),
        "{first:?}"
    );
    let second = app.portal.handle(&csm("U2"), "e2").await;
    assert!(
        matches!(second, Reply::Refused(Refusal::UpstreamSlow)),
        "{second:?}"
    );
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(
        peak.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "Planhat never had more than max_in_flight of the bot's calls at once"
    );
}
