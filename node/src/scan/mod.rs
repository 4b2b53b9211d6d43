//! The scanning pipeline: the one place where an accepted message is judged before
//! it is committed (DESIGN.md, "the mail's path").
//!
//! The engines (authentication, malware, attachments, spam, phishing) and the policy
//! that turns their scores into an action arrive with issue #4. Until then no engine
//! runs and every message's action is [`Action::Deliver`]; the SMTP ingress already
//! calls [`judge`] for every message and records its verdict and time, so engines
//! plug in here without touching the session code.

use bulwark_storage::{Action, Client, Envelope};

/// What the pipeline decided about one message.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub action: Action,
}

/// A message as the scanners see it.
pub struct Candidate<'a> {
    pub envelope: &'a Envelope,
    pub client: &'a Client,
    /// The content as received, without our `Received` header.
    pub body: &'a [u8],
}

/// Judges one message.
pub fn judge(candidate: &Candidate<'_>) -> Verdict {
    tracing::trace!(
        client = %candidate.client.ip,
        recipients = candidate.envelope.rcpt_to.len(),
        size = candidate.body.len(),
        "no scanning engines configured: deliver"
    );
    Verdict {
        action: Action::Deliver,
    }
}
