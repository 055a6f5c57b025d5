//! The embedding API: open storage, start Raft, serve the client and peer APIs, shut down cleanly.
//!
//! The one place that wires every layer together; nothing imports it but `lib` and the binary.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cairn_server::NodeError> {
//! let node = cairn_server::Node::start(cairn_server::Config::ephemeral("/tmp/cairn-demo")).await?;
//! println!("etcd API at {}", node.client_url());
//! node.shutdown().await?;
//! # Ok(()) }
//! ```

use openraft::async_runtime::WatchReceiver;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use cairn_proto::etcdserverpb::{
    auth_server, cluster_server, kv_server, lease_server, maintenance_server, watch_server,
};
use cairn_proto::raftpb::raft_transport_server::RaftTransportServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

use crate::command::Command;
use crate::config::{ClusterState, Config, ConfigError};
use crate::grpc::auth::AuthService;
use crate::grpc::authority::AuthorityFix;
use crate::grpc::cluster::ClusterService;
use crate::grpc::election::ElectionService;
use crate::grpc::kv::KvService;
use crate::grpc::lease::LeaseService;
use crate::grpc::lock::LockService;
use crate::grpc::maintenance::MaintenanceService;
use crate::grpc::watch::WatchService;
use crate::grpc::{AuthAccess, Limits, ServerContext};
use crate::members;
use crate::metrics::{HttpLayer, Metrics};
use crate::raft::admin::{AdminCall, AdminReply};
use crate::raft::log_store::{ClientWork, LogStore, LoneWrites};
use crate::raft::network::{Network, PeerChannels, PEER_MAX_MESSAGE};
use crate::raft::peer::{CallError, PeerClient};
use crate::raft::service::PeerService;
use crate::raft::state_machine::StateMachineStore;
use crate::raft::types::{Member, NodeId, Raft};
use crate::raft::{HandleSettings, RaftHandle};
use crate::storage::{Backend, LogMeta, LogRows};
use crate::tls::MemberTls;
use cairn_proto::v3electionpb::election_server::ElectionServer;
use cairn_proto::v3lockpb::lock_server::LockServer;

/// Extra room gRPC needs around the largest request, as etcd allows.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("storage: {0}")]
    Storage(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("joining the cluster: {0}")]
    Join(String),
    #[error("restoring: {0}")]
    Restore(String),
    #[error("{0}")]
    Tls(String),
    #[error(transparent)]
    AuthToken(#[from] crate::auth::TokenError),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodeError {
    let context = context.into();
    move |source| NodeError::Io { context, source }
}

fn storage(e: impl std::fmt::Display) -> NodeError {
    NodeError::Storage(e.to_string())
}

/// A running Cairn member.
pub struct Node {
    member_id: NodeId,
    cluster_id: u64,
    client_addrs: Vec<SocketAddr>,
    /// `http` or `https`: the scheme of the first client listener.
    client_scheme: &'static str,
    peer_addrs: Vec<SocketAddr>,
    raft: RaftHandle,
    backend: Backend,
    shutdown: watch::Sender<bool>,
    servers: Vec<JoinHandle<Result<(), tonic::transport::Error>>>,
    /// Background tasks that hold the storage open; shutdown waits for them to release it.
    tasks: Vec<JoinHandle<()>>,
    removed: watch::Receiver<bool>,
}

async fn bind_all(urls: &[String], what: &str) -> Result<Vec<TcpListener>, NodeError> {
    let mut listeners = Vec::new();
    for url in urls {
        let addr = crate::members::parse_url(url).map_err(ConfigError::from)?;
        listeners.push(
            TcpListener::bind(addr)
                .await
                .map_err(io(format!("binding {what} URL {url}")))?,
        );
    }
    Ok(listeners)
}

/// Advertised URLs default to the bound addresses (which also resolves port 0), each with its
/// listen URL's scheme.
fn advertised(configured: &[String], listen: &[String], bound: &[SocketAddr]) -> Vec<String> {
    if configured.is_empty() || configured.iter().any(|u| u.ends_with(":0")) {
        bound
            .iter()
            .zip(listen)
            .map(|(a, url)| format!("{}://{a}", scheme(url)))
            .collect()
    } else {
        configured.to_vec()
    }
}

