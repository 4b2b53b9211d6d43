//! `bulwark serve`: wires storage, consensus and the API into a running node.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bulwark_api::{AdminToken, ApiState, BOOTSTRAP_ADMIN};
use bulwark_consensus::RaftNode;
use bulwark_storage::{ApiToken, Command, Role, TokenCommand};
use tokio::signal::unix::{signal, SignalKind};

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::{audit, delivery, disk, dns, maillog, policy, quarantine, scan, siem, smtp};

pub fn run(config: Option<&Path>) -> Result<()> {
    crate::logging::init();
    test_clock_offset()?;
    test_feature_level()?;
    let config = match config {
        Some(path) => {
            Config::load(path).map_err(|problems| anyhow::anyhow!("{}", problems.join("\n")))?
        }
        None => {
            tracing::info!("no --config: single-node embedded default");
            Config::embedded()
        }
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(config))
}

/// The environment variable that sets this node's wall clock off by a number of
/// milliseconds (negative: behind). Test only: it plays a host whose clock is wrong,
/// for the cluster test of delivery leases under clock skew (`t72_lease_clock_skew`).
pub const TEST_CLOCK_OFFSET_ENV: &str = "BULWARK_TEST_CLOCK_OFFSET_MS";

/// Applies [`TEST_CLOCK_OFFSET_ENV`] when it is set; a value that is not a whole
/// number of milliseconds stops the node.
fn test_clock_offset() -> Result<()> {
    let Some(value) = std::env::var_os(TEST_CLOCK_OFFSET_ENV) else {
        return Ok(());
    };
    let offset: i64 = value
        .to_str()
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| {
            format!("{TEST_CLOCK_OFFSET_ENV}={value:?}: not a number of milliseconds")
        })?;
    tracing::warn!(
        offset_ms = offset,
        "{TEST_CLOCK_OFFSET_ENV} is set: this node's wall clock runs off by that much \
         (test only; never set it in production)"
    );
    bulwark_consensus::clock::set_test_offset(offset);
    Ok(())
}

/// The environment variable that makes this node claim a lower feature level than
/// its build's. Test only: it plays a node of an older release during a rolling
/// upgrade, for the cluster test of feature levels (`t101_feature_level`).
pub const TEST_FEATURE_LEVEL_ENV: &str = "BULWARK_TEST_FEATURE_LEVEL";

/// Applies [`TEST_FEATURE_LEVEL_ENV`] when it is set; a value that is not a level
/// from 1 to this build's stops the node.
fn test_feature_level() -> Result<()> {
    let Some(value) = std::env::var_os(TEST_FEATURE_LEVEL_ENV) else {
        return Ok(());
    };
    let highest = bulwark_model::feature::FEATURE_LEVEL;
    let level: u32 = value
        .to_str()
        .and_then(|v| v.trim().parse().ok())
        .filter(|l| (1..=highest).contains(l))
        .with_context(|| {
            format!("{TEST_FEATURE_LEVEL_ENV}={value:?}: not a feature level from 1 to {highest}")
        })?;
    tracing::warn!(
        level,
        "{TEST_FEATURE_LEVEL_ENV} is set: this node claims feature level {level} (test only; \
         never set it in production)"
    );
    bulwark_consensus::feature::set_test_level(level);
    Ok(())
}

