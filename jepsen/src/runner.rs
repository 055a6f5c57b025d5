//! One test run: start the cluster, run a workload's clients while nemeses come and go, stop
//! the clients, heal everything, run the workload's final phase, check the history and write
//! the results folder.
//!
//! Harness failures (the binary is missing, the cluster never served) are errors of the run;
//! only the checker's verdict is a test outcome.

use std::path::PathBuf;
use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::checker::{self, Verdict};
use crate::cluster::{Cluster, ClusterConfig, ClusterError};
use crate::history::Recorder;
use crate::lazyfs::LazyFs;
use crate::nemesis::{self, Report, Status};
use crate::report::{self, ReportError};
use crate::security::Security;
use crate::workload::{self, Ctx, Fault};

/// Errors of the harness.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error("harness i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad test configuration: {0}")]
    Config(String),
}

/// What to run.
#[derive(Clone, Debug)]
pub struct TestConfig {
    pub workload: String,
    pub nemeses: Vec<String>,
    pub time_limit: Duration,
    pub nodes: usize,
    /// Offered operations per second over all clients.
    pub rate: f64,
    pub clients: usize,
    pub cairn_bin: PathBuf,
    /// The results folder (created).
    pub results: PathBuf,
    pub fault: Option<Fault>,
    /// How long each fault stays in place; the cluster gets half as long to recover between.
    pub fault_duration: Duration,
    /// Extra flags for every member.
    pub extra_args: Vec<String>,
    /// Plaintext, mutual TLS, or mutual TLS with authentication on.
    pub security: Security,
}

impl TestConfig {
    /// Defaults for a workload: 3 nodes, 10 clients, 100 ops/s, faults of 4 s.
    pub fn new(workload: &str, cairn_bin: PathBuf, results: PathBuf) -> TestConfig {
        TestConfig {
            workload: workload.to_string(),
            nemeses: Vec::new(),
            time_limit: Duration::from_secs(30),
            nodes: 3,
            rate: 100.0,
            clients: 10,
            cairn_bin,
            results,
            fault: None,
            fault_duration: Duration::from_secs(4),
            extra_args: Vec::new(),
            security: Security::Plain,
        }
    }
}

/// What a run produced.
#[derive(Debug)]
pub struct TestOutcome {
    pub verdict: Verdict,
    pub nemesis: Vec<Report>,
    pub results: PathBuf,
    pub operations: usize,
}

impl TestOutcome {
    /// How many times the named fault was actually installed.
    pub fn installed(&self, name: &str) -> usize {
        self.nemesis
            .iter()
            .filter(|r| r.nemesis == name && r.status == Status::Installed)
            .count()
    }
}

