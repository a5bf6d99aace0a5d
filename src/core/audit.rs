//! The audit trail: one JSON line per request, so that "who became which customer, when" can
//! always be answered.
//!
//! Lines are written by one dedicated thread, off the request path: a request hands its event
//! over a bounded channel and goes on. Each line goes out in a single `write` on a file opened
//! for append, so a crash leaves every line complete or absent. With `required = true` the
//! request waits for the write and refuses the link when it fails. Events never hold a URL or a
//! token: [`AuditEvent`] has no field that could carry one.
//!
//! With `[audit] rotate` the writer also moves on to a new file now and then ([`rotate`]),
//! between batches; [`files`] names the rotated files and [`query`] reads the whole trail back
//! for `portal-bot audit`.

pub mod files;
pub mod query;
mod rotate;

use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use self::rotate::{Rotation, TrailFile};
use super::config::AuditConfig;

/// One request, as the audit trail records it.
#[derive(Debug, Clone, Default, Serialize)]
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
    /// The end user's company name, when the bot knows it (Planhat gave it for the reply), so
    /// the trail answers "who opened Acme's portals". A name, never a URL or a token.
    pub company: Option<String>,
    /// For a `/go/` click: the browser's address (the TCP peer, or the hop a proxy listed in
    /// `server.trusted_proxies` vouches for) and its User-Agent, as the client said it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// For a `/go/` attempt with `[sign_in]`: who the browser was signed in as
    /// (`slack:U123`, `discord:…`, `oidc:jane@acme.com`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_in_as: Option<String>,
    /// The reason given: for a request to the owner, a decision, a break-glass link.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who approved (`slack:U123`): for an approval, and for a link opened under one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approver: Option<String>,
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
    /// Opens the trail `[audit]` describes, rotating as it says.
    pub fn from_config(config: &AuditConfig) -> Result<Audit, AuditError> {
        let rotation = config.rotate.map(|when| Rotation {
            when,
            keep: config.keep,
        });
        Audit::start(config.path.as_deref(), config.required, rotation)
    }

    /// Opens the trail at `path` (created if missing), never rotated, or the log when `path`
    /// is `None`.
    pub fn open(path: Option<&Path>, required: bool) -> Result<Audit, AuditError> {
        Audit::start(path, required, None)
    }

    fn start(
        path: Option<&Path>,
        required: bool,
        rotation: Option<Rotation>,
    ) -> Result<Audit, AuditError> {
        let trail = match path {
            Some(p) => Some(TrailFile::open(p, rotation, Box::new(SystemTime::now))?),
            None => None,
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_loop(rx, trail))
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

fn write_loop(mut rx: mpsc::Receiver<Message>, mut trail: Option<TrailFile>) {
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
        let result = match &mut trail {
            Some(t) => write_lines(t, &events).map_err(|e| {
                tracing::error!(path = %t.path().display(), error = %e, "audit write failed");
                e
            }),
            None => {
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
        if lazy && trail.is_some() {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    if let Some(t) = &mut trail {
        t.sync();
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
        company = event.company.as_deref(),
        "audit"
    );
}

/// Whole lines in one `write` call: with O_APPEND a crash leaves each line complete or absent,
/// and a rotation (due before the write) never splits the batch.
fn write_lines(trail: &mut TrailFile, events: &[&AuditEvent]) -> Result<(), String> {
    let mut buf = Vec::with_capacity(events.len() * 256);
    for event in events {
        serde_json::to_writer(&mut buf, event).map_err(|e| e.to_string())?;
        buf.push(b'\n');
    }
    trail.append(&buf)
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
            company: Some("Acme".into()),
            client: None,
            user_agent: None,
            signed_in_as: None,
            ..AuditEvent::default()
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

    /// Writes 8 × 250 events from concurrent tasks into a trail rotated every 1 KB; returns
    /// the end users of every line found, file by file, oldest first.
    async fn write_rotating(name: &str, keep: usize, required: bool) -> Vec<Vec<String>> {
        let dir = std::env::temp_dir().join(format!("pb-audit-rot-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        let config = AuditConfig {
            path: Some(path.clone()),
            required,
            rotate: Some(crate::core::config::Rotate::Size(1_000)),
            keep,
        };
        let audit = std::sync::Arc::new(Audit::from_config(&config).unwrap());
        let mut tasks = Vec::new();
        for t in 0..8 {
            let audit = audit.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..250 {
                    let mut e = event("ok");
                    e.end_user = Some(format!("{t}-{i}"));
                    audit.record(e).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        audit.close().await;
        files::trail(&path)
            .unwrap()
            .iter()
            .map(|file| {
                let text = std::fs::read_to_string(file).unwrap();
                assert!(text.ends_with('\n'), "{} ends mid-line", file.display());
                text.lines()
                    .map(|l| {
                        let v: serde_json::Value = serde_json::from_str(l)
                            .unwrap_or_else(|e| panic!("split line {l:?}: {e}"));
                        v["end_user"].as_str().unwrap().to_string()
                    })
                    .collect()
            })
            .collect()
    }

    /// For each writing task, the numbers of its events in the order found.
    fn per_task(found: &[Vec<String>]) -> Vec<Vec<u32>> {
        let mut tasks = vec![Vec::new(); 8];
        for id in found.iter().flatten() {
            let (t, i) = id.split_once('-').unwrap();
            tasks[t.parse::<usize>().unwrap()].push(i.parse().unwrap());
        }
        tasks
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn rotation_under_load_loses_splits_and_repeats_no_line() {
        let found = write_rotating("all", 10_000, true).await;
        assert!(
            found.len() > 50,
            "rotated many times: {} files",
            found.len()
        );
        // Every event once, each task's in the order it recorded them.
        for numbers in per_task(&found) {
            assert_eq!(numbers, (0..250).collect::<Vec<u32>>());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn rotation_keeps_only_the_newest_files() {
        let found = write_rotating("keep", 3, false).await;
        assert_eq!(found.len(), 4, "3 rotated files and the current one");
        // What is left is the newest stretch of the trail: for each task, the end of its run.
        for numbers in per_task(&found) {
            if let Some(&first) = numbers.first() {
                assert_eq!(numbers, (first..250).collect::<Vec<u32>>());
            }
        }
        assert!(found.iter().flatten().any(|id| id.ends_with("-249")));
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
