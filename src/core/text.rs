//! Text from outside the bot (Planhat's end-user and company names) made fit to be shown to a
//! person, on any platform: one line, no invisible characters, a bounded length.
//!
//! Names are Planhat's data, which anyone who can edit an end user controls. Shown as they are,
//! a name with a line break forged a line of its own in the transparency channel ("… opened the
//! portal as …"), and Unicode format characters (general category Cf: the bidi controls such
//! as U+202E that reverse what follows, zero-width spaces and joiners, the tag characters)
//! made a name read as something else in Slack, Discord and `portal-bot audit`. [`one_line`]
//! is the one place that decides what of a name is shown; each platform's markup (Slack's
//! `*_~` and links, Discord's markdown, mentions) is escaped by the adapter that renders it.

use icu_properties::props::GeneralCategory;
use icu_properties::CodePointMapData;

/// Characters of a name or company shown at most.
pub const MAX_NAME: usize = 100;

/// `text` as one line: line breaks, tabs and every other control or separator character
/// become a space, runs of spaces one space, the ends trimmed; format characters (Cf) are
/// dropped; more than `max` characters are cut, the last shown as `…`.
pub fn one_line(text: &str, max: usize) -> String {
    let categories = CodePointMapData::<GeneralCategory>::new();
    let mut out = String::with_capacity(text.len().min(max.saturating_mul(4)));
    let mut shown = 0usize;
    let mut space = false;
    for c in text.chars() {
        let category = categories.get(c);
        if category == GeneralCategory::Format {
            continue;
        }
        let blank = c.is_control()
            || c.is_whitespace()
            || matches!(
                category,
                GeneralCategory::LineSeparator
                    | GeneralCategory::ParagraphSeparator
                    | GeneralCategory::SpaceSeparator
            );
        if blank {
            space = shown > 0;
            continue;
        }
        let needed = if space { 2 } else { 1 };
        if shown + needed > max {
            if max > 0 {
                // Make room for the mark (one character), then end with it.
                if shown == max {
                    out.pop();
                }
                let kept = out.trim_end().len();
                out.truncate(kept);
                out.push('…');
            }
            return out;
        }
        if space {
            out.push(' ');
            shown += 1;
            space = false;
        }
        out.push(c);
        shown += 1;
    }
    out
}

/// True for a Unicode format character (general category Cf): invisible, yet it changes how
/// the text around it reads (U+202E reverses it).
pub fn is_format(c: char) -> bool {
    CodePointMapData::<GeneralCategory>::new().get(c) == GeneralCategory::Format
}

/// A name for showing: [`one_line`] at [`MAX_NAME`].
pub fn name(text: &str) -> String {
    one_line(text, MAX_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_name_is_one_line_without_format_characters() {
        assert_eq!(
            name("Jane\n<@U1> opened the portal as\r\nCEO"),
            "Jane <@U1> opened the portal as CEO"
        );
        assert_eq!(name("  Jane\t\u{2028}Doe  "), "Jane Doe");
        assert_eq!(name("\u{202e}exe.gnp"), "exe.gnp");
        assert_eq!(
            name("Ac\u{200b}me\u{200d}\u{2066}Corp\u{2069}\u{feff}"),
            "AcmeCorp"
        );
        assert_eq!(name("tag\u{e0041}\u{e007f}s"), "tags");
        assert_eq!(name("Zoë Ñuñez 山田 🙂"), "Zoë Ñuñez 山田 🙂");
        assert_eq!(name("\u{85}\u{7}\u{1b}[2J"), "[2J");
        assert_eq!(name(""), "");
        assert_eq!(one_line("abcdef", 4), "abc…");
        assert_eq!(one_line("ab   cdef", 4), "ab…");
        assert_eq!(one_line("abcd", 4), "abcd");
        assert_eq!(one_line("ab cd", 4), "ab…");
        assert_eq!(one_line("abcd", 0), "");
        assert_eq!(name(&"x".repeat(500)).chars().count(), MAX_NAME);
    }

    proptest! {
        #[test]
        fn no_input_breaks_the_line_or_hides_a_character(
            text in "\\PC{0,200}|[\\x00-\\x20\\u{85}\\u{2028}\\u{2029}\\u{200b}-\\u{200f}\\u{202a}-\\u{202e}\\u{2066}-\\u{2069}a-z]{0,60}|\\PC{0,10}[\\u{e0000}-\\u{e007f}\\u{feff}\\u{fff9}-\\u{fffb}\\u{110bd}\\u{13430}-\\u{1343f}]{0,10}",
            max in 0usize..120,
        ) {
            let shown = one_line(&text, max);
            prop_assert!(shown.chars().count() <= max);
            prop_assert!(!shown.contains('\n') && !shown.contains('\r'));
            prop_assert!(!shown.chars().any(|c| c.is_control() || is_format(c)));
            let separator = |c: char| c == '\u{2028}' || c == '\u{2029}';
            prop_assert!(!shown.chars().any(separator));
            prop_assert_eq!(shown.trim(), shown.as_str());
            prop_assert_eq!(one_line(&shown, max), shown.clone(), "idempotent");
        }
    }
}
