//! Reads on record (`access.read`): who read which message's preview, raw body or
//! trace, and who searched or exported the log or the quarantine, from where and why.
//!
//! A read is committed before its answer is sent: a read that could not be recorded
//! (no quorum) is refused with 503, never served unrecorded. Reads of the same thing
//! by the same caller for the same reason within [`WINDOW`] are one record, so a
//! console that refreshes or a SIEM that polls does not write an event per request;
//! concurrent records share Raft entries through the proposer's group commit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bulwark_storage::{AccessRead, Command, EventKind, MessageId, ReadKind};
use serde::Deserialize;

use crate::auth::Caller;
use crate::routes::ApiState;
use crate::ApiError;

/// Repeats of one read within this window are covered by its first record.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);
/// Reads remembered at most; beyond it the oldest are forgotten (and so recorded
/// again when repeated), which bounds the memory a flood of distinct reads takes.
const REMEMBERED: usize = 10_000;
/// Longest `reason` accepted with a read.
const MAX_REASON: usize = 1024;

/// The `?reason=` every recorded read takes.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ReadReason {
    /// Why the caller reads this (recorded with the read, at most 1024 bytes).
    #[param(max_length = 1024)]
    pub reason: Option<String>,
}

impl ReadReason {
    pub(crate) fn checked(self) -> Result<Option<String>, ApiError> {
        match self.reason {
            Some(r) if r.len() > MAX_REASON => Err(ApiError::bad_request(format!(
                "reason is {} bytes, at most {MAX_REASON} allowed",
                r.len()
            ))),
            Some(r) if r.trim().is_empty() => Ok(None),
            reason => Ok(reason),
        }
    }
}

/// One read, as recorded.
pub(crate) struct Read {
    pub kind: ReadKind,
    pub message_id: Option<MessageId>,
    pub reason: Option<String>,
    /// The filters of a search or an export, in a stable order, without the cursor.
    pub query: Option<String>,
}

/// What two reads have in common when one covers the other.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    user: String,
    client_ip: Option<IpAddr>,
    kind: &'static str,
    message_id: Option<MessageId>,
    reason: Option<String>,
    query: Option<String>,
}

/// The reads this node recorded within the window.
#[derive(Default)]
pub struct ReadLog {
    recent: Mutex<HashMap<Key, Instant>>,
}

impl ReadLog {
    /// True when `key` was recorded within the window before `now`.
    fn covers(&self, key: &Key, now: Instant) -> bool {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent
            .get(key)
            .is_some_and(|at| now.duration_since(*at) < WINDOW)
    }

    /// Notes that `key` was recorded at `now`.
    fn remember(&self, key: Key, now: Instant) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() >= REMEMBERED {
            recent.retain(|_, at| now.duration_since(*at) < WINDOW);
            if recent.len() >= REMEMBERED {
                let oldest = recent
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    recent.remove(&oldest);
                }
            }
        }
        recent.insert(key, now);
    }
}

impl ApiState {
    /// Records `read` by `caller` before its answer goes out, unless the same read
    /// was recorded within the window. Err (503 without a quorum): not recorded, so
    /// not to be served.
    pub(crate) async fn record_read(
        &self,
        caller: &Caller,
        client_ip: Option<IpAddr>,
        read: Read,
    ) -> Result<(), ApiError> {
        let key = Key {
            user: caller.name.clone(),
            client_ip,
            kind: read.kind.as_str(),
            message_id: read.message_id,
            reason: read.reason.clone(),
            query: read.query.clone(),
        };
        if self.reads.covers(&key, Instant::now()) {
            return Ok(());
        }
        let command = Command::Record(EventKind::AccessRead(Box::new(AccessRead {
            kind: read.kind,
            message_id: read.message_id,
            user: caller.name.clone(),
            client_ip,
            reason: read.reason,
            query: read.query,
        })));
        self.node.proposer().propose(command).await?;
        self.reads.remember(key, Instant::now());
        Ok(())
    }
}

/// The filters of a search or an export as one stable string (`name=value&...` in
/// the order given, empty values left out), or `None` when there are none.
pub(crate) fn query(filters: &[(&str, Option<&str>)]) -> Option<String> {
    let parts: Vec<String> = filters
        .iter()
        .filter_map(|(name, value)| value.map(|v| format!("{name}={v}")))
        .collect();
    (!parts.is_empty()).then(|| parts.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(user: &str) -> Key {
        Key {
            user: user.into(),
            client_ip: None,
            kind: "raw",
            message_id: None,
            reason: None,
            query: None,
        }
    }

    #[test]
    fn a_repeat_within_the_window_is_covered_and_after_it_recorded_again() {
        let log = ReadLog::default();
        let start = Instant::now();
        assert!(!log.covers(&key("alice"), start));
        log.remember(key("alice"), start);
        assert!(log.covers(&key("alice"), start + Duration::from_secs(59)));
        assert!(!log.covers(&key("bob"), start + Duration::from_secs(1)));
        assert!(!log.covers(&key("alice"), start + WINDOW + Duration::from_secs(1)));
    }

    #[test]
    fn the_memory_of_reads_is_bounded() {
        let log = ReadLog::default();
        let start = Instant::now();
        for i in 0..REMEMBERED + 10 {
            log.remember(key(&format!("user{i}")), start);
        }
        assert!(log.recent.lock().unwrap().len() <= REMEMBERED);
    }

    #[test]
    fn a_query_keeps_the_filters_given_in_order() {
        assert_eq!(query(&[("sender", None), ("recipient", None)]), None);
        assert_eq!(
            query(&[
                ("sender", Some("a@x.test")),
                ("type", None),
                ("since", Some("2026"))
            ]),
            Some("sender=a@x.test&since=2026".into())
        );
    }
}
