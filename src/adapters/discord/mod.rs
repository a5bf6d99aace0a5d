//! The Discord adapter: `/portal` over the gateway or the interactions endpoint.
//!
//! Thin by design: serenity parses and verifies, this module builds an [`Asker`] from the
//! interaction (roles come with it: no extra API call), hands the text to the core and renders
//! the [`Reply`]. Both transports call [`DiscordState::interaction`], so they behave the same.

mod approvals;
mod directory;
mod expiry;
mod gateway;
mod http;
mod register;
pub mod render;
pub mod rest;
pub mod verify;

use std::sync::Arc;
use std::time::Duration;

use serenity::all::{
    ChannelId, CommandInteraction, ComponentInteraction, CreateAutocompleteResponse,
    CreateInteractionResponse, CreateInteractionResponseMessage, GuildId, Interaction, Member,
    Message, MessageInteractionMetadata, RoleId, UserId,
};
use serenity::http::Http;

use super::deliver::{inline_or_later, later, reply_or_internal_error, with_retries, Answer};
use super::Started;
use crate::core::asker::{Asker, Groups, Platform};
use crate::core::config::DiscordMode;
use crate::core::portal::{id_of, Action, Reply};
use crate::core::state::Delivery;
use crate::{App, StartError};

/// How long an interaction id is remembered: a gateway can redeliver across a resume, and two
/// replicas in gateway mode both receive every interaction. Discord's tokens live 15 minutes.
const REDELIVERY_WINDOW: Duration = Duration::from_secs(900);

/// Everything the Discord handlers share.
pub struct DiscordState {
    app: Arc<App>,
    http: Arc<Http>,
    /// Wakes the expiry worker when a job is scheduled that is due before its next look.
    expiries: Arc<tokio::sync::Notify>,
    /// Expiry jobs the shared state refused (full), told in one line a minute.
    unscheduled_log: crate::core::throttle::LogThrottle,
}

/// Starts Discord when `[discord]` is configured: registers `/portal`, then serves the
/// interactions endpoint (http mode) or holds the gateway connection (gateway mode).
pub async fn start(app: &Arc<App>) -> Result<Option<Started>, StartError> {
    let Some(config) = app.config.discord.clone() else {
        return Ok(None);
    };
    let http = Arc::new(rest::http(&config));
    let state = Arc::new(DiscordState {
        app: app.clone(),
        http: http.clone(),
        expiries: Arc::new(tokio::sync::Notify::new()),
        unscheduled_log: crate::core::throttle::LogThrottle::new(Duration::from_secs(60)),
    });
    app.portal.register_directory(
        Platform::Discord,
        Arc::new(directory::DiscordDirectory::new(
            app.config.access.discord_emails.clone(),
            http.clone(),
        )),
    );
    if let Some(approvals) = &app.approvals {
        approvals.register_chat(Arc::new(approvals::DiscordChat::new(
            http.clone(),
            &app.config.access.discord_emails,
            approvals.config().discord_channel,
        )));
    }
    let mut tasks = vec![
        tokio::spawn(register::register(
            http.clone(),
            config.guild_ids.clone(),
            app.portal.search().is_some(),
        )),
        tokio::spawn(expiry::run(state.clone(), app.shutdown())),
    ];
    if let Some(channel) = app.config.notify.discord_channel {
        let outlet = app.portal.notifier().outlet();
        tasks.push(tokio::spawn(super::notice::run(
            outlet,
            "discord",
            app.metrics.clone(),
            app.shutdown(),
            move |batch| {
                let http = http.clone();
                async move {
                    let text = super::notice::text(&batch, Platform::Discord, render::escape);
                    // The mention shows the name and pings no one.
                    let message = serenity::all::CreateMessage::new()
                        .content(text)
                        .allowed_mentions(serenity::all::CreateAllowedMentions::new());
                    let sent = tokio::time::timeout(
                        Duration::from_secs(5),
                        serenity::all::ChannelId::new(channel).send_message(&*http, message),
                    )
                    .await;
                    match sent {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(rest::describe(&e)),
                        Err(_) => Err("no answer within 5s".into()),
                    }
                }
            },
        )));
    }
    let router = match config.mode {
        DiscordMode::Http => {
            let verifier = verify::DiscordVerifier::new(config.public_key).ok_or_else(|| {
                StartError::Discord("discord.public_key is not a valid Ed25519 key".into())
            })?;
            http::router(state, verifier)
        }
        DiscordMode::Gateway => {
            tasks.push(gateway::spawn(state, &config, app.shutdown()).await?);
            axum::Router::new()
        }
    };
    tracing::info!(mode = ?config.mode, "Discord is on");
    Ok(Some(Started { router, tasks }))
}

