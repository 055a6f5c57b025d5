//! `cairn-orchestrator up`: the whole cluster on this machine from one command. An embedded
//! single-member Cairn store (or `--etcd-servers`), the API server, the scheduler, the controller
//! manager (with node IPAM over `--cluster-cidr`) and a node agent for this machine whose pods
//! get addresses on the `--pod-bridge` network, all in this process; writes the kubeconfig, prints
//! the `export KUBECONFIG=...` line, and on Ctrl-C stops the pods and everything else. Started
//! again with the same data directory it resumes where it stopped. The service proxy and the
//! cluster DNS server run here too, the DNS server behind kube-system/kube-dns as CoreDNS is.
//! Each component authenticates with a token of its own as Kubernetes' identity for it, so the
//! default RBAC policy, not the administrator's rights, decides what it may do.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use cairn_orchestrator::agent::{self, AgentConfig};
use cairn_orchestrator::apiserver::{self, satoken, tls};
use cairn_orchestrator::client::{self, Throttle};
use cairn_orchestrator::registry::encryption::Transformer;
use cairn_orchestrator::registry::Registry;
use cairn_orchestrator::runtime::{Runtime, RuntimeConfig};
use cairn_orchestrator::{controllers, dns, proxy, scheduler};

/// The Services' range; the cluster DNS Service takes its tenth address.
const SERVICE_CIDR: &str = "10.96.0.0/16";

#[derive(clap::Args)]
pub struct UpArgs {
    /// Where the store, certificates and pods' state live.
    #[arg(long, default_value = "./cairn-data")]
    data_dir: PathBuf,
    /// The kubeconfig written for kubectl.
    #[arg(long, default_value = "./cairn.kubeconfig")]
    kubeconfig: PathBuf,
    /// Use this Cairn (or etcd) cluster instead of the embedded store.
    #[arg(long, value_delimiter = ',')]
    etcd_servers: Vec<String>,
    /// Port of the embedded store's etcd API on 127.0.0.1.
    #[arg(long, default_value_t = 2379)]
    store_port: u16,
    /// Port of the embedded store's peer listener on 127.0.0.1.
    #[arg(long, default_value_t = 2380)]
    store_peer_port: u16,
    /// Port of the API server.
    #[arg(long, default_value_t = 6443)]
    secure_port: u16,
    /// The address the API server and this machine's agent listen on and other nodes reach
    /// (published in kube-public's cluster-info for `agent --join`).
    #[arg(long, default_value = "127.0.0.1")]
    advertise_address: std::net::IpAddr,
    /// Port of the node agent's log and exec endpoint.
    #[arg(long, default_value_t = 10250)]
    agent_port: u16,
    /// This machine's node name (default: the hostname).
    #[arg(long)]
    node_name: Option<String>,
    /// cgroup directory (under /sys/fs/cgroup) holding the pods' cgroups.
    #[arg(long, default_value = "cairn")]
    cgroup_parent: String,
    /// The range nodes' pod CIDRs (one /24 each) are cut from.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: String,
    /// Bridge this machine's pods attach to.
    #[arg(long, default_value = "cairn0")]
    pod_bridge: String,
    /// Where the cluster DNS server answers, UDP and TCP (port 0: any free port); the kube-dns
    /// Service's port 53 leads here. Default: port 53 on the pods' gateway (the first address of
    /// this node's podCIDR, on the pod bridge), which pods reach and the host's resolver leaves
    /// free.
    #[arg(long)]
    cluster_dns_listen: Option<SocketAddrV4>,
    /// Append the API server's audit log (JSON lines) here; `-` for standard output.
    #[arg(long)]
    audit_log_path: Option<PathBuf>,
}

