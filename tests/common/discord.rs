//! A recording fake of Discord's REST API on 127.0.0.1 (serenity's `api_url` points at it),
//! shared by the Discord and replica tests. It always serves `GET /gateway`: without it
//! serenity would fall back to Discord's real gateway.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::{APP_ID, CHANNEL};

/// How long a test waits for something the bot sends on its own (edits, registration).
pub const WAIT: Duration = Duration::from_secs(5);

/// One request the fake Discord received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub body: String,
}

impl Seen {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} {} sent non-JSON ({e}): {}",
                self.method, self.path, self.body
            )
        })
    }
}

#[derive(Clone)]
struct FakeState {
    log: Arc<Mutex<Vec<Seen>>>,
    gateway_url: String,
    /// How long each message edit takes to answer, and edits being answered now / at most.
    edit_delay: Duration,
    edits: Arc<(AtomicUsize, AtomicUsize)>,
}

/// A recording stand-in for `https://discord.com/api/v10` on 127.0.0.1.
pub struct FakeDiscord {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Seen>>>,
    edits: Arc<(AtomicUsize, AtomicUsize)>,
    task: tokio::task::JoinHandle<()>,
}

/// A Message object as Discord returns it from an edit (every field serenity requires).
pub fn message_json(id: u64, content: &str) -> Value {
    json!({
        "id": id.to_string(), "channel_id": CHANNEL.to_string(),
        "author": {"id": APP_ID.to_string(), "username": "portal-bot", "bot": true},
        "content": content, "timestamp": "2024-01-01T00:00:00+00:00", "tts": false,
        "mention_everyone": false, "mentions": [], "mention_roles": [], "attachments": [],
        "embeds": [], "pinned": false, "type": 0, "flags": 64
    })
}

async fn fake_discord_route(
    State(s): State<FakeState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    s.log.lock().unwrap().push(Seen {
        method: method.to_string(),
        path: path.clone(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let json_ok = |v: Value| {
        (
            StatusCode::OK,
            [("content-type", "application/json")],
            v.to_string(),
        )
            .into_response()
    };
    match (method.as_str(), path.as_str()) {
        // Always served: without it serenity would fall back to Discord's real gateway.
        ("GET", "/api/v10/gateway") | ("GET", "/api/v10/gateway/bot") => {
            json_ok(json!({"url": s.gateway_url}))
        }
        ("PUT", p) if p.ends_with("/commands") => json_ok(json!([])),
        // A direct-message channel with the recipient: its id is 9 followed by the last 17
        // digits of the user's.
        ("POST", "/api/v10/users/@me/channels") => {
            let user = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["recipient_id"].as_str().map(str::to_string))
                .unwrap_or_default();
            json_ok(json!({
                "id": format!("9{}", &user[user.len().saturating_sub(17)..]), "type": 1,
                "recipients": [{"id": user, "username": "someone"}]
            }))
        }
        // Messages sent to and edited in channels (direct messages included).
        ("POST", p) if p.starts_with("/api/v10/channels/") && p.ends_with("/messages") => {
            let content = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["content"].as_str().map(str::to_string))
                .unwrap_or_default();
            json_ok(message_json(1800000000000000100, &content))
        }
        ("PATCH", p) if p.starts_with("/api/v10/channels/") && p.contains("/messages/") => {
            let content = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["content"].as_str().map(str::to_string))
                .unwrap_or_default();
            json_ok(message_json(1800000000000000100, &content))
        }
        ("POST", p) if p.starts_with("/api/v10/interactions/") && p.ends_with("/callback") => {
            StatusCode::NO_CONTENT.into_response()
        }
        ("PATCH", p)
            if p.starts_with("/api/v10/webhooks/") && p.ends_with("/messages/@original") =>
        {
            let content = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["content"].as_str().map(str::to_string))
                .unwrap_or_default();
            // Only expiry edits count toward "at once" (late answers delivered by editing are
            // not bounded with them: a slow first round on a busy machine defers many).
            let expiry = content.to_lowercase().contains("expired");
            let (now, most) = &*s.edits;
            if expiry {
                most.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
            }
            tokio::time::sleep(s.edit_delay).await;
            if expiry {
                now.fetch_sub(1, Ordering::SeqCst);
            }
            json_ok(message_json(1800000000000000008, &content))
        }
        _ => (
            StatusCode::NOT_FOUND,
            [("content-type", "application/json")],
            r#"{"message":"Unknown","code":0}"#,
        )
            .into_response(),
    }
}

