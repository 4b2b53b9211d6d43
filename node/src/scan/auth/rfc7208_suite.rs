//! The RFC 7208 SPF test suite (openspf.org, as kept by pyspf; see
//! `tests/data/spf/README.md`), each scenario's zone served by the test DNS server.

use super::fixture::Fixture;
use super::spf::spf_token;
use bulwark_cluster_tests::dns::{Fault, Kind, Record, Zone};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;
use yaml_rust2::{Yaml, YamlLoader};

const SUITE: &str = include_str!("../../../tests/data/spf/rfc7208-tests.yml");
/// The RFC 4408 suite it grew from: every test there is in the RFC 7208 suite under
/// the same name; where RFC 7208 changed the scenario or the expected result, the
/// RFC 7208 answer is the one held to.
const SUITE_4408: &str = include_str!("../../../tests/data/spf/rfc4408-tests.yml");

/// The zone of one scenario, with pyspf's `testspf.py` semantics: `SPF` records
/// are served as TXT unless the name has TXT records (`TXT: NONE` meaning none),
/// and a bare `TIMEOUT` makes every query type not listed before it time out,
/// records after it being unreachable.
fn zone(data: &Yaml) -> Zone {
    let mut zone = Zone::new();
    let Some(names) = data.as_hash() else {
        return zone;
    };
    for (name, items) in names {
        let name = name.as_str().expect("zone names are strings");
        zone.declare(name);
        let mut has_txt = false;
        let mut spf = Vec::new();
        let mut seen = Vec::new();
        let mut timed_out: Vec<Kind> = Vec::new();
        let mut cut = false;
        for item in items.as_vec().into_iter().flatten() {
            if item.as_str() == Some("TIMEOUT") {
                timed_out.extend(Kind::ALL.into_iter().filter(|k| !seen.contains(k)));
                cut = true;
                break;
            }
            let Some((kind, value)) = item.as_hash().and_then(|h| h.front()) else {
                continue;
            };
            let kind = kind.as_str().expect("record types are strings");
            if kind == "TXT" {
                has_txt = true;
            }
            if value.as_str() == Some("NONE") {
                continue;
            }
            if value.as_str() == Some("TIMEOUT") {
                timed_out.extend(wire_kind(kind));
                continue;
            }
            let record = match kind {
                "SPF" => {
                    spf.push(txt(value));
                    continue;
                }
                "TXT" => txt(value),
                "A" => Record::A(scalar(value).parse::<Ipv4Addr>().expect("A")),
                "AAAA" => Record::Aaaa(scalar(value).parse::<Ipv6Addr>().expect("AAAA")),
                "MX" => Record::Mx {
                    preference: u16::try_from(value[0].as_i64().expect("MX preference"))
                        .expect("MX preference"),
                    exchange: scalar(&value[1]),
                },
                "PTR" => Record::Ptr(scalar(value)),
                "CNAME" => Record::Cname(scalar(value)),
                other => panic!("record type {other} in the suite"),
            };
            seen.push(record.kind());
            zone.add(name, record);
        }
        if !has_txt && !cut {
            for record in spf {
                zone.add(name, record);
            }
        }
        if !timed_out.is_empty() {
            zone.fault(name, Fault::Silent, &timed_out);
        }
    }
    zone
}

fn wire_kind(kind: &str) -> Option<Kind> {
    Some(match kind {
        "A" => Kind::A,
        "AAAA" => Kind::Aaaa,
        "MX" => Kind::Mx,
        "TXT" | "SPF" => Kind::Txt,
        "PTR" => Kind::Ptr,
        "CNAME" => Kind::Cname,
        _ => return None,
    })
}

