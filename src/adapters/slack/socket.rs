//! Slack Socket Mode: for workspaces that can't expose an endpoint. The bot dials out and
//! holds `slack.socket_connections` WebSockets (Slack allows up to 10 per app and spreads
//! envelopes over them), so a reconnect of one never leaves a gap.
//!
//! Written here rather than taken from slack-morphism's listener, on purpose: that listener
//! awaits each envelope's handler before it reads the next frame, so one slow slash command
//! (Planhat taking seconds) held up every envelope behind it on the connection past Slack's
//! 3-second ack deadline. Here the reader only parses; every envelope runs in its own task and
//! its ack goes out through the connection's writer as soon as it is ready, so envelopes never
//! wait for each other. slack-morphism still provides the parts that are plain protocol: the
//! `apps.connections.open` call and the payload types (its envelope types are private, so the
//! envelope is read with [`Envelope`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rand::RngExt;
use serde_json::json;
use slack_morphism::prelude::*;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::SlackState;
use crate::core::secret::Secret;
use crate::shutdown::Shutdown;

/// Silence after which a connection counts as dead (Slack pings far more often).
const SILENT_FOR: Duration = Duration::from_secs(30);
/// How often the bot pings, so a silent connection is noticed.
const PING_EVERY: Duration = Duration::from_secs(10);
/// Time limit for `apps.connections.open` and the WebSocket handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest message (and frame) read from Slack. Envelopes are a few KiB; tungstenite's
/// default (64 MiB) let one message take the process from 17 to 148 MB. A larger one closes
/// that connection, and the slot connects again.
pub const MAX_MESSAGE: usize = 1024 * 1024;
/// A connection that said hello and lived this long was a good one: the next reconnect is
/// quick. Anything shorter counts as a failure and backs off.
const STABLE_AFTER: Duration = Duration::from_secs(5);
/// The first pause after a failure (connect refused, or a connection that died young).
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
/// The longest pause between attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A Socket Mode frame: `hello`, `disconnect`, or an envelope (`slash_commands`,
/// `interactive`, `events_api`) with its id and payload.
#[derive(serde::Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    envelope_id: Option<String>,
    #[serde(default)]
    payload: serde_json::Value,
}

/// Connection counts shared by the slots of one process.
#[derive(Default)]
pub struct SocketStats {
    /// Connections that said hello and are still open.
    pub open: AtomicUsize,
    /// Hellos so far (connects and reconnects).
    pub hellos: AtomicUsize,
}

/// Runs `connections` Socket Mode connections until shutdown.
pub fn spawn(
    state: Arc<SlackState>,
    app_token: &Secret,
    connections: usize,
    shutdown: Shutdown,
) -> tokio::task::JoinHandle<()> {
    let token = SlackApiToken::new(SlackApiTokenValue::new(app_token.expose().to_string()));
    tokio::spawn(async move {
        let slots: Vec<_> = (0..connections.max(1))
            .map(|slot| {
                tokio::spawn(run_slot(
                    state.clone(),
                    token.clone(),
                    slot,
                    shutdown.clone(),
                ))
            })
            .collect();
        // slack-morphism's own logs are off (they hold connection tickets), so say it here
        // when no connection comes up.
        let watchdog = {
            let state = state.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(30)).await;
                if state.socket.hellos.load(Ordering::Relaxed) == 0 {
                    tracing::error!("Slack Socket Mode has not connected in 30 s: check slack.app_token (xapp-…, scope connections:write), that Socket Mode is on for the app, and the network");
                }
            })
        };
        for slot in slots {
            let _ = slot.await;
        }
        watchdog.abort();
        tracing::info!("Slack Socket Mode closed");
    })
}

/// One connection slot: connect, serve, and reconnect until shutdown. After a good connection
/// (it said hello and lived [`STABLE_AFTER`]) the next one follows at once; after a failure,
/// or a connection that died young, the pause doubles up to [`BACKOFF_MAX`], so connections
/// that die at once don't turn into several reconnects a second.
async fn run_slot(
    state: Arc<SlackState>,
    token: SlackApiToken,
    slot: usize,
    mut shutdown: Shutdown,
) {
    let mut failures: u32 = 0;
    let mut said_hello = false;
    while !shutdown.is_fired() {
        match connect(&state, &token).await {
            Ok(ws) => {
                let served = serve(&state, ws, &mut said_hello, shutdown.clone()).await;
                if let Serve::Disconnected(why) = served.outcome {
                    let stable = served
                        .hello_at
                        .is_some_and(|at| at.elapsed() >= STABLE_AFTER);
                    failures = if stable {
                        0
                    } else {
                        failures.saturating_add(1)
                    };
                    if failures <= 1 || failures.is_multiple_of(10) {
                        tracing::info!(
                            slot,
                            why,
                            failures,
                            "Slack Socket Mode connection ended; reconnecting"
                        );
                    }
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                if failures == 1 || failures.is_multiple_of(10) {
                    tracing::warn!(slot, error = %e, failures, "Slack Socket Mode could not connect; retrying");
                }
            }
        }
        if shutdown.is_fired() {
            break;
        }
        let wait = backoff(failures, rand::rng().random_range(0.0..=1.0));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.fired() => break,
        }
    }
}