/// The member's listeners, bound before anything else so that port 0 resolves to the URLs the
/// member advertises and founds its identity on.
struct Listeners {
    peer: Vec<TcpListener>,
    client: Vec<TcpListener>,
    peer_addrs: Vec<SocketAddr>,
    client_addrs: Vec<SocketAddr>,
    peer_urls: Vec<String>,
    client_urls: Vec<String>,
}

impl Listeners {
    async fn bind(cfg: &Config) -> Result<Listeners, NodeError> {
        let peer = bind_all(&cfg.listen_peer_urls, "peer").await?;
        let client = bind_all(&cfg.listen_client_urls, "client").await?;
        let addrs = |ls: &[TcpListener]| -> Vec<SocketAddr> {
            ls.iter().filter_map(|l| l.local_addr().ok()).collect()
        };
        let (peer_addrs, client_addrs) = (addrs(&peer), addrs(&client));
        Ok(Listeners {
            peer_urls: advertised(
                &cfg.initial_advertise_peer_urls,
                &cfg.listen_peer_urls,
                &peer_addrs,
            ),
            client_urls: advertised(
                &cfg.advertise_client_urls,
                &cfg.listen_client_urls,
                &client_addrs,
            ),
            peer,
            client,
            peer_addrs,
            client_addrs,
        })
    }
}

/// Who this member is and whom it founds a cluster with.
struct Identity {
    member_id: NodeId,
    cluster_id: u64,
    founders: BTreeMap<NodeId, Member>,
}

/// Raft assembled on the storage: the member's handle on it and the tasks that hold the storage.
struct Consensus {
    raft: Raft,
    handle: RaftHandle,
    tasks: Vec<JoinHandle<()>>,
}

impl Node {
    /// Opens (or creates) the member's data dir and starts serving.
    #[tracing::instrument(skip_all, fields(name = %cfg.name, data_dir = %cfg.data_dir.display()))]
    pub async fn start(cfg: Config) -> Result<Node, NodeError> {
        cfg.check_tls()?;
        cfg.check_auth()?;
        let tokens = crate::auth::TokenProvider::parse(&cfg.auth_token)?;
        let backend = open_storage(&cfg)?;
        let tls = MemberTls::prepare(&cfg).map_err(|e| NodeError::Tls(e.to_string()))?;
        let listeners = Listeners::bind(&cfg).await?;
        let identity = identity(&cfg, &backend, &listeners, &tls).await?;
        let (member_id, cluster_id) = (identity.member_id, identity.cluster_id);
        let metrics = Metrics::new(cfg.quota_bytes());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let Consensus {
            raft,
            handle,
            mut tasks,
        } = assemble_raft(
            &cfg,
            &backend,
            identity,
            &metrics,
            &tls,
            shutdown_rx.clone(),
        )
        .await?;
        let (health_reporter, _) = tonic_health::server::health_reporter();
        let health_service = HealthService::new(
            tonic_health::server::HealthService::from_health_reporter(health_reporter.clone()),
        );
        tasks.extend(spawn_member_tasks(
            &cfg,
            &raft,
            &handle,
            &metrics,
            health_reporter,
            &listeners.client_urls,
            &shutdown_rx,
        ));
        let removed = handle.removed();
        let servers = serve(
            &cfg,
            listeners.peer,
            listeners.client,
            Serving {
                raft: &raft,
                handle: &handle,
                metrics: &metrics,
                health: health_service,
                identity: (member_id, cluster_id),
                tls,
                tokens,
            },
            &shutdown_rx,
        )
        .await?;
        tracing::info!(member_id = format!("{member_id:x}"), cluster_id = format!("{cluster_id:x}"),
            client = ?listeners.client_urls, peer = ?listeners.peer_urls, "member started");
        Ok(Node {
            member_id,
            cluster_id,
            client_addrs: listeners.client_addrs,
            client_scheme: cfg.listen_client_urls.first().map_or("http", |u| scheme(u)),
            peer_addrs: listeners.peer_addrs,
            raft: handle,
            backend,
            shutdown,
            servers,
            tasks,
            removed,
        })
    }

    /// Resolves once this member has been removed from the cluster's membership: from then on it
    /// can only serve stale data, so it should be shut down, as etcd does.
    pub async fn removed(&self) {
        let mut rx = self.removed.clone();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// The first address clients can reach this member on.
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addrs[0]
    }

