//! Shared fixtures for the API server tests: a one-member Cairn store and an API server on
//! 127.0.0.1 with ports picked by the kernel, a kubeconfig with an admin token, the real kubectl
//! builds with a fresh HOME each, and the kube crate as an independent client.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use cairn_orchestrator::apiserver::authn::User;
use cairn_orchestrator::apiserver::{self, tls};
use cairn_orchestrator::registry::encryption::Transformer;
use cairn_orchestrator::registry::Registry;

pub const TOKEN: &str = "test-admin-token";

/// Options of [`Cluster::start_with`].
#[derive(Default)]
pub struct Options {
    pub encryption: Option<String>,
    pub bookmark_interval: Option<Duration>,
    /// Serve on this address (one of a network namespace the test made) instead of 127.0.0.1.
    pub bind: Option<std::net::IpAddr>,
    /// Static tokens besides the administrator's: token -> user.
    pub tokens: Vec<(String, User)>,
    /// AlwaysAllow instead of RBAC.
    pub always_allow: bool,
    /// Keep an audit log in this file.
    pub audit_log: Option<PathBuf>,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    node: Option<cairn_server::Node>,
    pub store_endpoint: String,
    peer_endpoint: String,
    server: Option<apiserver::Server>,
    pub addr: SocketAddr,
    pub kubeconfig: PathBuf,
    transformer: Transformer,
    tls: std::sync::Arc<tokio_rustls::rustls::ServerConfig>,
    bookmark_interval: Duration,
    tokens: std::collections::HashMap<String, User>,
    authorization: apiserver::authz::Mode,
    audit_log: Option<PathBuf>,
    ca_pem: String,
}

impl Cluster {
    pub async fn start() -> Cluster {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(opts: Options) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let node =
            cairn_server::Node::start(cairn_server::Config::ephemeral(dir.path().join("store")))
                .await
                .expect("store starts");
        let store_endpoint = node.client_addr().to_string();
        let peer_endpoint = node.peer_addr().to_string();
        let sans: Vec<String> = opts.bind.iter().map(|ip| ip.to_string()).collect();
        let files =
            tls::serving_files(&dir.path().join("certs"), None, None, &sans).expect("certs");
        let tls = tls::server_config(&files).expect("tls config");
        let transformer = match &opts.encryption {
            Some(y) => Transformer::from_yaml(y).expect("encryption config"),
            None => Transformer::default(),
        };
        let mut c = Cluster {
            kubeconfig: dir.path().join("kubeconfig"),
            dir,
            node: Some(node),
            store_endpoint,
            peer_endpoint,
            server: None,
            addr: SocketAddr::new(opts.bind.unwrap_or([127, 0, 0, 1].into()), 0),
            transformer,
            tls,
            bookmark_interval: opts.bookmark_interval.unwrap_or(Duration::from_secs(60)),
            tokens: std::iter::once((TOKEN.to_string(), User::new("admin", &["system:masters"])))
                .chain(opts.tokens)
                .collect(),
            authorization: if opts.always_allow {
                apiserver::authz::Mode::AlwaysAllow
            } else {
                apiserver::authz::Mode::Rbac
            },
            audit_log: opts.audit_log,
            ca_pem: files.ca_pem.clone(),
        };
        c.start_apiserver().await;
        let url = c.url();
        std::fs::write(
            &c.kubeconfig,
            cairn_orchestrator::client::kubeconfig(&url, &files.ca_pem, "admin", TOKEN),
        )
        .unwrap();
        c
    }

    async fn start_apiserver(&mut self) {
        let client = cairn_client::Client::connect([self.store_endpoint.clone()], None)
            .await
            .expect("store client");
        let server = apiserver::start(apiserver::Config {
            registry: Registry::new(client, self.transformer.clone()),
            bind: self.addr,
            tls: self.tls.clone(),
            tokens: self.tokens.clone(),
            authorization: self.authorization,
            audit_log: self.audit_log.clone(),
            bootstrap_tokens: true,
            ip_range: "10.96.0.0/16".into(),
            port_range: "30000-32767".into(),
            bookmark_interval: self.bookmark_interval,
            kubelet_client: tls::kubelet_client(&self.dir.path().join("certs"))
                .expect("kubelet client"),
            service_accounts: Some(
                apiserver::satoken::Issuer::new(
                    apiserver::satoken::Keys::in_dir(&self.dir.path().join("certs"))
                        .expect("service account key"),
                    vec![apiserver::satoken::DEFAULT_ISSUER.into()],
                    Vec::new(),
                    None,
                )
                .expect("service account issuer"),
            ),
        })
        .await
        .expect("apiserver starts");
        self.addr = server.addr;
        self.server = Some(server);
    }

