//! Local delivery into a Maildir (the embedded default): the message is written and
//! fsynced under `tmp/`, then renamed into `new/`, so a reader never sees half of it.

use std::fs;
use std::io::Write;
use std::path::Path;

use bulwark_model::MessageId;

/// Writes `parts` (concatenated) as one message into the Maildir at `root`.
pub fn deliver(
    root: &Path,
    id: MessageId,
    time_ms: i64,
    parts: &[&[u8]],
) -> std::io::Result<String> {
    for sub in ["tmp", "new", "cur"] {
        fs::create_dir_all(root.join(sub))?;
    }
    // Unique per message: a redelivery of the same message replaces its file.
    let name = format!("{}.{id}.bulwark", time_ms / 1000);
    let tmp = root.join("tmp").join(&name);
    let mut file = fs::File::create(&tmp)?;
    for part in parts {
        file.write_all(part)?;
    }
    file.sync_all()?;
    drop(file);
    let new = root.join("new").join(&name);
    fs::rename(&tmp, &new)?;
    fs::File::open(root.join("new"))?.sync_all()?;
    Ok(new.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_appear_whole_in_new() {
        let dir = tempfile::tempdir().unwrap();
        let path = deliver(
            dir.path(),
            MessageId(7),
            1_764_300_000_000,
            &[b"A: b\r\n", b"\r\nhi\r\n"],
        )
        .unwrap();
        assert!(path.contains("/new/"));
        assert_eq!(fs::read(&path).unwrap(), b"A: b\r\n\r\nhi\r\n");
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
