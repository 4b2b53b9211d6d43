//! What `serve` would refuse, checked by `check-config` without starting: the
//! cluster certificate (readable, its key matching, issued to this node, signed by the
//! cluster's CA), the TLS pairs of the API and SMTP, and a data directory this user can
//! write. `Config::load` checks the file; this checks the machine it is on.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;

use bulwark_consensus::tls::TlsIdentity;

use super::Config;

/// Name of the file written and removed to prove the data directory writable.
const PROBE: &str = ".bulwark-check-config";

impl Config {
    /// Every problem `serve` would stop on that the file alone does not show.
    pub fn preflight(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(peers) = &self.node.cluster {
            match TlsIdentity::load(&peers.ca, &peers.cert, &peers.key) {
                Ok(tls) if tls.node_id != self.node.id => problems.push(format!(
                    "cluster.cert: {} is issued to node {}, this is node {}",
                    peers.cert.display(),
                    tls.node_id,
                    self.node.id
                )),
                Ok(_) => {}
                Err(e) => problems.push(format!("cluster: {e}")),
            }
        }
        let pairs = [("api", &self.api_tls), ("smtp", &self.smtp.tls)];
        for (section, pair) in pairs {
            if let Some((cert, key)) = pair {
                if let Err(e) = crate::tls::server_config(cert, key, &[]) {
                    problems.push(format!("{section}.tls_cert, {section}.tls_key: {e:#}"));
                }
            }
        }
        if let Err(e) = writable(&self.node.data_dir) {
            problems.push(format!(
                "node.data_dir: {} cannot be written: {e}",
                self.node.data_dir.display()
            ));
        }
        problems
    }
}

impl Config {
    /// The listen addresses of this machine that another program holds now. Not a
    /// problem: the program may be this very node, running while its next config is
    /// checked. An address this machine does not have is a config for another one,
    /// and not reported.
    pub fn ports_in_use(&self) -> Vec<String> {
        let cluster = self
            .node
            .cluster
            .as_ref()
            .and_then(|c| c.listen.parse::<SocketAddr>().ok());
        let listens = [
            ("cluster.listen", cluster),
            ("api.listen", Some(self.api_listen)),
            ("smtp.listen", Some(self.smtp.listen)),
        ];
        listens
            .into_iter()
            .filter_map(|(key, addr)| Some((key, addr?)))
            .filter(|(_, addr)| {
                matches!(TcpListener::bind(addr), Err(e) if e.kind() == ErrorKind::AddrInUse)
            })
            .map(|(key, addr)| {
                format!(
                    "{key} {addr} is in use on this machine: serve would stop on it, \
                     unless it is this node's own, running now"
                )
            })
            .collect()
    }
}

/// Whether this user can write `dir`, or create it where it does not exist yet: a
/// file is made and removed there, or in the nearest directory above that exists.
fn writable(dir: &Path) -> std::io::Result<()> {
    let existing = dir
        .ancestors()
        .find(|d| d.as_os_str().is_empty() || d.exists())
        .unwrap_or(dir);
    let existing = if existing.as_os_str().is_empty() {
        Path::new(".")
    } else {
        existing
    };
    if !existing.is_dir() {
        return Err(std::io::Error::other(format!(
            "{} is not a directory",
            existing.display()
        )));
    }
    let probe = existing.join(PROBE);
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&probe)?;
    std::fs::remove_file(&probe)
}
