//! `cairn-orchestrator apiserver`: kube-apiserver's flags where one exists.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cairn_orchestrator::apiserver::{self, satoken, tls};
use cairn_orchestrator::registry::alloc::IpRange;
use cairn_orchestrator::registry::encryption::Transformer;
use cairn_orchestrator::registry::Registry;

#[derive(clap::Args)]
pub struct ApiserverArgs {
    /// Store endpoints (Cairn or etcd), comma-separated: `127.0.0.1:2379,127.0.0.1:22379`.
    #[arg(long, value_delimiter = ',', required = true)]
    etcd_servers: Vec<String>,
    /// The HTTPS port.
    #[arg(long, default_value_t = 6443)]
    secure_port: u16,
    /// The address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// Where generated certificates (and the admin token) are kept.
    #[arg(long, default_value = "/var/run/kubernetes")]
    cert_dir: PathBuf,
    /// Serving certificate (PEM); generated in --cert-dir when absent.
    #[arg(long, requires = "tls_private_key_file")]
    tls_cert_file: Option<PathBuf>,
    #[arg(long, requires = "tls_cert_file")]
    tls_private_key_file: Option<PathBuf>,
    /// Static bearer tokens: `token,user,uid,"group1,group2"` per line.
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// Accept bootstrap tokens (Secrets of type bootstrap.kubernetes.io/token in kube-system), as
    /// joining nodes present them.
    #[arg(long)]
    enable_bootstrap_token_auth: bool,
    /// Kubernetes' EncryptionConfiguration for encryption at rest.
    #[arg(long)]
    encryption_provider_config: Option<PathBuf>,
    #[arg(long, default_value = "10.96.0.0/16")]
    service_cluster_ip_range: String,
    #[arg(long, default_value = "30000-32767")]
    service_node_port_range: String,
    /// Writes a kubeconfig with the CA and an admin token to this path.
    #[arg(long)]
    write_kubeconfig: Option<PathBuf>,
    /// Client certificate (PEM) presented to node agents; generated in --cert-dir when absent and
    /// the CA was generated there.
    #[arg(long, requires = "kubelet_client_key")]
    kubelet_client_certificate: Option<PathBuf>,
    #[arg(long, requires = "kubelet_client_certificate")]
    kubelet_client_key: Option<PathBuf>,
    /// The private key (PEM, P-256 or RSA) service account tokens are signed with; generated in
    /// --cert-dir (`sa.key`) when absent.
    #[arg(long)]
    service_account_signing_key_file: Option<PathBuf>,
    /// Further keys (PEM) that verify service account tokens, as during a key rotation.
    #[arg(long, value_delimiter = ',')]
    service_account_key_file: Vec<PathBuf>,
    /// The issuer (`iss`) of service account tokens; the first signs, every one is accepted.
    #[arg(long, default_values_t = [apiserver::satoken::DEFAULT_ISSUER.to_string()])]
    service_account_issuer: Vec<String>,
    /// The audiences a token must be for to authenticate here (default: the first issuer).
    #[arg(long, value_delimiter = ',')]
    api_audiences: Vec<String>,
    /// The longest lifetime a requested service account token gets.
    #[arg(long, value_parser = super::control::parse_duration)]
    service_account_max_token_expiration: Option<Duration>,
    /// How requests are authorized: RBAC, or AlwaysAllow.
    #[arg(long, default_value = "RBAC")]
    authorization_mode: apiserver::authz::Mode,
    /// Where the audit log (JSON lines, audit.k8s.io/v1 Events) is appended; `-` for standard
    /// output. No audit log without it.
    #[arg(long)]
    audit_log_path: Option<PathBuf>,
    /// How often watches that allow bookmarks get one while idle.
    #[arg(long, default_value = "60s", value_parser = super::control::parse_duration, hide = true)]
    watch_bookmark_interval: Duration,
}