/// The asker behind an interaction; `None` outside a guild or when the payload names no member
/// (serenity would otherwise fill in a silent default user).
fn asker_of(guild: Option<GuildId>, channel: ChannelId, member: Option<&Member>) -> Option<Asker> {
    let (guild, member) = (guild?, member?);
    Some(member_asker(guild, channel, member.user.id, &member.roles))
}

/// A server member asking in `channel`, their roles as groups.
fn member_asker(guild: GuildId, channel: ChannelId, user: UserId, roles: &[RoleId]) -> Asker {
    Asker {
        platform: Platform::Discord,
        user_id: user.to_string(),
        team_id: Some(guild.to_string()),
        channel_id: Some(channel.to_string()),
        groups: Groups::Known(roles.iter().map(|r| r.to_string()).collect()),
    }
}

/// A `/portal` slash command as its handler reads it: the interaction's id and token, who asks
/// and where, and the `enduser` option's text. Made from serenity's `CommandInteraction` (the
/// gateway) or read straight from the endpoint's JSON (`http::parse_interaction`). No `Debug`:
/// the token lets its holder edit the reply.
#[derive(PartialEq)]
pub struct PortalCommand {
    pub id: u64,
    pub token: String,
    /// `None` outside a server (a direct message).
    pub asker: Option<Asker>,
    pub enduser: String,
}

impl PortalCommand {
    fn from_serenity(c: &CommandInteraction) -> PortalCommand {
        PortalCommand {
            id: c.id.get(),
            token: c.token.clone(),
            asker: asker_of(c.guild_id, c.channel_id, c.member.as_deref()),
            enduser: c
                .data
                .options
                .iter()
                .find(|o| o.name == "enduser")
                .and_then(|o| o.value.as_str())
                .unwrap_or("")
                .to_string(),
        }
    }
}

/// Which bot message a component sits on, named by the interaction that created the message
/// (the same key [`DiscordState::command`] uses); the message id when Discord doesn't say.
fn message_key(message: &Message) -> u64 {
    match message.interaction_metadata.as_deref() {
        Some(MessageInteractionMetadata::Command(m)) => m.id.get(),
        _ => message.id.get(),
    }
}

fn ephemeral_line(text: &str) -> CreateInteractionResponse {
    CreateInteractionResponse::Message(
        CreateInteractionResponseMessage::new()
            .content(text)
            .ephemeral(true),
    )
}

impl DiscordState {
    /// Whether this replica is the first to see this interaction (see `SharedState`).
    async fn claim(&self, id: u64) -> Delivery {
        self.app
            .state
            .claim_delivery(&format!("discord:{id}"), REDELIVERY_WINDOW)
            .await
    }

    /// A `/portal` command from either transport → its initial response (`None`: a duplicate,
    /// answered once already).
    pub async fn portal_command(
        self: &Arc<Self>,
        c: PortalCommand,
        budget: Duration,
    ) -> Option<CreateInteractionResponse> {
        let budget = match self.claim(c.id).await {
            Delivery::Duplicate => {
                tracing::info!("duplicate delivery of an interaction; answered once already");
                return None;
            }
            // Perhaps a replay (the shared store can't say): never answer it inline,
            // where the answer goes to whoever sent it; the edit goes to the asker.
            Delivery::Unchecked => None,
            Delivery::First => Some(budget),
        };
        // Boxed, like each path below: a request's future then holds a pointer, not
        // kilobytes of every path's state, and is cheaper to move at each level.
        Some(Box::pin(self.command(c, budget)).await)
    }

