//! The audit trail's current file, and its rotation (`[audit] rotate`, `keep`).
//!
//! Only the writer thread touches this, and only between batches: a batch of whole lines goes
//! into one file in one `write`, after any rotation that is due, so no line is split across
//! files and no batch straddles two. Rotating renames the current file to its dated name (see
//! [`super::files`]), opens a new one at `[audit] path` (created 0600, like the first), and
//! deletes the oldest rotated files beyond `keep` that are more than a day old. A rotation that fails loses nothing: lines keep going to the file already
//! open (renamed or not) and the rotation is tried again a minute later.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::files::{self, Day};
use super::AuditError;
use crate::core::config::Rotate;

/// When to rotate and how many rotated files to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    pub when: Rotate,
    pub keep: usize,
}

/// The wall clock (tests pass their own to cross midnight at will).
pub type Clock = Box<dyn Fn() -> SystemTime + Send>;

/// A rotated file younger than this (by its last change) is never deleted, whatever `keep` says.
pub const MIN_AGE: Duration = Duration::from_secs(86_400);

/// After a failed rotation, how long lines keep going to the file already open before the
/// rotation is tried again (each failure is logged; this keeps that to once a minute).
const RETRY: Duration = Duration::from_secs(60);

/// The file lines are appended to, rotated as configured.
pub struct TrailFile {
    path: PathBuf,
    file: File,
    /// Bytes in the open file.
    size: u64,
    /// The UTC day of the open file's last line (of its last change when it was opened).
    day: Day,
    rotation: Option<Rotation>,
    clock: Clock,
    /// Set after a failed rotation: no new try before then.
    retry_at: Option<Instant>,
    /// The open file was renamed to its rotated name but no new file could be opened at `path`:
    /// lines still go to the renamed one until it can.
    renamed: bool,
}

impl TrailFile {
    /// Opens (creating) the file at `path` for appending.
    pub fn open(
        path: &Path,
        rotation: Option<Rotation>,
        clock: Clock,
    ) -> Result<TrailFile, AuditError> {
        let file = open_append(path)
            .map_err(|e| AuditError(format!("cannot open {}: {e}", path.display())))?;
        let meta = file.metadata().ok();
        let size = meta.as_ref().map(|m| m.len()).unwrap_or(0);
        // A file left from before a restart belongs to the day it was last written.
        let day = match meta.and_then(|m| m.modified().ok()) {
            Some(modified) if size > 0 => Day::of(modified),
            _ => Day::of(clock()),
        };
        Ok(TrailFile {
            path: path.to_path_buf(),
            file,
            size,
            day,
            rotation,
            clock,
            retry_at: None,
            renamed: false,
        })
    }

