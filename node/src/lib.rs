//! The `bulwark` binary's crate: configuration, the SMTP ingress, the scanning
//! pipeline and its policy, delivery, and the wiring of storage, consensus and the
//! API into a running node. `main.rs` is the command line; this library is what it
//! runs, and what the benchmarks, the corpus evaluation and the fuzz targets call.
#![forbid(unsafe_code)]

pub mod audit;
pub mod cert;
pub mod config;
pub mod delivery;
pub mod disk;
pub mod dns;
pub mod logging;
pub mod mail;
pub mod maillog;
pub mod ops;
pub mod policy;
pub mod proc_stats;
pub mod quarantine;
pub mod scan;
pub mod serve;
pub mod siem;
pub mod smtp;
pub mod tls;

/// The wall clock in Unix milliseconds, as events record time (a test may set it
/// off: see [`bulwark_consensus::clock`]).
pub(crate) fn now_ms() -> i64 {
    bulwark_consensus::clock::now_ms()
}
