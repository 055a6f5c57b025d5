//! `cairn`: run one Cairn member. With no flags, a single-member store with its data in
//! `./default.cairn` and the etcd API on 127.0.0.1:2379.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use cairn_server::{ClusterState, Config, Node, TlsInfo};
use clap::{Parser, ValueEnum};

// Under write load glibc's allocator took about a quarter of each member's CPU (consolidating and
// unlinking freed chunks of short-lived request, entry and tree-node buffers).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How often freed memory is offered back to the system; mimalloc's purge delay is one second.
const PURGE_INTERVAL: Duration = Duration::from_secs(1);

/// mimalloc gives back memory freed a purge delay ago only from inside a later free of a whole
/// page, so what a member frees just before it goes quiet stays resident until it is busy again:
/// an idle member kept 4 MiB of its start-up's allocations for good (19.2 MiB resident against 15.1
/// with this thread). Under load the frees ask anyway, so this adds no purging there.
fn purge_freed_memory_periodically() -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("mem-purge".into())
        .spawn(|| loop {
            std::thread::sleep(PURGE_INTERVAL);
            // Not forced: only memory free for the purge delay goes, as it would on a free.
            #[allow(unsafe_code)]
            // SAFETY: `mi_collect` takes no pointers and may be called from any thread.
            unsafe {
                libmimalloc_sys::mi_collect(false)
            };
        })?;
    Ok(())
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum InitialState {
    New,
    Existing,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Flag names and defaults follow etcd's.
#[derive(Parser, Debug)]
#[command(
    name = "cairn",
    version,
    about = "Cairn: a Raft-replicated key-value store speaking etcd's v3 API"
)]
struct Args {
    /// Human-readable name for this member.
    #[arg(long, default_value = "default")]
    name: String,
    /// Path to the data directory (default: <name>.cairn).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Comma-separated URLs to listen on for client traffic.
    #[arg(long, default_value = "http://127.0.0.1:2379", value_delimiter = ',')]
    listen_client_urls: Vec<String>,
    /// Comma-separated client URLs to advertise to the cluster (default: the listen URLs).
    #[arg(long, value_delimiter = ',')]
    advertise_client_urls: Vec<String>,
    /// Comma-separated URLs to listen on for peer traffic.
    #[arg(long, default_value = "http://127.0.0.1:2380", value_delimiter = ',')]
    listen_peer_urls: Vec<String>,
    /// Comma-separated peer URLs to advertise to the cluster (default: the listen URLs).
    #[arg(long, value_delimiter = ',')]
    initial_advertise_peer_urls: Vec<String>,
    /// Initial cluster configuration for bootstrapping: name=url,name=url.
    #[arg(long)]
    initial_cluster: Option<String>,
    /// `new` for a new cluster, `existing` to join one.
    #[arg(long, value_enum, default_value = "new")]
    initial_cluster_state: InitialState,
    /// Initial cluster token, mixed into member and cluster ids.
    #[arg(long, default_value = "cairn-cluster")]
    initial_cluster_token: String,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, default_value_t = 100)]
    heartbeat_interval: u64,
    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, default_value_t = 1000)]
    election_timeout: u64,
    /// Number of applied entries between snapshots (the log before a snapshot is purged).
    #[arg(long, default_value_t = 10_000)]
    snapshot_count: u64,
    /// Maximum client request size in bytes.
    #[arg(long, default_value_t = 1_572_864)]
    max_request_bytes: usize,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long, default_value_t = 128)]
    max_txn_ops: usize,
    /// Raise the NOSPACE alarm when the stored key revisions pass this many bytes (0 = 2 GiB,
    /// negative = no quota).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    quota_backend_bytes: i64,
    /// Auto compaction: `periodic` (keep --auto-compaction-retention of history) or `revision`
    /// (keep that many revisions).
    #[arg(long, default_value = "periodic")]
    auto_compaction_mode: String,
    /// For periodic mode a duration (`30m`, `1h`; a bare number means hours), for revision mode a
    /// count; 0 turns auto compaction off.
    #[arg(long, default_value = "0")]
    auto_compaction_retention: String,
    /// Build a fresh data dir from this snapshot file (saved by `etcdctl snapshot save` from etcd or
    /// from Cairn) and found a new cluster on it. The data dir must not exist yet.
    #[arg(long)]
    restore_from: Option<PathBuf>,
    /// Comma-separated URLs to serve /metrics and /health on, besides the client URLs (https://
    /// ones with the client certificate).
    #[arg(long, value_delimiter = ',')]
    listen_metrics_urls: Vec<String>,
    /// Log level: error, warn, info, debug or trace (or a tracing filter directive).
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Path to the client server TLS cert file (served on https:// client URLs).
    #[arg(long)]
    cert_file: Option<PathBuf>,
    /// Path to the client server TLS key file.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Path to the client server TLS trusted CA cert file.
    #[arg(long)]
    trusted_ca_file: Option<PathBuf>,
    /// Require clients to present a certificate signed by --trusted-ca-file.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    client_cert_auth: bool,
    /// Client TLS using a generated self-signed certificate (kept in <data-dir>/fixtures/client).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    auto_tls: bool,
    /// Path to the peer server TLS cert file (also presented when dialing other members).
    #[arg(long)]
    peer_cert_file: Option<PathBuf>,
    /// Path to the peer server TLS key file.
    #[arg(long)]
    peer_key_file: Option<PathBuf>,
    /// Path to the peer server TLS trusted CA file (other members are verified against it).
    #[arg(long)]
    peer_trusted_ca_file: Option<PathBuf>,
    /// Require members to present a certificate signed by --peer-trusted-ca-file.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    peer_client_cert_auth: bool,
    /// Peer TLS using a generated self-signed certificate (kept in <data-dir>/fixtures/peer).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    peer_auto_tls: bool,
    /// Auth token type and options: `simple`, or `jwt,pub-key=PATH,priv-key=PATH,
    /// sign-method=RS256,ttl=5m`.
    #[arg(long, default_value = "simple")]
    auth_token: String,
    /// Seconds a simple token stays valid after its last use.
    #[arg(long, default_value_t = 300)]
    auth_token_ttl: u64,
    /// Cost of the bcrypt password hashes (4 to 31).
    #[arg(long, default_value_t = 10)]
    bcrypt_cost: u32,
}

