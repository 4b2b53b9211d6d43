//! The scanning pipeline: the one place where an accepted message is judged before
//! it is committed (DESIGN.md, "the mail's path").
//!
//! For the content engines ([`Engine`]) the message is parsed once by mail-parser
//! and its files unpacked once, on a blocking thread, while the network engines
//! ([`NetworkEngine`]: authentication, DNS blocklists, clamd) run beside them on the
//! runtime. Everything has one time budget: an engine that has not answered by then
//! is recorded as timed out (symbol `SCAN_TIMEOUT`) and the verdict is made from what
//! did answer — a slow engine never holds a session. The policy then turns scores
//! and findings into the action, and the whole verdict is committed with the message.
//!
//! Besides that one full parse, a message is read again where a shared parse would
//! not serve:
//! - the ingress reads the header section alone (Subject, From, Message-ID): the
//!   policy and DMARC need the From address before any engine starts, and a
//!   header-only read costs a fraction of the full parse, which must not run on the
//!   session's task;
//! - [`origin`] reads the `Received` headers again, only when the client is one of
//!   our trusted relays;
//! - mail-auth parses the message itself for DKIM, ARC and DMARC: its
//!   `AuthenticatedMessage` cannot be built from a mail-parser message;
//! - and the second reading ([`mime`], [`decode`]) splits the raw bytes as Python's
//!   `email` package does, on purpose apart from mail-parser (see [`contents`]).

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
pub mod suffixes;
pub mod yara;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulwark_model::{EngineRun, Finding, MessageId, Symbol, Verdict};
use futures::future::join_all;

pub use engine::{
    Authentication, Checked, Engine, FindingKind, Hit, LinkHosts, NetworkEngine, Outcome, Parsed,
};

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::config::ScanConfig;
use crate::policy::{Facts, Live, Personal};
use suffixes::Suffixes;

/// The symbol of a message judged as from the host a trusted relay received it
/// from; its description starts with [`JUDGED_AS_FROM`] and that host's address.
pub const VIA_TRUSTED_RELAY: &str = "RCVD_VIA_TRUSTED_RELAY";
pub const JUDGED_AS_FROM: &str = "judged as from ";
/// The symbol of a message that came from outside through a trusted relay with no
/// Message-ID of its own: a relay of ours wrote one from its queue id. Mail programs
/// and bulk senders always write one; spamware often does not. Its score is set in
/// the built-in rules (`default.cf`), and a rule file may change it.
pub const MESSAGE_ID_BY_RELAY: &str = "MSGID_ADDED_BY_RELAY";

/// What the scanner takes from outside `[scan]`.
#[derive(Clone, Copy, Debug)]
pub struct Site<'a> {
    /// Our name (`[smtp] hostname`): the authserv-id of the Authentication-Results
    /// header and the name DKIM and ARC results are recorded under.
    pub hostname: &'a str,
    /// Our domains (`[smtp] domains`), for the engines that look for impersonation.
    pub domains: &'a [String],
    /// How long one DNS lookup may take (`[dns] timeout_ms`).
    pub dns_timeout: Duration,
    /// The public suffixes DMARC's alignment uses (`[dns] public_suffix_list`).
    pub suffixes: &'a Arc<Suffixes>,
}

/// What the node adds to each policy version's engines: its unpacking limits, scan
/// budget, domains, DNS resolver and classifier. Each version the cluster commits is
/// assembled here, off the sessions' path, into a [`Ruleset`].
pub struct Assembler {
    limits: contents::Limits,
    budget: Duration,
    local_domains: Vec<String>,
    resolver: crate::dns::TokioResolver,
    /// The replicated counts and how many messages of each class they need first.
    bayes: Option<(Arc<dyn bayes::TokenCounts>, u64)>,
}

/// One policy version's engines as the node runs them: the content engines in the
/// order they run, and the DNS blocklists when the policy names any.
pub struct Ruleset {
    content: Arc<ContentEngines>,
    blocklists: Option<blocklists::Blocklists>,
    /// Scores the rule files set for symbols of engines other than the rules.
    engine_scores: HashMap<String, spam::Scores>,
}

