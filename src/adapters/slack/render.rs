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
    let mut out = String::with_capacity(text.len());
    escape_into(&mut out, text, |c| c);
    out
}

/// [`escape`] appended to `out`, each other character first passed through `map`: one pass,
/// no intermediate string (this runs for every reply).
fn escape_into(out: &mut String, text: &str, map: impl Fn(char) -> char) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(map(c)),
        }
    }
}

/// Slack's look-alikes for the characters of [`name`].
fn inert(c: char) -> char {
    match c {
        '*' => '\u{2217}',
        '_' => '\u{02cd}',
        '~' => '\u{223c}',
        '`' => '\u{02cb}',
        '.' => '\u{2024}',
        '/' => '\u{2215}',
        c => c,
    }
}

/// A name from Planhat (already one line: [`crate::core::text`]) for mrkdwn: escaped like
/// everything echoed ([`escape`]), and unable to format or link. Slack has no escape for `*`,
/// `_`, `~` and the backtick, nor a way to keep it from linking what looks like an address
/// (`evil.example`, `https://…`, `a@b.example`), so those characters become look-alikes that
/// mean nothing to it: `∗` `ˍ` `∼` `ˋ`, and a dot `․` and a slash `∕` that no address has.
pub fn name(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    escape_into(&mut out, text, inert);
    out
}

/// Inline code with the input escaped; the id grammar has no backtick, emails neither.
pub fn code(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    code_into(&mut out, text);
    out
}

fn code_into(out: &mut String, text: &str) {
    out.push('`');
    escape_into(out, text, |c| if c == '`' { '\'' } else { c });
    out.push('`');
}

fn who(who: Option<&EndUserSummary>) -> String {
    let mut out = String::new();
    who_into(&mut out, who);
    out
}

/// ` (name, company)`, ` (name)`, ` (company)` or nothing.
fn who_into(out: &mut String, who: Option<&EndUserSummary>) {
    let Some(who) = who else {
        return;
    };
    let parts = [who.name.as_deref(), who.company.as_deref()];
    let mut parts = parts.iter().flatten();
    if let Some(first) = parts.next() {
        out.push_str(" (");
        escape_into(out, first, inert);
        for more in parts {
            out.push_str(", ");
            escape_into(out, more, inert);
        }
        out.push(')');
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `HH:MM:SS UTC`, the fallback where Slack can't localise a date.
pub fn clock(t: SystemTime) -> String {
    let mut out = String::with_capacity(12);
    clock_into(&mut out, t);
    out
}

fn clock_into(out: &mut String, t: SystemTime) {
    let secs = unix(t) % 86_400;
    for (i, n) in [secs / 3600, secs / 60 % 60, secs % 60]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            out.push(':');
        }
        out.push(char::from(b'0' + (n / 10) as u8));
        out.push(char::from(b'0' + (n % 10) as u8));
    }
    out.push_str(" UTC");
}

/// A one-line message.
pub fn line(text: &str) -> SlackMessageContent {
    SlackMessageContent::new()
        .with_text(text.to_string())
        .with_blocks(vec![SlackSectionBlock::new()
            .with_text(md!(text.to_string()))
            .into()])
}

/// The six strings of a link reply that change from one command to the next; everything else
/// in it is the same every time (see [`super::template`]).
struct LinkStrings<'a> {
    fallback: String,
    heading: String,
    url: &'a str,
    open: String,
    new_link: String,
    expiry: String,
}

impl LinkStrings<'_> {
    /// In slot order (see [`link_message`]).
    fn slots(&self) -> [&str; 6] {
        [
            &self.fallback,
            &self.heading,
            self.url,
            &self.open,
            &self.new_link,
            &self.expiry,
        ]
    }
}

