//! Asking the owner in Discord: the reason form (a modal, interaction response type 9, and its
//! `MODAL_SUBMIT`), the request in the owners' direct messages (`POST /users/@me/channels`,
//! then a message with Approve and Deny) and the approvers' channel, edited in place when it is
//! decided or expires, and the asker's direct message with a button that mints only when
//! pressed. Owners are found through `access.discord_emails` (Discord gives bots no emails).
//! The decisions are the core's ([`crate::core::approvals`]).
//!
//! Clicks in direct messages carry no guild and no roles: there the clicker is known by their
//! user id alone (admins by id, owners by their email), and the granted link's button carries
//! the guild the asker asked in, whose roles are read again when it is pressed.

use std::collections::HashMap;
use std::sync::Arc;

use serenity::all::{
    ActionRowComponent, ButtonStyle, ChannelId, ComponentInteraction, CreateActionRow,
    CreateAllowedMentions, CreateButton, CreateInputText, CreateInteractionResponse,
    CreateInteractionResponseMessage, CreateMessage, CreateModal, EditMessage, InputTextStyle,
    MessageId, ModalInteraction, User, UserId,
};
use serenity::http::Http;

use super::render::{self, escape};
use super::{ephemeral_line, rest, DiscordState};
use crate::core::approvals::{
    asker_line, decided_line, ApprovalChat, Decided, Posted, Request, Shown, Verdict,
};
use crate::core::asker::{Asker, Groups, Platform};
use crate::core::portal::{id_of, Action};

/// The forms' custom ids: `{kind}|{end user or request id}`.
const ASK_FORM: &str = "ask";
const BREAK_GLASS_FORM: &str = "glass";
const DENY_FORM: &str = "deny";
/// The reason input's custom id.
const REASON: &str = "reason";

/// A person clicking where there is no guild (a direct message): their user id, no roles.
pub(super) fn dm_asker(user: &User, guild: Option<String>) -> Asker {
    Asker {
        platform: Platform::Discord,
        user_id: user.id.to_string(),
        team_id: guild,
        channel_id: None,
        groups: Groups::Unknown,
    }
}

impl DiscordState {
    /// The form for `kind` about `subject` (type 9).
    fn form(&self, kind: &str, subject: &str) -> CreateInteractionResponse {
        let min = self
            .app
            .approvals
            .as_ref()
            .map_or(10, |a| a.config().reason_min_chars) as u16;
        let (title, label, required) = match kind {
            ASK_FORM => ("Ask the owner", "Why do you need to open it?", true),
            BREAK_GLASS_FORM => (
                "Open anyway (on call)",
                "Why now? (the owner is told)",
                true,
            ),
            _ => ("Deny the request", "Reason (optional)", false),
        };
        let mut input = CreateInputText::new(InputTextStyle::Paragraph, label, REASON)
            .max_length(crate::core::approvals::MAX_REASON as u16)
            .required(required);
        if required {
            input = input.min_length(min);
        }
        CreateInteractionResponse::Modal(
            CreateModal::new(format!("{kind}|{subject}"), title)
                .components(vec![CreateActionRow::InputText(input)]),
        )
    }

    /// A button of asking the owner (`None`: not one of them).
    pub(super) async fn approval_button(
        self: &Arc<Self>,
        c: &ComponentInteraction,
    ) -> Option<CreateInteractionResponse> {
        let approvals = self.app.approvals.clone()?;
        let id = c.data.custom_id.as_str();
        let (kind, rest) = id.split_once(':')?;
        let guild = c.guild_id.map(|g| g.to_string());
        let clicker = match c.member.as_ref() {
            Some(m) => super::asker_of(c.guild_id, c.channel_id, Some(m))?,
            None => dm_asker(&c.user, guild),
        };
        match kind {
            render::ASK_OWNER | render::BREAK_GLASS => {
                let (owner, end_user) = rest.split_once(':')?;
                if owner != clicker.user_id {
                    return Some(ephemeral_line(
                        "Only the person who was refused can ask from this message.",
                    ));
                }
                let form = if kind == render::ASK_OWNER {
                    ASK_FORM
                } else {
                    BREAK_GLASS_FORM
                };
                Some(self.form(form, end_user))
            }
            render::DENY => Some(self.form(DENY_FORM, rest)),
            render::APPROVE => {
                let line = match approvals.decide(&clicker, rest, Verdict::Approved).await {
                    Ok(_) => "Approved.".to_string(),
                    Err(e) => e.to_string(),
                };
                Some(ephemeral_line(&line))
            }
            render::GRANTED_LINK => {
                let mut parts = rest.splitn(3, ':');
                let (owner, end_user, guild) = (parts.next()?, parts.next()?, parts.next()?);
                if owner != clicker.user_id {
                    return Some(ephemeral_line("This button is not yours."));
                }
                let id = id_of(end_user)?;
                // Asked in `guild`: the policy is checked there, with the roles of now.
                let mut asker = dm_asker(&c.user, Some(guild.to_string()));
                if let Some(directory) = self.app.portal.directory(Platform::Discord) {
                    asker.groups = directory.groups_now(&asker).await;
                }
                let reply = self.app.portal.link_for(&asker, id, Action::Link).await;
                Some(render::response(render::message(&reply, &asker.user_id)))
            }
            _ => None,
        }
    }

