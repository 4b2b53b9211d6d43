//! What every scanning engine sees and returns: a message parsed once, its files
//! unpacked once, and the symbols and findings an engine reports about it. Content
//! engines ([`Engine`]) judge the parsed message on a blocking thread; network
//! engines ([`NetworkEngine`]) ask DNS or a daemon about it on the runtime.

use std::net::IpAddr;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::oneshot;

use super::Candidate;

/// One message as the engines see it: the envelope, the client, the raw content,
/// its parse and every file found in it (MIME parts and archive members).
pub struct Parsed<'a> {
    pub rcpt_to: &'a [String],
    pub client_ip: IpAddr,
    /// The content as received, without our `Received` header.
    pub raw: &'a [u8],
    pub message: &'a mail_parser::Message<'a>,
    pub contents: &'a Contents,
    /// The text the rules and the classifier read, rendered once.
    pub view: &'a super::spam::View,
    /// Our own domains (`smtp.domains`), lowercase, IDNA ASCII.
    pub local_domains: &'a [String],
    /// Whether the Bayesian classifier judges this message (it is on and has
    /// learned enough): the rules then score with their second score set.
    pub bayes: bool,
}

/// Every leaf part of the message and every file inside its archives.
#[derive(Debug, Default)]
pub struct Contents {
    pub files: Vec<File>,
    /// What unpacking itself found: bombs, encryption, limits reached.
    pub findings: Vec<Finding>,
}

/// A MIME leaf part or a file inside an archive.
#[derive(Debug)]
pub struct File {
    /// Where it sits: `part 2` or `part 2/invoice.zip/docs/a.exe`.
    pub location: String,
    /// The file name it was given (attachment name or archive member), if any.
    pub name: Option<String>,
    /// The declared `Content-Type` (MIME parts only), lowercase, without parameters.
    pub declared_type: Option<String>,
    /// 0 for MIME parts, 1 inside an archive attached to the message, and so on.
    pub depth: u32,
    /// Whether the part is the text or HTML body rather than an attachment.
    pub inline_body: bool,
    /// Whether only the second reading of the message found it (a part or a
    /// decoding mail-parser does not make; see `contents::unpack`).
    pub other_reading: bool,
    /// The decoded content.
    pub data: Vec<u8>,
}

/// A scored observation about a message.
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    /// Upper-case name such as `GTUBE`, `MISSING_DATE`, `SPF_FAIL`.
    pub symbol: String,
    pub score: f64,
    pub description: String,
}

impl Hit {
    pub fn new(symbol: impl Into<String>, score: f64, description: impl Into<String>) -> Self {
        Hit {
            symbol: symbol.into(),
            score,
            description: description.into(),
        }
    }
}

/// The names other engines than the rules report their symbols under: whole names,
/// or families ending in `_`. A rule file's `score` for such a name sets that
/// symbol's score (`score BAYES_99 3.5`); a `score` for a name that is neither a
/// rule nor one of these is noted and ignored.
pub const ENGINE_SYMBOLS: &[&str] = &[
    "BAYES_",
    "SPF_",
    "DKIM_",
    "DMARC_",
    "ARC_",
    "AUTH_",
    "LIST_UNSUBSCRIBE_ONE_CLICK_SIGNED",
    "PHISH_",
    "REPLYTO_DIFFERS",
    "FROM_LOCAL_DOMAIN_EXTERNAL",
    "RBL_",
    "URIBL_",
    "DNSBL_",
    "YARA_",
    "CLAMD_",
    "MALWARE",
    "ATTACH_",
    "ARCHIVE_",
    "OFFICE_MACRO",
    "PDF_",
    "HTML_SMUGGLING",
    "MIME_UNPARSEABLE",
    super::MESSAGE_ID_BY_RELAY,
];

/// Whether `name` is one of [`ENGINE_SYMBOLS`].
pub fn is_engine_symbol(name: &str) -> bool {
    ENGINE_SYMBOLS.iter().any(|known| {
        if known.ends_with('_') {
            name.starts_with(known)
        } else {
            name == *known
        }
    })
}

