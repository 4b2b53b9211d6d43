//! t210: the Debian package, built by deploy/debian/build.sh from the binary under
//! test, installed with dpkg on a Debian bookworm container made from Debian's mirror
//! (deploy/base-image.sh). Checked in the container: the binary on the PATH, the
//! system user, the unit's command, the permissions of the configuration, the shipped
//! configuration passing `check-config`, the node started from it as that user taking
//! a message over SMTP into its Maildir, and removal and purge (the configuration and
//! the user go on purge, the data never).
//!
//! Needs a Docker engine and dpkg-deb; without them the test says so and checks
//! nothing, unless `CI` is set: then it fails.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{ensure, Context, Result};

const BASE_IMAGE: &str = "bulwark-base:bookworm";

/// Run in the container as root, with the package in /pkg.
const SCRIPT: &str = r#"
set -euo pipefail
dpkg -i /pkg/bulwark_*.deb
test "$(command -v bulwark)" = /usr/bin/bulwark
bulwark --version
id bulwark
grep -qx 'ExecStart=/usr/bin/bulwark serve --config /etc/bulwark/bulwark.toml' /lib/systemd/system/bulwark.service
echo "modes: $(stat -c '%n %U:%G %a' /etc/bulwark /etc/bulwark/bulwark.toml /var/lib/bulwark | tr '\n' ' ')"
runuser -u bulwark -- bulwark check-config /etc/bulwark/bulwark.toml
# What the unit's StateDirectory= makes.
install -d -o bulwark -g bulwark -m 0700 /var/lib/bulwark-audit
runuser -u bulwark -- bulwark serve --config /etc/bulwark/bulwark.toml >/tmp/serve.log 2>&1 &
node=$!
for _ in $(seq 1 240); do
  runuser -u bulwark -- bulwark ready --config /etc/bulwark/bulwark.toml >/dev/null 2>&1 && break
  sleep 0.25
done
runuser -u bulwark -- bulwark ready --config /etc/bulwark/bulwark.toml || { cat /tmp/serve.log; exit 1; }
exec 3<>/dev/tcp/127.0.0.1/2525
say() { printf '%s\r\n' "$1" >&3; IFS= read -r reply <&3; echo "smtp: $1 -> ${reply%$'\r'}"; }
IFS= read -r greeting <&3
say "HELO package.test"
say "MAIL FROM:<alice@sender.test>"
say "RCPT TO:<bob@localhost>"
say "DATA"
printf 'From: alice@sender.test\r\nTo: bob@localhost\r\nSubject: from the package\r\n\r\nhello\r\n' >&3
say "."
case "$reply" in 250*) ;; *) echo "not accepted: $reply"; exit 1 ;; esac
say "QUIT"
for _ in $(seq 1 120); do
  [ -n "$(ls -A /var/lib/bulwark/delivered/new 2>/dev/null)" ] && break
  sleep 0.25
done
echo "delivered: $(ls /var/lib/bulwark/delivered/new | wc -l)"
kill -TERM "$node"; wait "$node" || true
dpkg -r bulwark
test -f /etc/bulwark/bulwark.toml && echo "removed: configuration kept"
dpkg -P bulwark
test ! -e /etc/bulwark && ! id bulwark 2>/dev/null && test -d /var/lib/bulwark/delivered/new \
  && echo "purged: configuration and user gone, data kept"
"#;

fn available() -> bool {
    let ok = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    ok("docker", "info") && ok("dpkg-deb", "--version")
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{text}",
        out.status
    );
    Ok(text)
}

#[test]
fn t210_debian_package_installs_runs_and_purges() -> Result<()> {
    if !available() {
        ensure!(
            std::env::var_os("CI").is_none(),
            "CI is set and there is no Docker engine or dpkg-deb"
        );
        eprintln!("t210: no Docker engine or dpkg-deb here: nothing checked");
        return Ok(());
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the repository")?;
    run(Command::new(repo.join("deploy/base-image.sh")).arg(BASE_IMAGE))?;
    let out = tempfile::tempdir()?;
    let bin = bulwark_cluster_tests::bulwark_bin()?;
    print!(
        "{}",
        run(Command::new(repo.join("deploy/debian/build.sh"))
            .arg(&bin)
            .arg(out.path()))?
    );
    let transcript = run(Command::new("docker")
        .args(["run", "--rm", "-v"])
        .arg(format!("{}:/pkg:ro", out.path().display()))
        .args([BASE_IMAGE, "bash", "-c", SCRIPT]))?;
    println!("{transcript}");
    for expected in [
        "smtp: . -> 250",
        "delivered: 1",
        "removed: configuration kept",
        "purged: configuration and user gone, data kept",
    ] {
        ensure!(
            transcript.contains(expected),
            "the transcript lacks {expected:?}"
        );
    }
    ensure!(
        transcript.contains("modes: /etc/bulwark root:bulwark 750 /etc/bulwark/bulwark.toml root:bulwark 640 /var/lib/bulwark bulwark:bulwark 700"),
        "unexpected ownership or modes"
    );
    Ok(())
}
