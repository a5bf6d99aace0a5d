//! `portal-bot audit`: who opened which customer's portal, when. Reads the trail `[audit] path`
//! names, rotated files included, and shows the matching events as an aligned table (plain
//! words for whoever is reading it at 3 a.m.), as JSON lines exactly as stored (`--json`), or
//! as counts per asker, company and outcome (`--summary`, with `--json` one JSON object).
//!
//! With `[audit] database_url` it reads the audit database instead, the trail of every replica
//! (`core::audit::db::read`): the same filters and output. `--migrate` creates or upgrades the
//! database's schema, for an owner role when the bot's own role may not.
//!
//! Reading and filtering live in `core::audit::query` and `core::audit::db::read`; this module
//! only turns arguments into a filter and events into text. Stdout is the answer; what went
//! wrong goes to stderr. The database's URL is never printed.

use std::io::{self, BufWriter, Write};
use std::ops::ControlFlow;
use std::path::Path;
use std::time::SystemTime;

use super::exit;
use crate::core::audit::db;
use crate::core::audit::query::{self, Entry, Filter, Since, Summary};
use crate::core::config::AuditConfig;
use crate::core::text;

/// What to show (the command line's flags).
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub since: Option<Since>,
    pub asker: Option<String>,
    pub enduser: Option<String>,
    pub company: Option<String>,
    pub outcome: Option<String>,
    pub action: Option<String>,
    pub summary: bool,
    pub json: bool,
    /// Create or upgrade the audit database's schema, then stop.
    pub migrate: bool,
}

/// Where the trail is read from.
enum Source {
    File(std::path::PathBuf),
    Database(crate::core::secret::Secret),
}

/// Runs the command; returns the exit status.
pub fn run(config_path: &Path, options: Options) -> u8 {
    let config = match AuditConfig::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("portal-bot: {e}");
            return exit::USAGE;
        }
    };
    let source = match (config.database_url, config.path) {
        (Some(url), _) => Source::Database(url),
        (None, _) if options.migrate => {
            eprintln!(
                "portal-bot: --migrate needs audit.database_url (or PORTAL_BOT_AUDIT_DATABASE_URL)"
            );
            return exit::USAGE;
        }
        (None, Some(path)) => Source::File(path),
        (None, None) => {
            eprintln!(
                "portal-bot: neither audit.path nor audit.database_url is set in {}: audit events go to the log, so there is no trail to read",
                config_path.display()
            );
            return exit::USAGE;
        }
    };
    if options.migrate {
        let Source::Database(url) = &source else {
            return exit::USAGE;
        };
        return migrate(url);
    }
    let filter = Filter {
        since: options.since.map(|s| s.cutoff(SystemTime::now())),
        asker: options.asker.clone(),
        end_user: options.enduser.clone(),
        company: options.company.clone(),
        outcome: options.outcome.clone(),
        action: options.action.clone(),
    };
    let mut out = BufWriter::new(io::stdout().lock());
    let mut failed: Option<io::Error> = None;
    let mut summary = Summary::default();
    let mut rows: Vec<[String; 7]> = Vec::new();
    let each = |entry: &Entry| {
        if options.summary {
            summary.add(entry);
        } else if options.json {
            if let Err(e) = writeln!(out, "{}", entry.line) {
                failed = Some(e);
                return ControlFlow::Break(());
            }
        } else {
            rows.push(row(entry));
        }
        ControlFlow::Continue(())
    };
    let stats = match &source {
        Source::File(trail) => match query::read(trail, &filter, each) {
            Ok(stats) => stats,
            Err(e @ query::TrailError::Missing { .. }) => {
                eprintln!(
                    "portal-bot: audit.path: {e}; a relative path is taken from the current directory"
                );
                return exit::USAGE;
            }
            Err(e) => {
                eprintln!("portal-bot: audit.path: {e}");
                return exit::USAGE;
            }
        },
        Source::Database(url) => {
            let read = if options.summary {
                block_on(async {
                    let client = db::connect(url.expose()).await?;
                    db::read::summary(&client, &filter).await
                })
                .map(|s| {
                    let stats = query::Stats {
                        events: s.events,
                        matched: s.events,
                        ..Default::default()
                    };
                    summary = s;
                    stats
                })
            } else {
                block_on(async {
                    let client = db::connect(url.expose()).await?;
                    db::read::events(&client, &filter, each).await
                })
            };
            match read {
                Ok(stats) => stats,
                Err(e @ db::DbError::NoTable) => {
                    eprintln!("portal-bot: audit.database_url: {e}");
                    return exit::USAGE;
                }
                Err(e) => {
                    eprintln!("portal-bot: audit.database_url: {e}");
                    return exit::UPSTREAM;
                }
            }
        }
    };
    let written = match failed {
        Some(e) => Err(e),
        None if options.summary && options.json => {
            writeln!(out, "{}", summary_json(&summary, stats.unreadable))
        }
        None if options.summary => write_summary(&mut out, &summary),
        None if options.json => Ok(()),
        None => write_table(&mut out, &rows),
    }
    .and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        // The reader went away (`| head`): what it wanted, it has.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return exit::OK,
        Err(e) => {
            eprintln!("portal-bot: cannot write the output: {e}");
            return exit::USAGE;
        }
    }
    if stats.unreadable > 0 {
        let n = stats.unreadable;
        let lines = if n == 1 { "line" } else { "lines" };
        eprintln!("portal-bot: {n} {lines} could not be read (skipped)");
    }
    if stats.matched == 0 {
        match source {
            Source::File(_) => eprintln!(
                "portal-bot: no events match ({} read from {} file{})",
                stats.events,
                stats.files,
                if stats.files == 1 { "" } else { "s" }
            ),
            Source::Database(_) => eprintln!("portal-bot: no events match in the audit database"),
        }
    }
    exit::OK
}