/// Written with `push_str` rather than `format!`: this runs for every link (issue 23).
fn link_strings<'a>(link: &'a PortalLink, asker: &str) -> LinkStrings<'a> {
    let url = link.url.expose();
    let end_user = link.end_user.as_str();
    let mut clock = String::with_capacity(12);
    clock_into(&mut clock, link.expires_at);
    let mut heading = String::with_capacity(64);
    heading.push_str("Portal login as ");
    code_into(&mut heading, end_user);
    who_into(&mut heading, link.who.as_ref());
    let expires = unix(link.expires_at).to_string();
    LinkStrings {
        fallback: [
            "Portal login as ",
            end_user,
            ": ",
            url,
            " (works until ",
            &clock,
            ", only you can see this)",
        ]
        .concat(),
        heading,
        url,
        open: open_value(asker, link),
        new_link: [asker, ":", end_user].concat(),
        expiry: if link.at_click {
            [
                "Works until <!date^",
                &expires,
                "^{time}|",
                &clock,
                ">; you are signed in when you click · single use · only you can see this",
            ]
            .concat()
        } else {
            [
                "Expires <!date^",
                &expires,
                "^{time_secs}|",
                &clock,
                "> · only you can see this",
            ]
            .concat()
        },
    }
}

/// A link reply's blocks from its six strings ([`LinkStrings::slots`] order); `url` is the
/// third, parsed. Built per message only for late answers; the inline answer is this, built
/// once with markers and filled ([`command_json`]).
fn link_message(s: [&str; 6], url: url::Url) -> SlackMessageContent {
    let [fallback, heading, _, open, new_link, expiry] = s;
    let blocks: Vec<SlackBlock> = vec![
        SlackSectionBlock::new()
            .with_text(md!(heading.to_string()))
            .into(),
        SlackActionsBlock::new(vec![
            SlackBlockButtonElement::new(pt!("Open portal"))
                .with_action_id(OPEN_PORTAL.into())
                .with_url(url)
                .with_value(open.to_string())
                .with_style(SlackBlockButtonStyle::Primary)
                .into(),
            new_link_button(new_link.to_string()).into(),
        ])
        .into(),
        SlackContextBlock::new(vec![md!(expiry.to_string())]).into(),
    ];
    SlackMessageContent::new()
        .with_text(fallback.to_string())
        .with_blocks(blocks)
}

/// The message a link reply shows (for a late answer, through `response_url`).
pub fn link(link: &PortalLink, asker: &str) -> SlackMessageContent {
    let strings = link_strings(link, asker);
    match url::Url::parse(strings.url) {
        Ok(url) => link_message(strings.slots(), url),
        Err(_) => line("Planhat answered something the bot can't use, so no link was shown."),
    }
}

/// The link reply as the inline answer to a slash command, from the template built once.
static LINK_ANSWER: std::sync::LazyLock<Option<super::template::Template>> =
    std::sync::LazyLock::new(|| {
        let marks: Vec<String> = (0..6).map(super::template::marker).collect();
        let s: [&str; 6] = std::array::from_fn(|i| marks[i].as_str());
        let url = url::Url::parse(s[2]).ok()?;
        let json = serde_json::to_string(&command_response(link_message(s, url))).ok()?;
        super::template::Template::cut(&json, 6)
    });

/// The inline answer to a slash command as the JSON body Slack reads: ephemeral, always. A
/// link is filled into [`LINK_ANSWER`]; anything else is built and serialised as it comes.
pub fn command_json(answer: &Reply, asker: &str) -> String {
    if let (Reply::Link(l), Some(template)) = (answer, LINK_ANSWER.as_ref()) {
        return template.fill(&link_strings(l, asker).slots());
    }
    content_json(reply(answer, asker))
}

/// An ephemeral command answer of any content, serialised.
pub fn content_json(content: SlackMessageContent) -> String {
    serde_json::to_string(&command_response(content)).unwrap_or_else(|e| {
        tracing::error!(error = %e, "a Slack answer could not be serialised");
        r#"{"response_type":"ephemeral","text":"Something went wrong; please try again."}"#.into()
    })
}

/// The Open portal button's value: `{asker}:{end user}`, and for a `/go/` link `|{id}` (the last
/// segment of its URL), so that the asker's click (Slack's `block_actions`) can arm exactly that
/// id. (`|` never occurs in an end-user id.)
fn open_value(asker: &str, link: &PortalLink) -> String {
    let go = link
        .at_click
        .then(|| link.url.expose().rsplit_once('/').map(|(_, id)| id))
        .flatten();
    match go {
        Some(id) => format!("{asker}:{}|{id}", link.end_user),
        None => format!("{asker}:{}", link.end_user),
    }
}