pub async fn run(args: UpArgs) -> Result<ExitCode> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("create {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;

    // The store.
    let (store, endpoints) = if args.etcd_servers.is_empty() {
        let client_url = format!("http://127.0.0.1:{}", args.store_port);
        let peer_url = format!("http://127.0.0.1:{}", args.store_peer_port);
        let cfg = cairn_server::Config {
            data_dir: data_dir.join("store"),
            listen_client_urls: vec![client_url.clone()],
            advertise_client_urls: vec![client_url],
            listen_peer_urls: vec![peer_url.clone()],
            initial_advertise_peer_urls: vec![peer_url],
            ..Default::default()
        };
        let node = cairn_server::Node::start(cfg)
            .await
            .context("start the embedded store")?;
        let endpoint = node.client_addr().to_string();
        (Some(node), vec![endpoint])
    } else {
        (None, args.etcd_servers.clone())
    };

    // The API server, with an admin token kept beside its certificates.
    let cert_dir = data_dir.join("pki");
    // The `kubernetes` Service's address too, for clients inside pods.
    let sans = [args.advertise_address.to_string(), "10.96.0.1".to_string()];
    let files = tls::serving_files(&cert_dir, None, None, &sans)?;
    let name = match &args.node_name {
        Some(n) => n.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")?
            .trim()
            .to_lowercase(),
    };
    // Each component acts as the identity Kubernetes gives it, with a token of its own kept beside
    // the certificates; the default policy binds each to the role it needs.
    let node_user = format!("system:node:{name}");
    let identities: [(&str, &str, &[&str]); 6] = [
        ("admin", "admin", &["system:masters"]),
        ("scheduler", "system:kube-scheduler", &[]),
        ("controller-manager", "system:kube-controller-manager", &[]),
        ("node", &node_user, &["system:nodes"]),
        ("proxy", "system:kube-proxy", &[]),
        (
            "dns",
            "system:serviceaccount:kube-system:kube-dns",
            &[
                "system:serviceaccounts",
                "system:serviceaccounts:kube-system",
            ],
        ),
    ];
    let mut tokens = HashMap::new();
    let mut component_tokens = HashMap::new();
    for (component, user, groups) in identities {
        let path = cert_dir.join(format!("{component}.token"));
        let token = match std::fs::read_to_string(&path) {
            Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => {
                let t = tls::random_token();
                std::fs::write(&path, &t)?;
                t
            }
        };
        tokens.insert(token.clone(), apiserver::authn::User::new(user, groups));
        component_tokens.insert(component, (user.to_string(), token));
    }
    let store_client = cairn_client::Client::connect(endpoints, None)
        .await
        .context("connect to the store")?;
    let server = apiserver::start(apiserver::Config {
        registry: Registry::new(store_client, Transformer::default()),
        bind: SocketAddr::new(args.advertise_address, args.secure_port),
        tls: tls::server_config(&files)?,
        tokens,
        authorization: apiserver::authz::Mode::Rbac,
        audit_log: args.audit_log_path.clone(),
        bootstrap_tokens: true,
        ip_range: SERVICE_CIDR.into(),
        port_range: "30000-32767".into(),
        bookmark_interval: std::time::Duration::from_secs(60),
        kubelet_client: tls::kubelet_client(&cert_dir)?,
        service_accounts: Some(satoken::Issuer::new(
            satoken::Keys::in_dir(&cert_dir)?,
            vec![satoken::DEFAULT_ISSUER.into()],
            Vec::new(),
            None,
        )?),
    })
    .await?;
    let url = format!("https://{}", server.addr);
    let token = component_tokens["admin"].1.clone();
    std::fs::write(
        &args.kubeconfig,
        cairn_orchestrator::client::kubeconfig(&url, &files.ca_pem, "admin", &token),
    )
    .with_context(|| format!("write {}", args.kubeconfig.display()))?;
    let kubeconfig_of = |component: &str| -> Result<PathBuf> {
        let (user, token) = &component_tokens[component];
        let path = cert_dir.join(format!("{component}.kubeconfig"));
        std::fs::write(
            &path,
            cairn_orchestrator::client::kubeconfig(&url, &files.ca_pem, user, token),
        )
        .with_context(|| format!("write {}", path.display()))?;
        Ok(path)
    };

    // The control plane and this machine's agent, as API clients of it.
    let throttle = Throttle {
        qps: 50.0,
        burst: 100,
    };
    let kc = &args.kubeconfig;
    let (node_kc, proxy_kc, dns_kc) = (
        kubeconfig_of("node")?,
        kubeconfig_of("proxy")?,
        kubeconfig_of("dns")?,
    );
    let (sched_client, cm_client, agent_client, admin_client) = (
        client::from_kubeconfig(&kubeconfig_of("scheduler")?, throttle).await?,
        client::Clients::from_kubeconfig(&kubeconfig_of("controller-manager")?, throttle).await?,
        client::from_kubeconfig(&node_kc, throttle).await?,
        client::from_kubeconfig(kc, throttle).await?,
    );
    let helper = std::env::current_exe()?;
    let mut rcfg = RuntimeConfig::new(data_dir.join("agent"), helper);
    rcfg.cgroup_parent = args.cgroup_parent.clone();
    controllers::bootstrap::publish_cluster_info(&admin_client, &url, &files.ca_pem)
        .await
        .context("publish kube-public/cluster-info")?;
    let name_for_dns = name.clone();
    let mut acfg = AgentConfig::new(name.clone(), rcfg.clone());
    acfg.address = args.advertise_address.to_string();
    acfg.port = args.agent_port;
    acfg.network = Some(args.pod_bridge.clone());
    // ClusterFirst pods ask the kube-dns Service, as with CoreDNS behind it.
    acfg.dns.cluster_dns = vec![std::net::IpAddr::V4(dns::cluster_dns_ip(SERVICE_CIDR)?)];
    acfg.client_ca = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&node_kc)?,
        &Default::default(),
    )
    .await?
    .root_cert
    .unwrap_or_default();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    let s = stopped();
    tasks.spawn(async move {
        if let Err(e) = scheduler::run(sched_client, s).await {
            tracing::error!(error = %e, "scheduler stopped");
        }
    });
    let s = stopped();
    let ccfg = controllers::ControllerConfig {
        cluster_cidr: Some(args.cluster_cidr.clone()),
        root_ca: Some(files.ca_pem.clone()),
        ..Default::default()
    };
    tasks.spawn(async move {
        if let Err(e) = controllers::run(cm_client, ccfg, s).await {
            tracing::error!(error = %e, "controller manager stopped");
        }
    });
    let s = stopped();
    tasks.spawn(async move {
        if let Err(e) = agent::run(agent_client, acfg, s).await {
            tracing::error!(error = %e, "agent stopped");
        }
    });

    // Services in the kernel and the cluster's names, as kube-proxy and CoreDNS provide them.
    let services = proxy::Proxy::start(
        client::from_kubeconfig(&proxy_kc, throttle).await?,
        proxy::ProxyConfig::new(name),
    )?;
    let cluster_dns = {
        let (kc, admin, name, listen) = (
            dns_kc,
            kc.to_path_buf(),
            name_for_dns,
            args.cluster_dns_listen,
        );
        tokio::spawn(async move { start_dns(&kc, &admin, throttle, &name, listen).await })
    };

    println!(
        "Cairn is up: API server {url}, store {}",
        data_dir.display()
    );
    println!(
        "export KUBECONFIG={}",
        args.kubeconfig
            .canonicalize()
            .unwrap_or(args.kubeconfig.clone())
            .display()
    );
    println!(
        "Other machines join with the command `cairn-orchestrator token create --print-join-command` prints{}",
        if args.advertise_address.is_loopback() {
            " (start with --advertise-address set to an address they reach)"
        } else {
            ""
        }
    );
    super::wait_for_signal().await;
    tracing::info!("stopping");
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    if let Err(e) = services.shutdown().await {
        tracing::warn!(error = %e, "service proxy");
    }
    // Still waiting for the pod network means it never started.
    if cluster_dns.is_finished() {
        if let Ok(Some(d)) = cluster_dns.await {
            d.shutdown().await;
        }
    } else {
        cluster_dns.abort();
    }
    // Everything stops: the pods' processes too (the API keeps them, and the next `up` starts them).
    let rt = Arc::new(Runtime::new(rcfg)?);
    for p in rt.list().unwrap_or_default() {
        if let Err(e) = rt.remove_pod(&p.name).await {
            tracing::warn!(pod = %p.name, error = %e, "cannot stop a pod");
        }
    }
    drop(server);
    if let Some(node) = store {
        node.shutdown().await.context("stop the embedded store")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The cluster DNS server (acting as kube-system's kube-dns service account, `kc`) and its
/// kube-dns Service, which the administrator (`admin`) publishes as a manifest would; a DNS server
/// that cannot start (say, port 53 taken) is reported and the rest of the cluster runs without it.
async fn start_dns(
    kc: &std::path::Path,
    admin: &std::path::Path,
    throttle: Throttle,
    node: &str,
    listen: Option<SocketAddrV4>,
) -> Option<dns::DnsServer> {
    let started = async {
        let server = match listen {
            Some(listen) => {
                let mut cfg = dns::DnsConfig::new(SocketAddr::V4(listen));
                cfg.upstreams = super::dns::upstreams(&[]).unwrap_or_default();
                dns::DnsServer::start(client::from_kubeconfig(kc, throttle).await?, cfg).await?
            }
            None => on_pod_gateway(kc, throttle, node).await?,
        };
        let SocketAddr::V4(addr) = server.addr else {
            anyhow::bail!("the DNS server listens on IPv6");
        };
        let ip = dns::cluster_dns_ip(SERVICE_CIDR)?;
        dns::service::publish(client::from_kubeconfig(admin, throttle).await?, ip, addr)
            .await
            .context("publish kube-system/kube-dns")?;
        tracing::info!(service = %ip, server = %addr, "cluster DNS");
        anyhow::Ok(server)
    };
    match started.await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "cluster DNS not running");
            None
        }
    }
}