    /// A submitted form (`MODAL_SUBMIT`).
    pub(super) async fn submitted(
        self: &Arc<Self>,
        m: ModalInteraction,
    ) -> Option<CreateInteractionResponse> {
        let approvals = self.app.approvals.clone()?;
        let (kind, subject) = m.data.custom_id.split_once('|')?;
        let reason = m
            .data
            .components
            .iter()
            .flat_map(|row| row.components.iter())
            .find_map(|c| match c {
                ActionRowComponent::InputText(t) if t.custom_id == REASON => t.value.clone(),
                _ => None,
            })
            .unwrap_or_default();
        let guild = m.guild_id.map(|g| g.to_string());
        let asker = match m.member.as_ref() {
            Some(member) => super::asker_of(m.guild_id, m.channel_id, Some(member))?,
            None => dm_asker(&m.user, guild),
        };
        if kind == DENY_FORM {
            let reason = Some(reason).filter(|r| !r.trim().is_empty());
            let line = match approvals
                .decide(&asker, subject, Verdict::Denied { reason })
                .await
            {
                Ok(_) => "Denied.".to_string(),
                Err(e) => e.to_string(),
            };
            return Some(ephemeral_line(&line));
        }
        if let Err(e) = approvals.check_reason(&reason) {
            return Some(ephemeral_line(&e.to_string()));
        }
        let id = id_of(subject)?;
        // Owners are looked up and messaged, or a link is made: answered by editing.
        let me = self.clone();
        let token = m.token.clone();
        let kind = kind.to_string();
        self.app.tasks.spawn(async move {
            let message = if kind == ASK_FORM {
                let line = match approvals.request(&asker, id, &reason).await {
                    Ok(made) if made.request.posted.is_empty() => "The bot could not reach the company's owner (no Discord or Slack account with their Planhat email, and no approvers' channel). Ask an admin (on-call).".to_string(),
                    Ok(made) => format!(
                        "Your request to open {}'s portal went to the company's owner. You'll get a direct message when it is decided (it expires <t:{}:R>).",
                        escape(&made.request.whom()),
                        made.request.expires_ms / 1000
                    ),
                    Err(e) => e.to_string(),
                };
                render::Message { content: line, rows: Vec::new() }
            } else {
                match approvals.break_glass(&asker, id, &reason).await {
                    Ok(done) => render::message(&done.reply, &asker.user_id),
                    Err(e) => render::Message { content: e.to_string(), rows: Vec::new() },
                }
            };
            let edit = render::edit(message);
            if let Err(e) = me
                .http
                .edit_original_interaction_response(&token, &edit, Vec::new())
                .await
            {
                tracing::warn!(error = %rest::describe(&e), "a form's answer could not be delivered");
            }
        });
        Some(CreateInteractionResponse::Defer(
            CreateInteractionResponseMessage::new().ephemeral(true),
        ))
    }
}

/// Discord's side of asking the owner ([`ApprovalChat`]).
pub struct DiscordChat {
    http: Arc<Http>,
    /// Email (lowercased) → Discord user id, from `access.discord_emails`.
    users: HashMap<String, u64>,
    /// `approvals.discord_channel`.
    channel: Option<u64>,
}

impl DiscordChat {
    pub(super) fn new(
        http: Arc<Http>,
        emails: &HashMap<u64, String>,
        channel: Option<u64>,
    ) -> Self {
        let users = emails
            .iter()
            .map(|(id, email)| (email.trim().to_ascii_lowercase(), *id))
            .collect();
        DiscordChat {
            http,
            users,
            channel,
        }
    }

    /// Discord users with these emails, the asker left out.
    fn owners(&self, emails: &[String], asker: &Asker) -> Vec<u64> {
        emails
            .iter()
            .filter_map(|e| self.users.get(e).copied())
            .filter(|id| !(asker.platform == Platform::Discord && id.to_string() == asker.user_id))
            .collect()
    }

    async fn dm(&self, user: u64) -> Option<ChannelId> {
        match UserId::new(user).create_dm_channel(&*self.http).await {
            Ok(channel) => Some(channel.id),
            Err(e) => {
                tracing::warn!(error = %rest::describe(&e), "a direct message could not be opened");
                None
            }
        }
    }

