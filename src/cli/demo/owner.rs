//! The demo's last leg: asking the owner. A third server with `scope = "owned"`,
//! `[approvals]` and `[planhat.notes]` against the same sandbox (where Casey owns Acme and
//! Dana owns Shared Ltd and Shared Co), and a stand-in for Slack's Web API (the people, their
//! direct messages, forms). Casey asks Dana and Dana approves; Olive, on call, opens one
//! anyway with a reason; the Notes the sandbox's Planhat received close it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use super::{show_slack, step, took, Slack};
use crate::core::config::Config;
use crate::sandbox::Sandbox;

const CASEY: &str = "U0CASEY";
const DANA: &str = "U0DANA";
const OLIVE: &str = "U0OLIVE";

/// Slack's people in the stand-in: user id, email (the sandbox's Planhat knows Casey's and
/// Dana's), and whether they are on call (user group S0ONCALL).
const PEOPLE: &[(&str, &str)] = &[
    (CASEY, "casey@sandbox.example"),
    (DANA, "dana@sandbox.example"),
    (OLIVE, "olive@sandbox.example"),
];

/// What the Web API stand-in was asked, in order: (method, body).
type Calls = Arc<Mutex<Vec<(String, Value)>>>;

pub(super) async fn owner_leg(
    config_text: &str,
    sandbox: &Sandbox,
    secret: &str,
) -> Result<(), String> {
    let (api, calls) = start_slack_api().await?;
    // The demo's base config with Slack's Web API pointed at this leg's stand-in, Discord off,
    // no search, and the scope, approvals and Notes on.
    let text = rebuild(&config_text.replace("[search]\n", ""), &api);
    let mut config = Config::parse(&text, &|_| None).map_err(|e| e.to_string())?;
    config.point_at_sandbox(&sandbox.base, sandbox.token());
    config.discord = None;
    let running = crate::start(config).await.map_err(|e| e.to_string())?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let slack = Slack {
        http,
        base: format!("http://{}", running.addr),
        secret: secret.to_string(),
        chat: api.trim_end_matches("/api").to_string(),
    };

    step("Asking the owner (scope = \"owned\"): Casey asks for pat-1, at Shared Ltd, which Dana owns");
    let t = Instant::now();
    let refused = slack.command_as(CASEY, "pat-1", 80).await?;
    show_slack(&refused);
    took(t);

    step("Casey presses \"Ask the owner\" and gives a reason in the form");
    let t = Instant::now();
    slack
        .click_as(CASEY, "ask_owner", &format!("{CASEY}:pat-1"))
        .await?;
    let view = wait_for(&calls, "views.open", |_| true).await?;
    slack
        .submit_as(
            CASEY,
            &view,
            "Escalation 4411: their admin can't see invoices",
        )
        .await?;
    let request = wait_for(&calls, "chat.postMessage", |b| {
        b["channel"] == format!("D-{DANA}")
    })
    .await?;
    println!("  Dana's direct message:");
    show_slack(&request);
    took(t);

    step("Dana presses Approve: the request says so in place, and Casey is told");
    let t = Instant::now();
    let id = button_value(&request, "approve").ok_or("the request has no Approve button")?;
    slack.click_as(DANA, "approve", &id).await?;
    let updated = wait_for(&calls, "chat.update", |_| true).await?;
    println!("  Dana's message now:");
    show_slack(&updated);
    let told = wait_for(&calls, "chat.postMessage", |b| {
        b["channel"] == format!("D-{CASEY}")
    })
    .await?;
    println!("  Casey's direct message:");
    show_slack(&told);
    took(t);

    step("Casey: /portal pat-1 again (no new request for Shared Ltd during the grant)");
    let t = Instant::now();
    show_slack(&slack.command_as(CASEY, "pat-1", 81).await?);
    took(t);

    step("Olive, on call, is refused for pat-2 (Shared Co) and presses \"Open anyway (on call)\"");
    let t = Instant::now();
    // The on-call user group is read at start; give its first fill a moment.
    let mut refused = Value::Null;
    for n in 0..20 {
        refused = slack.command_as(OLIVE, "pat-2", 82 + n).await?;
        if refused.to_string().contains("break_glass") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    show_slack(&refused);
    calls.lock().await.retain(|(m, _)| m != "views.open");
    slack
        .click_as(OLIVE, "break_glass", &format!("{OLIVE}:pat-2"))
        .await?;
    let view = wait_for(&calls, "views.open", |_| true).await?;
    slack
        .submit_as(OLIVE, &view, "Sev1 incident 77: their portal is down")
        .await?;
    let dana = wait_for(&calls, "chat.postMessage", |b| {
        b["channel"] == format!("D-{DANA}") && b.to_string().contains("break-glass")
    })
    .await?;
    println!("  Olive gets the link in place of the refusal; Dana is told:");
    show_slack(&dana);
    took(t);

    step("Planhat: the Notes on the companies' timelines (no URL in them)");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let notes: Value = reqwest::get(format!("{}notes", sandbox.base))
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    for note in notes.as_array().into_iter().flatten() {
        println!(
            "  {} — {}",
            note["companyId"].as_str().unwrap_or(""),
            note["description"].as_str().unwrap_or("")
        );
    }
    running.stop().await;
    Ok(())
}

/// The demo's base config, with this leg's sections.
fn rebuild(text: &str, api: &str) -> String {
    let mut out = String::new();
    let mut skip = false;
    for line in text.lines() {
        if line.starts_with('[') {
            skip = line.starts_with("[discord]") || line.starts_with("[access]");
        }
        if skip {
            continue;
        }
        if line.starts_with("api_url = ") {
            out.push_str(&format!("api_url = \"{api}\"\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&format!(
        "[access]\nscope = \"owned\"\nslack_users = [\"{CASEY}\", \"{DANA}\", \"{OLIVE}\"]\n\
         [approvals]\nbreak_glass_slack_usergroups = [\"S0ONCALL\"]\n\
         [planhat.notes]\nenabled = true\n"
    ));
    out
}

fn button_value(message: &Value, action_id: &str) -> Option<String> {
    message["blocks"]
        .as_array()?
        .iter()
        .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
        .find(|e| e["action_id"] == action_id)?["value"]
        .as_str()
        .map(str::to_string)
}

async fn wait_for(
    calls: &Calls,
    method: &str,
    want: impl Fn(&Value) -> bool,
) -> Result<Value, String> {
    for _ in 0..100 {
        if let Some((_, body)) = calls
            .lock()
            .await
            .iter()
            .rev()
            .find(|(m, b)| m == method && want(b))
        {
            return Ok(body.clone());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("Slack's stand-in never got {method}"))
}

impl Slack {
    async fn command_as(&self, user: &str, text: &str, n: u32) -> Result<Value, String> {
        let form = self.form(text, n).replace(super::SLACK_USER, user);
        self.post("/slack/commands", form, &self.secret)
            .await?
            .json()
            .await
            .map_err(|e| e.to_string())
    }

    /// Submits the form Slack opened (`views.open`'s body) with `reason`.
    async fn submit_as(&self, user: &str, opened: &Value, reason: &str) -> Result<(), String> {
        let view = &opened["view"];
        let payload = json!({
            "type": "view_submission", "team": {"id": "T0DEMO"}, "user": {"id": user},
            "view": {"id": "V0DEMO", "team_id": "T0DEMO", "type": "modal", "hash": "1",
                     "title": view["title"], "blocks": view["blocks"],
                     "callback_id": view["callback_id"], "private_metadata": view["private_metadata"],
                     "state": {"values": {"reason": {"reason": {"type": "plain_text_input", "value": reason}}}}}
        });
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", &payload.to_string())
            .finish();
        self.post("/slack/interactions", body, &self.secret)
            .await
            .map(|_| ())
    }
}

/// Slack's Web API as far as this leg needs it, on 127.0.0.1.
async fn start_slack_api() -> Result<(String, Calls), String> {
    let calls: Calls = Arc::default();
    let app = Router::new()
        .route("/api/{method}", post(web_api).get(web_api_get))
        .route(
            "/slack/response/{who}",
            post(|| async { Json(json!({"ok": true})) }),
        )
        .route("/health", get(|| async { "ok" }))
        .with_state(calls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((format!("http://{addr}/api"), calls))
}

async fn web_api_get(
    State(calls): State<Calls>,
    Path(method): Path<String>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Json<Value> {
    let _ = calls;
    let person = |pred: &dyn Fn(&(&str, &str)) -> bool| PEOPLE.iter().find(|p| pred(p)).copied();
    let answer = match method.as_str() {
        "auth.test" => json!({"ok": true, "team_id": "T0DEMO", "user_id": "U0BOT"}),
        "users.info" => match person(&|p| Some(p.0) == query.get("user").map(String::as_str)) {
            Some((id, email)) => json!({"ok": true, "user": {"id": id, "team_id": "T0DEMO",
                "deleted": false, "is_email_confirmed": true, "profile": {"email": email}}}),
            None => json!({"ok": false, "error": "user_not_found"}),
        },
        "users.lookupByEmail" => {
            match person(&|p| Some(p.1) == query.get("email").map(String::as_str)) {
                Some((id, _)) => json!({"ok": true, "user": {"id": id}}),
                None => json!({"ok": false, "error": "users_not_found"}),
            }
        }
        "usergroups.users.list" => json!({"ok": true, "users": [OLIVE]}),
        _ => json!({"ok": true}),
    };
    Json(answer)
}

async fn web_api(
    State(calls): State<Calls>,
    Path(method): Path<String>,
    body: axum::body::Bytes,
) -> Json<Value> {
    let body: Value = serde_json::from_slice(&body).unwrap_or_else(|_| {
        Value::Object(
            url::form_urlencoded::parse(&body)
                .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                .collect(),
        )
    });
    let answer = match method.as_str() {
        "conversations.open" => {
            let user = match &body["users"] {
                Value::Array(a) => a.first().and_then(Value::as_str).unwrap_or("").to_string(),
                v => v.as_str().unwrap_or("").to_string(),
            };
            json!({"ok": true, "channel": {"id": format!("D-{user}")}})
        }
        "chat.postMessage" | "chat.update" => json!({"ok": true, "ts": "1700000000.000100"}),
        "usergroups.users.list" => json!({"ok": true, "users": [OLIVE]}),
        _ => json!({"ok": true}),
    };
    calls.lock().await.push((method, body));
    Json(answer)
}
