//! Sign-in at the browser hop (`[sign_in]`), as people meet it in a real headless Chromium: the
//! asker signs in at their provider and lands on the portal; someone else signed in is told the
//! link is not theirs (and it stays usable); a signed-in browser opens the next link without a
//! new sign-in; answers that don't verify are refused; `max_age` makes the company's provider
//! authenticate again; a session made through one replica holds on another. The providers are
//! fakes on loopback that behave as the real ones do for a browser.

mod common;

use std::time::Duration;

use common::browser::Browser;
use common::idp::*;
use common::portal::Portal;
use common::redis::{shared, state_toml};
use common::*;
use portal_bot::core::asker::{Asker, Groups, Platform};
use portal_bot::core::portal::Reply;
use portal_bot::Running;
use serde_json::{json, Value};
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const COOKIE_KEY: &str = "test-cookie-key-0123456789abcdef0123456789";

/// `[slack]` in http mode (its Web API at `api`), U1 and U2 allowed.
fn slack(api: &str) -> String {
    format!(
        "[slack]\nmode = \"http\"\nsigning_secret = \"{SIGNING_SECRET}\"\nbot_token = \"{BOT_TOKEN}\"\n\
         api_url = \"{api}\"\n[access]\nslack_users = [\"U1\", \"U2\"]\n"
    )
}

/// `[sign_in]` with Sign in with Slack at `idp`; `extra` goes in `[sign_in]`.
fn sign_in_slack(idp: &FakeOidc, extra: &str) -> String {
    format!(
        "[sign_in]\ncookie_key = \"{COOKIE_KEY}\"\n{extra}\n[sign_in.slack]\nclient_id = \"{OIDC_CLIENT_ID}\"\n\
         client_secret = \"{OIDC_CLIENT_SECRET}\"\nissuer = \"{}\"\n",
        idp.issuer
    )
}

/// The app with `sections`; `server.public_url` is set to its own address at start (a
/// placeholder satisfies the config's check that sign-in has one).
async fn app(portal: &Portal, sections: &str) -> Running {
    spawn_with_public_url(portal.config_with(true, sections)).await
}

