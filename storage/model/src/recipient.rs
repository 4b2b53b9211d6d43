//! Self-service for the people the quarantine holds mail for: their own allow and
//! block lists, the links of their quarantine digest, and what they do with them.
//!
//! A recipient never has a password. They act through a link sent to their own
//! address: a digest's link to release, release and allow the sender, or delete one
//! message, or a link that opens their portal. A link is signed (HMAC-SHA-256 under
//! the cluster's link key, [`Link::sign`]) over what it does, for whom, on which
//! message and until when, so changing any of it breaks the signature; it expires;
//! and it is spent when used (the state keeps its [`Link::id`], so a second use is
//! refused on every node). The portal's cookie is signed the same way
//! ([`PortalPass`]), for an hour, for that one address.
//!
//! Records (column family `tokens`): a recipient's lists ([`lists_key`]), a spent
//! link ([`spent_key`]), the link key ([`LINK_KEY`]) and the time through which a
//! recipient's last digest went ([`digest_key`]).

use std::net::IpAddr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::event::Hash;
use crate::message::MessageId;

/// Entries a recipient's allow or block list holds at most.
pub const MAX_ENTRIES: usize = 500;
/// Longest list entry (an address is at most 254 octets).
pub const MAX_ENTRY: usize = 254;

/// Why an action on a message not held for the recipient is refused.
pub const NOT_HELD: &str = "not in the quarantine for this recipient";
/// Why a spent link is refused.
pub const SPENT: &str = "the link was used already";
/// Why an expired link or portal visit is refused.
pub const EXPIRED: &str = "the link has expired";
/// Why an entry is refused.
pub const BAD_ENTRY: &str = "not an address or a domain";
/// Why an addition to a full list is refused.
pub const FULL: &str = "the list is full";
/// Why a digest for a window already sent is refused.
pub const DIGEST_SENT: &str = "a digest through this time was sent already";

/// The key of the cluster's link key.
pub const LINK_KEY: &[u8] = b"lk";

/// Key of a recipient's lists.
pub fn lists_key(recipient: &str) -> Vec<u8> {
    [b"rl/", recipient.to_ascii_lowercase().as_bytes()].concat()
}

/// Key of a spent link, by its [`Link::id`].
pub fn spent_key(id: &Hash) -> Vec<u8> {
    [&b"ls/"[..], id].concat()
}

/// Key of the time through which a recipient's last digest went.
pub fn digest_key(recipient: &str) -> Vec<u8> {
    [b"dg/", recipient.to_ascii_lowercase().as_bytes()].concat()
}

/// Which of a recipient's lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListKind {
    Allow,
    Block,
}

impl ListKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ListKind::Allow => "allow",
            ListKind::Block => "block",
        }
    }
}

/// A recipient's own lists: senders' addresses and domains (`.domain` also covers
/// its subdomains), lowercase, in the order added.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientLists {
    pub allow: Vec<String>,
    pub block: Vec<String>,
}

impl RecipientLists {
    pub fn list(&self, kind: ListKind) -> &[String] {
        match kind {
            ListKind::Allow => &self.allow,
            ListKind::Block => &self.block,
        }
    }

    fn list_mut(&mut self, kind: ListKind) -> &mut Vec<String> {
        match kind {
            ListKind::Allow => &mut self.allow,
            ListKind::Block => &mut self.block,
        }
    }

    /// Adds `entry` (as [`entry`] writes it) to list `kind`, and takes it off the
    /// other: a sender is allowed or blocked, not both. Refused when the entry is
    /// not one or the list is full; adding what is there already changes nothing.
    pub fn add(&mut self, kind: ListKind, typed: &str) -> Result<(), &'static str> {
        let entry = entry(typed).ok_or(BAD_ENTRY)?;
        let other = match kind {
            ListKind::Allow => ListKind::Block,
            ListKind::Block => ListKind::Allow,
        };
        self.list_mut(other).retain(|e| *e != entry);
        let list = self.list_mut(kind);
        if list.contains(&entry) {
            return Ok(());
        }
        if list.len() >= MAX_ENTRIES {
            return Err(FULL);
        }
        list.push(entry);
        Ok(())
    }

    /// Takes `entry` off list `kind`; true when it was on it.
    pub fn remove(&mut self, kind: ListKind, typed: &str) -> bool {
        let entry = entry(typed).unwrap_or_else(|| trim(typed).to_ascii_lowercase());
        let list = self.list_mut(kind);
        let before = list.len();
        list.retain(|e| *e != entry);
        list.len() != before
    }
}

