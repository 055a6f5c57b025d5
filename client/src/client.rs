//! The shared client handle: endpoints, one lazily dialed gRPC channel per endpoint, and the retry engine
//! every unary call goes through.
//!
//! Invariants:
//! - An idempotent request is retried on the next endpoint, with backoff, until its deadline, whenever the
//!   member could not be reached or answered `Unavailable` (no leader, leader changed, connection reset).
//! - A non-idempotent request is retried only when it provably never left the client (the dial failed or
//!   the connection was refused). Any other failure after sending becomes [`Error::OutcomeUnknown`].
//! - A channel whose connection broke is dropped and re-dialed on next use, so a refused re-dial is seen as
//!   "not sent" rather than mixed with errors from a request in flight.
//! - With a user ([`ConnectOptions::with_user`]), the client authenticates on connect and sends the token
//!   in every request's `token` metadata, as etcd's clients do; a request refused because the token is
//!   unknown, expired or older than the auth store (refused before any effect) gets a new token and is
//!   sent once more.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cairn_proto::etcdserverpb::auth_client::AuthClient;
use cairn_proto::etcdserverpb::AuthenticateRequest;
use tokio::time::Instant;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::{InterceptedService, Interceptor};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use crate::error::{Error, Result};

/// How a [`Client`] dials and retries.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub(crate) dial_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) keep_alive_interval: Duration,
    pub(crate) keep_alive_timeout: Duration,
    pub(crate) discover: bool,
    pub(crate) max_backoff: Duration,
    pub(crate) tls: Option<TlsOptions>,
    pub(crate) user: Option<UserCredentials>,
}

/// A user name and password for servers with auth enabled.
#[derive(Clone)]
pub(crate) struct UserCredentials {
    name: String,
    password: String,
}

impl std::fmt::Debug for UserCredentials {
    // Never print the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserCredentials")
            .field("name", &self.name)
            .finish()
    }
}

/// Puts the auth token, if there is one, in each request's `token` metadata, where etcd looks for it.
#[derive(Clone)]
pub struct TokenInterceptor(Option<AsciiMetadataValue>);

impl Interceptor for TokenInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(token) = &self.0 {
            req.metadata_mut().insert("token", token.clone());
        }
        Ok(req)
    }
}

/// A channel whose requests carry the client's auth token.
pub type AuthedChannel = InterceptedService<Channel, TokenInterceptor>;

/// Refusals that a new token cures: etcd's clients authenticate again on these, and the request was
/// refused before it had any effect.
fn is_token_refusal(code: Code, message: &str) -> bool {
    matches!(
        (code, message),
        (Code::Unauthenticated, "etcdserver: invalid auth token")
            | (
                Code::InvalidArgument,
                "etcdserver: revision of auth store is old"
            )
    )
}

/// TLS for `https://` endpoints, as etcdctl's `--cacert`, `--cert` and `--key` give it. Once set, bare
/// `host:port` endpoints are dialed with `https://` too.
#[derive(Clone, Default)]
pub struct TlsOptions {
    ca_pem: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsOptions {
    // Never print the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("ca", &self.ca_pem.is_some())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

impl TlsOptions {
    /// Without a CA the system's trusted roots verify the server.
    pub fn new() -> Self {
        Self::default()
    }

    /// Verify servers against this CA certificate (PEM) instead of the system's roots.
    pub fn with_ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Present this client certificate and key (PEM), for servers that require one.
    pub fn with_identity(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    fn config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new();
        config = match &self.ca_pem {
            Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
            None => config.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        config
    }
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            dial_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            keep_alive_interval: Duration::from_secs(2),
            keep_alive_timeout: Duration::from_secs(3),
            discover: false,
            max_backoff: Duration::from_millis(500),
            tls: None,
            user: None,
        }
    }
}

impl ConnectOptions {
    /// Defaults: dial timeout 2 s, request deadline 5 s, HTTP/2 keep-alive every 2 s (3 s timeout), no
    /// member discovery.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long to wait for one endpoint's TCP/HTTP2 connection.
    pub fn with_dial_timeout(mut self, timeout: Duration) -> Self {
        self.dial_timeout = timeout;
        self
    }