impl Assembler {
    pub fn new(
        config: &ScanConfig,
        site: Site<'_>,
        resolver: crate::dns::TokioResolver,
        bayes: Option<Arc<dyn bayes::TokenCounts>>,
    ) -> Self {
        Assembler {
            limits: config.limits(),
            budget: config.budget,
            local_domains: site.domains.to_vec(),
            resolver,
            bayes: bayes
                .filter(|_| config.bayes)
                .map(|counts| (counts, config.bayes_min_messages)),
        }
    }

    /// The engines of a compiled policy with the node's own beside them.
    pub fn ruleset(&self, content: crate::policy::Content) -> Ruleset {
        for line in &content.notes {
            tracing::info!(%line, "rule skipped or warned about");
        }
        let engine_scores = content.spam.engine_scores().clone();
        let mut engines: Vec<Box<dyn Engine>> = vec![
            Box::new(content.malware),
            Box::new(content.attachments),
            Box::new(content.spam),
            Box::new(content.phishing),
        ];
        if let Some(yara) = content.yara {
            engines.push(Box::new(yara.with_timeout(self.budget)));
        }
        let classifier = self
            .bayes
            .as_ref()
            .map(|(counts, min_messages)| bayes::BayesEngine::new(counts.clone(), *min_messages));
        if let Some(classifier) = &classifier {
            engines.push(Box::new(classifier.clone()));
        }
        let blocklists = (!content.blocklists.is_empty())
            .then(|| blocklists::Blocklists::new(content.blocklists, self.resolver.clone()));
        Ruleset {
            content: Arc::new(ContentEngines {
                engines,
                classifier,
                limits: self.limits.clone(),
                local_domains: self.local_domains.clone(),
            }),
            blocklists,
            engine_scores,
        }
    }
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
    /// The network engines the node keeps whatever the policy (clamd,
    /// authentication), in the order the verdict records them, after the content
    /// engines; the policy's DNS blocklists come after them.
    fixed: Vec<Box<dyn NetworkEngine>>,
    trusted_relays: Vec<ipnet::IpNet>,
    /// The policy and its engines, as the cluster changes them.
    live: Live,
    budget: Duration,
    /// How long each message's scan took (see [`Scanner::register_metrics`]).
    durations: Histogram,
    /// The recipients' own allow and block lists, where the node keeps them.
    personal: Option<Arc<dyn crate::policy::PersonalLists>>,
}

struct ContentEngines {
    engines: Vec<Box<dyn Engine>>,
    /// The classifier among `engines`, asked whether it judges (which score set
    /// the rules use).
    classifier: Option<bayes::BayesEngine>,
    limits: contents::Limits,
    local_domains: Vec<String>,
}

/// One engine's part in a verdict: what it reported and how many ms it took, or
/// `None` when the scan budget ran out first. Content engines send theirs from the
/// blocking thread as they finish.
struct Run {
    engine: &'static str,
    version: String,
    report: Option<(Outcome, u64)>,
}

impl Scanner {
    /// The pipeline: the node's own network engines (authentication, clamd) and
    /// the policy's, whichever version `live` holds when a message comes.
    pub fn new(
        config: &ScanConfig,
        site: Site<'_>,
        live: Live,
        resolver: crate::dns::TokioResolver,
    ) -> anyhow::Result<Self> {
        let auth = if config.authentication {
            let auth = auth::Authenticator::with_resolver(
                resolver,
                site.dns_timeout,
                site.hostname.to_string(),
                Arc::clone(site.suffixes),
            )
            .map_err(|e| anyhow::anyhow!("authentication: {e}"))?;
            Some(auth)
        } else {
            None
        };
        let clamd = config
            .clamd
            .as_ref()
            .map(|c| clamd::Clamd::new(c.address.clone(), c.timeout, c.fail_closed));
        let fixed: Vec<Box<dyn NetworkEngine>> = [
            clamd.map(|e| Box::new(e) as Box<dyn NetworkEngine>),
            auth.map(|e| Box::new(e) as Box<dyn NetworkEngine>),
        ]
        .into_iter()
        .flatten()
        .collect();
        for engine in &fixed {
            if engine.budget() > config.budget {
                tracing::info!(
                    engine = engine.name(),
                    scan_budget_ms = config.budget.as_millis() as u64,
                    worst_case_ms = engine.budget().as_millis() as u64,
                    "a slow peer can make this engine time out within the scan budget"
                );
            }
        }
        Ok(Scanner {
            fixed,
            trusted_relays: config.trusted_relays.clone(),
            live,
            budget: config.budget,
            // 1 ms to about 32 s.
            durations: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            personal: None,
        })
    }

