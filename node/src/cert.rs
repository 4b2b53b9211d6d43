//! `bulwark cert`: the cluster CA and per-node certificates, without openssl.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
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
