//! The scanning pipeline: the one place where an accepted message is judged before
//! it is committed (DESIGN.md, "the mail's path").
//!
//! The message is parsed once and its files unpacked once; the content engines
//! ([`Engine`]) run on a blocking thread while authentication (DNS) runs beside them
//! on the runtime. Everything has one time budget: an engine or lookup that has not
//! answered by then is recorded as timed out (symbol `SCAN_TIMEOUT`) and the verdict
//! is made from what did answer — a slow engine never holds a session. The policy
//! then turns scores and findings into the action, and the whole verdict is
//! committed with the message.

pub mod attachments;
pub mod auth;
pub mod bayes;
pub mod blocklists;
pub mod clamd;
pub mod contents;
pub mod decode;
pub mod engine;
pub mod malware;
pub mod mime;
pub mod origin;
pub mod phishing;
pub mod preview;
pub mod spam;
pub mod yara;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bulwark_storage::{EngineRun, Finding, MessageId, Symbol, Verdict};

pub use engine::{Engine, FindingKind, Hit, Outcome, Parsed};

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::config::Config;
use crate::policy::{Facts, Policy};

/// How the pipeline is set up (`[scan]` and `[policy]`).
pub struct Settings {
    /// Content engines, in the order they run.
    pub engines: Vec<Box<dyn Engine>>,
    /// Limits on unpacking MIME parts and archives.
    pub limits: contents::Limits,
    pub policy: Policy,
    /// Time allowed for the whole scan of one message.
    pub budget: Duration,
    /// Our domains (IDNA ASCII), for the engines that look for impersonation.
    pub local_domains: Vec<String>,
    /// SPF, DKIM, DMARC and ARC, when on.
    pub auth: Option<auth::Authenticator>,
    /// DNS blocklists, when any are configured.
    pub blocklists: Option<blocklists::Blocklists>,
    /// A clamd to send each message to, when configured.
    pub clamd: Option<clamd::Clamd>,
    /// Our relays: mail from them is judged by where they received it from.
    pub trusted_relays: Vec<ipnet::IpNet>,
}

/// A message to judge.
pub struct Candidate<'a> {
    pub id: MessageId,
    pub mail_from: &'a str,
    pub rcpt_to: &'a [String],
    pub client_ip: std::net::IpAddr,
    pub helo: &'a str,
    /// The address of the `From` header, if any (the ingress has parsed it already).
    pub header_from: Option<&'a str>,
    /// The content as received, without our `Received` header.
    pub body: Arc<Vec<u8>>,
}

/// The pipeline's result: the verdict to commit and what to change in the message.
pub struct Judged {
    pub verdict: Verdict,
    /// The value of our `Authentication-Results` header, when authentication ran.
    pub auth_header: Option<String>,
    /// For a tagged message: the prefix to add to its subject.
    pub subject_prefix: Option<String>,
}

/// The scanning pipeline, shared by every SMTP session of the node.
pub struct Scanner {
    content: Arc<ContentEngines>,
    auth: Option<auth::Authenticator>,
    blocklists: Option<blocklists::Blocklists>,
    clamd: Option<clamd::Clamd>,
    trusted_relays: Vec<ipnet::IpNet>,
    policy: Policy,
    budget: Duration,
    /// How long each message's scan took (see [`Scanner::register_metrics`]).
    durations: Histogram,
}

struct ContentEngines {
    engines: Vec<Box<dyn Engine>>,
    limits: contents::Limits,
    local_domains: Vec<String>,
}

/// The authentication engine's version as recorded in verdicts: the library doing it.
const AUTH_VERSION: &str = "mail-auth 0.13.0";
/// The blocklist engine's version as recorded in verdicts.
const DNSBL_VERSION: &str = "dnsbl:1";
/// The clamd client's version as recorded in verdicts: the protocol it speaks.
const CLAMD_VERSION: &str = "clamd INSTREAM";

/// One engine's report as it arrives from the blocking thread.
struct Report {
    engine: &'static str,
    version: String,
    outcome: Outcome,
    ms: u64,
}

