//! The set-up every authentication test shares: a test DNS server publishing
//! example.com's SPF, DMARC and DKIM records, an authenticator asking it, messages
//! signed with the test keys, and readers of the outcome.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use bulwark_cluster_tests::dns::{DnsServer, Record, Zone};
use mail_auth::common::crypto::{RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;

use super::results::{base64, FIELD_PREFIX_LEN};
use super::{AuthOutcome, AuthResult, Authenticator};
use crate::scan::suffixes::Suffixes;

/// Our authserv-id.
pub(super) const ID: &str = "mx.bulwark.test";
/// The address example.com's SPF designates (mx.example.com's).
pub(super) const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
/// An address no SPF record designates.
pub(super) const STRANGER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
/// The key of example.com's `rsa` selector.
pub(super) const RSA_PEM: &str = include_str!("../../../tests/data/dkim/test-rsa2048.pem");
/// A second key, which no selector of the base zone publishes.
pub(super) const OTHER_RSA_PEM: &str =
    include_str!("../../../tests/data/dkim/test-rsa2048-other.pem");

/// A test DNS server and an authenticator that asks it.
pub(super) struct Fixture {
    pub(super) server: DnsServer,
    pub(super) auth: Authenticator,
}

impl Fixture {
    /// Serves `zone`, allowing 500 ms per lookup.
    pub(super) fn new(zone: Zone) -> Self {
        Self::with_timeout(zone, Duration::from_millis(500), ID)
    }

    /// Serves the base zone and the DKIM key of `pem` at `name`.
    pub(super) fn with_key(name: &str, pem: &str) -> Self {
        let mut zone = base_zone();
        zone.txt(name, &dkim_key(pem));
        Self::new(zone)
    }

    /// Serves `zone` to an authenticator named `authserv_id` allowing `timeout` per
    /// lookup.
    pub(super) fn with_timeout(zone: Zone, timeout: Duration, authserv_id: &str) -> Self {
        let server = DnsServer::start(zone).expect("test DNS server");
        let auth = Authenticator::new(
            &[server.addr()],
            timeout,
            authserv_id.to_string(),
            Arc::new(Suffixes::BuiltIn),
        )
        .expect("authenticator");
        Fixture { server, auth }
    }

    /// Authenticates `raw` sent by `client` after `HELO helo` and
    /// `MAIL FROM:<mail_from>`.
    pub(super) async fn check(
        &self,
        raw: &str,
        client: IpAddr,
        helo: &str,
        mail_from: &str,
    ) -> AuthOutcome {
        self.auth
            .check(raw.as_bytes(), client, helo, mail_from)
            .await
    }

    /// Authenticates `raw` as example.com's own host sends it: from [`CLIENT`] after
    /// `HELO mx.example.com` and `MAIL FROM:<ceo@example.com>`.
    pub(super) async fn check_designated(&self, raw: &str) -> AuthOutcome {
        self.check(raw, CLIENT, "mx.example.com", "ceo@example.com")
            .await
    }
}

/// example.com with SPF designating [`CLIENT`], DMARC p=reject and the `rsa` DKIM
/// key; mx.example.com at [`CLIENT`] with SPF `a`.
pub(super) fn base_zone() -> Zone {
    let mut zone = Zone::new();
    zone.txt("example.com", "v=spf1 ip4:192.0.2.10 -all")
        .txt("_dmarc.example.com", "v=DMARC1; p=reject")
        .txt("rsa._domainkey.example.com", &dkim_key(RSA_PEM))
        .txt("mx.example.com", "v=spf1 a -all")
        .add("mx.example.com", Record::A(Ipv4Addr::new(192, 0, 2, 10)));
    zone
}

/// The base zone where `domain` publishes `-all` SPF and the given DMARC record.
pub(super) fn dmarc_zone(domain: &str, dmarc: &str) -> Zone {
    let mut zone = base_zone();
    zone.txt(domain, "v=spf1 -all")
        .txt(&format!("_dmarc.{domain}"), dmarc);
    zone
}

/// The DKIM key record publishing the public half of `pem`.
pub(super) fn dkim_key(pem: &str) -> String {
    format!("v=DKIM1; k=rsa; p={}", base64(&rsa(pem).public_key()))
}

pub(super) fn rsa(pem: &str) -> RsaKey<Sha256> {
    let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("test key PEM");
    RsaKey::<Sha256>::from_key_der(der).expect("test key")
}

pub(super) fn message(from: &str, body: &str) -> String {
    format!(
        "From: Sender <{from}>\r\nTo: bob@bulwark.test\r\nSubject: Quarterly report\r\n\
         Date: Tue, 1 Jul 2025 10:00:00 +0000\r\nMessage-ID: <q3@example.com>\r\n\r\n{body}"
    )
}

/// `raw` with a DKIM signature by `pem` for `domain` and `selector` in front.
pub(super) fn sign_rsa(raw: &str, pem: &str, domain: &str, selector: &str) -> String {
    let signature = DkimSigner::from_key(rsa(pem))
        .domain(domain)
        .selector(selector)
        .headers(["From", "To", "Subject", "Date", "Message-ID"])
        .sign(raw.as_bytes())
        .expect("sign");
    format!("{}{raw}", signature.to_header())
}

/// A message from `from`, signed by example.com's `rsa` selector.
pub(super) fn signed(from: &str, body: &str) -> String {
    sign_rsa(&message(from, body), RSA_PEM, "example.com", "rsa")
}

/// The results of `method`, in header order.
pub(super) fn result<'a>(outcome: &'a AuthOutcome, method: &str) -> Vec<&'a AuthResult> {
    outcome
        .results
        .iter()
        .filter(|r| r.method == method)
        .collect()
}

pub(super) fn symbols(outcome: &AuthOutcome) -> Vec<&str> {
    outcome.hits.iter().map(|h| h.symbol.as_str()).collect()
}

/// The header starts with our authserv-id, its continuation lines start with a tab,
/// and no line has a stray CR or LF or passes 998 octets with the field name.
pub(super) fn assert_header_safe(header: &str) {
    assert!(header.starts_with(ID), "{header}");
    for line in header.split("\r\n") {
        assert!(!line.contains('\r') && !line.contains('\n'), "{header:?}");
        assert!(line.len() + FIELD_PREFIX_LEN < 998, "{header:?}");
    }
    for (i, line) in header.split("\r\n").enumerate() {
        assert!(i == 0 || line.starts_with('\t'), "{header:?}");
    }
}
