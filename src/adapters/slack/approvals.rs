//! Asking the owner in Slack: the reason form (a modal through `views.open`), the request in
//! the owners' direct messages and the approvers' channel (Approve, Deny), updates in place
//! when it is decided or expires, and the asker's direct message with a button that mints only
//! when pressed. The decisions themselves are the core's ([`crate::core::approvals`]).
//!
//! What a form carries back (`private_metadata`) is the end user (or the request id) and the
//! refusal's `response_url`, so that the answer replaces the refusal the asker saw; Slack signs
//! the whole submission, and the core checks everything again.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use slack_morphism::prelude::*;

use super::client::SlackApi;
use super::render::{self, code, escape, name};
use super::SlackState;
use crate::core::approvals::{
    asker_line, decided_line, ApprovalChat, Approvals, Decided, Posted, Request, Shown, Verdict,
};
use crate::core::asker::{Asker, Platform};
use crate::core::portal::id_of;

/// The forms' callback ids.
const ASK_FORM: &str = "portal_ask";
const BREAK_GLASS_FORM: &str = "portal_break_glass";
const DENY_FORM: &str = "portal_deny";
/// The reason input's block and action id.
const REASON: &str = "reason";

/// What a form carries between its opening and its submission.
#[derive(Serialize, Deserialize)]
struct Carried {
    /// The end user (ask, break-glass) or the request id (deny).
    subject: String,
    /// Where the refusal (or the request message) can be answered.
    response_url: Option<String>,
}

/// Which form a button opens.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Ask,
    BreakGlass,
    Deny,
}

impl SlackState {
    fn approvals(&self) -> Option<&Arc<Approvals>> {
        self.app.approvals.as_ref()
    }

    /// Opens the reason form for a click (`trigger_id` lives 3 s, so this runs at once).
    pub(super) async fn open_form(
        &self,
        form: Form,
        trigger_id: &str,
        subject: &str,
        response_url: Option<&url::Url>,
    ) {
        let Some(approvals) = self.approvals() else {
            return;
        };
        let min = approvals.config().reason_min_chars as u64;
        let (callback, title, label, submit, optional) = match form {
            Form::Ask => (
                ASK_FORM,
                "Ask the owner",
                "Why do you need to open it?",
                "Send",
                false,
            ),
            Form::BreakGlass => (
                BREAK_GLASS_FORM,
                "Open anyway (on call)",
                "Why now? (the owner is told)",
                "Open",
                false,
            ),
            Form::Deny => (
                DENY_FORM,
                "Deny the request",
                "Reason (optional)",
                "Deny",
                true,
            ),
        };
        let carried = Carried {
            subject: subject.to_string(),
            response_url: response_url.map(|u| u.to_string()),
        };
        let Ok(metadata) = serde_json::to_string(&carried) else {
            return;
        };
        let mut input = SlackBlockPlainTextInputElement::new()
            .with_action_id(REASON.into())
            .with_multiline(true)
            .with_max_length(crate::core::approvals::MAX_REASON as u64);
        if !optional {
            input = input.with_min_length(min);
        }
        let block = SlackInputBlock::new(pt!(label), input.into())
            .with_block_id(REASON.into())
            .with_optional(optional);
        let view = SlackView::Modal(
            SlackModalView::new(pt!(title), vec![block.into()])
                .with_callback_id(callback.into())
                .with_submit(pt!(submit))
                .with_close(pt!("Cancel"))
                .with_private_metadata(metadata),
        );
        if let Err(e) = self.api.open_view(trigger_id, view).await {
            tracing::warn!(error = %e, "the reason form could not be opened");
        }
    }

    /// A submitted form: the answer to Slack at once (`None`: close the form; else the form's
    /// errors), the work in a tracked task.
    pub(super) fn submitted(
        self: &Arc<Self>,
        ev: SlackInteractionViewSubmissionEvent,
    ) -> Option<serde_json::Value> {
        let approvals = self.approvals()?.clone();
        let SlackView::Modal(modal) = &ev.view.view else {
            return None;
        };
        let callback = modal.callback_id.as_ref()?.0.clone();
        let carried: Carried = serde_json::from_str(modal.private_metadata.as_deref()?).ok()?;
        let reason = ev
            .view
            .state_params
            .state
            .as_ref()
            .and_then(|s| s.values.get(&REASON.into()))
            .and_then(|v| v.get(&REASON.into()))
            .and_then(|v| v.value.clone())
            .unwrap_or_default();
        if callback != DENY_FORM {
            if let Err(e) = approvals.check_reason(&reason) {
                return Some(serde_json::json!({
                    "response_action": "errors",
                    "errors": { REASON: e.to_string() }
                }));
            }
        }
        let asker = self.asker(&ev.user.id.0, Some(&ev.team.id.0), None);
        let response_url = carried
            .response_url
            .as_deref()
            .and_then(|u| url::Url::parse(u).ok());
        let me = self.clone();
        self.app.tasks.spawn(async move {
            match callback.as_str() {
                ASK_FORM => {
                    me.ask(&approvals, asker, &carried.subject, &reason, response_url)
                        .await
                }
                BREAK_GLASS_FORM => {
                    me.break_glass(&approvals, asker, &carried.subject, &reason, response_url)
                        .await
                }
                DENY_FORM => {
                    let reason = Some(reason).filter(|r| !r.trim().is_empty());
                    me.decide(
                        &approvals,
                        asker,
                        &carried.subject,
                        Verdict::Denied { reason },
                        response_url,
                    )
                    .await
                }
                _ => {}
            }
        });
        None
    }

