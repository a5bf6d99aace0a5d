//! Load benchmark: `cargo bench --bench load` (scale the counts with `LOAD_SCALE=0.2` …
//! `LOAD_SCALE=3`).
//!
//! Every figure of the bot is read against a floor: [`floor`], a minimal server built from the
//! same crates that does only the unavoidable work (read the end user, make the two Planhat
//! calls concurrently, answer the URL). Both run as their own processes, on the same scenarios,
//! in one run, against the sandbox Planhat with a set latency (hosted in this process, so each
//! server's CPU figures are its own); this process also generates the load: pre-signed Slack
//! slash commands and Discord interactions over loopback with bounded concurrency. For every
//! scenario it prints bot, floor and bot ÷ floor: server CPU per request (user + system time
//! of the server process over the run ÷ requests), throughput, latency percentiles, RSS.
//! Every loop is bounded in count and time; only 127.0.0.1 is ever contacted.
//!
//! Instruction counts (repeatable on a busy machine, unlike time) for one scenario:
//! `LOAD_CALLGRIND=1 cargo bench --bench load -- --drive bot slack 1 2000` starts the server
//! under `valgrind --tool=callgrind`, warms it up, counts only the `2000` requests, and prints
//! instructions per request (and where the profile was written, for `callgrind_annotate`).
//! `cargo bench --bench load -- --drive` alone prints memory by distinct end users (1, 1,000,
//! 30,000, 100,000): anonymous memory of floor and bot, and what each of the bot's caches holds.
//! `cargo bench --bench load -- --search` runs only the search scenario (the index at 100,000
//! end users: build time, memory, queries; autocomplete through the bot; commands unchanged).
//! `cargo bench --bench load -- --go` runs only the browser hop: commands with `/go/` links
//! without and with `[sign_in]`, and `/go/` clicks from signed-in browsers.
//! With `LOAD_PERF=1` instead, the server runs as usual and `perf record -e cpu-clock -g`
//! samples it during the counted requests (kernel time included), for `perf report`.

mod floor;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ed25519_dalek::{Signer, SigningKey};
use hmac::{KeyInit, Mac};
use portal_bot::sandbox::{Sandbox, SandboxOptions, LOAD_USER_PREFIX, SANDBOX_TOKEN};
use reqwest::header::{HeaderName, HeaderValue};
use tokio::sync::Semaphore;

/// The same allocator as the bot, for the floor (this executable is also the floor server).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECRET: &str = "bench-signing-secret";
/// Distinct askers (chat users) in the load; all are on the access list.
const ASKERS: usize = 1000;
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bot,
    Floor,
}

