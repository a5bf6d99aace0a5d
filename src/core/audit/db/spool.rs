//! The local fallback of the audit database: a file of JSON lines (`[audit] path`) holding the
//! events the database could not take when they happened, until it takes them.
//!
//! Only the writer task touches it. Events are appended in one `write` per batch (a crash leaves
//! each line whole or absent), read back from an offset in chunks when the database answers
//! again, and the file is emptied once every line up to its end is in the database. A crash
//! during a replay replays from the start next time: the event ids make that harmless. The file
//! is created readable by the bot's user only, like the file trail.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::core::audit::query::MAX_LINE;
use crate::core::audit::rotate::open_append;

/// The fallback file.
pub struct Spool {
    path: PathBuf,
    file: File,
    /// Lines in the file (events waiting, replayed or not).
    lines: usize,
    /// How far the current replay got (bytes); lines before it are in the database.
    replayed: u64,
}

impl Spool {
    /// Opens (creating, 0600) the file at `path`; lines already in it (from before a restart)
    /// wait for the database like new ones.
    pub fn open(path: &Path) -> io::Result<Spool> {
        let file = open_append(path)?;
        let lines = BufReader::new(File::open(path)?)
            .split(b'\n')
            .filter(|l| l.as_ref().is_ok_and(|l| !l.is_empty()))
            .count();
        Ok(Spool {
            path: path.to_path_buf(),
            file,
            lines,
            replayed: 0,
        })
    }

    /// `[audit] path`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Events in the file not yet replayed.
    pub fn waiting(&self) -> usize {
        self.lines
    }

    /// Appends whole lines (each ending in `\n`) in one write.
    pub fn append(&mut self, lines: &[u8], count: usize) -> io::Result<()> {
        self.file.write_all(lines)?;
        self.lines += count;
        Ok(())
    }

    /// Up to `max` lines from where the replay got to, and the offset after them. An empty
    /// answer means the replay reached the end.
    pub fn next_chunk(&self, max: usize) -> io::Result<(Vec<String>, u64)> {
        let mut reader = BufReader::new(File::open(&self.path)?);
        reader.seek(SeekFrom::Start(self.replayed))?;
        let mut out = Vec::new();
        let mut offset = self.replayed;
        let mut buf = Vec::new();
        while out.len() < max {
            buf.clear();
            let n = reader.read_until(b'\n', &mut buf)?;
            if n == 0 || buf.last() != Some(&b'\n') {
                break; // the end, or a line still being written: next time
            }
            offset += n as u64;
            buf.pop();
            if buf.is_empty() || buf.len() > MAX_LINE {
                continue;
            }
            out.push(String::from_utf8_lossy(&buf).into_owned());
        }
        Ok((out, offset))
    }

    /// Marks everything before `offset` (`count` more lines) as in the database.
    pub fn replayed_to(&mut self, offset: u64, count: usize) {
        self.replayed = offset;
        self.lines = self.lines.saturating_sub(count);
    }

    /// Empties the file when the replay reached its end; true when it did.
    pub fn finish_if_done(&mut self) -> io::Result<bool> {
        let len = self.file.metadata()?.len();
        if self.replayed < len {
            return Ok(false);
        }
        self.file.set_len(0)?;
        self.lines = 0;
        self.replayed = 0;
        Ok(true)
    }
}
