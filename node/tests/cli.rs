//! The `bulwark` command line, run as a real process.

use std::path::Path;
use std::process::{Command, Output};

fn bulwark(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run bulwark")
}

/// A CA in `dir/ca` and a certificate for 127.0.0.1 of each of `ids` beside it, made
/// with `bulwark cert`.
fn certificates(dir: &Path, ca: &str, ids: &[&str]) {
    let out = bulwark(&["cert", "ca", "--out", ca], dir);
    assert!(out.status.success(), "{}", text(&out));
    for id in ids {
        let args = [
            "cert",
            "node",
            "--ca",
            ca,
            "--id",
            id,
            "--san",
            "127.0.0.1",
            "--out",
            ca,
        ];
        let out = bulwark(&args, dir);
        assert!(out.status.success(), "{}", text(&out));
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn help_documents_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let out = bulwark(&["--help"], dir.path());
    assert!(out.status.success());
    let help = text(&out);
    for sub in ["serve", "cert", "check-config", "audit"] {
        assert!(help.contains(sub), "--help lacks {sub}:\n{help}");
    }
}

#[test]
fn cert_makes_a_ca_and_node_certificates_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(bulwark(&["cert", "ca", "--out", "certs"], d)
        .status
        .success());
    let out = bulwark(
        &[
            "cert",
            "node",
            "--ca",
            "certs",
            "--id",
            "2",
            "--san",
            "127.0.0.1,localhost",
            "--out",
            "certs",
        ],
        d,
    );
    assert!(out.status.success(), "{}", text(&out));
    for file in ["ca.pem", "ca.key", "node2.pem", "node2.key"] {
        let content = std::fs::read_to_string(d.join("certs").join(file)).unwrap();
        assert!(content.starts_with("-----BEGIN"), "{file} is not PEM");
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(d.join("certs/node2.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o077, 0, "private key readable by others");

    let again = bulwark(&["cert", "ca", "--out", "certs"], d);
    assert!(!again.status.success());
    assert!(
        text(&again).contains("refusing to overwrite"),
        "{}",
        text(&again)
    );

    let no_ca = bulwark(
        &[
            "cert", "node", "--ca", "nowhere", "--id", "3", "--san", "x", "--out", "certs",
        ],
        d,
    );
    assert!(!no_ca.status.success());
    assert!(text(&no_ca).contains("nowhere/ca.pem"), "{}", text(&no_ca));
    let zero = bulwark(
        &[
            "cert", "node", "--ca", "certs", "--id", "0", "--san", "x", "--out", "certs",
        ],
        d,
    );
    assert!(!zero.status.success());
}

/// `cert cluster` makes what is missing and keeps what is there: a one-shot that runs
/// at every start of a deployment changes nothing the second time.
#[test]
fn cert_cluster_makes_what_is_missing_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let args = |nodes: &[&'static str]| {
        let mut a = vec!["cert", "cluster", "--out", "certs"];
        for n in nodes {
            a.extend(["--node", n]);
        }
        a
    };
    let out = bulwark(&args(&["1=node1,localhost", "2=node2"]), d);
    assert!(out.status.success(), "{}", text(&out));
    let node1 = std::fs::read_to_string(d.join("certs/node1.pem")).unwrap();
    let ca = std::fs::read_to_string(d.join("certs/ca.pem")).unwrap();

    let out = bulwark(&args(&["1=node1,localhost", "2=node2", "3=node3"]), d);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("node1.pem exists: kept"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_to_string(d.join("certs/node1.pem")).unwrap(),
        node1
    );
    assert_eq!(std::fs::read_to_string(d.join("certs/ca.pem")).unwrap(), ca);
    assert!(d.join("certs/node3.key").exists());

    // The owner given is the caller's own here (a test is not root); the files are
    // still given to it and the directory opened for the nodes to read.
    let me = std::fs::metadata(d).unwrap();
    let owner = format!(
        "{}:{}",
        std::os::unix::fs::MetadataExt::uid(&me),
        std::os::unix::fs::MetadataExt::gid(&me)
    );
    let mut with_owner = args(&["1=node1"]);
    with_owner.extend(["--owner", &owner]);
    let out = bulwark(&with_owner, d);
    assert!(out.status.success(), "{}", text(&out));

    for (bad, says) in [
        ("1:node1", "expected ID=NAMES"),
        ("0=node0", "not a positive node id"),
        ("4=node4,", "a name is empty"),
    ] {
        let out = bulwark(&args(&[bad]), d);
        assert!(!out.status.success(), "{bad} accepted");
        assert!(text(&out).contains(says), "{bad}: {}", text(&out));
    }
    let mut bad_owner = args(&["1=node1"]);
    bad_owner.extend(["--owner", "bulwark"]);
    let out = bulwark(&bad_owner, d);
    assert!(text(&out).contains("numeric UID:GID"), "{}", text(&out));
}

#[test]
fn check_config_reports_every_problem_and_accepts_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("bad.toml"),
        "[node]\nid = 0\n[cluster]\nlisten = \"x\"\n[api]\nlisten = \"y\"\ntls_cert = \"api.pem\"\n",
    )
    .unwrap();
    let out = bulwark(&["check-config", "bad.toml"], d);
    assert_eq!(out.status.code(), Some(1));
    let report = text(&out);
    for expected in [
        "node.id",
        "cluster.listen",
        "cluster.peers",
        "cluster.ca",
        "api.listen",
        "api.tls_cert and api.tls_key go together",
    ] {
        assert!(report.contains(expected), "missing {expected}:\n{report}");
    }

    std::fs::write(
        d.join("good.toml"),
        "[node]\nid = 1\n[api]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let out = bulwark(&["check-config", "good.toml"], d);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn audit_verify_refuses_what_is_not_a_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let out = bulwark(&["audit", "verify", "--data-dir", "."], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("not a Bulwark data directory"),
        "{}",
        text(&out)
    );
}

