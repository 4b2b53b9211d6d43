//! An ARC validation suite built from the text of RFC 8617 (and of RFC 6376 and
//! RFC 8301, which it imports for its signatures and keys): valid chains of one, two
//! and three sets that pass, and for each way the RFCs make a chain fail, one case
//! whose signatures verify (written by the test sealer of [`super::arc_signer`]) but
//! that must fail all the same. Each case is named for the section it follows.

use bulwark_cluster_tests::dns::{Fault, Kind, Zone};
use mail_auth::{AuthenticatedMessage, DkimResult};

use super::arc_signer::{Chain, Hash, Set};
use super::fixture::{
    base_zone, dkim_key, message, result, rsa, Fixture, OTHER_RSA_PEM, RSA_PEM, STRANGER,
};
use super::results::base64;
use super::Authenticator;

/// The sealers of a chain, by instance: a forwarder, a mailing list, a relay.
const HOPS: [(&str, &str); 3] = [
    ("example.net", OTHER_RSA_PEM),
    ("lists.example.org", RSA_PEM),
    ("relay.example.org", OTHER_RSA_PEM),
];

/// The hops' `arc` keys; at example.net also a key that allows only SHA-1
/// (`sha1only`), one for another service (`tlsrpt`), none at `gone`, and one whose
/// lookup is answered SERVFAIL (`servfail`).
fn zone() -> Zone {
    let mut zone = base_zone();
    for (domain, pem) in HOPS {
        zone.txt(&format!("arc._domainkey.{domain}"), &dkim_key(pem));
    }
    let public = base64(&rsa(OTHER_RSA_PEM).public_key());
    zone.txt(
        "sha1only._domainkey.example.net",
        &format!("v=DKIM1; k=rsa; h=sha1; p={public}"),
    )
    .txt(
        "tlsrpt._domainkey.example.net",
        &format!("v=DKIM1; k=rsa; s=tlsrpt; p={public}"),
    )
    .txt("servfail._domainkey.example.net", &dkim_key(OTHER_RSA_PEM))
    .fault(
        "servfail._domainkey.example.net",
        Fault::ServFail,
        &[Kind::Txt],
    );
    zone
}

/// The set hop `i` (1 to 3) writes as RFC 8617 asks.
fn hop(i: u32) -> Set {
    let (domain, pem) = HOPS[i as usize - 1];
    Set::new(i, if i == 1 { "none" } else { "pass" }, domain, "arc", pem)
}

/// The test message with `sets` added in order.
fn sealed(sets: &[Set]) -> String {
    let mut chain = Chain::new(&message("ceo@example.com", "Forwarded.\r\n"));
    for set in sets {
        chain.seal(set);
    }
    chain.raw()
}

/// `set` with its `from` in the AMS or AS tags replaced by `to`.
fn ams(mut set: Set, from: &str, to: &str) -> Set {
    set.ams = set.ams.map(|tags| tags.replace(from, to));
    set
}

fn seal(mut set: Set, from: &str, to: &str) -> Set {
    set.seal = set.seal.map(|tags| tags.replace(from, to));
    set
}

/// The cases mail-auth 0.13 gets wrong by itself (its verifier's result read as
/// Bulwark read it before the fields were checked here), with what it says.
const MAIL_AUTH_ALONE: [(&str, &str); 11] = [
    ("rfc8617_5_2_step3_1_set_without_ams", "none"),
    ("rfc8617_4_1_3_seal_tag_twice", "pass"),
    ("rfc8617_4_1_3_seal_tag_spec_malformed", "pass"),
    ("rfc8617_4_1_3_no_algorithm", "pass"),
    ("rfc8301_3_1_rsa_sha1", "pass"),
    ("rfc8617_4_1_2_ams_signs_arc_seal", "pass"),
    ("rfc6376_5_4_ams_does_not_sign_from", "pass"),
    ("rfc6376_3_2_ams_tag_twice", "pass"),
    ("rfc6376_3_5_d_not_a_domain_name", "temperror"),
    ("rfc8617_5_2_step4_newest_ams_key_unusable", "pass"),
    ("rfc8617_5_2_step6_seal_key_unusable", "pass"),
];

/// What mail-auth's verifier alone makes of `raw`.
async fn mail_auth_alone(auth: &Authenticator, raw: &str) -> &'static str {
    let message = AuthenticatedMessage::parse(raw.as_bytes()).expect("a message");
    match auth.resolver.verify_arc(&message).await.result() {
        DkimResult::Pass => "pass",
        DkimResult::None => "none",
        DkimResult::TempError(_) => "temperror",
        DkimResult::Fail(_) | DkimResult::Neutral(_) | DkimResult::PermError(_) => "fail",
    }
}

