//! Reading the audit trail back (`portal-bot audit`): every file of the trail in the order it
//! was written, each line parsed on its own, filtered, and summed up.
//!
//! The trail is outside input by the time it is read: files get copied, edited, truncated, and
//! older versions of the bot wrote fewer fields. So a line that can't be read is counted and
//! skipped (never a panic, never the end of the read), a line longer than any event could be is
//! skipped without being held in memory, and fields the reader doesn't know are ignored.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use super::files::{self, Day};

/// Lines longer than this are not events (ours are a few hundred bytes): skipped unread.
pub const MAX_LINE: usize = 64 * 1024;

/// One event as read back. Owned and tolerant: fields added by a later version are ignored,
/// fields an older version didn't write are `None`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Recorded {
    /// The event's id (since the audit database): what makes its write idempotent.
    #[serde(default)]
    pub id: Option<String>,
    pub time: String,
    pub platform: String,
    #[serde(default)]
    pub team: Option<String>,
    #[serde(default)]
    pub channel: Option<String>,
    pub asker: String,
    pub action: String,
    #[serde(default)]
    pub end_user: Option<String>,
    /// The email typed for a lookup by email, where the writer records it apart from the id.
    #[serde(default)]
    pub email: Option<String>,
    pub outcome: String,
    #[serde(default)]
    pub latency_ms: Option<u64>,
    #[serde(default)]
    pub company: Option<String>,
    /// The reason given (requests to the owner, decisions, break-glass).
    #[serde(default)]
    pub reason: Option<String>,
    /// Who approved.
    #[serde(default)]
    pub approver: Option<String>,
}

/// A line of the trail that could be read: the event, its time, and the line as stored.
#[derive(Debug, Clone)]
pub struct Entry {
    pub event: Recorded,
    pub at: SystemTime,
    /// The line exactly as stored, without its newline.
    pub line: String,
}

/// Parses one line (without its newline). `None` for anything that is not an event with an
/// RFC 3339 time.
pub fn parse_line(line: &[u8]) -> Option<Entry> {
    let text = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let event: Recorded = serde_json::from_str(text).ok()?;
    let at = humantime::parse_rfc3339(event.time.trim()).ok()?;
    Some(Entry {
        event,
        at,
        line: text.to_string(),
    })
}

/// Which events to keep. Every filter that is set must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// At or after this time.
    pub since: Option<SystemTime>,
    /// The asker's id, exactly.
    pub asker: Option<String>,
    /// The end user: the id exactly, or an email (any case), in `end_user` or `email`.
    pub end_user: Option<String>,
    /// Part of the company name, any case.
    pub company: Option<String>,
    /// The outcome, exactly (`ok`, `denied`, `no_access`, …).
    pub outcome: Option<String>,
    /// The action, exactly (`link`, `go`, `request`, `approve`, `deny`, `expire`,
    /// `break_glass`, …).
    pub action: Option<String>,
}

impl Filter {
    /// True when `entry` passes every filter that is set.
    pub fn matches(&self, entry: &Entry) -> bool {
        let e = &entry.event;
        if self.since.is_some_and(|since| entry.at < since) {
            return false;
        }
        if self.asker.as_ref().is_some_and(|a| *a != e.asker) {
            return false;
        }
        if let Some(wanted) = &self.end_user {
            let same = |have: &Option<String>| {
                have.as_deref().is_some_and(|have| {
                    if have.contains('@') {
                        have.eq_ignore_ascii_case(wanted)
                    } else {
                        have == wanted
                    }
                })
            };
            if !same(&e.end_user) && !same(&e.email) {
                return false;
            }
        }
        if let Some(part) = &self.company {
            let part = part.to_lowercase();
            let has = e
                .company
                .as_deref()
                .is_some_and(|c| c.to_lowercase().contains(&part));
            if !has {
                return false;
            }
        }
        if self.outcome.as_ref().is_some_and(|o| *o != e.outcome) {
            return false;
        }
        if self.action.as_ref().is_some_and(|a| *a != e.action) {
            return false;
        }
        true
    }
}

/// `--since`: a span back from now, or a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// `"7d"`, `"12h"`, `"30m"`, `"1week"`.
    Ago(Duration),
    /// `"2026-11-25"` (midnight UTC) or `"2026-11-25T09:00:00Z"`.
    At(SystemTime),
}

impl Since {
    /// Parses what the user typed; the error says what is accepted.
    pub fn parse(text: &str) -> Result<Since, String> {
        let t = text.trim();
        if let Ok(d) = humantime::parse_duration(t) {
            return Ok(Since::Ago(d));
        }
        if let Some(day) = Day::parse(t) {
            return Ok(Since::At(day.start()));
        }
        if let Ok(at) = humantime::parse_rfc3339_weak(t) {
            return Ok(Since::At(at));
        }
        Err(format!(
            "{text:?} is neither a duration like \"7d\" or \"12h\" nor a UTC time like \"2026-11-25\" or \"2026-11-25T09:00:00Z\""
        ))
    }

