//! What the asker typed after `/portal`, turned into something safe to send to Planhat.
//!
//! The text comes straight from a chat message, so it is hostile until proven otherwise. It is
//! parsed once here into a [`Target`]: an [`EndUserId`] that is plausible (short, printable
//! ASCII, nothing that could change the meaning of a URL path), an email address for a lookup,
//! or a request for help. Anything else is refused with [`BadEndUser`] before any Planhat call.

use std::fmt;

/// Longest id accepted; Planhat ids are 24 hex characters, external ids a little longer.
pub const MAX_ID_LEN: usize = 128;

/// A plausible Planhat end-user id. Only [`parse_target`] makes one.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EndUserId(String);

impl EndUserId {
    /// The id as typed (validated; still escape it before echoing it into chat markup).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as one escaped URL path segment.
    pub fn path_segment(&self) -> String {
        percent_encoding::utf8_percent_encode(&self.0, SEGMENT).to_string()
    }
}

impl fmt::Debug for EndUserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EndUserId({:?})", self.0)
    }
}

impl fmt::Display for EndUserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Everything but unreserved characters is escaped, so an id is always exactly one segment.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// What the text after `/portal` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Empty text or `help`: show usage.
    Help,
    /// A link (or, with `check`, an access answer) for this end user.
    EndUser(EndUserId),
    /// Find the end user by this email address first.
    Email(String),
}

/// Why the text is not something the bot will send to Planhat.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadEndUser {
    #[error("an end-user id is at most {MAX_ID_LEN} characters")]
    TooLong,
    #[error("an end-user id has no spaces")]
    Whitespace,
    #[error(
        "an end-user id is plain letters, digits and punctuation, without / ? # % \\ or quotes"
    )]
    BadCharacter,
    #[error("that is not an end-user id")]
    DotsOnly,
}

/// Parses the argument of `/portal` (already without a leading `check`).
pub fn parse_target(text: &str) -> Result<Target, BadEndUser> {
    let t = text.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("help") {
        return Ok(Target::Help);
    }
    if t.chars().count() > MAX_ID_LEN {
        return Err(BadEndUser::TooLong);
    }
    if t.chars().any(char::is_whitespace) {
        return Err(BadEndUser::Whitespace);
    }
    if let Some(email) = as_email(t) {
        return Ok(Target::Email(email));
    }
    if !t.chars().all(id_char) {
        return Err(BadEndUser::BadCharacter);
    }
    if t.chars().all(|c| c == '.') {
        return Err(BadEndUser::DotsOnly);
    }
    Ok(Target::EndUser(EndUserId(t.to_string())))
}

/// Printable ASCII, minus what could re-shape a URL or a chat message.
fn id_char(c: char) -> bool {
    c.is_ascii_graphic()
        && !matches!(
            c,
            '/' | '?' | '#' | '%' | '\\' | '"' | '\'' | '<' | '>' | '`' | '@' | '&' | '|' | '*'
        )
}

/// `local@domain.tld` with conservative characters; Slack sends `<mailto:a@b.c|a@b.c>` for a
/// typed address, which is unwrapped here.
fn as_email(t: &str) -> Option<String> {
    let t = t
        .strip_prefix("<mailto:")
        .and_then(|rest| rest.strip_suffix('>'))
        .map(|inner| inner.split('|').next().unwrap_or(inner))
        .unwrap_or(t);
    let (local, domain) = t.split_once('@')?;
    let ok_local = !local.is_empty()
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c));
    let ok_domain = domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-".contains(c));
    (ok_local && ok_domain && t.len() <= 254).then(|| t.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(t: &str) -> EndUserId {
        match parse_target(t) {
            Ok(Target::EndUser(id)) => id,
            other => panic!("{t:?} gave {other:?}"),
        }
    }

    #[test]
    fn help_and_empty() {
        assert_eq!(parse_target(""), Ok(Target::Help));
        assert_eq!(parse_target("   "), Ok(Target::Help));
        assert_eq!(parse_target(" HELP "), Ok(Target::Help));
    }

    #[test]
    fn plausible_ids_pass_trimmed() {
        assert_eq!(
            id("  5f2a9c0e1b2c3d4e5f6a7b8c ").as_str(),
            "5f2a9c0e1b2c3d4e5f6a7b8c"
        );
        assert_eq!(id("ext:id_1-2.3").as_str(), "ext:id_1-2.3");
    }

    #[test]
    fn escaped_as_one_segment() {
        assert_eq!(id("a+b=c:d").path_segment(), "a%2Bb%3Dc%3Ad");
        assert_eq!(id("..a").path_segment(), "..a");
    }

    #[test]
    fn hostile_ids_are_refused() {
        for bad in [
            "a/b",
            "..",
            ".",
            "a?b",
            "a#b",
            "%2e%2e",
            "a\0b",
            "a\u{202e}b",
            "😀",
            "a b",
            "a\\b",
            "<!channel>",
            "a&b",
        ] {
            assert!(parse_target(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(parse_target(&"x".repeat(129)), Err(BadEndUser::TooLong));
        assert!(parse_target(&"x".repeat(10_000)).is_err());
        assert!(parse_target(&"x".repeat(128)).is_ok());
    }

    #[test]
    fn emails_are_recognised() {
        assert_eq!(
            parse_target("Jane@Acme.com"),
            Ok(Target::Email("jane@acme.com".into()))
        );
        assert_eq!(
            parse_target("<mailto:jane@acme.com|jane@acme.com>"),
            Ok(Target::Email("jane@acme.com".into()))
        );
        assert!(parse_target("jane@").is_err());
    }

    proptest! {
        #[test]
        fn never_panics_and_ids_are_safe(text in "\\PC{0,200}") {
            if let Ok(Target::EndUser(id)) = parse_target(&text) {
                let seg = id.path_segment();
                prop_assert!(!seg.contains('/') && !seg.contains('?') && !seg.contains('#'));
                prop_assert!(seg != "." && seg != "..");
                prop_assert!(id.as_str().len() <= MAX_ID_LEN);
                // Idempotent: parsing the parsed id gives it back.
                prop_assert_eq!(parse_target(id.as_str()), Ok(Target::EndUser(id.clone())));
            }
        }

        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_target(&String::from_utf8_lossy(&bytes));
        }
    }
}
