//! Command line: one subcommand per component (`up`, `apiserver`, `scheduler`,
//! `controller-manager`, `agent`, `simulate-nodes`), `token` for joining nodes,
//! `image import|ls|rm|pull` for a node's images, and `runtime run|ps|logs|exec|stop|rm` for the
//! bundled runtime alone.

mod apiserver;
mod control;
mod dns;
mod image;
mod proxy;
mod token;
mod up;

use anyhow::{bail, Context, Result};
use cairn_orchestrator::runtime::{
    ConfigMaps, ContainerState, NetworkConfig, Pod, Runtime, RuntimeConfig,
};
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "cairn-orchestrator", version, about = "Cairn orchestrator")]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand)]
enum Top {
    /// The whole cluster on this machine: store, API server, scheduler, controllers and an agent.
    Up(up::UpArgs),
    /// Serve the Kubernetes API from objects kept in a Cairn (or etcd) store.
    Apiserver(apiserver::ApiserverArgs),
    /// Place pods on nodes (kube-scheduler's role), as an API client.
    Scheduler(control::SchedulerArgs),
    /// Run the controllers (kube-controller-manager's role), as an API client.
    ControllerManager(control::ControllerManagerArgs),
    /// Register fake nodes that run nothing but report their pods as running.
    SimulateNodes(control::SimulateArgs),
    /// Run the pods bound to this machine (the kubelet's role), as an API client.
    Agent(control::AgentArgs),
    /// Manage bootstrap tokens for joining nodes (as `kubeadm token`).
    Token(token::TokenArgs),
    /// Send Services' traffic to their endpoints with nftables (kube-proxy's role), as an API client.
    Proxy(proxy::ProxyArgs),
    /// Answer the cluster's DNS names (CoreDNS's role), as an API client.
    Dns(dns::DnsArgs),
    /// Run pods directly with the bundled namespace runtime (no store).
    Runtime(RuntimeArgs),
    /// The node's container images: import, list, remove, pull.
    Image(image::ImageArgs),
}

#[derive(clap::Args)]
struct RuntimeArgs {
    /// Directory holding pod state, logs and volumes.
    #[arg(long, default_value = "/run/cairn", global = true)]
    state_dir: PathBuf,
    /// Host bridge the pods' veths are attached to.
    #[arg(long, default_value = "cairn0", global = true)]
    bridge: String,
    /// IPv4 range for pod addresses (the first address goes to the bridge).
    #[arg(long, default_value = "10.88.0.0/16", global = true)]
    pod_cidr: String,
    /// Give pods only a loopback interface.
    #[arg(long, global = true)]
    no_network: bool,
    #[arg(long, default_value = "/sys/fs/cgroup", global = true)]
    cgroup_root: PathBuf,
    /// cgroup (relative to each hierarchy) that holds the pods' cgroups.
    #[arg(long, default_value = "cairn", global = true)]
    cgroup_parent: String,
    #[command(subcommand)]
    command: RuntimeCommand,
}