    /// The deadline of one request, across all its retries.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// HTTP/2 keep-alive pings: a member that stops answering (partition, frozen process) is detected within
    /// `interval + timeout` even on an idle watch stream.
    pub fn with_keep_alive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.keep_alive_interval = interval;
        self.keep_alive_timeout = timeout;
        self
    }

    /// On connect, add the client URLs of every member listed by `MemberList` to the endpoints.
    pub fn with_member_discovery(mut self, discover: bool) -> Self {
        self.discover = discover;
        self
    }

    /// Dial `https://` endpoints (and bare `host:port` ones) with this TLS.
    pub fn with_tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Authenticate as `name` (etcd's `--user`): the token the server gives goes with every request,
    /// and is renewed when the server no longer accepts it. Against a server with auth disabled the
    /// client works without a token.
    pub fn with_user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some(UserCredentials {
            name: name.into(),
            password: password.into(),
        });
        self
    }

    /// Upper bound of the pause between retries.
    pub fn with_max_backoff(mut self, backoff: Duration) -> Self {
        self.max_backoff = backoff;
        self
    }
}

/// A handle to a Cairn or etcd cluster. Cheap to clone; clones share endpoints and connections, and every
/// method takes `&self`, so one client can serve many tasks.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.endpoints())
            .finish()
    }
}

pub(crate) struct Inner {
    pub(crate) options: ConnectOptions,
    slots: RwLock<Vec<Arc<Slot>>>,
    preferred: AtomicUsize,
    /// The token from the last Authenticate, if auth is enabled on the server.
    token: RwLock<Option<AsciiMetadataValue>>,
    /// Held while authenticating, so that many requests refused at once authenticate once.
    authenticating: tokio::sync::Mutex<()>,
}

struct Slot {
    url: String,
    endpoint: Endpoint,
    channel: tokio::sync::Mutex<Option<Channel>>,
}

/// A channel picked for one attempt, with what is needed to report its failure.
pub(crate) struct Picked {
    pub(crate) index: usize,
    pub(crate) url: String,
    pub(crate) channel: Channel,
}

/// Adds `http://` (`https://` when `tls`) to a bare `host:port`.
fn normalize(endpoint: &str, tls: bool) -> String {
    let e = endpoint.trim();
    if e.contains("://") {
        e.to_string()
    } else if tls {
        format!("https://{e}")
    } else {
        format!("http://{e}")
    }
}

