//! The etcd v3 client API: one file per service. Each handler validates, proposes or reads, fills
//! the response header and maps errors to etcd's statuses.
//!
//! The top of the server: it may use `raft` (propose, read index, membership), `storage` (local
//! reads), `mvcc`, `watch`, `lease` and `auth` (who a request comes from and what it may do, checked
//! in one place: [`ServerContext::auth_info`] and the checks beside it); nothing below may import it. Protobuf types stay here.

pub(crate) mod auth;
pub(crate) mod authority;
pub(crate) mod cluster;
pub(crate) mod convert;
pub(crate) mod election;
pub(crate) mod kv;
pub(crate) mod lease;
pub(crate) mod lock;
pub(crate) mod maintenance;
pub(crate) mod recipes;
pub(crate) mod watch;

use std::sync::Arc;

use cairn_proto::etcdserverpb::ResponseHeader;

use crate::auth::{AuthError, AuthInfo, AuthStore, TokenProvider};
use crate::command::{Command, ALARM_NOSPACE};
use crate::error::ServerError;
use crate::raft::RaftHandle;

/// What every service handler needs.
#[derive(Clone)]
pub(crate) struct ServerContext {
    pub raft: RaftHandle,
    pub cluster_id: u64,
    pub member_id: u64,
    pub limits: Arc<Limits>,
    /// Ids for watch streams, including the private ones of the lock and election services.
    pub streams: Arc<std::sync::atomic::AtomicU64>,
    pub auth: Arc<AuthAccess>,
    /// For the services that act for a caller over several steps (lock, election): the caller's
    /// credentials, checked at each step. `None` for the member's own work.
    pub caller: Option<Arc<Credentials>>,
    /// Range requests being served (see `Counters::reads_pending`).
    pub reads_pending: prometheus_client::metrics::gauge::Gauge,
}

/// What the services need to tell who a request comes from and what it may do.
pub(crate) struct AuthAccess {
    /// The state machine's auth store.
    pub store: Arc<AuthStore>,
    pub tokens: TokenProvider,
    pub bcrypt_cost: u32,
    /// Whether callers' verified client certificates name them (etcd's `--client-cert-auth`).
    pub client_cert_auth: bool,
}

pub(crate) struct Limits {
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    /// Shorter lease TTLs are raised to this (seconds): 1.5 election timeouts, as etcd.
    pub min_lease_ttl: i64,
    /// Space quota in bytes of stored key revisions; 0 = none.
    pub quota_bytes: u64,
}

/// A request's token (`Err` if not text) and, with `--client-cert-auth`, its client
/// certificate's common name. No `Debug`: a token is a password while it lives.
#[derive(Clone, Default)]
pub(crate) struct Credentials {
    token: Option<Result<String, ()>>,
    common_name: Option<String>,
}

