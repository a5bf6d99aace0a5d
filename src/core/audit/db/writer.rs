//! The audit database's writer: one task per process that takes events off a bounded queue and
//! writes them in batches, off the request path, so a slow or absent database never holds up a
//! request.
//!
//! When the database doesn't answer (or a write fails or takes longer than [`WRITE_TIMEOUT`]),
//! the batch goes to the local fallback at once: with `[audit] path`, appended to that file (the
//! [`Spool`]); without, it waits in memory (up to [`MEMORY_CAP`] events, beyond which the oldest
//! are written to the log, their JSON with its id). The writer retries the database with a
//! backoff up to [`MAX_BACKOFF`], and when it answers replays the file, then what is in memory.
//! Every event carries its id and every insert is `ON CONFLICT (id) DO NOTHING`, so a write that
//! is retried after it actually went through (a timeout, a crash between insert and emptying the
//! file) is still one row: no event lost, none twice.
//!
//! With `required = true` a request waits for its event's first outcome: in the database, in the
//! file, or queued in memory; only when none of those could take it is its link refused.
//! Retention (`keep`, in days) deletes old rows in batches of [`DELETE_BATCH`], an hour apart
//! (sooner while there is more to delete), never long enough to hold up the writes.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Client;

use super::row::{self, Row};
use super::spool::Spool;
use super::{connect, migrate, DbError};
use crate::core::audit::Message;
use crate::core::metrics::Metrics;
use crate::core::secret::Secret;

/// Events per insert.
pub const BATCH: usize = 500;
/// How long one insert may take before the writer gives up on it (and the connection).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest wait between tries while the database is down.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Without a fallback file: how many events wait in memory for the database.
pub const MEMORY_CAP: usize = 10_000;
/// Rows per retention `DELETE`.
pub const DELETE_BATCH: i64 = 1_000;
/// Between retention rounds when nothing is left to delete.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// What the writer needs.
pub struct Settings {
    pub url: Secret,
    /// Rows older than this many days are deleted.
    pub keep_days: usize,
    pub metrics: Arc<Metrics>,
}

type Ack = oneshot::Sender<Result<(), String>>;

struct Pending {
    row: Row,
    ack: Option<Ack>,
}

struct Writer {
    settings: Settings,
    spool: Option<Spool>,
    client: Option<Client>,
    backlog: VecDeque<Pending>,
    retry_at: Instant,
    backoff: Duration,
    retention_at: Instant,
    /// The database was down and that was said: say so again only when it comes back.
    said_down: bool,
}

