//! The SIEM exporters' settings checked and built: a node's `[[siem.exporters]]`,
//! which seed the cluster's policy, and the policy's `exporters`, which every node
//! builds with its own files and secrets.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::siem::{
    Exporter, Filter, HecSettings, Kind, Local, Payload, Spec, SyslogSettings, SyslogTransport,
    WebhookSettings,
};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSiem {
    pub(super) exporters: Option<Vec<Spec>>,
}

/// The exporters `specs`, written under `key` (`siem.exporters` or
/// `policy.exporters`, which names their problems), built with what this node gives
/// them; every problem is added to `problems`.
pub(crate) fn exporters(
    key: &str,
    specs: &[Spec],
    local: &Local,
    problems: &mut Vec<String>,
) -> Vec<Exporter> {
    let mut names = BTreeSet::new();
    let mut exporters = Vec::new();
    for (n, spec) in specs.iter().enumerate() {
        let section = section(key, n, spec);
        let name = spec.name.clone().unwrap_or_default();
        if !name.is_empty() && !names.insert(name.clone()) {
            problems.push(format!(
                "{section}: the name {name:?} is taken by another exporter"
            ));
        }
        exporters.extend(exporter(&section, spec, local, problems));
    }
    exporters
}

/// How a problem names the `n`th exporter under `key`.
pub(crate) fn section(key: &str, n: usize, spec: &Spec) -> String {
    match spec.name.as_deref().unwrap_or_default() {
        "" => format!("{key}[{n}]"),
        name => format!("{key}[{n}] ({name})"),
    }
}

/// One exporter, named `section` in its problems; `None` when it has any.
pub(crate) fn exporter(
    section: &str,
    spec: &Spec,
    local: &Local,
    problems: &mut Vec<String>,
) -> Option<Exporter> {
    let start = problems.len();
    let name = spec.name.clone().unwrap_or_default();
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        problems.push(format!(
            "{section}: name must be 1 to 64 letters, digits, '-', '_' or '.'"
        ));
    }
    let files = [
        ("tls_ca", &spec.tls_ca),
        ("tls_cert", &spec.tls_cert),
        ("tls_key", &spec.tls_key),
        ("token_file", &spec.token_file),
        ("secret_file", &spec.secret_file),
    ];
    let readable = problems.len();
    for (field, path) in files {
        if let Some(path) = path.as_deref().filter(|p| !local.may_read(p)) {
            problems.push(format!(
                "{section}: {field}: {}: the policy names files in the directory of the \
                 nodes' config files (relative, without ..) or those a node's own \
                 [[siem.exporters]] names",
                path.display()
            ));
        }
    }
    if problems.len() > readable {
        return None;
    }
    for (field, inline) in [("token", &spec.token), ("secret", &spec.secret)] {
        if inline.is_some() {
            problems.push(format!(
                "{section}: {field}: a secret stays out of the cluster's policy and its \
                 log; name a file every node has with {field}_file"
            ));
        }
    }
    let kind = build_kind(section, spec, local, problems);
    let filter = Filter {
        types: spec.types.clone().unwrap_or_default(),
        actions: spec.actions.clone().unwrap_or_default(),
    };
    for t in &filter.types {
        let family = t.strip_suffix('*');
        let body = family.unwrap_or(t);
        let valid = !t.is_empty()
            && body
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_')
            && family.is_none_or(|f| f.is_empty() || f.ends_with('.'));
        if !valid {
            problems.push(format!(
                "{section}: types: {t:?} is neither a type (scan.verdict) nor a family (delivery.*)"
            ));
        }
    }
    let batch = spec.batch.unwrap_or(500);
    if !(1..=10_000).contains(&batch) {
        problems.push(format!("{section}: batch must be 1 to 10000, not {batch}"));
    }
    let retry_max = spec.retry_max_secs.unwrap_or(60);
    if retry_max == 0 {
        problems.push(format!("{section}: retry_max_secs must be positive"));
    }
    let dead_letter_after = spec.dead_letter_after.unwrap_or(5);
    if !(1..=1000).contains(&dead_letter_after) {
        problems.push(format!(
            "{section}: dead_letter_after must be 1 to 1000, not {dead_letter_after}"
        ));
    }
    match (kind, problems.len() == start) {
        (Some(kind), true) => Some(Exporter {
            name,
            kind,
            filter,
            batch,
            retry_max: Duration::from_secs(retry_max),
            poll: Duration::from_millis(spec.poll_ms.unwrap_or(200).clamp(10, 60_000)),
            dead_letter_after,
            written: serde_json::to_string(spec).expect("an exporter's settings serialize"),
        }),
        _ => None,
    }
}