/// A server under test: its own process, and the sandbox Planhat it talks to.
struct Server {
    child: Child,
    addr: SocketAddr,
    /// The bot's metrics listener (`None` for the floor, which has none).
    metrics: Option<SocketAddr>,
    sandbox: Sandbox,
    latency: Duration,
    _dir: PathBuf,
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
        let _ = self.child.wait();
    }
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Process CPU (user + system) in seconds, from /proc.
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// `LOAD_CALLGRIND=1`: servers run under callgrind, their profiles written to this directory.
fn callgrind_dir() -> Option<PathBuf> {
    std::env::var_os("LOAD_CALLGRIND")?;
    let dir = std::env::temp_dir().join(format!("pb-callgrind-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir)
}

/// The command that runs `program` (under callgrind when asked: from a copy, so a build
/// meanwhile can't change the executable under a run that takes minutes).
fn command(program: &std::path::Path) -> Command {
    match callgrind_dir() {
        Some(dir) => {
            let copy = dir.join(program.file_name().unwrap_or_default());
            std::fs::copy(program, &copy).expect("copy of the server executable");
            let mut c = Command::new("valgrind");
            c.arg("--tool=callgrind")
                .arg(format!(
                    "--callgrind-out-file={}/callgrind.out.%p",
                    dir.display()
                ))
                .arg(copy);
            c
        }
        None => Command::new(program),
    }
}

async fn wait_healthy(addr: SocketAddr, child: &mut Child) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Ok(r) = client.get(format!("http://{addr}/healthz")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(
            child.try_wait().ok().flatten().is_none(),
            "the server exited at start"
        );
        assert!(Instant::now() < deadline, "server did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sandbox(latency: Duration) -> Sandbox {
    sandbox_with(latency, portal_bot::sandbox::CROWD).await
}

/// A sandbox whose end-user list names `crowd` people (the search index reads them).
async fn sandbox_with(latency: Duration, crowd: usize) -> Sandbox {
    Sandbox::start(SandboxOptions {
        latency,
        slow: Duration::ZERO,
        crowd,
        ..Default::default()
    })
    .await
    .expect("sandbox")
}

/// The release `portal-bot serve`, configured like a production install (audit on, logging at
/// `warn`), plus `planhat_extra` TOML lines in `[planhat]`.
async fn start_bot(
    latency: Duration,
    discord_key: &SigningKey,
    response_url_base: &str,
    planhat_extra: &str,
) -> Server {
    start_bot_with(
        latency,
        discord_key,
        response_url_base,
        planhat_extra,
        Hop::Direct,
    )
    .await
}

/// How the bot's buttons reach the portal: the signed URL itself, or a `/go/` link (with or
/// without sign-in at the browser).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hop {
    Direct,
    Go,
    GoSignedIn,
}

/// The cookie key of the benchmark's signed-in bot.
const COOKIE_KEY: &str = "bench-cookie-key-0123456789abcdef0123456789";

async fn start_bot_with(
    latency: Duration,
    discord_key: &SigningKey,
    response_url_base: &str,
    planhat_extra: &str,
    hop: Hop,
) -> Server {
    start_bot_searching(
        latency,
        discord_key,
        response_url_base,
        planhat_extra,
        hop,
        None,
    )
    .await
}

/// [`start_bot_with`], and with `search = Some(n)` a `[search]` index of a sandbox naming `n`
/// people.
async fn start_bot_searching(
    latency: Duration,
    discord_key: &SigningKey,
    response_url_base: &str,
    planhat_extra: &str,
    hop: Hop,
    search: Option<usize>,
) -> Server {
    let sandbox = sandbox_with(latency, search.unwrap_or(0)).await;
    let search_section = match search {
        Some(_) => "[search]\nmax_end_users = 1000000\n",
        None => "",
    };
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let public_url = match hop {
        Hop::Direct => String::new(),
        _ => format!("public_url = \"http://{addr}\"\n"),
    };
    // The providers are never asked: the benchmark's browsers come with a session.
    let sign_in = match hop {
        Hop::GoSignedIn => format!(
            "[sign_in]\ncookie_key = \"{COOKIE_KEY}\"\n[sign_in.slack]\nclient_id = \"bench\"\n\
             client_secret = \"bench\"\nissuer = \"http://127.0.0.1:9\"\n[sign_in.discord]\n\
             client_id = \"bench\"\nclient_secret = \"bench\"\noauth_url = \"http://127.0.0.1:9\"\n"
        ),
        _ => String::new(),
    };
    let dir = std::env::temp_dir().join(format!("pb-bench-{}-{}", std::process::id(), addr.port()));
    std::fs::create_dir_all(&dir).unwrap();
    let users: Vec<String> = (0..ASKERS).map(|i| format!("\"U{i}\"")).collect();
    let discord_users: Vec<String> = (0..ASKERS)
        .map(|i| format!("\"{}\"", 1500000000000000000u64 + i as u64))
        .collect();
    let config = format!(
        // Every request comes from one loopback address, up to 2,000 at once (the burst): the
        // per-peer cap (meant for the internet) would close most of them.
        "[server]\nlisten = \"{addr}\"\nmetrics_listen = \"{metrics}\"\nmax_connections = 4096\nmax_connections_per_peer = 4096\n{public_url}\
         {sign_in}[planhat]\napi_url = \"{base}\"\nportal_url = \"{base}\"\ntoken = \"{SANDBOX_TOKEN}\"\ntimeout = \"5s\"\nmax_in_flight = 32\n{planhat_extra}\n\
         [slack]\nmode = \"http\"\nsigning_secret = \"{SECRET}\"\nbot_token = \"xoxb-bench\"\napi_url = \"{response_url_base}/api\"\n\
         [discord]\nmode = \"http\"\ntoken = \"bench\"\napplication_id = \"{APP_ID}\"\npublic_key = \"{key}\"\nguild_ids = [\"{GUILD}\"]\napi_url = \"{response_url_base}/api/v10\"\n\
         [access]\nslack_users = [{users}]\ndiscord_users = [{discord_users}]\n\
         [limits]\nper_user_per_minute = 10000\n{search_section}\
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
    let mut child = command(env!("CARGO_BIN_EXE_portal-bot").as_ref())
        .args(["serve", "--config", config_path.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("portal-bot starts");
    wait_healthy(addr, &mut child).await;
    Server {
        child,
        addr,
        metrics: Some(metrics),
        sandbox,
        latency,
        _dir: dir,
    }
}

/// The floor server ([`floor`]): this executable with `--floor-server`.
async fn start_floor(latency: Duration) -> Server {
    let sandbox = sandbox(latency).await;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let exe = std::env::current_exe().expect("own executable");
    let mut child = command(&exe)
        .args([
            "--floor-server",
            &addr.to_string(),
            sandbox.base.as_str(),
            SANDBOX_TOKEN,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the floor starts");
    wait_healthy(addr, &mut child).await;
    Server {
        child,
        addr,
        metrics: None,
        sandbox,
        latency,
        _dir: std::env::temp_dir(),
    }
}

async fn start(
    kind: Kind,
    latency: Duration,
    key: &SigningKey,
    rx_base: &str,
    planhat_extra: &str,
) -> Server {
    match kind {
        Kind::Bot => start_bot(latency, key, rx_base, planhat_extra).await,
        Kind::Floor => start_floor(latency).await,
    }
}

/// One pre-built request; cheap to clone (bodies and header values are shared bytes).
#[derive(Clone)]
struct Req {
    path: &'static str,
    body: Bytes,
    headers: Vec<(HeaderName, HeaderValue)>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Chat {
    Slack,
    Discord,
}

impl Chat {
    fn name(self) -> &'static str {
        match self {
            Chat::Slack => "Slack commands",
            Chat::Discord => "Discord interactions",
        }
    }
}

/// `n` requests from [`ASKERS`] askers for `users` distinct end users (`load-0` …), each with
/// its own delivery id (`tag` keeps ids distinct across runs: the bot dedupes redeliveries).
fn requests(
    chat: Chat,
    n: usize,
    users: usize,
    tag: &str,
    rx_base: &str,
    key: &SigningKey,
) -> Arc<Vec<Req>> {
    requests_from(chat, 0, n, users, tag, rx_base, key)
}

/// [`requests`] numbered from `first` (a run in chunks, each signed just before it is sent,
/// so a long run never meets the platforms' 5-minute signature window).
fn requests_from(
    chat: Chat,
    first: usize,
    n: usize,
    users: usize,
    tag: &str,
    rx_base: &str,
    key: &SigningKey,
) -> Arc<Vec<Req>> {
    let ts = now().to_string();
    let ts_value = HeaderValue::from_str(&ts).unwrap();
    let users = users.max(1);
    // Discord interaction ids: unique across the whole run (the bot dedupes them).
    static NEXT_ID: std::sync::atomic::AtomicU64 =
        std::sync::atomic::AtomicU64::new(1100000000000000000);
    let first_id = NEXT_ID.fetch_add(n as u64, Ordering::Relaxed);
    let reqs = (first..first + n)
        .map(|i| {
            let end_user = format!("{LOAD_USER_PREFIX}{}", i % users);
            match chat {
                Chat::Slack => {
                    let body = url::form_urlencoded::Serializer::new(String::new())
                        .append_pair("team_id", "T1")
                        .append_pair("channel_id", "C1")
                        .append_pair("user_id", &format!("U{}", i % ASKERS))
                        .append_pair("command", "/portal")
                        .append_pair("text", &end_user)
                        .append_pair("response_url", &format!("{rx_base}/response"))
                        .append_pair("trigger_id", &format!("{tag}-{i}"))
                        .finish();
                    let mut mac =
                        hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
                    mac.update(format!("v0:{ts}:{body}").as_bytes());
                    let sig = format!("v0={}", hex::encode(mac.finalize().into_bytes()));
                    Req {
                        path: "/slack/commands",
                        body: Bytes::from(body),
                        headers: vec![
                            (
                                HeaderName::from_static("x-slack-signature"),
                                HeaderValue::from_str(&sig).unwrap(),
                            ),
                            (
                                HeaderName::from_static("x-slack-request-timestamp"),
                                ts_value.clone(),
                            ),
                            (
                                HeaderName::from_static("content-type"),
                                HeaderValue::from_static("application/x-www-form-urlencoded"),
                            ),
                        ],
                    }
                }
                Chat::Discord => {
                    let id = first_id + i as u64;
                    let body = serde_json::json!({
                        "id": id.to_string(), "application_id": APP_ID.to_string(), "type": 2, "token": format!("tok{id}"),
                        "version": 1, "guild_id": GUILD.to_string(), "channel_id": "1400000000000000004", "locale": "en-US",
                        "entitlements": [], "attachment_size_limit": 8388608,
                        "member": {"user": {"id": (1500000000000000000u64 + (i % ASKERS) as u64).to_string(), "username": "b"},
                                   "roles": [], "deaf": false, "mute": false, "flags": 0},
                        "data": {"id": "1700000000000000007", "name": "portal", "type": 1,
                                 "options": [{"name": "enduser", "type": 3, "value": end_user}]}
                    })
                    .to_string();
                    let sig = hex::encode(
                        key.sign(&[ts.as_bytes(), body.as_bytes()].concat())
                            .to_bytes(),
                    );
                    Req {
                        path: "/discord/interactions",
                        body: Bytes::from(body),
                        headers: vec![
                            (
                                HeaderName::from_static("x-signature-ed25519"),
                                HeaderValue::from_str(&sig).unwrap(),
                            ),
                            (
                                HeaderName::from_static("x-signature-timestamp"),
                                ts_value.clone(),
                            ),
                            (
                                HeaderName::from_static("content-type"),
                                HeaderValue::from_static("application/json"),
                            ),
                        ],
                    }
                }
            }
        })
        .collect();
    Arc::new(reqs)
}

/// What one server did with one batch of requests.
struct Run {
    latencies: Vec<Duration>,
    answered: usize,
    errors: usize,
    wall: Duration,
    server_cpu: f64,
    own_cpu: f64,
    rss_kb: u64,
    hwm_kb: u64,
}

impl Run {
    fn n(&self) -> usize {
        self.latencies.len()
    }
    fn cpu_us(&self) -> f64 {
        self.server_cpu * 1e6 / self.n().max(1) as f64
    }
    fn throughput(&self) -> f64 {
        self.n() as f64 / self.wall.as_secs_f64()
    }
    fn pct(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        self.latencies[((self.latencies.len() as f64 - 1.0) * p).round() as usize]
    }
    fn inside_3s(&self) -> f64 {
        let inside = self
            .latencies
            .iter()
            .filter(|d| **d < Duration::from_secs(3))
            .count();
        100.0 * inside as f64 / self.n().max(1) as f64
    }
}

/// Sends `reqs` with at most `concurrency` in flight; with `rate`, paced to that many per second.
async fn run(server: &Server, reqs: &Arc<Vec<Req>>, concurrency: usize, rate: Option<f64>) -> Run {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let base = format!("http://{}", server.addr);
    let urls = [
        format!("{base}/slack/commands"),
        format!("{base}/discord/interactions"),
    ];
    let limit = Arc::new(Semaphore::new(concurrency));
    let answered = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let pid = server.pid();
    let (cpu0, own0) = (cpu_seconds(pid), cpu_seconds(std::process::id()));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(reqs.len());
    for i in 0..reqs.len() {
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let permit = limit.clone().acquire_owned().await.unwrap();
        let req = reqs[i].clone();
        let url = if req.path.starts_with("/slack") {
            urls[0].clone()
        } else {
            urls[1].clone()
        };
        let (client, answered, errors) = (client.clone(), answered.clone(), errors.clone());
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
                            || b.contains("/go/")
                            || b.contains("\"type\":5")
                            || b.contains("taking a moment")
                    })
                    .unwrap_or(false),
                _ => false,
            };
            let took = t.elapsed();
            if ok {
                answered.fetch_add(1, Ordering::Relaxed)
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
        answered: answered.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        wall,
        server_cpu: cpu_seconds(pid) - cpu0,
        own_cpu: cpu_seconds(std::process::id()) - own0,
        rss_kb: status_kb(pid, "VmRSS:"),
        hwm_kb: status_kb(pid, "VmHWM:"),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One line of the closing summary table.
struct Row {
    scenario: String,
    bot_cpu: f64,
    floor_cpu: f64,
    /// The floor's CPU plus what the bot must add per request that the floor skips by
    /// definition (Ed25519 for Discord), when there is such a thing.
    floor_plus: Option<f64>,
    bot_tput: f64,
    floor_tput: f64,
    bot_p50: f64,
    floor_p50: f64,
    bot_p99: f64,
    floor_p99: f64,
    bot_hwm: u64,
    floor_hwm: u64,
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".into()
    }
}

/// Prints one scenario: bot, floor and bot ÷ floor.
fn report(name: &str, delay: Duration, bot: &Run, floor: &Run, plus: Option<(f64, &str)>) -> Row {
    println!(
        "\n## {name} ({} requests each; sandbox Planhat at {} ms)",
        bot.n(),
        delay.as_millis()
    );
    println!("{:<34}{:>12}{:>12}{:>12}", "", "bot", "floor", "bot/floor");
    let line = |what: &str, b: f64, f: f64, digits: usize| {
        println!(
            "{what:<34}{b:>12.digits$}{f:>12.digits$}{:>12}",
            ratio(b, f)
        );
    };
    line("server CPU µs/request", bot.cpu_us(), floor.cpu_us(), 1);
    if let Some((extra, what)) = plus {
        let f = floor.cpu_us() + extra;
        println!(
            "{:<34}{:>12.1}{:>12.1}{:>12}",
            format!("  against floor + {what}"),
            bot.cpu_us(),
            f,
            ratio(bot.cpu_us(), f)
        );
    }
    line("throughput req/s", bot.throughput(), floor.throughput(), 0);
    line("latency p50 ms", ms(bot.pct(0.5)), ms(floor.pct(0.5)), 2);
    line("latency p90 ms", ms(bot.pct(0.9)), ms(floor.pct(0.9)), 2);
    line("latency p99 ms", ms(bot.pct(0.99)), ms(floor.pct(0.99)), 2);
    let added = |r: &Run, p| ms(r.pct(p).saturating_sub(delay));
    line("server-added p50 ms", added(bot, 0.5), added(floor, 0.5), 2);
    line(
        "server-added p99 ms",
        added(bot, 0.99),
        added(floor, 0.99),
        2,
    );
    line(
        "answered inside 3 s %",
        bot.inside_3s(),
        floor.inside_3s(),
        2,
    );
    line(
        "RSS now MB",
        bot.rss_kb as f64 / 1024.0,
        floor.rss_kb as f64 / 1024.0,
        1,
    );
    line(
        "RSS peak MB",
        bot.hwm_kb as f64 / 1024.0,
        floor.hwm_kb as f64 / 1024.0,
        1,
    );
    println!(
        "{:<34}{:>12}{:>12}",
        "answered / errors",
        format!("{}/{}", bot.answered, bot.errors),
        format!("{}/{}", floor.answered, floor.errors)
    );
    println!(
        "{:<34}{:>12.1}{:>12.1}",
        "load generator + sandbox µs/req",
        bot.own_cpu * 1e6 / bot.n().max(1) as f64,
        floor.own_cpu * 1e6 / floor.n().max(1) as f64
    );
    Row {
        scenario: name.to_string(),
        bot_cpu: bot.cpu_us(),
        floor_cpu: floor.cpu_us(),
        floor_plus: plus.map(|(extra, _)| floor.cpu_us() + extra),
        bot_tput: bot.throughput(),
        floor_tput: floor.throughput(),
        bot_p50: ms(bot.pct(0.5)),
        floor_p50: ms(floor.pct(0.5)),
        bot_p99: ms(bot.pct(0.99)),
        floor_p99: ms(floor.pct(0.99)),
        bot_hwm: bot.hwm_kb,
        floor_hwm: floor.hwm_kb,
    }
}

/// The closing table (Markdown, for the README).
fn summary(rows: &[Row]) {
    println!("\n## Summary: bot / floor (ratio)\n");
    println!("| scenario | CPU µs/request | throughput req/s | p50 ms | p99 ms | peak RSS MB |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for r in rows {
        let cpu = match r.floor_plus {
            Some(f) => format!(
                "{:.0} / {:.0} ({}; {} against floor + Ed25519 {:.0})",
                r.bot_cpu,
                r.floor_cpu,
                ratio(r.bot_cpu, r.floor_cpu),
                ratio(r.bot_cpu, f),
                f
            ),
            None => format!(
                "{:.0} / {:.0} ({})",
                r.bot_cpu,
                r.floor_cpu,
                ratio(r.bot_cpu, r.floor_cpu)
            ),
        };
        println!(
            "| {} | {cpu} | {:.0} / {:.0} ({}) | {:.2} / {:.2} ({}) | {:.2} / {:.2} ({}) | {:.1} / {:.1} ({}) |",
            r.scenario,
            r.bot_tput,
            r.floor_tput,
            ratio(r.bot_tput, r.floor_tput),
            r.bot_p50,
            r.floor_p50,
            ratio(r.bot_p50, r.floor_p50),
            r.bot_p99,
            r.floor_p99,
            ratio(r.bot_p99, r.floor_p99),
            r.bot_hwm as f64 / 1024.0,
            r.floor_hwm as f64 / 1024.0,
            ratio(r.bot_hwm as f64, r.floor_hwm as f64),
        );
    }
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

/// What one Ed25519 check costs here (serenity's verifier, as the bot calls it), in µs: the
/// Discord floor skips it by definition, the bot must not.
fn ed25519_us(key: &SigningKey) -> f64 {
    let verifier =
        serenity::interactions_endpoint::Verifier::try_new(key.verifying_key().to_bytes()).unwrap();
    let body = requests(Chat::Discord, 1, 1, "ed", "", key)[0].body.clone();
    let ts = now().to_string();
    let sig = hex::encode(key.sign(&[ts.as_bytes(), &body].concat()).to_bytes());
    let mut samples: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..300 {
                std::hint::black_box(verifier.verify(&sig, &ts, &body)).unwrap();
            }
            t.elapsed().as_secs_f64() * 1e6 / 300.0
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Runs the same requests against bot and floor (in that order) and reports the pair.
async fn pair(
    name: &str,
    servers: (&Server, &Server),
    reqs: &Arc<Vec<Req>>,
    concurrency: usize,
    rate: Option<f64>,
    plus: Option<(f64, &str)>,
) -> Row {
    let bot = run(servers.0, reqs, concurrency, rate).await;
    let floor = run(servers.1, reqs, concurrency, rate).await;
    report(name, servers.0.latency, &bot, &floor, plus)
}

async fn full() {
    println!(
        "# portal-bot load benchmark: bot against the floor (scale {}, {} cores)",
        scale(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let key = SigningKey::from_bytes(&[9u8; 32]);
    let verify = ed25519_us(&key);
    println!("Ed25519 check (serenity's verifier): {verify:.1} µs");
    let (rx_base, delivered) = receiver().await;
    let mut rows = Vec::new();

    // Sandbox answering at once: every user count, both platforms, then memory.
    let bot = start(Kind::Bot, Duration::ZERO, &key, &rx_base, "").await;
    let floor = start(Kind::Floor, Duration::ZERO, &key, &rx_base, "").await;
    let servers = (&bot, &floor);
    for (chat, tag) in [(Chat::Slack, "warm"), (Chat::Discord, "warmd")] {
        let warm = requests(chat, scaled(2000), 1000, tag, &rx_base, &key);
        run(&bot, &warm, 32, None).await;
        run(&floor, &warm, 32, None).await;
    }
    for chat in [Chat::Slack, Chat::Discord] {
        let base = if chat == Chat::Slack { 20_000 } else { 10_000 };
        for users in [1usize, 1_000, 100_000] {
            let n = scaled(base.max(users));
            let users = users.min(n);
            let reqs = requests(chat, n, users, &format!("u{users}"), &rx_base, &key);
            let plus = (chat == Chat::Discord).then_some((verify, "Ed25519"));
            let name = format!(
                "{}, {users} distinct end user{}, 64 concurrent",
                chat.name(),
                if users == 1 { "" } else { "s" }
            );
            rows.push(pair(&name, servers, &reqs, 64, None, plus).await);
        }
    }
    // The bot above keeps Planhat's default budget (200 calls a minute), so at these rates it
    // skips name lookups after the first few. The worst case for the name cache is every
    // request naming a new end user with lookups on: a bot whose budget is raised out of reach.
    {
        let names_on = start(
            Kind::Bot,
            Duration::ZERO,
            &key,
            &rx_base,
            "calls_per_minute = 1000000",
        )
        .await;
        let warm = requests(Chat::Slack, scaled(2000), 1000, "warmnames", &rx_base, &key);
        run(&names_on, &warm, 32, None).await;
        let n = scaled(100_000);
        let reqs = requests(Chat::Slack, n, n, "names", &rx_base, &key);
        let name = format!(
            "Slack commands, {n} distinct end users, name lookups on (a third Planhat call each)"
        );
        rows.push(pair(&name, (&names_on, &floor), &reqs, 64, None, None).await);
    }
    let reqs = requests(Chat::Slack, scaled(3_000), 1_000, "paced", &rx_base, &key);
    rows.push(
        pair(
            "Slack commands paced at 500/s, 1,000 end users",
            servers,
            &reqs,
            64,
            Some(500.0),
            None,
        )
        .await,
    );
    // The cost of shared state: the same scenarios with `[state]` on the machine's Redis
    // (`LOAD_REDIS`, default 127.0.0.1:6379; a key prefix of its own). Skipped, and said so,
    // when no Redis answers: the bot would fall back to memory and the row would lie.
    let redis = std::env::var("LOAD_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let reachable = url::Url::parse(&redis).ok().is_some_and(|u| {
        let port = u.port().unwrap_or(6379);
        let host = u.host_str().unwrap_or("127.0.0.1").to_string();
        std::net::TcpStream::connect((host.as_str(), port)).is_ok()
    });
    if reachable {
        let state = format!(
            "\n[state]\nredis_url = \"{redis}\"\nkey_prefix = \"bench-{}:\"\n",
            std::process::id()
        );
        let shared = start(Kind::Bot, Duration::ZERO, &key, &rx_base, &state).await;
        let warm = requests(Chat::Slack, scaled(2000), 1000, "rwarm", &rx_base, &key);
        run(&shared, &warm, 32, None).await;
        let reqs = requests(Chat::Slack, scaled(20_000), 1_000, "redis", &rx_base, &key);
        rows.push(
            pair(
                "Slack commands, 1,000 end users, state on Redis, 64 concurrent",
                (&shared, &floor),
                &reqs,
                64,
                None,
                None,
            )
            .await,
        );
        let reqs = requests(Chat::Slack, scaled(3_000), 1_000, "rpaced", &rx_base, &key);
        rows.push(
            pair(
                "Slack commands paced at 500/s, 1,000 end users, state on Redis",
                (&shared, &floor),
                &reqs,
                64,
                Some(500.0),
                None,
            )
            .await,
        );
        println!(
            "\npeak RSS with state on Redis: bot {:.1} MB (in memory: {:.1} MB)",
            status_kb(shared.pid(), "VmHWM:") as f64 / 1024.0,
            status_kb(bot.pid(), "VmHWM:") as f64 / 1024.0,
        );
    } else {
        println!("\n(no Redis answers at {redis}: the shared-state rows are skipped)");
    }
    println!(
        "\npeak RSS under the 0 ms load: bot {:.1} MB, floor {:.1} MB (ratio {})",
        status_kb(bot.pid(), "VmHWM:") as f64 / 1024.0,
        status_kb(floor.pid(), "VmHWM:") as f64 / 1024.0,
        ratio(
            status_kb(bot.pid(), "VmHWM:") as f64,
            status_kb(floor.pid(), "VmHWM:") as f64
        )
    );
    let mut rounds = Vec::new();
    for round in 1..=3 {
        let reqs = requests(
            Chat::Slack,
            scaled(30_000),
            1_000,
            &format!("round{round}"),
            &rx_base,
            &key,
        );
        let b = run(&bot, &reqs, 64, None).await;
        let f = run(&floor, &reqs, 64, None).await;
        rounds.push((b.rss_kb, b.hwm_kb, f.rss_kb, f.hwm_kb));
    }
    println!(
        "\n## Memory over three rounds of {} Slack commands (RSS after each round, MB)",
        scaled(30_000)
    );
    for (i, (b, bh, f, fh)) in rounds.iter().enumerate() {
        println!(
            "round {}: bot {:.1} (peak {:.1}), floor {:.1} (peak {:.1})",
            i + 1,
            *b as f64 / 1024.0,
            *bh as f64 / 1024.0,
            *f as f64 / 1024.0,
            *fh as f64 / 1024.0
        );
    }
    drop(bot);
    drop(floor);

    // Planhat at 50 ms: one round trip.
    let bot = start(Kind::Bot, Duration::from_millis(50), &key, &rx_base, "").await;
    let floor = start(Kind::Floor, Duration::from_millis(50), &key, &rx_base, "").await;
    let warm = requests(Chat::Slack, scaled(200), 1_000, "warm50", &rx_base, &key);
    run(&bot, &warm, 16, None).await;
    run(&floor, &warm, 16, None).await;
    let reqs = requests(Chat::Slack, scaled(2_000), 1_000, "fifty", &rx_base, &key);
    rows.push(
        pair(
            "Slack commands, sandbox at 50 ms, 16 concurrent",
            (&bot, &floor),
            &reqs,
            16,
            None,
            None,
        )
        .await,
    );
    drop(bot);
    drop(floor);

    // A burst with Planhat slow: the bot acknowledges and delivers later; the floor just waits.
    let n = scaled(2_000);
    let reqs = requests(Chat::Slack, n, 1_000, "burst", &rx_base, &key);
    let bot = start(Kind::Bot, Duration::from_secs(4), &key, &rx_base, "").await;
    let floor = start(Kind::Floor, Duration::from_secs(4), &key, &rx_base, "").await;
    let before = delivered.load(Ordering::Relaxed);
    rows.push(
        pair(
            "Burst: all Slack commands at once, sandbox at 4 s",
            (&bot, &floor),
            &reqs,
            n,
            None,
            None,
        )
        .await,
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while delivered.load(Ordering::Relaxed) - before < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (bot_stats, floor_stats) = (sandbox_stats(&bot).await, sandbox_stats(&floor).await);
    println!(
        "bot: late deliveries (link or clear error) received {} of {n}; Planhat peak in flight {} (max_in_flight 32)",
        delivered.load(Ordering::Relaxed) - before,
        bot_stats["peak_in_flight"]
    );
    println!(
        "floor: Planhat peak in flight {} (the floor has no limit and no deferral)",
        floor_stats["peak_in_flight"]
    );
    drop(bot);
    drop(floor);
    go_hop(&key, &rx_base).await;
    search_hop(&key, &rx_base).await;
    summary(&rows);
}

/// `--drive bot|floor slack|discord USERS N [CONCURRENCY]`: one scenario against one server,
/// for profiles (instruction counts per request under `LOAD_CALLGRIND=1`).
async fn drive(args: &[String]) {
    let usage = "--drive bot|floor slack|discord USERS N [CONCURRENCY]";
    let kind = match args.first().map(String::as_str) {
        Some("bot") => Kind::Bot,
        Some("floor") => Kind::Floor,
        _ => panic!("{usage}"),
    };
    let chat = match args.get(1).map(String::as_str) {
        Some("slack") => Chat::Slack,
        Some("discord") => Chat::Discord,
        _ => panic!("{usage}"),
    };
    let users: usize = args.get(2).and_then(|s| s.parse().ok()).expect(usage);
    let n: usize = args.get(3).and_then(|s| s.parse().ok()).expect(usage);
    let concurrency: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(8);
    let key = SigningKey::from_bytes(&[9u8; 32]);
    let (rx_base, _) = receiver().await;
    let extra = std::env::var("LOAD_PLANHAT_EXTRA").unwrap_or_default();
    let server = start(kind, Duration::ZERO, &key, &rx_base, &extra).await;
    let warm = requests(
        chat,
        (n / 4).clamp(50, 500),
        1_000,
        "drivewarm",
        &rx_base,
        &key,
    );
    run(&server, &warm, concurrency, None).await;
    let callgrind = callgrind_dir();
    let ctl = |what: &str| {
        let _ = Command::new("callgrind_control")
            .args([what, &server.pid().to_string()])
            .stdout(Stdio::null())
            .status();
    };
    if callgrind.is_some() {
        ctl("-z");
    }
    let perf_data = std::env::temp_dir().join(format!("pb-perf-{}.data", std::process::id()));
    let mut perf = std::env::var_os("LOAD_PERF").and_then(|_| {
        Command::new("perf")
            .args(["record", "-e", "cpu-clock", "-F", "4000", "-g", "-p"])
            .arg(server.pid().to_string())
            .arg("-o")
            .arg(&perf_data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()
    });
    if perf.is_some() {
        tokio::time::sleep(Duration::from_millis(500)).await; // perf attaches
    }
    let (mut answered, mut errors, mut cpu, mut wall) = (0, 0, 0.0, Duration::ZERO);
    for first in (0..n).step_by(1000) {
        let reqs = requests_from(
            chat,
            first,
            1000.min(n - first),
            users,
            "drive",
            &rx_base,
            &key,
        );
        let r = run(&server, &reqs, concurrency, None).await;
        (answered, errors) = (answered + r.answered, errors + r.errors);
        (cpu, wall) = (cpu + r.server_cpu, wall + r.wall);
    }
    println!(
        "{n} requests: {answered} answered, {errors} errors, CPU {:.1} µs/request, {:.0} req/s",
        cpu * 1e6 / n as f64,
        n as f64 / wall.as_secs_f64()
    );
    let mb = |key| status_kb(server.pid(), key) as f64 / 1024.0;
    println!(
        "server RSS {:.1} MB (peak {:.1}): anonymous {:.1}, file-backed {:.1}",
        mb("VmRSS:"),
        mb("VmHWM:"),
        mb("RssAnon:"),
        mb("RssFile:")
    );
    if let Some(perf) = perf.as_mut() {
        let _ = Command::new("kill")
            .args(["-INT", &perf.id().to_string()])
            .status();
        let _ = perf.wait();
        println!("perf profile: {}", perf_data.display());
    }
    if let Some(dir) = callgrind {
        ctl("-d");
        // The dump is the newest file; its `totals:` line counts the requests alone.
        let newest = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .contains(&server.pid().to_string())
            })
            .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok());
        if let Some(file) = newest {
            let text = std::fs::read_to_string(file.path()).unwrap_or_default();
            let total: u64 = text
                .lines()
                .find_map(|l| {
                    l.strip_prefix("totals:")
                        .or_else(|| l.strip_prefix("summary:"))
                })
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            println!(
                "instructions: {total} in all, {:.0} per request (profile: {})",
                total as f64 / n as f64,
                file.path().display()
            );
        }
    }
}

/// `portal_bot_held_*` from the bot's `/metrics`: holder → (entries, bytes, capacity bytes),
/// and lookups by (holder, result).
async fn held(server: &Server) -> (Vec<(String, [u64; 3])>, Vec<(String, u64)>) {
    let Some(metrics) = server.metrics else {
        return (Vec::new(), Vec::new());
    };
    let text = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut held: Vec<(String, [u64; 3])> = Vec::new();
    let mut lookups: Vec<(String, u64)> = Vec::new();
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: u64 = value.parse().unwrap_or(0);
        let label = |l: &str| {
            series
                .split_once(&format!("{l}=\""))
                .and_then(|(_, rest)| rest.split_once('"'))
                .map(|(v, _)| v.to_string())
        };
        let slot = if series.starts_with("portal_bot_held_entries{") {
            0
        } else if series.starts_with("portal_bot_held_bytes{") {
            1
        } else if series.starts_with("portal_bot_held_capacity_bytes{") {
            2
        } else {
            if series.starts_with("portal_bot_held_lookups_total{") {
                if let (Some(h), Some(r)) = (label("holder"), label("result")) {
                    lookups.push((format!("{h} {r}"), value));
                }
            }
            continue;
        };
        let Some(holder) = label("holder") else {
            continue;
        };
        match held.iter_mut().find(|(h, _)| *h == holder) {
            Some((_, v)) => v[slot] = value,
            None => {
                let mut v = [0; 3];
                v[slot] = value;
                held.push((holder, v));
            }
        }
    }
    (held, lookups)
}

/// `--drive` alone: memory by distinct end users. For 1, 1,000, 30,000 and 100,000 end users,
/// a fresh floor, a fresh bot and a fresh bot with name lookups on (Planhat's budget raised
/// out of reach, so every new end user's name is fetched and cached: the name cache's worst
/// case) each serve max(30,000, end users) Slack commands, 50 concurrent, Planhat at 0 ms;
/// then their anonymous memory (RssAnon) and its peak, and what the bot's holders hold.
async fn memory() {
    let key = SigningKey::from_bytes(&[9u8; 32]);
    let (rx_base, _) = receiver().await;
    println!(
        "\n## Memory by distinct end users (Slack commands, 50 concurrent, Planhat at 0 ms)\n"
    );
    println!("| end users | requests | floor RssAnon MB | bot RssAnon MB (÷ floor) | bot with name lookups, RssAnon MB (÷ floor) | bot CPU µs/request (÷ floor) |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let mut details = Vec::new();
    for users in [1usize, 1_000, 30_000, 100_000] {
        let n = users.max(30_000);
        let mut figures = Vec::new();
        for (kind, extra) in [
            (Kind::Floor, ""),
            (Kind::Bot, ""),
            (Kind::Bot, "calls_per_minute = 1000000"),
        ] {
            let server = start(kind, Duration::ZERO, &key, &rx_base, extra).await;
            let warm = requests(Chat::Slack, 500, 1_000, "memwarm", &rx_base, &key);
            run(&server, &warm, 50, None).await;
            let (mut cpu, mut wall) = (0.0, Duration::ZERO);
            for first in (0..n).step_by(10_000) {
                let reqs = requests_from(
                    Chat::Slack,
                    first,
                    10_000.min(n - first),
                    users,
                    "mem",
                    &rx_base,
                    &key,
                );
                let r = run(&server, &reqs, 50, None).await;
                assert_eq!(r.errors, 0, "every command answered");
                (cpu, wall) = (cpu + r.server_cpu, wall + r.wall);
            }
            let anon = status_kb(server.pid(), "RssAnon:") as f64 / 1024.0;
            let (holders, lookups) = held(&server).await;
            if !holders.is_empty() {
                details.push((users, extra.to_string(), wall, holders, lookups));
            }
            figures.push((anon, cpu * 1e6 / n as f64));
        }
        let (floor, bot, names) = (figures[0], figures[1], figures[2]);
        println!(
            "| {users} | {n} | {:.1} | {:.1} ({}) | {:.1} ({}) | {:.0} / {:.0} ({}) |",
            floor.0,
            bot.0,
            ratio(bot.0, floor.0),
            names.0,
            ratio(names.0, floor.0),
            bot.1,
            floor.1,
            ratio(bot.1, floor.1)
        );
    }
    println!("\nWhat the bot holds after each run (`portal_bot_held_*`; bytes are the holders' own estimates):\n");
    println!("| end users | name lookups | holder | entries | KB | of capacity KB |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (users, extra, wall, holders, lookups) in &details {
        let on = if extra.is_empty() { "budget" } else { "on" };
        for (holder, [entries, bytes, cap]) in holders {
            if *entries == 0 && *bytes == 0 {
                continue;
            }
            let cap = if *cap == 0 {
                "—".to_string()
            } else {
                format!("{}", cap / 1024)
            };
            println!(
                "| {users} | {on} | {holder} | {entries} | {} | {cap} |",
                bytes / 1024
            );
        }
        let minutes = wall.as_secs_f64() / 60.0;
        for (what, n) in lookups {
            println!(
                "| {users} | {on} | lookups: {what} | {n} ({:.0} a minute) | | |",
                *n as f64 / minutes
            );
        }
    }
}

/// The browser hop: Slack commands with `public_url` without and with `[sign_in]` (sign-in
/// must cost nothing on the command path), then `/go/` clicks from browsers that are signed
/// in: the page's `GET` and the `POST` that mints (latency and server CPU per click).
async fn go_hop(key: &SigningKey, rx_base: &str) {
    let n = scaled(10_000);
    println!("\n## The browser hop: {n} Slack commands with /go/ links, 64 concurrent");
    println!("| bot | CPU µs/command | p50 ms | p99 ms | errors |");
    println!("| --- | --- | --- | --- | --- |");
    let mut servers = Vec::new();
    for (hop, name) in [
        (Hop::Go, "public_url"),
        (Hop::GoSignedIn, "public_url + [sign_in]"),
    ] {
        let server = start_bot_with(Duration::ZERO, key, rx_base, "", hop).await;
        let warm = requests(Chat::Slack, scaled(2000), 1000, "gowarm", rx_base, key);
        run(&server, &warm, 32, None).await;
        let reqs = requests(Chat::Slack, n, 1000, "gocmd", rx_base, key);
        let r = run(&server, &reqs, 64, None).await;
        println!(
            "| {name} | {:.1} | {:.2} | {:.2} | {} |",
            r.cpu_us(),
            ms(r.pct(0.5)),
            ms(r.pct(0.99)),
            r.errors
        );
        servers.push(server);
    }
    let server = &servers[1];

    // Signed-in browsers: one session cookie per asker, made with the bot's key.
    let config = portal_bot::core::config::SignInConfig {
        cookie_key: portal_bot::core::secret::Secret::new(COOKIE_KEY),
        session_lifetime: Duration::from_secs(3600),
        slack: None,
        discord: None,
        oidc: None,
    };
    let public = url::Url::parse(&format!("http://{}", server.addr)).unwrap();
    let sign_in = portal_bot::core::signin::SignIn::new(&config, &public, Vec::new());
    let unix = now();
    let cookies: Vec<String> = (0..ASKERS)
        .map(|i| {
            let session = portal_bot::core::signin::Session {
                provider: portal_bot::core::signin::ProviderKind::Slack,
                subject: format!("U{i}"),
                team: Some("T1".into()),
                name: None,
                authenticated_at: unix,
                expires: unix + 3600,
            };
            format!(
                "{}={}",
                portal_bot::core::signin::SignIn::cookie_name(session.provider),
                sign_in.session_cookie(&session)
            )
        })
        .collect();

    // The links: one command each (asker i % ASKERS), answered inline with a /go/ URL.
    let clicks = scaled(2_000);
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(16)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let reqs = requests(Chat::Slack, clicks, 1000, "goclick", rx_base, key);
    let mut links = Vec::with_capacity(clicks);
    for (i, req) in reqs.iter().enumerate() {
        let mut rb = client
            .post(format!("http://{}/slack/commands", server.addr))
            .body(req.body.clone());
        for (k, v) in &req.headers {
            rb = rb.header(k, v);
        }
        let body = rb.send().await.unwrap().text().await.unwrap();
        if let Some(at) = body.find("/go/") {
            let id = &body[at + 4..(at + 44).min(body.len())];
            links.push((
                format!("http://{}/go/{id}", server.addr),
                cookies[i % ASKERS].clone(),
            ));
        }
    }
    let pid = server.pid();
    let limit = Arc::new(Semaphore::new(16));
    let cpu0 = cpu_seconds(pid);
    let mut tasks = Vec::new();
    for (url, cookie) in links {
        let permit = limit.clone().acquire_owned().await.unwrap();
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let page = client.get(&url).header("cookie", &cookie).send().await;
            let get = t.elapsed();
            let t = Instant::now();
            let post = client.post(&url).header("cookie", &cookie).send().await;
            let minted = t.elapsed();
            drop(permit);
            let ok = matches!(&page, Ok(r) if r.status() == 200)
                && matches!(&post, Ok(r) if r.status() == 302);
            (get, minted, ok)
        }));
    }
    let (mut gets, mut posts, mut failed) = (Vec::new(), Vec::new(), 0);
    for t in tasks {
        let (g, p, ok) = t.await.unwrap();
        if ok {
            gets.push(g);
            posts.push(p);
        } else {
            failed += 1;
        }
    }
    let cpu = cpu_seconds(pid) - cpu0;
    gets.sort();
    posts.sort();
    let pct = |v: &[Duration], p: f64| {
        v.get(((v.len().max(1) - 1) as f64 * p).round() as usize)
            .map_or(0.0, |d| ms(*d))
    };
    println!(
        "\n/go/ clicks, signed-in browsers, 16 concurrent: {} opened, {failed} failed; \
         page GET p50 {:.2} ms, p99 {:.2} ms; minting POST (access check + mint + 302) p50 {:.2} ms, \
         p99 {:.2} ms; server CPU {:.1} µs per click (GET + POST)",
        posts.len(),
        pct(&gets, 0.5),
        pct(&gets, 0.99),
        pct(&posts, 0.5),
        pct(&posts, 0.99),
        cpu * 1e6 / posts.len().max(1) as f64
    );
}

/// A signed Discord autocomplete interaction (type 4) from asker `i` for `typed`.
fn autocomplete_req(key: &SigningKey, i: usize, typed: &str) -> Req {
    static NEXT: std::sync::atomic::AtomicU64 =
        std::sync::atomic::AtomicU64::new(1190000000000000000);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let ts = now().to_string();
    let body = serde_json::json!({
        "id": id.to_string(), "application_id": APP_ID.to_string(), "type": 4, "token": format!("tok{id}"),
        "version": 1, "guild_id": GUILD.to_string(), "channel_id": "1400000000000000004", "locale": "en-US",
        "entitlements": [], "attachment_size_limit": 8388608,
        "member": {"user": {"id": (1500000000000000000u64 + (i % ASKERS) as u64).to_string(), "username": "b"},
                   "roles": [], "deaf": false, "mute": false, "flags": 0},
        "data": {"id": "1700000000000000007", "name": "portal", "type": 1,
                 "options": [{"name": "enduser", "type": 3, "value": typed, "focused": true}]}
    })
    .to_string();
    let sig = hex::encode(
        key.sign(&[ts.as_bytes(), body.as_bytes()].concat())
            .to_bytes(),
    );
    Req {
        path: "/discord/interactions",
        body: Bytes::from(body),
        headers: vec![
            (
                HeaderName::from_static("x-signature-ed25519"),
                HeaderValue::from_str(&sig).unwrap(),
            ),
            (
                HeaderName::from_static("x-signature-timestamp"),
                HeaderValue::from_str(&ts).unwrap(),
            ),
            (
                HeaderName::from_static("content-type"),
                HeaderValue::from_static("application/json"),
            ),
        ],
    }
}

/// What people type: prefixes of names, a typo, name and company.
fn typed(i: usize) -> String {
    let (name, _, _, company) = portal_bot::sandbox::crowd(i * 7919);
    let first_word = company.split(' ').next().unwrap_or("");
    match i % 4 {
        0 => name.chars().take(3).collect(),
        1 => name.clone(),
        2 => format!("{name} {first_word}"),
        _ => {
            // A swapped pair of letters in the first name.
            let mut c: Vec<char> = name.chars().collect();
            if c.len() > 3 {
                c.swap(1, 2);
            }
            c.into_iter().collect()
        }
    }
}

/// Finding the end user by name at 100,000 end users: the index's build time and memory (built
/// in this process from the same people the sandbox lists), then the bot itself: how long its
/// first read takes, Discord autocomplete through it (end to end, p50/p99, server CPU), and
/// Slack commands with and without `[search]` (the command path must not change).
async fn search_hop(key: &SigningKey, rx_base: &str) {
    let n = scaled(100_000).max(10_000);
    println!("\n## Finding the end user by name, {n} end users");
    let listed: Vec<portal_bot::core::search::Listed> = (0..n)
        .map(|i| {
            let (name, email, company_id, company) = portal_bot::sandbox::crowd(i);
            portal_bot::core::search::Listed {
                id: format!("person-{i}"),
                name: Some(name),
                email: Some(email),
                company_id: Some(company_id),
                company_name: Some(company),
            }
        })
        .collect();
    let t = Instant::now();
    let index = portal_bot::core::search::Index::build(listed, 1_000_000);
    let build = t.elapsed();
    let bytes = index.heap_bytes();
    let yes = |_: Option<&str>| true;
    let mut times: Vec<Duration> = (0..2_000)
        .map(|i| {
            let q = typed(i);
            let t = Instant::now();
            let found = index.search(&q, 25, &yes, None);
            std::hint::black_box(found);
            t.elapsed()
        })
        .collect();
    times.sort();
    let p = |v: &[Duration], q: f64| ms(v[((v.len() - 1) as f64 * q).round() as usize]);
    println!(
        "index (in process): built in {:.0} ms, {:.1} MB on the heap ({:.0} bytes per end user); \
         a query: p50 {:.3} ms, p99 {:.3} ms",
        ms(build),
        bytes as f64 / 1e6,
        bytes as f64 / n as f64,
        p(&times, 0.5),
        p(&times, 0.99)
    );
    drop(index);

    let bot = start_bot_searching(Duration::ZERO, key, rx_base, "", Hop::Direct, Some(n)).await;
    let started = Instant::now();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    loop {
        let req = autocomplete_req(key, 0, "jane");
        let mut rb = client
            .post(format!("http://{}/discord/interactions", bot.addr))
            .body(req.body);
        for (k, v) in req.headers {
            rb = rb.header(k, v);
        }
        let body = rb.send().await.unwrap().text().await.unwrap();
        if body.contains("person-") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the bot's index was not read"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mb = |key| status_kb(bot.pid(), key) as f64 / 1024.0;
    println!(
        "the bot: index read from the sandbox ({} pages) and built within {:.1} s of start; RSS {:.1} MB \
         (peak {:.1}), anonymous {:.1} MB",
        n.div_ceil(5_000),
        started.elapsed().as_secs_f64(),
        mb("VmRSS:"),
        mb("VmHWM:"),
        mb("RssAnon:")
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let index = held(&bot)
        .await
        .0
        .into_iter()
        .find(|(h, _)| h == "search_index")
        .map_or(0, |(_, [_, bytes, _])| bytes);
    println!(
        "5 s later: anonymous {:.1} MB, of which the index (portal_bot_held_bytes) {:.1} MB",
        mb("RssAnon:"),
        index as f64 / 1024.0 / 1024.0
    );
    let reqs: Arc<Vec<Req>> = Arc::new(
        (0..scaled(5_000))
            .map(|i| autocomplete_req(key, i, &typed(i)))
            .collect(),
    );
    let r = run_any(&bot, &reqs, 16).await;
    println!(
        "autocomplete through the bot (signed Discord interactions, 16 concurrent): p50 {:.2} ms, \
         p99 {:.2} ms, server CPU {:.1} µs per request (Ed25519 check included), {} errors",
        ms(r.pct(0.5)),
        ms(r.pct(0.99)),
        r.cpu_us(),
        r.errors
    );
    let warm = requests(Chat::Slack, scaled(2000), 1000, "swarm", rx_base, key);
    run(&bot, &warm, 32, None).await;
    let cmds = requests(Chat::Slack, scaled(10_000), 1000, "scmd", rx_base, key);
    let with = run(&bot, &cmds, 64, None).await;
    drop(bot);
    let plain = start_bot_with(Duration::ZERO, key, rx_base, "", Hop::Direct).await;
    run(&plain, &warm, 32, None).await;
    let without = run(&plain, &cmds, 64, None).await;
    println!(
        "Slack commands by id, 64 concurrent: with [search] {:.1} µs CPU, p50 {:.2} ms; without {:.1} µs, p50 {:.2} ms",
        with.cpu_us(),
        ms(with.pct(0.5)),
        without.cpu_us(),
        ms(without.pct(0.5))
    );
}

/// Sends `reqs` (any route) with at most `concurrency` in flight; every 200 is an answer.
async fn run_any(server: &Server, reqs: &Arc<Vec<Req>>, concurrency: usize) -> Run {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let limit = Arc::new(Semaphore::new(concurrency));
    let errors = Arc::new(AtomicUsize::new(0));
    let pid = server.pid();
    let cpu0 = cpu_seconds(pid);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(reqs.len());
    for req in reqs.iter() {
        let permit = limit.clone().acquire_owned().await.unwrap();
        let (client, errors, req) = (client.clone(), errors.clone(), req.clone());
        let url = format!("http://{}{}", server.addr, req.path);
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let mut rb = client.post(url).body(req.body);
            for (k, v) in req.headers {
                rb = rb.header(k, v);
            }
            let ok = matches!(rb.send().await, Ok(r) if r.status() == 200);
            if !ok {
                errors.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
            t.elapsed()
        }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    for t in tasks {
        latencies.push(t.await.unwrap());
    }
    latencies.sort();
    let errors = errors.load(Ordering::Relaxed);
    Run {
        answered: latencies.len() - errors,
        latencies,
        errors,
        wall: started.elapsed(),
        server_cpu: cpu_seconds(pid) - cpu0,
        own_cpu: 0.0,
        rss_kb: status_kb(pid, "VmRSS:"),
        hwm_kb: status_kb(pid, "VmHWM:"),
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        // `cargo bench -- --list` / `cargo test --benches` probing: nothing to list.
        return std::process::ExitCode::SUCCESS;
    }
    if let Some(i) = args.iter().position(|a| a == "--floor-server") {
        let arg = |k: usize| args.get(i + k).map(String::as_str).unwrap_or("");
        return floor::serve(arg(1), arg(2), arg(3));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        match args.iter().position(|a| a == "--drive") {
            Some(i) if args.len() == i + 1 => memory().await,
            Some(i) => drive(&args[i + 1..]).await,
            None if args.iter().any(|a| a == "--search") => {
                let key = SigningKey::from_bytes(&[9u8; 32]);
                let (rx_base, _) = receiver().await;
                search_hop(&key, &rx_base).await;
            }
            None if args.iter().any(|a| a == "--go") => {
                let key = SigningKey::from_bytes(&[9u8; 32]);
                let (rx_base, _) = receiver().await;
                go_hop(&key, &rx_base).await;
            }
            None => full().await,
        }
    });
    std::process::ExitCode::SUCCESS
}
