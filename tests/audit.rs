//! The audit trail as its readers meet it: what the running app records (the end user's
//! company included), rotation under load, and `portal-bot audit` over a trail of rotated files.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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

// ---- portal-bot audit ------------------------------------------------------------------------

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portal-bot"))
        .args(args)
        .env_remove("PORTAL_BOT_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `portal-bot audit --config CONFIG ARGS…`, expecting success; returns stdout, stderr.
fn audit(config: &Path, args: &[&str]) -> (String, String) {
    let mut all = vec!["audit", "--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = run(&all);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {}",
        text(&out.stderr)
    );
    (text(&out.stdout), text(&out.stderr))
}

/// One stored line, as the bot writes them.
fn stored(time: &str, asker: &str, end_user: &str, company: Option<&str>, outcome: &str) -> String {
    serde_json::json!({
        "time": time, "platform": "slack", "team": "T1", "channel": "C1", "asker": asker,
        "action": "link", "end_user": end_user, "outcome": outcome, "latency_ms": 40,
        "company": company,
    })
    .to_string()
}

/// The data rows of a table (the header dropped).
fn rows(table: &str) -> Vec<&str> {
    table.lines().skip(1).collect()
}

/// A trail of three rotated files and the current one, with two unreadable lines and files
/// beside it that are not part of it. Returns the config naming it and every event line in the
/// order written.
fn sample_trail(name: &str) -> (PathBuf, Vec<String>) {
    let dir = scratch(name);
    let recent = humantime::format_rfc3339_millis(
        std::time::SystemTime::now() - std::time::Duration::from_secs(3600),
    )
    .to_string();
    let files: [(&str, Vec<String>); 4] = [
        (
            "audit.jsonl.2025-01-10",
            vec![
                stored(
                    "2025-01-10T09:00:00.000Z",
                    "U1",
                    "e1",
                    Some("Acme Corp"),
                    "ok",
                ),
                stored(
                    "2025-01-10T09:05:00.000Z",
                    "U2",
                    "e2",
                    Some("Globex"),
                    "denied",
                ),
                stored(
                    "2025-01-10T23:59:00.000Z",
                    "U1",
                    "e1",
                    Some("Acme Corp"),
                    "ok",
                ),
            ],
        ),
        (
            "audit.jsonl.2025-01-11",
            vec![
                stored(
                    "2025-01-11T10:00:00.000Z",
                    "U2",
                    "e3",
                    Some("Initech"),
                    "no_access",
                ),
                "this is not json".to_string(),
                stored(
                    "2025-01-11T11:00:00.000Z",
                    "U1",
                    "jane@acme.example",
                    Some("Acme Corp"),
                    "ok",
                ),
            ],
        ),
        (
            "audit.jsonl.2025-01-11.1",
            vec![
                stored(
                    "2025-01-11T12:00:00.000Z",
                    "U3",
                    "e1",
                    Some("ACME corp"),
                    "ok",
                ),
                r#"{"time":"2025-01-11T12:0"#.to_string(),
            ],
        ),
        (
            "audit.jsonl",
            vec![
                stored(&recent, "U1", "e2", Some("Globex"), "ok"),
                stored(&recent, "U2", "e1", None, "rate_limited"),
            ],
        ),
    ];
    let mut events = Vec::new();
    for (file, lines) in &files {
        let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(dir.join(file), body).unwrap();
        events.extend(lines.iter().filter(|l| l.ends_with('}')).cloned());
    }
    // Not part of the trail: never read.
    let stray = stored(
        "2025-01-09T00:00:00.000Z",
        "U_STRAY",
        "e1",
        Some("Acme Corp"),
        "ok",
    );
    for file in [
        "audit.jsonl.bak",
        "audit.jsonl.2025-01-09.gz",
        "other.jsonl.2025-01-09",
    ] {
        std::fs::write(dir.join(file), format!("{stray}\n")).unwrap();
    }
    let trail = dir.join("audit.jsonl");
    // Slack is on without its secrets: `serve` would refuse this file, reading the trail needn't.
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[slack]\nmode = \"http\"\n[audit]\npath = \"{}\"\nrotate = \"daily\"\n",
            trail.display()
        ),
    )
    .unwrap();
    (config, events)
}

