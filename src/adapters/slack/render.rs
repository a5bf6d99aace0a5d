//! Turning a core [`Reply`] into what the Slack user sees: Block Kit plus a plain-text fallback.
//!
//! Everything echoed from the asker's input goes through [`escape`] (`&`, `<`, `>`) and sits in
//! a code span, so `/portal <!channel>` can mention, link or format nothing.

use std::time::{SystemTime, UNIX_EPOCH};

use slack_morphism::prelude::*;

use crate::core::command::USAGE;
use crate::core::planhat::EndUserSummary;
use crate::core::portal::{access_line, choose_line, PortalLink, Reply};

/// `action_id` of the "Open portal" URL button (Slack still sends `block_actions` for it).
pub const OPEN_PORTAL: &str = "open_portal";
/// `action_id` of the "New link" button.
pub const NEW_LINK: &str = "new_link";
/// `action_id` prefix of the buttons that pick one of an email's matches.
pub const PICK: &str = "pick";
/// "Ask the owner" on a scope refusal: opens the reason form.
pub const ASK_OWNER: &str = "ask_owner";
/// "Open anyway (on call)" on a scope refusal: opens the break-glass reason form.
pub const BREAK_GLASS: &str = "break_glass";
/// Approve and Deny on a request to the owner (value: the request id).
pub const APPROVE: &str = "approve";
pub const DENY: &str = "deny";
/// The button in the asker's direct message after an approval: mints only when pressed.
pub const GRANTED_LINK: &str = "granted_link";

/// Escapes text for Slack's mrkdwn (the three characters Slack's docs require).
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A name from Planhat (already one line: [`crate::core::text`]) for mrkdwn: escaped like
/// everything echoed ([`escape`]), and unable to format or link. Slack has no escape for `*`,
/// `_`, `~` and the backtick, nor a way to keep it from linking what looks like an address
/// (`evil.example`, `https://…`, `a@b.example`), so those characters become look-alikes that
/// mean nothing to it: `∗` `ˍ` `∼` `ˋ`, and a dot `․` and a slash `∕` that no address has.
pub fn name(text: &str) -> String {
    escape(text)
        .chars()
        .map(|c| match c {
            '*' => '\u{2217}',
            '_' => '\u{02cd}',
            '~' => '\u{223c}',
            '`' => '\u{02cb}',
            '.' => '\u{2024}',
            '/' => '\u{2215}',
            c => c,
        })
        .collect()
}

/// Inline code with the input escaped; the id grammar has no backtick, emails neither.
pub fn code(text: &str) -> String {
    format!("`{}`", escape(&text.replace('`', "'")))
}

