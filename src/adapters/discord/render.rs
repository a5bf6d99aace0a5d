//! Turning a core [`Reply`] into a Discord message: ephemeral (flag 64), no mentions allowed,
//! a link button (style 5) "Open portal" and a "New link" button, the expiry as a Discord
//! timestamp. Echoed input sits in a code span, so it can't mention, link or format.

use std::time::UNIX_EPOCH;

use serenity::all::{
    ButtonStyle, CreateActionRow, CreateAllowedMentions, CreateButton, CreateInteractionResponse,
    CreateInteractionResponseMessage, EditInteractionResponse,
};

use crate::core::command::USAGE;
use crate::core::ownership::ScopeDenied;
use crate::core::planhat::EndUserSummary;
use crate::core::portal::{access_line, choose_line, Reply};

/// `custom_id` prefix of the New link button: `new:{asker}:{end user}`.
pub const NEW_LINK: &str = "new";
/// `custom_id` prefix of an email match's button: `pick:{asker}:{end user}`.
pub const PICK: &str = "pick";
/// "Ask the owner" on a scope refusal: `ask:{asker}:{end user}`.
pub const ASK_OWNER: &str = "ask";
/// "Open anyway (on call)": `glass:{asker}:{end user}`.
pub const BREAK_GLASS: &str = "glass";
/// Approve / Deny on a request to the owner: `approve:{request id}`, `deny:{request id}`.
pub const APPROVE: &str = "approve";
pub const DENY: &str = "deny";
/// The button in an approved asker's direct message: `granted:{asker}:{end user}:{guild}`.
pub const GRANTED_LINK: &str = "granted";

/// A code span: ids and emails have no backtick; anything else is replaced.
fn code(text: &str) -> String {
    format!("`{}`", text.replace('`', "'"))
}

/// Backslash-escapes Discord markdown, links (`https\://…` is not linked) and mentions
/// (`\@everyone` is plain text) in text from Planhat (names, already one line: see
/// [`crate::core::text`]). No invisible character is added: what is shown is what is there.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\*_~`|>#[]()<:-@".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn who(who: Option<&EndUserSummary>) -> String {
    let parts: Vec<String> = who
        .map(|w| {
            [w.name.as_deref(), w.company.as_deref()]
                .into_iter()
                .flatten()
                .map(escape)
                .collect()
        })
        .unwrap_or_default();
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

/// A button id, or `None` when it would be longer than Discord's 100 characters.
fn button_id(kind: &str, asker: &str, end_user: &str) -> Option<String> {
    let id = format!("{kind}:{asker}:{end_user}");
    (id.len() <= 100).then_some(id)
}

fn new_link_button(asker: &str, end_user: &str) -> Option<CreateButton> {
    button_id(NEW_LINK, asker, end_user).map(|id| {
        CreateButton::new(id)
            .label("New link")
            .style(ButtonStyle::Secondary)
    })
}

/// A message's parts, independent of whether it is a response or an edit.
pub struct Message {
    pub content: String,
    pub rows: Vec<CreateActionRow>,
}