/// The pause before the next attempt after `failures` failures in a row, with `jitter` in
/// 0..=1 spreading it over its upper half, so a fleet of bots (and the slots of one bot)
/// don't reconnect in lockstep. None: 100 to 200 ms. Then 125–250 ms, 250–500 ms, … doubling
/// up to 15–30 s.
fn backoff(failures: u32, jitter: f64) -> Duration {
    let ceiling = if failures == 0 {
        Duration::from_millis(200)
    } else {
        BACKOFF_FIRST
            .saturating_mul(1 << (failures - 1).min(16))
            .min(BACKOFF_MAX)
    };
    ceiling.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Asks Slack for a connection URL and opens the WebSocket.
async fn connect(state: &SlackState, token: &SlackApiToken) -> Result<Ws, String> {
    let session = state.api.client.open_session(token);
    let opened = tokio::time::timeout(
        CONNECT_TIMEOUT,
        session.apps_connections_open(&SlackApiAppsConnectionOpenRequest::new()),
    )
    .await
    .map_err(|_| "apps.connections.open timed out".to_string())?
    // The error names the method and Slack's error code, never the token.
    .map_err(|e| format!("apps.connections.open failed: {}", describe(&e)))?;
    let url = opened.url.0.to_string();
    let limits = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let handshake = tokio_tungstenite::connect_async_with_config(url, Some(limits), false);
    let (ws, _) = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
        .await
        .map_err(|_| "the WebSocket handshake timed out".to_string())?
        .map_err(|e| format!("the WebSocket handshake failed: {e}"))?;
    Ok(ws)
}

fn describe(e: &slack_morphism::errors::SlackClientError) -> String {
    use slack_morphism::errors::SlackClientError as E;
    match e {
        E::ApiError(api) => format!("Slack said {}", api.code),
        E::HttpError(h) => format!("HTTP {}", h.status_code),
        E::HttpProtocolError(_) => "could not reach Slack".into(),
        E::ProtocolError(_) => "Slack's answer could not be read".into(),
        E::RateLimitError(_) => "rate limited by Slack".into(),
        _ => "Slack client error".into(),
    }
}

enum Serve {
    Disconnected(&'static str),
    Shutdown,
}

/// How a connection ended, and when it said hello (if it did).
struct Served {
    outcome: Serve,
    hello_at: Option<Instant>,
}

/// Serves one open connection until it ends. Frames are read here; each envelope is handled
/// in its own task; acks and pings go through one writer task.
async fn serve(
    state: &Arc<SlackState>,
    ws: Ws,
    said_hello: &mut bool,
    mut shutdown: Shutdown,
) -> Served {
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let writer = tokio::spawn(async move {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(m) => if sink.send(m).await.is_err() { break },
                    None => break,
                },
                _ = ping.tick() => if sink.send(Message::Ping(Vec::new().into())).await.is_err() { break },
            }
        }
        let _ = sink.close().await;
    });
    let mut counted_open = false;
    let mut hello_at = None;
    let outcome = loop {
        let frame = tokio::select! {
            f = tokio::time::timeout(SILENT_FOR, stream.next()) => f,
            _ = shutdown.fired() => break Serve::Shutdown,
        };
        let text = match frame {
            Err(_) => break Serve::Disconnected("silent too long"),
            Ok(Some(Err(WsError::Capacity(_)))) => {
                tracing::warn!(
                    max_bytes = MAX_MESSAGE,
                    "Slack Socket Mode sent a message larger than the bot reads; closing that connection"
                );
                break Serve::Disconnected("message too large");
            }
            Ok(None) | Ok(Some(Err(_))) => break Serve::Disconnected("closed"),
            Ok(Some(Ok(Message::Close(_)))) => break Serve::Disconnected("closed by Slack"),
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(_))) => continue, // pings (answered by tungstenite), pongs, binary
        };
        let envelope = match serde_json::from_str::<Envelope>(text.as_str()) {
            Ok(e) => e,
            Err(e) => {
                // Only the parse error is logged, never the frame (it can hold a response_url).
                tracing::warn!(error = %e, "a Slack Socket Mode frame could not be read");
                continue;
            }
        };
        let id = envelope.envelope_id.unwrap_or_default();
        match envelope.kind.as_str() {
            "hello" => {
                hello_at.get_or_insert_with(Instant::now);
                if !counted_open {
                    counted_open = true;
                    state.socket.open.fetch_add(1, Ordering::Relaxed);
                    state.socket_ready();
                }
                let first = state.socket.hellos.fetch_add(1, Ordering::Relaxed) == 0;
                if first {
                    tracing::info!("Slack Socket Mode connected");
                } else if *said_hello {
                    tracing::warn!("Slack Socket Mode reconnected");
                    state.app.metrics.reconnect("slack_socket");
                }
                *said_hello = true;
            }
            // Slack is about to close this connection (refresh, or a server going away).
            "disconnect" => break Serve::Disconnected("Slack asked"),
            "slash_commands" => match serde_json::from_value::<SlackCommandEvent>(envelope.payload)
            {
                Ok(ev) => {
                    let (state, tx) = (state.clone(), tx.clone());
                    state.app.tasks.clone().spawn(async move {
                        let response_url = ev.response_url.0.clone();
                        let answer = state.command(ev.into()).await;
                        // The answer is JSON already (see `CommandAnswer::json`); the id is
                        // quoted by serde_json like any string.
                        let ack = format!(
                            r#"{{"envelope_id":{},"payload":{}}}"#,
                            serde_json::Value::from(id.as_str()),
                            answer.json()
                        );
                        if tx.send(Message::text(ack)).is_err() {
                            // The connection went away meanwhile: the answer still reaches
                            // the asker, through the command's response_url.
                            state.deliver(&response_url, answer.content(), false).await;
                        }
                    });
                }
                Err(e) => unreadable(&tx, &id, &e),
            },
            "interactive" => {
                match serde_json::from_value::<SlackInteractionEvent>(envelope.payload) {
                    Ok(ev) => {
                        // Acknowledged at once (a form's errors in the ack); the work happens
                        // in its own task.
                        match state.interaction(ev) {
                            Some(answer) if !id.is_empty() => {
                                let ack = json!({"envelope_id": id, "payload": answer});
                                let _ = tx.send(Message::text(ack.to_string()));
                            }
                            _ => bare_ack(&tx, &id),
                        }
                    }
                    Err(e) => unreadable(&tx, &id, &e),
                }
            }
            _ => bare_ack(&tx, &id),
        }
    };
    if counted_open {
        state.socket.open.fetch_sub(1, Ordering::Relaxed);
        state.socket_ready();
    }
    // Acks still in flight on this connection are lost with it; their commands fall back to
    // response_url (above). Close our side.
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    Served { outcome, hello_at }
}

