//! A local spill file for records whose store cannot take them (PostgreSQL down, a full
//! disk): the ledger and audit writers append a failed batch here, one JSON line per record,
//! synced to disk, and from then on append everything here, in order, until the store is back;
//! then the file is replayed from the start, in chunks, and removed when empty. The replay
//! position is kept beside the file, so a restart neither loses nor repeats what was replayed
//! (a crash between a chunk's commit and the position's update repeats that one chunk).
//!
//! Each process needs its own directory (`storage.spill_dir`): two writers on one file would
//! both replay it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

pub struct Spill<T> {
    file: PathBuf,
    position: PathBuf,
    /// Lines at the start of the file already in the store.
    done: u64,
    /// Lines after those, waiting.
    pending: u64,
    _records: PhantomData<T>,
}

impl<T: Serialize + DeserializeOwned> Spill<T> {
    /// The spill `name` in `dir`, with whatever an earlier run left there.
    pub fn open(dir: &Path, name: &str) -> Spill<T> {
        let file = dir.join(format!("{name}.jsonl"));
        let position = dir.join(format!("{name}.position"));
        let lines = File::open(&file)
            .map(|f| BufReader::new(f).lines().count() as u64)
            .unwrap_or(0);
        let done = fs::read_to_string(&position)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0u64)
            .min(lines);
        if lines > done {
            tracing::warn!(
                file = %file.display(),
                pending = lines - done,
                "records spilled by an earlier run will be replayed into the store"
            );
        }
        Spill {
            file,
            position,
            done,
            pending: lines - done,
            _records: PhantomData,
        }
    }

    /// Records waiting to be replayed.
    pub fn pending(&self) -> u64 {
        self.pending
    }

    pub fn path(&self) -> &Path {
        &self.file
    }

    /// Appends records, synced to disk before returning.
    pub fn push(&mut self, records: &[T]) -> io::Result<()> {
        if let Some(dir) = self.file.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut buf = Vec::new();
        for r in records {
            serde_json::to_writer(&mut buf, r).map_err(io::Error::other)?;
            buf.push(b'\n');
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.file)?;
        f.write_all(&buf)?;
        f.sync_data()?;
        self.pending += records.len() as u64;
        Ok(())
    }

    /// Up to `max` waiting records, oldest first, and how many lines they span (a line that
    /// does not parse, such as one cut short by a crash, is skipped and counted).
    pub fn peek(&self, max: usize) -> io::Result<(Vec<T>, u64)> {
        let f = BufReader::new(File::open(&self.file)?);
        let mut out = Vec::new();
        let mut lines = 0u64;
        for line in f.lines().skip(self.done as usize) {
            if out.len() >= max {
                break;
            }
            let line = line?;
            lines += 1;
            match serde_json::from_str(&line) {
                Ok(r) => out.push(r),
                Err(e) => tracing::error!(
                    file = %self.file.display(),
                    error = %e,
                    "a spilled record is unreadable and is skipped"
                ),
            }
        }
        Ok((out, lines))
    }

    /// Marks `lines` more lines as stored; removes the file once everything is.
    pub fn commit(&mut self, lines: u64) -> io::Result<()> {
        self.done += lines;
        self.pending = self.pending.saturating_sub(lines);
        if self.pending == 0 {
            self.done = 0;
            let _ = fs::remove_file(&self.position);
            return match fs::remove_file(&self.file) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        let tmp = self.position.with_extension("position.tmp");
        fs::write(&tmp, self.done.to_string())?;
        fs::rename(&tmp, &self.position)
    }
}

/// Where spills go when the config does not say.
pub fn default_dir() -> PathBuf {
    PathBuf::from("tollgate-data/spill")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen_and_replay_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut s: Spill<u32> = Spill::open(dir.path(), "t");
        assert_eq!(s.pending(), 0);
        s.push(&[1, 2, 3]).unwrap();
        s.push(&[4]).unwrap();
        let (first, n) = s.peek(2).unwrap();
        assert_eq!(first, [1, 2]);
        s.commit(n).unwrap();
        // A restart resumes after what was replayed.
        let mut s: Spill<u32> = Spill::open(dir.path(), "t");
        assert_eq!(s.pending(), 2);
        let (rest, n) = s.peek(10).unwrap();
        assert_eq!(rest, [3, 4]);
        s.commit(n).unwrap();
        assert_eq!(s.pending(), 0);
        assert!(!s.path().exists(), "an empty spill leaves no file");
    }

    #[test]
    fn a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut s: Spill<u32> = Spill::open(dir.path(), "t");
        s.push(&[7]).unwrap();
        let mut f = OpenOptions::new().append(true).open(s.path()).unwrap();
        f.write_all(b"{\"cut sho").unwrap();
        let s: Spill<u32> = Spill::open(dir.path(), "t");
        assert_eq!(s.pending(), 2);
        let (records, lines) = s.peek(10).unwrap();
        assert_eq!((records, lines), (vec![7], 2));
    }
}