    /// `[audit] path`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `lines` (whole lines, each ending in `\n`) in one `write`, after rotating if a
    /// rotation is due. Ok only when every byte was written.
    pub fn append(&mut self, lines: &[u8]) -> Result<(), String> {
        let today = Day::of((self.clock)());
        if self.should_rotate(today, lines.len() as u64) {
            self.rotate();
        }
        let written = self.file.write(lines);
        match written {
            Ok(n) => {
                self.size += n as u64;
                self.day = today;
                if n == lines.len() {
                    return Ok(());
                }
                // The disk filled up mid-batch: end the torn line, so that the next batch's
                // lines start on a line of their own and stay readable.
                if let Ok(1) = self.file.write(b"\n") {
                    self.size += 1;
                }
                Err(format!("short write ({n} of {} bytes)", lines.len()))
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Flushes what the kernel holds to the disk (at shutdown).
    pub fn sync(&mut self) {
        let _ = self.file.flush();
        let _ = self.file.sync_data();
    }

    fn should_rotate(&self, today: Day, incoming: u64) -> bool {
        let Some(rotation) = self.rotation else {
            return false;
        };
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return false;
        }
        if self.renamed {
            return true; // finish the rotation that could not open its new file
        }
        if self.size == 0 {
            return false; // an empty file is never rotated
        }
        match rotation.when {
            Rotate::Daily => today != self.day,
            Rotate::Size(max) => self.size.saturating_add(incoming) > max,
        }
    }

    fn rotate(&mut self) {
        if !self.renamed {
            let target = match self.free_name() {
                Ok(t) => t,
                Err(e) => return self.failed("cannot list the rotated audit files", &e),
            };
            if let Err(e) = std::fs::rename(&self.path, &target) {
                return self.failed("cannot rename the audit file", &e);
            }
            self.renamed = true;
            tracing::info!(path = %self.path.display(), rotated = %target.display(), "audit file rotated");
        }
        match open_append(&self.path) {
            Ok(file) => {
                self.file = file;
                self.size = 0;
                self.renamed = false;
                self.retry_at = None;
                self.prune();
            }
            Err(e) => self.failed("cannot open a new audit file", &e),
        }
    }

    fn failed(&mut self, what: &str, error: &dyn std::fmt::Display) {
        tracing::error!(
            path = %self.path.display(),
            error = %error,
            "{what}; lines keep going to the open file, rotation is tried again in a minute"
        );
        self.retry_at = Some(Instant::now() + RETRY);
    }

    /// The next rotated name for the open file's day: never one that exists (a rename would
    /// replace it), and after every counter already used that day, so names stay in order.
    fn free_name(&self) -> std::io::Result<PathBuf> {
        let used = files::rotated(&self.path)?
            .into_iter()
            .filter(|r| r.day == self.day)
            .map(|r| r.counter)
            .max();
        let mut counter = used.map_or(0, |c| c.saturating_add(1));
        for _ in 0..1000 {
            let name = files::rotated_name(&self.path, self.day, counter);
            if !name.try_exists()? {
                return Ok(name);
            }
            counter = counter.saturating_add(1);
        }
        Err(std::io::Error::other("no free rotated file name"))
    }

    /// Deletes the oldest rotated files beyond `keep`, except those whose last line is less
    /// than [`MIN_AGE`] old: a flood of events (anyone can cause some) rotates often, and must
    /// not push the last day's genuine events out of the trail. Such files are deleted at a
    /// later rotation, once they are old enough.
    fn prune(&self) {
        let Some(rotation) = self.rotation else {
            return;
        };
        let list = match files::rotated(&self.path) {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot list the rotated audit files; none deleted");
                return;
            }
        };
        let excess = list.len().saturating_sub(rotation.keep);
        let now = (self.clock)();
        for old in &list[..excess] {
            let young = std::fs::metadata(&old.path)
                .and_then(|m| m.modified())
                // A file changed "in the future" (clock skew), or whose time can't be read, is
                // treated as young: kept.
                .map(|changed| {
                    now.duration_since(changed)
                        .map_or(true, |age| age < MIN_AGE)
                })
                .unwrap_or(true);
            if young {
                continue;
            }
            if let Err(e) = std::fs::remove_file(&old.path) {
                tracing::warn!(path = %old.path.display(), error = %e, "cannot delete an old audit file");
            }
        }
    }
}

/// Opens `path` for appending, creating it readable and writable by the bot's user only
/// (0600): the trail is personal data about colleagues and customers. A file that exists keeps
/// the permissions it has (an operator may have granted a log shipper's group on purpose).
pub(crate) fn open_append(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pb-rotate-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("audit.jsonl")
    }

    /// A clock at `2026-11-25T12:00:00Z` plus what the test adds to `offset` (seconds).
    fn clock(offset: &Arc<AtomicU64>) -> Clock {
        let offset = offset.clone();
        let noon = humantime::parse_rfc3339("2026-11-25T12:00:00Z").unwrap();
        Box::new(move || noon + Duration::from_secs(offset.load(Ordering::SeqCst)))
    }