/// Runs one test.
pub async fn run(cfg: TestConfig) -> Result<TestOutcome, HarnessError> {
    if !workload::NAMES.contains(&cfg.workload.as_str()) {
        return Err(HarnessError::Config(format!(
            "unknown workload {:?}",
            cfg.workload
        )));
    }
    if let Some(bad) = cfg
        .nemeses
        .iter()
        .find(|n| !nemesis::NAMES.contains(&n.as_str()))
    {
        return Err(HarnessError::Config(format!("unknown nemesis {bad:?}")));
    }
    if std::fs::read_dir(&cfg.results).is_ok_and(|mut d| d.next().is_some()) {
        // Old data dirs would make members keep identities from another cluster.
        return Err(HarnessError::Config(format!(
            "results folder {} is not empty",
            cfg.results.display()
        )));
    }
    std::fs::create_dir_all(&cfg.results)?;
    let mut notes = Vec::new();
    let power = if cfg.nemeses.iter().any(|n| n == "power") {
        match LazyFs::mount(&cfg.results.join("disk"), &cfg.results.join("data")) {
            Ok(fs) => Some(fs),
            Err(why) => {
                let msg = format!("power nemesis will skip: {why}");
                eprintln!("{msg}");
                notes.push(msg);
                None
            }
        }
    } else {
        None
    };
    let mut cluster = Cluster::start(ClusterConfig {
        nodes: cfg.nodes,
        cairn_bin: cfg.cairn_bin.clone(),
        dir: cfg.results.clone(),
        data_root: power.as_ref().map(|p| p.mountpoint().to_path_buf()),
        extra_args: cfg.extra_args.clone(),
        security: cfg.security,
    })
    .await?;
    let all: Vec<usize> = (0..cfg.nodes).collect();
    cluster.wait_serving(&all, Duration::from_secs(60)).await?;
    cluster.enable_auth().await?;

    let recorder = Recorder::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let ctx = Ctx {
        recorder: recorder.clone(),
        endpoints: cluster.endpoints(),
        options: cluster.options().clone(),
        clients: cfg.clients,
        rate: cfg.rate,
        timeout: Duration::from_secs(2),
        fault: cfg.fault,
        stop: stop_rx,
        counter: Arc::new(AtomicI64::new(0)),
        keys: Arc::default(),
    };
    let name = cfg.workload.clone();
    let clients = tokio::spawn({
        let ctx = ctx.clone();
        async move { workload::run(&name, ctx).await }
    });

    let start = recorder.start();
    let deadline = Instant::from_std(start) + cfg.time_limit;
    let mut reports: Vec<Report> = Vec::new();
    let at = || start.elapsed().as_secs_f64();
    let quiet = cfg.fault_duration / 2;
    let mut k = 0;
    while Instant::now() < deadline {
        tokio::time::sleep_until((Instant::now() + quiet).min(deadline)).await;
        if cfg.nemeses.is_empty() || Instant::now() >= deadline {
            continue;
        }
        let n = cfg.nemeses[k % cfg.nemeses.len()].clone();
        k += 1;
        let (status, detail, undo) = nemesis::install(&n, &mut cluster, power.as_ref()).await?;
        tracing::info!(nemesis = %n, ?status, %detail, "nemesis");
        reports.push(Report {
            nemesis: n.clone(),
            status,
            detail,
            time: at(),
        });
        tokio::time::sleep_until((Instant::now() + cfg.fault_duration).min(deadline)).await;
        let (status, detail) = nemesis::heal(&mut cluster, undo).await?;
        tracing::info!(nemesis = %n, ?status, %detail, "nemesis healed");
        reports.push(Report {
            nemesis: n,
            status,
            detail,
            time: at(),
        });
    }
    let _ = stop_tx.send(true);
    // Every client call is bounded, so this only guards against a harness bug.
    let abort = clients.abort_handle();
    if tokio::time::timeout(Duration::from_secs(60), clients)
        .await
        .is_err()
    {
        abort.abort();
        notes.push("clients did not stop within 60 s and were aborted".into());
    }

    // Heal everything, then let the cluster settle before the final phase.
    cluster.net.heal();
    cluster.revive_all()?;
    let running: Vec<usize> = all
        .iter()
        .copied()
        .filter(|i| cluster.is_running(*i))
        .collect();
    if let Err(e) = cluster
        .wait_serving(&running, Duration::from_secs(60))
        .await
    {
        // Not a harness failure: a cluster that does not recover shows in the final reads.
        notes.push(format!("after healing: {e}"));
    }
    if tokio::time::timeout(
        Duration::from_secs(180),
        workload::finish(&cfg.workload, ctx),
    )
    .await
    .is_err()
    {
        notes.push("final phase did not finish within 180 s".into());
    }

    let history = recorder.history();
    let mut verdict = checker::check(&history, &cfg.workload);
    for n in &cfg.nemeses {
        let installed = reports
            .iter()
            .filter(|r| &r.nemesis == n && r.status == Status::Installed)
            .count();
        verdict.stat(&format!("nemesis-{n}-installed"), installed);
    }
    let run = json!({
        "workload": cfg.workload,
        "nemeses": cfg.nemeses,
        "time_limit_s": cfg.time_limit.as_secs_f64(),
        "nodes": cfg.nodes,
        "rate": cfg.rate,
        "clients": cfg.clients,
        "fault": cfg.fault.map(|f| format!("{f:?}")),
        "nemesis": reports,
        "notes": notes,
        "proxied_connections": cluster.net.connections(),
        "unidentified_connections": cluster.net.unidentified(),
    });
    report::write(&cfg.results, &history, &verdict, &run)?;
    drop(cluster);
    drop(power);
    Ok(TestOutcome {
        verdict,
        nemesis: reports,
        results: cfg.results,
        operations: history.ops.len(),
    })
}
