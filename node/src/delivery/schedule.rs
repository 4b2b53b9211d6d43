//! When a deferred recipient is tried again, and when it has waited long enough.

use std::time::Duration;

use bulwark_model::{QueueEntry, RecipientOutcome};

use super::Settings;

/// The outcome of a temporary failure for a recipient that has had `attempts`
/// attempts before this one: retry later, or fail once the message is older than
/// `max_age` (Postfix's defaults: from 5 minutes, doubling, for 5 days).
pub fn deferred(
    settings: &Settings,
    entry: &QueueEntry,
    attempts: u32,
    now_ms: i64,
) -> RecipientOutcome {
    let age = Duration::from_millis(now_ms.saturating_sub(entry.time_ms).max(0) as u64);
    if age >= settings.max_age {
        return RecipientOutcome::Failed;
    }
    let delay = settings
        .retry_initial
        .saturating_mul(1u32 << attempts.min(20))
        .min(settings.retry_max);
    RecipientOutcome::Deferred {
        next_attempt_ms: now_ms.saturating_add(delay.as_millis() as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::{Route, Routes};
    use bulwark_model::{Action, MessageId};

    fn settings() -> Settings {
        Settings {
            routes: Routes {
                default: Route::Maildir("delivered".into()),
                domains: Vec::new(),
            },
            max_connections_per_destination: 20,
            connection_cache: Duration::from_secs(5),
            hostname: "mx.test".into(),
            concurrency: 1,
            lease: Duration::from_secs(30),
            takeover_after: Duration::from_secs(20),
            retry_initial: Duration::from_secs(300),
            retry_max: Duration::from_secs(4000),
            max_age: Duration::from_secs(5 * 86400),
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            poll: Duration::from_secs(1),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum_then_gives_up() {
        let entry = QueueEntry {
            message_id: MessageId(1),
            received_seq: 1,
            time_ms: 0,
            mail_from: String::new(),
            recipients: vec![],
            eight_bit: false,
            smtputf8: false,
            action: Action::Deliver,
            score: 0.0,
            received_by: 1,
            lease: None,
        };
        let s = settings();
        let next = |attempts, now| match deferred(&s, &entry, attempts, now) {
            RecipientOutcome::Deferred { next_attempt_ms } => Some(next_attempt_ms - now),
            _ => None,
        };
        assert_eq!(next(0, 1000), Some(300_000));
        assert_eq!(next(1, 1000), Some(600_000));
        assert_eq!(next(3, 1000), Some(2_400_000));
        assert_eq!(next(4, 1000), Some(4_000_000));
        assert_eq!(next(40, 1000), Some(4_000_000));
        assert_eq!(next(9, 5 * 86_400_000), None);
    }
}