impl Client {
    /// Connects to the first reachable endpoint of `endpoints` (`host:port` or `http://host:port`). Other
    /// endpoints are dialed when needed. Fails with [`Error::Unavailable`] when none answers within the dial
    /// timeout.
    pub async fn connect<E, S>(endpoints: E, options: Option<ConnectOptions>) -> Result<Client>
    where
        E: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let options = options.unwrap_or_default();
        let mut slots = Vec::new();
        for e in endpoints {
            let url = normalize(e.as_ref(), options.tls.is_some());
            if slots.iter().any(|s: &Arc<Slot>| s.url == url) {
                continue;
            }
            slots.push(Arc::new(Slot::new(&url, &options)?));
        }
        if slots.is_empty() {
            return Err(Error::InvalidArgument("no endpoints given".into()));
        }
        let client = Client {
            inner: Arc::new(Inner {
                options,
                slots: RwLock::new(slots),
                preferred: AtomicUsize::new(0),
                token: RwLock::new(None),
                authenticating: tokio::sync::Mutex::new(()),
            }),
        };
        let deadline =
            Instant::now() + client.inner.options.dial_timeout * client.slot_count() as u32;
        let first = client.pick(deadline).await?;
        client.inner.preferred.store(first.index, Ordering::Relaxed);
        client.authenticate().await?;
        if client.inner.options.discover {
            client.sync_endpoints().await?;
        }
        Ok(client)
    }

    /// `channel` with this client's current token on every request.
    pub(crate) fn authed(&self, channel: Channel) -> AuthedChannel {
        let token = self
            .inner
            .token
            .read()
            .expect("token lock poisoned")
            .clone();
        InterceptedService::new(channel, TokenInterceptor(token))
    }

    fn token(&self) -> Option<AsciiMetadataValue> {
        self.inner
            .token
            .read()
            .expect("token lock poisoned")
            .clone()
    }

    /// Gets a token for the configured user (nothing without one). A server with auth disabled
    /// answers "authentication is not enabled": the client then sends no token, as etcd's clients.
    pub async fn authenticate(&self) -> Result<()> {
        let Some(user) = self.inner.options.user.clone() else {
            return Ok(());
        };
        let request = AuthenticateRequest {
            name: user.name,
            password: user.password,
        };
        let answer = self
            .unary_as(true, None, |ch, _| {
                let request = request.clone();
                async move {
                    Ok(AuthClient::new(ch)
                        .authenticate(request)
                        .await?
                        .into_inner())
                }
            })
            .await;
        let token = match answer {
            Ok(resp) => Some(AsciiMetadataValue::try_from(resp.token).map_err(|_| {
                Error::InvalidArgument("the server's auth token is not ASCII".into())
            })?),
            Err(Error::Server { message, .. })
                if message == "etcdserver: authentication is not enabled" =>
            {
                None
            }
            Err(e) => return Err(e),
        };
        *self.inner.token.write().expect("token lock poisoned") = token;
        Ok(())
    }

    /// Authenticates again after `refused` (the token the refused request carried), unless another
    /// request already did.
    async fn renew_token(&self, refused: Option<AsciiMetadataValue>) -> Result<()> {
        let _one = self.inner.authenticating.lock().await;
        if self.token() != refused {
            return Ok(());
        }
        self.authenticate().await
    }

    /// The endpoints this client may use, in rotation order.
    pub fn endpoints(&self) -> Vec<String> {
        self.slots().iter().map(|s| s.url.clone()).collect()
    }

    /// Adds the client URLs of every member in `MemberList` to the endpoints. Endpoints are only added, never
    /// removed, so a member that is down for a while is tried again when it returns.
    pub async fn sync_endpoints(&self) -> Result<Vec<String>> {
        let members = self.member_list().await?;
        let mut added = Vec::new();
        {
            let mut slots = self.inner.slots.write().expect("endpoint lock poisoned");
            for url in members.members.iter().flat_map(|m| m.client_ur_ls.iter()) {
                let url = normalize(url, self.inner.options.tls.is_some());
                if slots.iter().any(|s| s.url == url) {
                    continue;
                }
                slots.push(Arc::new(Slot::new(&url, &self.inner.options)?));
                added.push(url);
            }
        }
        Ok(added)
    }

    fn slots(&self) -> Vec<Arc<Slot>> {
        self.inner
            .slots
            .read()
            .expect("endpoint lock poisoned")
            .clone()
    }

    fn slot_count(&self) -> usize {
        self.inner
            .slots
            .read()
            .expect("endpoint lock poisoned")
            .len()
    }

    pub(crate) fn options(&self) -> &ConnectOptions {
        &self.inner.options
    }

    /// Moves the preferred endpoint past `index` and forgets its channel when its connection broke. Only the
    /// first of several concurrent failures of the same endpoint moves it on.
    pub(crate) async fn mark_failed(&self, index: usize, drop_channel: bool) {
        let slots = self.slots();
        let n = slots.len().max(1);
        let _ = self.inner.preferred.compare_exchange(
            index,
            (index + 1) % n,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        if drop_channel {
            if let Some(slot) = slots.get(index) {
                *slot.channel.lock().await = None;
            }
        }
    }

    /// A connected channel: the preferred endpoint first, then the others in turn, until `deadline`.
    pub(crate) async fn pick(&self, deadline: Instant) -> Result<Picked> {
        let mut last = String::from("no endpoint tried");
        let mut attempt = 0u32;
        loop {
            let slots = self.slots();
            let start = self.inner.preferred.load(Ordering::Relaxed) % slots.len();
            for k in 0..slots.len() {
                let index = (start + k) % slots.len();
                let slot = &slots[index];
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    return Err(Error::Unavailable { message: last });
                }
                match slot
                    .channel(remaining.min(self.inner.options.dial_timeout))
                    .await
                {
                    Ok(channel) => {
                        if k > 0 {
                            self.inner.preferred.store(index, Ordering::Relaxed);
                        }
                        return Ok(Picked {
                            index,
                            url: slot.url.clone(),
                            channel,
                        });
                    }
                    Err(e) => {
                        tracing::debug!(endpoint = %slot.url, error = %e, "dial failed");
                        last = format!("{}: {e}", slot.url);
                    }
                }
            }
            attempt += 1;
            let pause = self.backoff(attempt);
            if Instant::now() + pause >= deadline {
                return Err(Error::Unavailable { message: last });
            }
            tokio::time::sleep(pause).await;
        }
    }

    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let base = Duration::from_millis(25) * 2u32.saturating_pow(attempt.min(6));
        base.min(self.inner.options.max_backoff)
    }

    /// Runs one unary call with failover. `call` gets a channel and the time left, and is run again on
    /// another endpoint when that is safe (see the module docs).
    #[tracing::instrument(level = "debug", skip_all, fields(idempotent))]
    pub(crate) async fn unary<T, F, Fut>(&self, idempotent: bool, mut call: F) -> Result<T>
    where
        F: FnMut(AuthedChannel, Duration) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let token = self.token();
        match self.unary_as(idempotent, token.clone(), &mut call).await {
            Err(Error::Server { code, message })
                if self.inner.options.user.is_some() && is_token_refusal(code, &message) =>
            {
                tracing::debug!(%message, "authenticating again");
                self.renew_token(token).await?;
                self.unary_as(idempotent, self.token(), &mut call).await
            }
            other => other,
        }
    }

    /// [`Client::unary`] with `token` (none for Authenticate) on every attempt.
    async fn unary_as<T, F, Fut>(
        &self,
        idempotent: bool,
        token: Option<AsciiMetadataValue>,
        mut call: F,
    ) -> Result<T>
    where
        F: FnMut(AuthedChannel, Duration) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + self.inner.options.request_timeout;
        let mut attempt = 0u32;
        loop {
            let picked = self.pick(deadline).await?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let channel = InterceptedService::new(picked.channel, TokenInterceptor(token.clone()));
            let outcome = tokio::time::timeout(remaining, call(channel, remaining)).await;
            let status = match outcome {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(status)) => status,
                Err(_) if idempotent => {
                    return Err(Error::DeadlineExceeded {
                        message: format!("no answer from {} in time", picked.url),
                    })
                }
                Err(_) => {
                    return Err(Error::OutcomeUnknown {
                        endpoint: picked.url,
                        message: "no answer before the deadline".into(),
                    })
                }
            };
            let broken = is_transport_failure(&status);
            if !is_retryable(&status) {
                if status.code() == Code::DeadlineExceeded && !idempotent {
                    return Err(Error::OutcomeUnknown {
                        endpoint: picked.url,
                        message: status.message().to_string(),
                    });
                }
                return Err(status.into());
            }
            if !idempotent && !was_not_sent(&status) {
                self.mark_failed(picked.index, broken).await;
                return Err(Error::OutcomeUnknown {
                    endpoint: picked.url,
                    message: status.message().to_string(),
                });
            }
            tracing::debug!(endpoint = %picked.url, code = ?status.code(), message = status.message(), "retrying on another endpoint");
            self.mark_failed(picked.index, broken).await;
            attempt += 1;
            let pause = self.backoff(attempt);
            if Instant::now() + pause >= deadline {
                let message = format!("{}: {}", picked.url, status.message());
                return Err(match Error::from(status) {
                    Error::NoLeader => Error::NoLeader,
                    _ => Error::Unavailable { message },
                });
            }
            tokio::time::sleep(pause).await;
        }
    }
}

