//! The audit trail: one JSON line per request, so that "who became which customer, when" can
//! always be answered.
//!
//! Lines are written by one dedicated thread, off the request path: a request hands its event
//! over a bounded channel and goes on. Each line goes out in a single `write` on a file opened
//! for append, so a crash leaves every line complete or absent. With `required = true` the
//! request waits for the write and refuses the link when it fails. Events never hold a URL or a
//! token: [`AuditEvent`] has no field that could carry one.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

/// One request, as the audit trail records it.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    pub platform: &'static str,
    /// Slack team or Discord guild.
    pub team: Option<String>,
    pub channel: Option<String>,
    pub asker: String,
    /// What was asked: `link`, `check`, `new_link`, `go`.
    pub action: &'static str,
    /// The end-user id the answer was for, when there was one: for an email lookup, the id it
    /// resolved to (none when it matched nobody or several).
    pub end_user: Option<String>,
    /// The email the asker typed, for a lookup by email (kept beside the id it resolved to).
    pub email: Option<String>,
    /// `ok`, `no_access`, `not_found`, `denied`, `rate_limited`, `upstream_*`, …
    pub outcome: &'static str,
    pub latency_ms: u64,
}

impl AuditEvent {
    /// The current time in the audit format.
    pub fn now() -> String {
        humantime::format_rfc3339_millis(SystemTime::now()).to_string()
    }
}

/// The audit trail could not record an event.
#[derive(Debug, thiserror::Error)]
#[error("the audit trail could not be written: {0}")]
pub struct AuditError(String);

enum Message {
    Event(AuditEvent, Option<oneshot::Sender<Result<(), String>>>),
}

/// Where events go. Cheap to share; [`Audit::close`] flushes and stops the writer.
pub struct Audit {
    sender: Mutex<Option<mpsc::Sender<Message>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    required: bool,
}

/// How many events may wait for the writer before requests wait for it (backpressure, not loss).
const QUEUE: usize = 4096;

impl Audit {
    /// Opens the trail at `path` (created if missing), or the log when `path` is `None`.
    pub fn open(path: Option<&Path>, required: bool) -> Result<Audit, AuditError> {
        let file = match path {
            Some(p) => Some(open_append(p)?),
            None => None,
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let path = path.map(Path::to_path_buf);
        let writer = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_loop(rx, file, path))
            .map_err(|e| AuditError(format!("cannot start the writer: {e}")))?;
        Ok(Audit {
            sender: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            required,
        })
    }

    /// True when a link may only be handed out once its event is written.
    pub fn required(&self) -> bool {
        self.required
    }

    fn sender(&self) -> Option<mpsc::Sender<Message>> {
        self.sender
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records an event. When the trail is required, waits until it is written.
    pub async fn record(&self, event: AuditEvent) -> Result<(), AuditError> {
        let Some(tx) = self.sender() else {
            // After close (shutdown): never drop an event silently.
            tracing::warn!(target: "audit", event = ?event, "audit closed; event logged instead");
            return if self.required {
                Err(AuditError("shutting down".into()))
            } else {
                Ok(())
            };
        };
        if !self.required {
            return tx
                .send(Message::Event(event, None))
                .await
                .map_err(|_| AuditError("the writer stopped".into()));
        }
        let (ack_tx, ack_rx) = oneshot::channel();
        tx.send(Message::Event(event, Some(ack_tx)))
            .await
            .map_err(|_| AuditError("the writer stopped".into()))?;
        match ack_rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(AuditError(e)),
            Err(_) => Err(AuditError("the writer stopped".into())),
        }
    }

    /// Writes what is queued and stops the writer; later events go to the log.
    pub async fn close(&self) {
        drop(self.sender.lock().unwrap_or_else(|p| p.into_inner()).take());
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

fn open_append(path: &Path) -> Result<File, AuditError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| AuditError(format!("cannot open {}: {e}", path.display())))
}

fn write_loop(mut rx: mpsc::Receiver<Message>, mut file: Option<File>, path: Option<PathBuf>) {
    let mut batch = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        // Take whatever else is queued too: one write for many lines under load.
        batch.push(first);
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let events: Vec<&AuditEvent> = batch.iter().map(|Message::Event(e, _)| e).collect();
        let result = match (&mut file, &path) {
            (Some(f), Some(p)) => write_lines(f, &events).map_err(|e| {
                tracing::error!(path = %p.display(), error = %e, "audit write failed");
                e
            }),
            _ => {
                for event in &events {
                    log_event(event);
                }
                Ok(())
            }
        };
        let lazy = batch.iter().all(|Message::Event(_, ack)| ack.is_none());
        for Message::Event(_, ack) in batch.drain(..) {
            if let Some(ack) = ack {
                let _ = ack.send(result.clone());
            }
        }
        // When nobody waits for the write, let a few events gather before waking again: fewer
        // wake-ups and writes under load, at most a few milliseconds of delay.
        if lazy && file.is_some() {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    if let Some(f) = &mut file {
        let _ = f.flush();
        let _ = f.sync_data();
    }
}

fn log_event(event: &AuditEvent) {
    tracing::info!(
        target: "audit",
        time = %event.time,
        platform = event.platform,
        team = event.team.as_deref(),
        channel = event.channel.as_deref(),
        asker = %event.asker,
        action = event.action,
        end_user = event.end_user.as_deref(),
        outcome = event.outcome,
        latency_ms = event.latency_ms,
        "audit"
    );
}

/// Whole lines in one `write` call: with O_APPEND a crash leaves each line complete or absent.
fn write_lines(file: &mut File, events: &[&AuditEvent]) -> Result<(), String> {
    let mut buf = Vec::with_capacity(events.len() * 256);
    for event in events {
        serde_json::to_writer(&mut buf, event).map_err(|e| e.to_string())?;
        buf.push(b'\n');
    }
    match file.write(&buf) {
        Ok(n) if n == buf.len() => Ok(()),
        Ok(n) => Err(format!("short write ({n} of {} bytes)", buf.len())),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(outcome: &'static str) -> AuditEvent {
        AuditEvent {
            time: AuditEvent::now(),
            platform: "slack",
            team: Some("T1".into()),
            channel: None,
            asker: "U1".into(),
            action: "link",
            end_user: Some("e1".into()),
            email: None,
            outcome,
            latency_ms: 3,
        }
    }

    #[tokio::test]
    async fn lines_are_json_and_flushed_on_close() {
        let dir = std::env::temp_dir().join(format!("pb-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.jsonl");
        let _ = std::fs::remove_file(&path);
        let audit = Audit::open(Some(&path), false).unwrap();
        for _ in 0..100 {
            audit.record(event("ok")).await.unwrap();
        }
        audit.close().await;
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 100);
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["outcome"], "ok");
            assert_eq!(v["latency_ms"], 3);
        }
    }

    #[tokio::test]
    async fn required_audit_reports_failure() {
        // /dev/full accepts the open and fails every write.
        if !Path::new("/dev/full").exists() {
            return;
        }
        let audit = Audit::open(Some(Path::new("/dev/full")), true).unwrap();
        assert!(audit.record(event("ok")).await.is_err());
        audit.close().await;
    }
}
