//! The session table: every connection holds a place in it from accept to close.
//!
//! It enforces the limits on sessions in total, per client address and per client
//! network (/24 for IPv4, /64 for IPv6), so that idle connections cannot lock out a
//! client that speaks:
//!
//! - a connection arriving at a full table takes the place of the session that has
//!   waited longest for a command without a transaction open, once that wait is at
//!   least `shed_idle_after` (the shed session hears `421 4.7.0`); only when no
//!   session is idle that long is the newcomer refused. It is promised that place
//!   until its client is known (after the PROXY header, if any) and takes it only
//!   then, once within its address's and network's limits: a newcomer over them is
//!   refused without shedding anyone;
//! - the time allowed for a command shortens as the table fills (Postfix's
//!   stress-adaptive `smtpd_timeout`): the full `command_timeout` up to half full,
//!   `stress_timeout` from nine tenths full, linearly in between.
//!
//! To ensure correctness: a session is shed only while it is marked waiting, and it
//! marks itself busy under the same lock before acting on a command, so a session
//! is never shed in the middle of a transaction; a session is shed only for a
//! newcomer whose limits were checked under the same lock; a place and a promise are
//! each given back exactly once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;

use super::Settings;

pub struct Table {
    inner: Mutex<Inner>,
    max: usize,
    max_per_ip: usize,
    max_per_network: usize,
    shed_idle_after: Duration,
    command_timeout: Duration,
    stress_timeout: Duration,
    /// Idle sessions shed to make room since start.
    pub shed: Counter,
    /// The time allowed for a command now, in seconds.
    pub timeout_now: Gauge<f64, AtomicU64>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    places: HashMap<u64, Place>,
    per_ip: HashMap<IpAddr, usize>,
    per_network: HashMap<IpNet, usize>,
    /// Newcomers at a full table promised an idle session's place, not yet taking it.
    promised: usize,
}

struct Place {
    /// Since when it waits for a command without a transaction; `None` while busy.
    waiting_since: Option<Instant>,
    shed: CancellationToken,
}

/// Why a connection was refused.
pub enum Refusal {
    /// Its address holds `max_sessions_per_ip` sessions.
    Address,
    /// Its network holds `max_sessions_per_network` sessions.
    Network(IpNet),
    /// The table is full and no session has idled long enough to be shed.
    Full,
}

impl Table {
    pub fn new(settings: &Settings) -> Arc<Table> {
        let table = Table {
            inner: Mutex::new(Inner::default()),
            max: settings.max_sessions,
            max_per_ip: settings.max_sessions_per_ip,
            max_per_network: settings.max_sessions_per_network,
            shed_idle_after: settings.shed_idle_after,
            command_timeout: settings.command_timeout,
            stress_timeout: settings.stress_timeout,
            shed: Counter::default(),
            timeout_now: Gauge::default(),
        };
        table
            .timeout_now
            .set(settings.command_timeout.as_secs_f64());
        Arc::new(table)
    }

    /// A place for a new connection: a free one, or at a full table the promise of
    /// the place of a session idle long enough to be shed, kept by [`Seat::claim`]
    /// once the client is known; `None` when the table is full of sessions that are
    /// busy or idle briefly, or of as many promises as there are such places.
    pub fn admit(self: &Arc<Self>) -> Option<Seat> {
        let mut inner = self.inner.lock().expect("session table lock");
        inner.next += 1;
        let id = inner.next;
        let shed = CancellationToken::new();
        let promised = inner.places.len() >= self.max;
        if promised {
            let now = Instant::now();
            let sheddable = inner
                .places
                .values()
                .filter_map(|place| place.waiting_since)
                .filter(|since| now.duration_since(*since) >= self.shed_idle_after)
                .count();
            if inner.promised >= sheddable {
                return None;
            }
            inner.promised += 1;
        } else {
            self.place(&mut inner, id, shed.clone());
        }
        Some(Seat {
            table: self.clone(),
            id,
            shed,
            client: None,
            promised,
        })
    }

    /// Takes place `id` in the table.
    fn place(&self, inner: &mut Inner, id: u64, shed: CancellationToken) {
        inner.places.insert(
            id,
            Place {
                waiting_since: Some(Instant::now()),
                shed,
            },
        );
        self.update_timeout(inner.places.len());
    }

    /// Sheds the session that has waited longest for a command, at least
    /// `shed_idle_after`; false when none has.
    fn shed_longest_idle(&self, inner: &mut Inner) -> bool {
        let now = Instant::now();
        let oldest = inner
            .places
            .iter()
            .filter_map(|(id, place)| Some((*id, place.waiting_since?)))
            .filter(|(_, since)| now.duration_since(*since) >= self.shed_idle_after)
            .min_by_key(|(_, since)| *since);
        let Some(place) = oldest.and_then(|(id, _)| inner.places.remove(&id)) else {
            return false;
        };
        place.shed.cancel();
        self.shed.inc();
        true
    }

    /// The time allowed for one command with the table as full as it is now.
    pub fn command_timeout(&self) -> Duration {
        let open = self.inner.lock().expect("session table lock").places.len();
        under_pressure(self.command_timeout, self.stress_timeout, open, self.max)
    }

    fn update_timeout(&self, open: usize) {
        let timeout = under_pressure(self.command_timeout, self.stress_timeout, open, self.max);
        self.timeout_now.set(timeout.as_secs_f64());
    }
}

