//! Asking the owner (`[approvals]`), driven as Slack would drive it: signed slash commands,
//! `block_actions` clicks, `view_submission` forms, against a fake Slack Web API that records
//! `views.open`, `users.lookupByEmail`, `conversations.open`, `chat.postMessage` and
//! `chat.update`, and a fake Planhat where Dana owns Other Co and Casey owns Own Co.
//!
//! The asker (Casey, U1) is refused for Other Co's end user with **Ask the owner**; the form
//! insists on a reason; the request reaches Dana (U2) by direct message; Casey can't approve
//! their own request, nor can a colleague who owns nothing; Dana's Approve updates the request
//! in place, tells Casey, and lets Casey open Other Co's end users (a second one too) without
//! asking again; a second decision is refused; every step is in the audit trail with the
//! reason. Deny, expiry, break-glass and a decision through another replica on one real Redis
//! follow.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

async fn planhat() -> MockServer {
    let p = MockServer::start().await;
    for (id, company) in [
        ("e-own", "c-own"),
        ("e-other", "c-other"),
        ("e-other2", "c-other"),
    ] {
        planhat_link(&p, id, &format!("tok-{id}")).await;
        Mock::given(method("GET"))
            .and(path(format!("/endusers/{id}")))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "_id": id, "name": format!("User {id}"), "companyId": company,
                "companyName": if company == "c-own" { "Own Co" } else { "Other Co" }
            })))
            .mount(&p)
            .await;
    }
    for (id, body) in [
        (
            "c-own",
            json!({"_id": "c-own", "name": "Own Co", "owner": "u-casey"}),
        ),
        (
            "c-other",
            json!({"_id": "c-other", "name": "Other Co", "owner": "u-dana"}),
        ),
    ] {
        Mock::given(method("GET"))
            .and(path(format!("/companies/{id}")))
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
            .mount(&p)
            .await;
    }
    Mock::given(method("PUT"))
        .and(path("/conversations"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"created": 1})))
        .mount(&p)
        .await;
    Mock::given(method("GET"))
        .and(path("/users"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            {"_id": "u-casey", "email": "casey@acme.com"},
            {"_id": "u-dana", "email": "dana@acme.com"}
        ])))
        .mount(&p)
        .await;
    p
}

/// Slack's people: Casey (U1) asks, Dana (U2) owns Other Co, Erin (U4) owns nothing, Olive
/// (U5) is on call (user group SONCALL).
async fn slack_api() -> MockServer {
    let s = MockServer::start().await;
    let ok = |body: Value| ResponseTemplate::new(200).set_body_json(body);
    Mock::given(path("/api/auth.test"))
        .respond_with(ok(
            json!({"ok": true, "team_id": "T0001", "user_id": "UBOT"}),
        ))
        .mount(&s)
        .await;
    for (user, email) in [
        ("U1", "casey@acme.com"),
        ("U2", "dana@acme.com"),
        ("U4", "erin@acme.com"),
        ("U5", "olive@acme.com"),
        ("UADM", "admin@acme.com"),
    ] {
        Mock::given(method("GET"))
            .and(path("/api/users.info"))
            .and(query_param("user", user))
            .respond_with(ok(json!({"ok": true, "user": {
                "id": user, "team_id": "T0001", "deleted": false, "is_email_confirmed": true,
                "profile": {"email": email}}})))
            .mount(&s)
            .await;
        Mock::given(path("/api/users.lookupByEmail"))
            .and(query_param("email", email))
            .respond_with(ok(json!({"ok": true, "user": {"id": user}})))
            .mount(&s)
            .await;
    }
    Mock::given(path("/api/usergroups.users.list"))
        .respond_with(ok(json!({"ok": true, "users": ["U5"]})))
        .mount(&s)
        .await;
    Mock::given(path("/api/conversations.open"))
        .respond_with(|r: &Request| {
            let body: Value = serde_json::from_slice(&r.body).unwrap_or_default();
            // slack-morphism sends `users` as a list or a comma-separated string.
            let user = match &body["users"] {
                Value::Array(a) => a.first().and_then(Value::as_str).unwrap_or("X").to_string(),
                v => v.as_str().unwrap_or("X").to_string(),
            };
            ResponseTemplate::new(200)
                .set_body_json(json!({"ok": true, "channel": {"id": format!("D-{user}")}}))
        })
        .mount(&s)
        .await;
    for method_ in ["chat.postMessage", "chat.update", "views.open"] {
        Mock::given(path(format!("/api/{method_}")))
            .respond_with(ok(
                json!({"ok": true, "channel": "D", "ts": "1700000001.000200"}),
            ))
            .mount(&s)
            .await;
    }
    s
}