/// The DNS server on port 53 of this node's pod gateway: once the controller manager has given
/// the node its podCIDR and the agent has put the gateway address on the bridge (binding fails
/// until then).
async fn on_pod_gateway(
    kc: &std::path::Path,
    throttle: Throttle,
    node: &str,
) -> Result<dns::DnsServer> {
    use k8s_openapi::api::core::v1::Node;
    let client = client::from_kubeconfig(kc, throttle).await?;
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(300);
    let mut last = String::from("the node has no podCIDR yet");
    while tokio::time::Instant::now() < deadline {
        let cidr = nodes
            .get_opt(node)
            .await
            .ok()
            .flatten()
            .and_then(|n| n.spec?.pod_cidr);
        if let Some(cidr) = cidr {
            let gateway = cairn_orchestrator::runtime::network::Ipv4Net::parse(&cidr)?.gateway();
            let mut cfg = dns::DnsConfig::new(SocketAddr::V4(SocketAddrV4::new(gateway, 53)));
            cfg.upstreams = super::dns::upstreams(&[]).unwrap_or_default();
            match dns::DnsServer::start(client.clone(), cfg).await {
                Ok(s) => return Ok(s),
                Err(e) => last = e.to_string(),
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    anyhow::bail!("no pod gateway to serve DNS on: {last}")
}
