//! The cluster's policy on this node: seeded once from the first node's `[policy]`,
//! then followed. Each version the cluster commits is compiled here, off the
//! sessions' path, and swapped in whole; the next message is judged by it, with no
//! restart. A node whose own `[policy]` differs from the cluster's says so once and
//! judges by the cluster's. The exporters of each version are built here too, with
//! this node's own files and secrets, for the node to run while it leads.

use std::sync::Arc;
use std::time::Duration;

use bulwark_consensus::RaftNode;
use bulwark_storage::policy::{self, PolicyChange, PolicyVersion};
use bulwark_storage::Command;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Compiled, Current, Document};
use crate::scan::Assembler;
use crate::siem::{Exporters, Local};

/// How often the node looks for a newly committed version: one metadata read.
const POLL: Duration = Duration::from_millis(100);

/// What a node takes from the cluster's policy version it follows: the policy its
/// sessions judge by, and the exporters it runs while it leads.
pub struct Following {
    pub policy: watch::Sender<Arc<Current>>,
    pub exporters: watch::Sender<Arc<Exporters>>,
}

/// What the node judges by and exports with from its start: the cluster's current
/// version as this node last applied it, else its own `[policy]` (`own`, compiled,
/// and `own_exporters`) as version 0 until the cluster has one. The senders are
/// [`follow`]'s.
pub fn start(
    node: &RaftNode,
    own: Compiled,
    own_exporters: Exporters,
    assembler: &Assembler,
    local: &Local,
) -> Following {
    let cluster = match node.state().current_policy() {
        Ok(Some(version)) => match compile(&version, assembler, local) {
            Ok(current) => Some(current),
            Err(problems) => {
                report_uncompiled(&version, &problems);
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            tracing::error!(error = %e, "reading the cluster's policy; judging by this node's own until it reads");
            None
        }
    };
    let (policy, exporters) = cluster.unwrap_or_else(|| {
        let current = Current {
            version: 0,
            policy: own.policy,
            ruleset: Arc::new(assembler.ruleset(own.content)),
        };
        (current, own_exporters)
    });
    Following {
        policy: watch::channel(Arc::new(policy)).0,
        exporters: watch::channel(Arc::new(exporters)).0,
    }
}

/// Seeds the cluster's first policy from `own` (the leader does, when the cluster
/// has none) and swaps in every version the cluster commits, until `stop`.
pub async fn follow(
    node: Arc<RaftNode>,
    own: Document,
    following: Following,
    assembler: Arc<Assembler>,
    local: Local,
    gauge: Gauge,
    stop: CancellationToken,
) {
    let live = following.policy;
    let local = Arc::new(local);
    let own = own.canonical();
    let mut compared = false;
    let mut refused: Option<u64> = None;
    loop {
        let mut number = policy_number(&node);
        if number == 0 && node.is_leader() && seed(&node, &own).await {
            number = policy_number(&node);
        }
        let judging = live.borrow().version;
        if number > 0 && (!compared || (number != judging && refused != Some(number))) {
            match node.state().policy_version(number) {
                Ok(Some(version)) => {
                    if !compared {
                        compared = true;
                        compare(&own, &version);
                    }
                    if number != judging {
                        // Rules and signatures can take a while to compile: off the
                        // runtime's threads, the sessions judging by the old
                        // version meanwhile.
                        let (assembler, local) = (assembler.clone(), local.clone());
                        let record = version.clone();
                        let compiled = tokio::task::spawn_blocking(move || {
                            compile(&record, &assembler, &local)
                        })
                        .await
                        .unwrap_or_else(|e| Err(vec![format!("compiling: {e}")]));
                        match compiled {
                            Ok((current, exporters)) => {
                                tracing::info!(
                                    version = number,
                                    by = %version.user,
                                    "judging by the cluster's policy version {number}"
                                );
                                live.send_replace(Arc::new(current));
                                following.exporters.send_replace(Arc::new(exporters));
                            }
                            Err(problems) => {
                                report_uncompiled(&version, &problems);
                                refused = Some(number);
                            }
                        }
                    }
                }
                Ok(None) => tracing::warn!(version = number, "policy version missing"),
                Err(e) => tracing::warn!(error = %e, "reading the cluster's policy"),
            }
        }
        gauge.set(live.borrow().version as i64);
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// The cluster's current policy version as this node has applied it (0: none yet,
/// or unreadable, which is said).
fn policy_number(node: &RaftNode) -> u64 {
    node.state().policy_number().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "reading the cluster's policy version");
        0
    })
}

