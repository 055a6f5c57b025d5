//! `cairn-orchestrator scheduler` and `cairn-orchestrator simulate-nodes`: API clients configured by
//! a kubeconfig, as kube-scheduler and kwok are.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
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
    /// The kubeconfig to reach the API server with (required, except for an agent that joins:
    /// its kubeconfig is written there, by default in its --root-dir).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Requests per second to the API server, on average (0: unlimited).
    #[arg(long)]
    kube_api_qps: Option<f64>,
    /// Requests allowed at once above that rate.
    #[arg(long)]
    kube_api_burst: Option<u32>,
}

impl ClientArgs {
    fn kubeconfig(&self) -> Result<&PathBuf> {
        self.kubeconfig.as_ref().context("--kubeconfig is required")
    }

    /// The CA certificates (DER) the kubeconfig trusts for the API server: the cluster's CA.
    async fn cluster_ca(&self) -> Result<Vec<Vec<u8>>> {
        let kc = kube::config::Kubeconfig::read_from(self.kubeconfig()?)?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        Ok(cfg.root_cert.unwrap_or_default())
    }

    /// A client throttled as the flags say, or by the component's defaults.
    pub(super) async fn client(&self, qps: f64, burst: u32) -> Result<kube::Client> {
        let throttle = Throttle {
            qps: self.kube_api_qps.unwrap_or(qps),
            burst: self.kube_api_burst.unwrap_or(burst),
        };
        Ok(client::from_kubeconfig(self.kubeconfig()?, throttle).await?)
    }

    /// A client per part, each throttled as the flags say, or by the component's defaults.
    pub(super) async fn clients(&self, qps: f64, burst: u32) -> Result<client::Clients> {
        let throttle = Throttle {
            qps: self.kube_api_qps.unwrap_or(qps),
            burst: self.kube_api_burst.unwrap_or(burst),
        };
        Ok(client::Clients::from_kubeconfig(self.kubeconfig()?, throttle).await?)
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
    /// The range nodes' pod CIDRs are cut from; unset: nodes get no podCIDR.
    #[arg(long)]
    cluster_cidr: Option<String>,
    /// The prefix length of each node's pod CIDR.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// The CA bundle (PEM) published in every namespace's `kube-root-ca.crt` ConfigMap; default:
    /// the CA the kubeconfig trusts.
    #[arg(long)]
    root_ca_file: Option<PathBuf>,
    #[command(flatten)]
    leader: LeaderArgs,
}

pub async fn controller_manager(args: ControllerManagerArgs) -> Result<ExitCode> {
    // kube-controller-manager's defaults.
    let (qps, burst) = (20.0, 30);
    let client = args.api.clients(qps, burst).await?;
    let root_ca = match &args.root_ca_file {
        Some(f) => std::fs::read_to_string(f).with_context(|| format!("read {}", f.display()))?,
        None => args
            .api
            .cluster_ca()
            .await?
            .iter()
            .map(|der| pem_certificate(der))
            .collect(),
    };
    let ccfg = controllers::ControllerConfig {
        node_monitor_grace_period: args.node_monitor_grace_period,
        max_endpoints_per_slice: args.max_endpoints_per_slice,
        cluster_cidr: args.cluster_cidr,
        node_cidr_mask_size: args.node_cidr_mask_size,
        root_ca: Some(root_ca).filter(|pem| !pem.is_empty()),
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

/// A DER certificate as PEM.
fn pem_certificate(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
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
    #[command(flatten)]
    join: JoinArgs,
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
    /// Bridge the pods attach to, addressed from the Node's podCIDR (which the agent waits for);
    /// unset: pods get only a loopback interface.
    #[arg(long)]
    pod_bridge: Option<String>,
    /// Nameservers of ClusterFirst pods (comma-separated); unset: they resolve as the host does.
    #[arg(long, value_delimiter = ',')]
    cluster_dns: Vec<std::net::IpAddr>,
    /// The cluster's DNS domain, searched by ClusterFirst pods.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// The resolver file Default pods copy (empty: none).
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// Percent of disk usage at which unused images are removed (100: never).
    #[arg(long, default_value_t = 85, value_parser = clap::value_parser!(u8).range(0..=100))]
    image_gc_high_threshold: u8,
    /// Percent of disk usage image garbage collection frees down to.
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u8).range(0..=100))]
    image_gc_low_threshold: u8,
}

/// `kubeadm join`'s discovery flags.
#[derive(clap::Args)]
struct JoinArgs {
    /// Join the cluster whose API server is at this URL (https://host:port), with --token.
    #[arg(long, requires = "token")]
    join: Option<String>,
    /// The bootstrap token (`<id>.<secret>`) from `cairn-orchestrator token create`.
    #[arg(long, requires = "join")]
    token: Option<String>,
    /// The CA public key pin(s) to trust: `sha256:<hex>`.
    #[arg(long)]
    discovery_token_ca_cert_hash: Vec<String>,
    /// Trust whatever CA the cluster-info ConfigMap signed with the token names.
    #[arg(long)]
    discovery_token_unsafe_skip_ca_verification: bool,
}

/// With --join: discovers and checks the cluster, writes the agent's kubeconfig and points
/// `--kubeconfig` at it.
async fn join(args: &mut AgentArgs) -> Result<()> {
    let (Some(url), Some(token)) = (&args.join.join, &args.join.token) else {
        return Ok(());
    };
    let token = cairn_orchestrator::bootstrap::Token::parse(token)?;
    let found = cairn_orchestrator::agent::join::discover(
        url,
        &token,
        &args.join.discovery_token_ca_cert_hash,
        args.join.discovery_token_unsafe_skip_ca_verification,
    )
    .await?;
    let path = args
        .api
        .kubeconfig
        .clone()
        .unwrap_or_else(|| args.root_dir.join("kubeconfig"));
    cairn_orchestrator::agent::join::write_kubeconfig(&path, &found, &token)?;
    tracing::info!(server = %found.server, kubeconfig = %path.display(), "joined the cluster");
    args.api.kubeconfig = Some(path);
    Ok(())
}

pub async fn agent(mut args: AgentArgs) -> Result<ExitCode> {
    if args.image_gc_low_threshold > args.image_gc_high_threshold {
        bail!(
            "--image-gc-low-threshold ({}) must not be greater than --image-gc-high-threshold ({})",
            args.image_gc_low_threshold,
            args.image_gc_high_threshold
        );
    }
    join(&mut args).await?;
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
    cfg.network = args.pod_bridge;
    cfg.dns = cairn_orchestrator::agent::dns::DnsSettings {
        cluster_dns: args.cluster_dns,
        cluster_domain: args.cluster_domain,
        resolv_conf: args.resolv_conf,
    };
    cfg.image_gc.high = args.image_gc_high_threshold;
    cfg.image_gc.low = args.image_gc_low_threshold;
    cairn_orchestrator::agent::run(client, cfg, super::wait_for_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