async fn serve(config: Config) -> Result<()> {
    // Before anything listens: a SIGTERM that lands while the node is starting is
    // then held until it can shut down in order, instead of killing the process
    // under a client that has already been answered.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let data_dir = &config.node.data_dir;
    fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let _in_use = lock_data_dir(data_dir)?;
    check_node_id(data_dir, config.node.id)?;
    let (token, token_created) = admin_token(&config.admin_token_file)?;
    let signing_keys = Arc::new(audit::Keys::load(&config.audit, data_dir)?);
    let mail_log = maillog::MailLog::open(config.mail_log.clone(), config.node.id)
        .context("opening the mail log (log.mail_log)")?;

    let api_tls = match &config.api_tls {
        Some((cert, key)) => Some(
            crate::tls::server_config(cert, key, &[b"h2", b"http/1.1"])
                .context("the API's TLS certificate and key")?,
        ),
        None => None,
    };
    let api_listener = tokio::net::TcpListener::bind(config.api_listen)
        .await
        .with_context(|| format!("binding the API to {}", config.api_listen))?;
    let smtp = smtp::Server::bind(config.smtp.clone()).await?;
    let node = Arc::new(RaftNode::start(config.node.clone()).await?);
    tracing::info!(
        node = config.node.id,
        data_dir = %data_dir.display(),
        smtp = %smtp.local_addr(),
        api = %config.api_listen,
        cluster = config.node.cluster.as_ref().map(|c| c.listen.as_str()).unwrap_or("single node"),
        "bulwark is running"
    );
    console_greeting(&config, api_tls.is_some(), token_created.then_some(&token));

    let resolver = dns::resolver(&config.dns.nameservers, config.dns.timeout)
        .map_err(|e| anyhow::anyhow!("DNS: {e}"))?;
    let counts: Arc<dyn scan::bayes::TokenCounts> = Arc::new(ReplicatedCounts(node.clone()));
    let assembler = Arc::new(scan::Assembler::new(
        &config.scan,
        config.site(),
        resolver.clone(),
        Some(counts),
    ));
    let own = config
        .policy_document
        .compile()
        .map_err(|problems| anyhow::anyhow!("{}", problems.join("\n")))?;
    let own_exporters = siem::Exporters {
        names: config.siem.iter().map(|e| e.name.clone()).collect(),
        ready: config.siem.clone(),
    };
    let following =
        policy::replicated::start(&node, own, own_exporters, &assembler, &config.siem_local);
    let live_policy = following.policy.subscribe();
    let exporters = following.exporters.subscribe();
    let scanner = Arc::new(
        scan::Scanner::new(
            &config.scan,
            config.site(),
            live_policy.clone(),
            resolver.clone(),
        )?
        .with_personal_lists(Arc::new(ReplicatedLists(node.clone()))),
    );
    let mut registry = prometheus_client::registry::Registry::default();
    scanner.register_metrics(&mut registry);
    let disk = disk::DiskSpace::new(data_dir, config.smtp.min_free_disk);
    disk.register_metrics(&mut registry);
    let backlog = Arc::new(delivery::Backlog::new(
        config.delivery.concurrency,
        config.delivery.lease,
    ));
    backlog.register_metrics(&mut registry);
    let smtp = smtp.serve_with(
        node.proposer().clone(),
        scanner,
        config.node.id,
        disk.clone(),
        backlog.clone(),
    );
    smtp.register_metrics(&mut registry);
    mail_log.register_metrics(&mut registry);
    let siem_metrics = siem::Metrics::register(&mut registry);
    crate::proc_stats::register(&mut registry);
    let policy_gauge = prometheus_client::metrics::gauge::Gauge::<i64>::default();
    registry.register(
        "bulwark_policy_version",
        "The cluster policy version this node judges by (0: its own [policy], before the cluster had one)",
        policy_gauge.clone(),
    );

    let notices = Arc::new(quarantine::digest::Notices::new(
        node.clone(),
        config.digest.clone(),
        &config.smtp.hostname,
        &config.smtp.domains,
    ));
    let admin = AdminToken::new(&token, config.node.id);
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let tokenizer = scan::bayes::Tokenizer::new(config.scan.limits());
    let state = ApiState {
        node: node.clone(),
        admin: admin.clone(),
        tokenizer: Arc::new(move |raw: &[u8]| tokenizer.tokens(raw)),
        preview: {
            let limits = config.scan.limits();
            Arc::new(move |raw: &[u8]| scan::preview::preview(raw, &limits))
        },
        metrics: bulwark_api::Metrics::new(registry, node.clone()),
        backup_dir: config.backup_dir.clone(),
        public_status: config.public_status,
        reads: Arc::default(),
        policy: Arc::new(PolicyForApi(live_policy.clone(), config.siem_local.clone())),
        tls: api_tls.is_some(),
        disk_free: {
            let disk = disk.clone();
            Arc::new(move || (disk.free(), disk.min_free()))
        },
        notices: notices.clone(),
    };
    let api = tokio::spawn(bulwark_api::serve(api_listener, api_tls, state, async {
        let _ = api_stopped.await;
    }));

    let stop_mail_log = CancellationToken::new();
    let mail_log = tokio::spawn(maillog::run(mail_log, node.clone(), stop_mail_log.clone()));
    let stop_smtp = CancellationToken::new();
    let smtp = tokio::spawn(smtp.run(stop_smtp.clone()));
    let stop_delivery = CancellationToken::new();
    let disk_watch = tokio::spawn(disk.watch(stop_delivery.clone()));
    let delivery = delivery::Worker::new(node.clone(), config.delivery.clone(), resolver, backlog);
    let delivery = tokio::spawn(delivery.run(stop_delivery.clone()));
    let retention = tokio::spawn(quarantine::run(
        node.clone(),
        config.quarantine.clone(),
        stop_delivery.clone(),
    ));
    let digests = tokio::spawn(quarantine::digest::schedule(notices, stop_delivery.clone()));
    let bayes_expiry = tokio::spawn(crate::scan::bayes::expiry::run(
        node.clone(),
        config.scan.bayes_max_tokens,
        stop_delivery.clone(),
    ));
    let erasure = tokio::spawn(quarantine::erase(
        node.clone(),
        config.quarantine.erase_within,
        stop_delivery.clone(),
    ));

    let policy_follower = tokio::spawn(policy::replicated::follow(
        node.clone(),
        config.policy_document.clone(),
        following,
        assembler,
        config.siem_local.clone(),
        policy_gauge,
        stop_delivery.clone(),
    ));
    let bootstrap_admin = tokio::spawn(enrol_admin(
        node.clone(),
        admin.digest(),
        stop_delivery.clone(),
    ));
    let enrolment = tokio::spawn(audit::enrol(
        node.clone(),
        signing_keys.clone(),
        stop_delivery.clone(),
    ));
    let checkpoints = tokio::spawn(audit::run(
        node.clone(),
        signing_keys,
        config.audit.clone(),
        stop_delivery.clone(),
    ));
    let event_retention = tokio::spawn(audit::retention(
        node.clone(),
        config.audit.clone(),
        exporters.clone(),
        stop_delivery.clone(),
    ));
    let exporters = tokio::spawn(siem::run(
        node.clone(),
        exporters,
        config.smtp.hostname.clone(),
        siem_metrics,
        stop_delivery.clone(),
    ));

    // Under systemd (`Type=notify`): started once SMTP, the API and Raft listen.
    notify_systemd(sd_notify::NotifyState::Ready);

    let mut failed = None;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        reason = raft_stopped(node.raft().metrics()) => {
            tracing::error!(
                error = %reason,
                "Raft stopped (a full disk or a storage failure): shutting down, to be \
                 started again by the service manager once the cause is fixed"
            );
            failed = Some(reason);
        }
        said = node.too_old() => {
            tracing::error!("{said}");
            failed = Some(said);
        }
    }
    notify_systemd(sd_notify::NotifyState::Stopping);
    node.begin_stopping();
    // In order: SMTP stops accepting and drains (its commits still need Raft), the
    // workers stop, a leader hands its leadership to a caught-up peer, then the API
    // stops, then Raft and the stores.
    stop_smtp.cancel();
    if let Err(e) = smtp.await {
        tracing::warn!(error = %e, "SMTP server task");
    }
    stop_delivery.cancel();
    if let Err(e) = delivery.await {
        tracing::warn!(error = %e, "delivery task");
    }
    if let Err(e) = retention.await {
        tracing::warn!(error = %e, "quarantine retention task");
    }
    if let Err(e) = digests.await {
        tracing::warn!(error = %e, "quarantine digest task");
    }
    if let Err(e) = bayes_expiry.await {
        tracing::warn!(error = %e, "classifier expiry task");
    }
    if let Err(e) = erasure.await {
        tracing::warn!(error = %e, "quarantine erasure task");
    }
    if let Err(e) = policy_follower.await {
        tracing::warn!(error = %e, "policy follower task");
    }
    if let Err(e) = bootstrap_admin.await {
        tracing::warn!(error = %e, "bootstrap admin enrolment task");
    }
    if let Err(e) = enrolment.await {
        tracing::warn!(error = %e, "audit signing key enrolment task");
    }
    if let Err(e) = checkpoints.await {
        tracing::warn!(error = %e, "audit checkpoint task");
    }
    if let Err(e) = event_retention.await {
        tracing::warn!(error = %e, "event retention task");
    }
    if let Err(e) = exporters.await {
        tracing::warn!(error = %e, "SIEM exporters task");
    }
    if let Err(e) = disk_watch.await {
        tracing::warn!(error = %e, "disk space watch");
    }
    // Last, so that it writes the lines of everything decided until now.
    stop_mail_log.cancel();
    if let Err(e) = mail_log.await {
        tracing::warn!(error = %e, "mail log task");
    }
    if let Some(next) = node.hand_over_leadership(HAND_OVER_TIMEOUT).await {
        tracing::info!(leader = next, "node {next} leads now");
    }
    let _ = stop_api.send(());
    match tokio::time::timeout(std::time::Duration::from_secs(10), api).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "API server"),
        Err(_) => tracing::warn!("API requests still running after 10 s; closing"),
        _ => {}
    }
    match Arc::try_unwrap(node) {
        Ok(node) => node.shutdown().await,
        Err(node) => node.raft().shutdown().await.unwrap_or(()),
    }
    tracing::info!("stopped");
    match failed {
        Some(reason) => bail!("Raft stopped: {reason}"),
        None => Ok(()),
    }
}