/// `/portal e1` from `user` in Slack: the Open portal button's `/go/` URL.
async fn slack_go(app: &Running, user: &str, trigger: &str) -> String {
    let base = format!("http://{}", app.addr);
    let body = slash_body(user, "C1", "e1", "http://127.0.0.1:9/hook", trigger);
    let answer: Value = post_slack(&base, "/slack/commands", SIGNING_SECRET, body)
        .await
        .json()
        .await
        .unwrap();
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

/// The audit trail's events so far.
fn trail(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn audit_file(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pb-signin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{name}.jsonl"));
    let _ = std::fs::remove_file(&file);
    file
}

/// A Slack link opens only in a browser signed in as its asker. Someone else's browser is sent
/// to Sign in with Slack, comes back signed in as themselves, and is told the link is not
/// theirs; the asker's browser signs in and lands on the portal; the asker's next link opens
/// without a new sign-in. The audit trail says who was signed in each time.
#[tokio::test(flavor = "multi_thread")]
async fn a_slack_link_opens_only_in_its_askers_signed_in_browser() {
    let portal = Portal::start().await;
    portal.end_user("e1", "signed-in-token").await;
    let idp = FakeOidc::start(true).await; // Slack's token endpoint: client credentials in the body
    let audit = audit_file("slack");
    let app = app(
        &portal,
        &format!(
            "{}{}[audit]\npath = \"{}\"\n",
            slack("http://127.0.0.1:9/api"),
            sign_in_slack(&idp, ""),
            audit.display()
        ),
    )
    .await;
    let go = slack_go(&app, "U1", "trig-signin-1").await;

    // Someone else (U2) opens U1's link: signed in at Slack as U2.
    idp.sign_in_as(slack_user("U2", "T0001"));
    let theirs = Browser::start().await;
    theirs.open(&go).await;
    let page = theirs.text().await;
    assert!(page.contains("someone else's"), "{page}");
    assert!(page.contains("slack:U2"), "{page}");
    assert_eq!(portal.mints("e1").await, 0, "the id was not used");
    let asked = idp.authorizations();
    assert_eq!(asked.len(), 1);
    let q = &asked[0];
    assert_eq!(q["code_challenge_method"], "S256", "PKCE");
    assert!(!q["state"].is_empty() && !q["nonce"].is_empty(), "{q:?}");
    assert_eq!(
        q["redirect_uri"],
        format!("http://{}/go/signed-in", app.addr)
    );
    theirs.close().await;

    // The asker signs in and lands on the portal.
    idp.sign_in_as(slack_user("U1", "T0001"));
    let mine = Browser::start().await;
    mine.open(&go).await;
    assert_eq!(mine.url().await, go, "back on the link's page, signed in");
    assert!(mine.text().await.contains("Open the portal"));
    mine.press_button().await;
    assert_eq!(
        mine.url().await,
        format!("{}/redirect/signed-in-token", portal.uri())
    );
    assert!(mine.text().await.contains("Signed in to the portal as e1"));
    assert_eq!(portal.mints("e1").await, 1);

    // The next link opens in the same browser without signing in again.
    let go2 = slack_go(&app, "U1", "trig-signin-2").await;
    mine.open(&go2).await;
    assert_eq!(mine.url().await, go2);
    assert_eq!(idp.authorizations().len(), 2, "no new sign-in");
    mine.press_button().await;
    assert!(mine.text().await.contains("Signed in to the portal as e1"));
    assert_eq!(portal.mints("e1").await, 2);
    mine.close().await;
    app.stop().await;

    let events = trail(&audit);
    let not_yours = events
        .iter()
        .find(|e| e["outcome"] == "not_yours")
        .expect("the other person's attempt is audited");
    assert_eq!(not_yours["signed_in_as"], "slack:U2", "{not_yours}");
    assert_eq!(not_yours["asker"], "U1", "{not_yours}");
    let opened: Vec<&Value> = events
        .iter()
        .filter(|e| e["action"] == "go" && e["outcome"] == "ok")
        .collect();
    assert_eq!(opened.len(), 2, "{events:?}");
    for e in opened {
        assert_eq!(e["signed_in_as"], "slack:U1", "{e}");
        assert_eq!(e["client"], "127.0.0.1", "{e}");
        assert!(
            e["user_agent"].as_str().unwrap_or("").contains("Chrome"),
            "{e}"
        );
    }
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(!text.contains("signed-in-token"), "no URL in the audit");
    assert!(
        !text.contains(go.rsplit('/').next().unwrap()),
        "no id in the audit"
    );
}

/// Answers from the provider that don't verify sign no one in, and the link stays usable:
/// another state, another nonce, another audience, another issuer, a signature by a key not in
/// the provider's JWKS, an expired id_token, and a person who declined.
#[tokio::test(flavor = "multi_thread")]
async fn a_sign_in_that_does_not_verify_is_refused() {
    let portal = Portal::start().await;
    portal.end_user("e1", "verified-token").await;
    let idp = FakeOidc::start(false).await;
    let app = app(
        &portal,
        &format!(
            "{}{}",
            slack("http://127.0.0.1:9/api"),
            sign_in_slack(&idp, "")
        ),
    )
    .await;
    let go = slack_go(&app, "U1", "trig-verify").await;
    let browser = Browser::start().await;
    idp.sign_in_as(slack_user("U1", "T0001"));
    for how in [
        Misbehave::WrongState,
        Misbehave::WrongNonce,
        Misbehave::WrongAudience,
        Misbehave::WrongIssuer,
        Misbehave::WrongSignature,
        Misbehave::Expired,
    ] {
        idp.misbehave(Some(how));
        browser.open(&go).await;
        let page = browser.text().await;
        assert!(page.contains("did not complete"), "{how:?}: {page}");
        assert!(!page.contains("Open the portal"), "{how:?}: {page}");
    }
    // Declined at the provider.
    idp.misbehave(None);
    idp.decline();
    browser.open(&go).await;
    let page = browser.text().await;
    assert!(page.contains("cancelled or refused"), "{page}");
    assert_eq!(portal.mints("e1").await, 0);
    assert_eq!(
        idp.authorizations().len(),
        7,
        "each attempt went to sign in again"
    );

    // A good answer now: the same link opens.
    idp.sign_in_as(slack_user("U1", "T0001"));
    browser.open(&go).await;
    browser.press_button().await;
    assert!(browser
        .text()
        .await
        .contains("Signed in to the portal as e1"));
    browser.close().await;
    app.stop().await;
}

/// A session ends after `session_lifetime`: the next link sends the browser to sign in again.
#[tokio::test(flavor = "multi_thread")]
async fn an_expired_session_signs_in_again() {
    let portal = Portal::start().await;
    portal.end_user("e1", "lifetime-token").await;
    let idp = FakeOidc::start(true).await;
    let app = app(
        &portal,
        &format!(
            "{}{}",
            slack("http://127.0.0.1:9/api"),
            sign_in_slack(&idp, "session_lifetime = \"1m\"")
        ),
    )
    .await;
    idp.sign_in_as(slack_user("U1", "T0001"));
    let browser = Browser::start().await;
    let go = slack_go(&app, "U1", "trig-life-1").await;
    browser.open(&go).await;
    assert!(browser.text().await.contains("Open the portal"));
    assert_eq!(idp.authorizations().len(), 1);
    tokio::time::sleep(Duration::from_secs(61)).await;
    let go2 = slack_go(&app, "U1", "trig-life-2").await;
    browser.open(&go2).await;
    assert_eq!(
        idp.authorizations().len(),
        2,
        "the expired session signed in again"
    );
    browser.press_button().await;
    assert!(browser
        .text()
        .await
        .contains("Signed in to the portal as e1"));
    browser.close().await;
    app.stop().await;
}

/// The company's provider with `max_age`: the authorize request asks for it, a person whose
/// last authentication there is older is refused (a provider that ignores `max_age`), and a
/// session older than `max_age` sends the browser back to the provider. Slack askers are
/// matched by the email in their Slack profile.
#[tokio::test(flavor = "multi_thread")]
async fn max_age_makes_the_company_provider_authenticate_again() {
    let portal = Portal::start().await;
    portal.end_user("e1", "step-up-token").await;
    let slack_api = MockServer::start().await;
    Mock::given(path("/api/auth.test"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"ok": true, "team_id": "T0001", "user_id": "UBOT", "team": "Acme", "url": "https://acme.slack.com/"}),
        ))
        .mount(&slack_api)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/users.info"))
        .and(query_param("user", "U1"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"ok": true, "user": {
                "id": "U1", "team_id": "T0001", "is_email_confirmed": true,
                "profile": {"email": "Casey@Acme.example"}
            }})),
        )
        .mount(&slack_api)
        .await;
    let idp = FakeOidc::start(false).await;
    let app = app(
        &portal,
        &format!(
            "{}[sign_in]\ncookie_key = \"{COOKIE_KEY}\"\n[sign_in.oidc]\nissuer = \"{}\"\n\
             client_id = \"{OIDC_CLIENT_ID}\"\nclient_secret = \"{OIDC_CLIENT_SECRET}\"\nmax_age = \"1m\"\n",
            slack(&format!("{}/api", slack_api.uri())),
            idp.issuer
        ),
    )
    .await;
    let go = slack_go(&app, "U1", "trig-maxage").await;
    let browser = Browser::start().await;
    let now = now() as i64;

    // Signed in at the provider 20 minutes ago, and the provider didn't ask again.
    idp.sign_in_as(json!({"sub": "okta-1", "email": "casey@acme.example", "email_verified": true}));
    idp.authenticated_at(Some(now - 1200));
    browser.open(&go).await;
    let page = browser.text().await;
    assert!(page.contains("did not complete"), "{page}");
    assert_eq!(idp.authorizations()[0]["max_age"], "60");

    // Someone else at the company.
    idp.sign_in_as(json!({"sub": "okta-2", "email": "bob@acme.example", "email_verified": true}));
    idp.authenticated_at(None);
    browser.open(&go).await;
    let page = browser.text().await;
    assert!(page.contains("someone else's"), "{page}");
    assert!(page.contains("oidc:bob@acme.example"), "{page}");
    browser.close().await;

    // The asker, authenticated 50 s ago: in. Ten seconds later the session is past max_age.
    let browser = Browser::start().await;
    idp.sign_in_as(json!({"sub": "okta-1", "email": "casey@acme.example", "email_verified": true}));
    idp.authenticated_at(Some(now - 50));
    browser.open(&go).await;
    assert!(browser.text().await.contains("Open the portal"));
    let asked = idp.authorizations().len();
    tokio::time::sleep(Duration::from_secs(12)).await;
    idp.authenticated_at(None);
    browser.open(&go).await;
    assert_eq!(
        idp.authorizations().len(),
        asked + 1,
        "past max_age: authenticated again"
    );
    browser.press_button().await;
    assert!(browser
        .text()
        .await
        .contains("Signed in to the portal as e1"));
    assert_eq!(portal.mints("e1").await, 1);
    browser.close().await;
    app.stop().await;
}

