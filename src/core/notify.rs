//! The transparency channel (`[notify]`): one line per link handed out, per `/go/` click and
//! per refusal for scope, posted to a team channel so that who became whom is visible to the
//! team, not only to the audit trail. Never a URL or a token: a [`Notice`] has no field that
//! could carry one.
//!
//! The core only hands notices over (never waiting: a full queue drops the notice and counts
//! it); each chat adapter that has a channel configured posts them from its own task, batched
//! and paced to the platform's rate limits, off every request's path.

use tokio::sync::mpsc;

use super::asker::Platform;
use super::text;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    /// A link (or a `/go/` link) was handed out.
    Link,
    /// A `/go/` link was opened (minted at the click).
    Opened,
    /// A request was refused because the end user's company is not the asker's.
    RefusedScope,
    /// A link handed out to someone on call for a company not theirs (break-glass).
    BreakGlass,
}

/// One line for the transparency channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub kind: NoticeKind,
    /// Where the asker asked, and their id there: a mention (that pings no one where the
    /// platform allows it) in their own platform's channel, plain text in the other's.
    pub platform: Platform,
    pub asker: String,
    /// The end user's name if known, else their id.
    pub end_user: String,
    pub company: Option<String>,
}

impl Notice {
    /// The line without its asker (each platform renders the asker its own way). Names from
    /// Planhat are made one line without format characters ([`text::name`]), so no name can
    /// forge a line of its own, then escaped for the platform by the caller's `escape`.
    pub fn describe(&self, escape: impl Fn(&str) -> String) -> String {
        let whom = escape(&text::name(&self.end_user));
        let company = self
            .company
            .as_deref()
            .map(|c| format!(" ({})", escape(&text::name(c))))
            .unwrap_or_default();
        match self.kind {
            NoticeKind::Link => format!("got a portal link to sign in as {whom}{company}"),
            NoticeKind::Opened => format!("opened the portal as {whom}{company}"),
            NoticeKind::BreakGlass => {
                format!("got a portal link to sign in as {whom}{company} with on-call break-glass (not one of their companies; the owner is told)")
            }
            NoticeKind::RefusedScope => {
                format!("was refused a portal link for {whom}{company}: not one of their companies")
            }
        }
    }
}

/// Where notices go: every registered channel (Slack, Discord), without waiting.
#[derive(Default)]
pub struct Notifier {
    outlets: std::sync::RwLock<Vec<mpsc::Sender<Notice>>>,
}

/// Notices waiting for one outlet, at most; past that they are dropped (and counted).
pub const QUEUE: usize = 1024;

impl Notifier {
    /// A new outlet; its receiver belongs to the adapter that posts.
    pub fn outlet(&self) -> mpsc::Receiver<Notice> {
        let (tx, rx) = mpsc::channel(QUEUE);
        self.outlets
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        rx
    }

    /// True when some adapter posts notices (so one is worth building).
    pub fn listening(&self) -> bool {
        !self
            .outlets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Hands `notice` to every outlet; returns how many were full (dropped there).
    pub fn send(&self, notice: &Notice) -> usize {
        let outlets = self.outlets.read().unwrap_or_else(|p| p.into_inner());
        outlets
            .iter()
            .filter(|tx| tx.try_send(notice.clone()).is_err())
            .count()
    }
}