/// Resolves when this node's Raft has stopped on a fatal error (its storage could
/// not write, say): the node can then neither take nor replicate mail, and only a
/// restart, once the cause is gone, brings it back. Looked at every
/// [`RAFT_STOPPED_CHECK`]: the metrics change at every commit, and waking for each
/// change would cost the mail path a thread switch per Raft round.
async fn raft_stopped(
    metrics: tokio::sync::watch::Receiver<bulwark_consensus::types::RaftMetrics>,
) -> String {
    let mut every = tokio::time::interval(RAFT_STOPPED_CHECK);
    loop {
        every.tick().await;
        if let Err(e) = &metrics.borrow().running_state {
            return e.to_string();
        }
        if metrics.has_changed().is_err() {
            return "Raft's metrics channel closed".into();
        }
    }
}

/// How often the node looks whether Raft has stopped on a fatal error.
const RAFT_STOPPED_CHECK: Duration = Duration::from_millis(250);

/// How long a stopping leader tries to hand its leadership over before it stops
/// anyway (the others then elect a leader after their election timeout).
const HAND_OVER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long one `POST /v1/policy/simulate` works before it answers with a cursor.
const SIMULATE_BUDGET: Duration = Duration::from_secs(5);

/// What the API asks of policies: the `[policy]` keys as JSON compiled as a node
/// would (every problem at once, the exporters built with this node's files), tried
/// on the decisions on record, and the version the sessions judge by.
struct PolicyForApi(policy::Live, siem::Local);