    /// One interaction from either transport → its initial response (`None`: not for us).
    /// `budget`: how long the answer may wait for the link before deferring.
    pub async fn interaction(
        self: &Arc<Self>,
        interaction: Interaction,
        budget: Duration,
    ) -> Option<CreateInteractionResponse> {
        match interaction {
            Interaction::Ping(_) => Some(CreateInteractionResponse::Pong),
            Interaction::Command(c) if c.data.name == "portal" => {
                self.portal_command(PortalCommand::from_serenity(&c), budget)
                    .await
            }
            // Suggestions while the asker types: answered from memory, never deduplicated
            // (Discord doesn't redeliver them) and never audited (they are not requests).
            Interaction::Autocomplete(c) if c.data.name == "portal" => {
                Some(Box::pin(self.autocomplete(c)).await)
            }
            Interaction::Component(c) => {
                let budget = match self.claim(c.id.get()).await {
                    Delivery::Duplicate => return None,
                    Delivery::Unchecked => None,
                    Delivery::First => Some(budget),
                };
                // Asking the owner's buttons (also in direct messages, where there is no guild).
                if let Some(answer) = Box::pin(self.approval_button(&c)).await {
                    return Some(answer);
                }
                Some(Box::pin(self.component(c, budget)).await)
            }
            // A submitted form (asking the owner).
            Interaction::Modal(m) => {
                if self.claim(m.id.get()).await == Delivery::Duplicate {
                    return None;
                }
                Box::pin(self.submitted(m)).await
            }
            _ => None,
        }
    }

    async fn command(
        self: &Arc<Self>,
        c: PortalCommand,
        budget: Option<Duration>,
    ) -> CreateInteractionResponse {
        let Some(asker) = c.asker else {
            return ephemeral_line("/portal works in a server, not in direct messages.");
        };
        let text = c.enduser;
        let work = {
            let app = self.app.clone();
            let asker = asker.clone();
            Box::pin(async move { app.portal.handle(&asker, &text).await })
        };
        let key = c.id;
        match self
            .answer(work, asker.user_id.clone(), c.token.clone(), key, budget)
            .await
        {
            Answer::Inline(reply) => {
                self.expire_later(&reply, &asker.user_id, &c.token, key)
                    .await;
                render::response(render::message(&reply, &asker.user_id))
            }
            Answer::Deferred => CreateInteractionResponse::Defer(
                CreateInteractionResponseMessage::new().ephemeral(true),
            ),
        }
    }

    /// `APPLICATION_COMMAND_AUTOCOMPLETE`: up to 25 end users matching what is typed in
    /// `enduser` (after a leading `check`), the asker's own companies first.
    async fn autocomplete(&self, c: CommandInteraction) -> CreateInteractionResponse {
        let mut choices = CreateAutocompleteResponse::new();
        let Some(asker) = asker_of(c.guild_id, c.channel_id, c.member.as_deref()) else {
            return CreateInteractionResponse::Autocomplete(choices);
        };
        let typed = c
            .data
            .autocomplete()
            .map(|o| o.value.to_string())
            .unwrap_or_default();
        let (check, query) = match typed.trim().split_once(char::is_whitespace) {
            Some((first, rest)) if first.eq_ignore_ascii_case("check") => (true, rest.to_string()),
            _ => (false, typed.clone()),
        };
        for found in self
            .app
            .portal
            .suggest(&asker, &query, crate::core::search::MAX_SUGGESTIONS)
            .await
        {
            let value = if check {
                format!("check {}", found.id)
            } else {
                found.id.clone()
            };
            if value.len() <= 100 {
                choices = choices.add_string_choice(render::choice(&found), value);
            }
        }
        CreateInteractionResponse::Autocomplete(choices)
    }

