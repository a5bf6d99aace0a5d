//! A sandbox Planhat inside the binary, on 127.0.0.1: the demo, `serve --sandbox` and the load
//! benchmark run against it, so the whole flow works with no Planhat account.
//!
//! It answers the same endpoints the bot uses, in shapes the real API uses, with a fixed cast of
//! end users (listed by [`END_USERS`] and in the README) that show every path: a link, no
//! access, a slow answer, a failing Planhat, an unknown id, an email with several matches.
//! Its signed URLs point back at the sandbox's own `/redirect/{token}` page, which says whom
//! the link logged in, or that it has expired.
//!
//! For load benchmarks it also knows any number of synthetic end users, `load-0`, `load-1`, …
//! (each answers like `jane`), and its own per-call work stays constant however many distinct
//! end users and links it has seen: minted tokens are remembered in a bounded O(1) cache, so the
//! sandbox never becomes the bottleneck of the benchmark it serves.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rand::RngExt;
use serde_json::json;
use url::Url;

use crate::core::secret::Secret;

/// The API token the sandbox accepts (it guards nothing real).
pub const SANDBOX_TOKEN: &str = "sandbox-token";

/// The `Authorization` header that carries [`SANDBOX_TOKEN`].
const SANDBOX_AUTH: &str = "Bearer sandbox-token";

/// Synthetic end users for load benchmarks are `load-` followed by digits.
pub const LOAD_USER_PREFIX: &str = "load-";

/// Minted tokens remembered at most (the oldest go first): enough for every link a load
/// benchmark mints within a link's lifetime, and a bound however long the sandbox runs.
const MAX_MINTED: usize = 200_000;

/// One of the sandbox's end users.
pub struct SandboxUser {
    pub id: &'static str,
    pub email: &'static str,
    pub name: &'static str,
    pub company: &'static str,
    /// What the sandbox does for this end user, in words (for the demo and README).
    pub shows: &'static str,
}

/// The sandbox's cast. `nobody` (any other id) is unknown: 404.
pub const END_USERS: &[SandboxUser] = &[
    SandboxUser {
        id: "jane",
        email: "jane@acme.example",
        name: "Jane Doe",
        company: "Acme",
        shows: "a link, at once",
    },
    SandboxUser {
        id: "slow",
        email: "slow@acme.example",
        name: "Sam Slow",
        company: "Acme",
        shows: "a link, slowly (the bot acknowledges, then delivers)",
    },
    SandboxUser {
        id: "noaccess",
        email: "no@globex.example",
        name: "Nia Noaccess",
        company: "Globex",
        shows: "no portal access",
    },
    SandboxUser {
        id: "broken",
        email: "broken@initech.example",
        name: "Bo Broken",
        company: "Initech",
        shows: "Planhat failing (HTTP 503)",
    },
    SandboxUser {
        id: "pat-1",
        email: "pat@shared.example",
        name: "Pat One",
        company: "Shared Ltd",
        shows: "a link; shares an email with pat-2",
    },
    SandboxUser {
        id: "pat-2",
        email: "pat@shared.example",
        name: "Pat Two",
        company: "Shared Co",
        shows: "a link; shares an email with pat-1",
    },
];

/// The sandbox's Planhat users (CSMs), who own its companies: (id, email).
pub const CSMS: &[(&str, &str)] = &[
    ("u-casey", "casey@sandbox.example"),
    ("u-dana", "dana@sandbox.example"),
];

/// Who owns which of the cast's companies (owner, co-owner): Casey owns Acme and co-owns
/// Initech; Dana owns everything else, the crowd's companies included.
fn owners(company_id: &str) -> (&'static str, Option<&'static str>) {
    match company_id {
        "cast-acme" => ("u-casey", None),
        "cast-initech" => ("u-dana", Some("u-casey")),
        _ => ("u-dana", None),
    }
}

/// The cast's company id for a company name.
fn cast_company_id(company: &str) -> String {
    format!("cast-{}", company.to_lowercase().replace(' ', "-"))
}

