//! How far a backup or a restore has come, on stderr: the files and bytes under the
//! directory being written, once a second while the work goes on (of the total when
//! it is known), and a final line once it is done. Read from the file system, so it
//! watches a copy made by another process (the node writing a backup) as well as
//! one made here.

use std::fmt;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How often a line is printed at most.
const EVERY: Duration = Duration::from_secs(1);

/// Files and bytes under a directory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub files: u64,
    pub bytes: u64,
}

impl Tally {
    /// The regular files under `dir` and their bytes; what cannot be read (a file
    /// gone meanwhile, a directory not made yet) counts as nothing.
    pub fn of(dir: &Path) -> Tally {
        let mut tally = Tally::default();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return tally;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => {
                    let below = Tally::of(&entry.path());
                    tally.files += below.files;
                    tally.bytes += below.bytes;
                }
                Ok(t) if t.is_file() => {
                    tally.files += 1;
                    tally.bytes += entry.metadata().map_or(0, |m| m.len());
                }
                _ => {}
            }
        }
        tally
    }
}

/// What a progress line says: done so far, out of `total` when known.
struct Line {
    done: Tally,
    total: Option<Tally>,
}

impl Line {
    /// Done so far, never more than the total (what is written besides the copy, as a
    /// store opened on it, is not the copy's progress).
    fn so_far(done: Tally, total: Option<Tally>) -> Line {
        let done = match total {
            Some(total) => Tally {
                files: done.files.min(total.files),
                bytes: done.bytes.min(total.bytes),
            },
            None => done,
        };
        Line { done, total }
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.total {
            Some(total) => write!(
                f,
                "{} of {}, {} of {}",
                self.done.files,
                Files(total.files),
                Bytes(self.done.bytes),
                Bytes(total.bytes)
            )?,
            None => write!(f, "{}, {}", Files(self.done.files), Bytes(self.done.bytes))?,
        }
        match self.total {
            Some(total) if total.bytes > 0 => {
                write!(f, " ({}%)", (self.done.bytes * 100) / total.bytes)
            }
            _ => Ok(()),
        }
    }
}

/// A number of files: `1 file`, `3 files`.
struct Files(u64);

impl fmt::Display for Files {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            1 => write!(f, "1 file"),
            n => write!(f, "{n} files"),
        }
    }
}

/// A byte count as a person reads it: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
        if self.0 < 1024 {
            return write!(f, "{} B", self.0);
        }
        let mut value = self.0 as f64 / 1024.0;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        write!(f, "{value:.1} {}", UNITS[unit])
    }
}

/// Runs `work` while reporting on stderr, as `what: ...`, the files and bytes under
/// `dir` once a second (of `total` when known); once `work` succeeds, a final line
/// with what it wrote (the total when known) and the time it took.
pub fn watch<T, E>(
    what: &str,
    dir: &Path,
    total: Option<Tally>,
    work: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    watch_with(&|line| eprintln!("{what}: {line}"), dir, total, work)
}

/// [`watch`], each line handed to `report`.
fn watch_with<T, E>(
    report: &(dyn Fn(&str) + Sync),
    dir: &Path,
    total: Option<Tally>,
    work: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    let started = Instant::now();
    let (stop, stopped) = mpsc::channel::<()>();
    let result = std::thread::scope(|scope| {
        scope.spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(EVERY) {
                let line = Line::so_far(Tally::of(dir), total);
                report(&format!("{line} so far"));
            }
        });
        let result = work();
        drop(stop);
        result
    });
    if result.is_ok() {
        let done = total.unwrap_or_else(|| Tally::of(dir));
        report(&format!(
            "{} in {:.1} s",
            Line { done, total: None },
            started.elapsed().as_secs_f64()
        ));
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_read_as_a_person_reads_them() {
        let shown: Vec<String> = [0, 1023, 1024, 1536, 5 * 1024 * 1024, 3 << 40]
            .iter()
            .map(|b| Bytes(*b).to_string())
            .collect();
        assert_eq!(
            shown,
            ["0 B", "1023 B", "1.0 KiB", "1.5 KiB", "5.0 MiB", "3.0 TiB"]
        );
    }

    #[test]
    fn a_line_says_what_is_done_and_of_what_total() {
        let done = Tally {
            files: 3,
            bytes: 1024,
        };
        let total = Tally {
            files: 12,
            bytes: 4096,
        };
        assert_eq!(Line { done, total: None }.to_string(), "3 files, 1.0 KiB");
        assert_eq!(
            Line::so_far(done, Some(total)).to_string(),
            "3 of 12 files, 1.0 KiB of 4.0 KiB (25%)"
        );
        let beyond = Tally {
            files: 14,
            bytes: 5000,
        };
        assert_eq!(
            Line::so_far(beyond, Some(total)).to_string(),
            "12 of 12 files, 4.0 KiB of 4.0 KiB (100%)"
        );
    }

    #[test]
    fn a_tally_counts_the_files_below_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("one"), [0u8; 10]).unwrap();
        std::fs::write(dir.path().join("a/b/two"), [0u8; 20]).unwrap();
        assert_eq!(
            Tally::of(dir.path()),
            Tally {
                files: 2,
                bytes: 30
            }
        );
        assert_eq!(Tally::of(&dir.path().join("missing")), Tally::default());
    }

    #[test]
    fn watching_reports_once_a_second_then_a_final_line_and_returns_the_result() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("one"), [0u8; 2048]).unwrap();
        let lines = std::sync::Mutex::new(Vec::new());
        let report = |line: &str| lines.lock().unwrap().push(line.to_string());
        let slow = watch_with(&report, dir.path(), None, || {
            std::thread::sleep(Duration::from_millis(2500));
            Ok::<_, ()>(7)
        });
        assert_eq!(slow, Ok(7));
        let said = std::mem::take(&mut *lines.lock().unwrap());
        assert_eq!(said.len(), 3, "{said:?}");
        assert_eq!(
            said[..2],
            ["1 file, 2.0 KiB so far", "1 file, 2.0 KiB so far"]
        );
        assert!(said[2].starts_with("1 file, 2.0 KiB in 2."), "{said:?}");

        let failed = watch_with(&report, dir.path(), None, || Err::<(), _>("no"));
        assert_eq!(failed, Err("no"));
        assert!(
            lines.lock().unwrap().is_empty(),
            "a failure has no final line"
        );
    }
}
