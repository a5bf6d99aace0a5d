//! Book-of-business scope (`[access] scope = "owned"`), driven as Slack and Discord would: a
//! fake Planhat with end users, companies (owner, co-owner, none) and users with emails, and a
//! fake Slack `users.info`. Owners and co-owners get links, other CSMs a refusal that says why,
//! admins bypass, every broken link of the chain refuses (never a link), and cached lookups add
//! no Planhat call to the next link.

mod common;

use common::*;
use portal_bot::Running;
use serde_json::{json, Value};
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const DISCORD_CASEY: u64 = 1500000000000000005;
const DISCORD_STRANGER: u64 = 1500000000000000006;

async fn planhat() -> MockServer {
    let p = MockServer::start().await;
    let endusers = [
        ("e-own", Some("c-own")),
        ("e-co", Some("c-co")),
        ("e-other", Some("c-other")),
        ("e-orphan", Some("c-none")),
        ("e-nocomp", None),
        ("e-broken", Some("c-broken")),
    ];
    for (id, company) in endusers {
        planhat_link(&p, id, &format!("tok-{id}")).await;
        let mut body = json!({"_id": id, "name": format!("User {id}"), "companyName": "Acme"});
        if let Some(c) = company {
            body["companyId"] = json!(c);
        }
        Mock::given(method("GET"))
            .and(path(format!("/endusers/{id}")))
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
            .mount(&p)
            .await;
    }
    let companies = [
        (
            "c-own",
            json!({"_id": "c-own", "name": "Own Co", "owner": "u-casey"}),
        ),
        (
            "c-co",
            json!({"_id": "c-co", "name": "Co Co", "owner": "u-dana", "coOwner": "u-casey"}),
        ),
        (
            "c-other",
            json!({"_id": "c-other", "name": "Other Co", "owner": "u-dana"}),
        ),
        ("c-none", json!({"_id": "c-none", "name": "Orphan Co"})),
    ];
    for (id, body) in companies {
        Mock::given(method("GET"))
            .and(path(format!("/companies/{id}")))
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
            .mount(&p)
            .await;
    }
    Mock::given(method("GET"))
        .and(path("/companies/c-broken"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&p)
        .await;
    Mock::given(method("GET"))
        .and(path("/users"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            {"_id": "u-casey", "email": "Casey@Acme.com"},
            {"_id": "u-dana", "email": "dana@acme.com"}
        ])))
        .mount(&p)
        .await;
    p
}

async fn slack_api() -> MockServer {
    let s = MockServer::start().await;
    for (user, email) in [
        ("U1", Some("casey@acme.com")),
        ("UADM", Some("oncall@acme.com")),
        ("U3", None),
    ] {
        let mut profile = json!({});
        if let Some(e) = email {
            profile["email"] = json!(e);
        }
        Mock::given(method("GET"))
            .and(path("/api/users.info"))
            .and(query_param("user", user))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"ok": true, "user": {"id": user, "profile": profile}})),
            )
            .mount(&s)
            .await;
    }
    s
}

async fn app(planhat: &MockServer, slack: &MockServer) -> Running {
    let extra = format!(
        "[slack]\nmode = \"http\"\nsigning_secret = \"{SIGNING_SECRET}\"\nbot_token = \"{BOT_TOKEN}\"\n\
         api_url = \"{}/api\"\n\
         [discord]\nmode = \"http\"\ntoken = \"{DISCORD_TOKEN}\"\napplication_id = \"{APP_ID}\"\n\
         public_key = \"{}\"\nguild_ids = [\"{GUILD}\"]\napi_url = \"http://127.0.0.1:9/api/v10\"\n\
         [access]\nscope = \"owned\"\nslack_users = [\"U1\", \"U3\"]\nadmin_slack_users = [\"UADM\"]\n\
         discord_users = [\"{DISCORD_CASEY}\", \"{DISCORD_STRANGER}\"]\n\
         discord_emails = {{ \"{DISCORD_CASEY}\" = \"casey@acme.com\" }}\n\
         [limits]\nper_user_per_minute = 1000\n",
        slack.uri(),
        discord_public_key_hex(),
    );
    spawn(config(&planhat.uri(), &extra)).await
}