/// Proposes `own` as the cluster's first policy; a proposal that loses to another
/// node's is refused by the state machine and changes nothing. True once the cluster
/// has a policy (this one or the other's), to be read at once.
async fn seed(node: &RaftNode, own: &str) -> bool {
    let id = node.id();
    let change = PolicyChange {
        base_version: 0,
        document: own.to_string(),
        user: bulwark_storage::token::config_actor(id),
        client_ip: None,
        reason: format!("seeded from node {id}'s [policy] configuration"),
    };
    match node
        .proposer()
        .propose(Command::ChangePolicy(Box::new(change)))
        .await
    {
        Ok(result) => {
            if result.refused.is_none() {
                tracing::info!("the cluster's policy is seeded from this node's [policy]");
            }
            true
        }
        Err(e) => {
            tracing::debug!(error = %e, "seeding the cluster's policy");
            false
        }
    }
}

/// Says once, at the first version seen, when this node's own `[policy]` is not the
/// cluster's: the file no longer decides, and an administrator reading it should know.
fn compare(own: &str, cluster: &PolicyVersion) {
    if own == cluster.document {
        return;
    }
    let (Ok(own), Ok(theirs)) = (
        serde_json::from_str::<serde_json::Value>(own),
        serde_json::from_str::<serde_json::Value>(&cluster.document),
    ) else {
        return;
    };
    let differences = policy::diff(&own, &theirs);
    tracing::warn!(
        version = cluster.version,
        differences = %differences.join("; "),
        "this node's [policy] differs from the cluster's policy version {}, which is what \
         it judges by; change the cluster's with `bulwark policy apply` (the file is read \
         only to seed a new cluster)",
        cluster.version
    );
}

fn compile(
    version: &PolicyVersion,
    assembler: &Assembler,
    local: &Local,
) -> Result<(Current, Exporters), Vec<String>> {
    let document = Document::from_json(&version.document).map_err(|e| vec![e])?;
    let compiled = document.compile()?;
    let current = Current {
        version: version.version,
        policy: compiled.policy,
        ruleset: Arc::new(assembler.ruleset(compiled.content)),
    };
    Ok((current, exporters(&document, version.version, local)))
}

/// The exporters of `document` that start on this node; each one that cannot (a
/// file this node lacks) is said, with its problems, and left out.
fn exporters(document: &Document, version: u64, local: &Local) -> Exporters {
    let specs = document.exporters.as_deref().unwrap_or_default();
    let mut ready = Vec::new();
    for (n, spec) in specs.iter().enumerate() {
        let section = crate::config::section("policy.exporters", n, spec);
        let mut problems = Vec::new();
        match crate::config::exporter(&section, spec, local, &mut problems) {
            Some(exporter) => ready.push(exporter),
            None => tracing::error!(
                version,
                problems = %problems.join("; "),
                "a SIEM exporter of the cluster's policy version {version} cannot start on \
                 this node, so its feed stops while this node leads: give this node the \
                 files it names"
            ),
        }
    }
    Exporters {
        names: specs.iter().filter_map(|s| s.name.clone()).collect(),
        ready,
    }
}

fn report_uncompiled(version: &PolicyVersion, problems: &[String]) {
    tracing::error!(
        version = version.version,
        problems = %problems.join("; "),
        "the cluster's policy version {} does not compile on this node (an older \
         release?); still judging by the version before it",
        version.version
    );
}