    async fn component(
        self: &Arc<Self>,
        c: ComponentInteraction,
        budget: Option<Duration>,
    ) -> CreateInteractionResponse {
        let Some(asker) = asker_of(c.guild_id, c.channel_id, c.member.as_ref()) else {
            return ephemeral_line("These buttons work in a server, not in direct messages.");
        };
        let mut parts = c.data.custom_id.splitn(3, ':');
        let (kind, owner, end_user) = (parts.next(), parts.next(), parts.next());
        let action = match kind {
            Some(render::NEW_LINK) => Action::NewLink,
            Some(render::PICK) => Action::Link,
            _ => return CreateInteractionResponse::Acknowledge,
        };
        if owner != Some(asker.user_id.as_str()) {
            self.app
                .portal
                .record_refusal(&asker, end_user.map(str::to_string), "not_owner")
                .await;
            return ephemeral_line("Only the person who asked for this link can use its buttons.");
        }
        let Some(id) = end_user.and_then(id_of) else {
            return CreateInteractionResponse::Acknowledge;
        };
        let work = {
            let app = self.app.clone();
            let asker = asker.clone();
            Box::pin(async move { app.portal.link_for(&asker, id, action).await })
        };
        // The answer replaces this message: the link it showed no longer needs its expiry edit.
        let key = message_key(&c.message);
        self.app.state.cancel(&expiry::job_key(key)).await;
        match self
            .answer(work, asker.user_id.clone(), c.token.clone(), key, budget)
            .await
        {
            Answer::Inline(reply) => {
                self.expire_later(&reply, &asker.user_id, &c.token, key)
                    .await;
                render::update(render::message(&reply, &asker.user_id))
            }
            Answer::Deferred => CreateInteractionResponse::Acknowledge,
        }
    }

    /// Inline within the reply budget, else the answer edits `@original` when it is ready
    /// (always, without a budget).
    async fn answer<W>(
        self: &Arc<Self>,
        work: W,
        asker: String,
        token: String,
        key: u64,
        budget: Option<Duration>,
    ) -> Answer<Reply>
    where
        W: std::future::Future<Output = Reply> + Send + 'static,
    {
        let me = self.clone();
        let late = move |reply: Reply| async move {
            let edit = render::edit(render::message(&reply, &asker));
            let sent = with_retries("discord edit", || async {
                me.http
                    .edit_original_interaction_response(&token, &edit, Vec::new())
                    .await
                    .map(|_| ())
                    .map_err(|e| rest::delivery_error(&e))
            })
            .await;
            match sent {
                Ok(()) => me.expire_later(&reply, &asker, &token, key).await,
                Err(_) => me.app.metrics.delivery_failed("discord"),
            }
        };
        let work = Box::pin(reply_or_internal_error(work));
        match budget {
            Some(budget) => inline_or_later(&self.app.tasks, budget, work, late).await,
            None => later(&self.app.tasks, work, late),
        }
    }

    /// After a link expires, replace the message with "expired" + New link, so no dead (or
    /// live) URL stays in the chat. `key` names the message ([`message_key`]); a later link in
    /// the same message replaces this job. The job lives in the shared state: on Redis it
    /// survives this replica, and exactly one replica makes the edit.
    async fn expire_later(&self, reply: &Reply, asker: &str, token: &str, key: u64) {
        let Reply::Link(link) = reply else {
            return;
        };
        let job = expiry::Job {
            token: token.to_string(),
            asker: asker.to_string(),
            end_user: link.end_user.to_string(),
        };
        let job_key = expiry::job_key(key);
        let payload = job.encode(&self.app.sealer, &job_key);
        match self
            .app
            .state
            .schedule(&job_key, link.expires_at, &payload)
            .await
        {
            // The worker looks at least every `POLL` and sleeps exactly until a job due
            // sooner: only a job due within that needs waking it (not one per link).
            Ok(()) => {
                let soon = link
                    .expires_at
                    .duration_since(std::time::SystemTime::now())
                    .map_or(true, |left| left < expiry::POLL);
                if soon {
                    self.expiries.notify_one();
                }
            }
            // A full store refuses every link's job until some are due: one line per minute.
            Err(e) => {
                if let Some(times) = self.unscheduled_log.hit() {
                    tracing::warn!(error = %e, times, "links whose message will not be replaced when they expire");
                }
            }
        }
    }
}