/// A TXT record from a string or a list of strings (one character-string each),
/// as UTF-8 the way pyspf encodes them.
fn txt(value: &Yaml) -> Record {
    let strings: Vec<String> = match value {
        Yaml::Array(items) => items.iter().map(scalar).collect(),
        other => vec![scalar(other)],
    };
    let mut strings: Vec<Vec<u8>> = strings
        .iter()
        .flat_map(|s| {
            s.as_bytes()
                .chunks(255)
                .map(<[u8]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect();
    // A TXT record holds at least one string (RFC 1035 §3.3.14).
    if strings.is_empty() {
        strings.push(Vec::new());
    }
    Record::Txt(strings)
}

fn scalar(value: &Yaml) -> String {
    match value {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        other => panic!("unexpected value {other:?}"),
    }
}

/// One test of a suite: its scenario's zone and its inputs and expectations.
struct Case<'a> {
    zone: &'a Yaml,
    test: &'a Yaml,
}

/// Every test of `suite` by name.
fn cases(scenarios: &[Yaml]) -> Vec<(String, Case<'_>)> {
    let mut cases = Vec::new();
    for scenario in scenarios {
        for (id, test) in scenario["tests"].as_hash().expect("tests") {
            cases.push((
                id.as_str().expect("test id").to_string(),
                Case {
                    zone: &scenario["zonedata"],
                    test,
                },
            ));
        }
    }
    cases
}

fn expected(test: &Yaml) -> Vec<String> {
    match &test["result"] {
        Yaml::Array(results) => results.iter().map(scalar).collect(),
        other => vec![scalar(other)],
    }
}

/// Runs one case; the problem, if the result or the explanation is not what
/// `accepted` allows.
async fn run(case: &Case<'_>, accepted: &[String]) -> Option<String> {
    let fixture =
        Fixture::with_timeout(zone(case.zone), Duration::from_millis(250), "receiver.test");
    let test = case.test;
    let helo = test["helo"].as_str().unwrap_or("");
    let ip: IpAddr = test["host"]
        .as_str()
        .expect("host")
        .parse()
        .expect("host IP");
    let mail_from = test["mailfrom"].as_str().unwrap_or("");
    let spf = fixture.auth.spf_mail_from(ip, helo, mail_from).await;
    let got = spf_token(spf.result);
    if !accepted.iter().any(|e| e == got) {
        return Some(format!("result {got}, expected {accepted:?}"));
    }
    if let (Some(want), "fail") = (test["explanation"].as_str(), got) {
        let explanation = spf.explanation.as_deref().unwrap_or("DEFAULT");
        if explanation != want {
            return Some(format!("explanation {explanation:?}, expected {want:?}"));
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc7208_test_suite_passes_whole() {
    let scenarios = YamlLoader::load_from_str(SUITE).expect("suite YAML");
    let cases = cases(&scenarios);
    let mut failures = Vec::new();
    for (id, case) in &cases {
        if let Some(problem) = run(case, &expected(case.test)).await {
            failures.push(format!("{id}: {problem}"));
        }
    }
    assert_eq!(cases.len(), 203);
    assert!(
        failures.is_empty(),
        "{} of 203 fail: {failures:#?}",
        failures.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc4408_test_suite_passes_where_rfc7208_did_not_change_it() {
    let scenarios = YamlLoader::load_from_str(SUITE_4408).expect("suite YAML");
    let newer = YamlLoader::load_from_str(SUITE).expect("suite YAML");
    let newer = cases(&newer);
    let cases = cases(&scenarios);
    let (mut failures, mut changed) = (Vec::new(), 0);
    for (id, case) in &cases {
        let (_, now) = newer
            .iter()
            .find(|(newer_id, _)| newer_id == id)
            .expect("every RFC 4408 test is in the RFC 7208 suite");
        let mut accepted = expected(case.test);
        if expected(now.test) != accepted || now.zone != case.zone {
            changed += 1;
            accepted = expected(now.test);
            if now.zone != case.zone {
                continue;
            }
        }
        if let Some(problem) = run(case, &accepted).await {
            failures.push(format!("{id}: {problem}"));
        }
    }
    eprintln!(
        "RFC 4408 suite: {} tests, {changed} changed by RFC 7208",
        cases.len()
    );
    assert_eq!(cases.len(), 191);
    assert!(failures.is_empty(), "{failures:#?}");
}