/// Runs `work` on a runtime of its own: reading a file needs none, so one is made only for the
/// database.
fn block_on<T>(
    work: impl std::future::Future<Output = Result<T, db::DbError>>,
) -> Result<T, db::DbError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| db::DbError::Connect(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(work)
}

/// `--migrate`: the schema created or brought up to date (for an owner role: README "The audit
/// trail").
fn migrate(url: &crate::core::secret::Secret) -> u8 {
    let done = block_on(async {
        let mut client = db::connect(url.expose()).await?;
        db::migrate::migrate(&mut client).await
    });
    match done {
        Ok(version) => {
            println!("audit database: schema at version {version}");
            exit::OK
        }
        Err(e) => {
            eprintln!("portal-bot: audit.database_url: {e}");
            exit::UPSTREAM
        }
    }
}

/// `2026-11-25 14:03:12` (UTC, seconds).
fn when(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .replacen('T', " ", 1)
        .trim_end_matches('Z')
        .to_string()
}

/// A value for a terminal: control characters (which could move the cursor or recolour the
/// screen) and Unicode format characters (which reorder or hide what follows: U+202E, zero-width
/// characters) shown as `?`, long values cut to 40 characters, nothing shown as `-`. The trail
/// may hold values written before names were cleaned when read, so they are cleaned here too.
fn cell(value: Option<&str>) -> String {
    const WIDTH: usize = 40;
    let Some(v) = value.filter(|v| !v.is_empty()) else {
        return "-".into();
    };
    let mut shown: String = v
        .chars()
        .take(WIDTH)
        .map(|c| {
            if c.is_control() || text::is_format(c) {
                '?'
            } else {
                c
            }
        })
        .collect();
    if v.chars().nth(WIDTH).is_some() {
        shown.pop();
        shown.push('…');
    }
    shown
}

const HEADER: [&str; 7] = [
    "TIME (UTC)",
    "PLATFORM",
    "ASKER",
    "ACTION",
    "END USER",
    "COMPANY",
    "OUTCOME",
];

fn row(entry: &Entry) -> [String; 7] {
    let e = &entry.event;
    let end_user = match (&e.end_user, &e.email) {
        (Some(id), Some(email)) if id != email => {
            format!("{} ({})", cell(Some(id)), cell(Some(email)))
        }
        (Some(id), _) => cell(Some(id)),
        (None, email) => cell(email.as_deref()),
    };
    [
        when(entry.at),
        cell(Some(&e.platform)),
        cell(Some(&e.asker)),
        cell(Some(&e.action)),
        end_user,
        cell(e.company.as_deref()),
        cell(Some(&e.outcome)),
    ]
}

/// Columns padded to their widest value, two spaces apart; the last one unpadded.
fn write_table(out: &mut impl Write, rows: &[[String; 7]]) -> io::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut widths = HEADER.map(|h| h.chars().count());
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let header = HEADER.map(String::from);
    for r in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (c, w)) in r.iter().zip(widths).enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(c);
                line.extend(std::iter::repeat_n(' ', w - c.chars().count() + 2));
            }
        }
        writeln!(out, "{line}")?;
    }
    Ok(())
}

fn write_summary(out: &mut impl Write, s: &Summary) -> io::Result<()> {
    match (s.first, s.last) {
        (Some(first), Some(last)) => writeln!(
            out,
            "{} event{}, {} to {} UTC",
            s.events,
            if s.events == 1 { "" } else { "s" },
            when(first),
            when(last)
        )?,
        _ => writeln!(out, "0 events")?,
    }
    let askers: Vec<(String, u64)> = Summary::ranked(&s.by_asker)
        .into_iter()
        .map(|((platform, asker), n)| {
            (
                format!("{} ({})", cell(Some(&asker)), cell(Some(&platform))),
                n,
            )
        })
        .collect();
    let companies: Vec<(String, u64)> = Summary::ranked(&s.by_company)
        .into_iter()
        .map(|(company, n)| (company.map_or("(none)".into(), |c| cell(Some(&c))), n))
        .collect();
    let outcomes: Vec<(String, u64)> = Summary::ranked(&s.by_outcome)
        .into_iter()
        .map(|(outcome, n)| (cell(Some(&outcome)), n))
        .collect();
    let name_width = [&askers, &companies, &outcomes]
        .iter()
        .flat_map(|rows| rows.iter().map(|(name, _)| name.chars().count()))
        .chain([7])
        .max()
        .unwrap_or(7);
    for (title, rows) in [
        ("ASKER", askers),
        ("COMPANY", companies),
        ("OUTCOME", outcomes),
    ] {
        if rows.is_empty() {
            continue;
        }
        writeln!(out)?;
        writeln!(out, "{title:<name_width$}  EVENTS")?;
        for (name, n) in rows {
            let pad = name_width.saturating_sub(name.chars().count());
            writeln!(out, "{name}{}  {n:>6}", " ".repeat(pad))?;
        }
    }
    Ok(())
}