    /// Stops the API server (closing every connection) and starts a new one on the same port.
    pub async fn restart_apiserver(&mut self) {
        drop(self.server.take());
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.start_apiserver().await;
    }

    /// Writes a kubeconfig that presents `token`, and returns its path.
    pub fn kubeconfig_for(&self, user: &str, token: &str) -> PathBuf {
        let p = self.dir.path().join(format!("kubeconfig-{user}"));
        std::fs::write(
            &p,
            cairn_orchestrator::client::kubeconfig(&self.url(), &self.ca_pem, user, token),
        )
        .unwrap();
        p
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub async fn store(&self) -> cairn_client::Client {
        cairn_client::Client::connect([self.store_endpoint.clone()], None)
            .await
            .expect("store client")
    }

    /// The kube crate's client, configured from the kubeconfig.
    pub async fn kube(&self) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig");
        let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("kube config");
        // The tests look at every answer; kube's own retries of 503 and 504 would hide them.
        cfg.default_retry = false;
        kube::Client::try_from(cfg).expect("kube client")
    }

    /// Runs kubectl 1.`minor` with this cluster's kubeconfig and a HOME of its own.
    pub fn kubectl(&self, minor: u32, args: &[&str]) -> Output {
        self.kubectl_stdin(minor, args, None)
    }

    pub fn kubectl_stdin(&self, minor: u32, args: &[&str], stdin: Option<&str>) -> Output {
        let bin = kubectl_bin(minor).expect("kubectl present (checked by the test)");
        let home = self.dir.path().join(format!("home-1.{minor}"));
        std::fs::create_dir_all(&home).unwrap();
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .env("HOME", &home)
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .current_dir(self.dir.path());
        match stdin {
            None => cmd.output().expect("kubectl runs"),
            Some(input) => {
                use std::io::Write;
                let mut child = cmd
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("kubectl runs");
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(input.as_bytes())
                    .unwrap();
                child.wait_with_output().unwrap()
            }
        }
    }

    /// Runs kubectl and returns stdout, panicking with stderr on failure.
    pub fn ok(&self, minor: u32, args: &[&str]) -> String {
        let out = self.kubectl(minor, args);
        assert!(
            out.status.success(),
            "kubectl 1.{minor} {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl expecting failure; returns stderr.
    pub fn fails(&self, minor: u32, args: &[&str]) -> String {
        let out = self.kubectl(minor, args);
        assert!(
            !out.status.success(),
            "kubectl 1.{minor} {args:?} should fail: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Stops the store member (the API server keeps running without it).
    pub async fn stop_store(&mut self) {
        if let Some(n) = self.node.take() {
            n.shutdown().await.expect("store shuts down");
        }
    }

    /// Starts the store member again on its data and address.
    pub async fn start_store(&mut self) {
        let mut cfg = cairn_server::Config::ephemeral(self.dir.path().join("store"));
        cfg.listen_client_urls = vec![format!("http://{}", self.store_endpoint)];
        cfg.listen_peer_urls = vec![format!("http://{}", self.peer_endpoint)];
        self.node = Some(
            cairn_server::Node::start(cfg)
                .await
                .expect("store restarts"),
        );
    }

    pub async fn shutdown(mut self) {
        drop(self.server.take());
        if let Some(n) = self.node.take() {
            let _ = n.shutdown().await;
        }
    }
}

/// The directory of the real kubectl builds (`kubectl.1.NN`), if installed.
pub fn kubectl_dir() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        let k = dir.join("kubectl");
        if k.exists() {
            let real = std::fs::canonicalize(&k).ok()?;
            return real.parent().map(Path::to_path_buf);
        }
    }
    None
}

pub fn kubectl_bin(minor: u32) -> Option<PathBuf> {
    let p = kubectl_dir()?.join(format!("kubectl.1.{minor}"));
    p.exists().then_some(p)
}

/// False (after saying why) when kubectl 1.`minor` is not installed.
pub fn have_kubectl(test: &str, minor: u32) -> bool {
    if kubectl_bin(minor).is_none() {
        println!("SKIPPED: {test}: kubectl.1.{minor} is not installed (it comes with the google-cloud-cli package)");
        return false;
    }
    true
}

/// Waits until `done` holds, checking every 100 ms, failing the test after `secs`.
pub async fn converge<F>(what: &str, secs: u64, mut done: F)
where
    F: AsyncFnMut() -> bool,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `f` yields a value, checking every 100 ms, failing the test after `secs`.
pub async fn eventually<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
