//! The names of the audit trail's files, shared by the writer that rotates them and the
//! reader (`portal-bot audit`) that reads them back in order.
//!
//! The scheme: the current file is `[audit] path` (say `audit.jsonl`). When it is rotated it is
//! renamed, next to itself, to `audit.jsonl.YYYY-MM-DD`: the UTC day of its last line. A second
//! rotation on the same day gets `audit.jsonl.YYYY-MM-DD.1`, then `.2`, and so on. A rotated
//! file is never renamed again, so a log shipper that follows names sees each once, and the
//! names sort oldest first as (day, counter). Only names of exactly this shape belong to the
//! trail: the writer never deletes, and the reader never reads, anything else next to it
//! (`audit.jsonl.bak`, `audit.jsonl.2026-11-25.gz`).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// A UTC calendar day, as days since 1970-01-01. `Display` is `YYYY-MM-DD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Day(i64);

impl Day {
    /// The UTC day `time` falls on (times before 1970 too: a file's mtime can be anything).
    pub fn of(time: SystemTime) -> Day {
        let secs = match time.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
        };
        Day(secs.div_euclid(86_400))
    }

    /// `YYYY-MM-DD` (a real calendar day, four-digit year) or nothing.
    pub fn parse(text: &str) -> Option<Day> {
        let b = text.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return None;
        }
        let num = |r: std::ops::Range<usize>| -> Option<i64> {
            let part = text.get(r)?;
            if !part.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            part.parse().ok()
        };
        let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
            return None;
        }
        Some(Day(days_from_civil(y, m, d)))
    }

    /// Midnight UTC at the start of this day (1970 for days before it).
    pub fn start(self) -> SystemTime {
        let secs = u64::try_from(self.0.max(0))
            .unwrap_or(0)
            .saturating_mul(86_400);
        UNIX_EPOCH + std::time::Duration::from_secs(secs)
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = civil_from_days(self.0);
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's algorithms (http://howardhinnant.github.io/date_algorithms.html): exact for
// the proleptic Gregorian calendar, no table, no panic for any day a SystemTime can hold.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z.saturating_add(719_468);
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// One rotated file of the trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    pub path: PathBuf,
    /// The UTC day of its last line.
    pub day: Day,
    /// 0 for the day's first rotation (no suffix), then 1, 2, …
    pub counter: u32,
}

/// The name `current` gets when it is rotated on `day` as that day's `counter`th.
pub fn rotated_name(current: &Path, day: Day, counter: u32) -> PathBuf {
    let mut name = current.as_os_str().to_owned();
    name.push(format!(".{day}"));
    if counter > 0 {
        name.push(format!(".{counter}"));
    }
    PathBuf::from(name)
}

/// What follows `{file name}.` in a rotated file's name: `YYYY-MM-DD` or `YYYY-MM-DD.N`
/// (N a positive number without leading zeros, so each file has one name).
pub fn parse_suffix(suffix: &str) -> Option<(Day, u32)> {
    let (day, counter) = match suffix.split_once('.') {
        None => (suffix, 0),
        Some((day, n)) => {
            if n.is_empty() || n.starts_with('0') || !n.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            (day, n.parse::<u32>().ok()?)
        }
    };
    Some((Day::parse(day)?, counter))
}

/// The directory `current` lives in (`.` for a bare file name).
fn directory(current: &Path) -> &Path {
    match current.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The rotated files of the trail whose current file is `current`, oldest first.
pub fn rotated(current: &Path) -> io::Result<Vec<Rotated>> {
    let Some(base) = current.file_name().and_then(|n| n.to_str()) else {
        // A name that is not UTF-8 gets no rotated siblings we would recognise: nothing to list.
        return Ok(Vec::new());
    };
    let prefix = format!("{base}.");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(directory(current))? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(suffix) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        let Some((day, counter)) = parse_suffix(suffix) else {
            continue;
        };
        if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
            found.push(Rotated {
                path: rotated_name(current, day, counter),
                day,
                counter,
            });
        }
    }
    found.sort_by_key(|r| (r.day, r.counter));
    Ok(found)
}

