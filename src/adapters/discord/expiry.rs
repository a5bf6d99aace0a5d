//! Discord's expiry edits: when a link dies, its message is edited to "expired" + New link,
//! so no used URL stays in the chat.
//!
//! Each edit is a job in the shared state (due when the link expires), and one worker per
//! process sleeps until the next job is due, in the manner of mini-redis's expiry task: no
//! task per pending edit, nothing scanned on the request path. With Redis, the jobs outlive the
//! replica that scheduled them and each is taken by exactly one replica, so a replica stopped
//! or killed before its links expire doesn't leave them in the chat. The worker also wakes at
//! least every [`POLL`], to pick up jobs another replica scheduled.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::{render, rest, DiscordState};
use crate::core::seal::{Forged, Purpose, Sealer};
use crate::shutdown::Shutdown;

/// The longest the worker sleeps without looking (jobs of other replicas are due on time to
/// within this).
pub const POLL: Duration = Duration::from_millis(500);
/// Jobs taken per look.
const BATCH: usize = 64;
/// Edits in flight at once. Links minted in a burst expire in a burst: without a bound, tens of
/// thousands of edits would each hold a task and a request at once (memory, and a queue inside
/// serenity's rate limiter); with it, due jobs wait in the store, where they cost nothing.
const EDITS_AT_ONCE: usize = 16;

/// The shared-state key of the expiry job of the message named `message_key`.
pub fn job_key(message_key: u64) -> String {
    format!("discord-expiry:{message_key}")
}

/// What an expiry edit needs. It holds the interaction token (valid 15 minutes), so it is
/// never logged; on Redis it sits under the bot's key prefix with a TTL.
#[derive(Serialize, Deserialize)]
pub struct Job {
    pub token: String,
    pub asker: String,
    pub end_user: String,
}

impl Job {
    /// The job as stored under `key`: sealed, so no one who writes to the store can schedule
    /// an edit the bot would make.
    pub fn encode(&self, sealer: &Sealer, key: &str) -> String {
        // Serialising three strings can't fail.
        let json = serde_json::to_string(self).unwrap_or_default();
        sealer.seal(Purpose::DiscordEdit, key, &json)
    }

    fn decode(sealer: &Sealer, key: &str, payload: &str) -> Result<Option<Job>, Forged> {
        let json = sealer.open(Purpose::DiscordEdit, key, payload)?;
        Ok(serde_json::from_str(json).ok())
    }
}

/// Runs due jobs until shutdown.
pub async fn run(state: Arc<DiscordState>, mut shutdown: Shutdown) {
    let slots = Arc::new(tokio::sync::Semaphore::new(EDITS_AT_ONCE));
    loop {
        let due = state.app.state.take_due(SystemTime::now(), BATCH).await;
        let full = due.len() == BATCH;
        for job in due {
            let job = match Job::decode(&state.app.sealer, &job.key, &job.payload) {
                Ok(Some(job)) => job,
                Ok(None) => {
                    tracing::warn!("an expiry job could not be read; skipped");
                    continue;
                }
                Err(Forged) => {
                    state.app.portal.record_forged("discord_edit").await;
                    continue;
                }
            };
            // The next batch is taken only once this one has slots: at most a batch waits
            // here, the rest stays in the (shared) store. Taken jobs are edited even when
            // shutdown comes meanwhile (shutdown waits for tracked tasks).
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let state = state.clone();
            state.app.tasks.clone().spawn(async move {
                edit(&state, job).await;
                drop(slot);
            });
        }
        if full {
            continue; // more are due right now
        }
        let wait = match state.app.state.next_due().await {
            Some(at) => at
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .min(POLL),
            None => POLL,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = state.expiries.notified() => {}
            _ = shutdown.fired() => return,
        }
    }
}

/// One expiry edit; a failure that can't have landed (no connection, 5xx) is tried again, so
/// an edit lost to a passing fault doesn't leave the link's message in the chat.
async fn edit(state: &DiscordState, job: Job) {
    let edit = render::edit(render::expired(&job.asker, &job.end_user));
    let sent = crate::adapters::deliver::with_retries("discord expiry edit", || async {
        state
            .http
            .edit_original_interaction_response(&job.token, &edit, Vec::new())
            .await
            .map(|_| ())
            .map_err(|e| rest::delivery_error(&e))
    })
    .await;
    if sent.is_err() {
        state.app.metrics.delivery_failed("discord");
    }
}