/// The New link button; its value carries `{asker}:{end user}`, so a click can be checked
/// against the asker.
fn new_link_button(value: String) -> SlackBlockButtonElement {
    SlackBlockButtonElement::new(pt!("New link"))
        .with_action_id(NEW_LINK.into())
        .with_value(value)
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
            SlackActionsBlock::new(vec![new_link_button([asker, ":", end_user].concat()).into()])
                .into(),
        ])
}

/// Any reply as a message (a link included, for late answers).
pub fn reply(reply: &Reply, asker: &str) -> SlackMessageContent {
    match reply {
        Reply::Help => line(&format!("```{}```", escape(USAGE))),
        Reply::Link(l) => link(l, asker),
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

    use crate::core::enduser::{parse_target, Target};
    use proptest::prelude::*;

    fn summary(name: Option<String>, company: Option<String>) -> EndUserSummary {
        EndUserSummary {
            id: "x".into(),
            name,
            company,
            company_id: None,
            email: None,
        }
    }

    #[test]
    fn a_link_reads_as_it_always_has() {
        let Ok(Target::EndUser(end_user)) = parse_target("5f2a") else {
            panic!("an id");
        };
        let l = PortalLink {
            url: crate::core::secret::Secret::new("https://p.example/redirect/t".to_string()),
            end_user,
            who: Some(summary(Some("Jane <Doe>".into()), Some("Acme.com".into()))),
            expires_at: UNIX_EPOCH
                + std::time::Duration::from_secs(86_400 + 3600 * 14 + 3 * 60 + 12),
            at_click: false,
            grant: None,
        };
        let s = link_strings(&l, "U1");
        assert_eq!(
            s.heading,
            "Portal login as `5f2a` (Jane &lt;Doe&gt;, Acme\u{2024}com)"
        );
        assert_eq!(
            s.fallback,
            "Portal login as 5f2a: https://p.example/redirect/t (works until 14:03:12 UTC, only you can see this)"
        );
        assert_eq!(
            s.expiry,
            "Expires <!date^136992^{time_secs}|14:03:12 UTC> · only you can see this"
        );
        assert_eq!(
            (s.open.as_str(), s.new_link.as_str()),
            ("U1:5f2a", "U1:5f2a")
        );
        assert_eq!(
            who(Some(&summary(None, Some("A_b".into())))),
            " (A\u{02cd}b)"
        );
        assert_eq!(who(Some(&summary(None, None))), "");
    }

    proptest! {
        /// The inline link answer, filled into the template, is the very JSON serde writes for
        /// the same message built with slack-morphism: for any end user, name, company, asker,
        /// signed-URL token and expiry, `/go/` link or not.
        #[test]
        fn the_link_template_is_what_serde_writes(
            id in "[A-Za-z0-9_-]{1,40}",
            name in proptest::option::of(".{0,40}"),
            company in proptest::option::of(".{0,40}"),
            asker in "[A-Z0-9\\\"<>&]{1,20}",
            token in "[A-Za-z0-9_~+=%-]{1,60}",
            secs in 0u64..4_000_000_000,
            at_click: bool,
        ) {
            let Ok(Target::EndUser(end_user)) = parse_target(&id) else {
                return Ok(());
            };
            let url = if at_click {
                format!("https://bot.example.com/go/{token}")
            } else {
                format!("https://portal.example.com/redirect/{token}")
            };
            let l = PortalLink {
                url: crate::core::secret::Secret::new(url),
                end_user,
                who: Some(summary(name, company)),
                expires_at: UNIX_EPOCH + std::time::Duration::from_secs(secs),
                at_click,
                grant: None,
            };
            let filled: serde_json::Value =
                serde_json::from_str(&command_json(&Reply::Link(l.clone()), &asker)).unwrap();
            let built = serde_json::to_value(command_response(link(&l, &asker))).unwrap();
            prop_assert_eq!(filled, built);
        }
    }
}
