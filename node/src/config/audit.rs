//! The `[audit]` section: the event log's signed checkpoints and retention.

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
}

pub(super) fn validate_audit(a: RawAudit, problems: &mut Vec<String>) -> crate::audit::Settings {
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
    crate::audit::Settings {
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