    /// URL of [`Node::client_addr`] (`http://` or `https://`), as etcd clients take it.
    pub fn client_url(&self) -> String {
        format!("{}://{}", self.client_scheme, self.client_addr())
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addrs[0]
    }

    pub fn member_id(&self) -> u64 {
        self.member_id
    }

    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// The member currently believed to lead, if any.
    pub fn leader(&self) -> Option<u64> {
        self.raft.leader()
    }

    /// Stops serving, stops Raft, flushes storage and releases the data dir (it can be reopened
    /// once this returns).
    pub async fn shutdown(self) -> Result<(), NodeError> {
        let _ = self.shutdown.send(true);
        // Graceful shutdown waits for open streams (watches, keep-alives) that may never end on
        // their own: give them a moment, then cut them.
        let grace = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        for mut server in self.servers {
            match tokio::time::timeout_at(grace, &mut server).await {
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "server ended with an error"),
                Ok(_) => {}
                Err(_) => server.abort(),
            }
        }
        self.raft
            .raft()
            .shutdown()
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        self.backend.flush().await.map_err(storage)?;
        drop(self.raft);
        drop(self.backend);
        for task in self.tasks {
            if tokio::time::timeout(std::time::Duration::from_secs(10), task)
                .await
                .is_err()
            {
                tracing::warn!("a background task did not stop within 10 s");
            }
        }
        tracing::info!("member stopped");
        Ok(())
    }
}

/// Opens the data dir's storage, first writing a backup into it when restoring from one.
fn open_storage(cfg: &Config) -> Result<Backend, NodeError> {
    let backup = match &cfg.restore_from {
        Some(file) => Some(
            crate::storage::backup::read_backup(file, &cfg.data_dir)
                .map_err(|e| NodeError::Restore(e.to_string()))?,
        ),
        None => None,
    };
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(io(format!("creating {}", cfg.data_dir.display())))?;
    let backend = Backend::open(&cfg.data_dir, cfg.cache_bytes).map_err(storage)?;
    if let (Some(backup), Some(file)) = (backup, &cfg.restore_from) {
        let revision = crate::storage::backup::write_backup(backup, &backend)
            .map_err(|e| NodeError::Restore(e.to_string()))?;
        tracing::info!(file = %file.display(), revision, "restored the store from a backup");
    }
    Ok(backend)
}

/// The founding members (this member's entry resolved to its real URLs) and this member's ids:
/// fixed at first start (derived, or asked of the cluster it joins) and kept on later starts
/// whatever the flags say, as etcd does.
async fn identity(
    cfg: &Config,
    backend: &Backend,
    listeners: &Listeners,
    tls: &MemberTls,
) -> Result<Identity, NodeError> {
    let (peer_urls, client_urls) = (&listeners.peer_urls, &listeners.client_urls);
    let mut initial = if cfg.initial_cluster.is_empty() {
        vec![(cfg.name.clone(), peer_urls.clone())]
    } else {
        cfg.initial_cluster.clone()
    };
    let me = initial
        .iter_mut()
        .find(|(n, _)| *n == cfg.name)
        .ok_or_else(|| ConfigError::MissingSelf(cfg.name.clone()))?;
    if me.1.iter().any(|u| u.ends_with(":0")) {
        me.1 = peer_urls.clone();
    } else if !cfg.initial_advertise_peer_urls.is_empty() && {
        let (mut a, mut b) = (me.1.clone(), peer_urls.clone());
        a.sort();
        b.sort();
        a != b
    } {
        return Err(ConfigError::SelfMismatch(cfg.name.clone()).into());
    }
    let token = &cfg.initial_cluster_token;
    let founders: BTreeMap<NodeId, Member> = initial
        .iter()
        .map(|(name, urls)| {
            let member = Member {
                name: name.clone(),
                peer_urls: urls.clone(),
                client_urls: if *name == cfg.name {
                    client_urls.clone()
                } else {
                    Vec::new()
                },
                promote: false,
            };
            (members::member_id(name, urls, token), member)
        })
        .collect();
    let log_rows = LogRows::new(backend).map_err(storage)?;
    let (member_id, cluster_id) = match log_rows.meta(LogMeta::Identity).map_err(storage)? {
        Some(identity) => identity,
        None => {
            let (member_id, cluster_id) = if cfg.initial_cluster_state == ClusterState::Existing {
                let channels = PeerChannels::new(tls.dial.clone());
                join_identity(
                    &channels,
                    &initial,
                    &cfg.name,
                    peer_urls,
                    cfg.request_timeout,
                )
                .await?
            } else {
                (
                    members::member_id(&cfg.name, peer_urls, token),
                    members::cluster_id(founders.keys().copied().collect(), token),
                )
            };
            log_rows
                .set_meta(LogMeta::Identity, &(member_id, cluster_id))
                .map_err(storage)?;
            log_rows.flush().await.map_err(storage)?;
            (member_id, cluster_id)
        }
    };
    Ok(Identity {
        member_id,
        cluster_id,
        founders,
    })
}

