//! The audit trail: one JSON line per request, so that "who became which customer, when" can
//! always be answered.
//!
//! A request hands its event to a writer over a bounded channel and goes on; the writer is off
//! the request path. Where events go:
//!
//! - `[audit] path`: one dedicated thread appends lines to the file, each batch in a single
//!   `write` on a file opened for append (created readable by the bot's user only), so a crash
//!   leaves every line complete or absent. With `[audit] rotate` it also moves on to a new file
//!   now and then ([`rotate`]), between batches; [`files`] names the rotated files and [`query`]
//!   reads the whole trail back for `portal-bot audit`.
//! - `[audit] database_url`: a task writes batches to PostgreSQL ([`db`]), one table for every
//!   replica; `path` is then the fallback for events the database can't take yet.
//! - neither: the log, one line per event holding the event's JSON (the same JSON as the file).
//!
//! With `required = true` the request waits for its event's write and refuses the link when it
//! fails. Events never hold a URL or a token: [`AuditEvent`] has no field that could carry one.
//! Every event gets an id when it is recorded, so that writing it twice is one row.

pub mod db;
pub mod files;
pub mod query;
pub(crate) mod rotate;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use self::rotate::{Rotation, TrailFile};
use super::config::AuditConfig;
use super::metrics::Metrics;

/// One request, as the audit trail records it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditEvent {
    /// A UUID given when the event is recorded ([`Audit::record`]): the same event written
    /// twice (a retried database write, a replayed fallback file) is one row.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub id: String,
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

    /// The event as one line of JSON: what the file holds, the log line's `event` field and the
    /// database's `line` column.
    pub fn to_json(&self) -> String {
        // Strings, numbers and options only: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The audit trail could not record an event.
#[derive(Debug, thiserror::Error)]
#[error("the audit trail could not be written: {0}")]
pub struct AuditError(String);

/// An event on its way to the writer, with the request's ear when it waits for the write.
pub(crate) enum Message {
    Event(AuditEvent, Option<oneshot::Sender<Result<(), String>>>),
}

/// Who writes: the file's (or the log's) thread, or the database's task.
enum Writer {
    Thread(std::thread::JoinHandle<()>),
    Task(tokio::task::JoinHandle<()>),
}

/// Where events go. Cheap to share; [`Audit::close`] flushes and stops the writer.
pub struct Audit {
    sender: Mutex<Option<mpsc::Sender<Message>>>,
    writer: Mutex<Option<Writer>>,
    required: bool,
    /// The database's writer never makes a request wait for room in its queue: a full queue
    /// sends the event to the log (or, when required, refuses the link).
    never_wait: bool,
}

/// How many events may wait for the file's writer before requests wait for it (backpressure,
/// not loss).
const QUEUE: usize = 4096;
/// How many events may wait for the database's writer (it drains the queue into its own
/// backlog, so this fills only if the writer itself is stuck).
const DB_QUEUE: usize = 16_384;

impl Audit {
    /// Opens the trail `[audit]` describes, rotating as it says; with `database_url`, starts the
    /// database's writer on the current runtime (no network call here: it connects in the
    /// background, so a database that is down never stops the bot from starting).
    pub fn from_config(config: &AuditConfig, metrics: Arc<Metrics>) -> Result<Audit, AuditError> {
        if let Some(url) = &config.database_url {
            return Audit::start_db(config, url.clone(), metrics);
        }
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
            writer: Mutex::new(Some(Writer::Thread(writer))),
            required,
            never_wait: false,
        })
    }

    fn start_db(
        config: &AuditConfig,
        url: crate::core::secret::Secret,
        metrics: Arc<Metrics>,
    ) -> Result<Audit, AuditError> {
        let spool = match &config.path {
            Some(p) => Some(db::spool::Spool::open(p).map_err(|e| {
                AuditError(format!(
                    "cannot open the fallback file {}: {e}",
                    p.display()
                ))
            })?),
            None => None,
        };
        let (tx, rx) = mpsc::channel(DB_QUEUE);
        let settings = db::writer::Settings {
            url,
            keep_days: config.keep,
            metrics,
        };
        let task = tokio::spawn(db::writer::run(rx, settings, spool));
        Ok(Audit {
            sender: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(Writer::Task(task))),
            required: config.required,
            never_wait: true,
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
    pub async fn record(&self, mut event: AuditEvent) -> Result<(), AuditError> {
        if event.id.is_empty() {
            event.id = db::row::new_id();
        }
        let Some(tx) = self.sender() else {
            // After close (shutdown): never drop an event silently.
            tracing::warn!(target: "audit", event = %event.to_json(), "audit closed; event logged instead");
            return if self.required {
                Err(AuditError("shutting down".into()))
            } else {
                Ok(())
            };
        };
        let (ack_tx, ack_rx) = if self.required {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let message = Message::Event(event, ack_tx);
        if self.never_wait {
            if let Err(e) = tx.try_send(message) {
                let (mpsc::error::TrySendError::Full(Message::Event(event, _))
                | mpsc::error::TrySendError::Closed(Message::Event(event, _))) = e;
                tracing::warn!(target: "audit", event = %event.to_json(), "audit queue full; event kept in this log only");
                return if self.required {
                    Err(AuditError("the audit queue is full".into()))
                } else {
                    Ok(())
                };
            }
        } else {
            tx.send(message)
                .await
                .map_err(|_| AuditError("the writer stopped".into()))?;
        }
        let Some(ack_rx) = ack_rx else {
            return Ok(());
        };
        match ack_rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(AuditError(e)),
            Err(_) => Err(AuditError("the writer stopped".into())),
        }
    }

    /// Writes what is queued and stops the writer; later events go to the log.
    pub async fn close(&self) {
        drop(self.sender.lock().unwrap_or_else(|p| p.into_inner()).take());
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        match writer {
            Some(Writer::Thread(handle)) => {
                let _ = tokio::task::spawn_blocking(move || handle.join()).await;
            }
            Some(Writer::Task(task)) => {
                let _ = task.await;
            }
            None => {}
        }
    }
}

/// How long the writer lets events gather when nobody waits for their write.
const LAZY_GATHER: std::time::Duration = std::time::Duration::from_millis(10);

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
        // When nobody waits for the write, let events gather before waking again: under load
        // one wake-up and one write per 10 ms instead of one per event (each wake-up is a
        // context switch on a worker's core: issue 23), at most 10 ms later on disk.
        if lazy && trail.is_some() {
            std::thread::sleep(LAZY_GATHER);
        }
    }
    if let Some(t) = &mut trail {
        t.sync();
    }
}