/// Runs until every sender is dropped ([`crate::core::audit::Audit::close`]), then writes or
/// sets aside what is left and returns.
pub(crate) async fn run(mut rx: mpsc::Receiver<Message>, settings: Settings, spool: Option<Spool>) {
    let mut w = Writer {
        settings,
        spool,
        client: None,
        backlog: VecDeque::new(),
        retry_at: Instant::now(),
        backoff: Duration::from_millis(100),
        retention_at: Instant::now(),
        said_down: false,
    };
    // Connect (and migrate) at once, so the schema is there before the first event and lines
    // left in the fallback file by an earlier run go in without waiting for a new one.
    w.work().await;
    loop {
        let wake = w.next_wake();
        tokio::select! {
            biased;
            m = rx.recv() => match m {
                Some(m) => w.take(m),
                None => break,
            },
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
        while w.backlog.len() < 4 * BATCH {
            match rx.try_recv() {
                Ok(m) => w.take(m),
                Err(_) => break,
            }
        }
        w.work().await;
    }
    // Closing: one last chance for the database, then the fallback for the rest.
    while let Ok(m) = rx.try_recv() {
        w.take(m);
    }
    w.retry_at = Instant::now();
    w.work().await;
    if !w.backlog.is_empty() {
        w.set_aside(true);
    }
}

impl Writer {
    fn take(&mut self, Message::Event(event, ack): Message) {
        let line = match serde_json::to_string(&event) {
            Ok(l) => l,
            Err(e) => {
                if let Some(ack) = ack {
                    let _ = ack.send(Err(e.to_string()));
                }
                return;
            }
        };
        match Row::from_line(&line) {
            Some(row) => self.backlog.push_back(Pending { row, ack }),
            None => {
                tracing::error!(target: "audit", event = %line, "audit event unreadable as a row; logged instead");
                if let Some(ack) = ack {
                    let _ = ack.send(Ok(()));
                }
            }
        }
    }

    fn waiting(&self) -> usize {
        self.backlog.len() + self.spool.as_ref().map_or(0, Spool::waiting)
    }

    fn next_wake(&self) -> Instant {
        let far = Instant::now() + RETENTION_EVERY;
        let retry = if self.client.is_none() && self.waiting() > 0 {
            self.retry_at
        } else if self.client.is_none() {
            // Nothing waits, but know when the database is back (metrics, retention).
            self.retry_at.max(Instant::now() + MAX_BACKOFF)
        } else {
            far
        };
        retry.min(self.retention_at)
    }

    /// Writes what can be written; what can't goes to the fallback.
    async fn work(&mut self) {
        if self.said_down && !self.backlog.is_empty() {
            // The database failed lately: set new events aside before trying it again, so no
            // request waits through more than the one attempt already under way.
            self.set_aside(false);
        }
        if self.client.is_none() && Instant::now() >= self.retry_at {
            self.connect().await;
        }
        if self.client.is_some() {
            self.replay().await;
        }
        while self.client.is_some() && !self.backlog.is_empty() {
            let n = self.backlog.len().min(BATCH);
            let rows: Vec<Row> = self.backlog.iter().take(n).map(|p| p.row.clone()).collect();
            if self.write(&rows).await {
                for p in self.backlog.drain(..n) {
                    if let Some(ack) = p.ack {
                        let _ = ack.send(Ok(()));
                    }
                }
            }
        }
        if self.client.is_none() && !self.backlog.is_empty() {
            self.set_aside(false);
        }
        if self.client.is_some() && Instant::now() >= self.retention_at {
            self.retention().await;
        }
        self.settings.metrics.audit_queue(self.waiting());
    }

    async fn connect(&mut self) {
        let attempt = async {
            let mut client = connect(self.settings.url.expose()).await?;
            tokio::time::timeout(WRITE_TIMEOUT * 5, migrate::migrate(&mut client))
                .await
                .map_err(|_| DbError::Timeout(WRITE_TIMEOUT * 5))??;
            Ok::<Client, DbError>(client)
        };
        match attempt.await {
            Ok(client) => {
                if self.said_down {
                    tracing::info!("audit database answers again; writing what waited");
                }
                self.client = Some(client);
                self.backoff = Duration::from_millis(100);
                self.said_down = false;
            }
            Err(e) => self.failed(&e),
        }
    }

    fn failed(&mut self, e: &DbError) {
        self.client = None;
        self.settings.metrics.audit_write_failed();
        if !self.said_down {
            tracing::warn!(error = %e, "audit database unavailable; events wait in the fallback and are written when it answers");
            self.said_down = true;
        } else {
            tracing::debug!(error = %e, "audit database still unavailable");
        }
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// One insert; false (and the connection dropped) when it failed.
    async fn write(&mut self, rows: &[Row]) -> bool {
        let Some(client) = &self.client else {
            return false;
        };
        let started = Instant::now();
        match tokio::time::timeout(WRITE_TIMEOUT, row::insert(client, rows)).await {
            Ok(Ok(_)) => {
                self.settings.metrics.audit_write(started.elapsed());
                true
            }
            Ok(Err(e)) => {
                self.failed(&e);
                false
            }
            Err(_) => {
                self.failed(&DbError::Timeout(WRITE_TIMEOUT));
                false
            }
        }
    }

    /// The fallback file's lines into the database, chunk by chunk; the file is emptied once
    /// all of them are in.
    async fn replay(&mut self) {
        loop {
            let Some(spool) = &self.spool else { return };
            if spool.waiting() == 0 {
                return;
            }
            let (lines, offset) = match spool.next_chunk(BATCH) {
                Ok(chunk) => chunk,
                Err(e) => {
                    tracing::error!(path = %spool.path().display(), error = %e, "cannot read the audit fallback file");
                    return;
                }
            };
            let count = lines.len();
            let rows: Vec<Row> = lines.iter().filter_map(|l| Row::from_line(l)).collect();
            if rows.len() < count {
                tracing::warn!(
                    skipped = count - rows.len(),
                    "lines of the audit fallback file that are not events were skipped"
                );
            }
            if !rows.is_empty() && !self.write(&rows).await {
                return;
            }
            let Some(spool) = &mut self.spool else { return };
            spool.replayed_to(offset, count);
            if count == 0 || spool.waiting() == 0 {
                match spool.finish_if_done() {
                    Ok(true) => tracing::info!("audit fallback file replayed into the database"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(path = %spool.path().display(), error = %e, "cannot empty the replayed audit fallback file")
                    }
                }
                return;
            }
        }
    }

    /// The backlog to the fallback: appended to the file (and acknowledged), or, without one,
    /// kept in memory up to [`MEMORY_CAP`] with the oldest beyond it written to the log.
    /// `all`: at shutdown, nothing may stay in memory.
    fn set_aside(&mut self, all: bool) {
        if let Some(spool) = &mut self.spool {
            let mut buf = Vec::with_capacity(self.backlog.len() * 300);
            for p in &self.backlog {
                buf.extend_from_slice(p.row.line.as_bytes());
                buf.push(b'\n');
            }
            let n = self.backlog.len();
            match spool.append(&buf, n) {
                Ok(()) => {
                    self.settings.metrics.audit_fallback(n);
                    for p in self.backlog.drain(..) {
                        if let Some(ack) = p.ack {
                            let _ = ack.send(Ok(()));
                        }
                    }
                    return;
                }
                Err(e) => {
                    tracing::error!(path = %spool.path().display(), error = %e, "cannot write the audit fallback file; events wait in memory");
                }
            }
        }
        // Queued in memory: that is as far as a required event must get.
        for p in self.backlog.iter_mut() {
            if let Some(ack) = p.ack.take() {
                let _ = ack.send(Ok(()));
            }
        }
        let cap = if all { 0 } else { MEMORY_CAP };
        let over = self.backlog.len().saturating_sub(cap);
        if over > 0 {
            self.settings.metrics.audit_fallback(over);
            for p in self.backlog.drain(..over) {
                tracing::warn!(target: "audit", event = %p.row.line, "audit database unavailable: event kept in this log only");
            }
        }
    }

    /// Deletes rows older than `keep` days, a batch at a time.
    async fn retention(&mut self) {
        let Some(client) = &self.client else { return };
        let days = i32::try_from(self.settings.keep_days).unwrap_or(i32::MAX);
        let sql = "DELETE FROM audit_events WHERE id IN (
            SELECT id FROM audit_events WHERE at < now() - make_interval(days => $1) LIMIT $2)";
        let mut deleted = 0u64;
        let mut more = false;
        // A few batches per round: the writer is busy meanwhile, and a request whose event
        // must be written may be waiting on it.
        for _ in 0..3 {
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&days, &DELETE_BATCH];
            match tokio::time::timeout(WRITE_TIMEOUT, client.execute(sql, &params)).await {
                Ok(Ok(n)) => {
                    deleted += n;
                    more = n == DELETE_BATCH as u64;
                    if !more {
                        break;
                    }
                }
                Ok(Err(e)) => {
                    let e = DbError::from_driver(&e);
                    tracing::warn!(error = %e, "audit retention: cannot delete old rows (does the role have DELETE?)");
                    break;
                }
                Err(_) => {
                    more = true;
                    break;
                }
            }
        }
        if deleted > 0 {
            tracing::info!(
                deleted,
                keep_days = days,
                "audit retention: old rows deleted"
            );
        }
        self.retention_at = Instant::now()
            + if more {
                Duration::from_secs(1)
            } else {
                RETENTION_EVERY
            };
    }
}