/// Opens the log and the state machine, starts Raft on them (founding the cluster on a new
/// member's first start) and the member's handle on it.
async fn assemble_raft(
    cfg: &Config,
    backend: &Backend,
    identity: Identity,
    metrics: &Metrics,
    tls: &MemberTls,
    stop: watch::Receiver<bool>,
) -> Result<Consensus, NodeError> {
    let raft_config = openraft::Config {
        cluster_name: cfg.initial_cluster_token.clone(),
        heartbeat_interval: cfg.heartbeat_interval.as_millis() as u64,
        election_timeout_min: cfg.election_timeout.as_millis() as u64,
        election_timeout_max: 2 * cfg.election_timeout.as_millis() as u64,
        install_snapshot_timeout: 10_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cfg.snapshot_count),
        // Enough log behind a snapshot for a briefly lagging member to catch up without one.
        max_in_snapshot_log_to_keep: cfg.snapshot_count.min(1_000),
        // A leader that restarts stands for election again, as etcd's do. Resuming leadership in
        // the same term would serve read indexes from the commit index it recovered, which is
        // not made durable and can lie below writes it acknowledged before the crash: a register
        // run with the leader killed and restarted inside an election timeout read a value older
        // than an acknowledged write. A new term's first entry bounds every read index instead.
        enable_leader_restore: Some(false),
        ..Default::default()
    }
    .validate()
    .map_err(|e| NodeError::Raft(e.to_string()))?;
    let counters = metrics.counters.clone();
    let (log_store, flusher) = LogStore::new(
        backend,
        counters.wal_fsync_duration.clone(),
        ClientWork(vec![
            counters.proposals_pending.clone(),
            counters.reads_pending.clone(),
        ]),
    )
    .map_err(storage)?;
    let sm = StateMachineStore::open(
        backend.clone(),
        cfg.watch_progress_notify_interval,
        counters.apply_duration.clone(),
    )
    .map_err(storage)?;
    let lone_writes = log_store.lone_writes();
    let state = sm.state();
    let channels = PeerChannels::new(tls.dial.clone());
    let network = Network {
        channels: channels.clone(),
    };
    let member_id = identity.member_id;
    let raft = Raft::new(member_id, Arc::new(raft_config), network, log_store, sm)
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
    if cfg.initial_cluster_state == ClusterState::New
        && !raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?
    {
        // Every founder initializes with the same membership; openraft accepts that.
        if let Err(e) = raft.initialize(identity.founders).await {
            tracing::warn!(error = %e, "cluster initialization skipped");
        }
    }
    let mut stop_lone = stop.clone();
    let (handle, mut tasks) = RaftHandle::new(
        raft.clone(),
        member_id,
        channels,
        state,
        HandleSettings {
            request_timeout: cfg.request_timeout,
            election_timeout: cfg.election_timeout,
            cluster_id: identity.cluster_id,
            cluster_token: cfg.initial_cluster_token.clone(),
            counters,
        },
        stop,
    );
    tasks.push(flusher);
    // Keeps the log store told where it syncs lone writes: the member's role decides (see
    // `LoneWrites`).
    let mut server_metrics = raft.server_metrics();
    tasks.push(tokio::spawn(async move {
        loop {
            let role = {
                let m = server_metrics.borrow_watched();
                let mut voters = m.membership_config.membership().voter_ids();
                let leads = m.current_leader == Some(member_id);
                let alone = voters.next() == Some(member_id) && voters.next().is_none();
                match (leads, alone) {
                    (true, true) => LoneWrites::AtOnce,
                    (true, false) => LoneWrites::Flusher,
                    (false, _) => LoneWrites::AtOnceWhileIdle,
                }
            };
            lone_writes.set(role);
            tokio::select! {
                changed = server_metrics.changed() => if changed.is_err() { return },
                _ = stop_lone.wait_for(|s| *s) => return,
            }
        }
    }));
    Ok(Consensus {
        raft,
        handle,
        tasks,
    })
}