/// The command timeout when `open` of `max` places are taken: `normal` up to half
/// full, `stress` (if shorter) from nine tenths full, linearly in between.
fn under_pressure(normal: Duration, stress: Duration, open: usize, max: usize) -> Duration {
    let stress = stress.min(normal);
    let (open, max) = (open as u128, max.max(1) as u128);
    // How far from half full to nine tenths full, as a fraction `past / span`.
    let span = max * 4;
    let past = (open * 10).saturating_sub(max * 5).min(span);
    let shortened = (normal - stress).as_nanos() * past / span;
    normal - Duration::from_nanos(u64::try_from(shortened).unwrap_or(u64::MAX))
}

/// A connection's place in the table, given back when dropped.
pub struct Seat {
    table: Arc<Table>,
    id: u64,
    shed: CancellationToken,
    /// The client address and network it counts against, once claimed.
    client: Option<(IpAddr, IpNet)>,
    /// Admitted at a full table: its place is to be made when it is claimed.
    promised: bool,
}

impl Seat {
    /// Counts the session against its client's address and network, refusing it
    /// when either is at its limit; a seat admitted at a full table then takes its
    /// place, shedding the longest-idle session if the table is still full, or is
    /// refused when none has idled long enough by now.
    pub fn claim(&mut self, ip: IpAddr) -> Result<(), Refusal> {
        let network = network_of(ip);
        let table = &self.table;
        let mut inner = table.inner.lock().expect("session table lock");
        if inner.per_ip.get(&ip).copied().unwrap_or(0) >= table.max_per_ip {
            return Err(Refusal::Address);
        }
        if inner.per_network.get(&network).copied().unwrap_or(0) >= table.max_per_network {
            return Err(Refusal::Network(network));
        }
        if self.promised {
            if inner.places.len() >= table.max && !table.shed_longest_idle(&mut inner) {
                return Err(Refusal::Full);
            }
            inner.promised -= 1;
            self.promised = false;
            table.place(&mut inner, self.id, self.shed.clone());
        }
        *inner.per_ip.entry(ip).or_insert(0) += 1;
        *inner.per_network.entry(network).or_insert(0) += 1;
        self.client = Some((ip, network));
        Ok(())
    }

    /// The session waits for a command with no transaction open: it may be shed.
    pub fn waiting(&self) {
        let mut inner = self.table.inner.lock().expect("session table lock");
        if let Some(place) = inner.places.get_mut(&self.id) {
            place.waiting_since.get_or_insert_with(Instant::now);
        }
    }

    /// The session acts on a command and may not be shed; false if it already was.
    pub fn busy(&self) -> bool {
        let mut inner = self.table.inner.lock().expect("session table lock");
        match inner.places.get_mut(&self.id) {
            Some(place) => {
                place.waiting_since = None;
                true
            }
            None => false,
        }
    }

    /// Completes when the session was shed to make room.
    pub async fn shed(&self) {
        self.shed.cancelled().await;
    }
}

impl Seat {
    /// Gives the place and the client's counts back now; once is enough, and the
    /// drop does it for a session that ends any other way. A session leaves before
    /// its last reply goes out, so a client that reconnects on hearing `221` finds
    /// its place free.
    pub fn leave(&mut self) {
        let mut inner = self.table.inner.lock().expect("session table lock");
        if inner.places.remove(&self.id).is_some() {
            let open = inner.places.len();
            self.table.update_timeout(open);
        }
        if self.promised {
            inner.promised -= 1;
            self.promised = false;
        }
        if let Some((ip, network)) = self.client.take() {
            release(&mut inner.per_ip, ip);
            release(&mut inner.per_network, network);
        }
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.leave();
    }
}

fn release<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: K) {
    if let Some(count) = counts.get_mut(&key) {
        *count -= 1;
        if *count == 0 {
            counts.remove(&key);
        }
    }
}

/// The network a client address counts against: its /24 (IPv4) or /64 (IPv6).
fn network_of(ip: IpAddr) -> IpNet {
    let ip = ip.to_canonical();
    let prefix = if ip.is_ipv4() { 24 } else { 64 };
    IpNet::new(ip, prefix)
        .expect("a valid prefix length")
        .trunc()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_shorten_as_the_table_fills() {
        let (normal, stress) = (Duration::from_secs(300), Duration::from_secs(10));
        assert_eq!(under_pressure(normal, stress, 0, 1000), normal);
        assert_eq!(under_pressure(normal, stress, 500, 1000), normal);
        assert_eq!(
            under_pressure(normal, stress, 700, 1000),
            Duration::from_secs(155)
        );
        assert_eq!(under_pressure(normal, stress, 900, 1000), stress);
        assert_eq!(under_pressure(normal, stress, 1000, 1000), stress);
        // A stress timeout longer than the normal one never lengthens it.
        let short = Duration::from_secs(1);
        assert_eq!(under_pressure(short, stress, 1000, 1000), short);
    }

    #[test]
    fn networks_are_slash_24_and_slash_64() {
        let net = |ip: &str| network_of(ip.parse().unwrap()).to_string();
        assert_eq!(net("192.0.2.77"), "192.0.2.0/24");
        assert_eq!(net("::ffff:192.0.2.77"), "192.0.2.0/24");
        assert_eq!(net("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64");
    }
}