#[derive(Subcommand)]
enum RuntimeCommand {
    /// Create and start a pod from a manifest.
    Run {
        #[arg(short = 'f', long)]
        file: PathBuf,
        /// ConfigMap manifest (`metadata.name`, `data`) the pod refers to; repeatable.
        #[arg(long = "config-map")]
        config_maps: Vec<PathBuf>,
    },
    /// List pods and their containers.
    Ps,
    /// Print a container's output.
    Logs {
        pod: String,
        /// Container name; defaults to the pod's first container.
        #[arg(short, long)]
        container: Option<String>,
        #[arg(long)]
        tail: Option<usize>,
        #[arg(short, long)]
        follow: bool,
    },
    /// Run a command in a running container.
    Exec {
        pod: String,
        #[arg(short, long)]
        container: Option<String>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Stop a pod (SIGTERM, SIGKILL after the grace period).
    Stop {
        pod: String,
        /// Seconds; defaults to the pod's terminationGracePeriodSeconds.
        #[arg(long)]
        grace: Option<u64>,
    },
    /// Remove a pod and everything it created.
    Rm { pod: String },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Servers say what they serve; the runtime commands print only their results.
    let default_level = match cli.command {
        // The embedded store's consensus internals are not what a user of `up` watches for.
        Top::Up(_) => "info,openraft=warn",
        Top::Apiserver(_)
        | Top::Scheduler(_)
        | Top::ControllerManager(_)
        | Top::SimulateNodes(_)
        | Top::Agent(_)
        | Top::Proxy(_)
        | Top::Dns(_) => "info",
        Top::Runtime(_) | Top::Token(_) | Top::Image(_) => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config_maps(files: &[PathBuf]) -> Result<ConfigMaps> {
    #[derive(serde::Deserialize)]
    struct Meta {
        name: String,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct ConfigMap {
        #[serde(default)]
        api_version: Option<String>,
        #[serde(default)]
        kind: Option<String>,
        metadata: Meta,
        #[serde(default)]
        data: std::collections::BTreeMap<String, String>,
    }
    let mut out = ConfigMaps::new();
    for f in files {
        let text = std::fs::read_to_string(f).with_context(|| format!("read {}", f.display()))?;
        let cm: ConfigMap =
            serde_yaml::from_str(&text).with_context(|| format!("parse {}", f.display()))?;
        if cm.kind.as_deref().is_some_and(|k| k != "ConfigMap") {
            bail!("{}: kind must be ConfigMap", f.display());
        }
        let _ = cm.api_version;
        out.insert(cm.metadata.name, cm.data);
    }
    Ok(out)
}

fn default_container(rt: &Runtime, pod: &str, c: Option<String>) -> Result<String> {
    match c {
        Some(c) => Ok(c),
        None => Ok(rt
            .pod_spec(pod)?
            .spec
            .containers
            .first()
            .map(|c| c.name.clone())
            .context("pod has no containers")?),
    }
}

fn fmt_state(s: &ContainerState) -> String {
    match s {
        ContainerState::Created => "Created".into(),
        ContainerState::Running => "Running".into(),
        ContainerState::Exited { exit_code, reason } => format!("Exited({exit_code}) {reason:?}"),
        ContainerState::Unknown => "Unknown".into(),
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let args = match cli.command {
        Top::Up(args) => return up::run(args).await,
        Top::Apiserver(args) => return apiserver::run(args).await,
        Top::Scheduler(args) => return control::scheduler(args).await,
        Top::ControllerManager(args) => return control::controller_manager(args).await,
        Top::SimulateNodes(args) => return control::simulate(args).await,
        Top::Agent(args) => return control::agent(args).await,
        Top::Token(args) => return token::run(args).await,
        Top::Image(args) => return image::run(args).await,
        Top::Proxy(args) => return proxy::run(args).await,
        Top::Dns(args) => return dns::run(args).await,
        Top::Runtime(args) => args,
    };
    let helper = std::env::current_exe().context("locate own executable")?;
    let mut cfg = RuntimeConfig::new(&args.state_dir, helper);
    cfg.cgroup_root = args.cgroup_root.clone();
    cfg.cgroup_parent = args.cgroup_parent.clone();
    if !args.no_network {
        cfg.network = Some(NetworkConfig {
            bridge: args.bridge.clone(),
            cidr: args.pod_cidr.clone(),
        });
    }
    let rt = Runtime::new(cfg)?;
    let mut stdout = std::io::stdout();
    match args.command {
        RuntimeCommand::Run { file, config_maps } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("read {}", file.display()))?;
            let pod = Pod::from_yaml(&text)?;
            let cms = load_config_maps(&config_maps)?;
            let st = rt.run_pod(&pod, &cms).await?;
            let ip = st.ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into());
            writeln!(stdout, "pod/{} started (ip {ip})", st.name)?;
        }
        RuntimeCommand::Ps => {
            writeln!(
                stdout,
                "{:<24} {:<16} {:<20} {:<8} STATE",
                "POD", "IP", "CONTAINER", "PID"
            )?;
            for p in rt.list()? {
                let ip = p.ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into());
                for c in &p.containers {
                    let pid = c.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
                    writeln!(
                        stdout,
                        "{:<24} {:<16} {:<20} {:<8} {}",
                        p.name,
                        ip,
                        c.name,
                        pid,
                        fmt_state(&c.state)
                    )?;
                }
            }
        }
        RuntimeCommand::Logs {
            pod,
            container,
            tail,
            follow,
        } => {
            let c = default_container(&rt, &pod, container)?;
            if follow {
                let mut rx = rt.follow_logs(&pod, &c, tail)?;
                while let Some(chunk) = rx.recv().await {
                    stdout.write_all(&chunk)?;
                    stdout.flush()?;
                }
            } else {
                stdout.write_all(&rt.logs(&pod, &c, tail)?)?;
            }
        }
        RuntimeCommand::Exec {
            pod,
            container,
            command,
        } => {
            let c = default_container(&rt, &pod, container)?;
            let out = rt.exec(&pod, &c, &command).await?;
            stdout.write_all(&out.stdout)?;
            std::io::stderr().write_all(&out.stderr)?;
            return Ok(ExitCode::from(out.exit_code.clamp(0, 255) as u8));
        }
        RuntimeCommand::Stop { pod, grace } => {
            let st = rt.stop_pod(&pod, grace.map(Duration::from_secs)).await?;
            for c in st.containers {
                writeln!(stdout, "{}/{}: {}", pod, c.name, fmt_state(&c.state))?;
            }
        }
        RuntimeCommand::Rm { pod } => {
            rt.remove_pod(&pod).await?;
            writeln!(stdout, "pod/{pod} removed")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
