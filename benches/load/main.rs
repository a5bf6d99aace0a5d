//! Load benchmark: `cargo bench --bench load` (scale with `LOAD_SCALE=0.2` … `LOAD_SCALE=3`).
//!
//! Starts the release `portal-bot serve` as a separate process against a sandbox Planhat with a
//! set latency (hosted in this process, so the server's CPU figures are the bot's alone), then
//! sends pre-signed Slack slash commands and Discord interactions over loopback with bounded
//! concurrency. Prints throughput, p50/p90/p99 total latency, bot-added latency (total minus
//! the sandbox's delay), the share answered inside 3 s, server CPU per request and peak RSS.
//! Every loop is bounded in count and time; only 127.0.0.1 is ever contacted.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signer, SigningKey};
use hmac::{KeyInit, Mac};
use portal_bot::sandbox::{Sandbox, SandboxOptions};
use tokio::sync::Semaphore;

const SECRET: &str = "bench-signing-secret";
const USERS: usize = 1000;
const APP_ID: u64 = 1200000000000000002;
const GUILD: u64 = 1300000000000000003;

fn scale() -> f64 {
    std::env::var("LOAD_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0f64)
        .clamp(0.01, 10.0)
}

fn scaled(n: usize) -> usize {
    ((n as f64) * scale()).round().max(10.0) as usize
}

struct Server {
    child: Child,
    addr: SocketAddr,
    sandbox: Sandbox,
    latency: Duration,
    _dir: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
    }
}

/// Process CPU (user + system) and memory from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|s| s.parse().ok()).unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    ticks / 100.0
}

