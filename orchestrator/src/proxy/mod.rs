//! The service proxy (kube-proxy's nftables mode): watches Services and EndpointSlices and keeps
//! an nftables table (`ip cairn-proxy`) that sends connections for a ClusterIP or a NodePort to
//! the Service's endpoints. It is an API client only: it never imports `registry`, `apiserver` or
//! `agent`.
//!
//! Rules reach the kernel as text through `nft -f -`, as kube-proxy's knftables does, rather than
//! through a netlink crate: the `nft` binary is the maintained, kernel-versioned encoder of
//! nftables' netlink messages and applies a whole script as one transaction; `rustables` and
//! friends lag the kernel's expressions (numgen vmaps, dynamic sets), and the `nftables` crate
//! drives the same binary through JSON, which buys nothing over the text syntax but a dependency.
//!
//! Syncs: the first sync, any sync after a failure and one an hour replace the table whole (one
//! transaction: delete and rebuild); every other sync sends only the commands for the service
//! ports whose rules changed. Syncs start at most once per `min_sync_period` (kube-proxy's
//! `--min-sync-period`, 1 s), so a burst of endpoint changes costs one transaction. Established
//! connections are untouched by either kind: conntrack keeps their DNAT, only new connections
//! meet the new rules. On shutdown the table is deleted.

pub mod model;
pub mod nft;
pub mod rules;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::Store;
use tokio::sync::{watch, Notify};

pub use nft::Nft;
pub use rules::NodePortAddresses;

use model::ServicePort;
use rules::{Rendered, RuleConfig, Transaction};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("nftables: {0}")]
    Nft(String),
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// The proxy's settings (kube-proxy's flags).
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// This node's name, for the log.
    pub node_name: String,
    /// The nftables table (family `ip`) the proxy owns.
    pub table: String,
    /// Where NodePorts answer.
    pub nodeport_addresses: NodePortAddresses,
    /// The pods' range: connections to a ClusterIP from outside it are masqueraded.
    pub cluster_cidr: Option<String>,
    /// The least time between the starts of two syncs.
    pub min_sync_period: Duration,
    /// How often the whole table is rebuilt even without changes.
    pub full_sync_period: Duration,
    /// How `nft` is run.
    pub nft: Nft,
}

impl ProxyConfig {
    pub fn new(node_name: impl Into<String>) -> ProxyConfig {
        ProxyConfig {
            node_name: node_name.into(),
            table: "cairn-proxy".into(),
            nodeport_addresses: NodePortAddresses::AllLocal,
            cluster_cidr: None,
            min_sync_period: Duration::from_secs(1),
            full_sync_period: Duration::from_secs(3600),
            nft: Nft::default(),
        }
    }

    fn validate(&self) -> Result<(), ProxyError> {
        let ok_name = !self.table.is_empty()
            && self.table.len() <= rules::MAX_NAME_LEN
            && self.table.starts_with(|c: char| c.is_ascii_alphabetic())
            && self
                .table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c));
        if !ok_name {
            return Err(ProxyError::Config(format!(
                "table name {:?}: must start with a letter and hold only letters, digits, '-' and '_'",
                self.table
            )));
        }
        let cidrs = match &self.nodeport_addresses {
            NodePortAddresses::AllLocal => vec![],
            NodePortAddresses::Cidrs(c) => c.clone(),
        };
        for c in cidrs.iter().chain(self.cluster_cidr.iter()) {
            if !valid_cidr(c) {
                return Err(ProxyError::Config(format!(
                    "{c:?} is not an IPv4 CIDR (e.g. 10.244.0.0/16)"
                )));
            }
        }
        Ok(())
    }
}

fn valid_cidr(s: &str) -> bool {
    let Some((ip, len)) = s.split_once('/') else {
        return false;
    };
    ip.parse::<std::net::Ipv4Addr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 32)
}

/// What the last sync did, for logs, tests and benchmarks.
#[derive(Debug, Clone, Default)]
pub struct SyncStats {
    /// Syncs that reached the kernel (successful or not).
    pub syncs: u64,
    pub failures: u64,
    /// Whether the last sync replaced the table whole.
    pub full: bool,
    /// Time to compute and apply the last sync.
    pub duration: Duration,
    /// Chains, sets and map elements the last sync touched.
    pub changed: usize,
    /// Service ports with rules after the last sync.
    pub service_ports: usize,
    /// Bytes of the last script.
    pub script_bytes: usize,
}

/// A running proxy.
pub struct Proxy {
    stats: watch::Receiver<SyncStats>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), ProxyError>>,
}

impl Proxy {
    /// Starts watching and syncing; the first sync waits for both caches to fill.
    pub fn start(client: kube::Client, config: ProxyConfig) -> Result<Proxy, ProxyError> {
        config.validate()?;
        let (stats_tx, stats) = watch::channel(SyncStats::default());
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(sync_loop(client, config, stop_rx, stats_tx));
        Ok(Proxy { stats, stop, task })
    }

    /// Reports of every sync.
    pub fn stats(&self) -> watch::Receiver<SyncStats> {
        self.stats.clone()
    }

    /// Stops syncing and deletes the table.
    pub async fn shutdown(self) -> Result<(), ProxyError> {
        let _ = self.stop.send(true);
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(ProxyError::Nft(format!("sync task: {e}"))),
        }
    }
}