/// Discord askers sign in with Discord's OAuth2 (`identify`) and are matched by user id.
#[tokio::test(flavor = "multi_thread")]
async fn a_discord_link_opens_after_discord_sign_in() {
    let portal = Portal::start().await;
    portal.end_user("e1", "discord-token").await;
    let oauth = FakeDiscordOAuth::start().await;
    let user = "1500000000000000005";
    let app = app(
        &portal,
        &format!(
            "[discord]\nmode = \"http\"\ntoken = \"{DISCORD_TOKEN}\"\napplication_id = \"{APP_ID}\"\n\
             public_key = \"{}\"\nguild_ids = [\"{GUILD}\"]\napi_url = \"http://127.0.0.1:9/api/v10\"\n\
             [access]\ndiscord_users = [\"{user}\"]\n\
             [sign_in]\ncookie_key = \"{COOKIE_KEY}\"\n[sign_in.discord]\nclient_id = \"{DISCORD_CLIENT_ID}\"\n\
             client_secret = \"{DISCORD_CLIENT_SECRET}\"\noauth_url = \"{}\"\n",
            discord_public_key_hex(),
            oauth.base
        ),
    )
    .await;
    let asker = Asker {
        platform: Platform::Discord,
        user_id: user.into(),
        team_id: Some(GUILD.to_string()),
        channel_id: Some(CHANNEL.to_string()),
        groups: Groups::Known(vec![]),
    };
    let Reply::Link(link) = app.app.portal.handle(&asker, "e1").await else {
        panic!("a link")
    };
    let go = link.url.expose().to_string();

    oauth.sign_in_as("1500000000000000099");
    let browser = Browser::start().await;
    browser.open(&go).await;
    let page = browser.text().await;
    assert!(page.contains("someone else's"), "{page}");
    browser.close().await;

    oauth.sign_in_as(user);
    let browser = Browser::start().await;
    browser.open(&go).await;
    browser.press_button().await;
    assert_eq!(
        browser.url().await,
        format!("{}/redirect/discord-token", portal.uri())
    );
    assert_eq!(oauth.authorizations(), 2);
    assert_eq!(portal.mints("e1").await, 1);
    browser.close().await;
    app.stop().await;
}

