//! The inter-node network: length-prefixed frames over TCP with mutual TLS.
//!
//! Each purpose has its own connection so that heartbeats never wait behind bulk
//! data: one per Raft replication/vote client, a fresh one per snapshot transfer,
//! and a small pool per leader for forwarded writes.

mod client;
mod frame;
mod message;
mod server;

pub use client::{CallError, NetworkFactory};
pub use message::ForwardRefused;
pub use server::{serve, ServerContext};
