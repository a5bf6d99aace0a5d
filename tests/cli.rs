//! The binary as an on-call engineer and a deployment script use it: `link`, `check`, `serve`,
//! exit codes, stdout/stderr discipline, configuration errors and logs without secrets.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::*;
use wiremock::matchers::{path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn write_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pb-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    file
}

fn planhat_config(name: &str, planhat: &MockServer, token: &str) -> PathBuf {
    write_config(
        name,
        &format!(
            "[planhat]\napi_url = \"{}\"\nportal_url = \"{PORTAL}\"\ntoken = \"{token}\"\ntimeout = \"2s\"\n[audit]\n",
            planhat.uri()
        ),
    )
}

fn run(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portal-bot"));
    cmd.args(args)
        .env_remove("PLANHAT_API_TOKEN")
        .env_remove("PORTAL_BOT_CONFIG")
        .env_remove("RUST_LOG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn link_prints_only_the_url_and_exit_codes_say_what_happened() {
    let planhat = MockServer::start().await;
    planhat_link(&planhat, "e1", "cli-token-1").await;
    Mock::given(path("/shareabletokens/access/e3"))
        .respond_with(ResponseTemplate::new(200).set_body_string("false"))
        .mount(&planhat)
        .await;
    Mock::given(path("/shareabletokens/e3"))
        .respond_with(ResponseTemplate::new(200).set_body_string(format!("{PORTAL}/redirect/x")))
        .mount(&planhat)
        .await;
    Mock::given(path_regex("^/shareabletokens/(access/)?e5$"))
        .respond_with(ResponseTemplate::new(502))
        .mount(&planhat)
        .await;
    Mock::given(path_regex("^/shareabletokens/"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&planhat)
        .await;
    let cfg = planhat_config("link.toml", &planhat, API_TOKEN);
    let cfg = cfg.to_str().unwrap();

    let ok = run(&["link", "--config", cfg, "e1"], &[]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    assert_eq!(text(&ok.stdout), format!("{PORTAL}/redirect/cli-token-1\n"));

    for (args, code) in [
        (vec!["link", "--config", cfg, "e3"], 3),
        (vec!["link", "--config", cfg, "nobody"], 4),
        (vec!["link", "--config", cfg, "e5"], 5),
        (vec!["link", "--config", cfg, "a/b"], 2),
        (vec!["link", "--config", cfg, "--check", "e1"], 0),
        (vec!["link", "--config", cfg, "--check", "e3"], 3),
        (
            vec!["link", "--config", "/nonexistent/portal-bot.toml", "e1"],
            2,
        ),
        (vec!["link"], 2),
    ] {
        let out = run(&args, &[]);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            !text(&out.stdout).contains("/redirect/"),
            "{args:?} printed a URL"
        );
    }
    // --check minted nothing: the only mint calls are for e1 (once), e3 and e5.
    let mints = mint_calls(&planhat, "e1").await;
    assert_eq!(mints, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn link_prints_a_signed_url_even_when_the_server_mints_at_click() {
    let planhat = MockServer::start().await;
    planhat_link(&planhat, "e1", "direct-token").await;
    let cfg = write_config(
        "public.toml",
        &format!(
            "[server]\npublic_url = \"https://bot.example.test\"\n[planhat]\napi_url = \"{}\"\nportal_url = \"{PORTAL}\"\ntoken = \"{API_TOKEN}\"\n[audit]\n",
            planhat.uri()
        ),
    );
    let out = run(&["link", "--config", cfg.to_str().unwrap(), "e1"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("{PORTAL}/redirect/direct-token\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn environment_token_wins_over_the_file() {
    let planhat = MockServer::start().await;
    planhat_link(&planhat, "e1", "env-token").await; // requires the right Bearer token
    let cfg = planhat_config("env.toml", &planhat, "wrong-token-in-file");
    let out = run(
        &["link", "e1"],
        &[
            ("PORTAL_BOT_CONFIG", cfg.to_str().unwrap()),
            ("PLANHAT_API_TOKEN", API_TOKEN),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let without = run(&["link", "--config", cfg.to_str().unwrap(), "e1"], &[]);
    assert_ne!(without.status.code(), Some(0));
}

#[test]
fn config_errors_name_the_key_in_one_line() {
    for (body, key) in [
        (
            "[planhat]\ntoken = \"t\"\ntimeout = \"soon\"\n",
            "planhat.timeout",
        ),
        ("[planhat]\ntoken = \"t\"\ntokn = \"x\"\n", "tokn"),
        (
            "[planhat]\ntoken = \"t\"\napi_url = \"ftp://x\"\n",
            "planhat.api_url",
        ),
        ("[planhat]\ntoken = \"\"\n", "planhat.token"),
        (
            "[planhat]\ntoken = \"t\"\n[slack]\nmode = \"http\"\nbot_token = \"b\"\n",
            "slack.signing_secret",
        ),
    ] {
        let cfg = write_config("bad.toml", body);
        let out = run(&["check", "--config", cfg.to_str().unwrap()], &[]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{body}: {err}");
        assert!(err.contains(key), "{body}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

/// The on-call engineer sees which file and which Planhat the token is about to be sent to,
/// and a `config.toml` in the current directory can't send it anywhere over plain http
/// (issue 14, item 8).
#[tokio::test(flavor = "multi_thread")]
async fn link_and_check_say_which_config_and_planhat_and_refuse_plain_http() {
    let planhat = MockServer::start().await;
    planhat_link(&planhat, "e1", "cli-token-where").await;
    Mock::given(path("/endusers"))
        .respond_with(ResponseTemplate::new(200).set_body_string("[]"))
        .mount(&planhat)
        .await;
    let cfg = planhat_config("where.toml", &planhat, API_TOKEN);
    let shown = std::fs::canonicalize(&cfg).unwrap();
    let host = planhat.address().to_string();
    for args in [vec!["link", "e1"], vec!["check"]] {
        let mut args = args;
        args.splice(1..1, ["--config", cfg.to_str().unwrap()]);
        let out = run(&args, &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(
            err.contains(&shown.display().to_string()) && err.contains(&host),
            "{args:?} must name the config file and the Planhat host on stderr: {err}"
        );
    }

    // A config.toml planted in the working directory that points Planhat elsewhere.
    let dir = std::env::temp_dir().join(format!("pb-cli-planted-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.toml"),
        "[planhat]\napi_url = \"http://attacker.example\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portal-bot"))
        .args(["link", "e1"])
        .current_dir(&dir)
        .env_remove("PORTAL_BOT_CONFIG")
        .env_remove("RUST_LOG")
        .env("PLANHAT_API_TOKEN", API_TOKEN)
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("planhat.api_url"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!err.contains(API_TOKEN));
    assert!(text(&out.stdout).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn check_says_what_is_wrong_in_plain_words() {
    let planhat = MockServer::start().await;
    Mock::given(path("/endusers"))
        .respond_with(ResponseTemplate::new(200).set_body_string("[]"))
        .mount(&planhat)
        .await;
    let good = planhat_config("check.toml", &planhat, API_TOKEN);
    let out = run(&["check", "--config", good.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("token accepted"));

    let rejecting = MockServer::start().await;
    Mock::given(path("/endusers"))
        .respond_with(ResponseTemplate::new(401))
        .mount(&rejecting)
        .await;
    let cfg = planhat_config("check401.toml", &rejecting, "bad");
    let out = run(&["check", "--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(5));
    let said = text(&out.stdout);
    assert!(
        said.contains("token was rejected") && said.contains("cluster"),
        "{said}"
    );

    let cfg = write_config(
        "check-unreachable.toml",
        "[planhat]\napi_url = \"http://127.0.0.1:9\"\ntoken = \"t\"\n",
    );
    let out = run(&["check", "--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(5));
    assert!(
        text(&out.stdout).contains("cannot reach"),
        "{}",
        text(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_reports_whether_redis_answers_without_printing_its_password() {
    let planhat = MockServer::start().await;
    Mock::given(path("/endusers"))
        .respond_with(ResponseTemplate::new(200).set_body_string("[]"))
        .mount(&planhat)
        .await;
    let cfg = planhat_config("check-redis.toml", &planhat, API_TOKEN);
    let cfg = cfg.to_str().unwrap();
    let out = run(
        &["check", "--config", cfg],
        &[("PORTAL_BOT_REDIS_URL", "redis://127.0.0.1:6379/0")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("redis: reachable"),
        "{}",
        text(&out.stdout)
    );

    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let url = format!("redis://:hunter2-redis-pw@127.0.0.1:{port}/0");
    let out = run(
        &["check", "--config", cfg],
        &[("PORTAL_BOT_REDIS_URL", url.as_str())],
    );
    assert_eq!(out.status.code(), Some(5));
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(said.contains("redis:"), "{said}");
    assert!(!said.contains("hunter2"), "the password stays out: {said}");

    let out = run(
        &["check", "--config", cfg],
        &[("PORTAL_BOT_REDIS_URL", "http://:hunter2@example")],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("state.redis_url") && !err.contains("hunter2"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn trace_logs_hold_neither_the_url_token_nor_the_api_token() {
    let planhat = MockServer::start().await;
    planhat_link(&planhat, "e1", "trace-secret-url-token").await;
    let cfg = planhat_config("trace.toml", &planhat, API_TOKEN);
    for format in ["text", "json"] {
        let out = run(
            &[
                "--log-format",
                format,
                "link",
                "--config",
                cfg.to_str().unwrap(),
                "e1",
            ],
            &[("RUST_LOG", "trace")],
        );
        assert_eq!(out.status.code(), Some(0));
        let logs = text(&out.stderr);
        assert!(
            logs.contains("request answered") && logs.contains("audit"),
            "trace logging is on: {logs}"
        );
        assert!(
            !logs.contains("trace-secret-url-token"),
            "the signed URL leaked into {format} logs"
        );
        assert!(
            !logs.contains(API_TOKEN),
            "the API token leaked into {format} logs"
        );
        if format == "json" {
            // Log lines are JSON objects; the CLI's own diagnostics are plain sentences.
            let json_lines = logs.lines().filter(|l| l.starts_with('{')).count();
            assert!(json_lines >= 2, "{logs}");
            for line in logs.lines().filter(|l| l.starts_with('{')) {
                serde_json::from_str::<serde_json::Value>(line)
                    .unwrap_or_else(|_| panic!("not JSON: {line}"));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_stops_gracefully_on_sigterm() {
    let planhat = MockServer::start().await;
    let cfg = write_config(
        "serve.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n[planhat]\napi_url = \"{}\"\ntoken = \"t\"\n",
            planhat.uri()
        ),
    );
    let child = Command::new(env!("CARGO_BIN_EXE_portal-bot"))
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let logs = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{logs}");
    assert!(
        logs.contains("SIGTERM") && logs.contains("stopped"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_lines_survive_a_crash_whole_or_not_at_all() {
    let planhat = MockServer::start().await;
    planhat_link(&planhat, "e1", "crash-token").await;
    let dir = std::env::temp_dir().join(format!("pb-crash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let audit = dir.join("audit.jsonl");
    let _ = std::fs::remove_file(&audit);
    let cfg = write_config(
        "crash.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n[planhat]\napi_url = \"{}\"\nportal_url = \"{PORTAL}\"\ntoken = \"{API_TOKEN}\"\n\
             [slack]\nmode = \"http\"\nsigning_secret = \"{SIGNING_SECRET}\"\nbot_token = \"{BOT_TOKEN}\"\napi_url = \"http://127.0.0.1:9/api\"\n\
             [access]\nslack_users = [\"U1\"]\n[limits]\nper_user_per_minute = 10000\n[audit]\npath = \"{}\"\n",
            planhat.uri(),
            audit.display()
        ),
    );
    // The server picks its own port and says which in its log: choosing a free port here and
    // handing it over would race with the ephemeral ports of every other connection.
    let mut child = Command::new(env!("CARGO_BIN_EXE_portal-bot"))
        .args([
            "--log-format",
            "json",
            "serve",
            "--config",
            cfg.to_str().unwrap(),
        ])
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://{}", listening_addr(&mut child));
    // Requests in flight while the process is killed without warning.
    let mut sent = Vec::new();
    for i in 0..200 {
        let body = slash_body(
            "U1",
            "C1",
            "e1",
            "http://127.0.0.1:9/r",
            &format!("crash-{i}"),
        );
        let req = client()
            .post(format!("{base}/slack/commands"))
            .headers(slack_headers(SIGNING_SECRET, now(), &body))
            .body(body);
        sent.push(tokio::spawn(async move { req.send().await.is_ok() }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    child.kill().unwrap(); // SIGKILL: no flush, no goodbye
    child.wait().unwrap();
    for s in sent {
        let _ = s.await;
    }
    let text = std::fs::read_to_string(&audit).unwrap_or_default();
    assert!(
        text.lines().count() > 0,
        "some requests were answered before the crash"
    );
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "the last line is complete"
    );
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("torn line {line:?}: {e}"));
        assert_eq!(v["outcome"], "ok");
    }
    assert!(!text.contains("crash-token"));
}

/// The fake Slack Web API for `check`: the bot token is accepted (`auth.test`), and each of
/// `methods` answers with `answer` (Slack's error answers are HTTP 200 with `ok: false`).
async fn slack_for_check(methods: &[(&str, serde_json::Value)]) -> MockServer {
    let slack = MockServer::start().await;
    Mock::given(path("/api/auth.test"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "ok": true, "url": "https://acme.slack.com/", "team": "Acme", "user": "portal-bot",
            "team_id": "T0001", "user_id": "UBOT", "bot_id": "BBOT"
        })))
        .mount(&slack)
        .await;
    for (method, answer) in methods {
        Mock::given(path(format!("/api/{method}")))
            .respond_with(ResponseTemplate::new(200).set_body_json(answer.clone()))
            .mount(&slack)
            .await;
    }
    slack
}

/// `check` calls what the configured features call, and when Slack answers `missing_scope`
/// it names the scope (Slack's `needed`) and the feature that needs it: users.info for
/// `scope = "owned"`, chat.postMessage for `[notify]` (issue 19, item 14).
#[tokio::test(flavor = "multi_thread")]
async fn check_names_the_slack_scope_that_is_missing() {
    let planhat = MockServer::start().await;
    Mock::given(path("/endusers"))
        .respond_with(ResponseTemplate::new(200).set_body_string("[]"))
        .mount(&planhat)
        .await;
    let missing = |needed: &str| {
        serde_json::json!({"ok": false, "error": "missing_scope", "needed": needed,
                           "provided": "commands,usergroups:read"})
    };
    let config_for = |name: &str, slack: &MockServer| {
        write_config(
            name,
            &format!(
                "[planhat]\napi_url = \"{}\"\nportal_url = \"{PORTAL}\"\ntoken = \"{API_TOKEN}\"\ntimeout = \"2s\"\n\
                 [slack]\nmode = \"http\"\nsigning_secret = \"{SIGNING_SECRET}\"\nbot_token = \"{BOT_TOKEN}\"\napi_url = \"{}/api\"\n\
                 [access]\nscope = \"owned\"\nslack_users = [\"U1\"]\n[notify]\nslack_channel = \"C0NOTIFY\"\n",
                planhat.uri(),
                slack.uri()
            ),
        )
    };

    let slack = slack_for_check(&[
        ("users.info", missing("users:read")),
        ("users.lookupByEmail", missing("users:read.email")),
        ("chat.postMessage", missing("chat:write")),
    ])
    .await;
    let cfg = config_for("check-slack-scopes.toml", &slack);
    let out = run(&["check", "--config", cfg.to_str().unwrap()], &[]);
    let said = text(&out.stdout);
    assert_eq!(out.status.code(), Some(5), "{said}{}", text(&out.stderr));
    for (scope, feature) in [
        ("users:read", "scope = \"owned\""),
        ("users:read.email", "scope = \"owned\""),
        ("chat:write", "[notify]"),
    ] {
        let line = said
            .lines()
            .find(|l| l.contains(&format!("the {scope} scope")))
            .unwrap_or_else(|| panic!("no line names {scope}: {said}"));
        assert!(line.contains(feature), "{line}");
    }
    assert!(!said.contains(BOT_TOKEN), "{said}");

    // Every scope there: Slack's answers to the probes say so without posting anything.
    let slack = slack_for_check(&[
        (
            "users.info",
            serde_json::json!({"ok": true, "user": {"id": "UBOT", "team_id": "T0001"}}),
        ),
        (
            "users.lookupByEmail",
            serde_json::json!({"ok": false, "error": "users_not_found"}),
        ),
        (
            "chat.postMessage",
            serde_json::json!({"ok": false, "error": "no_text"}),
        ),
    ])
    .await;
    let cfg = config_for("check-slack-ok.toml", &slack);
    let out = run(&["check", "--config", cfg.to_str().unwrap()], &[]);
    let said = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{said}{}", text(&out.stderr));
    assert!(said.contains("bot token accepted"), "{said}");
    assert!(!said.contains("missing"), "{said}");
}

/// With `[sign_in]`, `check` says whether each provider's discovery answers, and fails when
/// one does not, printing no client secret.
#[tokio::test(flavor = "multi_thread")]
async fn check_reports_whether_each_sign_in_provider_answers() {
    let planhat = MockServer::start().await;
    Mock::given(path("/endusers"))
        .respond_with(ResponseTemplate::new(200).set_body_string("[]"))
        .mount(&planhat)
        .await;
    let idp = common::idp::FakeOidc::start(false).await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        format!("http://127.0.0.1:{port}")
    };
    let section = |issuer: &str| {
        format!(
            "[planhat]\napi_url = \"{}\"\nportal_url = \"{PORTAL}\"\ntoken = \"{API_TOKEN}\"\n\
             [server]\npublic_url = \"https://bot.example.test\"\n[audit]\n\
             [sign_in]\ncookie_key = \"{}\"\n[sign_in.oidc]\nissuer = \"{issuer}\"\n\
             client_id = \"c1\"\nclient_secret = \"oidc-secret-never-printed\"\n",
            planhat.uri(),
            "k".repeat(40)
        )
    };
    let good = write_config("check-signin-good.toml", &section(&idp.issuer));
    let out = run(&["check", "--config", good.to_str().unwrap()], &[]);
    let said = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains("sign-in oidc: the provider answers"),
        "{said}"
    );

    let bad = write_config("check-signin-dead.toml", &section(&dead));
    let out = run(&["check", "--config", bad.to_str().unwrap()], &[]);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(5), "{said}");
    assert!(said.contains("sign-in oidc:"), "{said}");
    assert!(!said.contains("oidc-secret-never-printed"), "{said}");
}