fn who(who: Option<&EndUserSummary>) -> String {
    match who {
        Some(EndUserSummary {
            name: Some(n),
            company: Some(c),
            ..
        }) => format!(" ({}, {})", name(n), name(c)),
        Some(EndUserSummary {
            name: Some(n),
            company: None,
            ..
        }) => format!(" ({})", name(n)),
        Some(EndUserSummary {
            name: None,
            company: Some(c),
            ..
        }) => format!(" ({})", name(c)),
        _ => String::new(),
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `HH:MM:SS UTC`, the fallback where Slack can't localise a date.
pub fn clock(t: SystemTime) -> String {
    let secs = unix(t) % 86_400;
    format!(
        "{:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// A one-line message.
pub fn line(text: &str) -> SlackMessageContent {
    SlackMessageContent::new()
        .with_text(text.to_string())
        .with_blocks(vec![SlackSectionBlock::new()
            .with_text(md!(text.to_string()))
            .into()])
}

/// The message a link reply shows.
pub fn link(link: &PortalLink, asker: &str, button_url: &url::Url) -> SlackMessageContent {
    let target = format!("{}{}", code(link.end_user.as_str()), who(link.who.as_ref()));
    let expires = unix(link.expires_at);
    let fallback = format!(
        "Portal login as {}: {} (works until {}, only you can see this)",
        link.end_user,
        button_url,
        clock(link.expires_at)
    );
    let blocks: Vec<SlackBlock> = vec![
        SlackSectionBlock::new().with_text(md!(format!("Portal login as {target}"))).into(),
        SlackActionsBlock::new(vec![
            SlackBlockButtonElement::new(pt!("Open portal"))
                .with_action_id(OPEN_PORTAL.into())
                .with_url(button_url.clone())
                .with_value(open_value(asker, link, button_url))
                .with_style(SlackBlockButtonStyle::Primary)
                .into(),
            new_link_button(asker, link.end_user.as_str()).into(),
        ])
        .into(),
        SlackContextBlock::new(vec![md!(if link.at_click {
            format!(
                "Works until <!date^{expires}^{{time}}|{}>; you are signed in when you click · single use · only you can see this",
                clock(link.expires_at)
            )
        } else {
            format!(
                "Expires <!date^{expires}^{{time_secs}}|{}> · only you can see this",
                clock(link.expires_at)
            )
        })])
        .into(),
    ];
    SlackMessageContent::new()
        .with_text(fallback)
        .with_blocks(blocks)
}

/// The Open portal button's value: `{asker}:{end user}`, and for a `/go/` link `|{id}`, so that
/// the asker's click (Slack's `block_actions`) can arm exactly that id. (`|` never occurs in an
/// end-user id.)
fn open_value(asker: &str, link: &PortalLink, button_url: &url::Url) -> String {
    let go = link
        .at_click
        .then(|| button_url.path_segments().and_then(|mut s| s.next_back()))
        .flatten();
    match go {
        Some(id) => format!("{asker}:{}|{id}", link.end_user),
        None => format!("{asker}:{}", link.end_user),
    }
}

/// Button values carry `{asker}:{end user}`, so a click can be checked against the asker.
fn new_link_button(asker: &str, end_user: &str) -> SlackBlockButtonElement {
    SlackBlockButtonElement::new(pt!("New link"))
        .with_action_id(NEW_LINK.into())
        .with_value(format!("{asker}:{end_user}"))
}

/// What replaces a link message once it was opened (or expired): no URL, a New link button.
pub fn used(asker: &str, end_user: &str, what: &str) -> SlackMessageContent {
    let text = format!(
        "Portal link for {} {what}. Ask for a new one when you need it.",
        code(end_user)
    );
    SlackMessageContent::new()
        .with_text(text.clone())
        .with_blocks(vec![
            SlackSectionBlock::new().with_text(md!(text)).into(),
            SlackActionsBlock::new(vec![new_link_button(asker, end_user).into()]).into(),
        ])
}

/// Everything but a link.
pub fn reply(reply: &Reply, asker: &str, button_url: Option<&url::Url>) -> SlackMessageContent {
    match reply {
        Reply::Help => line(&format!("```{}```", escape(USAGE))),
        Reply::Link(l) => match button_url {
            Some(u) => link(l, asker, u),
            None => match url::Url::parse(l.url.expose()) {
                Ok(u) => link(l, asker, &u),
                Err(_) => {
                    line("Planhat answered something the bot can't use, so no link was shown.")
                }
            },
        },
        Reply::Access {
            end_user,
            who: w,
            has_access,
            scope,
        } => line(&access_line(
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
            let text = choose_line(&code(query), matches.len(), *more);
            let labels = EndUserSummary::labels(matches);
            let buttons: Vec<SlackActionBlockElement> = matches
                .iter()
                .zip(labels)
                .enumerate()
                .map(|(i, (m, label))| {
                    SlackBlockButtonElement::new(pt!(label.chars().take(70).collect::<String>()))
                        .with_action_id(format!("{PICK}_{i}").into())
                        .with_value(format!("{asker}:{}", m.id))
                        .into()
                })
                .collect();
            SlackMessageContent::new()
                .with_text(text.clone())
                .with_blocks(vec![
                    SlackSectionBlock::new().with_text(md!(text)).into(),
                    SlackActionsBlock::new(buttons).into(),
                ])
        }
        Reply::Refused(r) => line(&r.to_string()),
        Reply::AskOwner {
            end_user,
            break_glass,
        } => {
            let text = crate::core::ownership::ScopeDenied::NotYours.to_string();
            let value = format!("{asker}:{end_user}");
            let mut buttons: Vec<SlackActionBlockElement> =
                vec![SlackBlockButtonElement::new(pt!("Ask the owner"))
                    .with_action_id(ASK_OWNER.into())
                    .with_value(value.clone())
                    .into()];
            if *break_glass {
                buttons.push(
                    SlackBlockButtonElement::new(pt!("Open anyway (on call)"))
                        .with_action_id(BREAK_GLASS.into())
                        .with_value(value)
                        .with_style(SlackBlockButtonStyle::Danger)
                        .into(),
                );
            }
            SlackMessageContent::new()
                .with_text(text.clone())
                .with_blocks(vec![
                    SlackSectionBlock::new().with_text(md!(text)).into(),
                    SlackActionsBlock::new(buttons).into(),
                ])
        }
    }
}

/// The inline answer to a slash command: ephemeral, always.
pub fn command_response(content: SlackMessageContent) -> SlackCommandEventResponse {
    SlackCommandEventResponse::new(content).with_response_type(SlackMessageResponseType::Ephemeral)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(
            escape("<!channel> & <@U1>"),
            "&lt;!channel&gt; &amp; &lt;@U1&gt;"
        );
        assert_eq!(code("a`b<c"), "`a'b&lt;c`");
    }

    #[test]
    fn names_can_neither_format_nor_link() {
        let shown = name("*CEO* _x_ ~y~ `z` https://evil.example/login a@b.example <!here>");
        for markup in ['*', '_', '~', '`', '.', '/', '<', '>'] {
            assert!(!shown.contains(markup), "{markup} in {shown}");
        }
        assert!(shown.contains("&lt;!here&gt;"), "{shown}");
        assert_eq!(name("Acme A/S, Inc."), "Acme A\u{2215}S, Inc\u{2024}");
    }

    #[test]
    fn clock_format() {
        let t = UNIX_EPOCH + std::time::Duration::from_secs(86_400 * 3 + 3600 * 13 + 62);
        assert_eq!(clock(t), "13:01:02 UTC");
    }
}
