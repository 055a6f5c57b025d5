//! Prometheus metrics under etcd's names, so dashboards and alerts written for etcd work unchanged,
//! and the HTTP `/metrics` and `/health` endpoints (served on the client URLs, as etcd does, and on
//! `--listen-metrics-urls`).
//!
//! Observes the member through [`RaftHandle`]; what consensus counts it reads from
//! [`Counters`], which it registers. Nothing below may import it. Must never import `grpc/`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tonic::body::Body;
use tonic::codegen::http;

use crate::command::ALARM_NOSPACE;
use crate::counters::Counters;
use crate::raft::RaftHandle;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcLabels {
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
    grpc_code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StartedLabels {
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
}

/// The figures a member records as it runs. Gauges that mirror live state (leader, indexes, sizes,
/// counts) are read from the member when scraped.
pub struct Metrics {
    registry: Registry,
    has_leader: Gauge,
    is_leader: Gauge,
    /// What consensus counts into; registered here.
    pub(crate) counters: Counters,
    proposals_committed: Gauge,
    proposals_applied: Gauge,
    db_size: Gauge,
    db_size_in_use: Gauge,
    keys: Gauge,
    watchers: Gauge,
    leases: Gauge,
    quota_bytes: Gauge,
    grpc_started: Family<StartedLabels, Counter>,
    grpc_handled: Family<GrpcLabels, Counter>,
}

impl Metrics {
    pub fn new(quota_bytes: u64) -> Arc<Metrics> {
        let mut registry = Registry::default();
        let m = Metrics {
            has_leader: Gauge::default(),
            is_leader: Gauge::default(),
            counters: Counters::default(),
            proposals_committed: Gauge::default(),
            proposals_applied: Gauge::default(),
            db_size: Gauge::default(),
            db_size_in_use: Gauge::default(),
            keys: Gauge::default(),
            watchers: Gauge::default(),
            leases: Gauge::default(),
            quota_bytes: Gauge::default(),
            grpc_started: Family::default(),
            grpc_handled: Family::default(),
            registry: Registry::default(),
        };
        m.quota_bytes.set(quota_bytes as i64);
        let server = registry.sub_registry_with_prefix("etcd_server");
        server.register(
            "has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
            m.has_leader.clone(),
        );
        server.register(
            "is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            m.is_leader.clone(),
        );
        server.register(
            "leader_changes_seen",
            "The number of leader changes seen.",
            m.counters.leader_changes.clone(),
        );
        server.register(
            "proposals_committed_total",
            "The total number of consensus proposals committed.",
            m.proposals_committed.clone(),
        );
        server.register(
            "proposals_applied_total",
            "The total number of consensus proposals applied.",
            m.proposals_applied.clone(),
        );
        server.register(
            "proposals_pending",
            "The current number of pending proposals to commit.",
            m.counters.proposals_pending.clone(),
        );
        server.register(
            "proposals_failed",
            "The total number of failed proposals seen.",
            m.counters.proposals_failed.clone(),
        );
        server.register(
            "quota_backend_bytes",
            "Current backend storage quota size in bytes.",
            m.quota_bytes.clone(),
        );
        let disk = registry.sub_registry_with_prefix("etcd_disk");
        disk.register(
            "backend_commit_duration_seconds",
            "The latency distributions of applying a committed entry to the backend.",
            m.counters.apply_duration.clone(),
        );
        disk.register(
            "wal_fsync_duration_seconds",
            "The latency distributions of fsync called by the log.",
            m.counters.wal_fsync_duration.clone(),
        );
        let mvcc = registry.sub_registry_with_prefix("etcd_mvcc");
        mvcc.register(
            "db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes.",
            m.db_size.clone(),
        );
        mvcc.register(
            "db_total_size_in_use_in_bytes",
            "Total size of the stored key revisions in bytes (what the quota counts).",
            m.db_size_in_use.clone(),
        );
        let debugging = registry.sub_registry_with_prefix("etcd_debugging");
        debugging.register("mvcc_keys_total", "Total number of keys.", m.keys.clone());
        debugging.register(
            "mvcc_watcher_total",
            "Total number of watchers.",
            m.watchers.clone(),
        );
        debugging.register("lease_total", "Total number of leases.", m.leases.clone());
        registry.register(
            "grpc_server_started",
            "Total number of RPCs started on the server.",
            m.grpc_started.clone(),
        );
        registry.register(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            m.grpc_handled.clone(),
        );
        Arc::new(Metrics { registry, ..m })
    }

    /// The Prometheus text exposition of every metric, with live gauges refreshed from `raft`.
    pub fn render(&self, raft: &RaftHandle) -> String {
        let m = raft.metrics();
        let state = raft.state();
        self.has_leader.set(i64::from(m.current_leader.is_some()));
        self.is_leader
            .set(i64::from(m.current_leader == Some(m.id)));
        let applied = m.last_applied.map_or(0, |l| l.index);
        self.proposals_applied.set(applied as i64);
        // A member knows its commit index only through what it applied; the last log index covers
        // what is appended but maybe not committed yet.
        self.proposals_committed.set(applied as i64);
        self.db_size.set(state.backend_size() as i64);
        self.db_size_in_use.set(state.bytes_in_use() as i64);
        self.keys.set(state.key_count() as i64);
        self.watchers.set(state.hub().watchers() as i64);
        self.leases.set(state.lease_ttls().len() as i64);
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        out
    }

    fn started(&self, service: &str, method: &str) {
        self.grpc_started
            .get_or_create(&StartedLabels {
                grpc_type: grpc_type(method),
                grpc_service: service.to_string(),
                grpc_method: method.to_string(),
            })
            .inc();
    }

    fn handled(&self, service: &str, method: &str, code: &'static str) {
        self.grpc_handled
            .get_or_create(&GrpcLabels {
                grpc_type: grpc_type(method),
                grpc_service: service.to_string(),
                grpc_method: method.to_string(),
                grpc_code: code,
            })
            .inc();
    }
}

/// etcd's `/health` verdict: healthy when no alarm is raised, a leader is known, and a linearizable
/// read completes within a second.
pub async fn health(raft: &RaftHandle) -> (bool, String) {
    if raft.state().has_alarm(ALARM_NOSPACE) {
        return (false, "ALARM NOSPACE".into());
    }
    if raft.leader().is_none() {
        return (false, "RAFT NO LEADER".into());
    }
    match tokio::time::timeout(Duration::from_secs(1), raft.read_index()).await {
        Ok(Ok(())) => (true, String::new()),
        Ok(Err(e)) => (false, format!("QGET ERROR: {e}")),
        Err(_) => (false, "QGET TIMEOUT".into()),
    }
}

/// The call shape of the streaming methods Cairn serves; every other method is unary.
fn grpc_type(method: &str) -> &'static str {
    match method {
        "Watch" | "LeaseKeepAlive" => "bidi_stream",
        "Snapshot" | "Observe" => "server_stream",
        _ => "unary",
    }
}

