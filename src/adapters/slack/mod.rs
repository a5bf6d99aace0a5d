//! The Slack adapter: `/portal` over signed webhooks or Socket Mode, answered in Block Kit.
//!
//! Thin by design: it verifies and parses what Slack sends (slack-morphism types), builds an
//! [`Asker`], hands the text to the core, and renders the [`Reply`]. Both transports share
//! [`SlackState::command`] and [`SlackState::interaction`], so they behave identically.

mod approvals;
mod client;
mod directory;
mod groups;
mod http;
pub mod probe;
pub mod render;
mod socket;
mod template;
pub mod verify;

use std::sync::Arc;
use std::time::Duration;

use slack_morphism::prelude::*;

use self::client::SlackApi;
use self::groups::GroupCache;
use super::deliver::{inline_or_later, later, reply_or_internal_error, with_retries, Answer};
use super::Started;
use crate::core::asker::{Asker, Groups, Platform};
use crate::core::config::SlackMode;
use crate::core::portal::{id_of, Action, Reply};
use crate::core::state::Delivery;
use crate::{App, StartError};

pub use client::connector;
pub use http::{parse_command, parse_interaction};

/// A slash command, as either transport delivers it: the fields the bot reads.
#[derive(Debug)]
pub struct SlashCommand {
    /// Unique per command: the delivery id for duplicate detection.
    pub trigger_id: String,
    /// The asker.
    pub user_id: String,
    /// The asker's workspace.
    pub team_id: String,
    /// Where it was typed.
    pub channel_id: String,
    /// What follows `/portal`.
    pub text: String,
    /// Where a late answer goes. Kept as text: it is parsed only when an answer is late.
    pub response_url: String,
}

impl From<SlackCommandEvent> for SlashCommand {
    fn from(ev: SlackCommandEvent) -> Self {
        SlashCommand {
            trigger_id: ev.trigger_id.0,
            user_id: ev.user_id.0,
            team_id: ev.team_id.0,
            channel_id: ev.channel_id.0,
            text: ev.text.unwrap_or_default(),
            response_url: ev.response_url.0.into(),
        }
    }
}

/// A slash command's inline answer, rendered only where it goes: the webhook's JSON body, a
/// Socket Mode acknowledgement, or (when that connection went away) a message to
/// `response_url`.
// Made once per command and moved once; boxing the reply would add an allocation for nothing.
#[allow(clippy::large_enum_variant)]
pub enum CommandAnswer {
    /// The core's reply to this asker.
    Reply { reply: Reply, asker: String },
    /// One line of the adapter's own (a duplicate, or "your answer follows").
    Line(&'static str),
}

impl CommandAnswer {
    /// The ephemeral answer as the JSON Slack reads.
    pub fn json(&self) -> String {
        match self {
            CommandAnswer::Reply { reply, asker } => render::command_json(reply, asker),
            CommandAnswer::Line(text) => render::content_json(render::line(text)),
        }
    }