impl Args {
    fn into_config(self) -> anyhow::Result<Config> {
        let initial_cluster = match &self.initial_cluster {
            Some(s) => Config::parse_initial_cluster(s)?,
            None => Vec::new(),
        };
        let defaults = Config::default();
        let auto_compaction = cairn_server::parse_auto_compaction(
            &self.auto_compaction_mode,
            &self.auto_compaction_retention,
        )
        .map_err(anyhow::Error::msg)?;
        let advertise_client_urls = if self.advertise_client_urls.is_empty() {
            self.listen_client_urls.clone()
        } else {
            self.advertise_client_urls
        };
        let initial_advertise_peer_urls = if self.initial_advertise_peer_urls.is_empty() {
            self.listen_peer_urls.clone()
        } else {
            self.initial_advertise_peer_urls
        };
        Ok(Config {
            data_dir: self
                .data_dir
                .unwrap_or_else(|| PathBuf::from(format!("{}.cairn", self.name))),
            name: self.name,
            listen_client_urls: self.listen_client_urls,
            advertise_client_urls,
            listen_peer_urls: self.listen_peer_urls,
            initial_advertise_peer_urls,
            initial_cluster,
            initial_cluster_state: match self.initial_cluster_state {
                InitialState::New => ClusterState::New,
                InitialState::Existing => ClusterState::Existing,
            },
            initial_cluster_token: self.initial_cluster_token,
            heartbeat_interval: Duration::from_millis(self.heartbeat_interval),
            election_timeout: Duration::from_millis(self.election_timeout),
            snapshot_count: self.snapshot_count,
            max_request_bytes: self.max_request_bytes,
            max_txn_ops: self.max_txn_ops,
            quota_backend_bytes: self.quota_backend_bytes,
            restore_from: self.restore_from,
            auto_compaction,
            listen_metrics_urls: self.listen_metrics_urls,
            client_tls: TlsInfo {
                cert_file: self.cert_file,
                key_file: self.key_file,
                trusted_ca_file: self.trusted_ca_file,
                client_cert_auth: self.client_cert_auth,
                auto_tls: self.auto_tls,
            },
            peer_tls: TlsInfo {
                cert_file: self.peer_cert_file,
                key_file: self.peer_key_file,
                trusted_ca_file: self.peer_trusted_ca_file,
                client_cert_auth: self.peer_client_cert_auth,
                auto_tls: self.peer_auto_tls,
            },
            auth_token: self.auth_token,
            auth_token_ttl: Duration::from_secs(self.auth_token_ttl),
            bcrypt_cost: self.bcrypt_cost,
            ..defaults
        })
    }
}

