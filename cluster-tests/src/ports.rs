//! Loopback ports for the processes under test.
//!
//! A port the kernel hands out for `bind(0)` comes from the ephemeral range, the same
//! range it picks from for the source port of every outgoing connection. Released and
//! handed to a node a moment later, such a port can meanwhile be the source of some
//! other connection on the machine, and the node fails with "Address already in use".
//! So ports are picked below the ephemeral range, where no outgoing connection lands,
//! walking from an offset derived from the process id (so that test binaries running
//! side by side start far apart) and never handing out the same port twice in one
//! process. A candidate is kept only if it can be bound right now.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port handed out: above the registered services tests might meet.
const LOWEST: u16 = 10_000;

/// Where the kernel's ephemeral range starts (Linux' default when it cannot be read).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .filter(|&low: &u16| low > LOWEST + 1_000)
        .unwrap_or(32_768)
}

/// Candidates tried in this process so far.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A loopback TCP port that is free now and outside the ephemeral range.
///
/// # Panics
/// When every port of the range is taken, which only a machine out of ports sees.
pub fn free() -> u16 {
    let span = u32::from(ephemeral_start() - LOWEST);
    let offset = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = LOWEST + u16::try_from((offset + n) % span).expect("below the span");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port below the ephemeral range");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..50).map(|_| free()).collect();
        let mut seen = ports.clone();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), ports.len(), "{ports:?}");
        for port in ports {
            assert!((LOWEST..ephemeral_start()).contains(&port), "{port}");
            TcpListener::bind(("127.0.0.1", port)).unwrap();
        }
    }
}