impl Scanner {
    /// The pipeline the configuration asks for: engines loaded with their rule and
    /// signature files (a file that cannot be read or parsed is an error), the
    /// Bayesian classifier reading `bayes` (the node's replicated counts) when on.
    pub fn from_config(
        full: &Config,
        policy: Policy,
        resolver: crate::dns::TokioResolver,
        bayes: Option<Arc<dyn bayes::TokenCounts>>,
    ) -> anyhow::Result<Self> {
        let config = &full.scan;
        let blocklists = (!config.blocklists.is_empty())
            .then(|| blocklists::Blocklists::new(config.blocklists.clone(), resolver.clone()));
        let auth = if config.authentication {
            let auth = auth::Authenticator::with_resolver(
                resolver,
                full.dns.timeout,
                full.smtp.hostname.clone(),
            )
            .map_err(|e| anyhow::anyhow!("authentication: {e}"))?;
            if auth.budget() > config.budget {
                tracing::info!(
                    scan_budget_ms = config.budget.as_millis() as u64,
                    dns_worst_case_ms = auth.budget().as_millis() as u64,
                    "slow DNS can make authentication time out within the scan budget"
                );
            }
            Some(auth)
        } else {
            None
        };
        let malware = malware::MalwareEngine::new(&config.malware_hashes, &config.clamav_hashes)
            .map_err(|e| anyhow::anyhow!("malware signatures: {e}"))?;
        let blocked = config.blocked_extensions.clone().unwrap_or_else(|| {
            attachments::DEFAULT_BLOCKED
                .iter()
                .map(|e| e.to_string())
                .collect()
        });
        let (spam, skipped) =
            spam::SpamEngine::new(&config.rules).map_err(|e| anyhow::anyhow!("spam rules: {e}"))?;
        for line in skipped {
            tracing::info!(%line, "spam rule skipped");
        }
        let mut engines: Vec<Box<dyn Engine>> = vec![
            Box::new(malware),
            Box::new(attachments::AttachmentEngine::new(blocked)),
            Box::new(spam),
            Box::new(phishing::PhishingEngine::new()),
        ];
        if !config.yara_rules.is_empty() {
            let yara = yara::YaraEngine::new(&config.yara_rules)
                .map_err(|e| anyhow::anyhow!("YARA rules: {e}"))?
                .with_timeout(config.budget);
            for warning in yara.warnings() {
                tracing::warn!(%warning, "YARA rules");
            }
            tracing::info!(rules = yara.rules(), "YARA rules loaded");
            engines.push(Box::new(yara));
        }
        if let (true, Some(counts)) = (config.bayes, bayes) {
            engines.push(Box::new(bayes::BayesEngine::new(
                counts,
                config.bayes_min_messages,
            )));
        }
        let clamd = config
            .clamd
            .as_ref()
            .map(|c| clamd::Clamd::new(c.address.clone(), c.timeout, c.fail_closed));
        Ok(Scanner::new(Settings {
            engines,
            limits: full.scan.limits(),
            policy,
            budget: config.budget,
            local_domains: full.smtp.domains.clone(),
            auth,
            blocklists,
            clamd,
            trusted_relays: config.trusted_relays.clone(),
        }))
    }

    pub fn new(settings: Settings) -> Self {
        Scanner {
            content: Arc::new(ContentEngines {
                engines: settings.engines,
                limits: settings.limits,
                local_domains: settings.local_domains,
            }),
            auth: settings.auth,
            blocklists: settings.blocklists,
            clamd: settings.clamd,
            trusted_relays: settings.trusted_relays,
            policy: settings.policy,
            budget: settings.budget,
            // 1 ms to about 32 s.
            durations: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        }
    }