/// The kind-specific part, with a problem for every field that belongs to another kind.
fn build_kind(
    section: &str,
    raw: &Spec,
    local: &Local,
    problems: &mut Vec<String>,
) -> Option<Kind> {
    let name = raw.name.clone().unwrap_or_default();
    let (inline_token, inline_secret) = (local.tokens.get(&name), local.secrets.get(&name));
    let base = local.base.as_path();
    let kind = raw.kind.as_deref().unwrap_or_default();
    let given: [(&str, bool, &[&str]); 16] = [
        ("address", raw.address.is_some(), &["syslog"]),
        ("transport", raw.transport.is_some(), &["syslog"]),
        ("ack_resends", raw.ack_resends.is_some(), &["hec"]),
        ("format", raw.format.is_some(), &["syslog"]),
        ("tls", raw.tls.is_some(), &["syslog"]),
        ("tls_name", raw.tls_name.is_some(), &["syslog"]),
        (
            "tls_cert",
            raw.tls_cert.is_some() || raw.tls_key.is_some(),
            &["syslog"],
        ),
        ("facility", raw.facility.is_some(), &["syslog"]),
        ("url", raw.url.is_some(), &["hec", "webhook"]),
        (
            "token",
            inline_token.is_some() || raw.token_file.is_some(),
            &["hec"],
        ),
        ("ack", raw.ack.is_some(), &["hec"]),
        ("ack_timeout_secs", raw.ack_timeout_secs.is_some(), &["hec"]),
        ("index", raw.index.is_some(), &["hec"]),
        ("sourcetype", raw.sourcetype.is_some(), &["hec"]),
        (
            "secret",
            inline_secret.is_some() || raw.secret_file.is_some(),
            &["webhook"],
        ),
        (
            "tls_ca",
            raw.tls_ca.is_some(),
            &["syslog", "hec", "webhook"],
        ),
    ];
    if !["syslog", "hec", "webhook"].contains(&kind) {
        problems.push(format!(
            "{section}: kind must be syslog, hec or webhook, not {kind:?}"
        ));
        return None;
    }
    for (field, present, kinds) in given {
        if present && !kinds.contains(&kind) {
            problems.push(format!(
                "{section}: {field} is not a setting of kind = {kind:?}"
            ));
        }
    }
    let timeout_secs = raw.timeout_secs.unwrap_or(10);
    let ack_timeout_secs = raw.ack_timeout_secs.unwrap_or(60);
    for (field, value) in [
        ("timeout_secs", timeout_secs),
        ("ack_timeout_secs", ack_timeout_secs),
    ] {
        if !(1..=3600).contains(&value) {
            problems.push(format!("{section}: {field} must be 1 to 3600, not {value}"));
        }
    }
    let timeout = Duration::from_secs(timeout_secs.clamp(1, 3600));
    let ca = raw.tls_ca.clone().map(|ca| super::relative_to(base, ca));
    let tls = super::client_config(section, ca.as_deref(), problems);
    match kind {
        "syslog" => {
            let address = raw.address.clone().unwrap_or_default();
            let host = match address.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
                _ => {
                    problems.push(format!(
                        "{section}: address must be host:port, not {address:?}"
                    ));
                    return None;
                }
            };
            let payload = match raw.format.as_deref().unwrap_or("json") {
                "json" => Payload::Json,
                "cef" => Payload::Cef,
                other => {
                    problems.push(format!(
                        "{section}: format must be json or cef, not {other:?}"
                    ));
                    return None;
                }
            };
            let transport = match raw.transport.as_deref().unwrap_or("tcp") {
                "tcp" => SyslogTransport::Tcp,
                "relp" => SyslogTransport::Relp,
                other => {
                    // Reported; the other settings are still checked.
                    problems.push(format!(
                        "{section}: transport must be tcp or relp, not {other:?}"
                    ));
                    SyslogTransport::Tcp
                }
            };
            let facility = raw.facility.unwrap_or(13);
            if facility > 23 {
                problems.push(format!(
                    "{section}: facility must be 0 to 23, not {facility}"
                ));
            }
            if (raw.tls_ca.is_some() || raw.tls_cert.is_some()) && raw.tls != Some(true) {
                problems.push(format!("{section}: tls_ca and tls_cert need tls = true"));
            }
            let tls = match super::tls_pair(
                section,
                raw.tls_cert.clone(),
                raw.tls_key.clone(),
                base,
                problems,
            ) {
                Some((cert, key)) => {
                    client_with_cert(section, ca.as_deref(), &cert, &key, problems)
                }
                None => tls,
            };
            let tls = match raw.tls.unwrap_or(false) {
                false => None,
                true => {
                    let name = raw.tls_name.clone().unwrap_or(host);
                    match rustls::pki_types::ServerName::try_from(name.clone()) {
                        Ok(name) => Some((tls, name)),
                        Err(e) => {
                            problems.push(format!("{section}: tls_name {name:?}: {e}"));
                            None
                        }
                    }
                }
            };
            Some(Kind::Syslog(SyslogSettings {
                address,
                tls,
                transport,
                payload,
                facility,
                timeout,
            }))
        }
        "hec" => {
            let url = http_url(section, raw.url.as_deref(), true, problems);
            let token = secret(
                section,
                "token",
                inline_token,
                &raw.token_file,
                base,
                problems,
            );
            let (url, token) = (url?, token?);
            let token = String::from_utf8_lossy(&token).trim().to_string();
            if token.is_empty() {
                problems.push(format!("{section}: the token is empty"));
            }
            let ack_resends = raw.ack_resends.unwrap_or(2);
            if ack_resends > 100 {
                problems.push(format!(
                    "{section}: ack_resends must be 0 to 100, not {ack_resends}"
                ));
            }
            if url.path().contains("/services/collector") {
                problems.push(format!(
                    "{section}: url is the collector's base (https://host:8088), without /services/collector"
                ));
            }
            Some(Kind::Hec(HecSettings {
                url,
                token,
                ack: raw.ack.unwrap_or(true),
                ack_timeout: Duration::from_secs(ack_timeout_secs.clamp(1, 3600)),
                ack_resends,
                index: raw.index.clone(),
                sourcetype: raw
                    .sourcetype
                    .clone()
                    .unwrap_or_else(|| "bulwark:event".into()),
                tls,
                timeout,
            }))
        }
        _ => {
            let url = http_url(section, raw.url.as_deref(), false, problems);
            let secret = secret(
                section,
                "secret",
                inline_secret,
                &raw.secret_file,
                base,
                problems,
            );
            let (url, secret) = (url?, secret?);
            if secret.len() < 16 {
                problems.push(format!("{section}: the secret must be at least 16 bytes"));
            }
            Some(Kind::Webhook(WebhookSettings {
                url,
                secret,
                tls,
                timeout,
            }))
        }
    }
}