impl FakeDiscord {
    /// Starts the fake; `GET /api/v10/gateway` answers `gateway_url`.
    pub async fn start(gateway_url: &str) -> FakeDiscord {
        Self::start_with_edit_delay(gateway_url, Duration::ZERO).await
    }

    /// The fake, answering each message edit after `edit_delay`.
    pub async fn start_with_edit_delay(gateway_url: &str, edit_delay: Duration) -> FakeDiscord {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let edits = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
        let state = FakeState {
            log: log.clone(),
            gateway_url: gateway_url.to_string(),
            edit_delay,
            edits: edits.clone(),
        };
        let router = axum::Router::new()
            .fallback(fake_discord_route)
            .with_state(state);
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        FakeDiscord {
            addr,
            log,
            edits,
            task,
        }
    }

    /// The most expiry edits ("expired" + New link) it was answering at once.
    pub fn most_edits_at_once(&self) -> usize {
        self.edits.1.load(Ordering::SeqCst)
    }

    pub fn api_url(&self) -> String {
        format!("http://{}/api/v10", self.addr)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }

    /// The first recorded request matching `want`, waiting up to `WAIT` for it.
    pub async fn wait_for(&self, what: &str, want: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(found) = self.requests().into_iter().find(|r| want(r)) {
                return found;
            }
            if Instant::now() > deadline {
                let seen: Vec<String> = self
                    .requests()
                    .iter()
                    .map(|r| format!("{} {} {}", r.method, r.path, r.body))
                    .collect();
                panic!(
                    "the fake Discord never received {what}; it received:\n{}",
                    seen.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for FakeDiscord {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// A fake gateway.

#[derive(Debug)]
pub enum Gw {
    /// A new WebSocket connection (reported by `scripted_gateway` only).
    Connected,
    Identify(Value),
    /// An op 6 Resume (reported by `scripted_gateway` only).
    Resume(Value),
    Closed,
}

/// A fake Discord gateway: Hello, then on Identify READY and an INTERACTION_CREATE carrying
/// `interaction` (on the first connection only, or with `every_connection` on each, as two
/// replicas in gateway mode both receive every interaction); heartbeats are acknowledged.
/// Reports Identify and the end of each connection.
pub async fn fake_gateway(
    listener: TcpListener,
    ws_url: String,
    interaction: Value,
    every_connection: bool,
    events: mpsc::UnboundedSender<Gw>,
) {
    let pending = Arc::new(Mutex::new(Some(interaction)));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        // Each connection is served on its own, so two replicas can be connected at once.
        let (pending, events, ws_url) = (pending.clone(), events.clone(), ws_url.clone());
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                return;
            };
            let hello = json!({"op": 10, "d": {"heartbeat_interval": 45000}, "s": null, "t": null});
            if ws.send(WsMessage::text(hello.to_string())).await.is_err() {
                return;
            }
            let mut seq = 0u64;
            while let Some(frame) = ws.next().await {
                let text = match frame {
                    Ok(WsMessage::Text(t)) => t.to_string(),
                    Ok(WsMessage::Binary(b)) => String::from_utf8_lossy(&b).into_owned(),
                    Ok(WsMessage::Close(_)) | Err(_) => break,
                    Ok(_) => continue,
                };
                let Ok(payload) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                match payload["op"].as_u64() {
                    Some(2) => {
                        let _ = events.send(Gw::Identify(payload));
                        seq += 1;
                        let ready = json!({"op": 0, "s": seq, "t": "READY", "d": {
                            "v": 10, "user": {"id": APP_ID.to_string(), "username": "portal-bot", "bot": true},
                            "guilds": [], "session_id": "fake-session", "resume_gateway_url": ws_url,
                            "application": {"id": APP_ID.to_string(), "flags": 0}}});
                        let _ = ws.send(WsMessage::text(ready.to_string())).await;
                        let next = {
                            let mut p = pending.lock().unwrap();
                            if every_connection {
                                p.clone()
                            } else {
                                p.take()
                            }
                        };
                        if let Some(d) = next {
                            seq += 1;
                            let dispatch =
                                json!({"op": 0, "s": seq, "t": "INTERACTION_CREATE", "d": d});
                            let _ = ws.send(WsMessage::text(dispatch.to_string())).await;
                        }
                    }
                    Some(1) => {
                        let _ = ws
                            .send(WsMessage::text(json!({"op": 11}).to_string()))
                            .await;
                    }
                    _ => {}
                }
            }
            let _ = events.send(Gw::Closed);
        });
    }
}
