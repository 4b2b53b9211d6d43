//! The state database after a crash, in a real process killed mid-run: applied batches
//! skip the WAL, so what a crash keeps is the state of the last flush, an applied
//! prefix whose applied-state record says which, and Raft applies the rest again.

use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use bulwark_storage::feature::{BASE, LEVELS};
use bulwark_storage::{Command, EventKind, Op, StateDir};

/// Set in the child: the directory it writes and then crashes in. The child runs
/// only the test that started it, which then writes instead of checking.
const CRASH_DIR: &str = "BULWARK_TEST_CRASH_DIR";

fn note(id: u128) -> Op {
    Op {
        id,
        time_ms: 1_700_000_000_000 + id as i64,
        node: 1,
        command: Command::Record(EventKind::AuditNote {
            author: "admin".into(),
            text: format!("note {id}"),
        }),
    }
}

fn notes(ids: std::ops::RangeInclusive<u128>) -> Vec<Op> {
    ids.map(note).collect()
}

/// The child's run: ten notes applied and flushed by a checkpoint, ten more applied,
/// then the process aborts (no destructor runs, so RocksDB is never closed).
fn write_then_crash(dir: &Path) -> ! {
    let state = StateDir::open(dir).expect("open");
    let store = state.current();
    store
        .apply(&[(1, &notes(1..=10)[..])], b"through 1")
        .unwrap();
    store.checkpoint(&dir.join("cp")).unwrap();
    store
        .apply(&[(2, &notes(11..=20)[..])], b"through 2")
        .unwrap();
    assert_eq!(store.chain_head().0, 20);
    std::process::abort();
}

/// The child's run: the feature level raised, then the process aborts.
fn raise_then_crash(dir: &Path) -> ! {
    let state = StateDir::open(dir).expect("open");
    let raise = Op {
        id: 1,
        time_ms: 1_700_000_000_000,
        node: 1,
        command: Command::RaiseFeatureLevel { level: LEVELS },
    };
    state
        .current()
        .apply(&[(1, &[raise][..])], b"raised")
        .unwrap();
    std::process::abort();
}

/// The state directory test `name` left after crashing: in the child (run by the
/// test itself, `CRASH_DIR` set), `write` writes there and aborts; in the test, the
/// child is started and must die, and its directory (kept by the returned guard) is
/// handed back to be checked.
fn crashed(name: &str, write: fn(&Path) -> !) -> (tempfile::TempDir, PathBuf) {
    if let Some(dir) = std::env::var_os(CRASH_DIR) {
        write(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("state");
    let status = Process::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--test-threads=1"])
        .env(CRASH_DIR, &root)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child was meant to crash: {status}");
    (dir, root)
}

#[test]
fn a_crash_keeps_the_state_of_the_last_flush_and_the_rest_applies_again() {
    let (_dir, root) = crashed(
        "a_crash_keeps_the_state_of_the_last_flush_and_the_rest_applies_again",
        write_then_crash,
    );

    let state = StateDir::open(&root).unwrap();
    let store = state.current();
    // The second batch was in the memtables only: gone with the process, and its
    // applied-state record with it.
    assert_eq!(store.chain_head().0, 10);
    assert_eq!(store.applied().unwrap().unwrap(), b"through 1");
    let report = store.verify().unwrap();
    assert!(report.ok && report.checked == 10, "{report:?}");
    // Raft hands the entries after that record again: they apply as the first time.
    let results = store
        .apply(&[(2, &notes(11..=20)[..])], b"through 2")
        .unwrap();
    assert!(results[0].iter().all(|r| !r.duplicate));
    assert_eq!(store.chain_head().0, 20);
    assert!(store.verify().unwrap().ok);
    drop(store);
    drop(state);
    // Closed cleanly, the state is flushed whole.
    let reopened = StateDir::open(&root).unwrap();
    assert_eq!(reopened.current().chain_head().0, 20);
    assert_eq!(reopened.current().applied().unwrap().unwrap(), b"through 2");
}

#[test]
fn a_raised_feature_level_is_on_disk_before_anything_can_crash() {
    let (_dir, root) = crashed(
        "a_raised_feature_level_is_on_disk_before_anything_can_crash",
        raise_then_crash,
    );
    // What an older release reads at start to refuse a cluster it cannot follow.
    let state = StateDir::open(&root).unwrap();
    const { assert!(LEVELS > BASE) };
    assert_eq!(state.current().feature_level(), LEVELS);
    assert_eq!(state.current().applied().unwrap().unwrap(), b"raised");
}
