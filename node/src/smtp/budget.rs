//! A memory budget for message content: every session's content is held in memory
//! from the first line until the quorum commits it, so all sessions together may hold
//! at most `max_buffered_bytes`. A message that does not fit gets `452 4.3.1` (the
//! sender retries later) instead of the node running out of memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Reservations are taken in steps of this much, to keep the shared counter cold.
const STEP: u64 = 256 * 1024;

pub struct Budget {
    used: AtomicU64,
    max: u64,
}

impl Budget {
    pub fn new(max: u64) -> Arc<Budget> {
        Arc::new(Budget {
            used: AtomicU64::new(0),
            max,
        })
    }

    /// An empty reservation against this budget.
    pub fn reservation(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: self.clone(),
            bytes: 0,
        }
    }

    fn take(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.max)
            })
            .is_ok()
    }
}

/// Bytes reserved by one message; given back when dropped.
pub struct Reservation {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Reservation {
    /// Makes sure `total` bytes are reserved; false when the budget cannot cover them.
    pub fn cover(&mut self, total: u64) -> bool {
        if total <= self.bytes {
            return true;
        }
        let want = (total - self.bytes).max(STEP);
        if self.budget.take(want) {
            self.bytes += want;
            return true;
        }
        // Near the limit a whole step may not fit where the exact amount does.
        let exact = total - self.bytes;
        if exact < want && self.budget.take(exact) {
            self.bytes += exact;
            return true;
        }
        false
    }

    /// Gives everything back (the content was dropped).
    pub fn release(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
        self.bytes = 0;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_share_the_budget_and_give_it_back() {
        let budget = Budget::new(1_000_000);
        let mut a = budget.reservation();
        let mut b = budget.reservation();
        assert!(a.cover(600_000));
        assert!(!b.cover(500_000));
        assert!(b.cover(400_000));
        assert!(!b.cover(400_001));
        drop(a);
        assert!(b.cover(900_000));
        b.release();
        let mut c = budget.reservation();
        assert!(c.cover(1_000_000));
        assert!(!c.cover(1_000_001));
    }
}
