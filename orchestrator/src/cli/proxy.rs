//! `cairn-orchestrator proxy`: the service proxy (kube-proxy's nftables mode) as an API client
//! configured by a kubeconfig.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use cairn_orchestrator::proxy::{self, NodePortAddresses, ProxyConfig};

use super::control::{parse_duration, ClientArgs};

#[derive(clap::Args)]
pub struct ProxyArgs {
    #[command(flatten)]
    api: ClientArgs,
    /// This node's name (default: the hostname).
    #[arg(long)]
    node_name: Option<String>,
    /// CIDRs of the node addresses NodePorts answer on (default: every local address but
    /// loopback).
    #[arg(long, value_delimiter = ',')]
    nodeport_addresses: Vec<String>,
    /// The pods' range; connections to a ClusterIP from outside it are masqueraded.
    #[arg(long)]
    cluster_cidr: Option<String>,
    /// The least time between two syncs of the rules.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    min_sync_period: Duration,
    /// The nftables table (family ip) the proxy owns.
    #[arg(long, default_value = "cairn-proxy")]
    table: String,
}

pub async fn run(args: ProxyArgs) -> Result<ExitCode> {
    // kube-proxy's client defaults.
    let client = args.api.client(5.0, 10).await?;
    let mut cfg = ProxyConfig::new(node_name(args.node_name)?);
    cfg.table = args.table;
    if !args.nodeport_addresses.is_empty() {
        cfg.nodeport_addresses = NodePortAddresses::Cidrs(args.nodeport_addresses);
    }
    cfg.cluster_cidr = args.cluster_cidr;
    cfg.min_sync_period = args.min_sync_period;
    proxy::run(client, cfg, super::wait_for_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

fn node_name(given: Option<String>) -> Result<String> {
    match given {
        Some(n) => Ok(n),
        None => Ok(std::fs::read_to_string("/proc/sys/kernel/hostname")?
            .trim()
            .to_lowercase()),
    }
}