#[test]
fn audit_shows_the_whole_trail_oldest_first_and_counts_what_it_could_not_read() {
    let (config, events) = sample_trail("table");
    let (out, err) = audit(&config, &[]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("TIME (UTC)")
            && lines[0].contains("END USER")
            && lines[0].ends_with("OUTCOME"),
        "{out}"
    );
    let rows = rows(&out);
    assert_eq!(rows.len(), events.len(), "{out}");
    assert!(
        rows[0].starts_with("2025-01-10 09:00:00  slack     U1     link    e1"),
        "{out}"
    );
    assert!(
        rows[3].contains("Initech") && rows[3].ends_with("no_access"),
        "{out}"
    );
    assert!(
        rows[7].contains("  -  ") && rows[7].ends_with("rate_limited"),
        "{out}"
    );
    assert!(
        !out.contains("U_STRAY"),
        "files that are not the trail's are not read"
    );
    assert!(err.contains("2 lines could not be read"), "{err}");
    // Columns line up: every row has OUTCOME where the header has it.
    let at = lines[0].find("OUTCOME").unwrap();
    for row in &rows {
        assert!(row.chars().nth(at).is_some_and(|c| c != ' '), "{row}");
    }
}

#[test]
fn audit_filters_by_asker_end_user_company_outcome_and_time() {
    let (config, _) = sample_trail("filters");
    let count = |args: &[&str]| rows(&audit(&config, args).0).len();
    assert_eq!(count(&["--asker", "U1"]), 4);
    assert_eq!(count(&["--asker", "u1"]), 0, "ids match exactly");
    assert_eq!(count(&["--enduser", "e1"]), 4);
    assert_eq!(
        count(&["--enduser", "JANE@acme.example"]),
        1,
        "emails in any case"
    );
    assert_eq!(
        count(&["--company", "acme"]),
        4,
        "any case, part of the name"
    );
    assert_eq!(count(&["--company", "Globex"]), 2);
    assert_eq!(count(&["--outcome", "denied"]), 1);
    assert_eq!(count(&["--since", "7d"]), 2);
    assert_eq!(count(&["--since", "2025-01-11"]), 5);
    assert_eq!(count(&["--since", "2025-01-11T11:30:00Z"]), 3);
    assert_eq!(
        count(&["--asker", "U1", "--company", "globex", "--since", "1d"]),
        1
    );

    let (out, err) = audit(&config, &["--outcome", "no_such_outcome"]);
    assert_eq!(out, "");
    assert!(err.contains("no events match"), "{err}");
}

#[test]
fn audit_json_gives_the_lines_exactly_as_stored() {
    let (config, events) = sample_trail("json");
    let (out, _) = audit(&config, &["--json"]);
    assert_eq!(out.lines().collect::<Vec<_>>(), events);
    let (out, _) = audit(&config, &["--json", "--company", "initech"]);
    assert_eq!(out, format!("{}\n", events[3]));
}

