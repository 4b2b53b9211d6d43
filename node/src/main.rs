//! `bulwark`: the mail security gateway's one binary.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

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
    CheckConfig {
        /// Configuration file (TOML).
        file: PathBuf,
    },
    /// Online backup of the running node FILE describes: it writes a consistent copy of
    /// its state (every write acknowledged before the call) into DIR on its machine.
    Backup {
        /// The node's configuration file (TOML): its API address and admin token.
        #[arg(long)]
        config: PathBuf,
        /// A new or empty directory on the node's machine, inside the backup directory
        /// of its config (`[backup] dir`, by default `backups` in its data directory).
        #[arg(long)]
        to: PathBuf,
    },
    /// Seed the stopped node FILE describes, whose data directory is empty, from a
    /// backup: restore every node of a new cluster from the same backup, then start them.
    Restore {
        /// The node's configuration file (TOML): its id, data directory and peers.
        #[arg(long)]
        config: PathBuf,
        /// A directory written by `bulwark backup`.
        #[arg(long)]
        from: PathBuf,
    },
    /// Exit 0 if the node FILE describes is ready (answers /readyz with 200), 1 if
    /// not: a health check for containers and scripts.
    Ready {
        /// The node's configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Audit-trail tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
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
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the event hash chain of a stopped node or a backup, offline. Prints a
    /// JSON report; exit 0 if the chain is intact, 1 if not, 2 if it cannot be read.
    Verify {
        #[arg(long)]
        data_dir: PathBuf,
        /// A key the chain's checkpoints may be signed with, as the report's `signers`
        /// name it (`NODE:HEX`); repeatable. Given any, a checkpoint signed by another
        /// key fails the check.
        #[arg(long = "trusted-signer", value_name = "NODE:HEX")]
        trusted_signers: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Commands::Serve { config } => serve::run(config.as_deref()),
        Commands::Cert { command } => match command {
            CertCommand::Ca { out } => cert::make_ca(&out),
            CertCommand::Node { ca, id, san, out } => cert::make_node(&ca, id, &san, &out),
        },
        Commands::CheckConfig { file } => return check_config(&file),
        Commands::Backup { config, to } => ops::backup(&config, &to),
        Commands::Restore { config, from } => ops::restore(&config, &from),
        Commands::Ready { config } => match ops::ready(&config) {
            Ok(true) => return ExitCode::SUCCESS,
            Ok(false) => return ExitCode::FAILURE,
            Err(e) => Err(e),
        },
        Commands::Audit {
            command:
                AuditCommand::Verify {
                    data_dir,
                    trusted_signers,
                },
        } => return audit_verify(&data_dir, &trusted_signers),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bulwark: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(file: &std::path::Path) -> ExitCode {
    match config::Config::load(file) {
        Ok(_) => {
            println!("{}: ok", file.display());
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for problem in &problems {
                println!("{problem}");
            }
            eprintln!("{}: {} problem(s)", file.display(), problems.len());
            ExitCode::FAILURE
        }
    }
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
            println!(
                "{}",
                serde_json::to_string(&report).expect("report serialises")
            );
            if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("bulwark: cannot read {}: {e}", data_dir.display());
            ExitCode::from(2)
        }
    }
}