    /// Adds the scan-time histogram to `registry`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "bulwark_scan_duration_seconds",
            "Time the scanning pipeline took per message",
            self.durations.clone(),
        );
    }

    /// Judges one message within the time budget.
    pub async fn judge(&self, candidate: &Candidate<'_>) -> Judged {
        let from = origin::origin(
            &self.trusted_relays,
            candidate.client_ip,
            candidate.helo,
            &candidate.body,
        );
        // From here on the client is the origin: SPF, blocklists and the policy's
        // address lists judge the sender's host, not our relay.
        let candidate = &Candidate {
            id: candidate.id,
            mail_from: candidate.mail_from,
            rcpt_to: candidate.rcpt_to,
            client_ip: from.ip,
            helo: &from.helo,
            header_from: candidate.header_from,
            body: candidate.body.clone(),
        };
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.budget;
        let (links_tx, links_rx) = tokio::sync::oneshot::channel();
        let (mut reports, authenticated, listed, clamd) = tokio::join!(
            self.run_content(candidate, deadline, links_tx),
            self.run_auth(candidate, deadline),
            self.run_blocklists(candidate, deadline, links_rx),
            self.run_clamd(candidate, deadline)
        );
        let mut clamd_timed_out = false;
        match clamd {
            Some(Ok((outcome, ms))) => reports.push(Report {
                engine: "clamd",
                version: CLAMD_VERSION.into(),
                outcome,
                ms,
            }),
            Some(Err(_)) => clamd_timed_out = true,
            None => {}
        }

        let mut symbols = Vec::new();
        if let Some(relay) = from.via {
            symbols.push(Symbol {
                name: "RCVD_VIA_TRUSTED_RELAY".into(),
                score: 0.0,
                description: format!(
                    "judged as from {} (HELO {}), which handed it to our relay {relay}",
                    from.ip, from.helo
                ),
                engine: "origin".into(),
            });
        }
        let mut findings = Vec::new();
        let mut engines = Vec::new();
        for report in &reports {
            for hit in &report.outcome.hits {
                symbols.push(Symbol {
                    name: hit.symbol.clone(),
                    score: hit.score,
                    description: hit.description.clone(),
                    engine: report.engine.to_string(),
                });
            }
            for found in &report.outcome.findings {
                findings.push(Finding {
                    kind: found.kind.as_str().to_string(),
                    name: found.name.clone(),
                    location: found.location.clone(),
                    engine: report.engine.to_string(),
                });
            }
            engines.push(EngineRun {
                engine: report.engine.to_string(),
                version: report.version.clone(),
                ms: report.ms,
                timed_out: false,
            });
        }
        let mut authentication = Vec::new();
        let mut dmarc = None;
        let mut auth_header = None;
        match authenticated {
            Some(Ok((outcome, ms))) => {
                symbols.extend(outcome.hits.into_iter().map(|hit| Symbol {
                    name: hit.symbol,
                    score: hit.score,
                    description: hit.description,
                    engine: "auth".into(),
                }));
                authentication = outcome
                    .results
                    .into_iter()
                    .map(|r| bulwark_storage::AuthResult {
                        method: r.method.to_string(),
                        result: r.result.to_string(),
                        detail: r.detail,
                    })
                    .collect();
                dmarc = outcome.dmarc_policy.map(|d| match d {
                    auth::DmarcDisposition::Reject => bulwark_storage::Action::Reject,
                    auth::DmarcDisposition::Quarantine => bulwark_storage::Action::Quarantine,
                });
                auth_header = Some(outcome.header);
                engines.push(EngineRun {
                    engine: "auth".into(),
                    version: AUTH_VERSION.into(),
                    ms,
                    timed_out: false,
                });
            }
            Some(Err(_)) => self.timed_out("auth", AUTH_VERSION, &mut engines, &mut symbols),
            None => {}
        }
        match listed {
            Some(Ok((outcome, ms))) => {
                symbols.extend(outcome.hits.into_iter().map(|hit| Symbol {
                    name: hit.symbol,
                    score: hit.score,
                    description: hit.description,
                    engine: "dnsbl".into(),
                }));
                engines.push(EngineRun {
                    engine: "dnsbl".into(),
                    version: DNSBL_VERSION.into(),
                    ms,
                    timed_out: false,
                });
            }
            Some(Err(_)) => self.timed_out("dnsbl", DNSBL_VERSION, &mut engines, &mut symbols),
            None => {}
        }
        if clamd_timed_out {
            self.timed_out("clamd", CLAMD_VERSION, &mut engines, &mut symbols);
        }
        for engine in &self.content.engines {
            if !reports.iter().any(|r| r.engine == engine.name()) {
                let version = engine.version();
                self.timed_out(engine.name(), &version, &mut engines, &mut symbols);
            }
        }

        let score = symbols.iter().map(|s| s.score).sum::<f64>();
        let first = |kinds: &[FindingKind]| {
            reports
                .iter()
                .flat_map(|r| &r.outcome.findings)
                .find(|f| kinds.contains(&f.kind))
                .map(|f| f.name.as_str())
        };
        let decision = self.policy.decide(&Facts {
            mail_from: candidate.mail_from,
            header_from: candidate.header_from,
            rcpt_to: candidate.rcpt_to,
            client_ip: candidate.client_ip,
            score,
            malware: first(&[FindingKind::Malware]),
            blocked_content: first(&[
                FindingKind::BlockedAttachment,
                FindingKind::ActiveContent,
                FindingKind::Encrypted,
                FindingKind::Bomb,
            ]),
            dmarc,
        });
        self.durations.observe(started.elapsed().as_secs_f64());
        Judged {
            verdict: Verdict {
                message_id: candidate.id,
                action: decision.action,
                reason: decision.reason,
                score,
                thresholds: decision.thresholds,
                symbols,
                authentication,
                findings,
                engines,
            },
            subject_prefix: decision.subject_prefix,
            auth_header,
        }
    }

    /// Records that `engine` did not finish within the budget.
    fn timed_out(
        &self,
        engine: &str,
        version: &str,
        engines: &mut Vec<EngineRun>,
        symbols: &mut Vec<Symbol>,
    ) {
        let budget_ms = self.budget.as_millis() as u64;
        engines.push(EngineRun {
            engine: engine.to_string(),
            version: version.to_string(),
            ms: budget_ms,
            timed_out: true,
        });
        symbols.push(Symbol {
            name: "SCAN_TIMEOUT".into(),
            score: 0.0,
            description: format!("{engine} did not finish within the {budget_ms} ms scan budget"),
            engine: engine.to_string(),
        });
    }

    /// Looks the client and the message's link domains up in the blocklists, once
    /// the content thread has found the links; `Err` when the budget ran out first.
    async fn run_blocklists(
        &self,
        candidate: &Candidate<'_>,
        deadline: tokio::time::Instant,
        links: tokio::sync::oneshot::Receiver<Vec<String>>,
    ) -> Option<Result<(Outcome, u64), tokio::time::error::Elapsed>> {
        let lists = self.blocklists.as_ref()?;
        let started = Instant::now();
        let checked = async {
            let links = links.await.unwrap_or_default();
            lists.check(candidate.client_ip, &links).await
        };
        Some(
            tokio::time::timeout_at(deadline, checked)
                .await
                .map(|outcome| (outcome, started.elapsed().as_millis() as u64)),
        )
    }

    /// Has clamd scan the message when one is configured; `Err` when the scan
    /// budget ran out before clamd's own timeout.
    async fn run_clamd(
        &self,
        candidate: &Candidate<'_>,
        deadline: tokio::time::Instant,
    ) -> Option<Result<(Outcome, u64), tokio::time::error::Elapsed>> {
        let clamd = self.clamd.as_ref()?;
        let started = Instant::now();
        Some(
            tokio::time::timeout_at(deadline, clamd.scan(&candidate.body))
                .await
                .map(|outcome| (outcome, started.elapsed().as_millis() as u64)),
        )
    }

    /// Authenticates the message unless authentication is off; `Err` when the
    /// budget ran out first.
    async fn run_auth(
        &self,
        candidate: &Candidate<'_>,
        deadline: tokio::time::Instant,
    ) -> Option<Result<(auth::AuthOutcome, u64), tokio::time::error::Elapsed>> {
        let auth = self.auth.as_ref()?;
        let started = Instant::now();
        let checked = auth.check(
            &candidate.body,
            candidate.client_ip,
            candidate.helo,
            candidate.mail_from,
        );
        Some(
            tokio::time::timeout_at(deadline, checked)
                .await
                .map(|outcome| (outcome, started.elapsed().as_millis() as u64)),
        )
    }

    /// Runs the content engines on a blocking thread, collecting their reports as
    /// they come until `deadline`.
    async fn run_content(
        &self,
        candidate: &Candidate<'_>,
        deadline: tokio::time::Instant,
        links: tokio::sync::oneshot::Sender<Vec<String>>,
    ) -> Vec<Report> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let content = self.content.clone();
        let body = candidate.body.clone();
        let owned = Owned {
            rcpt_to: candidate.rcpt_to.to_vec(),
            client_ip: candidate.client_ip,
        };
        let want_links = self.blocklists.is_some();
        tokio::task::spawn_blocking(move || {
            content.run(&owned, &body, &tx, want_links.then_some(links))
        });
        let mut reports = Vec::new();
        let collect = async {
            while let Some(report) = rx.recv().await {
                reports.push(report);
            }
        };
        if tokio::time::timeout_at(deadline, collect).await.is_err() {
            tracing::warn!("scan budget spent before every engine finished");
        }
        reports
    }
}