    /// The earliest time it lets through, counted back from `now`.
    pub fn cutoff(self, now: SystemTime) -> SystemTime {
        match self {
            Since::Ago(d) => now.checked_sub(d).map_or(UNIX_EPOCH, |t| t.max(UNIX_EPOCH)),
            Since::At(t) => t,
        }
    }
}

/// What a read went through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Files of the trail read (files older than `since` are passed over unread).
    pub files: usize,
    /// Lines that could be read as events.
    pub events: u64,
    /// Lines that could not: not JSON, not an event, no valid time, too long, not UTF-8.
    pub unreadable: u64,
    /// Events that passed the filter.
    pub matched: u64,
}

/// The trail could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum TrailError {
    #[error("{}: no audit trail there (neither the file nor rotated files beside it)", path.display())]
    Missing { path: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// Reads the trail whose current file is `current` (rotated files oldest first, then the
/// current one) and hands every event that passes `filter` to `each`, in the order written,
/// until `each` says stop.
pub fn read(
    current: &Path,
    filter: &Filter,
    mut each: impl FnMut(&Entry) -> ControlFlow<()>,
) -> Result<Stats, TrailError> {
    let io_at = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TrailError::Io { path, source }
    };
    let paths = files::trail(current).map_err(io_at(current))?;
    if paths.is_empty() {
        return Err(TrailError::Missing {
            path: current.to_path_buf(),
        });
    }
    // Open every file before reading any: a running server that rotates meanwhile renames a
    // file that is already open here, and nothing moves out from under the read.
    let mut opened = Vec::with_capacity(paths.len());
    for path in paths {
        match File::open(&path) {
            Ok(file) => opened.push((path, file)),
            // Deleted since it was listed (the writer keeps only `keep` files): its lines are gone.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_at(&path)(e)),
        }
    }
    let mut stats = Stats::default();
    let mut line = Vec::new();
    for (path, file) in opened {
        if let Some(since) = filter.since {
            // Nothing in a file was written after its last change.
            let changed = file.metadata().and_then(|m| m.modified());
            if changed.is_ok_and(|t| t < since) {
                continue;
            }
        }
        stats.files += 1;
        let mut reader = BufReader::new(file);
        while let Some(too_long) =
            next_line(&mut reader, &mut line, MAX_LINE).map_err(io_at(&path))?
        {
            if line.iter().all(u8::is_ascii_whitespace) && !too_long {
                continue;
            }
            let entry = if too_long { None } else { parse_line(&line) };
            let Some(entry) = entry else {
                stats.unreadable += 1;
                continue;
            };
            stats.events += 1;
            if filter.matches(&entry) {
                stats.matched += 1;
                if each(&entry).is_break() {
                    return Ok(stats);
                }
            }
        }
    }
    Ok(stats)
}

/// Reads the next line into `buf` (without its `\n`), keeping at most `cap` bytes of it.
/// `None` at the end of the input; otherwise whether the line was longer than `cap`.
fn next_line(r: &mut impl BufRead, buf: &mut Vec<u8>, cap: usize) -> io::Result<Option<bool>> {
    buf.clear();
    let mut too_long = false;
    let mut any = false;
    loop {
        let chunk = match r.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(any.then_some(too_long));
        }
        any = true;
        let end = chunk.iter().position(|&b| b == b'\n');
        let take = end.unwrap_or(chunk.len());
        let room = cap.saturating_sub(buf.len());
        if take > room {
            too_long = true;
        }
        buf.extend_from_slice(&chunk[..take.min(room)]);
        r.consume(end.map_or(take, |e| e + 1));
        if end.is_some() {
            return Ok(Some(too_long));
        }
    }
}

/// Counts of the matching events, for `--summary`.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub events: u64,
    pub first: Option<SystemTime>,
    pub last: Option<SystemTime>,
    /// By (platform, asker id): the same id could mean two people on two platforms.
    pub by_asker: HashMap<(String, String), u64>,
    /// By company as recorded; `None` for events without one.
    pub by_company: HashMap<Option<String>, u64>,
    pub by_outcome: HashMap<String, u64>,
}

impl Summary {
    /// Counts one event.
    pub fn add(&mut self, entry: &Entry) {
        let e = &entry.event;
        self.events += 1;
        self.first = Some(self.first.map_or(entry.at, |t| t.min(entry.at)));
        self.last = Some(self.last.map_or(entry.at, |t| t.max(entry.at)));
        *self
            .by_asker
            .entry((e.platform.clone(), e.asker.clone()))
            .or_default() += 1;
        *self.by_company.entry(e.company.clone()).or_default() += 1;
        *self.by_outcome.entry(e.outcome.clone()).or_default() += 1;
    }

