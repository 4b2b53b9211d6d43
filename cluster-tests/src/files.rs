//! Searching a node's files byte for byte: what erasure tests use to show that a
//! message body is (or is no longer) anywhere on disk.

use std::fs;
use std::path::{Path, PathBuf};

/// Every file under `dir` (recursively, symbolic links not followed) holding `needle`
/// anywhere in its bytes, each file read whole. A file deleted during the walk (by
/// RocksDB in a running node) is skipped.
pub fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            found.extend(files_holding(&path, needle));
        } else if kind.is_file() {
            if let Ok(bytes) = fs::read(&path) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(path);
                }
            }
        }
    }
    found
}