    async fn send(
        &self,
        channel: ChannelId,
        content: String,
        rows: Vec<CreateActionRow>,
    ) -> Option<MessageId> {
        let message = CreateMessage::new()
            .content(content)
            .components(rows)
            .allowed_mentions(CreateAllowedMentions::new());
        match channel.send_message(&*self.http, message).await {
            Ok(m) => Some(m.id),
            Err(e) => {
                tracing::warn!(error = %rest::describe(&e), "a message could not be sent");
                None
            }
        }
    }
}

fn mention(asker: &Asker) -> String {
    match asker.platform {
        Platform::Discord => format!("<@{}>", asker.user_id),
        other => format!("{} user {}", other, escape(&asker.user_id)),
    }
}

fn describe(request: &Request) -> String {
    format!(
        "{} asks to open the portal as {} (`{}`) of {}.\nReason: {}",
        mention(&request.asker),
        escape(&request.whom()),
        request.end_user.replace('`', "'"),
        escape(&request.company_shown()),
        escape(&request.reason)
    )
}

#[async_trait::async_trait]
impl ApprovalChat for DiscordChat {
    async fn post_request(&self, request: &Request) -> Vec<Posted> {
        let mut channels = Vec::new();
        for user in self.owners(&request.owners, &request.asker) {
            channels.extend(self.dm(user).await);
        }
        channels.extend(self.channel.map(ChannelId::new));
        let buttons = vec![CreateActionRow::Buttons(vec![
            CreateButton::new(format!("{}:{}", render::APPROVE, request.id))
                .label("Approve")
                .style(ButtonStyle::Success),
            CreateButton::new(format!("{}:{}", render::DENY, request.id))
                .label("Deny")
                .style(ButtonStyle::Secondary),
        ])];
        let content = format!(
            "{}\nExpires <t:{}:R>.",
            describe(request),
            request.expires_ms / 1000
        );
        let mut posted = Vec::new();
        for channel in channels {
            if let Some(message) = self.send(channel, content.clone(), buttons.clone()).await {
                posted.push(Posted {
                    platform: Platform::Discord,
                    channel: channel.to_string(),
                    message: message.to_string(),
                });
            }
        }
        posted
    }

    async fn announce(&self, decided: &Decided) {
        let request = &decided.request;
        let verdict = &decided.decision.verdict;
        let by = decided
            .decision
            .by
            .as_ref()
            .map(mention)
            .unwrap_or_default();
        let until = decided
            .decision
            .until_ms
            .map(|ms| format!("<t:{}:t>", ms / 1000))
            .unwrap_or_default();
        let reason = verdict.reason().map(escape);
        let shown = Shown {
            by: &by,
            whom: &escape(&request.whom()),
            company: &escape(&request.company_shown()),
            until: &until,
            reason: reason.as_deref(),
        };
        let status = decided_line(verdict, &shown);
        for posted in request
            .posted
            .iter()
            .filter(|p| p.platform == Platform::Discord)
        {
            let (Ok(channel), Ok(message)) =
                (posted.channel.parse::<u64>(), posted.message.parse::<u64>())
            else {
                continue;
            };
            let edit = EditMessage::new()
                .content(format!("{}\n{status}", describe(request)))
                .components(Vec::new())
                .allowed_mentions(CreateAllowedMentions::new());
            if let Err(e) = ChannelId::new(channel)
                .edit_message(&*self.http, MessageId::new(message), edit)
                .await
            {
                tracing::warn!(error = %rest::describe(&e), "a request message could not be updated");
            }
        }
        if request.asker.platform != Platform::Discord {
            return;
        }
        let Ok(asker) = request.asker.user_id.parse::<u64>() else {
            return;
        };
        let guild = request.asker.team_id.clone().unwrap_or_default();
        let id = format!(
            "{}:{}:{}:{guild}",
            render::GRANTED_LINK,
            request.asker.user_id,
            request.end_user
        );
        let rows = if matches!(verdict, Verdict::Approved) && id.len() <= 100 {
            vec![CreateActionRow::Buttons(vec![CreateButton::new(id)
                .label("Open portal")
                .style(ButtonStyle::Primary)])]
        } else {
            Vec::new()
        };
        if let Some(dm) = self.dm(asker).await {
            self.send(dm, asker_line(verdict, &shown), rows).await;
        }
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
            "{} opened a portal as `{}` ({}) with on-call break-glass. Reason: {}",
            mention(asker),
            end_user.replace('`', "'"),
            escape(company),
            escape(reason)
        );
        for owner in self.owners(owners, asker) {
            if let Some(dm) = self.dm(owner).await {
                self.send(dm, line.clone(), Vec::new()).await;
            }
        }
    }
}