pub async fn run(args: ApiserverArgs) -> Result<ExitCode> {
    let mut tokens: HashMap<String, apiserver::authn::User> = HashMap::new();
    if let Some(f) = &args.token_auth_file {
        let text = std::fs::read_to_string(f).with_context(|| format!("read {}", f.display()))?;
        tokens = apiserver::parse_token_file(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
    }
    // Clients inside pods reach the server at the `kubernetes` Service's address (the range's
    // first), so a generated certificate names it, as kube-apiserver's does.
    let service_ip = IpRange::parse(&args.service_cluster_ip_range)
        .map_err(|e| anyhow::anyhow!("--service-cluster-ip-range: {e}"))?
        .first();
    let files = tls::serving_files(
        &args.cert_dir,
        args.tls_cert_file.as_deref(),
        args.tls_private_key_file.as_deref(),
        &[service_ip.to_string()],
    )?;
    let tls_config = tls::server_config(&files)?;
    let kubelet_client = match (&args.kubelet_client_certificate, &args.kubelet_client_key) {
        (Some(c), Some(k)) => Some((
            std::fs::read_to_string(c).with_context(|| format!("read {}", c.display()))?,
            std::fs::read_to_string(k).with_context(|| format!("read {}", k.display()))?,
        )),
        _ => tls::kubelet_client(&args.cert_dir)?,
    };
    let transformer = match &args.encryption_provider_config {
        Some(p) => Transformer::from_file(p)?,
        None => Transformer::default(),
    };
    let admin = match &args.write_kubeconfig {
        Some(_) => {
            let path = args.cert_dir.join("admin.token");
            let token = match std::fs::read_to_string(&path) {
                Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
                _ => {
                    std::fs::create_dir_all(&args.cert_dir)?;
                    let t = tls::random_token();
                    std::fs::write(&path, &t)
                        .with_context(|| format!("write {}", path.display()))?;
                    t
                }
            };
            // The kubeconfig's user is the cluster's administrator, as kubeadm's admin.conf.
            tokens.insert(
                token.clone(),
                apiserver::authn::User::new("admin", &["system:masters"]),
            );
            Some(token)
        }
        None => None,
    };
    if tokens.is_empty() {
        bail!("no credentials: give --token-auth-file or --write-kubeconfig");
    }
    let keys = match &args.service_account_signing_key_file {
        Some(f) => satoken::Keys::from_files(f, &args.service_account_key_file)?,
        None if args.service_account_key_file.is_empty() => satoken::Keys::in_dir(&args.cert_dir)?,
        None => bail!("--service-account-key-file needs --service-account-signing-key-file"),
    };
    let service_accounts = satoken::Issuer::new(
        keys,
        args.service_account_issuer.clone(),
        args.api_audiences.clone(),
        args.service_account_max_token_expiration
            .map(|d| d.as_secs() as i64),
    )?;
    let client = cairn_client::Client::connect(args.etcd_servers.clone(), None)
        .await
        .context("connect to the store")?;
    let bind = SocketAddr::new(args.bind_address, args.secure_port);
    let server = apiserver::start(apiserver::Config {
        registry: Registry::new(client, transformer),
        bind,
        tls: tls_config,
        tokens,
        authorization: args.authorization_mode,
        audit_log: args.audit_log_path.clone(),
        bootstrap_tokens: args.enable_bootstrap_token_auth,
        ip_range: args.service_cluster_ip_range.clone(),
        port_range: args.service_node_port_range.clone(),
        bookmark_interval: args.watch_bookmark_interval,
        kubelet_client,
        service_accounts: Some(service_accounts),
    })
    .await?;
    if let (Some(path), Some(token)) = (&args.write_kubeconfig, admin) {
        let host = if server.addr.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            server.addr.ip().to_string()
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let url = format!("https://{host}:{}", server.addr.port());
        std::fs::write(
            path,
            cairn_orchestrator::client::kubeconfig(&url, &files.ca_pem, "admin", &token),
        )
        .with_context(|| format!("write {}", path.display()))?;
    }
    if let Some(path) = &args.write_kubeconfig {
        tracing::info!(kubeconfig = %path.display(), "admin kubeconfig written");
    }
    super::wait_for_signal().await;
    server.abort();
    Ok(ExitCode::SUCCESS)
}
