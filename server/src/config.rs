//! Typed, validated member configuration, with etcd's flag names and defaults.
//!
//! A leaf below everything that reads it: it must never import `raft/`, `storage/` or `grpc/`.

use crate::members::{parse_url, UrlError};
use std::path::PathBuf;
use std::time::Duration;

/// Whether this member starts a new cluster or joins an existing one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ClusterState {
    #[default]
    New,
    Existing,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error("invalid --initial-cluster entry {0:?}: expected name=url")]
    InitialCluster(String),
    #[error("--initial-cluster has no entry for this member's name {0:?}")]
    MissingSelf(String),
    #[error("--initial-cluster entry for {0:?} does not match --initial-advertise-peer-urls")]
    SelfMismatch(String),
    /// An `https://` URL with nothing to serve TLS with: refusing beats serving plaintext on it.
    #[error(
        "TLS key/cert (--{prefix}cert-file, --{prefix}key-file) must be provided for {side} url \
         {url} with HTTPS scheme (or use --{prefix}auto-tls)"
    )]
    HttpsWithoutCerts {
        side: &'static str,
        prefix: &'static str,
        url: String,
    },
    #[error("invalid TLS flags: {0}")]
    Tls(String),
    #[error("invalid --bcrypt-cost {0}: must be between 4 and 31")]
    BcryptCost(u32),
}

/// One side's TLS (client or peer), as etcd's `--cert-file --key-file --trusted-ca-file
/// --client-cert-auth --auto-tls` (and their `--peer-` twins) describe it. Used only on `https://`
/// URLs; `http://` ones stay plaintext whatever is set here.
#[derive(Clone, Debug, Default)]
pub struct TlsInfo {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// The CA that certificates of callers (and, for peers, of the members dialed) must chain to.
    pub trusted_ca_file: Option<PathBuf>,
    /// Refuse callers without a certificate signed by `trusted_ca_file`.
    pub client_cert_auth: bool,
    /// Without `cert_file`/`key_file`, serve a self-signed certificate kept in the data dir.
    pub auto_tls: bool,
}

impl TlsInfo {
    /// Whether there is a certificate to serve (given, or generated on start).
    pub fn has_certificate(&self) -> bool {
        (self.cert_file.is_some() && self.key_file.is_some()) || self.auto_tls
    }