impl Slot {
    fn new(url: &str, options: &ConnectOptions) -> Result<Slot> {
        let invalid = |e: tonic::transport::Error| Error::InvalidEndpoint {
            endpoint: url.to_string(),
            message: e.to_string(),
        };
        let mut endpoint = Endpoint::from_shared(url.to_string()).map_err(invalid)?;
        if url.starts_with("https://") {
            let tls = options.tls.clone().unwrap_or_default();
            endpoint = endpoint.tls_config(tls.config()).map_err(invalid)?;
        }
        let endpoint = endpoint
            .connect_timeout(options.dial_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(options.keep_alive_interval)
            .keep_alive_timeout(options.keep_alive_timeout)
            .keep_alive_while_idle(true);
        Ok(Slot {
            url: url.to_string(),
            endpoint,
            channel: tokio::sync::Mutex::new(None),
        })
    }

    async fn channel(&self, timeout: Duration) -> Result<Channel, String> {
        let mut cached = self.channel.lock().await;
        if let Some(channel) = cached.as_ref() {
            return Ok(channel.clone());
        }
        match tokio::time::timeout(timeout, self.endpoint.connect()).await {
            Ok(Ok(channel)) => {
                *cached = Some(channel.clone());
                Ok(channel)
            }
            Ok(Err(e)) => Err(error_chain(&e)),
            Err(_) => Err("dial timed out".into()),
        }
    }
}

/// The whole `source()` chain in one line; tonic's top-level transport messages alone say little.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Failures worth trying on another member.
pub(crate) fn is_retryable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable => true,
        // A connection reset mid-call surfaces from hyper as Unknown/Internal with a transport source.
        Code::Unknown | Code::Internal | Code::Cancelled => is_transport_failure(status),
        _ => false,
    }
}