fn init_tracing(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(format!(
        "{level},openraft=warn,h2=warn,tower=warn,sled=warn"
    ))
    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// Worker threads for the member's runtime: `TOKIO_WORKER_THREADS` if set, else half the CPUs
/// (at least one). A write crosses many tasks (client stream, proposer, Raft core, replication,
/// peer streams, apply), and with a worker per CPU each crossing tends to wake a parked worker on
/// another CPU: on 2 CPUs one worker cut the context switches per write by 40 % and raised
/// throughput. The other half is left to the log's sync thread, sled's IO threads and the kernel's
/// network work, which all run beside the workers.
///
/// One worker still runs on the multi-thread scheduler, not the current-thread one. That one also
/// runs woken tasks in order (see [`run_woken_tasks_in_order`]), but with clients on both the
/// leader and its followers it made the 16-client puts 5 % slower (docs/benchmarks.md, "A
/// current-thread runtime").
fn worker_threads() -> usize {
    if let Some(n) = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
    {
        return n;
    }
    std::thread::available_parallelism()
        .map(|n| n.get() / 2)
        .unwrap_or(1)
        .max(1)
}

/// How many tasks a worker runs from its own queue before it looks at the runtime's shared one.
/// Wake-ups from outside the workers land in the shared queue, and the log's sync thread is the
/// one that matters: its end of an `fdatasync` is what lets a leader commit and a follower answer
/// the append the leader's quorum waits on. Left to itself the runtime spaces the looks about
/// 200 µs of work apart, so under load that wake-up can wait behind client requests; looking
/// every fourth task bounds the wait to a few polls, and a look at an empty shared queue is one
/// atomic load. Measured in docs/benchmarks.md ("The sync thread's wake-up first").
const GLOBAL_QUEUE_INTERVAL: u32 = 4;

/// A worker runs the tasks it woke in the order it woke them, instead of running the last one
/// woken next. Applying an entry answers all its proposers at once; run next, each answered
/// request's HTTP/2 connection writes that one answer to its socket before the next proposer is
/// answered, so a connection carrying many of them wrote once per answer (1.14 `writev` per write
/// at 256 clients). In order, every answer of the entry is queued first and each connection
/// writes them together (0.21 per write). 256-client puts gained 13 %, compare-and-swap and
/// linearizable gets 10 and 12 %, the 1- and 16-client rows were unchanged (docs/benchmarks.md,
/// "Woken tasks run in order").
///
/// tokio offers the switch only to builds with `--cfg tokio_unstable`, which
/// `.cargo/config.toml` sets; a build with `RUSTFLAGS` of its own replaces that and keeps the
/// runtime's default order.
fn run_woken_tasks_in_order(runtime: &mut tokio::runtime::Builder) {
    #[cfg(tokio_unstable)]
    runtime.disable_lifo_slot();
    #[cfg(not(tokio_unstable))]
    let _ = runtime;
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(&args.log_level, args.log_format);
    purge_freed_memory_periodically().context("starting the memory purge thread")?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime
        .worker_threads(worker_threads())
        .global_queue_interval(GLOBAL_QUEUE_INTERVAL)
        .enable_all();
    run_woken_tasks_in_order(&mut runtime);
    runtime
        .build()
        .context("starting the runtime")?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = args.into_config()?;
    let node = Node::start(config).await.context("starting member")?;
    let signal = tokio::select! {
        signal = shutdown_signal() => signal?,
        _ = node.removed() => "removed from the cluster",
    };
    tracing::info!(reason = signal, "shutting down");
    node.shutdown().await.context("shutting down")?;
    Ok(())
}