/// Notes the sandbox keeps for `GET /notes` (the newest; the demo shows them).
const MAX_NOTES: usize = 100;

/// How the sandbox behaves.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// Added to every API answer (load benchmarks model Planhat's round trip with it).
    pub latency: Duration,
    /// The extra delay of the `slow` end user.
    pub slow: Duration,
    /// How long a minted link opens the portal.
    pub link_lifetime: Duration,
    /// How many people of the crowd the end-user list names (search; default [`CROWD`]).
    pub crowd: usize,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            latency: Duration::ZERO,
            slow: Duration::from_secs(4),
            link_lifetime: Duration::from_secs(30),
            crowd: CROWD,
        }
    }
}

/// A running sandbox.
pub struct Sandbox {
    pub addr: SocketAddr,
    pub base: Url,
    task: tokio::task::JoinHandle<()>,
}

impl Sandbox {
    /// Starts the sandbox on a free loopback port.
    pub async fn start(options: SandboxOptions) -> std::io::Result<Sandbox> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let base = Url::parse(&format!("http://{addr}")).map_err(std::io::Error::other)?;
        let state = Arc::new(SandboxState {
            base: base.as_str().trim_end_matches('/').to_string(),
            options,
            minted: quick_cache::sync::Cache::new(MAX_MINTED),
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            calls: AtomicUsize::new(0),
            notes: Default::default(),
        });
        let app = Router::new()
            .route("/shareabletokens/access/{id}", get(access))
            .route("/shareabletokens/{id}", get(mint))
            .route("/endusers", get(endusers))
            .route("/endusers/{id}", get(enduser))
            .route("/redirect/{token}", get(redirect))
            .route("/companies/{id}", get(company))
            .route("/users", get(users))
            .route("/conversations", axum::routing::put(put_notes))
            .route("/notes", get(notes))
            .route("/stats", get(stats))
            .with_state(state);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Sandbox { addr, base, task })
    }

    /// The token to configure for it.
    pub fn token(&self) -> Secret {
        Secret::new(SANDBOX_TOKEN)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct SandboxState {
    base: String,
    options: SandboxOptions,
    /// Minted token → (end user, when), so `/redirect/` can say whom and whether expired.
    /// Bounded with O(1) eviction: a token pushed out reads as "never minted".
    minted: quick_cache::sync::Cache<String, (Arc<str>, Instant)>,
    /// API calls being answered now, the most ever at once, and all calls: a load benchmark
    /// checks `max_in_flight` against these.
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    calls: AtomicUsize,
    /// Notes written to companies' timelines (`PUT /conversations`), the newest last.
    notes: std::sync::Mutex<std::collections::VecDeque<serde_json::Value>>,
}

/// Counts a call in flight for as long as its work lasts. Like a real server, the sandbox
/// goes on working on a call whose client hung up: the count stays until the work would have
/// ended, so a client that gives up and calls again is seen to have two calls in flight.
struct Counting {
    state: Arc<SandboxState>,
    ends: tokio::time::Instant,
}

impl Counting {
    fn new(state: &Arc<SandboxState>, work: Duration) -> Self {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.peak.fetch_max(now, Ordering::SeqCst);
        state.calls.fetch_add(1, Ordering::Relaxed);
        Counting {
            state: state.clone(),
            ends: tokio::time::Instant::now() + work,
        }
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        let state = self.state.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if tokio::time::Instant::now() < self.ends => {
                let ends = self.ends;
                rt.spawn(async move {
                    tokio::time::sleep_until(ends).await;
                    state.in_flight.fetch_sub(1, Ordering::SeqCst);
                });
            }
            _ => {
                state.in_flight.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

async fn stats(State(state): State<Arc<SandboxState>>) -> Response {
    axum::Json(json!({
        "in_flight": state.in_flight.load(Ordering::SeqCst),
        "peak_in_flight": state.peak.load(Ordering::SeqCst),
        "calls": state.calls.load(Ordering::Relaxed),
    }))
    .into_response()
}

fn find(id: &str) -> Option<&'static SandboxUser> {
    END_USERS.iter().find(|u| u.id == id)
}

/// The crowd for search: `person-0` … `person-19999` (by default: [`SandboxOptions::crowd`]),
/// with names and companies that repeat the way a real tenant's do (many Janes, many people at
/// each company), each answering like `jane`.
pub const CROWD: usize = 20_000;
const CROWD_PREFIX: &str = "person-";
const FIRST: [&str; 24] = [
    "Jane", "John", "Ana", "Jöns", "Pat", "Sam", "Lee", "Kim", "Maria", "José", "Aiko", "Noah",
    "Emma", "Liam", "Olivia", "Mateo", "Zoë", "Ravi", "Chloé", "Omar", "Ingrid", "Tomás", "Mia",
    "Élodie",
];
const LAST: [&str; 20] = [
    "Doe",
    "Smith",
    "Ångström",
    "Roe",
    "Lee",
    "Park",
    "García",
    "Müller",
    "Okafor",
    "Tanaka",
    "Nguyen",
    "Rossi",
    "Novak",
    "Silva",
    "Dubois",
    "Kowalski",
    "Haddad",
    "Larsen",
    "Costa",
    "Ivanova",
];
const COMPANY_WORDS: [&str; 25] = [
    "Acme",
    "Globex",
    "Initech",
    "Umbrella",
    "Stark",
    "Wayne",
    "Wonka",
    "Tyrell",
    "Cyberdyne",
    "Soylent",
    "Hooli",
    "Vandelay",
    "Pied Piper",
    "Gringotts",
    "Monarch",
    "Oscorp",
    "Nakatomi",
    "Aperture",
    "Massive",
    "Dunder",
    "Vehement",
    "Krusty",
    "Blue Sun",
    "Virtucon",
    "Duff",
];
const COMPANY_KINDS: [&str; 8] = [
    "Labs",
    "Industries",
    "Group",
    "Analytics",
    "Logistics",
    "Health",
    "Finance",
    "Media",
];

/// Person `n` of the crowd (also for benchmarks that build a search index of the same people):
/// (name, email, company id, company name). Names and companies are
/// drawn by a hash of `n`, so they repeat the way a real tenant's do, not in a cycle.
pub fn crowd(n: usize) -> (String, String, String, String) {
    let h = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16;
    let first = FIRST[(h % FIRST.len() as u64) as usize];
    let last = LAST[((h >> 8) % LAST.len() as u64) as usize];
    let c = ((h >> 16) % (COMPANY_WORDS.len() * COMPANY_KINDS.len()) as u64) as usize;
    let company = format!(
        "{} {}",
        COMPANY_WORDS[c % COMPANY_WORDS.len()],
        COMPANY_KINDS[c / COMPANY_WORDS.len()]
    );
    let domain: String = company
        .to_lowercase()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let ascii = |t: &str| -> String {
        t.to_lowercase()
            .chars()
            .map(|ch| match ch {
                'ö' => 'o',
                'å' => 'a',
                'é' | 'è' => 'e',
                'í' => 'i',
                'á' => 'a',
                'ü' => 'u',
                'ë' => 'e',
                c => c,
            })
            .collect()
    };
    (
        format!("{first} {last}"),
        format!("{}.{}{n}@{domain}.example", ascii(first), ascii(last)),
        format!("co-{c}"),
        company,
    )
}

fn crowd_user(id: &str) -> Option<usize> {
    id.strip_prefix(CROWD_PREFIX)?
        .parse()
        .ok()
        .filter(|n| *n < 10_000_000)
}

/// The number of a synthetic load-benchmark end user (`load-17` → 17).
fn load_user(id: &str) -> Option<u64> {
    id.strip_prefix(LOAD_USER_PREFIX)?.parse().ok()
}

/// Whom an id names, cast or synthetic: (id, name, company, has access).
fn who(id: &str) -> Option<(Cow<'static, str>, Cow<'static, str>, &'static str, bool)> {
    if let Some(u) = find(id) {
        return Some((u.id.into(), u.name.into(), u.company, u.id != "noaccess"));
    }
    if let Some(n) = crowd_user(id) {
        return Some((id.to_string().into(), crowd(n).0.into(), "the crowd", true));
    }
    let n = load_user(id)?;
    Some((
        id.to_string().into(),
        format!("Load User {n}").into(),
        "Load Co",
        true,
    ))
}

fn authorised(headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .is_some_and(|v| v.as_bytes() == SANDBOX_AUTH.as_bytes())
}

/// The common front of every API answer: latency, auth, the failing and slow end users.
async fn front(
    state: &Arc<SandboxState>,
    headers: &HeaderMap,
    id: Option<&str>,
) -> Result<(), Response> {
    let slow = match id {
        Some("slow") => state.options.slow,
        _ => Duration::ZERO,
    };
    let _counting = Counting::new(state, state.options.latency + slow);
    if !state.options.latency.is_zero() {
        tokio::time::sleep(state.options.latency).await;
    }
    if !authorised(headers) {
        return Err((StatusCode::UNAUTHORIZED, "invalid token").into_response());
    }
    match id {
        Some("slow") => tokio::time::sleep(state.options.slow).await,
        Some("broken") => {
            return Err((StatusCode::SERVICE_UNAVAILABLE, "<html>down</html>").into_response())
        }
        _ => {}
    }
    Ok(())
}

async fn access(
    State(state): State<Arc<SandboxState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = front(&state, &headers, Some(&id)).await {
        return r;
    }
    match who(&id) {
        Some((_, _, _, access)) => axum::Json(json!({ "access": access })).into_response(),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

async fn mint(
    State(state): State<Arc<SandboxState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = front(&state, &headers, Some(&id)).await {
        return r;
    }
    let Some((user, _, _, _)) = who(&id) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let mut bytes = [0u8; 24];
    rand::rng().fill(&mut bytes);
    let token = hex::encode(bytes);
    state
        .minted
        .insert(token.clone(), (Arc::from(user.as_ref()), Instant::now()));
    axum::Json(json!({ "token": token, "url": format!("{}/redirect/{token}", state.base) }))
        .into_response()
}

async fn endusers(
    State(state): State<Arc<SandboxState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = front(&state, &headers, None).await {
        return r;
    }
    let email = query.get("email").map(|e| e.to_ascii_lowercase());
    let cast: Vec<_> = END_USERS
        .iter()
        .filter(|u| email.as_deref().is_none_or(|e| e == u.email))
        .map(|u| {
            json!({ "_id": u.id, "name": u.name, "email": u.email, "companyName": u.company,
                    "companyId": cast_company_id(u.company) })
        })
        .collect();
    if email.is_some() {
        return axum::Json(cast).into_response();
    }
    // The whole list, paged as Planhat pages it: the cast, then the crowd.
    let offset: usize = query
        .get("offset")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let limit: usize = query
        .get("limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
        .min(5_000);
    let total = cast.len() + state.options.crowd;
    let page: Vec<_> = (offset..total.min(offset.saturating_add(limit)))
        .map(|i| match cast.get(i) {
            Some(u) => u.clone(),
            None => {
                let n = i - cast.len();
                let (name, email, company_id, company) = crowd(n);
                json!({ "_id": format!("{CROWD_PREFIX}{n}"), "name": name, "email": email,
                        "companyId": company_id, "companyName": company })
            }
        })
        .collect();
    axum::Json(page).into_response()
}

async fn enduser(
    State(state): State<Arc<SandboxState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = front(&state, &headers, None).await {
        return r;
    }
    if let Some(u) = find(&id) {
        return axum::Json(json!({ "_id": u.id, "name": u.name, "email": u.email,
                                  "companyName": u.company, "companyId": cast_company_id(u.company) }))
        .into_response();
    }
    if let Some(n) = crowd_user(&id) {
        let (name, email, company_id, company) = crowd(n);
        return axum::Json(json!({ "_id": id, "name": name, "email": email,
                                  "companyId": company_id, "companyName": company }))
        .into_response();
    }
    match who(&id) {
        Some((id, name, company, _)) => {
            axum::Json(json!({ "_id": id, "name": name, "companyName": company })).into_response()
        }
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

/// `GET /companies/{id}`: a cast or crowd company, with its owner and co-owner.
async fn company(
    State(state): State<Arc<SandboxState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = front(&state, &headers, None).await {
        return r;
    }
    let name = END_USERS
        .iter()
        .find(|u| cast_company_id(u.company) == id)
        .map(|u| u.company.to_string())
        .or_else(|| id.starts_with("co-").then(|| format!("Company {id}")));
    let Some(name) = name else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let (owner, co_owner) = owners(&id);
    let mut body = json!({ "_id": id, "name": name, "owner": owner });
    if let Some(co) = co_owner {
        body["coOwner"] = json!(co);
    }
    axum::Json(body).into_response()
}

/// `GET /users`: the CSMs, paged.
async fn users(
    State(state): State<Arc<SandboxState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = front(&state, &headers, None).await {
        return r;
    }
    let offset: usize = query
        .get("offset")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let page: Vec<_> = CSMS
        .iter()
        .skip(offset)
        .map(|(id, email)| json!({ "_id": id, "email": email }))
        .collect();
    axum::Json(page).into_response()
}

/// `PUT /conversations`: Notes in bulk, kept for `GET /notes`.
async fn put_notes(
    State(state): State<Arc<SandboxState>>,
    headers: HeaderMap,
    axum::Json(batch): axum::Json<Vec<serde_json::Value>>,
) -> Response {
    if let Err(r) = front(&state, &headers, None).await {
        return r;
    }
    let n = batch.len();
    let mut notes = state.notes.lock().unwrap_or_else(|p| p.into_inner());
    for note in batch {
        if notes.len() == MAX_NOTES {
            notes.pop_front();
        }
        notes.push_back(note);
    }
    axum::Json(json!({ "created": n })).into_response()
}

/// `GET /notes`: the Notes written so far (the sandbox's own page; Planhat shows them on the
/// company's timeline).
async fn notes(State(state): State<Arc<SandboxState>>) -> Response {
    let notes: Vec<_> = state
        .notes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .collect();
    axum::Json(notes).into_response()
}

async fn redirect(State(state): State<Arc<SandboxState>>, Path(token): Path<String>) -> Response {
    let entry = state.minted.get(&token);
    let page = |title: &str, text: String| {
        Html(format!(
            "<!doctype html><title>{title}</title><body style=\"font-family:sans-serif;max-width:40em;margin:4em auto\"><h1>{title}</h1><p>{text}</p></body>"
        ))
    };
    match entry {
        Some((id, at)) if at.elapsed() < state.options.link_lifetime => {
            let who = who(&id)
                .map(|(_, name, company, _)| format!("{name} ({company})"))
                .unwrap_or_default();
            page(
                "Sandbox portal",
                format!("You are signed in to the sandbox portal as {who}."),
            )
            .into_response()
        }
        Some(_) => (
            StatusCode::GONE,
            page(
                "Link expired",
                "This sandbox link has expired; ask the bot for a new one.".into(),
            ),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            page("Unknown link", "The sandbox never minted this link.".into()),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn synthetic_load_users_get_links_and_unknown_ids_do_not() {
        let sandbox = Sandbox::start(SandboxOptions::default()).await.unwrap();
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let get = |path: String| {
            client
                .get(format!("{}{path}", sandbox.base))
                .header("authorization", SANDBOX_AUTH)
                .send()
        };
        let access: serde_json::Value = get("shareabletokens/access/load-42".into())
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(access["access"], true);
        let minted: serde_json::Value = get("shareabletokens/load-42".into())
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let url = minted["url"].as_str().unwrap().to_string();
        let page = client.get(&url).send().await.unwrap().text().await.unwrap();
        assert!(page.contains("Load User 42 (Load Co)"), "{page}");
        for unknown in ["load-", "load-x", "nobody"] {
            let status = get(format!("shareabletokens/{unknown}"))
                .await
                .unwrap()
                .status();
            assert_eq!(status, StatusCode::NOT_FOUND, "{unknown}");
        }
    }
}