/// A list entry as stored: `user@domain`, `domain` or `.domain`, in lower case;
/// `None` for anything else (an IP address, a network, a bare local part, spaces, a
/// domain of one label). Applied by every node to what a recipient typed, so it
/// depends on ASCII alone, never on a Unicode table that another build of the
/// standard library might have otherwise: ASCII letters are lowered, other letters
/// are kept as typed (the scanner compares domains in their IDNA form).
pub fn entry(typed: &str) -> Option<String> {
    let typed = trim(typed).to_ascii_lowercase();
    if typed.is_empty() || typed.len() > MAX_ENTRY || typed.parse::<IpAddr>().is_ok() {
        return None;
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
    };
    let domain_ok = |d: &str| {
        let labels: Vec<&str> = d.split('.').collect();
        labels.len() >= 2 && labels.iter().all(|l| label_ok(l))
    };
    let local_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 64
            && !l
                .chars()
                .any(|c| c.is_ascii_whitespace() || c.is_ascii_control() || "<>\"".contains(c))
    };
    let ok = match typed.rsplit_once('@') {
        Some((local, domain)) => local_ok(local) && domain_ok(domain),
        None => domain_ok(typed.strip_prefix('.').unwrap_or(&typed)),
    };
    ok.then_some(typed)
}

/// `text` without ASCII white space around it.
fn trim(text: &str) -> &str {
    text.trim_matches(|c: char| c.is_ascii_whitespace())
}

/// What the verdict's reason of a message held for malware, a blocked attachment or
/// its sender domain's failed DMARC policy begins with (the node's policy writes
/// them so): only an operator releases those, never a recipient's link or portal.
pub const HELD_FOR_OPERATORS: [&str; 3] = [
    "malware ",
    "blocked content ",
    "DMARC policy of the From domain: ",
];

/// Why a recipient's release of such a message is refused.
pub const OPERATOR_ONLY: &str = "held for malware, a blocked attachment or its sender's failed \
     DMARC policy: only an administrator can release it";

/// Whether a recipient may release a message held for `reason` themselves: held for
/// its score (or anything but malware, blocked content and DMARC).
pub fn releasable_by_recipient(reason: &str) -> bool {
    !HELD_FOR_OPERATORS.iter().any(|p| reason.starts_with(p))
}

/// Through what a recipient acted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Via {
    /// A signed link (a digest's, or one that opens the portal): spent by this use.
    Link { id: Hash, expires_ms: i64 },
    /// Their portal, signed in by a link until `expires_ms`.
    Portal { expires_ms: i64 },
    /// A console user acting for them (release and allow the sender), with the
    /// reason they gave.
    Console { user: String, reason: String },
}

impl Via {
    pub fn as_str(&self) -> &'static str {
        match self {
            Via::Link { .. } => "link",
            Via::Portal { .. } => "portal",
            Via::Console { .. } => "console",
        }
    }
}

/// What a recipient does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecipientAction {
    /// Releases their copy of a held message (the other recipients' copies stay
    /// held) and, with `allow_sender`, allows its sender from now on.
    Release {
        message_id: MessageId,
        allow_sender: bool,
    },
    /// Deletes their copy of a held message.
    Delete { message_id: MessageId },
    /// Adds an entry to one of their lists, or takes it off.
    List {
        list: ListKind,
        entry: String,
        add: bool,
    },
    /// Opens their portal: the link is spent, the portal's pass handed out.
    OpenPortal,
}

impl RecipientAction {
    /// The dotted name the event records.
    pub fn name(&self) -> &'static str {
        match self {
            RecipientAction::Release {
                allow_sender: false,
                ..
            } => "quarantine.release",
            RecipientAction::Release {
                allow_sender: true, ..
            } => "quarantine.release_allow",
            RecipientAction::Delete { .. } => "quarantine.delete",
            RecipientAction::List {
                list: ListKind::Allow,
                add: true,
                ..
            } => "allow.add",
            RecipientAction::List {
                list: ListKind::Allow,
                add: false,
                ..
            } => "allow.remove",
            RecipientAction::List {
                list: ListKind::Block,
                add: true,
                ..
            } => "block.add",
            RecipientAction::List {
                list: ListKind::Block,
                add: false,
                ..
            } => "block.remove",
            RecipientAction::OpenPortal => "portal.open",
        }
    }

    pub fn message_id(&self) -> Option<MessageId> {
        match self {
            RecipientAction::Release { message_id, .. }
            | RecipientAction::Delete { message_id } => Some(*message_id),
            RecipientAction::List { .. } | RecipientAction::OpenPortal => None,
        }
    }
}

