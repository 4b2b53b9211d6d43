//! Any node's API, as the tools that work over it (`bulwark audit bundle`, `bulwark
//! policy`, `bulwark quarantine`, `bulwark queue`, and `bulwark backup` and `ready` on
//! the node's own machine) call it: a base URL, a token file, and CA certificates to
//! trust for its HTTPS besides the web PKI. Each has a default: the node a
//! configuration file describes (`--config`), else the embedded default's, as `bulwark
//! serve` without a config runs it. A refusal becomes an error carrying the problem's
//! `detail`, and its `errors` when it lists them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::config::Config;

/// The API options every remote tool takes.
#[derive(Clone, Debug, clap::Args)]
pub struct ApiArgs {
    /// The API of any node, e.g. `https://mx1.example.test:8080` [default: the API of
    /// the node --config describes, else the embedded default's,
    /// http://127.0.0.1:8080].
    #[arg(long)]
    pub api: Option<String>,
    /// A file holding a token of a role allowed to do it [default: the admin token of
    /// the node --config describes, else the embedded default's,
    /// bulwark-data/admin.token].
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// CA certificates (PEM) to trust for the API's HTTPS, besides the web PKI
    /// [default: the cluster CA of the node --config describes].
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// A node's configuration file (TOML): its API address, admin token file and
    /// cluster CA are the defaults of the three options above.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// A node's API and the caller's token.
pub struct Remote {
    base: String,
    /// The token, and the file it was read from.
    token: Option<(String, PathBuf)>,
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl Remote {
    /// The API `args` name, called with the token of the file they name.
    pub fn new(args: &ApiArgs, timeout: Duration) -> Result<Self> {
        let config = match &args.config {
            Some(path) => super::load(path)?,
            None => Config::embedded(),
        };
        let base = match &args.api {
            Some(api) => api.trim_end_matches('/').to_string(),
            None => local_base(&config),
        };
        let ca = args.ca.as_deref().or(cluster_ca(&config));
        let token_file = args
            .token_file
            .clone()
            .unwrap_or_else(|| config.admin_token_file.clone());
        let mut remote = Self::connect(base, ca, timeout)?;
        remote.token = Some(read_token(&token_file)?);
        Ok(remote)
    }

    /// The API of the node `config` describes, from its own machine: a wildcard listen
    /// address is reached on the loopback address of its family, over HTTPS when the
    /// API has a certificate (trusting the web PKI and the cluster CA; the certificate
    /// must name the address used). With its admin token when `admin`.
    pub fn local(config: &Config, timeout: Duration, admin: bool) -> Result<Self> {
        let mut remote = Self::connect(local_base(config), cluster_ca(config), timeout)?;
        if admin {
            remote.token = Some(read_token(&config.admin_token_file)?);
        }
        Ok(remote)
    }

    fn connect(base: String, ca: Option<&Path>, timeout: Duration) -> Result<Self> {
        let mut problems = Vec::new();
        let tls = crate::config::client_config("api", ca, &mut problems);
        if !problems.is_empty() {
            bail!("{}", problems.join("\n"));
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .use_preconfigured_tls(rustls::ClientConfig::clone(&tls))
            .build()
            .context("HTTP client")?;
        Ok(Remote {
            base,
            token: None,
            client,
            runtime: super::runtime()?,
        })
    }

    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The file the token was read from.
    pub fn token_file(&self) -> Option<&Path> {
        self.token.as_ref().map(|(_, file)| file.as_path())
    }

    /// `GET path?query`: the body of a success.
    pub fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Vec<u8>> {
        let (status, body) = self.call(Method::GET, path, query, None)?;
        match status.is_success() {
            true => Ok(body),
            false => Err(refusal(status, &body)),
        }
    }

    /// `GET path?query` answered with JSON.
    pub fn get_json(&self, path: &str, query: &[(&str, &str)]) -> Result<Value> {
        let body = self.get(path, query)?;
        serde_json::from_slice(&body).with_context(|| format!("{path}: the answer is not JSON"))
    }

    /// `method path` with a JSON body: the status and the answer, refusals included,
    /// for the caller to tell apart.
    pub fn send_json(
        &self,
        method: Method,
        path: &str,
        body: &Value,
    ) -> Result<(StatusCode, Value)> {
        let (status, answer) = self.call(method, path, &[], Some(body))?;
        let answer = serde_json::from_slice(&answer).unwrap_or(Value::Null);
        Ok((status, answer))
    }

    /// `method path?query`, with a JSON body if any: the status and the answer's
    /// bytes, whatever the status; an error only when no answer came.
    pub fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<(StatusCode, Vec<u8>)> {
        let url = format!("{}{path}", self.base);
        self.runtime.block_on(async {
            let mut request = self.client.request(method, &url).query(query);
            if let Some((token, _)) = &self.token {
                request = request.bearer_auth(token);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request
                .send()
                .await
                .with_context(|| format!("calling {url}"))?;
            let status = response.status();
            Ok((status, response.bytes().await?.to_vec()))
        })
    }
}

fn read_token(file: &Path) -> Result<(String, PathBuf)> {
    let token = std::fs::read_to_string(file)
        .with_context(|| format!("reading the token {}", file.display()))?;
    Ok((token.trim().to_string(), file.to_path_buf()))
}

/// The URL of `config`'s API from the node's own machine.
fn local_base(config: &Config) -> String {
    let ip = match config.api_listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let addr = SocketAddr::new(ip, config.api_listen.port());
    let scheme = if config.api_tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{addr}")
}

/// The cluster CA of `config`, to trust for its API's HTTPS when it has any.
fn cluster_ca(config: &Config) -> Option<&Path> {
    match config.api_tls {
        Some(_) => config.node.cluster.as_ref().map(|c| c.ca.as_path()),
        None => None,
    }
}

/// The error of a refused call: its status, the problem's detail, and each of its
/// `errors` on a line of its own.
pub fn refusal(status: StatusCode, body: &[u8]) -> anyhow::Error {
    let problem = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
    problem_error(status, &problem, body)
}

/// As [`refusal`], from a parsed answer.
pub fn problem_error(status: StatusCode, problem: &Value, raw: &[u8]) -> anyhow::Error {
    if let Some(errors) = problem["errors"].as_array() {
        let lines: Vec<String> = errors
            .iter()
            .map(|e| format!("  {}", e.as_str().unwrap_or_default()))
            .collect();
        return anyhow::anyhow!("the node answered {status}:\n{}", lines.join("\n"));
    }
    anyhow::anyhow!("the node answered {status}: {}", detail(problem, raw))
}

/// The problem's `detail`, or the answer as it came.
pub fn detail(problem: &Value, raw: &[u8]) -> String {
    problem["detail"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(raw).into_owned())
}