fn status_kb(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn start(latency: Duration, discord_key: &SigningKey, response_url_base: &str) -> Server {
    let sandbox = Sandbox::start(SandboxOptions {
        latency,
        slow: Duration::ZERO,
        ..Default::default()
    })
    .await
    .expect("sandbox");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let dir = std::env::temp_dir().join(format!("pb-bench-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let users: Vec<String> = (0..USERS).map(|i| format!("\"U{i}\"")).collect();
    let discord_users: Vec<String> = (0..USERS)
        .map(|i| format!("\"{}\"", 1500000000000000000u64 + i as u64))
        .collect();
    let config = format!(
        "[server]\nlisten = \"{addr}\"\n\
         [planhat]\napi_url = \"{base}\"\nportal_url = \"{base}\"\ntoken = \"sandbox-token\"\ntimeout = \"5s\"\nmax_in_flight = 32\n\
         [slack]\nmode = \"http\"\nsigning_secret = \"{SECRET}\"\nbot_token = \"xoxb-bench\"\napi_url = \"{response_url_base}/api\"\n\
         [discord]\nmode = \"http\"\ntoken = \"bench\"\napplication_id = \"{APP_ID}\"\npublic_key = \"{key}\"\nguild_ids = [\"{GUILD}\"]\napi_url = \"{response_url_base}/api/v10\"\n\
         [access]\nslack_users = [{users}]\ndiscord_users = [{discord_users}]\n\
         [limits]\nper_user_per_minute = 10000\n\
         [audit]\npath = \"{audit}\"\n",
        base = sandbox.base.as_str().trim_end_matches('/'),
        key = hex::encode(discord_key.verifying_key().to_bytes()),
        users = users.join(","),
        discord_users = discord_users.join(","),
        audit = dir.join("audit.jsonl").display(),
    );
    let config_path = dir.join("config.toml");
    std::fs::File::create(&config_path)
        .unwrap()
        .write_all(config.as_bytes())
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_portal-bot"))
        .args(["serve", "--config", config_path.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("portal-bot starts");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = client.get(format!("http://{addr}/healthz")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "server did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Server {
        child,
        addr,
        sandbox,
        latency,
        _dir: dir,
    }
}

/// One pre-built request.
struct Req {
    path: &'static str,
    body: String,
    headers: Vec<(&'static str, String)>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn slack_requests(n: usize, tag: &str, response_url_base: &str) -> Vec<Req> {
    let ts = now().to_string();
    (0..n)
        .map(|i| {
            let body = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("team_id", "T1")
                .append_pair("channel_id", "C1")
                .append_pair("user_id", &format!("U{}", i % USERS))
                .append_pair("command", "/portal")
                .append_pair("text", "jane")
                .append_pair("response_url", &format!("{response_url_base}/response"))
                .append_pair("trigger_id", &format!("{tag}-{i}"))
                .finish();
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
            mac.update(format!("v0:{ts}:{body}").as_bytes());
            let sig = format!("v0={}", hex::encode(mac.finalize().into_bytes()));
            Req {
                path: "/slack/commands",
                body,
                headers: vec![
                    ("x-slack-signature", sig),
                    ("x-slack-request-timestamp", ts.clone()),
                    ("content-type", "application/x-www-form-urlencoded".into()),
                ],
            }
        })
        .collect()
}

fn discord_requests(n: usize, offset: u64, key: &SigningKey) -> Vec<Req> {
    let ts = now().to_string();
    (0..n)
        .map(|i| {
            let id = 1100000000000000000u64 + offset + i as u64;
            let body = serde_json::json!({
                "id": id.to_string(), "application_id": APP_ID.to_string(), "type": 2, "token": format!("tok{id}"),
                "version": 1, "guild_id": GUILD.to_string(), "channel_id": "1400000000000000004", "locale": "en-US",
                "entitlements": [], "attachment_size_limit": 8388608,
                "member": {"user": {"id": (1500000000000000000u64 + (i % USERS) as u64).to_string(), "username": "b"},
                           "roles": [], "deaf": false, "mute": false, "flags": 0},
                "data": {"id": "1700000000000000007", "name": "portal", "type": 1,
                         "options": [{"name": "enduser", "type": 3, "value": "jane"}]}
            })
            .to_string();
            let sig = hex::encode(key.sign(&[ts.as_bytes(), body.as_bytes()].concat()).to_bytes());
            Req {
                path: "/discord/interactions",
                body,
                headers: vec![
                    ("x-signature-ed25519", sig),
                    ("x-signature-timestamp", ts.clone()),
                    ("content-type", "application/json".into()),
                ],
            }
        })
        .collect()
}

struct Run {
    latencies: Vec<Duration>,
    links: usize,
    errors: usize,
    wall: Duration,
    server_cpu: f64,
    own_cpu: f64,
}

/// Sends `reqs` with at most `concurrency` in flight; with `rate`, paced to that many per second.
async fn run(server: &Server, reqs: Vec<Req>, concurrency: usize, rate: Option<f64>) -> Run {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let base = format!("http://{}", server.addr);
    let limit = Arc::new(Semaphore::new(concurrency));
    let links = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let pid = server.child.id();
    let (cpu0, own0) = (cpu_seconds(pid), cpu_seconds(std::process::id()));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(reqs.len());
    for (i, req) in reqs.into_iter().enumerate() {
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let permit = limit.clone().acquire_owned().await.unwrap();
        let (client, url, links, errors) = (
            client.clone(),
            format!("{base}{}", req.path),
            links.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let mut rb = client.post(url).body(req.body);
            for (k, v) in req.headers {
                rb = rb.header(k, v);
            }
            // Answered: 200 with a link, or an acknowledgement whose answer follows (Slack's
            // "taking a moment", Discord's type 5). Anything else is an error.
            let ok = match rb.send().await {
                Ok(r) if r.status() == 200 => r
                    .text()
                    .await
                    .map(|b| {
                        b.contains("/redirect/")
                            || b.contains("\"type\":5")
                            || b.contains("taking a moment")
                    })
                    .unwrap_or(false),
                _ => false,
            };
            let took = t.elapsed();
            if ok {
                links.fetch_add(1, Ordering::Relaxed)
            } else {
                errors.fetch_add(1, Ordering::Relaxed)
            };
            drop(permit);
            took
        }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    for t in tasks {
        latencies.push(t.await.unwrap());
    }
    let wall = started.elapsed();
    latencies.sort();
    Run {
        latencies,
        links: links.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        wall,
        server_cpu: cpu_seconds(pid) - cpu0,
        own_cpu: cpu_seconds(std::process::id()) - own0,
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn report(name: &str, server: &Server, r: &Run) {
    let n = r.latencies.len();
    let delay = server.latency;
    let added = |d: Duration| d.saturating_sub(delay);
    let inside = r
        .latencies
        .iter()
        .filter(|d| **d < Duration::from_secs(3))
        .count();
    println!("\n## {name}");
    println!("requests {n}, answered with a link/ack {}, errors {}, wall {:.2} s, throughput {:.0} req/s", r.links, r.errors, r.wall.as_secs_f64(), n as f64 / r.wall.as_secs_f64());
    println!(
        "total latency p50 {} p90 {} p99 {} | bot-added p50 {} p99 {} (sandbox delay {})",
        ms(pct(&r.latencies, 0.5)),
        ms(pct(&r.latencies, 0.9)),
        ms(pct(&r.latencies, 0.99)),
        ms(added(pct(&r.latencies, 0.5))),
        ms(added(pct(&r.latencies, 0.99))),
        ms(delay)
    );
    println!(
        "answered inside 3 s: {:.2} % | server CPU {:.1} µs/request ({:.2} s) | load generator + sandbox CPU {:.1} µs/request",
        100.0 * inside as f64 / n as f64,
        r.server_cpu * 1e6 / n as f64,
        r.server_cpu,
        r.own_cpu * 1e6 / n as f64
    );
    println!(
        "server RSS now {} MB, peak {} MB",
        status_kb(server.child.id(), "VmRSS:") / 1024,
        status_kb(server.child.id(), "VmHWM:") / 1024
    );
}

/// A `response_url` and Discord REST stand-in that counts late deliveries.
async fn receiver() -> (String, Arc<AtomicUsize>) {
    use axum::routing::{patch, post, put};
    let count = Arc::new(AtomicUsize::new(0));
    let c1 = count.clone();
    let c2 = count.clone();
    let app = axum::Router::new()
        .route("/response", post(move || { let c = c1.clone(); async move { c.fetch_add(1, Ordering::Relaxed); axum::Json(serde_json::json!({"ok": true})) } }))
        .route("/api/v10/applications/{a}/guilds/{g}/commands", put(|| async { axum::Json(serde_json::json!([])) }))
        .route("/api/v10/webhooks/{a}/{t}/messages/@original", patch(move || { let c = c2.clone(); async move {
            c.fetch_add(1, Ordering::Relaxed);
            axum::Json(serde_json::json!({"id":"1800000000000000008","channel_id":"1400000000000000004","author":{"id":"1","username":"b"},"content":"","timestamp":"2026-01-01T00:00:00+00:00","tts":false,"mention_everyone":false,"mentions":[],"mention_roles":[],"attachments":[],"embeds":[],"pinned":false,"type":0}))
        } }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), count)
}

async fn sandbox_stats(server: &Server) -> serde_json::Value {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{}stats", server.sandbox.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` / `cargo test --benches` probing: nothing to list.
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!("# portal-bot load benchmark (scale {}, {} cores)", scale(), std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
        let key = SigningKey::from_bytes(&[9u8; 32]);
        let (rx_base, delivered) = receiver().await;

        let server = start(Duration::ZERO, &key, &rx_base).await;
        // Warm-up (connection pools, allocator), not reported.
        run(&server, slack_requests(scaled(2000), "warm", &rx_base), 32, None).await;
        let r = run(&server, slack_requests(scaled(20_000), "a", &rx_base), 64, None).await;
        report("Slack commands, sandbox answering at once, 64 concurrent", &server, &r);
        let r = run(&server, discord_requests(scaled(10_000), 0, &key), 64, None).await;
        report("Discord interactions, sandbox answering at once, 64 concurrent", &server, &r);
        let r = run(&server, slack_requests(scaled(3_000), "paced", &rx_base), 64, Some(500.0)).await;
        report("Slack commands paced at 500/s", &server, &r);
        for round in 1..=3 {
            let r = run(&server, slack_requests(scaled(30_000), &format!("round{round}"), &rx_base), 64, None).await;
            report(&format!("RSS round {round}: 30,000 Slack commands"), &server, &r);
        }
        drop(server);

        let server = start(Duration::from_millis(50), &key, &rx_base).await;
        run(&server, slack_requests(scaled(200), "warm50", &rx_base), 16, None).await;
        let r = run(&server, slack_requests(scaled(2_000), "fifty", &rx_base), 16, None).await;
        report("Slack commands, sandbox at 50 ms, 16 concurrent", &server, &r);
        drop(server);

        let server = start(Duration::from_secs(4), &key, &rx_base).await;
        let before = delivered.load(Ordering::Relaxed);
        let n = scaled(2_000);
        let r = run(&server, slack_requests(n, "burst", &rx_base), n, None).await;
        report("Burst: all Slack commands at once, sandbox at 4 s (acks, then late delivery)", &server, &r);
        let deadline = Instant::now() + Duration::from_secs(120);
        while delivered.load(Ordering::Relaxed) - before < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let stats = sandbox_stats(&server).await;
        println!(
            "late deliveries (link or clear error) received: {} of {n}; Planhat peak in flight {} (max_in_flight 32)",
            delivered.load(Ordering::Relaxed) - before,
            stats["peak_in_flight"]
        );
        drop(server);
    });
}