/// A recipient's action as proposed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientCommand {
    /// Their address, as the link or the pass names it.
    pub recipient: String,
    pub action: RecipientAction,
    pub via: Via,
    pub client_ip: Option<IpAddr>,
}

/// `recipient.action`: what a recipient did (or a console user for them), through
/// what, from where, and whether it was done.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecipientActed {
    pub recipient: String,
    /// [`RecipientAction::name`].
    pub action: String,
    /// [`Via::as_str`].
    pub via: String,
    /// The console user, when one acted for the recipient.
    pub user: Option<String>,
    pub message_id: Option<MessageId>,
    /// The list entry added or removed (for a release that allows: the sender).
    pub entry: Option<String>,
    pub client_ip: Option<IpAddr>,
    /// Why it was refused; `None`: done.
    pub refused: Option<String>,
}

/// A message to one recipient about their quarantine, sent through the queue like a
/// bounce, from the null sender: a digest, or the link to their portal they asked
/// for. A digest reports what was held for them through `through_ms`, and is refused
/// when one through that time or later went to them already, so two nodes running the
/// schedule at once send one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DigestCommand {
    pub recipient: String,
    /// For a digest: its scheduled time (one digest per recipient and time);
    /// `None`: a portal link.
    pub through_ms: Option<i64>,
    /// For a digest: the log's last seq when it was written. It lists what was
    /// quarantined (`received_seq`) after the recipient's last digest's and up to
    /// this: by the log's order, so no message applied late, or stamped by a clock
    /// behind, falls between two digests.
    pub through_seq: u64,
    /// Held messages it lists.
    pub messages: u32,
    /// The message's own id.
    pub digest_id: MessageId,
    /// The message, CRLF lines.
    #[serde(with = "crate::message::serde_bytes_compat")]
    pub body: Vec<u8>,
}

/// Where a recipient's last digest went to: its scheduled time and the log's seq it
/// was written at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestMark {
    pub slot_ms: i64,
    pub through_seq: u64,
}

/// `quarantine.digest` (or `recipient.link_sent` for a portal link): message
/// `digest_id`, listing `messages` held messages, went into the queue for `recipient`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestSent {
    pub recipient: String,
    pub digest_id: MessageId,
    pub messages: u32,
    pub through_ms: Option<i64>,
}

/// What a link does when followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkAction {
    /// Opens the recipient's portal.
    Portal,
    Release,
    ReleaseAllow,
    Delete,
}

impl LinkAction {
    fn code(self) -> u8 {
        match self {
            LinkAction::Portal => b'p',
            LinkAction::Release => b'r',
            LinkAction::ReleaseAllow => b'a',
            LinkAction::Delete => b'd',
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            b'p' => LinkAction::Portal,
            b'r' => LinkAction::Release,
            b'a' => LinkAction::ReleaseAllow,
            b'd' => LinkAction::Delete,
            _ => return None,
        })
    }

    /// What the recipient does by following it.
    pub fn action(self, message_id: MessageId) -> RecipientAction {
        match self {
            LinkAction::Portal => RecipientAction::OpenPortal,
            LinkAction::Release => RecipientAction::Release {
                message_id,
                allow_sender: false,
            },
            LinkAction::ReleaseAllow => RecipientAction::Release {
                message_id,
                allow_sender: true,
            },
            LinkAction::Delete => RecipientAction::Delete { message_id },
        }
    }
}

/// Why a link or a pass is not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("this link is not one of ours, or it was changed or cut short")]
    Invalid,
    #[error("{EXPIRED}")]
    Expired,
}

/// A signed link, as its text (`payload.mac`, both base64url) carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub action: LinkAction,
    pub recipient: String,
    /// The message it acts on (`MessageId(0)` for the portal).
    pub message_id: MessageId,
    pub expires_ms: i64,
    /// Random: two links alike otherwise are two links.
    pub nonce: [u8; 16],
}

/// The version of the links' layout.
const LINK_VERSION: u8 = 1;

impl Link {
    fn payload(&self) -> Vec<u8> {
        let mut p = vec![LINK_VERSION, self.action.code()];
        p.extend_from_slice(&self.expires_ms.to_be_bytes());
        p.extend_from_slice(&self.nonce);
        p.extend_from_slice(&self.message_id.key());
        p.extend_from_slice(self.recipient.as_bytes());
        p
    }