#[test]
fn audit_summary_counts_per_asker_company_and_outcome() {
    let (config, _) = sample_trail("summary");
    let (out, _) = audit(&config, &["--summary"]);
    assert!(
        out.starts_with("8 events, 2025-01-10 09:00:00 to "),
        "{out}"
    );
    for line in ["U1 (slack)  ", "Acme Corp  ", "(none)  ", "ok  "] {
        assert!(
            out.lines().any(|l| l.starts_with(line)),
            "{line:?} in {out}"
        );
    }

    let (out, err) = audit(&config, &["--summary", "--json"]);
    assert!(err.contains("2 lines could not be read"), "{err}");
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["events"], 8);
    assert_eq!(s["unreadable_lines"], 2);
    assert_eq!(s["first"], "2025-01-10T09:00:00.000Z");
    assert_eq!(
        s["askers"],
        serde_json::json!([
            {"platform": "slack", "asker": "U1", "events": 4},
            {"platform": "slack", "asker": "U2", "events": 3},
            {"platform": "slack", "asker": "U3", "events": 1},
        ])
    );
    // Companies as recorded (a differently written name is its own row), most events first.
    assert_eq!(
        s["companies"][0],
        serde_json::json!({"company": "Acme Corp", "events": 3})
    );
    assert_eq!(
        s["companies"][1],
        serde_json::json!({"company": "Globex", "events": 2})
    );
    assert!(s["companies"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!({"company": null, "events": 1})));
    assert_eq!(
        s["outcomes"][0],
        serde_json::json!({"outcome": "ok", "events": 5})
    );

    let (out, _) = audit(
        &config,
        &["--summary", "--json", "--asker", "U2", "--since", "7d"],
    );
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["events"], 1);
    assert_eq!(
        s["outcomes"],
        serde_json::json!([{"outcome": "rate_limited", "events": 1}])
    );
}

#[test]
fn audit_says_plainly_what_is_wrong_and_exits_2() {
    let dir = scratch("errors");
    let config = |name: &str, body: &str| {
        let file = dir.join(name);
        std::fs::write(&file, body).unwrap();
        file
    };
    let cases = [
        (
            config("none.toml", "[planhat]\ntoken = \"t\"\n"),
            vec![],
            "neither audit.path nor audit.database_url is set",
        ),
        (
            config(
                "missing.toml",
                &format!(
                    "[audit]\npath = \"{}\"\n",
                    dir.join("nothing.jsonl").display()
                ),
            ),
            vec![],
            "no audit trail there",
        ),
        (
            config(
                "bad.toml",
                "[audit]\npath = \"a.jsonl\"\nrotate = \"weekly\"\n",
            ),
            vec![],
            "audit.rotate: \"weekly\"",
        ),
        (
            config("ok.toml", "[audit]\npath = \"a.jsonl\"\n"),
            vec!["--since", "soon"],
            "--since",
        ),
        (
            dir.join("no-such-config.toml"),
            vec![],
            "cannot read config file",
        ),
    ];
    for (file, extra, said) in cases {
        let mut args = vec!["audit", "--config", file.to_str().unwrap()];
        args.extend(extra.iter().copied());
        let out = run(&args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(said), "{args:?}: {err}");
        assert_eq!(text(&out.stdout), "", "{args:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn what_the_running_app_records_rotated_shows_up_in_portal_bot_audit() {
    let dir = scratch("app");
    let trail = dir.join("audit.jsonl");
    let planhat = planhat_with_jane().await;
    let rotation = "rotate = \"1KB\"\nkeep = 1000\n";
    let first = app(&planhat, &trail, rotation);
    for _ in 0..20 {
        first.portal.handle(&csm("U1"), "e1").await;
        first.portal.handle(&csm("U1"), "jane@acme.example").await;
        first.portal.handle(&csm("U_NOPE"), "e1").await;
    }
    first.audit.close().await;
    let files = portal_bot::core::audit::files::trail(&trail).unwrap();
    assert!(
        files.len() > 5,
        "1 KB files: rotated {} times",
        files.len() - 1
    );

    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!("[audit]\npath = \"{}\"\n{rotation}", trail.display()),
    )
    .unwrap();
    let (out, err) = audit(&config, &["--json"]);
    assert!(!err.contains("could not be read"), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.len(),
        60,
        "every request once, across {} files",
        files.len()
    );
    let unique: std::collections::HashSet<&&str> = lines.iter().collect();
    assert_eq!(unique.len(), 60, "no line twice");
    assert!(!out.contains("audit-company-secret") && !out.contains("/redirect/"));

    let (out, _) = audit(&config, &["--summary", "--json", "--since", "1h"]);
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["events"], 60);
    assert_eq!(
        s["outcomes"],
        serde_json::json!([{"outcome": "ok", "events": 40}, {"outcome": "denied", "events": 20}])
    );
    let (out, _) = audit(&config, &["--company", "acme corp", "--asker", "U1"]);
    assert_eq!(
        rows(&out).len(),
        20,
        "the email lookups named the company: {out}"
    );
    let (out, _) = audit(&config, &["--enduser", "e1", "--outcome", "denied"]);
    assert_eq!(rows(&out).len(), 20, "{out}");
    assert!(rows(&out).iter().all(|r| r.contains("U_NOPE")));

    // Every file of the trail is the bot's user's only.
    #[cfg(unix)]
    for file in portal_bot::core::audit::files::trail(&trail).unwrap() {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }

    // With keep = 3, a burst of events rotates many times, yet no file younger than a day is
    // deleted: the day's events all stay readable.
    let trail = dir.join("kept.jsonl");
    let second = app(&planhat, &trail, "rotate = \"1KB\"\nkeep = 3\n");
    for _ in 0..30 {
        second.portal.handle(&csm("U1"), "e1").await;
    }
    second.audit.close().await;
    let files = portal_bot::core::audit::files::trail(&trail).unwrap();
    assert!(files.len() > 4, "more files than keep, all kept: {files:?}");
    std::fs::write(
        &config,
        format!("[audit]\npath = \"{}\"\n", trail.display()),
    )
    .unwrap();
    let (out, err) = audit(&config, &["--json"]);
    assert!(!err.contains("could not be read"), "{err}");
    assert_eq!(out.lines().count(), 30);
}