/// The common name of the first certificate a caller presented (already verified by the TLS
/// handshake against the trusted CA).
fn common_name<T>(req: &tonic::Request<T>) -> Option<String> {
    let certs = req.peer_certs()?;
    let (_, cert) = x509_parser::parse_x509_certificate(certs.first()?).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

impl ServerContext {
    /// Who `req` comes from while auth is enabled (`None` while it is disabled, the one check
    /// requests make then). See [`ServerContext::resolve`].
    pub fn auth_info<T>(
        &self,
        req: &tonic::Request<T>,
    ) -> impl std::future::Future<Output = Result<Option<AuthInfo>, ServerError>> + Send + '_ {
        // Taken now, so the request itself is not held across the wait.
        let creds = self.auth.store.is_enabled().then(|| self.credentials(req));
        async move {
            match creds {
                None => Ok(None),
                Some(creds) => self.resolve(&creds).await,
            }
        }
    }

    /// What `req` carries to name its caller, kept by streams to check each request they carry.
    pub fn credentials<T>(&self, req: &tonic::Request<T>) -> Credentials {
        Credentials {
            token: req
                .metadata()
                .get("token")
                .map(|t| t.to_str().map(str::to_string).map_err(|_| ())),
            common_name: if self.auth.client_cert_auth {
                common_name(req)
            } else {
                None
            },
        }
    }

    /// The caller `creds` name while auth is enabled: the user of its token, else the common name
    /// of its verified client certificate (with `--client-cert-auth`), else nobody (credentials at
    /// revision 0, which every check refuses with "user name is empty"). A token this member does
    /// not know, or that expired, is refused.
    pub async fn resolve(&self, creds: &Credentials) -> Result<Option<AuthInfo>, ServerError> {
        let auth = &self.auth;
        if !auth.store.is_enabled() {
            return Ok(None);
        }
        if let Some(token) = &creds.token {
            let token = token.as_ref().map_err(|_| AuthError::InvalidAuthToken)?;
            if let Some(info) = auth.tokens.info(&auth.store, token) {
                return Ok(Some(info));
            }
            // A simple token another member issued a moment ago may not be applied here yet
            // (clients spread requests over members): once this member has applied everything
            // committed, it knows every token issued so far.
            if auth.tokens.is_simple() && self.raft.read_index().await.is_ok() {
                if let Some(info) = auth.tokens.info(&auth.store, token) {
                    return Ok(Some(info));
                }
            }
            return Err(AuthError::InvalidAuthToken.into());
        }
        if let Some(user) = &creds.common_name {
            return Ok(Some(AuthInfo {
                user: user.clone(),
                revision: auth.store.revision(),
            }));
        }
        Ok(Some(AuthInfo::default()))
    }

    /// This context acting for the caller of `req`.
    pub fn for_caller<T>(&self, req: &tonic::Request<T>) -> ServerContext {
        ServerContext {
            caller: Some(Arc::new(self.credentials(req))),
            ..self.clone()
        }
    }

    /// Who this context acts for now (see [`ServerContext::for_caller`]).
    pub async fn caller_info(&self) -> Result<Option<AuthInfo>, ServerError> {
        match &self.caller {
            Some(creds) => self.resolve(creds).await,
            None => Ok(None),
        }
    }

    /// Whether `info` may read `key` .. `range_end` (request conventions).
    pub fn check_read(
        &self,
        info: &Option<AuthInfo>,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), ServerError> {
        let Some(info) = info else { return Ok(()) };
        let store = &self.auth.store;
        Ok(store.permitted(&store.read(), info, false, key, range_end)?)
    }

    /// Whether `info` may make an admin call (a root user's).
    pub fn check_admin(&self, info: &Option<AuthInfo>) -> Result<(), ServerError> {
        let Some(info) = info else { return Ok(()) };
        let store = &self.auth.store;
        Ok(store.admin_permitted(&store.read(), info)?)
    }

    /// Refuses `req` unless it comes from a root user (or auth is disabled).
    pub async fn require_admin<T>(&self, req: &tonic::Request<T>) -> Result<(), ServerError> {
        let info = self.auth_info(req).await?;
        self.check_admin(&info)
    }

    /// [`ServerContext::require_admin`] for the Maintenance calls whose refusals etcd passes on
    /// untranslated.
    pub async fn require_admin_untranslated<T>(
        &self,
        req: &tonic::Request<T>,
    ) -> Result<(), ServerError> {
        self.require_admin(req).await.map_err(|e| match e {
            ServerError::Auth(a) => ServerError::AuthUntranslated(a),
            other => other,
        })
    }

    /// `cmd` with the credentials it came with, for apply to check.
    pub fn with_auth(&self, info: Option<AuthInfo>, cmd: Command) -> Command {
        match info {
            None => cmd,
            Some(AuthInfo { user, revision }) => Command::Authed {
                user,
                revision,
                cmd: Box::new(cmd),
            },
        }
    }

    pub fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.raft.term(),
        })
    }

    /// Refuses a change larger than `--max-request-bytes`, as etcd does for every proposal, not
    /// only KV's: a user or role name, or a lock or election value, over the limit is refused
    /// before it reaches the log (and, as a bbolt key in a backup, a page).
    pub(crate) fn check_change_size<T: serde::Serialize>(
        &self,
        change: &T,
    ) -> Result<(), ServerError> {
        let len = crate::codec::encode(change).map_or(usize::MAX, |b| b.len());
        if len > self.limits.max_request_bytes {
            return Err(ServerError::RequestTooLarge);
        }
        Ok(())
    }

    /// Refuses a write that would grow the store while the space quota is exhausted, raising the
    /// NOSPACE alarm (through Raft, for every member to see) the first time the quota is passed.
    pub async fn check_quota(&self, cost: usize) -> Result<(), ServerError> {
        let state = self.raft.state();
        if state.has_alarm(ALARM_NOSPACE) {
            return Err(ServerError::NoSpace);
        }
        let quota = self.limits.quota_bytes;
        if quota > 0 && state.bytes_in_use() + cost as u64 > quota {
            tracing::warn!(
                quota,
                in_use = state.bytes_in_use(),
                "space quota exceeded; raising the NOSPACE alarm"
            );
            let cmd = Command::Alarm {
                activate: true,
                member: self.member_id,
                alarm: ALARM_NOSPACE,
            };
            self.raft.propose(cmd, 32).await?;
            return Err(ServerError::NoSpace);
        }
        Ok(())
    }
}