/// Every file of the trail in the order its lines were written: the rotated files oldest
/// first, then the current file (when it exists).
pub fn trail(current: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = rotated(current)?.into_iter().map(|r| r.path).collect();
    if current.is_file() {
        files.push(current.to_path_buf());
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    #[test]
    fn days_print_and_parse_as_calendar_dates() {
        assert_eq!(Day::of(UNIX_EPOCH).to_string(), "1970-01-01");
        let t = humantime::parse_rfc3339("2026-11-25T23:59:59Z").unwrap();
        assert_eq!(Day::of(t).to_string(), "2026-11-25");
        assert_eq!(
            Day::of(t + Duration::from_secs(1)).to_string(),
            "2026-11-26"
        );
        assert_eq!(
            Day::of(UNIX_EPOCH - Duration::from_secs(1)).to_string(),
            "1969-12-31"
        );
        assert_eq!(Day::parse("2024-02-29").unwrap().to_string(), "2024-02-29");
        for bad in [
            "2026-02-29",
            "2026-13-01",
            "2026-00-10",
            "2026-1-01",
            "26-11-25",
            "2026-11-2x",
            "+026-11-25",
            "2026-11-25 ",
        ] {
            assert_eq!(Day::parse(bad), None, "{bad}");
        }
        let day = Day::parse("2026-11-25").unwrap();
        assert_eq!(Day::of(day.start()), day);
    }

    #[test]
    fn rotated_names_carry_the_day_and_a_counter() {
        let current = Path::new("/var/log/audit.jsonl");
        let day = Day::parse("2026-11-25").unwrap();
        assert_eq!(
            rotated_name(current, day, 0),
            Path::new("/var/log/audit.jsonl.2026-11-25")
        );
        assert_eq!(
            rotated_name(current, day, 3),
            Path::new("/var/log/audit.jsonl.2026-11-25.3")
        );
        assert_eq!(parse_suffix("2026-11-25"), Some((day, 0)));
        assert_eq!(parse_suffix("2026-11-25.12"), Some((day, 12)));
        for bad in [
            "2026-11-25.0",
            "2026-11-25.01",
            "2026-11-25.",
            "2026-11-25.gz",
            "2026-11-25.1.gz",
            "bak",
            "",
        ] {
            assert_eq!(parse_suffix(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_trail_lists_rotated_files_oldest_first_then_the_current_one() {
        let dir = std::env::temp_dir().join(format!("pb-audit-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let current = dir.join("audit.jsonl");
        for name in [
            "audit.jsonl.2026-11-25.10",
            "audit.jsonl.2026-11-24",
            "audit.jsonl.2026-11-25.2",
            "audit.jsonl.2026-11-25",
            "audit.jsonl.bak",
            "audit.jsonl.2026-11-23.gz",
            "other.jsonl.2026-11-20",
            "audit.jsonl",
        ] {
            std::fs::write(dir.join(name), "").unwrap();
        }
        let names: Vec<String> = trail(&current)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "audit.jsonl.2026-11-24",
                "audit.jsonl.2026-11-25",
                "audit.jsonl.2026-11-25.2",
                "audit.jsonl.2026-11-25.10",
                "audit.jsonl",
            ]
        );
        std::fs::remove_file(&current).unwrap();
        assert_eq!(
            trail(&current).unwrap().len(),
            4,
            "rotated files without a current one"
        );
    }

    proptest! {
        #[test]
        fn every_day_round_trips(days in -1_000_000i64..3_000_000) {
            let day = Day(days);
            let text = day.to_string();
            if (0..=9999).contains(&civil_from_days(days).0) {
                prop_assert_eq!(Day::parse(&text), Some(day));
            }
        }

        #[test]
        fn no_file_name_panics_the_parser(suffix in "\\PC{0,30}", digits in "[0-9.-]{0,16}") {
            let _ = parse_suffix(&suffix);
            let _ = parse_suffix(&digits);
            let _ = Day::parse(&digits);
        }

        #[test]
        fn no_time_panics_the_day(secs in any::<u64>(), before in any::<bool>()) {
            let d = Duration::from_secs(secs);
            let t = if before { UNIX_EPOCH.checked_sub(d) } else { UNIX_EPOCH.checked_add(d) };
            if let Some(t) = t {
                let _ = Day::of(t).to_string();
                let _ = Day::of(t).start();
            }
        }
    }
}
