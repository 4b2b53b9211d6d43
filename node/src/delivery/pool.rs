//! Connections to next hops kept open between messages (several messages per
//! connection), and a limit on how many connections this node opens to one
//! destination at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::client::{Connection, Reply, Timeouts};
use super::route::Relay;

pub struct Pool {
    /// Connections open at once to one destination.
    limit: usize,
    /// How long an unused connection stays open; zero: one message per connection.
    keep_idle: Duration,
    destinations: Mutex<HashMap<String, Arc<Destination>>>,
}

/// The connections of one destination (address and TLS policy).
struct Destination {
    slots: Arc<Semaphore>,
    idle: Mutex<Vec<Idle>>,
    returned: Notify,
}

struct Idle {
    conn: Connection,
    permit: OwnedSemaphorePermit,
    since: Instant,
}

/// A connection taken from the pool; give it back with `Pool::put`.
pub struct Pooled {
    pub conn: Connection,
    /// It carried a message before (it may have gone stale since).
    pub reused: bool,
    permit: OwnedSemaphorePermit,
    key: String,
}

impl Pool {
    pub fn new(limit: usize, keep_idle: Duration) -> Pool {
        Pool {
            limit,
            keep_idle,
            destinations: Mutex::new(HashMap::new()),
        }
    }

    fn destination(&self, key: &str) -> Arc<Destination> {
        self.destinations
            .lock()
            .expect("pool lock")
            .entry(key.to_string())
            .or_insert_with(|| {
                Arc::new(Destination {
                    slots: Arc::new(Semaphore::new(self.limit)),
                    idle: Mutex::new(Vec::new()),
                    returned: Notify::new(),
                })
            })
            .clone()
    }

    /// An idle connection to `relay`, or a new one once fewer than the limit are
    /// open to it; waits for one of the two.
    pub async fn get(&self, relay: &Relay, ehlo_name: &str, t: &Timeouts) -> Result<Pooled, Reply> {
        let key = relay.key();
        let dest = self.destination(&key);
        loop {
            if let Some(idle) = self.take_idle(&dest) {
                return Ok(Pooled {
                    conn: idle.conn,
                    reused: true,
                    permit: idle.permit,
                    key,
                });
            }
            tokio::select! {
                permit = dest.slots.clone().acquire_owned() => {
                    let permit = permit.expect("the pool never closes its semaphores");
                    let conn = Connection::open(relay, ehlo_name, t).await?;
                    return Ok(Pooled { conn, reused: false, permit, key });
                }
                _ = dest.returned.notified() => {}
            }
        }
    }

    /// The most recently used idle connection that is not too old; older ones are
    /// closed.
    fn take_idle(&self, dest: &Destination) -> Option<Idle> {
        let mut idle = dest.idle.lock().expect("pool lock");
        while let Some(candidate) = idle.pop() {
            if candidate.since.elapsed() < self.keep_idle {
                return Some(candidate);
            }
            drop(candidate);
        }
        None
    }

    /// Gives a connection back: kept for the next message if it is still usable.
    pub fn put(&self, pooled: Pooled) {
        if self.keep_idle.is_zero() || !pooled.conn.is_usable() {
            return;
        }
        let dest = self.destination(&pooled.key);
        dest.idle.lock().expect("pool lock").push(Idle {
            conn: pooled.conn,
            permit: pooled.permit,
            since: Instant::now(),
        });
        dest.returned.notify_one();
    }

    /// Closes (QUIT) connections idle longer than allowed, or all of them.
    pub async fn close_idle(&self, all: bool, t: &Timeouts) {
        let destinations: Vec<Arc<Destination>> = self
            .destinations
            .lock()
            .expect("pool lock")
            .values()
            .cloned()
            .collect();
        let mut closing = Vec::new();
        for dest in destinations {
            let mut idle = dest.idle.lock().expect("pool lock");
            let (old, fresh): (Vec<Idle>, Vec<Idle>) = idle
                .drain(..)
                .partition(|i| all || i.since.elapsed() >= self.keep_idle);
            *idle = fresh;
            closing.extend(old);
        }
        for idle in closing {
            idle.conn.quit(t).await;
            drop(idle.permit);
        }
    }
}