fn code_name(code: &[u8]) -> &'static str {
    match code {
        b"0" => "OK",
        b"1" => "Canceled",
        b"2" => "Unknown",
        b"3" => "InvalidArgument",
        b"4" => "DeadlineExceeded",
        b"5" => "NotFound",
        b"6" => "AlreadyExists",
        b"7" => "PermissionDenied",
        b"8" => "ResourceExhausted",
        b"9" => "FailedPrecondition",
        b"10" => "Aborted",
        b"11" => "OutOfRange",
        b"12" => "Unimplemented",
        b"13" => "Internal",
        b"14" => "Unavailable",
        b"15" => "DataLoss",
        b"16" => "Unauthenticated",
        _ => "Unknown",
    }
}

/// Serves `/metrics` and `/health` in front of the gRPC services and counts gRPC requests.
#[derive(Clone)]
pub(crate) struct HttpLayer {
    pub metrics: Arc<Metrics>,
    pub raft: RaftHandle,
}

impl<S> tower::Layer<S> for HttpLayer {
    type Service = HttpService<S>;

    fn layer(&self, inner: S) -> HttpService<S> {
        HttpService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct HttpService<S> {
    inner: S,
    layer: HttpLayer,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

fn text_response(status: u16, content_type: &str, body: String) -> http::Response<Body> {
    http::Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Body::new(body))
        .unwrap_or_else(|_| http::Response::new(Body::empty()))
}

impl<S> tower::Service<http::Request<Body>> for HttpService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<http::Response<Body>, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let layer = self.layer.clone();
        match req.uri().path() {
            "/metrics" => Box::pin(async move {
                Ok(text_response(
                    200,
                    "text/plain; version=0.0.4",
                    layer.metrics.render(&layer.raft),
                ))
            }),
            "/health" => Box::pin(async move {
                let (healthy, reason) = health(&layer.raft).await;
                let body = format!(r#"{{"health":"{healthy}","reason":"{reason}"}}"#);
                Ok(text_response(
                    if healthy { 200 } else { 503 },
                    "application/json",
                    body,
                ))
            }),
            path => {
                let mut parts = path.trim_start_matches('/').splitn(2, '/');
                let service = parts.next().unwrap_or("").to_string();
                let method = parts.next().unwrap_or("").to_string();
                layer.metrics.started(&service, &method);
                // The service was polled ready, not its clone: call it and keep the clone.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(async move {
                    let resp = inner.call(req).await?;
                    // An error answered at once carries its status in the headers; otherwise the
                    // status comes in the trailers when the call (a stream, perhaps long-lived)
                    // ends, and that is when it is counted, as etcd's interceptor does.
                    if let Some(status) = resp.headers().get("grpc-status") {
                        layer
                            .metrics
                            .handled(&service, &method, code_name(status.as_bytes()));
                        return Ok(resp);
                    }
                    Ok(resp.map(|body| {
                        Body::new(CountedBody {
                            inner: body,
                            call: Some((layer.metrics.clone(), service, method)),
                        })
                    }))
                })
            }
        }
    }
}

/// A response body that counts its call as handled when its trailers pass (with their status), when
/// it ends without any, or when it is dropped before either (the client went away: Canceled).
struct CountedBody {
    inner: Body,
    call: Option<(Arc<Metrics>, String, String)>,
}

impl CountedBody {
    fn finish(&mut self, code: &'static str) {
        if let Some((metrics, service, method)) = self.call.take() {
            metrics.handled(&service, &method, code);
        }
    }
}

impl http_body::Body for CountedBody {
    type Data = tonic::codegen::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = trailers
                        .get("grpc-status")
                        .map_or("OK", |v| code_name(v.as_bytes()));
                    self.finish(code);
                }
            }
            Poll::Ready(Some(Err(status))) => {
                let code = status.code() as i32;
                self.finish(code_name(code.to_string().as_bytes()));
            }
            Poll::Ready(None) => self.finish("OK"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for CountedBody {
    fn drop(&mut self) {
        // A body that said it was complete may never be polled for its end.
        let code = if http_body::Body::is_end_stream(&self.inner) {
            "OK"
        } else {
            "Canceled"
        };
        self.finish(code);
    }
}
