//! The Slack adapter: `/portal` over signed webhooks or Socket Mode, answered in Block Kit.
//!
//! Thin by design: it verifies and parses what Slack sends (slack-morphism types), builds an
//! [`Asker`], hands the text to the core, and renders the [`Reply`]. Both transports share
//! [`SlackState::command`] and [`SlackState::interaction`], so they behave identically.

mod client;
mod groups;
mod http;
pub mod render;
mod socket;
pub mod verify;

use std::sync::Arc;
use std::time::Duration;

use slack_morphism::prelude::*;

use self::client::SlackApi;
use self::groups::GroupCache;
use super::dedupe::Dedupe;
use super::deliver::{inline_or_later, reply_or_internal_error, with_retries, Answer};
use super::Started;
use crate::core::asker::{Asker, Groups, Platform};
use crate::core::config::SlackMode;
use crate::core::portal::{id_of, Action, Reply};
use crate::{App, StartError};

pub use client::connector;
pub use http::{parse_command, parse_interaction};

/// Everything the Slack handlers share.
pub struct SlackState {
    app: Arc<App>,
    api: Arc<SlackApi>,
    groups: Arc<GroupCache>,
    seen: Dedupe,
    /// Socket Mode hellos seen (connects + reconnects).
    hellos: std::sync::atomic::AtomicU64,
}

/// Starts Slack when `[slack]` is configured: routes for http mode, a Socket Mode connection
/// for socket mode, and the user-group refresher for both.
pub async fn start(app: &Arc<App>) -> Result<Option<Started>, StartError> {
    let Some(config) = app.config.slack.clone() else {
        return Ok(None);
    };
    let api = Arc::new(SlackApi::new(config.api_url.as_str(), &config.bot_token));
    let groups = Arc::new(GroupCache::new(
        app.portal.policy().slack_usergroups().to_vec(),
        config.usergroup_ttl,
    ));
    let state = Arc::new(SlackState {
        app: app.clone(),
        api: api.clone(),
        groups: groups.clone(),
        seen: Dedupe::new(Duration::from_secs(600), 100_000),
        hellos: std::sync::atomic::AtomicU64::new(0),
    });
    let mut tasks = vec![tokio::spawn(groups.run(api, app.shutdown()))];
    let router = match config.mode {
        SlackMode::Http => http::router(
            state,
            verify::SlackVerifier::new(config.signing_secret.expose()),
        ),
        SlackMode::Socket => {
            tasks.push(socket::spawn(state, &config.app_token, app.shutdown()));
            axum::Router::new()
        }
    };
    tracing::info!(mode = ?config.mode, "Slack is on");
    Ok(Some(Started { router, tasks }))
}

impl SlackState {
    fn asker(&self, user: &str, team: Option<&str>, channel: Option<&str>) -> Asker {
        let mut asker = Asker {
            platform: Platform::Slack,
            user_id: user.to_string(),
            team_id: team.map(str::to_string),
            channel_id: channel.map(str::to_string),
            groups: Groups::Known(Vec::new()),
        };
        if !self.app.portal.policy().is_listed_user(&asker) {
            asker.groups = self.groups.groups_of(user);
        }
        asker
    }

    /// A slash command, from either transport: the inline answer, or a short acknowledgement
    /// when the answer will follow through `response_url`.
    pub async fn command(self: &Arc<Self>, ev: SlackCommandEvent) -> SlackCommandEventResponse {
        if !self.seen.first_time(&ev.trigger_id.0) {
            tracing::info!(user = %ev.user_id, "duplicate delivery of a slash command; answered once already");
            return render::command_response(render::line(
                "This request is already being answered.",
            ));
        }
        let asker = self.asker(&ev.user_id.0, Some(&ev.team_id.0), Some(&ev.channel_id.0));
        let text = ev.text.clone().unwrap_or_default();
        let response_url = ev.response_url.0.clone();
        let app = self.app.clone();
        let me = self.clone();
        let user = asker.user_id.clone();
        let work = Box::pin(reply_or_internal_error(async move {
            app.portal.handle(&asker, &text).await
        }));
        let late = move |reply: Reply| async move {
            let content = render::reply(&reply, &user, None);
            me.deliver(&response_url, content, false).await;
        };
        match inline_or_later(
            &self.app.tasks,
            self.app.config.server.reply_budget,
            work,
            late,
        )
        .await
        {
            Answer::Inline(reply) => {
                render::command_response(render::reply(&reply, &ev.user_id.0, None))
            }
            Answer::Deferred => render::command_response(render::line(
                "Planhat is taking a moment; your answer will appear here shortly.",
            )),
        }
    }

    /// A `block_actions` interaction. Acknowledged at once by the caller; the work (replacing
    /// the message) happens here, in a tracked task.
    pub fn interaction(self: &Arc<Self>, ev: SlackInteractionEvent) {
        let SlackInteractionEvent::BlockActions(ev) = ev else {
            return;
        };
        // A click delivered twice (retry, redelivered envelope) is acted on once.
        if !self.seen.first_time(&format!("click:{}", ev.trigger_id.0)) {
            return;
        }
        let (Some(user), Some(response_url)) = (ev.user.as_ref(), ev.response_url.as_ref()) else {
            return;
        };
        let Some(action) = ev.actions.as_ref().and_then(|a| a.first()).cloned() else {
            return;
        };
        let asker = self.asker(
            &user.id.0,
            Some(&ev.team.id.0),
            ev.channel.as_ref().map(|c| c.id.0.as_str()),
        );
        let response_url = response_url.0.clone();
        let value = action.value.clone().unwrap_or_default();
        let action_id = action.action_id.0.clone();
        let me = self.clone();
        self.app
            .tasks
            .spawn(async move { me.button(asker, &action_id, &value, response_url).await });
    }

    async fn button(&self, asker: Asker, action_id: &str, value: &str, response_url: url::Url) {
        // Button values are `{asker}:{end user}`: only the person who asked may press them.
        let Some((owner, end_user)) = value.split_once(':') else {
            return;
        };
        if action_id == render::OPEN_PORTAL {
            let when = render::clock(std::time::SystemTime::now());
            let content = render::used(owner, end_user, &format!("was opened at {when}"));
            self.deliver(&response_url, content, true).await;
            return;
        }
        let action = if action_id == render::NEW_LINK {
            Action::NewLink
        } else if action_id.starts_with(render::PICK) {
            Action::Link
        } else {
            return;
        };
        if owner != asker.user_id {
            self.app
                .portal
                .record_refusal(&asker, Some(end_user.to_string()), "not_owner")
                .await;
            let content =
                render::line("Only the person who asked for this link can use its buttons.");
            self.deliver(&response_url, content, false).await;
            return;
        }
        let Some(id) = id_of(end_user) else {
            return;
        };
        let reply = self.app.portal.link_for(&asker, id, action).await;
        self.deliver(
            &response_url,
            render::reply(&reply, &asker.user_id, None),
            true,
        )
        .await;
    }

    async fn deliver(&self, response_url: &url::Url, content: SlackMessageContent, replace: bool) {
        let sent = with_retries("slack response_url", || {
            self.api.post_response(response_url, &content, replace)
        })
        .await;
        if sent.is_err() {
            self.app.metrics.delivery_failed("slack");
        }
    }
}
