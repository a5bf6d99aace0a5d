//! Credentials that must never reach a log line, an error message or `Debug` output.
//!
//! Every token, signing secret and signed portal URL the bot handles lives in a [`Secret`].
//! Its `Debug` and `Display` print `[redacted]`, so a stray `{:?}` on a config or an outcome
//! cannot leak anything; the only way to the value is the explicit [`Secret::expose`].

use std::fmt;

/// A credential. Read it with [`Secret::expose`] only where it is sent or shown to its owner.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The credential itself: for an `Authorization` header, a signature check or the
    /// ephemeral reply, and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when no value was configured.
    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("xoxb-very-secret");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(s.expose(), "xoxb-very-secret");
    }
}
