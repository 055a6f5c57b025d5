//! `cairn-jepsen`: run a fault-injection test against real `cairn` processes, or check a
//! recorded history. Exit code 0 only for a valid verdict.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use cairn_jepsen::checker;
use cairn_jepsen::history::History;
use cairn_jepsen::runner::{self, TestConfig};
use cairn_jepsen::security::Security;
use cairn_jepsen::workload::Fault;

#[derive(Parser)]
#[command(
    name = "cairn-jepsen",
    about = "Fault-injection and correctness tests for Cairn"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a workload against a fresh cluster while nemeses inject faults.
    Test {
        /// register, append, set, watch or lease.
        #[arg(long)]
        workload: String,
        /// Comma-separated: kill, pause, partition, slow, lossy, membership, power.
        #[arg(long, value_delimiter = ',')]
        nemesis: Vec<String>,
        /// Seconds of workload.
        #[arg(long, default_value_t = 60)]
        time_limit: u64,
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Offered operations per second over all clients.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        #[arg(long, default_value_t = 10)]
        clients: usize,
        /// Seconds each fault stays in place.
        #[arg(long, default_value_t = 5)]
        fault_duration: u64,
        /// The `cairn` binary (default: next to this one).
        #[arg(long)]
        cairn_bin: Option<PathBuf>,
        /// The results folder (default: results/<workload>-<unix time>).
        #[arg(long)]
        results: Option<PathBuf>,
        /// Make Cairn look wrong on purpose: `stale-reads` serves register reads with
        /// serializable=true from whatever member a client is bound to.
        #[arg(long)]
        fault: Option<String>,
        /// Passed to every member: a small count makes members snapshot and purge their logs
        /// often, so lagging or re-added members catch up by snapshot installs under the faults.
        #[arg(long)]
        snapshot_count: Option<u64>,
        /// `plain`, `tls` (mutual TLS on client and peer ports, certificates made for the run) or
        /// `auth` (TLS, and authentication on: the workloads run as a user with a role).
        #[arg(long, default_value = "plain")]
        security: Security,
    },
    /// Checks a recorded history (JSON lines).
    Check {
        history: PathBuf,
        /// The workload that produced it (default: guessed from its operations).
        #[arg(long)]
        workload: Option<String>,
        /// Also write verdict and timeline into this folder.
        #[arg(long)]
        results: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "cairn_jepsen=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match real_main() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<bool> {
    match Cli::parse().command {
        Command::Test {
            workload,
            nemesis,
            time_limit,
            nodes,
            rate,
            clients,
            fault_duration,
            cairn_bin,
            results,
            fault,
            snapshot_count,
            security,
        } => {
            let cairn_bin = match cairn_bin {
                Some(p) => p,
                None => std::env::current_exe()?
                    .parent()
                    .context("no parent dir")?
                    .join("cairn"),
            };
            let results = results.unwrap_or_else(|| {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                PathBuf::from("results").join(format!("{workload}-{secs}"))
            });
            let fault = match fault.as_deref() {
                None => None,
                Some("stale-reads") => Some(Fault::StaleReads),
                Some(other) => bail!("unknown fault {other:?}"),
            };
            let mut cfg = TestConfig::new(&workload, cairn_bin, results);
            cfg.nemeses = nemesis.into_iter().filter(|n| !n.is_empty()).collect();
            cfg.time_limit = Duration::from_secs(time_limit);
            cfg.nodes = nodes;
            cfg.rate = rate;
            cfg.clients = clients;
            cfg.fault = fault;
            cfg.fault_duration = Duration::from_secs(fault_duration);
            cfg.security = security;
            if let Some(n) = snapshot_count {
                cfg.extra_args = vec!["--snapshot-count".into(), n.to_string()];
            }
            let rt = tokio::runtime::Runtime::new()?;
            let outcome = rt.block_on(runner::run(cfg))?;
            println!("{}", serde_json::to_string_pretty(&outcome.verdict)?);
            for r in &outcome.nemesis {
                println!(
                    "{:8.3}s {:<11} {:?} {}",
                    r.time, r.nemesis, r.status, r.detail
                );
            }
            println!(
                "{} operations; results in {}; verdict: {}",
                outcome.operations,
                outcome.results.display(),
                if outcome.verdict.valid {
                    "valid"
                } else {
                    "INVALID"
                }
            );
            Ok(outcome.verdict.valid)
        }
        Command::Check {
            history,
            workload,
            results,
        } => {
            let h = History::read(&history)?;
            let workload = match workload {
                Some(w) => w,
                None => checker::workload_of(&h)
                    .context("cannot tell the workload; pass --workload")?
                    .to_string(),
            };
            let verdict = checker::check(&h, &workload);
            if let Some(dir) = results {
                cairn_jepsen::report::write(&dir, &h, &verdict, &serde_json::Value::Null)?;
            }
            println!("{}", serde_json::to_string_pretty(&verdict)?);
            Ok(verdict.valid)
        }
    }
}
