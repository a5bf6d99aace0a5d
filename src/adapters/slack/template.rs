//! A message whose shape never changes, built once with slack-morphism and filled per request.
//!
//! Why: the link reply is the answer to almost every command, and building it with
//! slack-morphism's builders and serialising it through serde cost about 35k instructions a
//! command, a fifth of everything the bot adds to the bare HTTP exchanges (issue 23). Its
//! blocks, buttons and keys are the same every time; only six strings change. So the message
//! is built once with the same builders, with a marker string in each of those six places,
//! serialised once, and cut at the markers. A command then writes the pieces with its own
//! strings between them, each quoted and escaped by serde_json exactly as serialising the
//! struct would have. No crate does this splice; it is the only JSON written by hand here,
//! and a property test holds it equal to serde's output for any input.

/// A JSON document cut at its slots: `pieces[0] slot pieces[1] slot … pieces[n]`.
pub struct Template {
    pieces: Vec<String>,
    /// For each gap between pieces, which value goes there (a marker may occur twice).
    slots: Vec<usize>,
}

/// The marker for slot `i`: a string no value of the message could hold by chance, that
/// serde_json writes unescaped and that parses as a URL (one slot is a button's `url`).
pub fn marker(i: usize) -> String {
    format!("https://slot-{i}.portal-bot.invalid/")
}

impl Template {
    /// Cuts `json` (serialised with [`marker`]`(i)` as every value of slot `i`) at each quoted
    /// marker. `None` when a marker is missing: the caller's shape has no such slot.
    pub fn cut(json: &str, slots: usize) -> Option<Template> {
        let quoted: Vec<String> = (0..slots).map(|i| format!("\"{}\"", marker(i))).collect();
        let mut found: Vec<(usize, usize)> = Vec::new(); // (offset, slot)
        for (slot, q) in quoted.iter().enumerate() {
            let before = found.len();
            found.extend(json.match_indices(q.as_str()).map(|(at, _)| (at, slot)));
            if found.len() == before {
                return None;
            }
        }
        found.sort_unstable();
        let (mut pieces, mut order, mut from) = (Vec::new(), Vec::new(), 0);
        for (at, slot) in found {
            pieces.push(json[from..at].to_string());
            order.push(slot);
            from = at + quoted[slot].len();
        }
        pieces.push(json[from..].to_string());
        Some(Template {
            pieces,
            slots: order,
        })
    }

    /// The document with `values[i]` in slot `i`, each as a JSON string.
    pub fn fill(&self, values: &[&str]) -> String {
        let room: usize = self.pieces.iter().map(String::len).sum::<usize>()
            + self
                .slots
                .iter()
                .map(|&s| values.get(s).map_or(2, |v| v.len() + 8))
                .sum::<usize>();
        let mut out = Vec::with_capacity(room);
        for (piece, slot) in self.pieces.iter().zip(&self.slots) {
            out.extend_from_slice(piece.as_bytes());
            // Writing a `&str` into a `Vec` cannot fail.
            let _ = serde_json::to_writer(&mut out, values.get(*slot).copied().unwrap_or(""));
        }
        if let Some(last) = self.pieces.last() {
            out.extend_from_slice(last.as_bytes());
        }
        // Pieces of a `str` cut at ASCII quotes, and serde_json's strings: UTF-8 throughout.
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_at_every_marker_and_fills_in_order() {
        let json = format!(
            r#"{{"a":"{}","b":["{}","x","{}"]}}"#,
            marker(1),
            marker(0),
            marker(1)
        );
        let t = Template::cut(&json, 2).expect("both markers present");
        assert_eq!(
            t.fill(&["zero \"q\"", "one\n"]),
            r#"{"a":"one\n","b":["zero \"q\"","x","one\n"]}"#
        );
        assert!(Template::cut(&json, 3).is_none(), "slot 2 has no marker");
    }
}
