//! The floor: the least a server built from the bot's own stack (axum, reqwest with rustls,
//! tokio, mimalloc) can do to answer `/portal <enduser>`, so every figure of the bot reads
//! against it.
//!
//! It reads the end user out of a Slack form or a Discord interaction, makes the two Planhat
//! calls (access check and mint) concurrently on one pooled client, and answers the URL.
//! Nothing else: no signature check, no policy, no rate limit, no audit, no logging, no metrics,
//! no deferral, no limit on calls in flight. Whatever the bot costs beyond this is the price of
//! those (and of anything it does that it shouldn't).
//!
//! It runs as its own process (the load benchmark starts its own executable with
//! `--floor-server LISTEN PLANHAT_BASE TOKEN`), on the same runtime settings as the bot: a
//! multi-threaded tokio runtime with one worker per core, a listener with the bot's backlog and
//! `TCP_NODELAY`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;

struct Floor {
    http: reqwest::Client,
    base: String,
}

/// Runs the floor server until the process is killed.
pub fn serve(listen: &str, planhat: &str, token: &str) -> std::process::ExitCode {
    let (Ok(addr), Ok(auth)) = (
        listen.parse::<SocketAddr>(),
        HeaderValue::from_str(&format!("Bearer {token}")),
    ) else {
        eprintln!("floor: usage: --floor-server LISTEN PLANHAT_BASE TOKEN");
        return std::process::ExitCode::from(2);
    };
    let mut headers = HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, auth);
    // reqwest's default pool keeps every idle connection: with no limit on calls in flight,
    // a smaller pool would close and reopen connections under load (a TCP handshake per call).
    let http = match reqwest::Client::builder()
        .default_headers(headers)
        .tcp_nodelay(true)
        .no_proxy()
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("floor: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let floor = Arc::new(Floor {
        http,
        base: planhat.trim_end_matches('/').to_string(),
    });
    let app = Router::new()
        .route("/slack/commands", post(slack))
        .route("/discord/interactions", post(discord))
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .with_state(floor);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("floor: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    runtime
        .block_on(async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.set_reuseaddr(true)?;
            socket.set_nodelay(true)?;
            socket.bind(addr)?;
            let listener = socket.listen(8192)?;
            axum::serve(listener, app).await
        })
        .map_or_else(
            |e| {
                eprintln!("floor: {e}");
                std::process::ExitCode::from(2)
            },
            |()| std::process::ExitCode::SUCCESS,
        )
}

/// The two calls at once; the URL when access is yes.
async fn link(floor: &Floor, end_user: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Minted {
        url: String,
    }
    let get = |path: String| async move {
        let r = floor.http.get(path).send().await.ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.bytes().await.ok()
    };
    let (access, minted) = tokio::join!(
        get(format!("{}/shareabletokens/access/{end_user}", floor.base)),
        get(format!("{}/shareabletokens/{end_user}", floor.base)),
    );
    let has_access = access?.windows(4).any(|w| w == b"true");
    let minted: Minted = serde_json::from_slice(&minted?).ok()?;
    has_access.then_some(minted.url)
}

async fn slack(State(floor): State<Arc<Floor>>, body: Bytes) -> Response {
    let Some(end_user) = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "text")
        .map(|(_, v)| v.into_owned())
    else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    match link(&floor, &end_user).await {
        Some(url) => {
            Json(serde_json::json!({ "response_type": "ephemeral", "text": url })).into_response()
        }
        None => StatusCode::BAD_GATEWAY.into_response(),
    }
}

async fn discord(State(floor): State<Arc<Floor>>, body: Bytes) -> Response {
    #[derive(Deserialize)]
    struct Interaction {
        data: Data,
    }
    #[derive(Deserialize)]
    struct Data {
        options: Vec<Opt>,
    }
    #[derive(Deserialize)]
    struct Opt {
        value: String,
    }
    let Some(end_user) = serde_json::from_slice::<Interaction>(&body)
        .ok()
        .and_then(|i| i.data.options.into_iter().next())
        .map(|o| o.value)
    else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    match link(&floor, &end_user).await {
        Some(url) => Json(serde_json::json!({
            "type": 4,
            "data": { "content": url, "flags": 64 }
        }))
        .into_response(),
        None => StatusCode::BAD_GATEWAY.into_response(),
    }
}