    async fn ask(
        self: &Arc<Self>,
        approvals: &Arc<Approvals>,
        asker: Asker,
        end_user: &str,
        reason: &str,
        response_url: Option<url::Url>,
    ) {
        let Some(id) = id_of(end_user) else {
            return;
        };
        let line = match approvals.request(&asker, id, reason).await {
            Ok(made) if made.request.posted.is_empty() => "The bot could not reach the company's owner (no Slack or Discord account with their Planhat email, and no approvers' channel). Ask an admin (on-call).".to_string(),
            Ok(made) => format!(
                "Your request to open {}'s portal went to the company's owner. You'll get a direct message when it is decided (it expires at {}).",
                code(&made.request.whom()),
                render::clock(Approvals::expires(&made.request))
            ),
            Err(e) => e.to_string(),
        };
        self.tell(response_url.as_ref(), &line).await;
    }

    /// Approve or Deny pressed (Deny through its form).
    pub(super) async fn decide(
        &self,
        approvals: &Approvals,
        decider: Asker,
        id: &str,
        verdict: Verdict,
        response_url: Option<url::Url>,
    ) {
        match approvals.decide(&decider, id, verdict).await {
            Ok(_) => {}
            Err(e) => {
                // Only the clicker sees why (ephemeral, beside the request).
                if let Some(url) = &response_url {
                    let _ = self
                        .api
                        .post_response(url, &render::line(&e.to_string()), false)
                        .await;
                }
            }
        }
    }

    async fn break_glass(
        &self,
        approvals: &Approvals,
        asker: Asker,
        end_user: &str,
        reason: &str,
        response_url: Option<url::Url>,
    ) {
        let Some(id) = id_of(end_user) else {
            return;
        };
        let user = asker.user_id.clone();
        match approvals.break_glass(&asker, id, reason).await {
            Ok(done) => {
                if let Some(url) = &response_url {
                    self.deliver(url, render::reply(&done.reply, &user), true)
                        .await;
                }
            }
            Err(e) => self.tell(response_url.as_ref(), &e.to_string()).await,
        }
    }

    /// One line to the asker in place of the refusal they saw (or nowhere, without a URL).
    async fn tell(&self, response_url: Option<&url::Url>, line: &str) {
        if let Some(url) = response_url {
            self.deliver(url, render::line(line), true).await;
        }
    }
}

/// Slack's side of asking the owner ([`ApprovalChat`]): owners found by email
/// (`users.lookupByEmail`), reached by direct message; copies updated with `chat.update`.
pub struct SlackChat {
    api: Arc<SlackApi>,
    /// `approvals.slack_channel`: requests are posted there too.
    channel: Option<String>,
}

impl SlackChat {
    pub(super) fn new(api: Arc<SlackApi>, channel: Option<String>) -> Self {
        SlackChat { api, channel }
    }

    /// The Slack users with these emails (none found: skipped; a failure is logged).
    async fn users(&self, emails: &[String]) -> Vec<String> {
        let mut users = Vec::new();
        for email in emails {
            match self.api.user_id_by_email(email).await {
                Ok(Some(user)) => users.push(user),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "an owner could not be found in Slack by email")
                }
            }
        }
        users
    }

    /// A direct message to `user`.
    async fn direct(&self, user: &str, content: SlackMessageContent) {
        let sent = match self.api.open_dm(user).await {
            Ok(dm) => self.api.post_for_update(&dm, content).await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "a direct message could not be sent");
        }
    }
}

#[async_trait::async_trait]
impl ApprovalChat for SlackChat {
    /// Sends the request to the owners' direct messages and the approvers' channel.
    async fn post_request(&self, request: &Request) -> Vec<Posted> {
        let mut channels = Vec::new();
        for user in self.users(&request.owners).await {
            if request.asker.platform == Platform::Slack && user == request.asker.user_id {
                continue;
            }
            match self.api.open_dm(&user).await {
                Ok(dm) => channels.push(dm),
                Err(e) => {
                    tracing::warn!(error = %e, "an owner's direct message could not be opened")
                }
            }
        }
        channels.extend(self.channel.clone());
        let mut posted = Vec::new();
        for channel in channels {
            match self
                .api
                .post_for_update(&channel, request_message(request))
                .await
            {
                Ok(ts) => posted.push(Posted {
                    platform: Platform::Slack,
                    channel,
                    message: ts,
                }),
                Err(e) => tracing::warn!(error = %e, "a request to the owner could not be posted"),
            }
        }
        posted
    }