/// Acknowledged anyway (Slack would redeliver the same envelope into the same failure); only
/// the parse error is logged.
fn unreadable(tx: &mpsc::UnboundedSender<Message>, envelope_id: &str, e: &serde_json::Error) {
    tracing::warn!(error = %e, "a Slack Socket Mode envelope could not be read");
    bare_ack(tx, envelope_id);
}

fn bare_ack(tx: &mpsc::UnboundedSender<Message>, envelope_id: &str) {
    if envelope_id.is_empty() {
        return;
    }
    let _ = tx.send(Message::text(
        json!({ "envelope_id": envelope_id }).to_string(),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_back_off_after_failures_and_not_after_a_good_connection() {
        assert!(backoff(0, 0.0) >= Duration::from_millis(100));
        assert!(backoff(0, 1.0) <= Duration::from_millis(200));
        assert_eq!(backoff(1, 1.0), Duration::from_millis(250));
        assert_eq!(backoff(1, 0.0), Duration::from_millis(125));
        assert_eq!(backoff(3, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(20, 1.0), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX, 0.0), BACKOFF_MAX / 2);
        // The first five pauses after failures add up to at least 1.9 s: connections that die
        // at once make a handful of attempts in the first seconds, not dozens.
        let least: Duration = (1..=5).map(|n| backoff(n, 0.0)).sum();
        assert!(least >= Duration::from_millis(1900), "{least:?}");
    }
}
