//! The configuration as a whole: the embedded default, every problem reported at
//! once, and the checks that span sections.

use super::*;
use crate::smtp;

fn parse(text: &str) -> Result<Config, Vec<String>> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bulwark.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path)
}

#[test]
fn embedded_default_is_single_node() {
    let c = Config::embedded();
    assert_eq!(c.node.id, 1);
    assert!(c.node.cluster.is_none());
    assert_eq!(c.api_listen.to_string(), "127.0.0.1:8080");
    assert_eq!(
        c.admin_token_file,
        PathBuf::from("bulwark-data/admin.token")
    );
    assert_eq!(c.smtp.listen.to_string(), "127.0.0.1:2525");
    assert_eq!(c.smtp.domains, vec!["localhost", "example.test"]);
    assert_eq!(c.smtp.max_message_size, 26_214_400);
    assert!(c.smtp.tls.is_none());
    assert_eq!(c.backup_dir, PathBuf::from("bulwark-data/backups"));
}

#[test]
fn the_backup_directory_is_relative_to_the_data_directory_and_apart_from_it() {
    let c = parse("[node]\ndata_dir = \"/srv/b\"\n[backup]\ndir = \"/var/backups/b\"\n").unwrap();
    assert_eq!(c.backup_dir, PathBuf::from("/var/backups/b"));
    let c = parse("[node]\ndata_dir = \"/srv/b\"\n[backup]\ndir = \"saved\"\n").unwrap();
    assert_eq!(c.backup_dir, PathBuf::from("/srv/b/saved"));
    for dir in ["", "/srv", "/"] {
        let problems = parse(&format!(
            "[node]\ndata_dir = \"/srv/b\"\n[backup]\ndir = \"{dir}\"\n"
        ))
        .unwrap_err();
        assert!(
            problems[0].contains("must not be the data directory or hold it"),
            "{dir:?}: {problems:?}"
        );
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let problems = parse(
        r#"
        [node]
        id = 0
        [api]
        listen = "nowhere"
        [cluster]
        peers = { "x" = "127.0.0.1:1", "2" = "127.0.0.1:2" }
        ca = "missing-ca.pem"
        [raft]
        heartbeat_ms = 500
        election_timeout_ms = 1000
        [smtp]
        listen = "localhost"
        domains = ["a b"]
        max_message_size = 0
        tls_cert = "smtp.pem"
        bare_newline = "strip"
        [quarantine]
        retention_days = -1
        check_secs = 0
        erase_within_secs = 1
        "#,
    )
    .unwrap_err();
    let all = problems.join("\n");
    for expected in [
        "node.id must be a positive integer",
        "api.listen",
        "cluster.listen is required",
        "key \"x\" is not a positive node id",
        "does not list this node",
        "cluster.ca",
        "cluster.cert is required",
        "cluster.key is required",
        "election_timeout_ms (1000) must be at least 4 x",
        "smtp.listen",
        "smtp.domains: \"a b\" is not a domain",
        "smtp.max_message_size must be positive",
        "smtp.tls_cert and smtp.tls_key go together",
        "smtp.bare_newline",
        "quarantine.retention_days must be 0 (keep until someone acts) to 36500, not -1",
        "quarantine.check_secs must be positive",
        "quarantine.erase_within_secs must be 2 to 2592000 (30 days), not 1",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
}

#[test]
fn smtp_allow_routing_from_takes_networks_and_addresses() {
    let problems =
        parse("[smtp]\nallow_routing_from = [\"10.0.0.0/8\", \"nowhere\", \"10.0.0.0/99\"]\n")
            .unwrap_err();
    let all = problems.join("\n");
    for expected in [
        "smtp.allow_routing_from: \"nowhere\" is neither",
        "smtp.allow_routing_from: \"10.0.0.0/99\" is neither",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
    let c = parse("[smtp]\nallow_routing_from = [\"10.1.2.3/8\", \"2001:db8::1\"]\n").unwrap();
    let nets: Vec<String> = c
        .smtp
        .allow_routing_from
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(nets, ["10.0.0.0/8", "2001:db8::1/128"]);
    assert!(Config::embedded().smtp.allow_routing_from.is_empty());
}

#[test]
fn smtp_nul_bytes_is_reject_or_strip() {
    let problems = parse("[smtp]\nnul_bytes = \"keep\"\n").unwrap_err();
    assert_eq!(
        problems,
        ["smtp.nul_bytes: \"keep\" is not \"reject\" or \"strip\""]
    );
    let c = parse("[smtp]\nnul_bytes = \"strip\"\n").unwrap();
    assert_eq!(c.smtp.nul_bytes, smtp::NulBytes::Strip);
    assert_eq!(Config::embedded().smtp.nul_bytes, smtp::NulBytes::Reject);
}

#[test]
fn scan_bayes_max_tokens_is_a_million_by_default_zero_for_none_and_not_tiny() {
    assert_eq!(Config::embedded().scan.bayes_max_tokens, Some(1_000_000));
    let c = parse("[scan]\nbayes_max_tokens = 0\n").unwrap();
    assert_eq!(c.scan.bayes_max_tokens, None);
    let c = parse("[scan]\nbayes_max_tokens = 100\n").unwrap();
    assert_eq!(c.scan.bayes_max_tokens, Some(100));
    assert_eq!(
        parse("[scan]\nbayes_max_tokens = 99\n").unwrap_err(),
        ["scan.bayes_max_tokens must be 0 (no limit) or at least 100"]
    );
}

#[test]
fn smtp_session_limits_and_timeouts_are_checked_together() {
    let problems = parse(
        r#"
        [smtp]
        max_sessions_per_network = 0
        first_command_timeout_secs = 0
        stress_timeout_secs = 0
        "#,
    )
    .unwrap_err();
    let all = problems.join("\n");
    for expected in [
        "smtp.max_sessions_per_network must be positive",
        "smtp.first_command_timeout_secs must be positive",
        "smtp.stress_timeout_secs must be positive",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
    let d = Config::embedded().smtp;
    assert_eq!(d.max_sessions_per_network, 200);
    assert_eq!(d.first_command_timeout, Duration::from_secs(30));
    assert_eq!(d.stress_timeout, Duration::from_secs(10));
    assert_eq!(d.shed_idle_after, Duration::from_secs(2));
}

#[test]
fn unknown_fields_are_refused() {
    let problems = parse("[node]\nid = 1\ncolour = \"red\"\n").unwrap_err();
    assert!(
        problems[0].contains("unknown field `colour`"),
        "{problems:?}"
    );
}

#[test]
fn siem_exporters_seed_the_policy_and_their_inline_secrets_stay_in_the_file() {
    let exporter = "[[siem.exporters]]\nname = \"hook\"\nkind = \"webhook\"\n\
                    url = \"https://soar.example.test/\"\nsecret = \"sixteen-bytes-or-more\"\n";
    let c = parse(exporter).unwrap();
    let seeded = c.policy_document.exporters.clone().unwrap();
    assert_eq!(seeded[0].name.as_deref(), Some("hook"));
    assert_eq!(seeded[0].secret, None);
    assert!(!c.policy_document.canonical().contains("sixteen-bytes"));
    assert_eq!(c.siem_local.secrets["hook"], b"sixteen-bytes-or-more");
    assert_eq!(c.siem[0].name, "hook");
    // Written in the policy, a secret is refused; both sections at once too.
    let inline = exporter.replace("[[siem.exporters]]", "[[policy.exporters]]");
    let problems = parse(&inline).unwrap_err();
    assert!(
        problems[0].starts_with("policy.exporters[0] (hook): secret: a secret stays out"),
        "{problems:?}"
    );
    let problems = parse(&format!("{exporter}{inline}")).unwrap_err();
    assert!(
        problems.contains(&"siem.exporters and policy.exporters: one or the other".to_string()),
        "{problems:?}"
    );
    // A file named relative to the config's directory is read there.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hook.key"), "sixteen-bytes-or-more\n").unwrap();
    let path = dir.path().join("bulwark.toml");
    std::fs::write(
        &path,
        exporter.replace("secret = ", "secret_file = \"hook.key\"\n#"),
    )
    .unwrap();
    let c = Config::load(&path).unwrap();
    assert_eq!(c.siem_local.base, dir.path());
    let written = &c.policy_document.exporters.as_ref().unwrap()[0];
    assert_eq!(written.secret_file.as_deref(), Some(Path::new("hook.key")));
    let policy = policy_of(&path).unwrap();
    assert_eq!(policy.exporters.unwrap()[0], *written);
}

#[test]
fn every_section_named_is_one_a_file_may_have() {
    for section in SECTIONS {
        let raw: Result<Raw, _> = toml::from_str(&format!("[{section}]\n"));
        assert!(raw.is_ok(), "[{section}]: {raw:?}");
    }
}

#[test]
fn dns_public_suffix_list_is_read_relative_to_the_config_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("suffixes.dat"),
        "// ===BEGIN ICANN DOMAINS===\ncom\nexample.com\n",
    )
    .unwrap();
    let path = dir.path().join("bulwark.toml");
    std::fs::write(&path, "[dns]\npublic_suffix_list = \"suffixes.dat\"\n").unwrap();
    let config = Config::load(&path).unwrap();
    assert_eq!(
        config.dns.suffixes.organizational("news.example.com"),
        "news.example.com"
    );
    assert_eq!(
        Config::embedded()
            .dns
            .suffixes
            .organizational("news.example.com"),
        "example.com"
    );
    std::fs::write(&path, "[dns]\npublic_suffix_list = \"missing.dat\"\n").unwrap();
    let problems = Config::load(&path).unwrap_err().join("\n");
    assert!(
        problems.contains("dns.public_suffix_list:") && problems.contains("missing.dat"),
        "{problems}"
    );
}

#[test]
fn every_toml_mistake_is_reported_with_its_line_and_the_rest_still_checked() {
    let problems = parse(
        "[node]\nid = 0\ndata_dir = \"unterminated\n\
         [smtp]\nmax_sesions = 10\nhostname = \"mx.example.test\"\n\
         [quarantine]\nretention_days = \"thirty\"\n\
         [dns]\nnameservers = [\n  \"127.0.0.1\",\n  53,\n]\ntimeout_ms = 500\n\
         [smpt]\nlisten = \"127.0.0.1:25\"\n",
    )
    .unwrap_err();
    let all = problems.join("\n");
    for expected in [
        "line 3: ",
        "line 5: unknown field `max_sesions`",
        "line 8: invalid type: string \"thirty\"",
        "line 12: invalid type: integer `53`",
        "line 15: unknown field `smpt`",
        "node.id must be a positive integer",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
    assert!(!all.contains("line 6"), "a good line reported:\n{all}");
}

#[test]
fn a_host_name_as_listen_address_is_refused_with_what_to_write() {
    let problems =
        parse("[api]\nlisten = \"localhost:9080\"\n[smtp]\nlisten = \"mx.example.test:25\"\n")
            .unwrap_err()
            .join("\n");
    for expected in [
        "api.listen: \"localhost:9080\": a listen address is an IP address: write 127.0.0.1:9080",
        "smtp.listen: \"mx.example.test:25\": a listen address is an IP address, not a host name: write 0.0.0.0:25",
    ] {
        assert!(problems.contains(expected), "missing {expected:?} in:\n{problems}");
    }
    let problems = parse("[smtp]\nlisten = \"::1:2525\"\n")
        .unwrap_err()
        .join("\n");
    assert!(problems.contains("write [::1]:2525"), "{problems}");
}

/// A three-node config in a directory of its own, its certificate files present
/// (empty: `load` only checks they are files), with the API and SMTP listening on
/// `api` and `smtp`; `tls` gives both a certificate.
fn three_nodes(api: &str, smtp: &str, tls: bool) -> Config {
    let dir = tempfile::tempdir().unwrap();
    for file in ["ca.pem", "node1.pem", "node1.key"] {
        std::fs::write(dir.path().join(file), "").unwrap();
    }
    let tls = if tls {
        "tls_cert = \"node1.pem\"\ntls_key = \"node1.key\"\n"
    } else {
        ""
    };
    let path = dir.path().join("bulwark.toml");
    std::fs::write(
        &path,
        format!(
            "[cluster]\nlisten = \"127.0.0.1:7001\"\n\
             peers = {{ 1 = \"10.0.0.11:7001\", 2 = \"10.0.0.12:7001\", 3 = \"10.0.0.13:7001\" }}\n\
             ca = \"ca.pem\"\ncert = \"node1.pem\"\nkey = \"node1.key\"\n\
             [api]\nlisten = \"{api}\"\n{tls}[smtp]\nlisten = \"{smtp}\"\n{tls}"
        ),
    )
    .unwrap();
    Config::load(&path).unwrap()
}

#[test]
fn a_cluster_listening_beyond_loopback_without_tls_is_warned_about() {
    for api in [
        "127.0.0.1:8080",
        "127.0.0.2:8080",
        "[::1]:8080",
        "[::ffff:127.0.0.1]:8080",
    ] {
        let c = three_nodes(api, "127.0.0.1:2525", false);
        assert_eq!(c.warnings(), Vec::<String>::new(), "{api}");
    }
    let warnings = three_nodes("0.0.0.0:8080", "10.0.0.11:25", false).warnings();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].starts_with("api.listen 0.0.0.0:8080")
            && warnings[0].contains("set api.tls_cert and api.tls_key"),
        "{warnings:?}"
    );
    assert!(
        warnings[1].starts_with("smtp.listen 10.0.0.11:25")
            && warnings[1].contains("set smtp.tls_cert and smtp.tls_key"),
        "{warnings:?}"
    );
    let warnings = three_nodes("[::]:8080", "127.0.0.1:2525", false).warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("api.listen [::]:8080"),
        "{warnings:?}"
    );
    // With TLS on both, nothing to say.
    let c = three_nodes("0.0.0.0:8080", "0.0.0.0:25", true);
    assert_eq!(c.warnings(), Vec::<String>::new());
}

#[test]
fn a_single_node_is_not_warned_about_plain_listeners() {
    let c = parse("[api]\nlisten = \"0.0.0.0:8080\"\n[smtp]\nlisten = \"0.0.0.0:25\"\n").unwrap();
    assert_eq!(c.warnings(), Vec::<String>::new());
}

#[test]
fn in_flow_delay_is_a_second_by_default_off_at_zero_and_at_most_ten_seconds() {
    let c = Config::embedded();
    assert_eq!(c.smtp.in_flow_delay, std::time::Duration::from_secs(1));
    let c = parse("[smtp]\nin_flow_delay_ms = 0\n").unwrap();
    assert!(c.smtp.in_flow_delay.is_zero());
    let c = parse("[smtp]\nin_flow_delay_ms = 10000\n").unwrap();
    assert_eq!(c.smtp.in_flow_delay, std::time::Duration::from_secs(10));
    let problems = parse("[smtp]\nin_flow_delay_ms = 10001\n").unwrap_err();
    assert_eq!(
        problems,
        vec!["smtp.in_flow_delay_ms must be at most 10000"]
    );
}
