//! The wall clock every time a node stamps is read from: operations' times (so
//! events' times), delivery schedules, the queue's and the quarantine's ages.
//!
//! A test may set the clock of one process off by a fixed amount
//! ([`set_test_offset`], from `BULWARK_TEST_CLOCK_OFFSET_MS` in `bulwark serve`) to
//! play a node whose clock runs ahead or behind; everything that reads wall time for
//! the replicated state goes through [`now_ms`], so the whole node then runs on the
//! skewed clock, as a host with a wrong clock would. Never set in production.
//!
//! Nothing that keeps two nodes from delivering the same message at once depends on
//! this clock: delivery leases are timed by each node's monotonic clock (see
//! `bulwark_model::DeliveryCommand::Claim`).

use std::sync::atomic::{AtomicI64, Ordering};

/// Milliseconds added to the system's wall clock; zero unless a test set it.
static TEST_OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// The wall clock in Unix milliseconds, as operations and events record time.
pub fn now_ms() -> i64 {
    let system = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    system.saturating_add(TEST_OFFSET_MS.load(Ordering::Relaxed))
}

/// Test only: runs this process's wall clock `offset_ms` ahead (negative: behind)
/// of the system's.
pub fn set_test_offset(offset_ms: i64) {
    TEST_OFFSET_MS.store(offset_ms, Ordering::Relaxed);
}
