//! Any node's API from anywhere, as the tools that work over it (`bulwark audit
//! bundle`, `bulwark policy`) call it: a base URL, a token file, and CA certificates
//! to trust for its HTTPS besides the web PKI. A refusal becomes an error carrying
//! the problem's `detail`, and its `errors` when it lists them.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// The API options every remote tool takes.
#[derive(Clone, Debug, clap::Args)]
pub struct ApiArgs {
    /// The API of any node, e.g. `https://mx1.example.test:8080`.
    #[arg(long)]
    pub api: String,
    /// A file holding a token of a role allowed to do it.
    #[arg(long)]
    pub token_file: PathBuf,
    /// CA certificates (PEM) to trust for the API's HTTPS, besides the web PKI.
    #[arg(long)]
    pub ca: Option<PathBuf>,
}

/// A node's API and the caller's token.
pub struct Remote {
    base: String,
    token: String,
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl Remote {
    pub fn new(args: &ApiArgs, timeout: Duration) -> Result<Self> {
        let token = std::fs::read_to_string(&args.token_file)
            .with_context(|| format!("reading the token {}", args.token_file.display()))?;
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &args.ca {
            let mut problems = Vec::new();
            let tls = crate::config::client_config("api", Some(ca), &mut problems);
            if !problems.is_empty() {
                bail!("{}", problems.join("\n"));
            }
            builder = builder.use_preconfigured_tls(rustls::ClientConfig::clone(&tls));
        }
        Ok(Remote {
            base: args.api.trim_end_matches('/').to_string(),
            token: token.trim().to_string(),
            client: builder.build().context("HTTP client")?,
            runtime: super::runtime()?,
        })
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

    fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<(StatusCode, Vec<u8>)> {
        let url = format!("{}{path}", self.base);
        self.runtime.block_on(async {
            let mut request = self
                .client
                .request(method, &url)
                .query(query)
                .bearer_auth(&self.token);
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
    let detail = problem["detail"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(raw).into_owned());
    anyhow::anyhow!("the node answered {status}: {detail}")
}