    fn check(
        &self,
        side: &'static str,
        prefix: &'static str,
        urls: &[String],
    ) -> Result<(), ConfigError> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(ConfigError::Tls(format!(
                "--{prefix}cert-file and --{prefix}key-file must be given together"
            )));
        }
        if self.client_cert_auth && self.trusted_ca_file.is_none() {
            return Err(ConfigError::Tls(format!(
                "--{prefix}client-cert-auth needs --{prefix}trusted-ca-file"
            )));
        }
        if let Some(url) = urls.iter().find(|u| is_https(u)) {
            if !self.has_certificate() {
                return Err(ConfigError::HttpsWithoutCerts {
                    side,
                    prefix,
                    url: url.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Whether a listen or peer URL asks for TLS.
pub fn is_https(url: &str) -> bool {
    url.trim().starts_with("https://")
}

/// A member's configuration. [`Config::default`] is the embedded default: one member named
/// `default`, data in `./default.cairn`, clients on 127.0.0.1:2379, peers on 127.0.0.1:2380.
#[derive(Clone, Debug)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client_urls: Vec<String>,
    pub advertise_client_urls: Vec<String>,
    pub listen_peer_urls: Vec<String>,
    pub initial_advertise_peer_urls: Vec<String>,
    /// `(name, peer URLs)` per founding member; empty means "just this member".
    pub initial_cluster: Vec<(String, Vec<String>)>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    pub heartbeat_interval: Duration,
    pub election_timeout: Duration,
    /// Applied entries between snapshots; the log before a snapshot is purged.
    pub snapshot_count: u64,
    /// sled page cache size.
    pub cache_bytes: u64,
    /// How long a request may wait for a leader and for its commit.
    pub request_timeout: Duration,
    /// Largest accepted request, as etcd's `--max-request-bytes`.
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    /// How often watchers that asked for progress notifications get one when idle.
    pub watch_progress_notify_interval: Duration,
    /// Space quota (etcd's `--quota-backend-bytes`): past it the NOSPACE alarm is raised and writes
    /// that add data fail until space is freed and the alarm disarmed. 0 = the 2 GiB default,
    /// negative = no quota.
    pub quota_backend_bytes: i64,
    /// Build the data dir from this snapshot file before starting (it must not exist yet): one
    /// saved from etcd or from Cairn (etcd's format), or an older Cairn backup.
    pub restore_from: Option<PathBuf>,
    /// When the leader compacts on its own (etcd's `--auto-compaction-mode/-retention`).
    pub auto_compaction: Option<AutoCompaction>,
    /// Extra listeners for /metrics and /health (the client URLs serve them too); `https://` ones
    /// serve TLS with the client certificate.
    pub listen_metrics_urls: Vec<String>,
    /// TLS on `https://` client URLs.
    pub client_tls: TlsInfo,
    /// TLS on `https://` peer URLs, and for dialing other members' `https://` peer URLs.
    pub peer_tls: TlsInfo,
    /// etcd's `--auth-token`: `simple`, or `jwt,pub-key=PATH,priv-key=PATH,sign-method=RS256,ttl=5m`.
    pub auth_token: String,
    /// How long a simple token lives after its last use (etcd's `--auth-token-ttl`).
    pub auth_token_ttl: Duration,
    /// bcrypt cost of the password hashes (etcd's `--bcrypt-cost`, 4 to 31).
    pub bcrypt_cost: u32,
}

/// etcd's auto-compaction policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Keep the history of the last this long.
    Periodic(Duration),
    /// Keep the last this many revisions.
    Revision(i64),
}

/// etcd's default space quota.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 * 1024 * 1024 * 1024;

impl Config {
    /// The effective space quota in bytes (0 = none).
    pub fn quota_bytes(&self) -> u64 {
        match self.quota_backend_bytes {
            q if q < 0 => 0,
            0 => DEFAULT_QUOTA_BYTES,
            q => q as u64,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: "default".into(),
            data_dir: PathBuf::from("default.cairn"),
            listen_client_urls: vec!["http://127.0.0.1:2379".into()],
            advertise_client_urls: vec!["http://127.0.0.1:2379".into()],
            listen_peer_urls: vec!["http://127.0.0.1:2380".into()],
            initial_advertise_peer_urls: vec!["http://127.0.0.1:2380".into()],
            initial_cluster: Vec::new(),
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: "cairn-cluster".into(),
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            snapshot_count: 10_000,
            cache_bytes: 8 * 1024 * 1024,
            request_timeout: Duration::from_secs(7),
            max_request_bytes: 1024 * 1024 + 512 * 1024,
            max_txn_ops: 128,
            watch_progress_notify_interval: Duration::from_secs(600),
            quota_backend_bytes: 0,
            restore_from: None,
            auto_compaction: None,
            listen_metrics_urls: Vec::new(),
            client_tls: TlsInfo::default(),
            peer_tls: TlsInfo::default(),
            auth_token: "simple".into(),
            auth_token_ttl: Duration::from_secs(300),
            bcrypt_cost: 10,
        }
    }
}

impl Config {
    /// A single member listening on OS-assigned loopback ports, for embedding and tests.
    pub fn ephemeral(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            listen_client_urls: vec!["http://127.0.0.1:0".into()],
            advertise_client_urls: Vec::new(),
            listen_peer_urls: vec!["http://127.0.0.1:0".into()],
            initial_advertise_peer_urls: Vec::new(),
            ..Config::default()
        }
    }

    /// Refuses TLS flags that cannot work together, and `https://` URLs with no certificate to
    /// serve on them (etcd refuses those too, rather than serve plaintext).
    pub fn check_tls(&self) -> Result<(), ConfigError> {
        let client_side: Vec<String> = (self.listen_client_urls.iter())
            .chain(&self.listen_metrics_urls)
            .cloned()
            .collect();
        self.client_tls.check("client", "", &client_side)?;
        self.peer_tls
            .check("peer", "peer-", &self.listen_peer_urls)?;
        let dials_https = self
            .initial_cluster
            .iter()
            .flat_map(|(_, urls)| urls)
            .chain(&self.listen_peer_urls)
            .any(|u| is_https(u));
        if dials_https && self.peer_tls.trusted_ca_file.is_none() && !self.peer_tls.auto_tls {
            return Err(ConfigError::Tls(
                "members reached over https need --peer-trusted-ca-file to verify them (or \
                 --peer-auto-tls)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Refuses a bcrypt cost the hash function does not accept.
    pub fn check_auth(&self) -> Result<(), ConfigError> {
        if !(4..=31).contains(&self.bcrypt_cost) {
            return Err(ConfigError::BcryptCost(self.bcrypt_cost));
        }
        Ok(())
    }

    /// Parses etcd's `--initial-cluster` form: `a=http://h:p,b=http://h:p`.
    pub fn parse_initial_cluster(s: &str) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
        let mut members: Vec<(String, Vec<String>)> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, url) = part
                .split_once('=')
                .ok_or_else(|| ConfigError::InitialCluster(part.to_string()))?;
            parse_url(url)?;
            match members.iter_mut().find(|(n, _)| n == name) {
                Some((_, urls)) => urls.push(url.to_string()),
                None => members.push((name.to_string(), vec![url.to_string()])),
            }
        }
        Ok(members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_cluster_parses_and_groups_urls() {
        let c = Config::parse_initial_cluster(
            "a=http://127.0.0.1:1,b=http://127.0.0.1:2,a=http://127.0.0.1:3",
        )
        .unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].1, vec!["http://127.0.0.1:1", "http://127.0.0.1:3"]);
        assert!(Config::parse_initial_cluster("nonsense").is_err());
    }
}