    /// The link's text: what a URL carries.
    pub fn sign(&self, key: &[u8; 32]) -> String {
        signed(key, b"bulwark.link", &self.payload())
    }

    /// The link `text` is, if `key` signed it and it has not expired at `now_ms`.
    pub fn verify(key: &[u8; 32], text: &str, now_ms: i64) -> Result<Link, LinkError> {
        let p = verified(key, b"bulwark.link", text)?;
        if p.len() < 2 + 8 + 16 + 16 || p[0] != LINK_VERSION {
            return Err(LinkError::Invalid);
        }
        let action = LinkAction::from_code(p[1]).ok_or(LinkError::Invalid)?;
        let expires_ms = i64::from_be_bytes(p[2..10].try_into().expect("8 bytes"));
        let nonce = p[10..26].try_into().expect("16 bytes");
        let message_id = MessageId(u128::from_be_bytes(p[26..42].try_into().expect("16")));
        let recipient = String::from_utf8(p[42..].to_vec()).map_err(|_| LinkError::Invalid)?;
        if now_ms > expires_ms {
            return Err(LinkError::Expired);
        }
        Ok(Link {
            action,
            recipient,
            message_id,
            expires_ms,
            nonce,
        })
    }

    /// What the state keeps of a spent link: SHA-256 of its payload.
    pub fn id(&self) -> Hash {
        Sha256::digest(self.payload()).into()
    }
}

/// The portal's cookie: one recipient, until a time, signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortalPass {
    pub recipient: String,
    pub expires_ms: i64,
    pub nonce: [u8; 16],
}

impl PortalPass {
    fn payload(&self) -> Vec<u8> {
        let mut p = vec![LINK_VERSION];
        p.extend_from_slice(&self.expires_ms.to_be_bytes());
        p.extend_from_slice(&self.nonce);
        p.extend_from_slice(self.recipient.as_bytes());
        p
    }

    pub fn sign(&self, key: &[u8; 32]) -> String {
        signed(key, b"bulwark.portal", &self.payload())
    }

    pub fn verify(key: &[u8; 32], text: &str, now_ms: i64) -> Result<PortalPass, LinkError> {
        let p = verified(key, b"bulwark.portal", text)?;
        if p.len() < 1 + 8 + 16 || p[0] != LINK_VERSION {
            return Err(LinkError::Invalid);
        }
        let expires_ms = i64::from_be_bytes(p[1..9].try_into().expect("8 bytes"));
        let nonce = p[9..25].try_into().expect("16 bytes");
        let recipient = String::from_utf8(p[25..].to_vec()).map_err(|_| LinkError::Invalid)?;
        if now_ms > expires_ms {
            return Err(LinkError::Expired);
        }
        Ok(PortalPass {
            recipient,
            expires_ms,
            nonce,
        })
    }

    /// The token the portal's forms carry: derived from the pass, so only its holder
    /// knows it.
    pub fn csrf(&self, key: &[u8; 32]) -> String {
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, key),
            &[&b"bulwark.portal.csrf"[..], &self.payload()].concat(),
        );
        hex::encode(&tag.as_ref()[..16])
    }
}

/// `payload.mac`, each base64url; the MAC is HMAC-SHA-256 over `purpose ‖ payload`.
fn signed(key: &[u8; 32], purpose: &[u8], payload: &[u8]) -> String {
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, key),
        &[purpose, payload].concat(),
    );
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode(tag.as_ref())
    )
}

