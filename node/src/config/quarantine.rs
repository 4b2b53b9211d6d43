//! The `[quarantine]` section: how long held messages are kept.

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
}

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
    crate::quarantine::Settings {
        retention,
        retention_days: days,
        check_every: Duration::from_secs(check_secs.max(1)),
    }
}