/// A TLS client configuration that presents `cert` (with `key`) when asked.
fn client_with_cert(
    section: &str,
    ca: Option<&Path>,
    cert: &Path,
    key: &Path,
    problems: &mut Vec<String>,
) -> Arc<rustls::ClientConfig> {
    let roots = super::root_store(section, ca, problems);
    let built = crate::tls::load_certs(cert).and_then(|certs| {
        let key = crate::tls::load_key(key)?;
        Ok(rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)?)
    });
    match built {
        Ok(config) => Arc::new(config),
        Err(e) => {
            problems.push(format!("{section}: tls_cert and tls_key: {e:#}"));
            Arc::new(
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            )
        }
    }
}

/// An http(s) URL; as a base (`/` at the end) for the collector's paths.
fn http_url(
    section: &str,
    url: Option<&str>,
    base: bool,
    problems: &mut Vec<String>,
) -> Option<reqwest::Url> {
    let Some(url) = url else {
        problems.push(format!("{section}: url is required"));
        return None;
    };
    let with_slash;
    let text = if base && !url.ends_with('/') {
        with_slash = format!("{url}/");
        &with_slash
    } else {
        url
    };
    match reqwest::Url::parse(text) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => {
            Some(parsed)
        }
        Ok(_) => {
            problems.push(format!("{section}: url {url:?} is not an http(s) URL"));
            None
        }
        Err(e) => {
            problems.push(format!("{section}: url {url:?}: {e}"));
            None
        }
    }
}

/// A secret in a file (trailing whitespace dropped) or given inline in this node's
/// own `[[siem.exporters]]`.
fn secret(
    section: &str,
    field: &str,
    inline: Option<&Vec<u8>>,
    file: &Option<PathBuf>,
    base: &Path,
    problems: &mut Vec<String>,
) -> Option<Vec<u8>> {
    match (inline, file) {
        (Some(value), None) => Some(value.clone()),
        (None, Some(path)) => {
            let path = super::relative_to(base, path.clone());
            match std::fs::read(&path) {
                Ok(mut bytes) => {
                    while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
                        bytes.pop();
                    }
                    Some(bytes)
                }
                Err(e) => {
                    problems.push(format!("{section}: {field}_file {}: {e}", path.display()));
                    None
                }
            }
        }
        (Some(_), Some(_)) => {
            problems.push(format!("{section}: give {field} or {field}_file, not both"));
            None
        }
        (None, None) => {
            problems.push(match section.starts_with("siem.") {
                true => format!("{section}: {field} or {field}_file is required"),
                false => format!(
                    "{section}: {field}_file is required (or {field} in this node's own \
                     [[siem.exporters]] of that name)"
                ),
            });
            None
        }
    }
}