/// `check-config` says what `serve` would stop on: a certificate of another node, a
/// key that is not the certificate's, a certificate from another CA, a data directory
/// that cannot be made. A config without those mistakes is ok.
#[test]
fn check_config_catches_what_serve_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    certificates(d, "certs", &["1", "2"]);
    certificates(d, "other", &["1"]);
    std::fs::write(d.join("a-file"), "").unwrap();
    let config = |id: u64, data_dir: &str, ca: &str, cert: &str, key: &str| {
        format!(
            "[node]\nid = {id}\ndata_dir = \"{data_dir}\"\n\
             [cluster]\nlisten = \"127.0.0.1:7001\"\n\
             peers = {{ \"1\" = \"127.0.0.1:7001\", \"2\" = \"127.0.0.1:7002\" }}\n\
             ca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n"
        )
    };
    let good = config(
        1,
        "data1",
        "certs/ca.pem",
        "certs/node1.pem",
        "certs/node1.key",
    );
    std::fs::write(d.join("good.toml"), good).unwrap();
    let out = bulwark(&["check-config", "good.toml"], d);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !d.join("data1").exists(),
        "check-config made the data directory"
    );

    for (name, file, expected) in [
        (
            "another node's certificate",
            config(
                2,
                "data2",
                "certs/ca.pem",
                "certs/node1.pem",
                "certs/node1.key",
            ),
            "is issued to node 1, this is node 2",
        ),
        (
            "a key that is not the certificate's",
            config(
                1,
                "data1",
                "certs/ca.pem",
                "certs/node1.pem",
                "certs/node2.key",
            ),
            "certs/node1.pem",
        ),
        (
            "a certificate from another CA",
            config(
                1,
                "data1",
                "certs/ca.pem",
                "other/node1.pem",
                "other/node1.key",
            ),
            "not signed by the cluster's CA",
        ),
        (
            "a data directory under a file",
            config(
                1,
                "a-file/data",
                "certs/ca.pem",
                "certs/node1.pem",
                "certs/node1.key",
            ),
            "node.data_dir:",
        ),
    ] {
        std::fs::write(d.join("bad.toml"), file).unwrap();
        let out = bulwark(&["check-config", "bad.toml"], d);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", text(&out));
        assert!(text(&out).contains(expected), "{name}: {}", text(&out));
    }
}

/// A three-node config whose API or SMTP other hosts reach without TLS is warned
/// about, each warning naming the keys to set; a warning is not a problem (exit 0).
/// On loopback, or with TLS, there is nothing to say.
#[test]
fn check_config_warns_of_a_cluster_listening_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    certificates(d, "certs", &["1"]);
    let config = |api: &str, smtp: &str, tls: &str| {
        format!(
            "[node]\nid = 1\ndata_dir = \"data1\"\n\
             [cluster]\nlisten = \"127.0.0.1:7001\"\n\
             peers = {{ 1 = \"127.0.0.1:7001\", 2 = \"127.0.0.1:7002\", 3 = \"127.0.0.1:7003\" }}\n\
             ca = \"certs/ca.pem\"\ncert = \"certs/node1.pem\"\nkey = \"certs/node1.key\"\n\
             [api]\nlisten = \"{api}\"\n{tls}[smtp]\nlisten = \"{smtp}\"\n{tls}"
        )
    };
    let check = |text: String| {
        std::fs::write(d.join("node1.toml"), text).unwrap();
        bulwark(&["check-config", "node1.toml"], d)
    };

    let out = check(config("127.0.0.1:8081", "127.0.0.1:2525", ""));
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("warning"), "{}", text(&out));
    assert!(text(&out).contains("node1.toml: ok"), "{}", text(&out));

    let out = check(config("0.0.0.0:8081", "192.0.2.11:25", ""));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = text(&out);
    for expected in [
        "warning: api.listen 0.0.0.0:8081",
        "set api.tls_cert and api.tls_key",
        "warning: smtp.listen 192.0.2.11:25",
        "set smtp.tls_cert and smtp.tls_key",
        "node1.toml: ok, with 2 warning(s)",
    ] {
        assert!(report.contains(expected), "missing {expected}:\n{report}");
    }

    let tls = "tls_cert = \"certs/node1.pem\"\ntls_key = \"certs/node1.key\"\n";
    let out = check(config("0.0.0.0:8081", "0.0.0.0:25", tls));
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("warning"), "{}", text(&out));
}

