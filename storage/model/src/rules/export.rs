//! An exporter's progress through the log: its cursor (the last seq its receiver
//! accepted, or that it gave up on) and the number of records it has shipped, which
//! gives each record it ships its `export.seq`.
//!
//! Both only move forward, together: a progress at or behind the cursor (a batch a
//! former leader shipped again, a proposal applied twice) changes nothing and records
//! nothing, so a dead letter is recorded once however often it was proposed.

use crate::event::{EventKind, ExportProgress};

/// Where an exporter stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportPosition {
    /// The last seq of the log the exporter is done with.
    pub seq: u64,
    /// Records it has shipped (numbered 1 to `shipped`).
    pub shipped: u64,
}

/// What `progress` does to an exporter standing at `current` in a log whose last
/// event is `log_end`: its new position (`None`: unchanged) and the events to record.
pub fn advance(
    current: ExportPosition,
    progress: &ExportProgress,
    log_end: u64,
) -> (Option<ExportPosition>, Vec<EventKind>) {
    let seq = progress.seq.min(log_end);
    if seq <= current.seq {
        return (None, Vec::new());
    }
    let moved = ExportPosition {
        seq,
        shipped: progress.shipped.max(current.shipped),
    };
    let events = progress
        .dead_letter
        .clone()
        .map(|d| EventKind::ExportDeadLettered(Box::new(d)))
        .into_iter()
        .collect();
    (Some(moved), events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ExportDeadLetter;

    fn progress(seq: u64, shipped: u64, dead: bool) -> ExportProgress {
        ExportProgress {
            exporter: "soc".into(),
            seq,
            shipped,
            dead_letter: dead.then(|| ExportDeadLetter {
                exporter: "soc".into(),
                first_seq: 4,
                last_seq: seq,
                events: 2,
                tries: 5,
                error: "400 Bad Request".into(),
            }),
        }
    }

    #[test]
    fn progress_moves_forward_once_and_records_its_dead_letter_once() {
        let start = ExportPosition { seq: 3, shipped: 2 };
        let (moved, events) = advance(start, &progress(9, 4, true), 20);
        let moved = moved.expect("forward");
        assert_eq!(moved, ExportPosition { seq: 9, shipped: 4 });
        assert!(matches!(&events[..], [EventKind::ExportDeadLettered(d)] if d.tries == 5));
        // The same proposal again, or one a former leader sent late: nothing.
        assert_eq!(advance(moved, &progress(9, 4, true), 20), (None, vec![]));
        assert_eq!(advance(moved, &progress(5, 3, false), 20), (None, vec![]));
        // Never past the log's end, never a smaller count.
        let (clamped, events) = advance(moved, &progress(99, 3, false), 12);
        assert_eq!(
            clamped,
            Some(ExportPosition {
                seq: 12,
                shipped: 4
            })
        );
        assert!(events.is_empty());
        assert_eq!(advance(moved, &progress(99, 9, false), 9), (None, vec![]));
    }
}
