//! One-time `/go/{id}` links: the button points at the bot, and the signed URL is minted only
//! when the person clicks, so all of Planhat's 30 seconds belong to the browser.
//!
//! Ids are 160 random bits from the OS's CSPRNG, hex-encoded; each is bound to its asker and
//! end user, usable once, and lives ten minutes. Where they are kept is the shared state's
//! business ([`super::state::SharedState`]): in memory for one process, on Redis for replicas.
//! They are never logged.

use std::time::Duration;

use rand::RngExt;

/// How long an id can be used.
pub const LIFETIME: Duration = Duration::from_secs(600);

/// A Slack id opens for a browser only this long after its asker clicked its button in Slack
/// (the click event "arms" it).
pub const ARM_WINDOW: Duration = Duration::from_secs(60);

/// How long a browser that arrives before Slack's click event waits for it.
pub const ARM_WAIT: Duration = Duration::from_secs(3);

/// Why an id can't be used. `Display` is what the page says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GoError {
    #[error("This link was already used. Links open the portal once; ask the bot for a new one.")]
    Used,
    #[error("This link has expired. Ask the bot for a new one.")]
    Expired,
    #[error("This link is not known here (it may be mistyped, or it is too old). Ask the bot for a new one.")]
    Unknown,
    #[error(
        "The bot can't check this link right now. Try again in a moment: the link still works."
    )]
    Unavailable,
    #[error("This link opens only from the Slack message it came in: click Open portal there. Opened anywhere else it signs no one in, and it stays usable.")]
    NotArmed,
}

impl GoError {
    /// Stable outcome name for the audit trail and metrics.
    pub fn kind(self) -> &'static str {
        match self {
            GoError::Used => "used",
            GoError::Expired => "expired",
            GoError::Unknown => "unknown",
            GoError::Unavailable => "unavailable",
            GoError::NotArmed => "not_armed",
        }
    }
}

/// A fresh id: 160 bits from the OS's CSPRNG, as 40 hex characters.
pub fn new_id() -> String {
    let mut bytes = [0u8; 20];
    rand::rng().fill(&mut bytes);
    hex::encode(bytes)
}

/// Whether `text` could be an id at all (40 lower-case hex characters): anything else is
/// answered "unknown" without asking the store.
pub fn plausible(text: &str) -> bool {
    text.len() == 40
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_are_fresh_and_plausible() {
        let (a, b) = (new_id(), new_id());
        assert_ne!(a, b);
        assert!(plausible(&a) && plausible(&b));
        assert!(!plausible("nope"));
        assert!(!plausible(&a.to_uppercase()));
    }

    proptest! {
        #[test]
        fn plausible_never_panics(s in ".{0,64}") {
            let _ = plausible(&s);
        }
    }
}