impl bulwark_api::PolicyEngine for PolicyForApi {
    fn check(&self, proposed: &serde_json::Value) -> Result<String, Vec<String>> {
        let document: policy::Document =
            serde_json::from_value(proposed.clone()).map_err(|e| vec![format!("policy: {e}")])?;
        let mut problems = document.compile().err().unwrap_or_default();
        problems.extend(document.exporters(&self.1).err().unwrap_or_default());
        match problems.is_empty() {
            true => Ok(document.canonical()),
            false => Err(problems),
        }
    }

    fn judging(&self) -> u64 {
        self.0.borrow().version
    }

    fn simulate(
        &self,
        state: &bulwark_storage::StateStore,
        proposed: &serde_json::Value,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
        after: u64,
    ) -> Result<Result<serde_json::Value, Vec<String>>, bulwark_storage::Error> {
        let range = policy::simulate::Range {
            since_ms,
            until_ms,
            after,
        };
        Ok(
            policy::simulate::simulate(state, proposed, range, SIMULATE_BUDGET)?
                .map(|outcome| outcome.to_json()),
        )
    }
}

/// Tells systemd about the service's state; nothing without `NOTIFY_SOCKET`.
fn notify_systemd(state: sd_notify::NotifyState) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!(error = %e, "telling systemd the service's state");
    }
}

/// The Bayesian counts of the node's live state (the one after a snapshot install
/// too), as every node of the cluster has applied them.
struct ReplicatedCounts(Arc<RaftNode>);

impl scan::bayes::TokenCounts for ReplicatedCounts {
    fn totals(&self) -> (u64, u64) {
        self.0.state().bayes_totals()
    }

    fn counts(&self, tokens: &[u64]) -> Vec<(u32, u32)> {
        self.0.state().bayes_counts(tokens)
    }
}

/// The recipients' own lists, as this node has applied them.
struct ReplicatedLists(Arc<RaftNode>);

impl policy::PersonalLists for ReplicatedLists {
    fn lists(&self, recipient: &str) -> bulwark_storage::recipient::RecipientLists {
        self.0
            .state()
            .recipient_lists(recipient)
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, recipient, "reading a recipient's own lists");
                Default::default()
            })
    }
}

/// The file whose lock says a `bulwark serve` uses the data directory, with its pid.
const LOCK_FILE: &str = "bulwark.pid";