/// `portal-bot link --log-format json` with `RUST_LOG=audit=info`; returns the audit event as
/// the log's `event` field (when `trail` is `None`) or the file's line.
fn link_event(dir: &Path, planhat: &MockServer, trail: Option<&Path>) -> serde_json::Value {
    let audit = match trail {
        Some(t) => format!("[audit]\npath = \"{}\"\n", t.display()),
        None => "[audit]\n".to_string(),
    };
    let config = dir.join(if trail.is_some() {
        "file.toml"
    } else {
        "log.toml"
    });
    std::fs::write(
        &config,
        format!(
            "[planhat]\napi_url = \"{}\"\nportal_url = \"{PORTAL}\"\ntoken = \"{API_TOKEN}\"\n{audit}",
            planhat.uri()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portal-bot"))
        .args(["--log-format", "json", "link", "--config"])
        .arg(&config)
        .arg("jane@acme.example")
        .env_remove("PORTAL_BOT_CONFIG")
        .env_remove("PLANHAT_API_TOKEN")
        .env("RUST_LOG", "audit=info")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let mut event: serde_json::Value = match trail {
        Some(t) => serde_json::from_str(std::fs::read_to_string(t).unwrap().trim()).unwrap(),
        None => {
            let log = text(&out.stderr);
            let line = log
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|l| l["target"] == "audit")
                .unwrap_or_else(|| panic!("no audit line in the log: {log}"));
            // `--log-format json` puts an event's fields at the top level of its line.
            serde_json::from_str(line["event"].as_str().unwrap()).unwrap()
        }
    };
    // What differs from one request to the next.
    for varying in ["id", "time", "latency_ms"] {
        assert!(
            event[varying].is_string() || event[varying].is_number(),
            "{varying}: {event}"
        );
        event.as_object_mut().unwrap().remove(varying);
    }
    event
}

#[tokio::test(flavor = "multi_thread")]
async fn the_log_records_the_same_event_as_the_file() {
    let dir = scratch("log-vs-file");
    let planhat = planhat_with_jane().await;
    let from_file = link_event(&dir, &planhat, Some(&dir.join("audit.jsonl")));
    let from_log = link_event(&dir, &planhat, None);
    assert_eq!(from_log, from_file);
    assert_eq!(from_log["email"], "jane@acme.example", "{from_log}");
    assert_eq!(from_log["company"], "Acme Corp", "{from_log}");
    assert_eq!(from_log["end_user"], "e1", "{from_log}");
}
