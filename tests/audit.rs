//! The audit trail as its readers meet it: what the running app records (the end user's
//! company included), rotation under load, and `portal-bot audit` over a trail of rotated files.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use portal_bot::core::asker::{Asker, Groups, Platform};
use portal_bot::App;
use wiremock::matchers::{path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A fresh directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pb-audit-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn csm(user: &str) -> Asker {
    Asker {
        platform: Platform::Slack,
        user_id: user.into(),
        team_id: Some("T1".into()),
        channel_id: Some("C1".into()),
        groups: Groups::Known(vec![]),
    }
}

/// Planhat knowing `jane@acme.example` as end user `e1` of "Acme Corp", who may be minted for.
async fn planhat_with_jane() -> MockServer {
    let planhat = MockServer::start().await;
    planhat_link(&planhat, "e1", "audit-company-secret").await;
    Mock::given(path("/endusers"))
        .and(query_param("email", "jane@acme.example"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!([
            {"_id": "e1", "name": "Jane Doe", "companyName": "Acme Corp"}
        ])))
        .mount(&planhat)
        .await;
    planhat
}

/// The app, with `[access]` for U1 and `audit` as its trail.
fn app(planhat: &MockServer, audit: &Path, extra: &str) -> std::sync::Arc<App> {
    App::build(config(
        &planhat.uri(),
        &format!(
            "[access]\nslack_users = [\"U1\"]\n[limits]\nper_user_per_minute = 10000\n[audit]\npath = \"{}\"\n{extra}",
            audit.display()
        ),
    ))
    .unwrap()
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn events_name_the_end_users_company_when_the_bot_knows_it() {
    let dir = scratch("company");
    let trail = dir.join("audit.jsonl");
    let planhat = planhat_with_jane().await;
    let app = app(&planhat, &trail, "");
    app.portal.handle(&csm("U1"), "jane@acme.example").await;
    app.portal
        .handle(&csm("U1"), "check jane@acme.example")
        .await;
    app.portal.handle(&csm("U_NOPE"), "jane@acme.example").await;
    app.audit.close().await;

    let events = lines(&trail);
    let seen: Vec<(&str, &str, &serde_json::Value)> = events
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["outcome"].as_str().unwrap(),
                &e["company"],
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("link", "ok", &serde_json::json!("Acme Corp")),
            ("check", "ok", &serde_json::json!("Acme Corp")),
            // Refused before Planhat was asked: the bot doesn't know the company.
            ("link", "denied", &serde_json::Value::Null),
        ]
    );
    let text = std::fs::read_to_string(&trail).unwrap();
    assert!(!text.contains("audit-company-secret") && !text.contains("/redirect/"));
}
