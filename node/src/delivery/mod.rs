//! Delivery: accepted mail leaves the replicated queue for the next hop, one node at
//! a time per message.
//!
//! ```text
//! worker.rs    finds due messages, takes a lease through Raft (or starts one
//!              leased with its acceptance), renews it while sending, reports the
//!              outcome through Raft
//! backlog.rs   flow control: new mail transactions wait while delivery is behind;
//!              each message queued wakes the worker, handed over with its lease
//!              while delivery keeps up
//! route.rs     which next hop a recipient's domain goes to, with what TLS policy
//! client.rs    the SMTP client to the next hop (RFC 5321): STARTTLS, PIPELINING,
//!              per-recipient results
//! pool.rs      connections kept for the next message; a limit per destination
//! maildir.rs   the embedded default's local delivery (tmp/ then new/)
//! schedule.rs  when a deferred recipient is tried again, and when to give up
//! dsn.rs       the delivery status notification to the sender of failed mail
//! ```

mod backlog;
mod client;
pub(crate) mod dsn;
mod maildir;
mod mx;
mod pool;
mod route;
mod schedule;
mod worker;

use std::time::Duration;

pub use backlog::{Admission, Backlog, Handed};
pub use route::{Mx, Relay, Route, Routes, TlsPolicy};
pub use worker::Worker;

/// The validated `[delivery]` section.
#[derive(Clone, Debug)]
pub struct Settings {
    pub routes: Routes,
    /// Our name in EHLO.
    pub hostname: String,
    /// Deliveries in progress at once on this node.
    pub concurrency: usize,
    /// How long a lease lasts, by monotonic clocks: this node sends under a lease for
    /// nine tenths of it from when it asked, renewing it every quarter; another node
    /// takes the lease over once it has seen it unrenewed for all of it.
    pub lease: Duration,
    /// How long another node waits before delivering a message its accepting node
    /// has not delivered (that node may be down).
    pub takeover_after: Duration,
    /// First retry delay after a 4xx; doubles with each attempt up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// A recipient still deferred this long after acceptance fails for good.
    pub max_age: Duration,
    /// Connecting to the next hop.
    pub connect_timeout: Duration,
    /// Each command's reply (RFC 5321 §4.5.3.2: 5 minutes).
    pub command_timeout: Duration,
    /// The reply to the end of data (RFC 5321 §4.5.3.2: 10 minutes).
    pub data_timeout: Duration,
    /// Connections open at once from this node to one next hop.
    pub max_connections_per_destination: usize,
    /// How long a connection to a next hop stays open, unused, for the next
    /// message; zero: one message per connection.
    pub connection_cache: Duration,
    /// How often the queue is scanned for due messages.
    pub poll: Duration,
}