    /// A decision (or expiry): every posted copy says so, and the asker is told.
    async fn announce(&self, decided: &Decided) {
        let request = &decided.request;
        let verdict = &decided.decision.verdict;
        let by = decided
            .decision
            .by
            .as_ref()
            .map(mention)
            .unwrap_or_default();
        let reason = verdict.reason().map(name);
        let shown = Shown {
            by: &by,
            whom: &code(&request.whom()),
            company: &name(&request.company_shown()),
            until: &until(decided),
            reason: reason.as_deref(),
        };
        let status = decided_line(verdict, &shown);
        for posted in request
            .posted
            .iter()
            .filter(|p| p.platform == Platform::Slack)
        {
            let content = decided_message(request, &status);
            if let Err(e) = self
                .api
                .update(&posted.channel, &posted.message, content)
                .await
            {
                tracing::warn!(error = %e, "a request message could not be updated");
            }
        }
        if request.asker.platform != Platform::Slack {
            return;
        }
        let line = asker_line(verdict, &shown);
        let content = match verdict {
            Verdict::Approved => granted_message(request, &line),
            _ => render::line(&line),
        };
        self.direct(&request.asker.user_id, content).await;
    }

    async fn tell_owners(
        &self,
        owners: &[String],
        asker: &Asker,
        end_user: &str,
        company: &str,
        reason: &str,
    ) {
        let line = format!(
            "{} opened a portal as {} ({}) with on-call break-glass. Reason: {}",
            mention(asker),
            code(end_user),
            name(company),
            name(reason)
        );
        for owner in self.users(owners).await {
            if !(asker.platform == Platform::Slack && owner == asker.user_id) {
                self.direct(&owner, render::line(&line)).await;
            }
        }
    }
}

fn mention(asker: &Asker) -> String {
    match asker.platform {
        Platform::Slack => format!("<@{}>", asker.user_id),
        other => format!("{} user {}", other, escape(&asker.user_id)),
    }
}

fn until(decided: &Decided) -> String {
    Approvals::until(&decided.decision)
        .map(render::clock)
        .unwrap_or_default()
}

/// What an owner sees: who asks to become whom, why, and Approve / Deny.
fn request_message(request: &Request) -> SlackMessageContent {
    let text = format!(
        "{} asks to open the portal as {} ({}) of {}.\nReason: {}\nExpires at {}.",
        mention(&request.asker),
        name(&request.whom()),
        code(&request.end_user),
        name(&request.company_shown()),
        name(&request.reason),
        render::clock(Approvals::expires(request))
    );
    let buttons: Vec<SlackActionBlockElement> = vec![
        SlackBlockButtonElement::new(pt!("Approve"))
            .with_action_id(render::APPROVE.into())
            .with_value(request.id.clone())
            .with_style(SlackBlockButtonStyle::Primary)
            .into(),
        SlackBlockButtonElement::new(pt!("Deny"))
            .with_action_id(render::DENY.into())
            .with_value(request.id.clone())
            .into(),
    ];
    SlackMessageContent::new()
        .with_text(text.clone())
        .with_blocks(vec![
            SlackSectionBlock::new().with_text(md!(text)).into(),
            SlackActionsBlock::new(buttons).into(),
        ])
}

/// The request once decided: the same words, the buttons gone, the decision beneath.
fn decided_message(request: &Request, status: &str) -> SlackMessageContent {
    let text = format!(
        "{} asked to open the portal as {} ({}) of {}.\nReason: {}\n{status}",
        mention(&request.asker),
        name(&request.whom()),
        code(&request.end_user),
        name(&request.company_shown()),
        name(&request.reason),
    );
    SlackMessageContent::new()
        .with_text(text.clone())
        .with_blocks(vec![SlackSectionBlock::new().with_text(md!(text)).into()])
}

/// The asker's direct message after an approval: a button that mints only when pressed.
fn granted_message(request: &Request, text: &str) -> SlackMessageContent {
    let text = text.to_string();
    SlackMessageContent::new()
        .with_text(text.clone())
        .with_blocks(vec![
            SlackSectionBlock::new().with_text(md!(text)).into(),
            SlackActionsBlock::new(vec![SlackBlockButtonElement::new(pt!("Open portal"))
                .with_action_id(render::GRANTED_LINK.into())
                .with_value(format!("{}:{}", request.asker.user_id, request.end_user))
                .into()])
            .into(),
        ])
}