/// The log sink: the event itself, serialised exactly as a line of the file, in the `event`
/// field, so the log holds every field the file would (email, client, user agent, …) and a log
/// shipper can parse it with the same reader.
fn log_event(event: &AuditEvent) {
    tracing::info!(target: "audit", event = %event.to_json(), "audit");
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
            id: String::new(),
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
            database_url: None,
        };
        let audit = std::sync::Arc::new(Audit::from_config(&config, Default::default()).unwrap());
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
    async fn a_flood_of_rotations_deletes_no_file_younger_than_a_day() {
        // keep = 3, yet every one of the many rotated files is minutes old: all stay, so a
        // flood can't push the day's genuine events out of the trail.
        let found = write_rotating("keep", 3, false).await;
        assert!(
            found.len() > 4,
            "more rotated files than keep: {}",
            found.len()
        );
        for numbers in per_task(&found) {
            assert_eq!(numbers, (0..250).collect::<Vec<u32>>());
        }
    }

    /// What the log sink writes for `event`: the `event` field of its JSON log line.
    fn logged(event: &AuditEvent) -> serde_json::Value {
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || log_event(event));
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["target"], "audit");
        serde_json::from_str(line["fields"]["event"].as_str().unwrap()).unwrap()
    }

    #[tokio::test]
    async fn the_log_holds_every_field_the_file_holds() {
        let mut e = event("ok");
        e.id = db::row::new_id();
        e.email = Some("jane@acme.example".into());
        e.client = Some("203.0.113.7".into());
        e.user_agent = Some("Mozilla/5.0".into());
        e.signed_in_as = Some("slack:U1".into());
        let dir = std::env::temp_dir().join(format!("pb-audit-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.jsonl");
        let _ = std::fs::remove_file(&path);
        let audit = Audit::open(Some(&path), true).unwrap();
        audit.record(e.clone()).await.unwrap();
        audit.close().await;
        let file: serde_json::Value =
            serde_json::from_str(std::fs::read_to_string(&path).unwrap().trim()).unwrap();
        assert_eq!(logged(&e), file);
        for field in [
            "email",
            "client",
            "user_agent",
            "signed_in_as",
            "company",
            "id",
        ] {
            assert!(file.get(field).is_some_and(|v| !v.is_null()), "{field}");
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