/// A node that cannot form its cluster says so every few seconds, naming each peer it
/// cannot reach and why: one not listening, one whose certificate another CA signed.
#[test]
fn a_node_waiting_for_its_peers_says_which_and_why() {
    use bulwark_cluster_tests::ports::free as free_port;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    certificates(d, "certs", &["1"]);
    certificates(d, "foreign", &["2"]);
    let cluster: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peers = format!(
        "{{ \"1\" = \"127.0.0.1:{}\", \"2\" = \"127.0.0.1:{}\", \"3\" = \"127.0.0.1:{}\" }}",
        cluster[0], cluster[1], cluster[2]
    );
    let mut nodes = Vec::new();
    for (id, ca) in [(1usize, "certs"), (2, "foreign")] {
        let config = format!(
            "[node]\nid = {id}\ndata_dir = \"data{id}\"\n[api]\nlisten = \"127.0.0.1:{}\"\n\
             [smtp]\nlisten = \"127.0.0.1:{}\"\n[cluster]\nlisten = \"127.0.0.1:{}\"\n\
             peers = {peers}\nca = \"{ca}/ca.pem\"\ncert = \"{ca}/node{id}.pem\"\n\
             key = \"{ca}/node{id}.key\"\n",
            free_port(),
            free_port(),
            cluster[id - 1]
        );
        std::fs::write(d.join(format!("node{id}.toml")), config).unwrap();
        let log = std::fs::File::create(d.join(format!("node{id}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_bulwark"))
            .args(["serve", "--config", &format!("node{id}.toml")])
            .current_dir(d)
            .env("BULWARK_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        nodes.push(child);
    }
    let log = || std::fs::read_to_string(d.join("node1.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && !log().contains("waiting for peers") {
        std::thread::sleep(Duration::from_millis(200));
    }
    // Meanwhile SMTP sends clients elsewhere at once instead of taking a message it
    // could only answer 451.
    let smtp = std::fs::read_to_string(d.join("node1.toml"))
        .unwrap()
        .lines()
        .skip_while(|l| *l != "[smtp]")
        .find_map(|l| l.strip_prefix("listen = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_string();
    let mut greeting = String::new();
    let stream = std::net::TcpStream::connect(&smtp).unwrap();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stream), &mut greeting).unwrap();
    for mut node in nodes {
        node.kill().unwrap();
        node.wait().unwrap();
    }
    assert!(
        greeting.starts_with("421 4.3.0 ") && greeting.contains("not part of a cluster yet"),
        "{greeting}"
    );
    let log = log();
    let line = log
        .lines()
        .find(|l| l.contains("waiting for peers"))
        .unwrap_or_else(|| panic!("no report in 20 s:\n{log}"));
    assert!(line.contains("this node forms the cluster"), "{line}");
    assert!(
        line.contains(&format!("node 3 at 127.0.0.1:{}", cluster[2]))
            && line.contains("Connection refused"),
        "{line}"
    );
    assert!(
        line.contains("node 2 at") && line.contains("not signed by this cluster's CA"),
        "{line}"
    );
}

/// A listen address another program holds is said (serve would stop on it), as a
/// warning: it may be the node itself, running while its next config is checked. An
/// address of another machine is not this machine's business.
#[test]
fn check_config_says_which_ports_are_taken() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    std::fs::write(
        d.join("taken.toml"),
        format!("[node]\ndata_dir = \"data\"\n[smtp]\nlisten = \"{addr}\"\n"),
    )
    .unwrap();
    let out = bulwark(&["check-config", "taken.toml"], d);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "warning: smtp.listen {addr} is in use on this machine"
        )),
        "{}",
        text(&out)
    );
    drop(taken);
    let out = bulwark(&["check-config", "taken.toml"], d);
    assert!(!text(&out).contains("smtp.listen"), "{}", text(&out));

    std::fs::write(
        d.join("elsewhere.toml"),
        "[node]\ndata_dir = \"data\"\n[smtp]\nlisten = \"192.0.2.25:25\"\n",
    )
    .unwrap();
    let out = bulwark(&["check-config", "elsewhere.toml"], d);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("smtp.listen"), "{}", text(&out));
}