async fn ask(app: &Running, user: &str, text: &str) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let body = slash_body(
        user,
        "C1",
        text,
        "http://127.0.0.1:9/hook",
        &format!("trig-scope-{n}"),
    );
    let r = post_slack(
        &format!("http://{}", app.addr),
        "/slack/commands",
        SIGNING_SECRET,
        body,
    )
    .await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// Planhat calls other than the access check and the mint.
async fn lookups(p: &MockServer) -> usize {
    planhat_calls(p, "/endusers/").await
        + planhat_calls(p, "/companies/").await
        + planhat_calls(p, "/users").await
}

fn has_link(answer: &str, id: &str) -> bool {
    answer.contains(&format!("/redirect/tok-{id}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn owners_and_co_owners_get_links_others_are_refused_with_the_reason() {
    let (p, s) = (planhat().await, slack_api().await);
    let app = app(&p, &s).await;

    let own = ask(&app, "U1", "e-own").await;
    assert!(has_link(&own, "e-own"), "owner: {own}");
    let co = ask(&app, "U1", "e-co").await;
    assert!(has_link(&co, "e-co"), "co-owner: {co}");
    let other = ask(&app, "U1", "e-other").await;
    assert!(
        !other.contains("/redirect/"),
        "another CSM's company: {other}"
    );
    assert!(other.contains("Other Co is not one of yours"), "{other}");
    let admin = ask(&app, "UADM", "e-other").await;
    assert!(
        has_link(&admin, "e-other"),
        "admins bypass the scope: {admin}"
    );

    // Each link of the chain that can't be established refuses, and says why.
    for (user, id, says) in [
        ("U3", "e-own", "can't read your email from Slack"),
        ("U1", "e-nocomp", "names no company"),
        ("U1", "e-orphan", "no owner or co-owner"),
        ("U1", "e-broken", "could not check who owns"),
    ] {
        let answer = ask(&app, user, id).await;
        assert!(!answer.contains("/redirect/"), "{user} {id}: {answer}");
        assert!(answer.contains(says), "{user} {id}: {answer}");
    }

    // `check` says whether this asker may open it, and why not.
    let check = ask(&app, "U1", "check e-other").await;
    assert!(
        check.contains("has portal access, but you may not open it"),
        "{check}"
    );

    // Cached: the next link for a known end user costs Planhat only the access check and mint.
    let before = lookups(&p).await;
    let again = ask(&app, "U1", "e-own").await;
    assert!(has_link(&again, "e-own"), "{again}");
    assert_eq!(lookups(&p).await, before, "no lookup on the second link");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn discord_askers_are_matched_through_the_email_map() {
    let (p, s) = (planhat().await, slack_api().await);
    let app = app(&p, &s).await;
    let base = format!("http://{}", app.addr);
    let answer = |r: reqwest::Response| async move { r.text().await.unwrap() };
    let casey = answer(
        post_discord(
            &base,
            discord_command(1100000000000009001, DISCORD_CASEY, &[], "e-own").to_string(),
        )
        .await,
    )
    .await;
    assert!(has_link(&casey, "e-own"), "{casey}");
    let other = answer(
        post_discord(
            &base,
            discord_command(1100000000000009002, DISCORD_CASEY, &[], "e-other").to_string(),
        )
        .await,
    )
    .await;
    assert!(
        other.contains("not one of yours") && !other.contains("/redirect/"),
        "{other}"
    );
    let stranger = answer(
        post_discord(
            &base,
            discord_command(1100000000000009003, DISCORD_STRANGER, &[], "e-own").to_string(),
        )
        .await,
    )
    .await;
    let v: Value = serde_json::from_str(&stranger).unwrap();
    assert!(!stranger.contains("/redirect/"), "{stranger}");
    assert!(
        v.to_string().contains("access.discord_emails"),
        "{stranger}"
    );
    app.stop().await;
}