fn summary_json(s: &Summary, unreadable: u64) -> serde_json::Value {
    let time = |t: Option<SystemTime>| t.map(|t| humantime::format_rfc3339_millis(t).to_string());
    serde_json::json!({
        "events": s.events,
        "first": time(s.first),
        "last": time(s.last),
        "askers": Summary::ranked(&s.by_asker).into_iter().map(|((platform, asker), n)| {
            serde_json::json!({"platform": platform, "asker": asker, "events": n})
        }).collect::<Vec<_>>(),
        "companies": Summary::ranked(&s.by_company).into_iter().map(|(company, n)| {
            serde_json::json!({"company": company, "events": n})
        }).collect::<Vec<_>>(),
        "outcomes": Summary::ranked(&s.by_outcome).into_iter().map(|(outcome, n)| {
            serde_json::json!({"outcome": outcome, "events": n})
        }).collect::<Vec<_>>(),
        "unreadable_lines": unreadable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(company: Option<&str>, end_user: &str) -> Entry {
        let line = serde_json::json!({
            "time": "2026-11-25T14:03:12.345Z", "platform": "slack", "asker": "U1",
            "action": "link", "end_user": end_user, "outcome": "ok", "company": company,
        })
        .to_string();
        query::parse_line(line.as_bytes()).unwrap()
    }

    #[test]
    fn the_table_is_aligned_and_says_nothing_as_a_dash() {
        let rows = vec![
            row(&entry(Some("Acme Corp"), "e1")),
            row(&entry(None, "a-much-longer-id")),
        ];
        let mut out = Vec::new();
        write_table(&mut out, &rows).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].starts_with("TIME (UTC)           PLATFORM  ASKER  ACTION  END USER"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("2026-11-25 14:03:12  slack     U1     link    e1        "),
            "{text}"
        );
        let company_col = lines[0].find("COMPANY").unwrap();
        assert_eq!(&lines[1][company_col..company_col + 9], "Acme Corp");
        assert_eq!(&lines[2][company_col..company_col + 2], "- ");
        assert!(lines[2].ends_with("ok"));
    }

    #[test]
    fn terminal_control_characters_are_not_passed_through() {
        let shown = cell(Some("Acme\u{1b}[2J\u{7}\nCorp"));
        assert_eq!(shown, "Acme?[2J??Corp");
        // A right-to-left override would show "Evil Corp" reversed after it; a zero-width
        // space would hide itself: both are visible marks instead.
        assert_eq!(
            cell(Some("Acme\u{202e}proC liv\u{200b}E")),
            "Acme?proC liv?E"
        );
        let long = "x".repeat(100);
        assert_eq!(cell(Some(&long)).chars().count(), 40);
        assert!(cell(Some(&long)).ends_with('…'));
        assert_eq!(cell(Some("")), "-");
    }

    #[test]
    fn summaries_read_plainly_and_as_json() {
        let mut s = Summary::default();
        s.add(&entry(Some("Acme"), "e1"));
        s.add(&entry(Some("Acme"), "e2"));
        s.add(&entry(None, "e3"));
        let mut out = Vec::new();
        write_summary(&mut out, &s).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("3 events, 2026-11-25 14:03:12 to 2026-11-25 14:03:12 UTC\n"),
            "{text}"
        );
        assert!(text.contains("\nU1 (slack)       3\n"), "{text}");
        assert!(
            text.contains("\nAcme             2\n(none)           1\n"),
            "{text}"
        );
        let json = summary_json(&s, 2);
        assert_eq!(json["events"], 3);
        assert_eq!(
            json["companies"][1],
            serde_json::json!({"company": null, "events": 1})
        );
        assert_eq!(json["unreadable_lines"], 2);
        let mut empty = Vec::new();
        write_summary(&mut empty, &Summary::default()).unwrap();
        assert_eq!(String::from_utf8(empty).unwrap(), "0 events\n");
    }

    proptest! {
        #[test]
        fn no_value_breaks_a_cell(value in "\\PC{0,80}|[\\x00-\\x1f\\u{200b}-\\u{200f}\\u{202a}-\\u{202e}\\u{2066}-\\u{2069}a]{0,10}") {
            let shown = cell(Some(&value));
            prop_assert!(shown.chars().count() <= 40);
            prop_assert!(!shown.chars().any(|c| c.is_control() || text::is_format(c)));
        }
    }
}