/// The requests Slack's fake received for `method_`, as JSON bodies.
async fn calls(s: &MockServer, method_: &str) -> Vec<Value> {
    s.received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.url.path() == format!("/api/{method_}"))
        .map(|r| {
            serde_json::from_slice(&r.body).unwrap_or_else(|_| {
                // Form-encoded calls: turn the pairs into an object.
                let map: serde_json::Map<String, Value> = url::form_urlencoded::parse(&r.body)
                    .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                    .collect();
                Value::Object(map)
            })
        })
        .collect()
}

/// Waits until `f` holds (the work after a click runs in its own task).
async fn until<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    for _ in 0..100 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

struct Bot {
    app: portal_bot::Running,
    hooks: MockServer,
    audit: std::path::PathBuf,
}

fn toml(slack: &MockServer, audit: &std::path::Path, extra: &str) -> String {
    format!(
        "[slack]\nmode = \"http\"\nsigning_secret = \"{SIGNING_SECRET}\"\nbot_token = \"{BOT_TOKEN}\"\n\
         api_url = \"{}/api\"\n\
         [access]\nscope = \"owned\"\nslack_users = [\"U1\", \"U2\", \"U4\", \"U5\"]\nadmin_slack_users = [\"UADM\"]\n\
         [approvals]\ngrant_for = \"1h\"\nrequest_ttl = \"30m\"\nbreak_glass_slack_usergroups = [\"SONCALL\"]\n\
         [limits]\nper_user_per_minute = 1000\n\
         [audit]\npath = \"{}\"\n{extra}",
        slack.uri(),
        audit.display(),
    )
}

async fn bot(planhat: &MockServer, slack: &MockServer, name: &str, extra: &str) -> Bot {
    bot_with(planhat, slack, name, extra, |_| {}).await
}

