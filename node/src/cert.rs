//! `bulwark cert`: the cluster CA and per-node certificates, without openssl.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};
use bulwark_consensus::tls::node_common_name;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

const CA_YEARS: i64 = 10;
const NODE_YEARS: i64 = 5;

fn validity(params: &mut CertificateParams, years: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(365 * years);
}

/// Writes `contents` to a new file; private keys are readable by the owner only.
fn write_new(path: &Path, contents: &str, private: bool) -> Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    if private {
        options.mode(0o600);
    }
    let mut file = options.open(path).with_context(|| {
        format!(
            "creating {} (refusing to overwrite an existing file)",
            path.display()
        )
    })?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

/// `bulwark cert ca --out DIR`: DIR/ca.pem and DIR/ca.key.
pub fn make_ca(out: &Path) -> Result<()> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "Bulwark cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, CA_YEARS);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write_new(&out.join("ca.pem"), &cert.pem(), false)?;
    write_new(&out.join("ca.key"), &key.serialize_pem(), true)?;
    Ok(())
}

/// `bulwark cert node --ca DIR --id N --san HOSTS --out DIR`: DIR/nodeN.pem and
/// DIR/nodeN.key, valid for the given names and addresses, for both ends of a
/// cluster connection.
pub fn make_node(ca_dir: &Path, id: u64, sans: &[String], out: &Path) -> Result<()> {
    if id == 0 {
        bail!("--id must be a positive node id");
    }
    if sans.is_empty() || sans.iter().any(|s| s.trim().is_empty()) {
        bail!("--san needs at least one host name or IP address, comma-separated");
    }
    let ca_pem = fs::read_to_string(ca_dir.join("ca.pem"))
        .with_context(|| format!("reading {}/ca.pem", ca_dir.display()))?;
    let ca_key_pem = fs::read_to_string(ca_dir.join("ca.key"))
        .with_context(|| format!("reading {}/ca.key", ca_dir.display()))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).context("parsing ca.key")?;
    let ca = CertificateParams::from_ca_cert_pem(&ca_pem)
        .context("parsing ca.pem")?
        .self_signed(&ca_key)?;

    let mut params = CertificateParams::new(
        sans.iter()
            .map(|s| s.trim().to_string())
            .collect::<Vec<_>>(),
    )?;
    params
        .distinguished_name
        .push(DnType::CommonName, node_common_name(id));
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity(&mut params, NODE_YEARS);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    write_new(&out.join(format!("node{id}.pem")), &cert.pem(), false)?;
    write_new(
        &out.join(format!("node{id}.key")),
        &key.serialize_pem(),
        true,
    )?;
    Ok(())
}

/// `bulwark cert cluster --out DIR --node ID=NAMES... [--owner UID:GID]`: the CA and
/// each node's certificate, those missing only, so that running it again changes
/// nothing; with an owner, the node files and DIR are given to the user the nodes
/// run as (the CA's key never is).
pub fn make_cluster(out: &Path, nodes: &[String], owner: Option<&str>) -> Result<()> {
    let nodes = nodes
        .iter()
        .map(|n| parse_node(n))
        .collect::<Result<Vec<_>>>()?;
    let owner = owner.map(parse_owner).transpose()?;
    if out.join("ca.pem").exists() {
        println!("{}/ca.pem exists: kept", out.display());
    } else {
        make_ca(out)?;
        println!("made the cluster CA in {}", out.display());
    }
    for (id, sans) in &nodes {
        if out.join(format!("node{id}.pem")).exists() {
            println!("node{id}.pem exists: kept");
        } else {
            make_node(out, *id, sans, out)?;
            println!("made node{id}.pem for {}", sans.join(", "));
        }
    }
    if let Some((uid, gid)) = owner {
        let give = |path: &Path| {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .with_context(|| format!("giving {} to {uid}:{gid}", path.display()))
        };
        give(out)?;
        fs::set_permissions(out, fs::Permissions::from_mode(0o755))?;
        give(&out.join("ca.pem"))?;
        for (id, _) in &nodes {
            give(&out.join(format!("node{id}.pem")))?;
            give(&out.join(format!("node{id}.key")))?;
        }
    }
    Ok(())
}

/// `ID=NAME,NAME...` of `--node`.
fn parse_node(arg: &str) -> Result<(u64, Vec<String>)> {
    let Some((id, names)) = arg.split_once('=') else {
        bail!("--node {arg:?}: expected ID=NAMES, e.g. 1=node1,10.0.0.1");
    };
    let id: u64 = id
        .trim()
        .parse()
        .ok()
        .filter(|&id| id > 0)
        .with_context(|| format!("--node {arg:?}: {id:?} is not a positive node id"))?;
    let sans: Vec<String> = names.split(',').map(|s| s.trim().to_string()).collect();
    if sans.iter().any(String::is_empty) {
        bail!("--node {arg:?}: a name is empty");
    }
    Ok((id, sans))
}

/// `UID:GID` of `--owner`, numeric (the image has no user database to look names up in).
fn parse_owner(arg: &str) -> Result<(u32, u32)> {
    arg.split_once(':')
        .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)))
        .with_context(|| format!("--owner {arg:?}: expected numeric UID:GID, e.g. 10001:10001"))
}