/// What a reply looks like.
/// An autocomplete choice's name: "Jane Doe · jane@acme.com · Acme", one line of plain text
/// (Discord shows it as it is, up to 100 characters).
pub fn choice(found: &crate::core::search::Found) -> String {
    let parts: Vec<&str> = [
        found.name.as_deref(),
        found.email.as_deref(),
        found.company.as_deref(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let text = if parts.is_empty() {
        found.id.clone()
    } else {
        parts.join(" · ")
    };
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut out: String = one_line.chars().take(100).collect();
    if out.trim().is_empty() {
        out = found.id.chars().take(100).collect();
    }
    out
}

pub fn message(reply: &Reply, asker: &str) -> Message {
    let text = |content: String| Message {
        content,
        rows: Vec::new(),
    };
    match reply {
        Reply::Help => text(format!("```\n{USAGE}\n```")),
        Reply::Link(link) => {
            let expires = link
                .expires_at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let mut buttons = vec![CreateButton::new_link(link.url.expose()).label("Open portal")];
            buttons.extend(new_link_button(asker, link.end_user.as_str()));
            Message {
                content: format!(
                    "Portal login as {}{}. {} <t:{expires}:R>; only you can see this.",
                    code(link.end_user.as_str()),
                    who(link.who.as_ref()),
                    if link.at_click {
                        "Signs you in when you click; works until"
                    } else {
                        "Expires"
                    }
                ),
                rows: vec![CreateActionRow::Buttons(buttons)],
            }
        }
        Reply::Access {
            end_user,
            who: w,
            has_access,
            scope,
        } => text(access_line(
            &code(end_user.as_str()),
            &who(w.as_ref()),
            *has_access,
            scope.as_ref(),
        )),
        Reply::Choose {
            query,
            matches,
            more,
        } => {
            let labels = EndUserSummary::labels(matches);
            let buttons: Vec<CreateButton> = matches
                .iter()
                .zip(labels)
                .filter_map(|(m, label)| {
                    button_id(PICK, asker, &m.id).map(|id| {
                        CreateButton::new(id).label(label.chars().take(80).collect::<String>())
                    })
                })
                .collect();
            Message {
                content: choose_line(&code(query), matches.len(), *more),
                // Discord refuses an empty row (every match's id too long for a button).
                rows: if buttons.is_empty() {
                    Vec::new()
                } else {
                    vec![CreateActionRow::Buttons(buttons)]
                },
            }
        }
        Reply::Refused(r) => text(r.to_string()),
        Reply::AskOwner {
            end_user,
            break_glass,
        } => {
            let mut buttons: Vec<CreateButton> = button_id(ASK_OWNER, asker, end_user.as_str())
                .map(|id| {
                    CreateButton::new(id)
                        .label("Ask the owner")
                        .style(ButtonStyle::Primary)
                })
                .into_iter()
                .collect();
            if *break_glass {
                buttons.extend(button_id(BREAK_GLASS, asker, end_user.as_str()).map(|id| {
                    CreateButton::new(id)
                        .label("Open anyway (on call)")
                        .style(ButtonStyle::Danger)
                }));
            }
            Message {
                content: ScopeDenied::NotYours.to_string(),
                rows: vec![CreateActionRow::Buttons(buttons)],
            }
        }
    }
}

/// What replaces a link once it has expired: no URL, a New link button.
pub fn expired(asker: &str, end_user: &str) -> Message {
    Message {
        content: format!("The portal link for {} has expired.", code(end_user)),
        rows: new_link_button(asker, end_user)
            .map(|b| vec![CreateActionRow::Buttons(vec![b])])
            .unwrap_or_default(),
    }
}

/// The inline response (type 4, ephemeral).
pub fn response(m: Message) -> CreateInteractionResponse {
    CreateInteractionResponse::Message(
        CreateInteractionResponseMessage::new()
            .content(m.content)
            .components(m.rows)
            .ephemeral(true)
            .allowed_mentions(CreateAllowedMentions::new()),
    )
}

/// The in-place update of the message a button is on (type 7).
pub fn update(m: Message) -> CreateInteractionResponse {
    CreateInteractionResponse::UpdateMessage(
        CreateInteractionResponseMessage::new()
            .content(m.content)
            .components(m.rows)
            .allowed_mentions(CreateAllowedMentions::new()),
    )
}

/// The edit of `@original` that delivers a late answer.
pub fn edit(m: Message) -> EditInteractionResponse {
    EditInteractionResponse::new()
        .content(m.content)
        .components(m.rows)
        .allowed_mentions(CreateAllowedMentions::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_breaks_mentions_and_markdown() {
        assert_eq!(escape("@everyone"), "\\@everyone");
        assert_eq!(escape("<@123>"), "\\<\\@123\\>");
        assert_eq!(escape("*x*"), "\\*x\\*");
        assert_eq!(code("a`b"), "`a'b`");
    }
}