/// The payload of `text`, if its MAC is `key`'s for `purpose` (compared in constant
/// time).
fn verified(key: &[u8; 32], purpose: &[u8], text: &str) -> Result<Vec<u8>, LinkError> {
    let (payload, mac) = text.split_once('.').ok_or(LinkError::Invalid)?;
    if payload.len() > 2048 {
        return Err(LinkError::Invalid);
    }
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| LinkError::Invalid)?;
    let mac = URL_SAFE_NO_PAD
        .decode(mac)
        .map_err(|_| LinkError::Invalid)?;
    hmac::verify(
        &hmac::Key::new(hmac::HMAC_SHA256, key),
        &[purpose, &payload].concat(),
        &mac,
    )
    .map_err(|_| LinkError::Invalid)?;
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];
    const T: i64 = 1_764_300_000_000;

    fn link() -> Link {
        Link {
            action: LinkAction::Release,
            recipient: "bob@example.test".into(),
            message_id: MessageId::new(T, 42),
            expires_ms: T + 1000,
            nonce: [1; 16],
        }
    }

    #[test]
    fn a_link_verifies_until_it_expires_and_only_under_its_key() {
        let text = link().sign(&KEY);
        assert_eq!(Link::verify(&KEY, &text, T), Ok(link()));
        assert_eq!(Link::verify(&KEY, &text, T + 1000), Ok(link()));
        assert_eq!(Link::verify(&KEY, &text, T + 1001), Err(LinkError::Expired));
        assert_eq!(
            Link::verify(&[8; 32], &text, T),
            Err(LinkError::Invalid),
            "another cluster's key"
        );
        // A portal pass is signed for another purpose: its text is no link.
        let pass = PortalPass {
            recipient: "bob@example.test".into(),
            expires_ms: T + 1000,
            nonce: [1; 16],
        };
        let pass_text = pass.sign(&KEY);
        assert_eq!(PortalPass::verify(&KEY, &pass_text, T), Ok(pass.clone()));
        assert_eq!(Link::verify(&KEY, &pass_text, T), Err(LinkError::Invalid));
        assert_eq!(PortalPass::verify(&KEY, &text, T), Err(LinkError::Invalid));
        assert_ne!(pass.csrf(&KEY), pass.csrf(&[8; 32]));
    }

    #[test]
    fn every_part_of_a_link_is_signed() {
        let changed = [
            Link {
                recipient: "carol@example.test".into(),
                ..link()
            },
            Link {
                action: LinkAction::Delete,
                ..link()
            },
            Link {
                message_id: MessageId::new(T, 43),
                ..link()
            },
            Link {
                expires_ms: T + 999_999,
                ..link()
            },
        ];
        let mac = link().sign(&KEY).split_once('.').unwrap().1.to_string();
        for other in changed {
            // The other link's payload under the original's signature.
            let forged = format!("{}.{mac}", other.sign(&KEY).split_once('.').unwrap().0);
            assert_eq!(
                Link::verify(&KEY, &forged, T),
                Err(LinkError::Invalid),
                "{other:?}"
            );
            assert_ne!(other.id(), link().id());
        }
        let text = link().sign(&KEY);
        for cut in [
            &text[..text.len() - 1],
            text.split_once('.').unwrap().0,
            "",
            ".",
        ] {
            assert_eq!(Link::verify(&KEY, cut, T), Err(LinkError::Invalid), "{cut}");
        }
    }

    #[test]
    fn entries_are_addresses_and_domains_in_lower_case() {
        assert_eq!(entry(" News@Shop.TEST ").as_deref(), Some("news@shop.test"));
        assert_eq!(entry("Bücher.TEST").as_deref(), Some("bücher.test"));
        assert_eq!(entry("shop.test").as_deref(), Some("shop.test"));
        assert_eq!(entry(".shop.test").as_deref(), Some(".shop.test"));
        assert_eq!(entry("bücher.test").as_deref(), Some("bücher.test"));
        for bad in [
            "",
            "localhost",
            "192.0.2.1",
            "2001:db8::1",
            "@shop.test",
            "a b@shop.test",
            "shop..test",
            "-shop.test",
            "<a@b.test>",
            "a@b",
        ] {
            assert_eq!(entry(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_mail_held_for_its_score_is_a_recipient_s_to_release() {
        assert!(releasable_by_recipient("score 12.0 >= quarantine 10"));
        assert!(releasable_by_recipient("block-listed: x"));
        for reason in [
            "malware Eicar-Test-Signature",
            "blocked content extension:exe",
            "DMARC policy of the From domain: quarantine",
        ] {
            assert!(!releasable_by_recipient(reason), "{reason}");
        }
    }

    #[test]
    fn a_sender_is_on_one_list_at_most_and_a_list_has_a_size() {
        let mut lists = RecipientLists::default();
        lists.add(ListKind::Block, "shop.test").unwrap();
        lists.add(ListKind::Allow, "Shop.test").unwrap();
        assert_eq!(lists.allow, ["shop.test"]);
        assert!(lists.block.is_empty());
        lists.add(ListKind::Allow, "shop.test").unwrap();
        assert_eq!(lists.allow.len(), 1, "added once");
        assert_eq!(lists.add(ListKind::Allow, "not one"), Err(BAD_ENTRY));
        assert!(lists.remove(ListKind::Allow, "SHOP.test"));
        assert!(!lists.remove(ListKind::Allow, "shop.test"));
        for n in 0..MAX_ENTRIES {
            lists.add(ListKind::Block, &format!("s{n}.test")).unwrap();
        }
        assert_eq!(lists.add(ListKind::Block, "one-more.test"), Err(FULL));
    }
}
