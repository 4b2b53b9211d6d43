//! The `[audit]` section: the event log's signed checkpoints and retention.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::retention_days;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    /// Seconds between signed checkpoints of the event chain (default 3600; 0: none).
    checkpoint_secs: Option<u64>,
    /// Days events are kept (fractions allowed); absent or 0: whatever their age.
    retention_days: Option<f64>,
    /// Most events kept; beyond it the oldest go (down to nine tenths of it).
    max_events: Option<u64>,
    /// Remove events a SIEM exporter has not shipped yet (default false).
    retention_ignores_exporters: Option<bool>,
    /// Seconds between runs of the retention (default 600).
    retention_check_secs: Option<u64>,
    /// The checkpoint signing key (Ed25519, PKCS#8), outside the data directory;
    /// created there at first start when missing.
    signing_key_file: Option<PathBuf>,
    /// The key `signing_key_file` replaces: it endorses the new key when that is
    /// first trusted (`audit.key_rotated`).
    previous_signing_key_file: Option<PathBuf>,
}

pub(super) fn validate_audit(
    a: RawAudit,
    base: &Path,
    data_dir: &Path,
    problems: &mut Vec<String>,
) -> crate::audit::Settings {
    let defaults = crate::audit::Settings::default();
    let days = a.retention_days.unwrap_or(0.0);
    let retention = retention_days(
        "audit.retention_days",
        days,
        "keep whatever the age",
        problems,
    );
    if a.max_events.is_some_and(|m| m < 10) {
        problems.push("audit.max_events must be at least 10".into());
    }
    let check_secs = a
        .retention_check_secs
        .unwrap_or(defaults.retention_check_every.as_secs());
    if check_secs == 0 {
        problems.push("audit.retention_check_secs must be positive".into());
    }
    let signing_key_file = a.signing_key_file.map(|p| base.join(p));
    if let Some(path) = &signing_key_file {
        if path.starts_with(data_dir) {
            problems.push(format!(
                "audit.signing_key_file ({}) must be outside the data directory: a key beside \
                 the log it signs lets whoever rewrites the log re-sign it",
                path.display()
            ));
        }
    }
    let previous_signing_key_file = a.previous_signing_key_file.map(|p| base.join(p));
    match (&previous_signing_key_file, &signing_key_file) {
        (Some(_), None) => problems.push(
            "audit.previous_signing_key_file needs audit.signing_key_file (the new key)".into(),
        ),
        (Some(previous), _) if !previous.is_file() => problems.push(format!(
            "audit.previous_signing_key_file ({}) is not a file",
            previous.display()
        )),
        (Some(previous), Some(current)) if previous == current => problems.push(
            "audit.previous_signing_key_file is audit.signing_key_file: nothing is rotated".into(),
        ),
        _ => {}
    }
    crate::audit::Settings {
        signing_key_file,
        previous_signing_key_file,
        checkpoint_every: match a.checkpoint_secs {
            Some(0) => None,
            Some(secs) => Some(Duration::from_secs(secs)),
            None => defaults.checkpoint_every,
        },
        retention,
        retention_days: days,
        max_events: a.max_events,
        retention_ignores_exporters: a.retention_ignores_exporters.unwrap_or(false),
        retention_check_every: Duration::from_secs(check_secs.max(1)),
    }
}