/// What kind of thing a [`Finding`] is; the policy acts on kinds, not on scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FindingKind {
    /// A malware signature matched.
    Malware,
    /// An attachment of a blocked type or extension (also a double extension).
    BlockedAttachment,
    /// An archive that could not be opened because it is encrypted.
    Encrypted,
    /// An Office document with macros, a PDF with JavaScript or launch actions, an
    /// HTML attachment that smuggles a payload.
    ActiveContent,
    /// Unpacking stopped at a limit (depth, file count, total size, ratio).
    Bomb,
}

impl FindingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::Malware => "malware",
            FindingKind::BlockedAttachment => "blocked_attachment",
            FindingKind::Encrypted => "encrypted",
            FindingKind::ActiveContent => "active_content",
            FindingKind::Bomb => "bomb",
        }
    }
}

/// Something found in the content: what, where, and the name of the signature or
/// rule that found it.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub kind: FindingKind,
    /// The signature or rule name, such as `Eicar-Test-Signature` or `extension:exe`.
    pub name: String,
    /// [`File::location`] of the file it concerns, or `message`.
    pub location: String,
}

/// What one engine reports about one message.
#[derive(Debug, Default)]
pub struct Outcome {
    pub hits: Vec<Hit>,
    pub findings: Vec<Finding>,
}

/// A content engine: synchronous, CPU-bound, judging a parsed message. Engines that
/// need the network are [`NetworkEngine`]s and run beside.
pub trait Engine: Send + Sync {
    /// Short name used in events and timings: `malware`, `spam`, ...
    fn name(&self) -> &'static str;
    /// The engine's version and that of its rule or signature set, as recorded in
    /// every verdict.
    fn version(&self) -> String;
    fn scan(&self, message: &Parsed<'_>) -> Outcome;
}

/// An engine that waits on the network rather than the CPU (authentication, DNS
/// blocklists, clamd): it runs on the runtime while the content engines run on
/// their thread, and reads the message as received, unparsed.
///
/// To ensure a slow peer never holds a session: `check` bounds its own time
/// ([`NetworkEngine::budget`]) whatever the peer does, and the pipeline records the
/// engine as timed out (`SCAN_TIMEOUT`) if the scan budget runs out first.
pub trait NetworkEngine: Send + Sync {
    /// Short name used in events and timings: `auth`, `dnsbl`, `clamd`.
    fn name(&self) -> &'static str;
    /// The engine's version, as recorded in every verdict.
    fn version(&self) -> String;
    /// The longest `check` takes however slow its peer is, CPU aside.
    fn budget(&self) -> Duration;
    /// Whether `check` reads the message's [`LinkHosts`] (the content thread then
    /// finds them before anything else).
    fn wants_links(&self) -> bool {
        false
    }
    fn check<'a>(
        &'a self,
        message: &'a Candidate<'a>,
        links: &'a LinkHosts,
    ) -> BoxFuture<'a, Checked>;
}

/// What a network engine reports about one message.
#[derive(Debug)]
pub struct Checked {
    /// Hits and findings, as a content engine reports them.
    pub outcome: Outcome,
    /// What authentication adds to the verdict beyond its hits.
    pub authentication: Option<Authentication>,
}

impl From<Outcome> for Checked {
    fn from(outcome: Outcome) -> Self {
        Checked {
            outcome,
            authentication: None,
        }
    }
}

/// Authentication's part of a verdict beyond its hits.
#[derive(Debug)]
pub struct Authentication {
    /// One result per method and identity, in header order.
    pub results: Vec<bulwark_model::AuthResult>,
    /// The value of our `Authentication-Results` header.
    pub header: String,
    /// What the sender's DMARC policy asks for a message that fails DMARC
    /// (quarantine or reject), if anything.
    pub dmarc: Option<bulwark_model::Action>,
}

/// The hosts of the message's links (see [`super::spam::link_hosts`]), which the
/// content thread sends once it has parsed the message.
pub struct LinkHosts(Shared<oneshot::Receiver<Vec<String>>>);

impl LinkHosts {
    /// The hosts sent to `receiver`; none if its sender is dropped without sending.
    pub fn new(receiver: oneshot::Receiver<Vec<String>>) -> Self {
        LinkHosts(receiver.shared())
    }

    /// Waits for the hosts.
    pub async fn get(&self) -> Vec<String> {
        self.0.clone().await.unwrap_or_default()
    }
}
