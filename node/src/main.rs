//! `bulwark`: the mail security gateway's one binary.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use bulwark_node::ops::remote::ApiArgs;
use bulwark_node::{cert, config, ops, serve};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bulwark", version, about = "Bulwark mail security gateway")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Run a node. Without --config: a single-node cluster with embedded defaults
    /// (data in ./bulwark-data, SMTP on 127.0.0.1:2525, API on 127.0.0.1:8080).
    Serve {
        /// Configuration file (TOML).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Create the cluster CA and per-node certificates for mutual TLS.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Check a configuration file and report every problem in it; non-zero exit if any.
    /// Warnings (a cluster's API or SMTP reachable without TLS) are printed too, and
    /// alone leave the exit status 0.
    CheckConfig {
        /// Configuration file (TOML).
        file: PathBuf,
    },
    /// Online backup of the running node FILE describes (without --config: the
    /// embedded default's, run from the directory holding bulwark-data): it writes a
    /// consistent copy of its state (every write acknowledged before the call) into DIR
    /// on its machine, reporting its progress on stderr.
    Backup {
        /// The node's configuration file (TOML): its API address and admin token.
        #[arg(long)]
        config: Option<PathBuf>,
        /// A new or empty directory on the node's machine, inside the backup directory
        /// of its config (`[backup] dir`, by default `backups` in its data directory).
        #[arg(long)]
        to: PathBuf,
    },
    /// Seed the stopped node FILE describes, whose data directory is empty, from a
    /// backup: restore every node of a new cluster from the same backup, then start them.
    /// Without --config: the embedded default's ./bulwark-data. Reports its progress
    /// on stderr.
    Restore {
        /// The node's configuration file (TOML): its id, data directory and peers.
        #[arg(long)]
        config: Option<PathBuf>,
        /// A directory written by `bulwark backup`.
        #[arg(long)]
        from: PathBuf,
    },
    /// Exit 0 if the node FILE describes is ready (answers /readyz with 200), 1 if
    /// not: a health check for containers and scripts. Without --config: the
    /// embedded default's.
    Ready {
        /// The node's configuration file (TOML).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Audit-trail tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The cluster's policy, over any node's API: read it, see what a file would
    /// change and what it would have done to recorded mail, apply it, roll back,
    /// list the changes.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The quarantine, over any node's API: list, show, release, delete. Exit 0 when
    /// all was done, 1 when some was refused, 2 when it could not be carried out.
    Quarantine {
        #[command(subcommand)]
        command: ops::quarantine::Command,
    },
    /// The delivery queue, over any node's API: list, show, hold, release, retry,
    /// delete. Exit 0 when all was done, 1 when some was refused, 2 when it could not
    /// be carried out.
    Queue {
        #[command(subcommand)]
        command: ops::queue::Command,
    },
    /// The cluster's membership, over any node's API with the admin token: status,
    /// add, promote, replace, remove. A change that would leave the voters unable to
    /// commit, or unable to survive a failure they survive now, is refused unless
    /// --force. Exit 0 when done, 1 when the cluster refused it, 2 when it could not
    /// be carried out, 3 when refused as unsafe.
    Cluster {
        #[command(subcommand)]
        command: ops::cluster::Command,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Print the current version (or an earlier one) as a `[policy]` section.
    Get {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long)]
        version: Option<u64>,
        /// The API's JSON instead, with who made it, when and why.
        #[arg(long)]
        json: bool,
    },
    /// Print what applying FILE would change; exit 0 when nothing, 1 when it would
    /// change something, 2 when it cannot tell.
    Diff {
        #[command(flatten)]
        api: ApiArgs,
        /// A policy file: TOML with a `[policy]` section (or the keys alone), or JSON.
        #[arg(long)]
        file: PathBuf,
    },
    /// Make FILE the cluster's next policy version (admin; operator for the allow
    /// and block lists only).
    Apply {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long)]
        file: PathBuf,
        /// Why: recorded with the change.
        #[arg(long)]
        reason: String,
        /// The version the file was made from; refused if the policy has changed
        /// since (default: the version current when the command starts).
        #[arg(long)]
        base_version: Option<u64>,
    },
    /// Make an earlier version's policy the next version.
    Rollback {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long)]
        to: u64,
        #[arg(long)]
        reason: String,
    },
    /// What FILE would have done to the decisions on record: how many would change
    /// action, from what to what, with examples (no rescan: decided again from what
    /// was recorded).
    Simulate {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long)]
        file: PathBuf,
        /// Decisions recorded at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Decisions recorded before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
    },
    /// Every version: who, when, from where, why, and what it changed.
    History {
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Subcommand)]
enum CertCommand {
    /// Write DIR/ca.pem and DIR/ca.key: the cluster CA.
    Ca {
        #[arg(long)]
        out: PathBuf,
    },
    /// Write DIR/nodeN.pem and DIR/nodeN.key, signed by the CA in --ca.
    Node {
        /// Directory holding ca.pem and ca.key.
        #[arg(long)]
        ca: PathBuf,
        /// Node id the certificate identifies.
        #[arg(long)]
        id: u64,
        /// Host names and IP addresses peers use to reach this node, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        san: Vec<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// The CA and every node's certificate in DIR, made once: files already there are
    /// kept, so a container's one-shot can run it at every start.
    Cluster {
        #[arg(long)]
        out: PathBuf,
        /// A node: its id, `=`, then the names and addresses peers reach it by,
        /// comma-separated (`1=node1,10.0.0.1`). Repeat for each node.
        #[arg(long = "node", value_name = "ID=NAMES", required = true)]
        nodes: Vec<String>,
        /// Give the node certificates and keys (and DIR) to this user and group, the
        /// one the nodes run as; the CA's key stays the caller's.
        #[arg(long, value_name = "UID:GID")]
        owner: Option<String>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the event hash chain of a stopped node or a backup, or an evidence bundle,
    /// offline. Prints a JSON report; exit 0 if the chain is intact, 1 if not, 2 if it
    /// cannot be read.
    Verify {
        /// The data directory of a stopped node, or a backup.
        #[arg(long, required_unless_present = "bundle", conflicts_with = "bundle")]
        data_dir: Option<PathBuf>,
        /// A file written by `bulwark audit bundle`.
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// A key the chain's checkpoints may be signed with, as the report's `signers`
        /// name it (`NODE:HEX`); repeatable. Given any, a checkpoint signed by another
        /// key fails the check.
        #[arg(long = "trusted-signer", value_name = "NODE:HEX")]
        trusted_signers: Vec<String>,
    },
    /// Fetch the events of a time range or of one message, with the signed checkpoint
    /// and the keys that cover them, into a file an auditor checks anywhere with
    /// `bulwark audit verify --bundle`.
    Bundle {
        /// The node's API and a token of a role that reads events (auditor, siem, ...).
        #[command(flatten)]
        api: ApiArgs,
        /// Events recorded at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Events recorded before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// Every event about this message id.
        #[arg(long)]
        message: Option<String>,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Commands::Serve { config } => serve::run(config.as_deref()),
        Commands::Cert { command } => match command {
            CertCommand::Ca { out } => cert::make_ca(&out),
            CertCommand::Node { ca, id, san, out } => cert::make_node(&ca, id, &san, &out),
            CertCommand::Cluster { out, nodes, owner } => {
                cert::make_cluster(&out, &nodes, owner.as_deref())
            }
        },
        Commands::CheckConfig { file } => return check_config(&file),
        Commands::Backup { config, to } => ops::backup(config.as_deref(), &to),
        Commands::Restore { config, from } => ops::restore(config.as_deref(), &from),
        Commands::Ready { config } => match ops::ready(config.as_deref()) {
            Ok(true) => return ExitCode::SUCCESS,
            Ok(false) => return ExitCode::FAILURE,
            Err(e) => Err(e),
        },
        Commands::Audit {
            command:
                AuditCommand::Verify {
                    data_dir,
                    bundle,
                    trusted_signers,
                },
        } => {
            return match (data_dir, bundle) {
                (_, Some(bundle)) => verify_bundle(&bundle, &trusted_signers),
                (Some(data_dir), None) => audit_verify(&data_dir, &trusted_signers),
                (None, None) => unreachable!("clap requires one of them"),
            }
        }
        Commands::Audit {
            command:
                AuditCommand::Bundle {
                    api,
                    since,
                    until,
                    message,
                    out,
                },
        } => ops::audit_bundle(&ops::BundleRequest {
            api: &api,
            since: since.as_deref(),
            until: until.as_deref(),
            message: message.as_deref(),
            out: &out,
        }),
        Commands::Policy { command } => match command {
            PolicyCommand::Get { api, version, json } => ops::policy::get(&api, version, json),
            PolicyCommand::Diff { api, file } => {
                return match ops::policy::diff(&api, &file) {
                    Ok(true) => ExitCode::FAILURE,
                    Ok(false) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("bulwark: {e:#}");
                        ExitCode::from(2)
                    }
                }
            }
            PolicyCommand::Apply {
                api,
                file,
                reason,
                base_version,
            } => ops::policy::apply(&api, &file, &reason, base_version),
            PolicyCommand::Rollback { api, to, reason } => ops::policy::rollback(&api, to, &reason),
            PolicyCommand::History { api } => ops::policy::history(&api),
            PolicyCommand::Simulate {
                api,
                file,
                since,
                until,
            } => ops::policy::simulate(&api, &file, since.as_deref(), until.as_deref()),
        },
        Commands::Quarantine { command } => return admin_exit(ops::quarantine::run(&command)),
        Commands::Queue { command } => return admin_exit(ops::queue::run(&command)),
        Commands::Cluster { command } => return cluster_exit(ops::cluster::run(&command)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bulwark: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The exit status of a quarantine or queue command: 0 done, 1 some refused or
/// failed, 2 (said on stderr) when it could not be carried out.
fn admin_exit(result: anyhow::Result<ops::admin::Outcome>) -> ExitCode {
    match result {
        Ok(ops::admin::Outcome::Done) => ExitCode::SUCCESS,
        Ok(ops::admin::Outcome::SomeRefused) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bulwark: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The exit status of a cluster command: 0 done, 1 refused by the cluster, 2 (said
/// on stderr) when it could not be carried out, 3 refused as unsafe.
fn cluster_exit(result: anyhow::Result<ops::cluster::Outcome>) -> ExitCode {
    match result {
        Ok(ops::cluster::Outcome::Done) => ExitCode::SUCCESS,
        Ok(ops::cluster::Outcome::Refused) => ExitCode::FAILURE,
        Ok(ops::cluster::Outcome::Unsafe) => ExitCode::from(3),
        Err(e) => {
            eprintln!("bulwark: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `bulwark check-config FILE`: every problem, then every warning (`warning: ` in
/// front); a warning alone still exits 0.
fn check_config(file: &std::path::Path) -> ExitCode {
    let (problems, warnings) = match config::Config::load(file) {
        Ok(config) => {
            let mut warnings = config.warnings();
            warnings.extend(config.ports_in_use());
            (config.preflight(), warnings)
        }
        Err(problems) => (problems, Vec::new()),
    };
    for problem in &problems {
        println!("{problem}");
    }
    for warning in &warnings {
        println!("warning: {warning}");
    }
    if !problems.is_empty() {
        eprintln!("{}: {} problem(s)", file.display(), problems.len());
        return ExitCode::FAILURE;
    }
    match warnings.len() {
        0 => println!("{}: ok", file.display()),
        n => println!("{}: ok, with {n} warning(s)", file.display()),
    }
    ExitCode::SUCCESS
}

/// `bulwark audit verify --bundle FILE`: the bundle checked on its own.
fn verify_bundle(file: &std::path::Path, trusted: &[String]) -> ExitCode {
    let bundle = std::fs::read(file)
        .map_err(|e| e.to_string())
        .and_then(|bytes| {
            serde_json::from_slice::<bulwark_storage::bundle::Bundle>(&bytes)
                .map_err(|e| format!("not a bundle: {e}"))
        });
    match bundle {
        Ok(bundle) => {
            let report = bulwark_storage::bundle::verify(&bundle, trusted);
            verdict(&report, report.ok)
        }
        Err(e) => unreadable(file, e),
    }
}

/// Prints a verifier's report as JSON; exit 0 if it holds, 1 if not.
fn verdict(report: &impl serde::Serialize, ok: bool) -> ExitCode {
    println!(
        "{}",
        serde_json::to_string(report).expect("report serialises")
    );
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// What a verifier could not read: exit 2.
fn unreadable(path: &std::path::Path, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("bulwark: cannot read {}: {e}", path.display());
    ExitCode::from(2)
}

fn audit_verify(data_dir: &std::path::Path, trusted: &[String]) -> ExitCode {
    let report = bulwark_storage::StateDir::open_offline(data_dir).and_then(|state| state.verify());
    match report {
        Ok(mut report) => {
            let unknown: Vec<&String> = report
                .signers
                .iter()
                .filter(|signer| !trusted.is_empty() && !trusted.contains(signer))
                .collect();
            if report.ok && !trusted.is_empty() && report.checkpoints == 0 {
                report.ok = false;
                report.problem =
                    Some("no signed checkpoint to check the trusted signers against".into());
            }
            if report.ok && !unknown.is_empty() {
                report.ok = false;
                report.problem = Some(format!(
                    "checkpoints signed by keys not trusted: {}",
                    unknown
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            verdict(&report, report.ok)
        }
        Err(e) => unreadable(data_dir, e),
    }
}