/// [`bot`] with the parsed config changed by `tweak` (times shorter than the file allows).
async fn bot_with(
    planhat: &MockServer,
    slack: &MockServer,
    name: &str,
    extra: &str,
    tweak: impl FnOnce(&mut portal_bot::Config),
) -> Bot {
    let dir = std::env::temp_dir().join(format!("pb-approvals-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let audit = dir.join("audit.jsonl");
    let mut cfg = config(&planhat.uri(), &toml(slack, &audit, extra));
    tweak(&mut cfg);
    let app = spawn(cfg).await;
    let hooks = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .mount(&hooks)
        .await;
    Bot { app, hooks, audit }
}

impl Bot {
    fn base(&self) -> String {
        format!("http://{}", self.app.addr)
    }

    fn hook(&self, who: &str) -> String {
        format!("{}/hook/{who}", self.hooks.uri())
    }

    async fn ask(&self, user: &str, text: &str) -> String {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let body = slash_body(
            user,
            "C1",
            text,
            &self.hook(user),
            &format!("trig-appr-{n}"),
        );
        let r = post_slack(&self.base(), "/slack/commands", SIGNING_SECRET, body).await;
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }

    async fn click(&self, user: &str, action: &str, value: &str) {
        let body = block_actions(user, action, value, &self.hook(user));
        let r = post_slack(&self.base(), "/slack/interactions", SIGNING_SECRET, body).await;
        assert_eq!(r.status(), 200);
    }

    /// Submits the form Slack opened last (its `private_metadata` and callback) with `reason`.
    async fn submit(&self, slack: &MockServer, user: &str, reason: &str) -> String {
        let views = calls(slack, "views.open").await;
        let view = &views.last().expect("a form was opened")["view"];
        let payload = json!({
            "type": "view_submission",
            "team": {"id": "T0001", "domain": "acme"},
            "user": {"id": user, "team_id": "T0001"},
            "trigger_id": "trig-submit",
            "view": {
                "id": "V1", "team_id": "T0001", "type": "modal", "hash": "h1",
                "title": view["title"], "blocks": view["blocks"],
                "callback_id": view["callback_id"], "private_metadata": view["private_metadata"],
                "state": {"values": {"reason": {"reason": {"type": "plain_text_input", "value": reason}}}}
            }
        });
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", &payload.to_string())
            .finish();
        let r = post_slack(&self.base(), "/slack/interactions", SIGNING_SECRET, body).await;
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }

    /// Casey (U1) is refused for Other Co's end user, asks the owner through the form with
    /// [`REASON`], and the request reaches Slack: its id.
    async fn request_to_owner(&self, slack: &MockServer) -> String {
        let forms = calls(slack, "views.open").await.len();
        let posts = calls(slack, "chat.postMessage").await.len();
        self.ask("U1", "e-other").await;
        self.click("U1", "ask_owner", "U1:e-other").await;
        until("the form", || async {
            calls(slack, "views.open").await.len() > forms
        })
        .await;
        self.submit(slack, "U1", REASON).await;
        until("the request", || async {
            calls(slack, "chat.postMessage").await.len() > posts
        })
        .await;
        request_id(slack).await
    }

    /// What was posted to `who`'s response_url, in order.
    async fn told(&self, who: &str) -> Vec<String> {
        self.hooks
            .received_requests()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.url.path() == format!("/hook/{who}"))
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .collect()
    }

    fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    async fn audited(&self, action: &str, outcome: &str) -> Vec<Value> {
        for _ in 0..40 {
            let found: Vec<Value> = self
                .audit()
                .into_iter()
                .filter(|e| e["action"] == action && e["outcome"] == outcome)
                .collect();
            if !found.is_empty() {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Vec::new()
    }
}

fn has_link(answer: &str, id: &str) -> bool {
    answer.contains(&format!("/redirect/tok-{id}"))
}

/// The id of the request posted last (the value of its Approve button).
async fn request_id(slack: &MockServer) -> String {
    let posts = calls(slack, "chat.postMessage").await;
    posts
        .iter()
        .rev()
        .find_map(|p| {
            p["blocks"].as_array()?.iter().find_map(|b| {
                b["elements"].as_array()?.iter().find_map(|e| {
                    (e["action_id"] == "approve").then(|| e["value"].as_str().unwrap().to_string())
                })
            })
        })
        .expect("a request with an Approve button was posted")
}

const REASON: &str = "Escalation 4411: their admin can't see invoices";

#[tokio::test(flavor = "multi_thread")]
async fn ask_the_owner_approve_and_open_that_companys_end_users_without_asking_again() {
    let (planhat, slack) = (planhat().await, slack_api().await);
    let b = bot(
        &planhat,
        &slack,
        "approve",
        "[planhat.notes]\nenabled = true\n",
    )
    .await;

    // Refused for someone else's company, with the way to ask; no link.
    let answer = b.ask("U1", "e-other").await;
    assert!(answer.contains("not one of yours"), "{answer}");
    assert!(answer.contains("\"ask_owner\""), "{answer}");
    assert!(
        !answer.contains("break_glass"),
        "only on-call may open anyway: {answer}"
    );
    assert!(!has_link(&answer, "e-other"));

    // Someone else can't ask from Casey's refusal; Casey's click opens the form.
    b.click("U4", "ask_owner", "U1:e-other").await;
    b.click("U1", "ask_owner", "U1:e-other").await;
    until("the form", || async {
        calls(&slack, "views.open").await.len() == 1
    })
    .await;
    let view = &calls(&slack, "views.open").await[0];
    assert_eq!(view["view"]["callback_id"], "portal_ask");
    assert_eq!(view["trigger_id"], "trig-ask_owner-U1-U1:e-other");

    // Too short a reason: the form says so and nothing is sent.
    let answer = b.submit(&slack, "U1", "pls").await;
    assert!(
        answer.contains("\"response_action\":\"errors\""),
        "{answer}"
    );
    assert!(answer.contains("at least 10 characters"), "{answer}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(calls(&slack, "chat.postMessage").await.is_empty());

    // A reason: Dana gets the request by direct message, Casey is told where it went.
    assert_eq!(b.submit(&slack, "U1", REASON).await, "");
    until("the request", || async {
        !calls(&slack, "chat.postMessage").await.is_empty()
    })
    .await;
    let posted = calls(&slack, "chat.postMessage").await;
    assert_eq!(posted[0]["channel"], "D-U2", "{posted:?}");
    let text = posted[0]["text"].as_str().unwrap();
    assert!(
        text.contains("<@U1>") && text.contains("Other Co") && text.contains("Escalation 4411"),
        "{text}"
    );
    let id = request_id(&slack).await;
    until("Casey told", || async {
        b.told("U1")
            .await
            .iter()
            .any(|t| t.contains("went to the company"))
    })
    .await;

    // Casey can't approve their own request; Erin, who owns nothing, can't either.
    b.click("U1", "approve", &id).await;
    b.click("U4", "approve", &id).await;
    until("refusals", || async {
        b.told("U1")
            .await
            .iter()
            .any(|t| t.contains("your own request"))
            && b.told("U4")
                .await
                .iter()
                .any(|t| t.contains("Only the company"))
    })
    .await;
    assert!(calls(&slack, "chat.update").await.is_empty());
    assert!(!has_link(&b.ask("U1", "e-other").await, "e-other"));

    // Dana approves: the request is updated in place and Casey is told in a direct message.
    b.click("U2", "approve", &id).await;
    until("the update", || async {
        !calls(&slack, "chat.update").await.is_empty()
    })
    .await;
    let update = &calls(&slack, "chat.update").await[0];
    assert_eq!(update["channel"], "D-U2");
    let text = update["text"].as_str().unwrap();
    assert!(text.contains("Approved by <@U2>"), "{text}");
    assert!(
        !update.to_string().contains("\"approve\""),
        "buttons gone: {update}"
    );
    until("Casey's DM", || async {
        calls(&slack, "chat.postMessage")
            .await
            .iter()
            .any(|p| p["channel"] == "D-U1" && p.to_string().contains("granted_link"))
    })
    .await;
    let dm = calls(&slack, "chat.postMessage")
        .await
        .into_iter()
        .find(|p| p["channel"] == "D-U1")
        .unwrap();
    assert!(
        !dm.to_string().contains("/redirect/"),
        "no signed URL sits in a DM: {dm}"
    );

    // Casey now opens Other Co's end users, a second one too, without a new request.
    assert!(has_link(&b.ask("U1", "e-other").await, "e-other"));
    assert!(has_link(&b.ask("U1", "e-other2").await, "e-other2"));
    // The DM's button mints when pressed, shown only to Casey beside it.
    b.click("U1", "granted_link", "U1:e-other").await;
    until("the pressed link", || async {
        b.told("U1")
            .await
            .iter()
            .any(|t| has_link(t, "e-other") && !t.contains("replace_original"))
    })
    .await;
    // Erin still can't.
    assert!(!has_link(&b.ask("U4", "e-other").await, "e-other"));

    // A second decision on the same request is refused.
    b.click("U5", "approve", &id).await;
    let refused = b.audited("approve", "not_approver").await;
    assert!(!refused.is_empty());

    // Every step is audited with its reason and approver; no URL in the trail.
    let requested = b.audited("request", "ok").await;
    assert_eq!(requested.len(), 1);
    assert_eq!(requested[0]["reason"], REASON);
    assert_eq!(requested[0]["asker"], "U1");
    let approved = b.audited("approve", "ok").await;
    assert_eq!(approved.len(), 1);
    assert_eq!(approved[0]["asker"], "U1");
    assert_eq!(approved[0]["approver"], "slack:U2");
    let links: Vec<Value> = b
        .audit()
        .into_iter()
        .filter(|e| e["action"] == "link" && e["outcome"] == "ok")
        .collect();
    assert!(
        links
            .iter()
            .all(|e| e["approver"] == "slack:U2" && e["reason"] == REASON),
        "{links:?}"
    );
    assert!(!std::fs::read_to_string(&b.audit)
        .unwrap()
        .contains("/redirect/"));
    b.app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denial_with_its_reason_reaches_the_asker_and_opens_nothing() {
    let (planhat, slack) = (planhat().await, slack_api().await);
    let b = bot(&planhat, &slack, "deny", "").await;
    let id = b.request_to_owner(&slack).await;

    // Deny opens its own form; the reason is optional and reaches the asker.
    b.click("U2", "deny", &id).await;
    until("the deny form", || async {
        calls(&slack, "views.open").await.len() == 2
    })
    .await;
    assert_eq!(
        calls(&slack, "views.open").await[1]["view"]["callback_id"],
        "portal_deny"
    );
    assert_eq!(b.submit(&slack, "U2", "Ask Dana's team lead").await, "");
    until("Casey told", || async {
        calls(&slack, "chat.postMessage").await.iter().any(|p| {
            p["channel"] == "D-U1" && {
                let text = p["text"].as_str().unwrap_or("");
                text.contains("<@U2> denied your request") && text.contains(": Ask Dana")
            }
        })
    })
    .await;
    let update = &calls(&slack, "chat.update").await[0];
    assert!(update["text"].as_str().unwrap().contains("Denied by <@U2>"));
    assert!(!has_link(&b.ask("U1", "e-other").await, "e-other"));
    let denied = b.audited("deny", "ok").await;
    assert_eq!(denied[0]["reason"], "Ask Dana's team lead");
    // Approving after the denial is refused.
    b.click("U2", "approve", &id).await;
    assert!(!b.audited("approve", "already_decided").await.is_empty());
    b.app.stop().await;

    // The auditor finds the decisions by action.
    let cfg = b.audit.with_file_name("audit-reader.toml");
    std::fs::write(&cfg, format!("[audit]\npath = \"{}\"\n", b.audit.display())).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portal-bot"))
        .args([
            "audit",
            "--config",
            cfg.to_str().unwrap(),
            "--action",
            "deny",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["action"], "deny");
    assert_eq!(lines[0]["approver"], "slack:U2");
}

#[tokio::test(flavor = "multi_thread")]
async fn on_call_opens_anyway_with_a_reason_and_the_owner_is_told() {
    let (planhat, slack) = (planhat().await, slack_api().await);
    let b = bot(&planhat, &slack, "glass", "").await;
    // Olive (on call) sees both ways; wait for the user-group cache's first fill.
    let mut answer = String::new();
    for _ in 0..40 {
        answer = b.ask("U5", "e-other").await;
        if answer.contains("break_glass") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        answer.contains("\"break_glass\"") && answer.contains("\"ask_owner\""),
        "{answer}"
    );
    // Someone not on call who crafts the click gets a form, and then a refusal, never a link.
    b.click("U1", "break_glass", "U1:e-other").await;
    until("the form", || async {
        calls(&slack, "views.open").await.len() == 1
    })
    .await;
    b.submit(&slack, "U1", REASON).await;
    until("refusal", || async {
        b.told("U1").await.iter().any(|t| t.contains("on-call"))
    })
    .await;
    assert!(!b.told("U1").await.iter().any(|t| has_link(t, "e-other")));

    // Without a reason: refused in the form.
    b.click("U5", "break_glass", "U5:e-other").await;
    until("the form", || async {
        calls(&slack, "views.open").await.len() == 2
    })
    .await;
    assert!(b.submit(&slack, "U5", "").await.contains("response_action"));
    // With one: the link replaces the refusal, and Dana is told afterwards.
    assert_eq!(
        b.submit(&slack, "U5", "Sev1 incident 77: portal down for them")
            .await,
        ""
    );
    until("the link", || async {
        b.told("U5").await.iter().any(|t| has_link(t, "e-other"))
    })
    .await;
    until("Dana told", || async {
        calls(&slack, "chat.postMessage").await.iter().any(|p| {
            p["channel"] == "D-U2" && p["text"].as_str().unwrap_or("").contains("break-glass")
        })
    })
    .await;
    let glass = b.audited("break_glass", "ok").await;
    assert_eq!(glass[0]["reason"], "Sev1 incident 77: portal down for them");
    let link = b.audited("link", "ok").await;
    assert_eq!(link[0]["approver"], "break_glass");
    assert!(!b.audited("break_glass", "not_on_call").await.is_empty());
    b.app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_owners_at_once_make_one_decision_and_another_replica_can_decide() {
    let (planhat, slack) = (planhat().await, slack_api().await);
    let (url, prefix) = common::redis::shared();
    let state = common::redis::state_toml(&url, &prefix);
    // Two replicas on one Redis; the request is made through A.
    let a = bot(&planhat, &slack, "replica-a", &state).await;
    let b = bot(&planhat, &slack, "replica-b", &state).await;
    let id = a.request_to_owner(&slack).await;

    // The owner (through B) and an admin (through A) approve at once: one decision is taken.
    tokio::join!(
        b.click("U2", "approve", &id),
        a.click("UADM", "approve", &id)
    );
    until("one update", || async {
        !calls(&slack, "chat.update").await.is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let approvals = a.audited("approve", "ok").await.len() + b.audited("approve", "ok").await.len();
    let refused = a.audited("approve", "already_decided").await.len()
        + b.audited("approve", "already_decided").await.len();
    assert_eq!((approvals, refused), (1, 1));
    // The grant holds on both replicas.
    assert!(has_link(&a.ask("U1", "e-other").await, "e-other"));
    assert!(has_link(&b.ask("U1", "e-other2").await, "e-other2"));
    a.app.stop().await;
    b.app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unanswered_request_expires_its_buttons_say_so_and_the_asker_is_told() {
    let (planhat, slack) = (planhat().await, slack_api().await);
    let b = bot_with(&planhat, &slack, "expire", "", |c| {
        if let Some(a) = c.approvals.as_mut() {
            a.request_ttl = Duration::from_secs(1);
        }
    })
    .await;
    let id = b.request_to_owner(&slack).await;
    until("the expiry", || async {
        !calls(&slack, "chat.update").await.is_empty()
    })
    .await;
    let update = &calls(&slack, "chat.update").await[0];
    assert!(
        update["text"].as_str().unwrap().contains("Expired"),
        "{update}"
    );
    assert!(!update.to_string().contains("\"approve\""));
    until("Casey told", || async {
        calls(&slack, "chat.postMessage")
            .await
            .iter()
            .any(|p| p["channel"] == "D-U1" && p["text"].as_str().unwrap_or("").contains("expired"))
    })
    .await;
    assert_eq!(b.audited("expire", "ok").await.len(), 1);
    // Too late to approve.
    b.click("U2", "approve", &id).await;
    assert!(!b.audited("approve", "gone").await.is_empty());
    assert!(!has_link(&b.ask("U1", "e-other").await, "e-other"));
    b.app.stop().await;
}

const CASEY: u64 = 1500000000000000005;
const DANA: u64 = 1500000000000000009;

/// A Discord user clicking in a direct message (no guild, no member).
fn dm_click(id: u64, user: u64, custom_id: &str) -> Value {
    let mut message = common::discord::message_json(1800000000000000100, "request");
    message["channel_id"] = json!(format!("9{}", &user.to_string()[2..]));
    json!({
        "id": id.to_string(), "application_id": APP_ID.to_string(), "type": 3,
        "token": format!("itok-{id}"), "version": 1, "channel_id": format!("9{}", &user.to_string()[2..]),
        "locale": "en-US", "entitlements": [], "attachment_size_limit": 8388608,
        "user": {"id": user.to_string(), "username": "dm-user"},
        "data": {"custom_id": custom_id, "component_type": 2},
        "message": message
    })
}

/// A modal submitted in the guild by `user`.
fn modal_submit(id: u64, user: u64, custom_id: &str, reason: &str) -> Value {
    json!({
        "id": id.to_string(), "application_id": APP_ID.to_string(), "type": 5,
        "token": format!("itok-{id}"), "version": 1, "guild_id": GUILD.to_string(),
        "channel_id": CHANNEL.to_string(), "locale": "en-US", "entitlements": [],
        "attachment_size_limit": 8388608,
        "member": {"user": {"id": user.to_string(), "username": "csm"}, "roles": [],
                   "deaf": false, "mute": false, "flags": 0},
        "data": {"custom_id": custom_id, "components": [{"type": 1, "components": [
            {"type": 4, "custom_id": "reason", "value": reason}]}]}
    })
}

async fn post_discord_json(app: &portal_bot::Running, body: &Value) -> Value {
    let r = post_discord(&format!("http://{}", app.addr), body.to_string()).await;
    assert_eq!(r.status(), 200, "{body}");
    r.json().await.unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread")]
async fn on_discord_the_owner_approves_in_a_direct_message_and_the_asker_opens_it() {
    let planhat = planhat().await;
    let fake = common::discord::FakeDiscord::start("ws://127.0.0.1:9").await;
    let extra = format!(
        "[discord]\nmode = \"http\"\ntoken = \"{DISCORD_TOKEN}\"\napplication_id = \"{APP_ID}\"\n\
         public_key = \"{}\"\nguild_ids = [\"{GUILD}\"]\napi_url = \"{}\"\n\
         [access]\nscope = \"owned\"\ndiscord_users = [\"{CASEY}\", \"{DANA}\"]\n\
         discord_emails = {{ \"{CASEY}\" = \"casey@acme.com\", \"{DANA}\" = \"dana@acme.com\" }}\n\
         [approvals]\n[limits]\nper_user_per_minute = 1000\n",
        discord_public_key_hex(),
        fake.api_url()
    );
    let app = spawn(config(&planhat.uri(), &extra)).await;

    // Refused for Other Co, with "Ask the owner".
    let answer = post_discord_json(
        &app,
        &discord_command(1900000000000000001, CASEY, &[], "e-other"),
    )
    .await;
    let text = answer.to_string();
    assert!(text.contains("not one of yours"), "{text}");
    assert!(text.contains(&format!("ask:{CASEY}:e-other")), "{text}");

    // The button opens the form (type 9); a short reason is refused, a real one is sent.
    let mut click = discord_command(1900000000000000002, CASEY, &[], "e-other");
    click["type"] = json!(3);
    click["data"] = json!({"custom_id": format!("ask:{CASEY}:e-other"), "component_type": 2});
    click["message"] = common::discord::message_json(1800000000000000008, "refused");
    let form = post_discord_json(&app, &click).await;
    assert_eq!(form["type"], 9, "{form}");
    assert_eq!(form["data"]["custom_id"], "ask|e-other");
    let short = post_discord_json(
        &app,
        &modal_submit(1900000000000000003, CASEY, "ask|e-other", "pls"),
    )
    .await;
    assert!(
        short.to_string().contains("at least 10 characters"),
        "{short}"
    );
    let sent = post_discord_json(
        &app,
        &modal_submit(1900000000000000004, CASEY, "ask|e-other", REASON),
    )
    .await;
    assert_eq!(sent["type"], 5, "deferred: {sent}");

    // Dana gets it in a direct message with Approve and Deny.
    let request = fake
        .wait_for("the request", |r| {
            r.method == "POST"
                && r.path == format!("/api/v10/channels/9{}/messages", &DANA.to_string()[2..])
        })
        .await;
    let body = request.json();
    assert!(
        body["content"]
            .as_str()
            .unwrap()
            .contains("Escalation 4411"),
        "{body}"
    );
    let approve = body["components"][0]["components"][0]["custom_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(approve.starts_with("approve:"), "{approve}");
    fake.wait_for("Casey told", |r| {
        r.method == "PATCH" && r.body.contains("went to the company")
    })
    .await;

    // Casey can't approve it; Dana can, from the direct message (no guild there).
    let own = post_discord_json(&app, &dm_click(1900000000000000005, CASEY, &approve)).await;
    assert!(own.to_string().contains("your own request"), "{own}");
    let ok = post_discord_json(&app, &dm_click(1900000000000000006, DANA, &approve)).await;
    assert!(ok.to_string().contains("Approved."), "{ok}");
    fake.wait_for("the request updated", |r| {
        r.method == "PATCH"
            && r.path.starts_with("/api/v10/channels/")
            && r.body.contains(&format!("Approved by <@{DANA}>"))
    })
    .await;
    let told = fake
        .wait_for("Casey's DM", |r| {
            r.method == "POST"
                && r.path == format!("/api/v10/channels/9{}/messages", &CASEY.to_string()[2..])
        })
        .await;
    let granted = told.json()["components"][0]["components"][0]["custom_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        !told.body.contains("/redirect/"),
        "no signed URL in a DM: {}",
        told.body
    );

    // Casey opens it now, and the DM's button mints on press.
    let link = post_discord_json(
        &app,
        &discord_command(1900000000000000007, CASEY, &[], "e-other"),
    )
    .await;
    assert!(link.to_string().contains("/redirect/tok-e-other"), "{link}");
    let pressed = post_discord_json(&app, &dm_click(1900000000000000008, CASEY, &granted)).await;
    assert!(
        pressed.to_string().contains("/redirect/tok-e-other"),
        "{pressed}"
    );
    assert_eq!(pressed["data"]["flags"], 64, "ephemeral: {pressed}");
    app.stop().await;
}