/// The member's own background work: auto compaction, leader and health tracking, noticing its
/// removal, publishing its attributes, and feeding watchers from the store.
fn spawn_member_tasks(
    cfg: &Config,
    raft: &Raft,
    handle: &RaftHandle,
    metrics: &Arc<Metrics>,
    health: tonic_health::server::HealthReporter,
    client_urls: &[String],
    stop: &watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let id = handle.id();
    let mut tasks = Vec::new();
    if let Some(policy) = cfg.auto_compaction {
        tasks.push(tokio::spawn(crate::compactor::run(
            handle.clone(),
            id,
            policy,
            stop.clone(),
        )));
    }
    tasks.push(tokio::spawn(watch_leader(
        raft.clone(),
        metrics.clone(),
        health,
        stop.clone(),
    )));
    tasks.push(tokio::spawn(watch_removal(
        handle.clone(),
        id,
        stop.clone(),
    )));
    tasks.push(tokio::spawn(publish(
        handle.clone(),
        id,
        cfg.name.clone(),
        client_urls.to_vec(),
        stop.clone(),
    )));
    let history: Arc<dyn crate::watch::History> = handle.state().clone();
    tasks.push(tokio::spawn(
        handle
            .state()
            .hub()
            .clone()
            .sync_loop(history, stop.clone()),
    ));
    tasks
}

/// What the listeners serve.
struct Serving<'a> {
    raft: &'a Raft,
    handle: &'a RaftHandle,
    metrics: &'a Arc<Metrics>,
    health: HealthService,
    /// (member id, cluster id)
    identity: (NodeId, u64),
    tls: MemberTls,
    tokens: crate::auth::TokenProvider,
}

type HealthService =
    tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>;

type Server = JoinHandle<Result<(), tonic::transport::Error>>;