/// Two replicas on one Redis with one cookie key: signed in through A, the link opens on B,
/// and B's own links open without a new sign-in.
#[tokio::test(flavor = "multi_thread")]
async fn signed_in_through_one_replica_the_link_opens_on_another() {
    let portal = Portal::start().await;
    portal.end_user("e1", "replica-token").await;
    let idp = FakeOidc::start(true).await;
    let (url, prefix) = shared();
    let sections = format!(
        "{}{}{}",
        slack("http://127.0.0.1:9/api"),
        sign_in_slack(&idp, ""),
        state_toml(&url, &prefix)
    );
    let a = app(&portal, &sections).await;
    let b = app(&portal, &sections).await;
    idp.sign_in_as(slack_user("U1", "T0001"));
    let browser = Browser::start().await;

    // Signed in through A (A's link, A's callback).
    let go = slack_go(&a, "U1", "trig-rep-1").await;
    browser.open(&go).await;
    assert!(browser.text().await.contains("Open the portal"));
    assert_eq!(idp.authorizations().len(), 1);

    // The same id on B: no sign-in, and B mints.
    let on_b = go.replace(&a.addr.to_string(), &b.addr.to_string());
    assert_ne!(on_b, go);
    browser.open(&on_b).await;
    assert_eq!(browser.url().await, on_b);
    browser.press_button().await;
    assert!(browser
        .text()
        .await
        .contains("Signed in to the portal as e1"));

    // B's own link opens without a new sign-in.
    let go_b = slack_go(&b, "U1", "trig-rep-2").await;
    browser.open(&go_b).await;
    browser.press_button().await;
    assert!(browser
        .text()
        .await
        .contains("Signed in to the portal as e1"));
    assert_eq!(
        idp.authorizations().len(),
        1,
        "one sign-in for both replicas"
    );
    assert_eq!(portal.mints("e1").await, 2);
    browser.close().await;
    a.stop().await;
    b.stop().await;
}

/// With sign-in, no link is handed out without the browser's proof: while Redis (where `/go/`
/// ids live) does not answer, the asker is told to try again, and nothing is minted directly.
#[tokio::test(flavor = "multi_thread")]
async fn with_sign_in_no_link_is_minted_directly_while_redis_is_down() {
    let portal = Portal::start().await;
    portal.end_user("e1", "never-direct").await;
    let idp = FakeOidc::start(true).await;
    let redis = common::redis::OwnRedis::start();
    let app = app(
        &portal,
        &format!(
            "{}{}{}",
            slack("http://127.0.0.1:9/api"),
            sign_in_slack(&idp, ""),
            state_toml(&redis.url(), "signin-down:")
        ),
    )
    .await;
    redis.freeze();
    let hooks = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&hooks)
        .await;
    let base = format!("http://{}", app.addr);
    let body = slash_body(
        "U1",
        "C1",
        "e1",
        &format!("{}/hook", hooks.uri()),
        "trig-down",
    );
    let answer = post_slack(&base, "/slack/commands", SIGNING_SECRET, body)
        .await
        .text()
        .await
        .unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(5);
    let delivered = loop {
        let got = hooks.received_requests().await.unwrap_or_default();
        if let Some(r) = got.first() {
            break String::from_utf8_lossy(&r.body).into_owned();
        }
        assert!(std::time::Instant::now() < until, "no answer delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(delivered.contains("one-time link"), "{delivered}");
    assert!(!delivered.contains("/redirect/") && !answer.contains("/redirect/"));
    assert_eq!(portal.mints("e1").await, 0);
    redis.thaw();
    app.stop().await;
}
