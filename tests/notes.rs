//! Notes on the customer's Planhat timeline (`[planhat.notes] enabled`), as Planhat would see
//! them: each portal opened through signed Slack commands becomes a Note in a bulk
//! `PUT /conversations`, batched, with no URL in it; and a Notes call that hangs or fails never
//! delays a link, and a failed batch is tried again.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn planhat(notes: ResponseTemplate) -> MockServer {
    let p = MockServer::start().await;
    for id in ["e1", "e2", "e3"] {
        planhat_link(&p, id, &format!("tok-{id}")).await;
        Mock::given(method("GET"))
            .and(path(format!("/endusers/{id}")))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "_id": id, "name": format!("Jane {id}"), "companyId": "c-acme", "companyName": "Acme"
            })))
            .mount(&p)
            .await;
    }
    Mock::given(method("PUT"))
        .and(path("/conversations"))
        .respond_with(notes)
        .mount(&p)
        .await;
    p
}

fn app_config(p: &MockServer) -> portal_bot::Config {
    config(
        &p.uri(),
        &format!(
            "[planhat.notes]\nenabled = true\n\
             [slack]\nmode = \"http\"\nsigning_secret = \"{SIGNING_SECRET}\"\nbot_token = \"{BOT_TOKEN}\"\n\
             api_url = \"http://127.0.0.1:9/api\"\n\
             [access]\nslack_users = [\"U1\"]\n[limits]\nper_user_per_minute = 1000\n"
        ),
    )
}

async fn ask(app: &portal_bot::Running, id: &str, n: usize) -> (String, Duration) {
    let body = slash_body(
        "U1",
        "C1",
        id,
        "http://127.0.0.1:9/hook",
        &format!("trig-notes-{id}-{n}"),
    );
    let started = Instant::now();
    let r = post_slack(
        &format!("http://{}", app.addr),
        "/slack/commands",
        SIGNING_SECRET,
        body,
    )
    .await;
    let took = started.elapsed();
    (r.text().await.unwrap(), took)
}

async fn note_calls(p: &MockServer) -> Vec<Value> {
    p.received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.method.as_str() == "PUT" && r.url.path() == "/conversations")
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_portal_opened_leaves_a_note_written_in_one_batch_without_a_url() {
    let p =
        planhat(ResponseTemplate::new(200).set_body_json(serde_json::json!({"created": 3}))).await;
    let app = spawn(app_config(&p)).await;
    for (n, id) in ["e1", "e2", "e3"].iter().enumerate() {
        let (answer, _) = ask(&app, id, n).await;
        assert!(answer.contains(&format!("/redirect/tok-{id}")), "{answer}");
    }
    let mut calls = Vec::new();
    for _ in 0..60 {
        calls = note_calls(&p).await;
        if !calls.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(calls.len(), 1, "one batch: {calls:?}");
    let notes = calls[0].as_array().expect("an array of notes");
    assert_eq!(notes.len(), 3);
    for note in notes {
        assert_eq!(note["type"], "note");
        assert_eq!(note["companyId"], "c-acme");
        assert!(
            note["subject"]
                .as_str()
                .unwrap()
                .starts_with("Portal opened as Jane e"),
            "{note}"
        );
        let d = note["description"].as_str().unwrap();
        assert!(
            d.contains("slack user U1 opened the customer portal as Jane"),
            "{d}"
        );
        assert!(
            !note.to_string().contains("redirect"),
            "no URL in a Note: {note}"
        );
    }
    let metrics = reqwest::get(format!("http://{}/metrics", app.metrics_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("portal_bot_planhat_notes_total{reason=\"written\"} 3"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_or_failing_notes_call_never_delays_a_link_and_is_retried() {
    // Planhat's Notes call fails: links are as quick as ever, and the batch is tried again.
    let p = planhat(ResponseTemplate::new(500)).await;
    let app = spawn(app_config(&p)).await;
    let (answer, took) = ask(&app, "e1", 0).await;
    assert!(answer.contains("/redirect/tok-e1"));
    assert!(took < Duration::from_secs(1), "{took:?}");
    for _ in 0..60 {
        if note_calls(&p).await.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        note_calls(&p).await.len() >= 2,
        "a failed batch is tried again"
    );
    let (answer, took) = ask(&app, "e2", 1).await;
    assert!(answer.contains("/redirect/tok-e2") && took < Duration::from_secs(1));
    app.stop().await;

    // It hangs (longer than the timeout): links still don't wait.
    let p = planhat(ResponseTemplate::new(200).set_delay(Duration::from_secs(30))).await;
    let app = spawn(app_config(&p)).await;
    for n in 0..3 {
        let (answer, took) = ask(&app, "e3", n + 10).await;
        assert!(answer.contains("/redirect/tok-e3"), "{answer}");
        assert!(took < Duration::from_secs(1), "{took:?}");
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    app.stop().await;
}
