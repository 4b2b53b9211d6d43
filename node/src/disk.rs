//! Free space on the data directory's file system, watched so that the node stops
//! taking mail before the disk is full (Postfix's `queue_minfree`): a message it
//! accepts must be written by Raft on every node, and a node that cannot write stops
//! its Raft. Below `[smtp] min_free_disk_mb`, MAIL gets `452 4.3.1` and the sender
//! tries another node or later; the node keeps replicating what the others accept.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;

/// How often the free space is read.
const EVERY: Duration = Duration::from_secs(1);

/// The data directory's free space as last read, and the floor for taking mail.
pub struct DiskSpace {
    path: PathBuf,
    min_free: u64,
    free: AtomicU64,
    gauge: Gauge<i64, std::sync::atomic::AtomicI64>,
}

impl DiskSpace {
    /// Reads the free space under `path` once, so the first session already sees it.
    pub fn new(path: &Path, min_free: u64) -> Arc<Self> {
        let disk = Arc::new(DiskSpace {
            path: path.to_path_buf(),
            min_free,
            free: AtomicU64::new(u64::MAX),
            gauge: Gauge::default(),
        });
        if let Ok(st) = rustix::fs::statvfs(path) {
            let size = st.f_blocks.saturating_mul(st.f_frsize);
            if size < min_free {
                tracing::error!(
                    size_mb = size >> 20,
                    min_free_mb = min_free >> 20,
                    path = %path.display(),
                    "the data directory's file system is smaller than smtp.min_free_disk_mb: \
                     this node will refuse all mail"
                );
            }
        }
        disk.refresh();
        disk
    }

    /// Bytes available to the node, as last read.
    pub fn free(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    pub fn min_free(&self) -> u64 {
        self.min_free
    }

    /// Whether a message of `size` octets (0: not announced) leaves at least the
    /// floor free.
    pub fn has_room_for(&self, size: u64) -> bool {
        self.free().saturating_sub(size) >= self.min_free
    }

    fn refresh(&self) {
        match rustix::fs::statvfs(&self.path) {
            Ok(st) => {
                let free = st.f_bavail.saturating_mul(st.f_frsize);
                let was = self.free.swap(free, Ordering::Relaxed);
                self.gauge.set(i64::try_from(free).unwrap_or(i64::MAX));
                let (low, was_low) = (free < self.min_free, was < self.min_free);
                if low && !was_low {
                    tracing::error!(
                        free_mb = free >> 20,
                        min_free_mb = self.min_free >> 20,
                        path = %self.path.display(),
                        "disk space below smtp.min_free_disk_mb: refusing mail with 452 until there is room"
                    );
                } else if was_low && !low {
                    tracing::info!(
                        free_mb = free >> 20,
                        "disk space back above the floor: taking mail"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "reading free disk space")
            }
        }
    }

    /// Reads the free space every second until `stop` (off the runtime's threads: on
    /// a network file system the call can block).
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    let disk = self.clone();
                    let _ = tokio::task::spawn_blocking(move || disk.refresh()).await;
                }
            }
        }
    }

    /// Adds `bulwark_disk_free_bytes` to `registry`.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "bulwark_disk_free_bytes",
            "Bytes free for the node on its data directory's file system",
            self.gauge.clone(),
        );
    }
}
