//! Posting the transparency channel's notices ([`crate::core::notify`]), shared by the Slack
//! and Discord adapters: wait for a notice, gather what else arrives within a second (up to
//! [`BATCH`]), post them as one message, then pause, so a burst of links becomes a few
//! messages well inside the platforms' per-channel rate limits (about one a second). Failures
//! are logged and counted; nothing here ever delays an asker.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::core::asker::Platform;
use crate::core::metrics::Metrics;
use crate::core::notify::Notice;
use crate::core::text;
use crate::shutdown::Shutdown;

/// Lines per message at most.
pub const BATCH: usize = 20;
/// How long a first notice waits for company, and the pause after each post.
const PACE: Duration = Duration::from_secs(1);

/// The batch as one message for a channel of platform `here`: a line per notice, everything
/// escaped with `escape`. The asker is a mention (`<@id>`, which both platforms render as the
/// person's name) when they asked on `here`; an asker from the other platform is plain text
/// ("Discord user 1234…"), since their id would mention someone else, or no one, here.
pub fn text(batch: &[Notice], here: Platform, escape: fn(&str) -> String) -> String {
    batch
        .iter()
        .map(|n| format!("{} {}", asker(n, here, escape), n.describe(escape)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn asker(notice: &Notice, here: Platform, escape: fn(&str) -> String) -> String {
    let id = escape(&text::one_line(&notice.asker, 80));
    if notice.platform == here {
        return format!("<@{id}>");
    }
    let platform = match notice.platform {
        Platform::Slack => "Slack",
        Platform::Discord => "Discord",
        Platform::Cli => "Terminal",
    };
    format!("{platform} user {id}")
}

/// Posts batches from `rx` with `post` until shutdown (or the sender is gone).
pub async fn run<P, F>(
    mut rx: mpsc::Receiver<Notice>,
    platform: &'static str,
    metrics: Arc<Metrics>,
    mut shutdown: Shutdown,
    post: P,
) where
    P: Fn(Vec<Notice>) -> F,
    F: Future<Output = Result<(), String>>,
{
    loop {
        let first = tokio::select! {
            n = rx.recv() => match n { Some(n) => n, None => return },
            _ = shutdown.fired() => return,
        };
        let mut batch = vec![first];
        let gather = tokio::time::sleep(PACE);
        tokio::pin!(gather);
        while batch.len() < BATCH {
            tokio::select! {
                n = rx.recv() => match n { Some(n) => batch.push(n), None => break },
                _ = &mut gather => break,
            }
        }
        let lines = batch.len();
        if let Err(e) = post(batch).await {
            tracing::warn!(platform, lines, error = %e, "transparency-channel post failed");
            for _ in 0..lines {
                metrics.notice_failed(platform);
            }
        }
        tokio::time::sleep(PACE).await;
    }
}
