//! A small file system for one node's data directory, to fill on purpose: a tmpfs of
//! a few megabytes mounted over the directory (the test runs as root, as CI does).
//! Filler files take its space away and give it back. Dropping it unmounts (lazily,
//! so a node still running there does not keep it mounted).

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rustix::mount::{mount, unmount, MountFlags, UnmountFlags};

/// A tmpfs mounted over a directory.
pub struct SmallDisk {
    root: PathBuf,
    fillers: Vec<PathBuf>,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size_mb` megabytes over `dir`, keeping what `dir` held (it is
    /// copied onto the new file system). `Ok(None)`: mounting is not permitted here.
    pub fn mount_over(dir: &Path, size_mb: u64) -> Result<Option<SmallDisk>> {
        let saved = dir.with_extension("before-mount");
        fs::rename(dir, &saved).with_context(|| format!("moving {} aside", dir.display()))?;
        fs::create_dir_all(dir)?;
        let options = CString::new(format!("size={size_mb}m,mode=0700"))?;
        match mount(
            "tmpfs",
            dir,
            "tmpfs",
            MountFlags::empty(),
            options.as_c_str(),
        ) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::PERM || e == rustix::io::Errno::ACCESS => {
                fs::remove_dir(dir)?;
                fs::rename(&saved, dir)?;
                return Ok(None);
            }
            Err(e) => return Err(e).context(format!("mounting a tmpfs on {}", dir.display())),
        }
        let disk = SmallDisk {
            root: dir.to_path_buf(),
            fillers: Vec::new(),
        };
        copy_tree(&saved, dir).context("copying the data onto the tmpfs")?;
        fs::remove_dir_all(&saved)?;
        Ok(Some(disk))
    }

    /// Bytes free for an unprivileged writer.
    pub fn free(&self) -> Result<u64> {
        let st = rustix::fs::statvfs(&self.root)?;
        Ok(st.f_bavail * st.f_frsize)
    }

    /// Writes a filler file so that about `leave` bytes stay free (none if `leave` is
    /// zero: it writes until the file system refuses).
    pub fn fill_leaving(&mut self, leave: u64) -> Result<()> {
        let path = self.root.join(format!("filler-{}", self.fillers.len()));
        let mut file = File::create(&path)?;
        self.fillers.push(path);
        let chunk = vec![0x5a_u8; 1 << 20];
        loop {
            let free = self.free()?;
            if free <= leave {
                break;
            }
            let n = (free - leave).min(chunk.len() as u64) as usize;
            match file.write_all(&chunk[..n]) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) => {
                    break
                }
                Err(e) => return Err(e).context("writing a filler file"),
            }
        }
        // What did not fit in the last write may sit in no block at all: flush it.
        match file.sync_all() {
            Err(e) if e.raw_os_error() != Some(rustix::io::Errno::NOSPC.raw_os_error()) => {
                Err(e).context("syncing a filler file")
            }
            _ => Ok(()),
        }
    }

    /// Removes every filler file.
    pub fn clear(&mut self) -> Result<()> {
        for path in self.fillers.drain(..) {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        Ok(())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        if let Err(e) = unmount(&self.root, UnmountFlags::DETACH) {
            eprintln!("unmounting the tmpfs on {}: {e}", self.root.display());
        }
    }
}

fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            fs::create_dir_all(&target)?;
            copy_tree(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