    /// The same answer as a message, for `response_url`.
    pub fn content(&self) -> SlackMessageContent {
        match self {
            CommandAnswer::Reply { reply, asker } => render::reply(reply, asker),
            CommandAnswer::Line(text) => render::line(text),
        }
    }
}

/// Everything the Slack handlers share.
pub struct SlackState {
    app: Arc<App>,
    api: Arc<SlackApi>,
    groups: Arc<GroupCache>,
    /// Socket Mode connections (open, and hellos so far).
    socket: socket::SocketStats,
    /// Socket Mode's readiness check (`None` in http mode, which needs no connection).
    socket_up: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// How long a delivery is remembered: Slack retries webhooks and redelivers unacknowledged
/// envelopes within minutes.
const REDELIVERY_WINDOW: Duration = Duration::from_secs(600);

/// Starts Slack when `[slack]` is configured: routes for http mode, a Socket Mode connection
/// for socket mode, and the user-group refresher for both.
pub async fn start(app: &Arc<App>) -> Result<Option<Started>, StartError> {
    let Some(config) = app.config.slack.clone() else {
        return Ok(None);
    };
    let api = Arc::new(SlackApi::new(config.api_url.as_str(), &config.bot_token));
    // The groups the policy asks about, and those of approvers and on-call (break-glass).
    let mut wanted = app.portal.policy().slack_usergroups().to_vec();
    if let Some(approvals) = &app.approvals {
        wanted.extend(approvals.slack_usergroups());
    }
    wanted.sort();
    wanted.dedup();
    let groups = Arc::new(GroupCache::new(wanted, config.usergroup_ttl));
    let socket_up = (config.mode == SlackMode::Socket).then(|| app.readiness.check("slack_socket"));
    let state = Arc::new(SlackState {
        app: app.clone(),
        api: api.clone(),
        groups: groups.clone(),
        socket: socket::SocketStats::default(),
        socket_up,
    });
    app.portal.register_directory(
        Platform::Slack,
        Arc::new(directory::SlackDirectory::new(
            api.clone(),
            groups.clone(),
            app.config.access.ownership_ttl,
        )),
    );
    if let Some(approvals) = &app.approvals {
        approvals.register_chat(Arc::new(approvals::SlackChat::new(
            api.clone(),
            approvals.config().slack_channel.clone(),
        )));
    }
    let mut tasks = vec![tokio::spawn(groups.run(api.clone(), app.shutdown()))];
    if let Some(channel) = app.config.notify.slack_channel.clone() {
        let (api, outlet) = (api.clone(), app.portal.notifier().outlet());
        tasks.push(tokio::spawn(super::notice::run(
            outlet,
            "slack",
            app.metrics.clone(),
            app.shutdown(),
            move |batch| {
                let (api, channel) = (api.clone(), channel.clone());
                async move {
                    let text = super::notice::text(&batch, Platform::Slack, render::name);
                    api.post_message(&channel, &text)
                        .await
                        .map_err(|e| e.to_string())
                }
            },
        )));
    }
    let router = match config.mode {
        SlackMode::Http => http::router(
            state,
            verify::SlackVerifier::new(config.signing_secret.expose()),
        ),
        SlackMode::Socket => {
            tasks.push(socket::spawn(
                state,
                &config.app_token,
                config.socket_connections,
                app.shutdown(),
            ));
            axum::Router::new()
        }
    };
    tracing::info!(mode = ?config.mode, "Slack is on");
    Ok(Some(Started { router, tasks }))
}

impl SlackState {
    /// Socket Mode is ready while at least one connection is open.
    fn socket_ready(&self) {
        if let Some(flag) = &self.socket_up {
            let open = self.socket.open.load(std::sync::atomic::Ordering::Relaxed);
            flag.store(open > 0, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Whether this replica is the first to see this delivery (see `SharedState`).
    async fn claim(&self, id: &str) -> Delivery {
        self.app
            .state
            .claim_delivery(&format!("slack:{id}"), REDELIVERY_WINDOW)
            .await
    }

    fn asker(&self, user: &str, team: Option<&str>, channel: Option<&str>) -> Asker {
        let mut asker = Asker {
            platform: Platform::Slack,
            user_id: user.to_string(),
            team_id: team.map(str::to_string),
            channel_id: channel.map(str::to_string),
            groups: Groups::Known(Vec::new()),
        };
        // Groups decide who may ask and who is an admin (who bypasses the scope).
        let approvals_groups = self
            .app
            .approvals
            .as_ref()
            .is_some_and(|a| !a.slack_usergroups().is_empty());
        if self.app.portal.policy().uses_groups_on(Platform::Slack) || approvals_groups {
            asker.groups = self.groups.groups_of(user);
        }
        asker
    }

    /// A slash command, from either transport: the inline answer, or a short acknowledgement
    /// when the answer will follow through `response_url`.
    pub async fn command(self: &Arc<Self>, ev: SlashCommand) -> CommandAnswer {
        let delivery = self.claim(&ev.trigger_id).await;
        if delivery == Delivery::Duplicate {
            tracing::info!(user = %ev.user_id, "duplicate delivery of a slash command; answered once already");
            return CommandAnswer::Line("This request is already being answered.");
        }
        let SlashCommand {
            user_id,
            team_id,
            channel_id,
            text,
            response_url,
            ..
        } = ev;
        let asker = self.asker(&user_id, Some(&team_id), Some(&channel_id));
        let app = self.app.clone();
        let me = self.clone();
        let work = Box::pin(reply_or_internal_error(async move {
            app.portal.handle(&asker, &text).await
        }));
        let user = user_id.clone();
        let late = move |reply: Reply| async move {
            let content = render::reply(&reply, &user);
            me.deliver_to(&response_url, content, false).await;
        };
        // Unchecked (shared state down, not seen here): perhaps a replay, whose inline answer
        // would go to whoever sent it; `response_url` goes to the asker.
        let answer = if delivery == Delivery::Unchecked {
            later(&self.app.tasks, work, late)
        } else {
            inline_or_later(
                &self.app.tasks,
                self.app.config.server.reply_budget,
                work,
                late,
            )
            .await
        };
        match answer {
            Answer::Inline(reply) => CommandAnswer::Reply {
                reply,
                asker: user_id,
            },
            Answer::Deferred if delivery == Delivery::Unchecked => {
                CommandAnswer::Line("Working on it; your answer will appear here in a moment.")
            }
            Answer::Deferred => CommandAnswer::Line(
                "Planhat is taking a moment; your answer will appear here shortly.",
            ),
        }
    }

    /// An interaction: a button (`block_actions`) or a submitted form (`view_submission`).
    /// Answered at once by the caller with what this returns (`None`: an empty 200; a form's
    /// errors otherwise); the work happens in a tracked task.
    pub fn interaction(self: &Arc<Self>, ev: SlackInteractionEvent) -> Option<serde_json::Value> {
        let ev = match ev {
            SlackInteractionEvent::BlockActions(ev) => ev,
            SlackInteractionEvent::ViewSubmission(ev) => return self.submitted(ev),
            _ => return None,
        };
        let me = self.clone();
        self.app.tasks.spawn(async move {
            // A click delivered twice (retry, redelivered envelope, two replicas) is acted on once.
            // Its answer goes to `response_url` (the asker) in any case: only a duplicate stops.
            if me.claim(&format!("click:{}", ev.trigger_id.0)).await != Delivery::Duplicate {
                Box::pin(me.block_actions(ev)).await;
            }
        });
        None
    }

    async fn block_actions(self: &Arc<Self>, ev: SlackInteractionBlockActionsEvent) {
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
        // Slack's time of the click (seconds with a fraction), which the `/go/` id is opened
        // against; the time it arrived when Slack gave none.
        // A time far from now (a clock gone wrong) counts as now.
        let now = crate::core::onetime::now_ms();
        let clicked_ms = action
            .action_ts
            .as_ref()
            .and_then(|ts| ts.0.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(|s| (s * 1000.0) as u64)
            .filter(|ms| ms.abs_diff(now) < 300_000)
            .unwrap_or(now);
        let trigger_id = ev.trigger_id.0.clone();
        self.button(
            asker,
            &action_id,
            &value,
            response_url,
            clicked_ms,
            &trigger_id,
        )
        .await;
    }

    async fn button(
        self: &Arc<Self>,
        asker: Asker,
        action_id: &str,
        value: &str,
        response_url: url::Url,
        clicked_ms: u64,
        trigger_id: &str,
    ) {
        // A request to the owner's buttons carry its id; whoever may decide is the core's call.
        if let Some(approvals) = self.app.approvals.clone() {
            if action_id == render::APPROVE {
                self.decide(
                    &approvals,
                    asker,
                    value,
                    crate::core::approvals::Verdict::Approved,
                    Some(response_url),
                )
                .await;
                return;
            }
            if action_id == render::DENY {
                self.open_form(
                    approvals::Form::Deny,
                    trigger_id,
                    value,
                    Some(&response_url),
                )
                .await;
                return;
            }
        }
        // Button values are `{asker}:{end user}` (Open portal on a `/go/` link: `|{id}` after
        // it): only the person who asked may press them.
        let (value, go) = match value.rsplit_once('|') {
            Some((v, id)) => (v, Some(id)),
            None => (value, None),
        };
        let Some((owner, end_user)) = value.split_once(':') else {
            return;
        };
        if action_id == render::OPEN_PORTAL {
            // The asker's own click arms the one-time id: the browser it opened may now mint.
            if let Some(id) = go {
                if !self.app.clicks.arm(id, &asker.user_id, clicked_ms).await {
                    tracing::info!("an Open portal click did not arm its link (not the asker's, or no longer usable)");
                }
            }
            let when = render::clock(std::time::SystemTime::now());
            let content = render::used(owner, end_user, &format!("was opened at {when}"));
            self.deliver(&response_url, content, true).await;
            return;
        }
        let form = match action_id {
            render::ASK_OWNER => Some(approvals::Form::Ask),
            render::BREAK_GLASS => Some(approvals::Form::BreakGlass),
            _ => None,
        };
        if let Some(form) = form {
            // Only the person refused may ask (or open anyway) from their refusal.
            if owner == asker.user_id {
                self.open_form(form, trigger_id, end_user, Some(&response_url))
                    .await;
            }
            return;
        }
        // The button in an approved asker's direct message answers beside it, only to them.
        let granted = action_id == render::GRANTED_LINK;
        let action = if action_id == render::NEW_LINK {
            Action::NewLink
        } else if action_id.starts_with(render::PICK) || granted {
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
            render::reply(&reply, &asker.user_id),
            !granted,
        )
        .await;
    }

    /// [`Self::deliver`] to a `response_url` still in its text form (a slash command's).
    async fn deliver_to(&self, response_url: &str, content: SlackMessageContent, replace: bool) {
        match url::Url::parse(response_url) {
            Ok(url) => self.deliver(&url, content, replace).await,
            Err(e) => {
                // Slack signed it, so this is not expected; the URL itself is never logged.
                tracing::error!(error = %e, "a slash command's response_url is not a URL; its late answer is lost");
                self.app.metrics.delivery_failed("slack");
            }
        }
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