/// Takes the data directory for this process, or says which process has it: two
/// nodes on one directory would corrupt it, and RocksDB's own refusal names only its
/// lock file. The lock goes with the process, however it ends.
fn lock_data_dir(dir: &Path) -> Result<fs::File> {
    let path = dir.join(LOCK_FILE);
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        let pid = fs::read_to_string(&path).unwrap_or_default();
        let pid = pid.trim();
        let by = if pid.is_empty() {
            String::new()
        } else {
            format!(" (pid {pid})")
        };
        bail!(
            "the data directory {} is in use by another bulwark{by}; \
             stop it first, or give this node its own node.data_dir",
            dir.display()
        );
    }
    file.set_len(0)?;
    writeln!(file, "{}", rustix::process::getpid().as_raw_nonzero())?;
    Ok(file)
}

/// Records the node id at first start and refuses to start under another id: a data
/// directory belongs to one node for life.
pub(crate) fn check_node_id(data_dir: &Path, id: u64) -> Result<()> {
    let path = data_dir.join("node.id");
    match fs::read_to_string(&path) {
        Ok(stored) => {
            let stored: u64 = stored
                .trim()
                .parse()
                .with_context(|| format!("{} is corrupt", path.display()))?;
            if stored != id {
                bail!(
                    "{} belongs to node {stored}, but the configuration says node {id}; \
                     a data directory cannot change node id",
                    data_dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bulwark_storage::layout::write_atomic(&path, format!("{id}\n").as_bytes())?;
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// How often a node looks whether it is to enrol the bootstrap admin.
const ENROL_ADMIN_EVERY: Duration = Duration::from_millis(100);
/// How long it keeps looking: a cluster that has elected a leader and applied its
/// log by then has its bootstrap admin, or tokens of its own.
const ENROL_ADMIN_FOR: Duration = Duration::from_secs(120);

/// Makes this node's admin token file the cluster's one bootstrap admin (`admin`,
/// replicated, recorded as `token.created` by `bootstrap`) when this node leads a
/// cluster that has no token at all: once, when the cluster is new (one whose tokens
/// were all revoked later does not get it back: a name is given once).
async fn enrol_admin(node: Arc<RaftNode>, digest: [u8; 32], stop: CancellationToken) {
    let deadline = tokio::time::Instant::now() + ENROL_ADMIN_FOR;
    let mut first = true;
    while tokio::time::Instant::now() < deadline {
        if !std::mem::take(&mut first) {
            tokio::select! {
                _ = tokio::time::sleep(ENROL_ADMIN_EVERY) => {}
                _ = stop.cancelled() => return,
            }
        }
        if !node.is_leader() {
            continue;
        }
        match node.state().tokens() {
            Ok(tokens) if tokens.is_empty() => {}
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "reading the API tokens");
                continue;
            }
        }
        let token = ApiToken {
            name: BOOTSTRAP_ADMIN.into(),
            role: Role::Admin,
            digest,
            created_ms: crate::now_ms(),
            created_by: bulwark_storage::token::BOOTSTRAP_ACTOR.into(),
        };
        let command = Command::Token(Box::new(TokenCommand::CreateUnused {
            token,
            client_ip: None,
        }));
        match node.proposer().propose(command).await {
            Ok(_) => {
                tracing::info!("this node's admin token is the cluster's bootstrap admin");
                return;
            }
            Err(e) => tracing::debug!(error = %e, "enrolling the bootstrap admin"),
        }
    }
}

/// Says where the web console is and how to sign in to it the first time: as
/// `admin`, with the admin token, which is printed too on the start that made it
/// (`new_token`), so that a first start shows all a person needs.
fn console_greeting(config: &Config, tls: bool, new_token: Option<&String>) {
    let scheme = if tls { "https" } else { "http" };
    let url = format!("{scheme}://{}/ui/", config.api_listen);
    let file = config.admin_token_file.display();
    match new_token {
        Some(token) => tracing::info!(
            console = %url,
            user = BOOTSTRAP_ADMIN,
            password = %token,
            "web console: sign in as admin with this token as the password (also in {file}), \
             then make a user of your own under Users"
        ),
        None => tracing::info!(
            console = %url,
            user = BOOTSTRAP_ADMIN,
            "web console: sign in as admin with the token in {file} as the password"
        ),
    }
}

/// Reads the admin token, creating a random one (owner-only file) at first start;
/// and whether this start made it.
fn admin_token(path: &Path) -> Result<(String, bool)> {
    match fs::read_to_string(path) {
        Ok(token) if !token.trim().is_empty() => Ok((token.trim().to_string(), false)),
        Ok(_) => bail!("{} is empty", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir)?;
            }
            let token = hex::encode(rand::random::<[u8; 32]>());
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("creating {}", path.display()))?;
            writeln!(file, "{token}")?;
            file.sync_all()?;
            tracing::info!(path = %path.display(), "admin API token written");
            Ok((token, true))
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}