    /// A count map as rows, most events first (ties by name, so the order is stable).
    pub fn ranked<K: Ord + Clone>(counts: &HashMap<K, u64>) -> Vec<(K, u64)> {
        let mut rows: Vec<(K, u64)> = counts.iter().map(|(k, n)| (k.clone(), *n)).collect();
        rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn line(
        time: &str,
        asker: &str,
        end_user: &str,
        company: Option<&str>,
        outcome: &str,
    ) -> String {
        serde_json::json!({
            "time": time, "platform": "slack", "team": "T1", "channel": "C1", "asker": asker,
            "action": "link", "end_user": end_user, "outcome": outcome, "latency_ms": 12,
            "company": company,
        })
        .to_string()
    }

    fn entry(text: &str) -> Entry {
        parse_line(text.as_bytes()).unwrap()
    }

    #[test]
    fn lines_parse_old_and_new() {
        let e = entry(&line(
            "2026-11-25T14:03:12.345Z",
            "U1",
            "e1",
            Some("Acme"),
            "ok",
        ));
        assert_eq!(e.event.company.as_deref(), Some("Acme"));
        assert_eq!(
            e.at,
            humantime::parse_rfc3339("2026-11-25T14:03:12.345Z").unwrap()
        );
        // Written before the company field existed, and with a field from the future.
        let old = r#"{"time":"2026-01-01T00:00:00.000Z","platform":"cli","team":null,"channel":null,"asker":"ann","action":"check","end_user":"e2","outcome":"no_access","latency_ms":3,"shiny":[1]}"#;
        let e = entry(old);
        assert_eq!((e.event.company, e.line.as_str()), (None, old));
        for bad in [
            "",
            "not json",
            "{}",
            "[1,2]",
            r#"{"time":"yesterday","platform":"slack","asker":"U1","action":"link","outcome":"ok"}"#,
            r#"{"time":"2026-11-25T14:03:12Z","platform":"slack","asker":"U1","action":"link"}"#,
            r#"{"time":"2026-11-25T14:03:12Z","platform":"slack","asker":7,"action":"link","outcome":"ok"}"#,
        ] {
            assert!(parse_line(bad.as_bytes()).is_none(), "{bad}");
        }
        assert!(parse_line(b"\xff\xfe{}").is_none());
    }

    #[test]
    fn filters_match_as_documented() {
        let e = entry(&line(
            "2026-11-25T14:03:12Z",
            "U1",
            "e1",
            Some("Acme Corp"),
            "ok",
        ));
        let at = |t: &str| Some(humantime::parse_rfc3339(t).unwrap());
        let yes = |f: Filter| assert!(f.matches(&e), "{f:?}");
        let no = |f: Filter| assert!(!f.matches(&e), "{f:?}");
        yes(Filter::default());
        yes(Filter {
            since: at("2026-11-25T14:03:12Z"),
            ..Default::default()
        });
        no(Filter {
            since: at("2026-11-25T14:03:13Z"),
            ..Default::default()
        });
        yes(Filter {
            asker: Some("U1".into()),
            ..Default::default()
        });
        no(Filter {
            asker: Some("u1".into()),
            ..Default::default()
        });
        yes(Filter {
            end_user: Some("e1".into()),
            ..Default::default()
        });
        no(Filter {
            end_user: Some("E1".into()),
            ..Default::default()
        });
        yes(Filter {
            company: Some("acme".into()),
            ..Default::default()
        });
        yes(Filter {
            company: Some("E CO".into()),
            ..Default::default()
        });
        no(Filter {
            company: Some("Globex".into()),
            ..Default::default()
        });
        yes(Filter {
            outcome: Some("ok".into()),
            ..Default::default()
        });
        no(Filter {
            outcome: Some("denied".into()),
            ..Default::default()
        });
        no(Filter {
            asker: Some("U1".into()),
            outcome: Some("denied".into()),
            ..Default::default()
        });

        // Emails match in any case, in end_user or in a separate email field.
        let by_email = entry(&line(
            "2026-11-25T14:03:12Z",
            "U1",
            "Jane@Acme.example",
            None,
            "ok",
        ));
        assert!(Filter {
            end_user: Some("jane@acme.example".into()),
            ..Default::default()
        }
        .matches(&by_email));
        let split = entry(
            r#"{"time":"2026-11-25T14:03:12Z","platform":"slack","asker":"U1","action":"link","end_user":"e9","email":"jane@acme.example","outcome":"ok"}"#,
        );
        assert!(Filter {
            end_user: Some("e9".into()),
            ..Default::default()
        }
        .matches(&split));
        assert!(Filter {
            end_user: Some("JANE@acme.example".into()),
            ..Default::default()
        }
        .matches(&split));
        // No company recorded: a company filter never matches it.
        assert!(!Filter {
            company: Some("".into()),
            ..Default::default()
        }
        .matches(&by_email));
    }

    #[test]
    fn since_takes_a_duration_a_day_or_a_time() {
        let now = humantime::parse_rfc3339("2026-11-25T12:00:00Z").unwrap();
        let cut = |t: &str| Since::parse(t).unwrap().cutoff(now);
        assert_eq!(
            cut("7d"),
            humantime::parse_rfc3339("2026-11-18T12:00:00Z").unwrap()
        );
        assert_eq!(
            cut(" 90m "),
            humantime::parse_rfc3339("2026-11-25T10:30:00Z").unwrap()
        );
        assert_eq!(
            cut("2026-11-20"),
            humantime::parse_rfc3339("2026-11-20T00:00:00Z").unwrap()
        );
        assert_eq!(
            cut("2026-11-20T08:30:00Z"),
            humantime::parse_rfc3339("2026-11-20T08:30:00Z").unwrap()
        );
        assert_eq!(cut("100000000000d"), UNIX_EPOCH);
        for bad in ["", "a week", "7", "2026-13-01", "-7d"] {
            assert!(Since::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn long_lines_are_cut_and_counted_not_held() {
        let long = format!("{}\nshort\n\nlast", "x".repeat(100));
        let mut r = BufReader::with_capacity(7, long.as_bytes());
        let mut buf = Vec::new();
        assert_eq!(next_line(&mut r, &mut buf, 10).unwrap(), Some(true));
        assert_eq!(buf.len(), 10);
        assert_eq!(next_line(&mut r, &mut buf, 10).unwrap(), Some(false));
        assert_eq!(buf, b"short");
        assert_eq!(next_line(&mut r, &mut buf, 10).unwrap(), Some(false));
        assert_eq!(buf, b"");
        assert_eq!(next_line(&mut r, &mut buf, 10).unwrap(), Some(false));
        assert_eq!(buf, b"last");
        assert_eq!(next_line(&mut r, &mut buf, 10).unwrap(), None);
    }

    #[test]
    fn summaries_rank_by_count() {
        let mut s = Summary::default();
        for (asker, company, outcome) in [
            ("U1", Some("Acme"), "ok"),
            ("U2", Some("Acme"), "ok"),
            ("U1", None, "denied"),
            ("U1", Some("Globex"), "ok"),
        ] {
            s.add(&entry(&line(
                "2026-11-25T14:03:12Z",
                asker,
                "e1",
                company,
                outcome,
            )));
        }
        assert_eq!(s.events, 4);
        let askers = Summary::ranked(&s.by_asker);
        assert_eq!(askers[0], (("slack".into(), "U1".into()), 3));
        let companies = Summary::ranked(&s.by_company);
        assert_eq!(
            companies,
            [
                (Some("Acme".to_string()), 2),
                (None, 1),
                (Some("Globex".to_string()), 1)
            ]
        );
    }

    proptest! {
        #[test]
        fn no_line_panics_the_reader(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_line(&bytes);
            let mut r = BufReader::with_capacity(8, bytes.as_slice());
            let mut buf = Vec::new();
            let mut lines = 0;
            while next_line(&mut r, &mut buf, 16).unwrap().is_some() {
                prop_assert!(buf.len() <= 16);
                lines += 1;
            }
            prop_assert!(lines <= bytes.len() + 1);
        }

        #[test]
        fn no_near_event_panics_the_parser(
            time in "\\PC{0,30}",
            asker in "\\PC{0,10}",
            company in proptest::option::of("\\PC{0,10}"),
            wanted in "\\PC{0,10}",
        ) {
            let text = serde_json::json!({
                "time": time, "platform": "slack", "asker": asker, "action": "link",
                "outcome": "ok", "company": company, "end_user": wanted.clone(),
            }).to_string();
            if let Some(e) = parse_line(text.as_bytes()) {
                let f = Filter { end_user: Some(wanted.clone()), company: Some(wanted), ..Default::default() };
                let _ = f.matches(&e);
                let mut s = Summary::default();
                s.add(&e);
            }
        }

        #[test]
        fn no_since_panics(text in "\\PC{0,30}", digits in "[0-9]{1,25}[a-z]{0,5}") {
            let now = SystemTime::now();
            if let Ok(s) = Since::parse(&text) { let _ = s.cutoff(now); }
            if let Ok(s) = Since::parse(&digits) { let _ = s.cutoff(now); }
        }
    }
}
