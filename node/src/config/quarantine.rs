//! The `[quarantine]` section: how long held messages are kept, and how soon a
//! deleted or expired one is erased from disk.

use std::time::Duration;

use serde::Deserialize;

use super::retention_days;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQuarantine {
    /// Days a quarantined message is kept (fractions allowed); 0: until someone acts.
    retention_days: Option<f64>,
    /// How often the leader looks for messages past the retention, in seconds.
    check_secs: Option<u64>,
    /// Seconds within which a deleted or expired message's body is gone from every
    /// file of each node's data directory (state, Raft log, snapshots).
    erase_within_secs: Option<u64>,
}

/// The shortest erasure bound: each node looks for bodies to erase every eighth of
/// it, and gives one erasure a third of it (a snapshot, a purge and two compactions).
const MIN_ERASE_SECS: u64 = 2;
const MAX_ERASE_SECS: u64 = 30 * 86_400;

pub(super) fn validate_quarantine(
    q: RawQuarantine,
    problems: &mut Vec<String>,
) -> crate::quarantine::Settings {
    let defaults = crate::quarantine::Settings::default();
    let days = q.retention_days.unwrap_or(defaults.retention_days);
    let retention = retention_days(
        "quarantine.retention_days",
        days,
        "keep until someone acts",
        problems,
    );
    let check_secs = q.check_secs.unwrap_or(defaults.check_every.as_secs());
    if check_secs == 0 {
        problems.push("quarantine.check_secs must be positive".into());
    }
    let erase_secs = q
        .erase_within_secs
        .unwrap_or(defaults.erase_within.as_secs());
    if !(MIN_ERASE_SECS..=MAX_ERASE_SECS).contains(&erase_secs) {
        problems.push(format!(
            "quarantine.erase_within_secs must be {MIN_ERASE_SECS} to {MAX_ERASE_SECS} \
             (30 days), not {erase_secs}"
        ));
    }
    crate::quarantine::Settings {
        retention,
        retention_days: days,
        check_every: Duration::from_secs(check_secs.max(1)),
        erase_within: Duration::from_secs(erase_secs.clamp(MIN_ERASE_SECS, MAX_ERASE_SECS)),
    }
}
