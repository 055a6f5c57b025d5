//! `cairn-orchestrator dns`: the cluster DNS server (CoreDNS's role) as an API client configured
//! by a kubeconfig.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{Context, Result};
use cairn_orchestrator::dns::{self, DnsConfig};

use super::control::ClientArgs;

#[derive(clap::Args)]
pub struct DnsArgs {
    #[command(flatten)]
    api: ClientArgs,
    /// Address and port to answer on, UDP and TCP.
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Servers for names outside the cluster domain, ADDR[:PORT] (default: the nameservers of
    /// /etc/resolv.conf).
    #[arg(long, value_delimiter = ',')]
    upstream: Vec<String>,
    /// TTL of the cluster's records, seconds.
    #[arg(long, default_value_t = dns::DEFAULT_TTL)]
    ttl: u32,
}

/// `ADDR` or `ADDR:PORT` (port 53 by default).
pub fn parse_upstream(s: &str) -> Result<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let ip: std::net::IpAddr = s
        .parse()
        .with_context(|| format!("upstream {s:?} is not ADDR or ADDR:PORT"))?;
    Ok(SocketAddr::new(ip, 53))
}

/// The upstreams given, or the host's resolvers.
pub fn upstreams(given: &[String]) -> Result<Vec<SocketAddr>> {
    if given.is_empty() {
        let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        return Ok(dns::upstreams_from_resolv_conf(&text));
    }
    given.iter().map(|s| parse_upstream(s)).collect()
}

pub async fn run(args: DnsArgs) -> Result<ExitCode> {
    // CoreDNS's client defaults (client-go's).
    let client = args.api.client(5.0, 10).await?;
    let mut cfg = DnsConfig::new(args.listen);
    cfg.cluster_domain = args.cluster_domain;
    cfg.upstreams = upstreams(&args.upstream)?;
    cfg.ttl = args.ttl;
    dns::run(client, cfg, super::wait_for_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