/// Runs the proxy until `stop` resolves, then removes its table.
pub async fn run(
    client: kube::Client,
    config: ProxyConfig,
    stop: impl Future<Output = ()>,
) -> Result<(), ProxyError> {
    let proxy = Proxy::start(client, config)?;
    let mut task_done = proxy.stats();
    tokio::select! {
        _ = stop => {}
        // The sync loop ends on its own only by failing to start; shutdown reports why.
        _ = async { while task_done.changed().await.is_ok() {} } => {}
    }
    proxy.shutdown().await
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

async fn sync_loop(
    client: kube::Client,
    config: ProxyConfig,
    mut stop: watch::Receiver<bool>,
    stats: watch::Sender<SyncStats>,
) -> Result<(), ProxyError> {
    let notify = Arc::new(Notify::new());
    let (services, t1) =
        crate::client::reflect(Api::<Service>::all(client.clone()), Some(notify.clone()));
    let (slices, t2) =
        crate::client::reflect(Api::<EndpointSlice>::all(client), Some(notify.clone()));
    let _watches = AbortOnDrop(vec![t1, t2]);
    let stopped = |stop: &watch::Receiver<bool>| *stop.borrow();
    tokio::select! {
        _ = async {
            let _ = services.wait_until_ready().await;
            let _ = slices.wait_until_ready().await;
        } => {}
        _ = stop.wait_for(|s| *s) => return Ok(()),
    }
    tracing::info!(node = %config.node_name, table = %config.table, "service proxy syncing");
    let mut state = SyncState {
        rules: RuleConfig {
            table: config.table.clone(),
            nodeport_addresses: config.nodeport_addresses.clone(),
            cluster_cidr: config.cluster_cidr.clone(),
        },
        applied: HashMap::new(),
        need_full: true,
        last_full: Instant::now(),
    };
    let mut report = SyncStats::default();
    let mut failing = 0u32;
    loop {
        let started = Instant::now();
        if started.duration_since(state.last_full) >= config.full_sync_period {
            state.need_full = true;
        }
        let full = state.need_full;
        let result = state.sync(&config.nft, &services, &slices).await;
        report.syncs += 1;
        report.full = full;
        report.duration = started.elapsed();
        let failed = match result {
            Ok(Some((changed, bytes))) => {
                report.changed = changed;
                report.script_bytes = bytes;
                report.service_ports = state.applied.len();
                if full {
                    tracing::info!(service_ports = report.service_ports, duration = ?report.duration, "full sync");
                } else {
                    tracing::debug!(changed, duration = ?report.duration, "sync");
                }
                false
            }
            Ok(None) => {
                report.changed = 0;
                report.script_bytes = 0;
                false
            }
            Err(e) => {
                report.failures += 1;
                tracing::warn!(error = %e, "sync failed; the next one rebuilds the table");
                state.need_full = true;
                true
            }
        };
        stats.send_replace(report.clone());
        // The rate limit: the next sync starts no sooner than min_sync_period after this one did.
        tokio::select! {
            _ = tokio::time::sleep_until((started + config.min_sync_period).into()) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        if stopped(&stop) {
            break;
        }
        let until_full = config
            .full_sync_period
            .saturating_sub(state.last_full.elapsed());
        failing = if failed { failing + 1 } else { 0 };
        // A kernel that keeps refusing (no nftables, no CAP_NET_ADMIN) is retried ever more
        // slowly, up to every 30 s.
        let retry = if failed {
            (config.min_sync_period.max(Duration::from_millis(100)) * 2u32.saturating_pow(failing))
                .min(Duration::from_secs(30))
        } else {
            until_full
        };
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(retry) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    let r = config.nft.delete_table(&config.table).await;
    tracing::info!(table = %config.table, "service proxy stopped; table removed");
    r
}

struct SyncState {
    rules: RuleConfig,
    /// What the kernel holds, per service port key.
    applied: HashMap<String, (ServicePort, Rendered)>,
    need_full: bool,
    last_full: Instant,
}

impl SyncState {
    /// One sync; the number of changes and the script's size, or None when nothing changed.
    async fn sync(
        &mut self,
        nft: &Nft,
        services: &Store<Service>,
        slices: &Store<EndpointSlice>,
    ) -> Result<Option<(usize, usize)>, ProxyError> {
        let all_slices = slices.state();
        let by_service = model::slices_by_service(all_slices.iter().map(|s| s.as_ref()));
        let mut desired: HashMap<String, ServicePort> = HashMap::new();
        for svc in services.state() {
            let key = (
                svc.metadata.namespace.clone().unwrap_or_default(),
                svc.metadata.name.clone().unwrap_or_default(),
            );
            let own = by_service.get(&key).map(Vec::as_slice).unwrap_or(&[]);
            for sp in model::service_ports(&svc, own) {
                desired.insert(sp.key(), sp);
            }
        }
        let mut next: HashMap<String, (ServicePort, Rendered)> =
            HashMap::with_capacity(desired.len());
        let mut tx = Transaction::default();
        let empty = Rendered::default();
        for (key, sp) in desired {
            match self.applied.get(&key) {
                Some((old_sp, old_r)) if *old_sp == sp => {
                    next.insert(key, (sp, old_r.clone()));
                }
                old => {
                    let r = self.rules.render(&sp);
                    tx.diff(&self.rules, old.map(|(_, r)| r).unwrap_or(&empty), &r);
                    next.insert(key, (sp, r));
                }
            }
        }
        for (key, (_, old_r)) in &self.applied {
            if !next.contains_key(key) {
                tx.diff(&self.rules, old_r, &empty);
            }
        }
        let (script, changed) = if self.need_full {
            let s = rules::full_script(&self.rules, next.values().map(|(_, r)| r));
            (s, next.len().max(1))
        } else if tx.is_empty() {
            self.applied = next;
            return Ok(None);
        } else {
            (tx.script(), tx.changed)
        };
        nft.apply(&script).await?;
        if self.need_full {
            self.need_full = false;
            self.last_full = Instant::now();
        }
        self.applied = next;
        Ok(Some((changed, script.len())))
    }
}
