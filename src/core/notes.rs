//! Notes on the customer's Planhat timeline (`[planhat.notes] enabled`): each portal actually
//! opened (a link minted directly, or a `/go/` click) leaves a Note on the company, which the
//! account's team already reads: who opened it as whom, from which chat, with the reason and
//! approver when there were any. Never a URL: a [`NoteBody`] is built here from names and ids.
//!
//! A Note never delays or blocks a link. The portal use case hands it over without waiting
//! ([`Notes::write`]; a full queue drops it and counts it), and one background task
//! ([`run`]) writes them in batches with Planhat's bulk call, only while Planhat's budget has
//! room beyond links (the same rule as name lookups), and retries a failed batch with backoff
//! before giving it up (counted, and logged without its contents).

use std::time::Duration;

use tokio::sync::mpsc;

use super::asker::Asker;
use super::metrics::Metrics;
use super::planhat::{NoteBody, Planhat};
use super::text;
use crate::shutdown::Shutdown;
use std::sync::Arc;

/// Notes waiting at most (about a minute of links at the busiest); more are dropped.
const QUEUE: usize = 10_000;
/// Planhat's bulk call takes up to 5,000 items.
const MAX_BATCH: usize = 5_000;
/// After the first Note of a batch, others arriving within this join it.
const GATHER: Duration = Duration::from_secs(1);
/// A failed batch is tried this many times in all, waiting 1, 2, 4, … s between tries.
const ATTEMPTS: u32 = 6;

/// What the use case knows about a portal opened, to put on the timeline.
pub struct Opened<'a> {
    pub asker: &'a Asker,
    pub end_user: &'a str,
    pub end_user_name: Option<&'a str>,
    /// The company, when the reply knew it; else the writer looks it up (in the background,
    /// inside the budget).
    pub company_id: Option<&'a str>,
    /// `link` (minted directly) or `go` (a `/go/` click).
    pub action: &'static str,
    pub reason: Option<&'a str>,
    pub approver: Option<&'a str>,
    pub break_glass: bool,
}

/// The Note for `opened`: one subject line and a description, names made one line.
pub fn note(opened: &Opened<'_>) -> NoteBody {
    let whom = opened
        .end_user_name
        .map(text::name)
        .unwrap_or_else(|| opened.end_user.to_string());
    let how = if opened.action == "go" {
        "through a one-time link"
    } else {
        "with a portal link"
    };
    let mut description = format!(
        "{} user {} opened the customer portal as {whom} ({}) {how} from portal-bot.",
        opened.asker.platform,
        text::name(&opened.asker.user_id),
        text::name(opened.end_user),
    );
    if opened.break_glass {
        description.push_str(" On-call break-glass (not one of their companies).");
    }
    if let Some(approver) = opened.approver.filter(|_| !opened.break_glass) {
        description.push_str(&format!(" Approved by {}.", text::name(approver)));
    }
    if let Some(reason) = opened.reason {
        description.push_str(&format!(" Reason: {}", text::one_line(reason, 500)));
    }
    NoteBody {
        kind: "note",
        company_id: opened.company_id.unwrap_or_default().to_string(),
        subject: format!("Portal opened as {whom}"),
        description,
        endusers: vec![opened.end_user.to_string()],
    }
}

/// The use case's side: hands Notes to the writer without waiting.
pub struct Notes {
    tx: mpsc::Sender<NoteBody>,
    metrics: Arc<Metrics>,
}

/// The writer's side, for [`run`].
pub struct Outlet(mpsc::Receiver<NoteBody>);

impl Notes {
    /// A queue and its outlet.
    pub fn channel(metrics: Arc<Metrics>) -> (Notes, Outlet) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Notes { tx, metrics }, Outlet(rx))
    }

    /// Queues a Note; a full queue drops it (counted): a link never waits for a Note.
    pub fn write(&self, note: NoteBody) {
        if self.tx.try_send(note).is_err() {
            self.metrics.note("dropped", 1);
        }
    }
}

/// Fills in the company of Notes that lack it (one end-user lookup each, waiting for room in
/// the budget); Notes whose company can't be found are counted and left out.
async fn with_companies(
    planhat: &Planhat,
    metrics: &Metrics,
    batch: Vec<NoteBody>,
) -> Vec<NoteBody> {
    let mut ready = Vec::with_capacity(batch.len());
    for mut note in batch {
        if note.company_id.is_empty() {
            let Some(id) = note.endusers.first().and_then(|e| super::portal::id_of(e)) else {
                metrics.note("no_company", 1);
                continue;
            };
            while !planhat.room_for_optional() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            match planhat.find_by_id(&id).await {
                Ok(found) if found.company_id.is_some() => {
                    note.company_id = found.company_id.unwrap_or_default();
                }
                _ => {
                    metrics.note("no_company", 1);
                    continue;
                }
            }
        }
        ready.push(note);
    }
    ready
}

/// Writes queued Notes in batches until shutdown (then what is queued is tried once).
pub async fn run(outlet: Outlet, planhat: Planhat, metrics: Arc<Metrics>, mut shutdown: Shutdown) {
    let mut rx = outlet.0;
    loop {
        let first = tokio::select! {
            n = rx.recv() => n,
            _ = shutdown.fired() => None,
        };
        let Some(first) = first else {
            break;
        };
        let mut batch = vec![first];
        let gather = tokio::time::sleep(GATHER);
        tokio::pin!(gather);
        while batch.len() < MAX_BATCH {
            tokio::select! {
                n = rx.recv() => match n { Some(n) => batch.push(n), None => break },
                _ = &mut gather => break,
                _ = shutdown.fired() => break,
            }
        }
        let batch = with_companies(&planhat, &metrics, batch).await;
        if !batch.is_empty() {
            write(&planhat, &metrics, batch, &mut shutdown).await;
        }
    }
    // Shutting down: one try for what is left.
    let mut rest = Vec::new();
    while let Ok(n) = rx.try_recv() {
        rest.push(n);
    }
    for chunk in rest.chunks(MAX_BATCH) {
        match planhat.put_notes(chunk).await {
            Ok(()) => metrics.note("written", chunk.len() as u64),
            Err(e) => {
                tracing::warn!(error = %e, notes = chunk.len(), "Notes not written at shutdown");
                metrics.note("failed", chunk.len() as u64);
            }
        }
    }
}

/// One batch: waits for room in Planhat's budget (links first), then tries with backoff.
async fn write(
    planhat: &Planhat,
    metrics: &Metrics,
    batch: Vec<NoteBody>,
    shutdown: &mut Shutdown,
) {
    let n = batch.len() as u64;
    for attempt in 0..ATTEMPTS {
        // Links keep the last quarter of the budget; a Note waits for room.
        while !planhat.room_for_optional() && !shutdown.is_fired() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        match planhat.put_notes(&batch).await {
            Ok(()) => {
                metrics.note("written", n);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, notes = n, attempt = attempt + 1, "Planhat Notes could not be written; retrying");
                metrics.note("retried", n);
            }
        }
        let wait = Duration::from_secs(1u64 << attempt);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.fired() => {}
        }
    }
    tracing::warn!(notes = n, "Planhat Notes given up after {ATTEMPTS} tries");
    metrics.note("failed", n);
}