/// Serves the three kinds of listener: metrics (plain HTTP), peers (the Raft transport) and
/// clients (the etcd API, with `/health` and `/metrics` too).
async fn serve(
    cfg: &Config,
    peer_listeners: Vec<TcpListener>,
    client_listeners: Vec<TcpListener>,
    with: Serving<'_>,
    shutdown_rx: &watch::Receiver<bool>,
) -> Result<Vec<Server>, NodeError> {
    let Serving {
        raft,
        handle,
        metrics,
        health: health_service,
        identity: (member_id, cluster_id),
        tls,
        tokens,
    } = with;
    let mut servers = Vec::new();
    let http = HttpLayer {
        metrics: metrics.clone(),
        raft: handle.clone(),
    };
    let metrics_listeners = bind_all(&cfg.listen_metrics_urls, "metrics").await?;
    for (listener, url) in metrics_listeners.into_iter().zip(&cfg.listen_metrics_urls) {
        let router = tonic::transport::Server::builder()
            .accept_http1(true)
            .layer(http.clone())
            .add_service(health_service.clone());
        let stop = stopped(shutdown_rx.clone());
        servers.push(match tls_for(url, &tls.client)? {
            Some(config) => tokio::spawn(router.serve_with_incoming_shutdown(
                crate::tls::accept(listener, config, shutdown_rx.clone()),
                stop,
            )),
            None => tokio::spawn(router.serve_with_incoming_shutdown(incoming(listener), stop)),
        });
    }
    for (listener, url) in peer_listeners.into_iter().zip(&cfg.listen_peer_urls) {
        let svc = RaftTransportServer::new(PeerService {
            raft: raft.clone(),
            handle: handle.clone(),
            stop: shutdown_rx.clone(),
        })
        .max_decoding_message_size(PEER_MAX_MESSAGE)
        .max_encoding_message_size(PEER_MAX_MESSAGE);
        let router = tonic::transport::Server::builder().add_service(svc);
        let stop = stopped(shutdown_rx.clone());
        servers.push(match tls_for(url, &tls.peer)? {
            Some(config) => tokio::spawn(router.serve_with_incoming_shutdown(
                crate::tls::accept(listener, config, shutdown_rx.clone()),
                stop,
            )),
            None => tokio::spawn(router.serve_with_incoming_shutdown(incoming(listener), stop)),
        });
    }
    let ctx = ServerContext {
        raft: handle.clone(),
        cluster_id,
        member_id,
        limits: Arc::new(Limits {
            max_request_bytes: cfg.max_request_bytes,
            max_txn_ops: cfg.max_txn_ops,
            min_lease_ttl: (cfg.election_timeout.as_millis() as u64 * 3 / 2).div_ceil(1000) as i64,
            quota_bytes: cfg.quota_bytes(),
        }),
        streams: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        auth: Arc::new(AuthAccess {
            store: {
                let store = handle.state().auth().clone();
                store.tokens.set_ttl(cfg.auth_token_ttl);
                store
            },
            tokens,
            bcrypt_cost: cfg.bcrypt_cost,
            client_cert_auth: cfg.client_tls.client_cert_auth,
        }),
        caller: None,
        reads_pending: metrics.counters.reads_pending.clone(),
    };
    let max_msg = cfg.max_request_bytes + GRPC_OVERHEAD_BYTES;
    for (listener, url) in client_listeners.into_iter().zip(&cfg.listen_client_urls) {
        let kv = kv_server::KvServer::new(KvService { ctx: ctx.clone() })
            .max_decoding_message_size(max_msg);
        let router = tonic::transport::Server::builder()
            // HTTP/1.1 for /health and /metrics, which etcd serves on its client URLs too.
            .accept_http1(true)
            .layer(http.clone())
            .add_service(health_service.clone())
            .add_service(kv)
            .add_service(watch_server::WatchServer::new(WatchService {
                ctx: ctx.clone(),
                shutdown: shutdown_rx.clone(),
            }))
            .add_service(lease_server::LeaseServer::new(LeaseService {
                ctx: ctx.clone(),
                shutdown: shutdown_rx.clone(),
            }))
            .add_service(cluster_server::ClusterServer::new(ClusterService {
                ctx: ctx.clone(),
            }))
            .add_service(LockServer::new(LockService { ctx: ctx.clone() }))
            .add_service(auth_server::AuthServer::new(AuthService {
                ctx: ctx.clone(),
            }))
            .add_service(ElectionServer::new(ElectionService {
                ctx: ctx.clone(),
                shutdown: shutdown_rx.clone(),
            }))
            .add_service(maintenance_server::MaintenanceServer::new(
                MaintenanceService { ctx: ctx.clone() },
            ));
        let stop = stopped(shutdown_rx.clone());
        servers.push(match tls_for(url, &tls.client)? {
            Some(config) => {
                let accepted = crate::tls::accept(listener, config, shutdown_rx.clone())
                    .map(|conn| conn.map(AuthorityFix::new));
                tokio::spawn(router.serve_with_incoming_shutdown(accepted, stop))
            }
            None => {
                tokio::spawn(router.serve_with_incoming_shutdown(client_incoming(listener), stop))
            }
        });
    }
    Ok(servers)
}

/// `http` or `https`: the scheme a listen URL asks for.
fn scheme(url: &str) -> &'static str {
    if crate::config::is_https(url) {
        "https"
    } else {
        "http"
    }
}

/// The TLS an `https://` listener serves with; `None` (plaintext, read directly) for `http://`.
/// An `https://` URL never falls back to plaintext.
fn tls_for(
    url: &str,
    config: &Option<Arc<rustls::ServerConfig>>,
) -> Result<Option<Arc<rustls::ServerConfig>>, NodeError> {
    match (crate::config::is_https(url), config) {
        (false, _) => Ok(None),
        (true, Some(config)) => Ok(Some(config.clone())),
        (true, None) => Err(NodeError::Tls(format!("no TLS certificate for {url}"))),
    }
}

fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|stream| {
            // Small request/response messages: waiting to coalesce packets only adds latency.
            let _ = stream.set_nodelay(true);
        })
    })
}

/// Client connections, read through [`AuthorityFix`] for etcdctl 3.4's sake.
fn client_incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<AuthorityFix<tokio::net::TcpStream>>> {
    incoming(listener).map(|conn| conn.map(AuthorityFix::new))
}

/// Announces this member's name and client URLs through Raft until they are recorded (as etcd
/// publishes member attributes), so MemberList shows how to reach every member.
async fn publish(
    handle: RaftHandle,
    id: NodeId,
    name: String,
    client_urls: Vec<String>,
    mut stop: watch::Receiver<bool>,
) {
    let wanted = (name.clone(), client_urls.clone());
    while handle.state().member_attrs(id).as_ref() != Some(&wanted) {
        let cmd = Command::Publish {
            id,
            name: name.clone(),
            client_urls: client_urls.clone(),
        };
        let result = tokio::select! {
            result = handle.propose(cmd, 64) => result,
            _ = stop.wait_for(|s| *s) => return,
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "publishing member attributes; retrying");
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

/// Counts leader changes and reports gRPC health: SERVING while a leader is known, as etcd does.
async fn watch_leader(
    raft: Raft,
    metrics: Arc<Metrics>,
    health: tonic_health::server::HealthReporter,
    mut stop: watch::Receiver<bool>,
) {
    use tonic_health::ServingStatus;
    let mut rx = raft.metrics();
    let mut last_leader = None;
    let mut last_serving = None;
    loop {
        let leader = rx.borrow_and_update().current_leader;
        if leader.is_some() && leader != last_leader {
            metrics.counters.leader_changes.inc();
            last_leader = leader;
        }
        let serving = leader.is_some();
        if last_serving != Some(serving) {
            let status = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            health.set_service_status("", status).await;
            last_serving = Some(serving);
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

async fn watch_removal(handle: RaftHandle, id: NodeId, mut stop: watch::Receiver<bool>) {
    let mut metrics = handle.raft().metrics();
    let mut seen = false;
    loop {
        let present = metrics
            .borrow_and_update()
            .membership_config
            .membership()
            .get_node(&id)
            .is_some();
        if present {
            seen = true;
        } else if seen {
            handle.mark_removed();
            return;
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// A member joining an existing cluster takes the id the cluster gave it in MemberAdd: it asks the
/// other members listed in `--initial-cluster` for the member list and finds itself by peer URLs.
async fn join_identity(
    channels: &PeerChannels,
    initial: &[(String, Vec<String>)],
    name: &str,
    peer_urls: &[String],
    timeout: std::time::Duration,
) -> Result<(u64, u64), NodeError> {
    let mut mine = peer_urls.to_vec();
    mine.sort();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_error = String::from("no other member listed in --initial-cluster");
    loop {
        for url in initial
            .iter()
            .filter(|(n, _)| n != name)
            .flat_map(|(_, urls)| urls)
        {
            let mut client = match PeerClient::new(channels, url) {
                Ok(c) => c,
                Err(e) => {
                    last_error = format!("{url}: {e}");
                    continue;
                }
            };
            let answer = match client
                .admin(&AdminCall::Members, std::time::Duration::from_secs(2))
                .await
            {
                Ok(answer) => answer,
                Err(CallError::Timeout(status) | CallError::Status(status)) => {
                    last_error = format!("{url}: {}", status.message());
                    continue;
                }
                Err(e) => return Err(storage(e)),
            };
            if let Ok(Ok(AdminReply::Members {
                cluster_id,
                members,
            })) = answer
            {
                let me = members.iter().find(|m| {
                    let mut urls = m.peer_urls.clone();
                    urls.sort();
                    urls == mine
                });
                return match me {
                    Some(m) => {
                        tracing::info!(
                            member_id = format!("{:x}", m.id),
                            "joining existing cluster"
                        );
                        Ok((m.id, cluster_id))
                    }
                    None => Err(NodeError::Join(format!(
                        "no member of the cluster has peer URLs {peer_urls:?}; add this member \
                         with MemberAdd first"
                    ))),
                };
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(NodeError::Join(format!(
                "could not reach the cluster to join it: {last_error}"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}