/// The status came from the client's transport (not from a server's answer).
pub(crate) fn is_transport_failure(status: &Status) -> bool {
    use std::error::Error as _;
    status.source().is_some() || status.message().contains("transport error")
}

/// The request never reached a server: the connection was refused or could not be established.
pub(crate) fn was_not_sent(status: &Status) -> bool {
    use std::error::Error as _;
    let mut source: Option<&(dyn std::error::Error + 'static)> = status.source();
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
            ) {
                return true;
            }
        }
        source = e.source();
    }
    status.message().contains("connect error")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_can_be_shared_across_tasks() {
        fn shared<T: Send + Sync + Clone + 'static>() {}
        fn sent<T: Send + 'static>() {}
        shared::<Client>();
        sent::<crate::WatchStream>();
        sent::<crate::LeaseKeeper>();
        sent::<crate::Session>();
        sent::<crate::Mutex>();
        sent::<crate::Election>();
    }

    #[test]
    fn bare_endpoints_get_a_scheme() {
        assert_eq!(normalize("127.0.0.1:2379", false), "http://127.0.0.1:2379");
        assert_eq!(normalize(" http://a:1 ", false), "http://a:1");
        assert_eq!(normalize("127.0.0.1:2379", true), "https://127.0.0.1:2379");
        assert_eq!(normalize("http://a:1", true), "http://a:1");
    }

    #[tokio::test]
    async fn connect_fails_cleanly_when_nothing_listens() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let opts = ConnectOptions::new().with_dial_timeout(Duration::from_millis(300));
        let err = Client::connect([format!("127.0.0.1:{port}")], Some(opts))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    }
}
