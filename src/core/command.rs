//! The text after `/portal`, as both chat platforms deliver it, turned into a command.
//!
//! Slack sends the whole text; Discord sends the `enduser` option. Both may carry a leading
//! `check`, so the grammar lives here once: `help`, `check <enduser>`, `<enduser>`.

use super::enduser::{parse_target, BadEndUser, Target};

/// What the asker wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Usage, for empty text or `help`.
    Help,
    /// A login link for the end user.
    Link(Target),
    /// Only whether the end user has portal access; nothing is minted.
    Check(Target),
    /// Find end users by name, email or company (`find <words>`).
    Find(String),
}

/// How to use the bot, for every platform (no markup: adapters add their own).
pub const USAGE: &str = "/portal <end-user id or email>: a login link to the customer's portal as that end user, visible only to you; it works for 30 seconds.\n/portal check <end-user id or email>: whether that end user has portal access (nothing is minted).\n/portal find <name, email or company>: find the end user by name (where search is set up), then pick.";

/// Parses the command text.
pub fn parse_command(text: &str) -> Result<Command, BadEndUser> {
    let t = text.trim();
    if let Some((first, rest)) = t.split_once(char::is_whitespace) {
        if first.eq_ignore_ascii_case("find") && !rest.trim().is_empty() {
            return Ok(Command::Find(rest.trim().chars().take(200).collect()));
        }
    }
    let (is_check, rest) = match t.split_once(char::is_whitespace) {
        Some((first, rest)) if first.eq_ignore_ascii_case("check") => (true, rest),
        None if t.eq_ignore_ascii_case("check") => (true, ""),
        _ => (false, t),
    };
    match (is_check, parse_target(rest)?) {
        (_, Target::Help) => Ok(Command::Help),
        (true, target) => Ok(Command::Check(target)),
        (false, target) => Ok(Command::Link(target)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn grammar() {
        assert_eq!(parse_command("  "), Ok(Command::Help));
        assert_eq!(parse_command("check"), Ok(Command::Help));
        assert!(matches!(
            parse_command("abc"),
            Ok(Command::Link(Target::EndUser(_)))
        ));
        assert!(matches!(
            parse_command("CHECK  abc "),
            Ok(Command::Check(Target::EndUser(_)))
        ));
        assert!(matches!(
            parse_command("check a@b.co"),
            Ok(Command::Check(Target::Email(_)))
        ));
        assert!(parse_command("check a b").is_err());
        assert_eq!(
            parse_command("find  Jane Doe "),
            Ok(Command::Find("Jane Doe".into()))
        );
        assert!(matches!(
            parse_command("find"),
            Ok(Command::Link(Target::EndUser(_)))
        ));
    }

    proptest! {
        #[test]
        fn never_panics(text in "\\PC{0,300}") {
            let _ = parse_command(&text);
        }
    }
}
