//! The Raft log flushes with direct I/O where the filesystem allows it, and opens with
//! buffered writes where it does not, on real filesystems: the test machine's own, and
//! a ramfs mounted for the test (ramfs refuses `O_DIRECT`; tmpfs accepts it since
//! Linux 6.6). Either way, entries flushed and compacted read back whole after a
//! reopen.

use std::path::Path;
use std::process::Command as Process;

use bulwark_storage::LogStore;

/// Entries of about the size of a large message, enough to fill more than one
/// memtable flush's worth of blocks.
fn entry(index: u64) -> Vec<u8> {
    let mut bytes = vec![(index % 251) as u8; 50 * 1024];
    bytes[..8].copy_from_slice(&index.to_be_bytes());
    bytes
}

/// Appends 1..=200, purges and compacts 1..=100 away (a flush and a compaction, the
/// writes direct I/O takes), reopens, and checks what is left.
fn write_flush_reopen(dir: &Path, direct_io: bool) {
    let log = LogStore::open(dir).expect("open the log");
    assert_eq!(
        log.direct_io(),
        direct_io,
        "direct I/O in {}",
        dir.display()
    );
    let entries: Vec<_> = (1..=200).map(|i| (i, entry(i))).collect();
    log.append(&entries).unwrap();
    log.sync().unwrap();
    log.purge_to(100, "purged", b"100").unwrap();
    log.erase_purged(100).unwrap();
    drop(log);

    let log = LogStore::open(dir).expect("reopen the log");
    assert_eq!(log.first_index().unwrap(), Some(101));
    let kept = log.range(101, 201, usize::MAX).unwrap();
    assert_eq!(kept.len(), 100);
    for (index, bytes) in kept {
        assert_eq!(bytes, entry(index), "entry {index}");
    }
    assert_eq!(
        log.get_meta("purged").unwrap().as_deref(),
        Some(&b"100"[..])
    );
    let options = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("OPTIONS-")
        })
        .max()
        .expect("RocksDB's options file");
    let expected = format!("use_direct_io_for_flush_and_compaction={direct_io}");
    assert!(
        std::fs::read_to_string(&options)
            .unwrap()
            .lines()
            .any(|line| line.trim() == expected),
        "{} lacks {expected}",
        options.display()
    );
}

#[test]
fn a_log_on_a_filesystem_with_direct_io_flushes_with_it() {
    let dir = tempfile::tempdir().unwrap();
    write_flush_reopen(&dir.path().join("log"), true);
}

/// Unmounts the ramfs when the test ends, passed or not.
struct Mounted<'a>(&'a Path);

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        let _ = Process::new("umount").arg(self.0).status();
    }
}

#[test]
fn a_log_on_a_filesystem_without_direct_io_opens_with_buffered_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mounted = Process::new("mount")
        .args(["-t", "ramfs", "bulwark-test"])
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        // Mounting needs root (CAP_SYS_ADMIN); CI runs as root, so there it must run.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set and a ramfs could not be mounted on {}",
            dir.path().display()
        );
        eprintln!("skipped: mounting a ramfs needs root");
        return;
    }
    let _unmount = Mounted(dir.path());
    write_flush_reopen(&dir.path().join("log"), false);
}