/// One case: the message, the `arc` result the RFC asks for, and a part of the
/// comment that says why.
struct Case {
    name: &'static str,
    raw: String,
    expect: &'static str,
    because: &'static str,
}

fn case(name: &'static str, raw: String, expect: &'static str, because: &'static str) -> Case {
    Case {
        name,
        raw,
        expect,
        because,
    }
}

fn cases() -> Vec<Case> {
    let older_ams_broken = {
        let mut chain = Chain::new(&message("ceo@example.com", "Forwarded.\r\n"));
        chain.seal(&hop(1));
        chain.edit_body("Forwarded.\r\n-- \r\nThe list's footer.\r\n");
        chain.seal(&hop(2));
        chain.raw()
    };
    let without = |field: &str| {
        let mut set = hop(1);
        match field {
            "aar" => set.aar = None,
            "ams" => set.ams = None,
            _ => set.seal = None,
        }
        sealed(&[set])
    };
    let twice_aar = {
        let mut set = hop(1);
        set.extra.push((
            "ARC-Authentication-Results",
            "i=1; example.net; arc=none".to_string(),
        ));
        sealed(&[set])
    };
    let sha1 = {
        let mut set = ams(
            seal(hop(1), "rsa-sha256", "rsa-sha1"),
            "rsa-sha256",
            "rsa-sha1",
        );
        set.hash = Hash::Sha1;
        sealed(&[set])
    };
    let signs_seal = {
        let mut set = ams(hop(2), "message-id", "message-id:arc-seal");
        set.ams_signs.push("arc-seal");
        sealed(&[hop(1), set])
    };
    let without_from = {
        let mut set = ams(hop(1), "h=from:", "h=");
        set.ams_signs.retain(|name| *name != "from");
        sealed(&[set])
    };
    let mut aar_late = hop(1);
    aar_late.aar = Some("example.net; i=1; spf=pass smtp.mailfrom=example.com".to_string());
    vec![
        case("rfc8617_5_2_one_set", sealed(&[hop(1)]), "pass", "(i=1)"),
        case(
            "rfc8617_5_2_two_sets",
            sealed(&[hop(1), hop(2)]),
            "pass",
            "(i=2)",
        ),
        case(
            "rfc8617_5_2_three_sets",
            sealed(&[hop(1), hop(2), hop(3)]),
            "pass",
            "(i=3)",
        ),
        case(
            "rfc8617_5_2_step5_an_older_ams_that_no_longer_verifies",
            older_ams_broken,
            "pass",
            "(i=2)",
        ),
        case(
            "rfc8617_4_1_2_ams_v_tag_ignored",
            sealed(&[ams(hop(1), "i=1;", "v=1; i=1;")]),
            "pass",
            "(i=1)",
        ),
        case(
            "rfc8617_5_2_step3_1_set_without_ams",
            without("ams"),
            "fail",
            "no ARC-Message-Signature",
        ),
        case(
            "rfc8617_5_2_step3_1_set_without_seal",
            without("seal"),
            "fail",
            "no ARC-Seal",
        ),
        case(
            "rfc8617_5_2_step3_1_set_without_aar",
            without("aar"),
            "fail",
            "no ARC-Authentication-Results",
        ),
        case(
            "rfc8617_5_2_step3_1_set_with_two_aar",
            twice_aar,
            "fail",
            "has 2 ARC-Authentication-Results",
        ),
        case(
            "rfc8617_5_2_step3_2_instance_gap",
            sealed(&[hop(1), Set::new(3, "pass", HOPS[1].0, "arc", HOPS[1].1)]),
            "fail",
            "no ARC set has i=2",
        ),
        case(
            "rfc8617_5_2_step3_2_instance_repeated",
            sealed(&[hop(1), Set::new(1, "none", HOPS[1].0, "arc", HOPS[1].1)]),
            "fail",
            "i=1 has 2",
        ),
        case(
            "rfc8617_5_2_step3_3_first_seal_cv_not_none",
            sealed(&[seal(hop(1), "cv=none", "cv=pass")]),
            "fail",
            "ARC-Seal i=1 has cv=pass",
        ),
        case(
            "rfc8617_5_2_step3_3_later_seal_cv_not_pass",
            sealed(&[hop(1), seal(hop(2), "cv=pass", "cv=none")]),
            "fail",
            "ARC-Seal i=2 has cv=none",
        ),
        case(
            "rfc8617_5_2_step2_newest_seal_cv_fail",
            sealed(&[hop(1), seal(hop(2), "cv=pass", "cv=fail")]),
            "fail",
            "cv=fail",
        ),
        case(
            "rfc8617_4_2_1_instance_above_50",
            sealed(&[Set::new(51, "none", HOPS[0].0, "arc", HOPS[0].1)]),
            "fail",
            "i=51",
        ),
        case(
            "rfc8617_4_1_3_seal_tag_twice",
            sealed(&[seal(hop(1), "cv=none;", "cv=none; cv=none;")]),
            "fail",
            "cv= appears twice",
        ),
        case(
            "rfc8617_4_1_3_seal_tag_spec_malformed",
            sealed(&[seal(hop(1), "cv=none;", "cv=none; 9x=1;")]),
            "fail",
            "\"9x\" is not a tag name",
        ),
        case(
            "rfc8617_4_1_3_seal_with_h",
            sealed(&[seal(hop(1), "cv=none;", "cv=none; h=from;")]),
            "fail",
            "allows no h= in an ARC-Seal",
        ),
        case(
            "rfc8617_4_1_3_no_algorithm",
            sealed(&[seal(
                ams(hop(1), " a=rsa-sha256;", ""),
                " a=rsa-sha256;",
                "",
            )]),
            "fail",
            "no a=",
        ),
        case("rfc8301_3_1_rsa_sha1", sha1, "fail", "rsa-sha1"),
        case(
            "rfc8617_4_1_2_ams_signs_arc_seal",
            signs_seal,
            "fail",
            "the AMS signs the ARC-Seal",
        ),
        case(
            "rfc6376_5_4_ams_does_not_sign_from",
            without_from,
            "fail",
            "the AMS does not sign From",
        ),
        case(
            "rfc6376_3_2_ams_tag_twice",
            sealed(&[ams(hop(1), "s=arc;", "s=arc; s=arc;")]),
            "fail",
            "s= appears twice",
        ),
        case(
            "rfc6376_3_5_d_not_a_domain_name",
            sealed(&[seal(hop(1), "d=example.net", "d=example..net")]),
            "fail",
            "d=example..net",
        ),
        case(
            "rfc8617_4_1_1_aar_instance_not_first",
            sealed(&[aar_late]),
            "fail",
            "ARC-Authentication-Results: does not start with i=",
        ),
        case(
            "rfc8617_5_2_step4_newest_ams_key_unusable",
            sealed(&[ams(hop(1), "s=arc", "s=tlsrpt")]),
            "fail",
            "not email",
        ),
        case(
            "rfc8617_5_2_step6_seal_key_unusable",
            sealed(&[seal(hop(1), "s=arc", "s=sha1only"), hop(2)]),
            "fail",
            "not sha256",
        ),
        case(
            "rfc8617_5_2_step6_seal_key_missing",
            sealed(&[seal(hop(1), "s=arc", "s=gone"), hop(2)]),
            "fail",
            "",
        ),
        case(
            "rfc6376_6_1_2_key_lookup_fails_for_now",
            sealed(&[seal(hop(1), "s=arc", "s=servfail")]),
            "temperror",
            "",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc8617_suite_passes_whole() {
    let fixture = Fixture::new(zone());
    let cases = cases();
    let mut failures = Vec::new();
    for case in &cases {
        let outcome = fixture
            .check(
                &case.raw,
                STRANGER,
                "forwarder.example.net",
                "list@example.net",
            )
            .await;
        let arc = result(&outcome, "arc");
        let (got, detail) = (arc[0].result, &arc[0].detail);
        if got != case.expect || !detail.contains(case.because) {
            failures.push(format!(
                "{}: arc={got} {detail}, expected arc={} ({})",
                case.name, case.expect, case.because
            ));
        }
        let alone = mail_auth_alone(&fixture.auth, &case.raw).await;
        let known = MAIL_AUTH_ALONE
            .iter()
            .find(|(name, _)| *name == case.name)
            .map_or(case.expect, |(_, said)| *said);
        if alone != known {
            failures.push(format!(
                "{}: mail-auth alone says {alone}, not {known}",
                case.name
            ));
        }
    }
    eprintln!(
        "RFC 8617 suite: {} cases, {} of them wrong by mail-auth alone",
        cases.len(),
        MAIL_AUTH_ALONE.len()
    );
    assert_eq!(cases.len(), 29);
    assert!(
        failures.is_empty(),
        "{} of {} fail: {failures:#?}",
        failures.len(),
        cases.len()
    );
}