/// Parses a message with mail-parser, `None` when it does not parse. mail-parser
/// 0.11.9 panics on some nestings of attached messages (an attacker's way past
/// every content engine if the panic ended the scan); such a message is judged as
/// one that does not parse: its bytes still go to the second reading.
pub fn parse(raw: &[u8]) -> Option<mail_parser::Message<'_>> {
    std::panic::catch_unwind(|| mail_parser::MessageParser::default().parse(raw)).unwrap_or_else(
        |_| {
            tracing::warn!("mail-parser panicked on a message; judged as unparseable");
            None
        },
    )
}

/// The envelope fields the blocking thread needs, owned.
struct Owned {
    rcpt_to: Vec<String>,
    client_ip: std::net::IpAddr,
}

impl ContentEngines {
    /// Parses and unpacks once, then runs every engine, sending each report as soon
    /// as it is ready (the receiver may have given up: then the rest is skipped).
    fn run(
        &self,
        owned: &Owned,
        body: &[u8],
        tx: &tokio::sync::mpsc::UnboundedSender<Report>,
        links: Option<tokio::sync::oneshot::Sender<Vec<String>>>,
    ) {
        let started = Instant::now();
        let parsed = parse(body);
        let fallback;
        let message = match &parsed {
            Some(message) => message,
            None => {
                // What does not parse as a message (empty, say) is judged as one
                // without headers: the parser's accessors need a root part, and the
                // second reading of the unpacker still reads the bytes.
                fallback = mail_parser::Message {
                    parts: vec![mail_parser::MessagePart::default()],
                    raw_message: body.into(),
                    ..Default::default()
                };
                &fallback
            }
        };
        if let Some(links) = links {
            // The blocklist lookups wait for these; they go first.
            let _ = links.send(spam::link_hosts(message));
        }
        let contents = contents::unpack(message, &self.limits);
        let view = spam::view(message, &contents);
        let unpack_ms = started.elapsed().as_millis() as u64;
        let input = Parsed {
            rcpt_to: &owned.rcpt_to,
            client_ip: owned.client_ip,
            raw: body,
            message,
            contents: &contents,
            view: &view,
            local_domains: &self.local_domains,
        };
        let mut unpacked = Outcome {
            hits: Vec::new(),
            findings: contents.findings.clone(),
        };
        if parsed.is_none() {
            unpacked.hits.push(Hit::new(
                "MIME_UNPARSEABLE",
                1.0,
                "the message could not be parsed as MIME",
            ));
        }
        let mut ok = tx
            .send(Report {
                engine: "unpack",
                version: env!("CARGO_PKG_VERSION").to_string(),
                outcome: unpacked,
                ms: unpack_ms,
            })
            .is_ok();
        for engine in &self.engines {
            if !ok {
                break;
            }
            let started = Instant::now();
            let outcome = engine.scan(&input);
            ok = tx
                .send(Report {
                    engine: engine.name(),
                    version: engine.version(),
                    outcome,
                    ms: started.elapsed().as_millis() as u64,
                })
                .is_ok();
        }
    }
}