    /// The pipeline, with the recipients' own lists read from `lists`.
    pub fn with_personal_lists(mut self, lists: Arc<dyn crate::policy::PersonalLists>) -> Self {
        self.personal = Some(lists);
        self
    }

    /// A pipeline judging by the policy of `config` alone, as version 0 (the
    /// benchmarks and tools that run no cluster).
    pub fn standalone(
        config: &crate::config::Config,
        resolver: crate::dns::TokioResolver,
        bayes: Option<Arc<dyn bayes::TokenCounts>>,
    ) -> anyhow::Result<Self> {
        let compiled = config
            .policy_document
            .compile()
            .map_err(|problems| anyhow::anyhow!("{}", problems.join("\n")))?;
        let assembler = Assembler::new(&config.scan, config.site(), resolver.clone(), bayes);
        let current = crate::policy::Current {
            version: 0,
            policy: compiled.policy,
            ruleset: Arc::new(assembler.ruleset(compiled.content)),
        };
        Scanner::new(
            &config.scan,
            config.site(),
            crate::policy::fixed(current),
            resolver,
        )
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
        // One version for the whole message, whatever is committed meanwhile.
        let current = self.live.borrow().clone();
        let ruleset = &current.ruleset;
        let network: Vec<&dyn NetworkEngine> = self
            .fixed
            .iter()
            .map(|e| e.as_ref())
            .chain(ruleset.blocklists.as_ref().map(|b| b as &dyn NetworkEngine))
            .collect();
        let deadline = tokio::time::Instant::now() + self.budget;
        let (links_tx, links_rx) = tokio::sync::oneshot::channel();
        let links = LinkHosts::new(links_rx);
        let checks = network
            .iter()
            .map(|engine| timed(deadline, engine.check(candidate, &links)));
        let want_links = network.iter().any(|e| e.wants_links());
        // Which score set the rules use, decided once for the whole message.
        let bayes = ruleset
            .content
            .classifier
            .as_ref()
            .is_some_and(bayes::BayesEngine::is_ready);
        let (reported, checked) = tokio::join!(
            run_content(
                &ruleset.content,
                candidate,
                bayes,
                deadline,
                want_links.then_some(links_tx)
            ),
            join_all(checks)
        );
        let (runs, authentication) = runs(&ruleset.content, &network, reported, checked);

        // The score a rule file (the built-in rules first) sets for a symbol.
        let set_score = |symbol: &str| ruleset.engine_scores.get(symbol).map(|s| s.get(bayes));
        let mut symbols = Vec::new();
        if let Some(relay) = from.via {
            symbols.push(Symbol {
                name: VIA_TRUSTED_RELAY.into(),
                score: 0.0,
                description: format!(
                    "{JUDGED_AS_FROM}{} (HELO {}), which handed it to our relay {relay}",
                    from.ip, from.helo
                ),
                engine: "origin".into(),
            });
        }
        if let Some(queue_id) = &from.message_id_by_relay {
            symbols.push(Symbol {
                name: MESSAGE_ID_BY_RELAY.into(),
                score: set_score(MESSAGE_ID_BY_RELAY).unwrap_or(0.0),
                description: format!(
                    "no Message-ID from the sender: a relay of ours wrote it from its queue id {queue_id}"
                ),
                engine: "origin".into(),
            });
        }
        let (findings, mut engines) = self.record(&runs, set_score, &mut symbols);

        let score = total(&symbols);
        let first = |kinds: &[FindingKind]| {
            runs.iter()
                .filter_map(|r| r.report.as_ref())
                .flat_map(|(outcome, _)| &outcome.findings)
                .find(|f| kinds.contains(&f.kind))
                .map(|f| f.name.as_str())
        };
        // A recipient's allow list takes only a sender that authenticated: the
        // envelope's when SPF passed, the From's when DMARC passed. Anyone can write
        // any address; a block list takes them as written.
        let passed = |method: &str| {
            authentication.as_ref().is_some_and(|a| {
                a.results
                    .iter()
                    .any(|r| r.method == method && r.result == "pass")
            })
        };
        let senders = [Some(candidate.mail_from), candidate.header_from];
        let verified = [
            passed("spf").then_some(candidate.mail_from),
            candidate.header_from.filter(|_| passed("dmarc")),
        ];
        let personal: Vec<Personal> = match &self.personal {
            Some(lists) => candidate
                .rcpt_to
                .iter()
                .map(|rcpt| Personal::of(&lists.lists(rcpt), &senders, &verified))
                .collect(),
            None => Vec::new(),
        };
        let decision = current.policy.decide(&Facts {
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
            dmarc: authentication.as_ref().and_then(|a| a.dmarc),
            personal: &personal,
        });
        // The policy is the pipeline's last stage; its version is the cluster's.
        engines.push(EngineRun {
            engine: bulwark_model::message::POLICY_ENGINE.into(),
            version: current.version.to_string(),
            ms: 0,
            timed_out: false,
        });
        self.durations.observe(started.elapsed().as_secs_f64());
        let (authentication, auth_header) = match authentication {
            Some(a) => (a.results, Some(a.header)),
            None => (Vec::new(), None),
        };
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

    /// The findings and engine runs the verdict records of `runs`, their hits added
    /// to `symbols`. An engine that did not finish within the budget is recorded as
    /// timed out after the whole budget, with a 0-score `SCAN_TIMEOUT`. A hit scores
    /// what the rule files set for its symbol, if they set anything.
    fn record(
        &self,
        runs: &[Run],
        set_score: impl Fn(&str) -> Option<f64>,
        symbols: &mut Vec<Symbol>,
    ) -> (Vec<Finding>, Vec<EngineRun>) {
        let budget_ms = self.budget.as_millis() as u64;
        let mut findings = Vec::new();
        let mut engines = Vec::new();
        for run in runs {
            engines.push(EngineRun {
                engine: run.engine.to_string(),
                version: run.version.clone(),
                ms: run.report.as_ref().map_or(budget_ms, |(_, ms)| *ms),
                timed_out: run.report.is_none(),
            });
            let Some((outcome, _)) = &run.report else {
                symbols.push(Symbol {
                    name: "SCAN_TIMEOUT".into(),
                    score: 0.0,
                    description: format!(
                        "{} did not finish within the {budget_ms} ms scan budget",
                        run.engine
                    ),
                    engine: run.engine.to_string(),
                });
                continue;
            };
            for hit in &outcome.hits {
                symbols.push(Symbol {
                    name: hit.symbol.clone(),
                    score: set_score(&hit.symbol).unwrap_or(hit.score),
                    description: hit.description.clone(),
                    engine: run.engine.to_string(),
                });
            }
            for found in &outcome.findings {
                findings.push(Finding {
                    kind: found.kind.as_str().to_string(),
                    name: found.name.clone(),
                    location: found.location.clone(),
                    engine: run.engine.to_string(),
                });
            }
        }
        (findings, engines)
    }
}

/// What each engine did, in the order the verdict records it: the content engines
/// that reported, the network engines, the content engines that ran out of time;
/// and what authentication found, if it ran in time.
fn runs(
    content: &ContentEngines,
    network: &[&dyn NetworkEngine],
    reported: Vec<Run>,
    checked: Vec<Option<(Checked, u64)>>,
) -> (Vec<Run>, Option<Authentication>) {
    let late: Vec<Run> = content
        .engines
        .iter()
        .filter(|engine| !reported.iter().any(|r| r.engine == engine.name()))
        .map(|engine| Run {
            engine: engine.name(),
            version: engine.version(),
            report: None,
        })
        .collect();
    let mut runs = reported;
    let mut authentication = None;
    for (engine, checked) in network.iter().zip(checked) {
        let report = checked.map(|(checked, ms)| {
            if checked.authentication.is_some() {
                authentication = checked.authentication;
            }
            (checked.outcome, ms)
        });
        runs.push(Run {
            engine: engine.name(),
            version: engine.version(),
            report,
        });
    }
    runs.extend(late);
    (runs, authentication)
}

/// Runs the content engines on a blocking thread, collecting their reports as they
/// come until `deadline`; `links` gets the message's link hosts first, when a network
/// engine wants them.
async fn run_content(
    content: &Arc<ContentEngines>,
    candidate: &Candidate<'_>,
    bayes: bool,
    deadline: tokio::time::Instant,
    links: Option<tokio::sync::oneshot::Sender<Vec<String>>>,
) -> Vec<Run> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let content = content.clone();
    let body = candidate.body.clone();
    let owned = Owned {
        rcpt_to: candidate.rcpt_to.to_vec(),
        client_ip: candidate.client_ip,
        bayes,
    };
    tokio::task::spawn_blocking(move || content.run(&owned, &body, &tx, links));
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

/// `check`'s output and how many ms it took, or `None` when `deadline` comes first:
/// the one time limit every network engine gets.
async fn timed<T>(
    deadline: tokio::time::Instant,
    check: impl Future<Output = T>,
) -> Option<(T, u64)> {
    let started = Instant::now();
    let output = tokio::time::timeout_at(deadline, check).await.ok()?;
    Some((output, started.elapsed().as_millis() as u64))
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
    bayes: bool,
}

impl ContentEngines {
    /// Parses and unpacks once, then runs every engine, sending each report as soon
    /// as it is ready (the receiver may have given up: then the rest is skipped).
    fn run(
        &self,
        owned: &Owned,
        body: &[u8],
        tx: &tokio::sync::mpsc::UnboundedSender<Run>,
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
            // A network engine waits for these; they go first.
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
            bayes: owned.bayes,
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
            .send(Run {
                engine: "unpack",
                version: env!("CARGO_PKG_VERSION").to_string(),
                report: Some((unpacked, unpack_ms)),
            })
            .is_ok();
        for engine in &self.engines {
            if !ok {
                break;
            }
            let started = Instant::now();
            let outcome = engine.scan(&input);
            ok = tx
                .send(Run {
                    engine: engine.name(),
                    version: engine.version(),
                    report: Some((outcome, started.elapsed().as_millis() as u64)),
                })
                .is_ok();
        }
    }
}

/// The message's score: its symbols' scores added up in thousandths of a point (the
/// finest a rule file writes), so that symbols adding up to a threshold reach it. In
/// binary floating point fifty symbols of 0.1 come to 4.999…, and a message whose
/// explanation adds up to 5 would not be tagged from 5. Scores too large for that
/// (a rule file may write 1e300) saturate rather than wrap.
fn total(symbols: &[Symbol]) -> f64 {
    let thousandths = symbols
        .iter()
        .map(|s| (s.score * 1000.0).round() as i64)
        .fold(0i64, i64::saturating_add);
    thousandths as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(scores: &[f64]) -> Vec<Symbol> {
        scores
            .iter()
            .map(|&score| Symbol {
                name: "S".into(),
                score,
                description: String::new(),
                engine: "spam".into(),
            })
            .collect()
    }

    #[test]
    fn the_score_is_added_up_in_thousandths_and_saturates() {
        assert_eq!(total(&scored(&[0.1; 50])), 5.0);
        assert_eq!(total(&scored(&[2.0, 0.3, 0.3, 1.5, 0.3, 0.3, 0.3])), 5.0);
        assert_eq!(total(&scored(&[4.5, -1.5, 0.001])), 3.001);
        assert_eq!(total(&[]), 0.0);
        let huge = total(&scored(&[1e300, 1e300, 1000.0]));
        assert!(huge > 1e15, "{huge}");
        let low = total(&scored(&[-1e300, -1e300]));
        assert!(low < -1e15, "{low}");
    }
}
