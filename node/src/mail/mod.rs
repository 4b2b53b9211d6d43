//! Mail primitives that every stage of the mail's path uses alike: the ingress
//! (`smtp`), scanning (`scan`), the policy (`policy`) and delivery (`delivery`).
//!
//! ```text
//! domain.rs   a domain in the one form domains are compared in (IDNA ASCII)
//! header.rs   values made safe for one header line or reply; the subject prefix
//! results.rs  our own Authentication-Results fields taken out of a message
//! ```
//!
//! Pure functions over text and bytes. This module must never do I/O (no sockets,
//! no files, no DNS, no clock) and must never depend on `smtp`, `scan`, `policy` or
//! `delivery`: they depend on it, so the path of the mail never climbs back up.

mod domain;
mod header;
mod results;

pub use domain::ascii_domain;
pub use header::{one_line, prefix_subject};
pub use results::strip_own_results;
