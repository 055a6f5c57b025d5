//! `cairn-orchestrator scheduler` and `cairn-orchestrator simulate-nodes`: API clients configured by
//! a kubeconfig, as kube-scheduler and kwok are.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use cairn_orchestrator::client::{self, Throttle};
use cairn_orchestrator::controllers;
use cairn_orchestrator::election::{self, ElectionConfig};
use cairn_orchestrator::scheduler;
use cairn_orchestrator::simulate::{SimConfig, SimulatedNodes};

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("invalid duration {s:?}")),
    }
}

/// The API connection of a control-plane component (client-go's flags).
#[derive(clap::Args)]
pub struct ClientArgs {
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Requests per second to the API server, on average (0: unlimited).
    #[arg(long)]
    kube_api_qps: Option<f64>,
    /// Requests allowed at once above that rate.
    #[arg(long)]
    kube_api_burst: Option<u32>,
}

impl ClientArgs {
    /// The CA certificates (DER) the kubeconfig trusts for the API server: the cluster's CA.
    async fn cluster_ca(&self) -> Result<Vec<Vec<u8>>> {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        Ok(cfg.root_cert.unwrap_or_default())
    }

    /// A client throttled as the flags say, or by the component's defaults.
    pub(super) async fn client(&self, qps: f64, burst: u32) -> Result<kube::Client> {
        let throttle = Throttle {
            qps: self.kube_api_qps.unwrap_or(qps),
            burst: self.kube_api_burst.unwrap_or(burst),
        };
        Ok(client::from_kubeconfig(&self.kubeconfig, throttle).await?)
    }
}

#[derive(clap::Args)]
pub struct LeaderArgs {
    /// Run only while holding the component's Lease in kube-system.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    leader_elect_lease_duration: Duration,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    leader_elect_renew_deadline: Duration,
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    leader_elect_retry_period: Duration,
}

#[derive(clap::Args)]
pub struct SchedulerArgs {
    #[command(flatten)]
    api: ClientArgs,
    #[command(flatten)]
    leader: LeaderArgs,
}

fn identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}_{}", host.trim(), uuid::Uuid::new_v4())
}

pub async fn scheduler(args: SchedulerArgs) -> Result<ExitCode> {
    // kube-scheduler's defaults.
    let (qps, burst) = (50.0, 100);
    let client = args.api.client(qps, burst).await?;
    if !args.leader.leader_elect {
        scheduler::run(client, std::future::pending()).await?;
        return Ok(ExitCode::SUCCESS);
    }
    // The lease is renewed through a client of its own, so a busy component never misses a renewal
    // waiting behind its own calls.
    let election_client = args.api.client(qps, burst).await?;
    let mut cfg = ElectionConfig::new("kube-scheduler", &identity());
    cfg.lease_duration = args.leader.leader_elect_lease_duration;
    cfg.renew_deadline = args.leader.leader_elect_renew_deadline;
    cfg.retry_period = args.leader.leader_elect_retry_period;
    let mut leadership = election::acquire(election_client, cfg).await?;
    scheduler::run(client, async move { leadership.lost().await }).await?;
    // As kube-scheduler does: a replica that lost its lease exits, and is restarted to compete again.
    bail!("leaderelection lost")
}

#[derive(clap::Args)]
pub struct ControllerManagerArgs {
    #[command(flatten)]
    api: ClientArgs,
    /// How long a node may go without renewing its Lease before it is marked unreachable.
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    node_monitor_grace_period: Duration,
    /// The most endpoints one EndpointSlice holds.
    #[arg(long, default_value_t = 100)]
    max_endpoints_per_slice: usize,
    #[command(flatten)]
    leader: LeaderArgs,
}

pub async fn controller_manager(args: ControllerManagerArgs) -> Result<ExitCode> {
    // kube-controller-manager's defaults.
    let (qps, burst) = (20.0, 30);
    let client = args.api.client(qps, burst).await?;
    let ccfg = controllers::ControllerConfig {
        node_monitor_grace_period: args.node_monitor_grace_period,
        max_endpoints_per_slice: args.max_endpoints_per_slice,
    };
    if !args.leader.leader_elect {
        controllers::run(client, ccfg, std::future::pending()).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let election_client = args.api.client(qps, burst).await?;
    let mut cfg = ElectionConfig::new("kube-controller-manager", &identity());
    cfg.lease_duration = args.leader.leader_elect_lease_duration;
    cfg.renew_deadline = args.leader.leader_elect_renew_deadline;
    cfg.retry_period = args.leader.leader_elect_retry_period;
    let mut leadership = election::acquire(election_client, cfg).await?;
    controllers::run(client, ccfg, async move { leadership.lost().await }).await?;
    bail!("leaderelection lost")
}

#[derive(clap::Args)]
pub struct SimulateArgs {
    #[command(flatten)]
    api: ClientArgs,
    #[arg(long, default_value_t = 3)]
    count: usize,
    #[arg(long, default_value = "sim-")]
    prefix: String,
    #[arg(long, default_value = "4")]
    cpu: String,
    #[arg(long, default_value = "16Gi")]
    memory: String,
    #[arg(long, default_value = "110")]
    pods: String,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    heartbeat: Duration,
}

pub async fn simulate(args: SimulateArgs) -> Result<ExitCode> {
    // A fleet of kubelets, each with its own connection: not throttled unless asked.
    let client = args.api.client(0.0, 0).await?;
    let nodes = SimulatedNodes::start(
        client,
        SimConfig {
            prefix: args.prefix,
            count: args.count,
            cpu: args.cpu,
            memory: args.memory,
            pods: args.pods,
            heartbeat: args.heartbeat,
        },
    )
    .await?;
    tracing::info!(nodes = nodes.names().len(), "simulated nodes registered");
    super::wait_for_signal().await;
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct AgentArgs {
    #[command(flatten)]
    api: ClientArgs,
    /// The Node's name (default: the hostname).
    #[arg(long)]
    node_name: Option<String>,
    /// The Node's InternalIP, shown as its pods' hostIP.
    #[arg(long, default_value = "127.0.0.1")]
    node_ip: String,
    /// Directory holding pod state, logs and volumes.
    #[arg(long, default_value = "/var/lib/cairn/agent")]
    root_dir: PathBuf,
    /// cgroup directory (under /sys/fs/cgroup) holding the pods' cgroups.
    #[arg(long, default_value = "cairn")]
    cgroup_parent: String,
    /// Port for the API server's log requests; only the cluster CA's client certificates are served.
    #[arg(long, default_value_t = 10250)]
    port: u16,
}

pub async fn agent(args: AgentArgs) -> Result<ExitCode> {
    // The kubelet's defaults.
    let client = args.api.client(50.0, 100).await?;
    let name = match args.node_name {
        Some(n) => n,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")?
            .trim()
            .to_lowercase(),
    };
    let helper = std::env::current_exe()?;
    let mut rcfg = cairn_orchestrator::runtime::RuntimeConfig::new(&args.root_dir, helper);
    rcfg.cgroup_parent = args.cgroup_parent;
    let mut cfg = cairn_orchestrator::agent::AgentConfig::new(name, rcfg);
    cfg.address = args.node_ip;
    cfg.port = args.port;
    cfg.client_ca = args.api.cluster_ca().await?;
    cairn_orchestrator::agent::run(client, cfg, super::wait_for_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
