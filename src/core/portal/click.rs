//! A `/go/` click finishing a request: the id looked at (a `GET`), armed by its Slack asker's
//! click, or used up (the page's `POST`), then the mint for its asker, as it is now.

use std::time::{Duration, Instant};

use super::{Action, PortalService, Reply};
use crate::core::asker::Groups;
use crate::core::audit::AuditEvent;
use crate::core::onetime::{GoError, ARM_WAIT, ARM_WINDOW};

/// What a `/go/` request should get.
#[derive(Debug)]
pub enum GoView {
    /// The click minted (or was refused for a reason of the use case): redirect or say why.
    Done(Reply),
    /// Show the one-button page; its POST is the deliberate act that uses the id.
    Confirm,
    /// The id can't be used (used, unknown, expired, not armed, store unavailable).
    Refused(GoError),
}

/// The browser behind a `/go/` request, for the audit trail of failed attempts.
#[derive(Debug, Clone, Default)]
pub struct GoClient {
    pub address: Option<String>,
    pub user_agent: Option<String>,
}

impl PortalService {
    pub async fn go_get(&self, id: &str, client: &GoClient) -> GoView {
        let started = Instant::now();
        loop {
            match self.state.peek_go(id).await {
                Err(e) => return self.go_refused(e, client).await,
                Ok(p) if !p.needs_arming => return GoView::Confirm,
                Ok(p) if p.armed => return self.go_post(id, client).await,
                Ok(_) if started.elapsed() >= ARM_WAIT => {
                    return self.go_refused(GoError::NotArmed, client).await
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// `POST /go/{id}` (the page's button) or an armed `GET`: uses the id up, then runs the
    /// whole flow for its asker and end user (re-authorised, access re-checked, minted now,
    /// audited). A click refused for a passing reason leaves the id usable.
    pub async fn go_post(&self, id: &str, client: &GoClient) -> GoView {
        let claim = match self.state.take_go(id).await {
            Ok(claim) => claim,
            Err(e) => return self.go_refused(e, client).await,
        };
        // Membership as it is now, not as it was when the link was issued: someone removed
        // from the group or role since gets no portal.
        let mut asker = claim.asker;
        if self.policy.uses_groups_on(asker.platform) {
            asker.groups = match self.directory(asker.platform) {
                Some(d) => d.groups_now(&asker).await,
                None => Groups::Unknown,
            };
        }
        let reply = self.link_for(&asker, claim.end_user, Action::Go).await;
        if let Reply::Refused(r) = &reply {
            if r.is_passing() {
                self.state.release_go(id).await;
            }
        }
        GoView::Done(reply)
    }

    /// Whether a `/go/` id could be used, without using it (`HEAD`).
    pub async fn peek_go(&self, id: &str) -> Result<(), GoError> {
        self.state.peek_go(id).await.map(|_| ())
    }

    /// Slack told the bot that `user_id` clicked the button of `/go/` id `id`: if it is theirs,
    /// a browser may now open it (for [`ARM_WINDOW`]).
    pub async fn arm_go(&self, id: &str, user_id: &str) -> bool {
        self.state.arm_go(id, user_id, ARM_WINDOW).await
    }

    /// A `/go/` attempt that could not use its id: audited (never the id), counted, logged.
    async fn go_refused(&self, e: GoError, client: &GoClient) -> GoView {
        let event = AuditEvent {
            time: AuditEvent::now(),
            platform: "web",
            team: None,
            channel: None,
            asker: "-".into(),
            action: Action::Go.name(),
            end_user: None,
            email: None,
            outcome: e.kind(),
            latency_ms: 0,
            company: None,
            client: client.address.clone(),
            user_agent: client.user_agent.clone(),
        };
        if let Err(err) = self.audit.record(event).await {
            tracing::error!(error = %err, "audit event lost");
        }
        self.metrics.request("web", e.kind(), Duration::ZERO);
        tracing::info!(
            outcome = e.kind(),
            client = client.address.as_deref(),
            "a /go/ link could not be used"
        );
        GoView::Refused(e)
    }
}