    fn names(current: &Path) -> Vec<String> {
        files::trail(current)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn daily_rotation_names_each_file_after_the_day_of_its_last_line() {
        let current = scratch("daily");
        let offset = Arc::new(AtomicU64::new(0));
        let daily = Rotation {
            when: Rotate::Daily,
            keep: 30,
        };
        let mut trail = TrailFile::open(&current, Some(daily), clock(&offset)).unwrap();
        trail.append(b"a\n").unwrap();
        trail.append(b"b\n").unwrap();
        offset.store(86_400, Ordering::SeqCst); // the next day, noon
        trail.append(b"c\n").unwrap();
        offset.store(3 * 86_400, Ordering::SeqCst); // two quiet days later
        trail.append(b"d\n").unwrap();
        assert_eq!(
            names(&current),
            [
                "audit.jsonl.2026-11-25",
                "audit.jsonl.2026-11-26",
                "audit.jsonl"
            ]
        );
        let dir = current.parent().unwrap();
        assert_eq!(read(&dir.join("audit.jsonl.2026-11-25")), "a\nb\n");
        assert_eq!(read(&dir.join("audit.jsonl.2026-11-26")), "c\n");
        assert_eq!(read(&current), "d\n");
    }

    #[test]
    fn a_file_left_from_yesterday_is_rotated_at_the_first_write_after_a_restart() {
        let current = scratch("restart");
        std::fs::write(&current, "old\n").unwrap();
        let yesterday = humantime::parse_rfc3339("2026-11-24T08:00:00Z").unwrap();
        File::options()
            .write(true)
            .open(&current)
            .unwrap()
            .set_modified(yesterday)
            .unwrap();
        let offset = Arc::new(AtomicU64::new(0));
        let daily = Rotation {
            when: Rotate::Daily,
            keep: 30,
        };
        let mut trail = TrailFile::open(&current, Some(daily), clock(&offset)).unwrap();
        trail.append(b"new\n").unwrap();
        assert_eq!(names(&current), ["audit.jsonl.2026-11-24", "audit.jsonl"]);
        assert_eq!(read(&current), "new\n");
    }

    /// Sets a file's last change to `at`.
    fn touch(path: &Path, at: SystemTime) {
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(at)
            .unwrap();
    }

    #[test]
    fn size_rotation_counts_within_a_day_and_deletes_beyond_keep_only_files_a_day_old() {
        let current = scratch("size");
        let offset = Arc::new(AtomicU64::new(0));
        let rotation = Rotation {
            when: Rotate::Size(10),
            keep: 3,
        };
        let now = clock(&offset);
        let mut trail = TrailFile::open(&current, Some(rotation), clock(&offset)).unwrap();
        // 6 bytes a batch: a second batch would pass 10 bytes, so every batch gets its own file.
        for i in 0..6 {
            trail.append(format!("line{i}\n").as_bytes()).unwrap();
            // Each rotated file was last written just now (by the test's clock).
            for f in files::rotated(&current).unwrap() {
                touch(&f.path, now());
            }
        }
        // Five rotated files, over `keep`, but all younger than a day: none deleted (a flood
        // of events must not push the day's genuine ones out).
        assert_eq!(
            names(&current),
            [
                "audit.jsonl.2026-11-25",
                "audit.jsonl.2026-11-25.1",
                "audit.jsonl.2026-11-25.2",
                "audit.jsonl.2026-11-25.3",
                "audit.jsonl.2026-11-25.4",
                "audit.jsonl"
            ]
        );
        // Two days later: the next rotation deletes the oldest beyond `keep`.
        offset.store(2 * 86_400, Ordering::SeqCst);
        trail.append(b"line6\n").unwrap();
        assert_eq!(
            names(&current),
            [
                "audit.jsonl.2026-11-25.3",
                "audit.jsonl.2026-11-25.4",
                "audit.jsonl.2026-11-25.5",
                "audit.jsonl"
            ]
        );
        let all: String = files::trail(&current)
            .unwrap()
            .iter()
            .map(|p| read(p))
            .collect();
        assert_eq!(all, "line3\nline4\nline5\nline6\n");
        // A batch bigger than the limit goes whole into a file of its own.
        trail.append(b"0123456789abcdef\n").unwrap();
        assert_eq!(read(&current), "0123456789abcdef\n");
    }

    #[cfg(unix)]
    #[test]
    fn the_trail_and_its_rotated_files_are_readable_by_the_bots_user_only() {
        use std::os::unix::fs::PermissionsExt;
        let current = scratch("mode");
        let offset = Arc::new(AtomicU64::new(0));
        let rotation = Rotation {
            when: Rotate::Size(1),
            keep: 30,
        };
        let mut trail = TrailFile::open(&current, Some(rotation), clock(&offset)).unwrap();
        for _ in 0..3 {
            trail.append(b"x\n").unwrap();
        }
        let all = files::trail(&current).unwrap();
        assert_eq!(all.len(), 3);
        for path in all {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
    }

    #[test]
    fn an_existing_rotated_name_is_never_overwritten() {
        let current = scratch("taken");
        let dir = current.parent().unwrap();
        std::fs::write(dir.join("audit.jsonl.2026-11-25"), "kept\n").unwrap();
        std::fs::write(dir.join("audit.jsonl.2026-11-25.7"), "kept too\n").unwrap();
        let offset = Arc::new(AtomicU64::new(0));
        let rotation = Rotation {
            when: Rotate::Size(1),
            keep: 30,
        };
        let mut trail = TrailFile::open(&current, Some(rotation), clock(&offset)).unwrap();
        trail.append(b"x\n").unwrap();
        trail.append(b"y\n").unwrap();
        assert_eq!(read(&dir.join("audit.jsonl.2026-11-25")), "kept\n");
        assert_eq!(read(&dir.join("audit.jsonl.2026-11-25.7")), "kept too\n");
        assert_eq!(read(&dir.join("audit.jsonl.2026-11-25.8")), "x\n");
        assert_eq!(read(&current), "y\n");
    }

    #[test]
    fn a_failed_rotation_loses_no_line() {
        let current = scratch("fail");
        let dir = current.parent().unwrap().to_path_buf();
        let offset = Arc::new(AtomicU64::new(0));
        let rotation = Rotation {
            when: Rotate::Size(1),
            keep: 30,
        };
        let mut trail = TrailFile::open(&current, Some(rotation), clock(&offset)).unwrap();
        trail.append(b"a\n").unwrap();
        // The directory disappears under the writer: the rename fails, the open file stays.
        let moved = dir.with_extension("moved");
        let _ = std::fs::remove_dir_all(&moved);
        std::fs::rename(&dir, &moved).unwrap();
        trail.append(b"b\n").unwrap();
        trail.append(b"c\n").unwrap();
        assert_eq!(read(&moved.join("audit.jsonl")), "a\nb\nc\n");
    }
}
