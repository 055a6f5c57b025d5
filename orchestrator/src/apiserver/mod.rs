//! The Kubernetes-compatible API server: HTTPS (HTTP/2 and HTTP/1.1) with bearer-token
//! authentication, discovery, OpenAPI, the resource verbs, watches, Table output, metrics and health;
//! pods/log and pods/exec go on to the pod's node agent (`kubelet`).
//!
//! Requests flow: TLS -> authentication -> audit -> authorization (`authz`, RBAC) -> routing ->
//! `resources` (read-check-write over the registry) or `reviews` -> a JSON or Table answer. This module reaches the store only through `registry`; it
//! never imports the runtime.

pub mod admission;
pub mod audit;
pub mod authn;
pub mod authz;
pub mod discovery;
pub mod kubelet;
pub mod openapi;
pub mod protobuf;
pub mod request;
pub mod resources;
pub mod reviews;
pub mod satoken;
pub mod serviceaccount;
pub mod status;
pub mod table;
pub mod tls;
pub mod watch;
pub mod watchcache;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry as MetricsRegistry;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::api::{self, meta, Subresource};
use crate::registry::alloc::{IpRange, PortRange};
use crate::registry::Registry;
use request::{Query, Target};
use status::{ApiError, ApiResult};

/// Everything the handlers share.
pub struct State {
    pub registry: Registry,
    pub ip_range: IpRange,
    pub ip_range_text: String,
    pub port_range: PortRange,
    pub authn: authn::Authenticator,
    pub authz: authz::Authorizer,
    pub audit: Option<audit::AuditLog>,
    pub bookmark_interval: Duration,
    pub watch_cache: watchcache::WatchCache,
    /// Calls to node agents (pods/log, pods/exec); `None` without a kubelet client certificate.
    pub kubelet: Option<kubelet::KubeletClient>,
    /// Issues and checks service account tokens; `None`: no TokenRequest API, no such tokens.
    pub service_accounts: Option<satoken::Issuer>,
    metrics: Metrics,
    metrics_registry: MetricsRegistry,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: String,
    group: String,
    version: String,
    resource: String,
    subresource: String,
    scope: String,
    component: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    verb: String,
    group: String,
    version: String,
    resource: String,
    subresource: String,
    scope: String,
    component: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    group: String,
    version: String,
    kind: String,
}

struct Metrics {
    requests: Family<RequestLabels, Counter>,
    durations: Family<DurationLabels, Histogram>,
    watchers: Family<KindLabels, prometheus_client::metrics::gauge::Gauge>,
}

/// Counts an open watch in `apiserver_registered_watchers` for as long as it lives.
pub struct WatcherGuard(prometheus_client::metrics::gauge::Gauge);

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl State {
    pub fn register_watcher(&self, r: &api::Resource) -> WatcherGuard {
        let g = self
            .metrics
            .watchers
            .get_or_create(&KindLabels {
                group: r.group.into(),
                version: r.version.into(),
                kind: r.kind.into(),
            })
            .clone();
        g.inc();
        WatcherGuard(g)
    }
}

/// How the server is set up.
pub struct Config {
    pub registry: Registry,
    pub bind: SocketAddr,
    pub tls: Arc<tokio_rustls::rustls::ServerConfig>,
    /// Static bearer token -> user (name and groups).
    pub tokens: HashMap<String, authn::User>,
    /// `--authorization-mode`.
    pub authorization: authz::Mode,
    /// `--audit-log-path`: a file, or `-` for standard output.
    pub audit_log: Option<PathBuf>,
    /// Accept bootstrap tokens (`<id>.<secret>`, from Secrets in kube-system), as
    /// `--enable-bootstrap-token-auth` does.
    pub bootstrap_tokens: bool,
    pub ip_range: String,
    pub port_range: String,
    pub bookmark_interval: Duration,
    /// The client certificate and key (PEM) presented to node agents.
    pub kubelet_client: Option<(String, String)>,
    /// The service account token issuer (keys, issuer, audiences).
    pub service_accounts: Option<satoken::Issuer>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Config(String),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("store: {0}")]
    Store(#[from] crate::registry::StoreError),
}

/// A running API server. Dropping it (or [`Server::abort`]) closes the listener and every open
/// connection, watches included.
pub struct Server {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    /// The RBAC cache's watches and the audit writer.
    background: Vec<tokio::task::JoinHandle<()>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Server {
    pub fn abort(&self) {
        self.task.abort();
        for t in &self.background {
            t.abort();
        }
        let _ = self.stop.send(true);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.abort();
    }
}

/// Parses kube-apiserver's static token file: `token,user,uid[,"group1,group2"]` per line, CSV
/// (the groups field is quoted when it names more than one group).
pub fn parse_token_file(text: &str) -> Result<HashMap<String, authn::User>, String> {
    let mut out = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields = csv_fields(line).map_err(|e| format!("line {}: {e}", n + 1))?;
        if fields.len() < 3 || fields[0].is_empty() || fields[1].is_empty() {
            return Err(format!(
                "line {}: expected token,user,uid[,\"groups\"]",
                n + 1
            ));
        }
        let groups = match fields.get(3) {
            Some(g) if !g.is_empty() => g.split(',').map(str::to_string).collect(),
            _ => Vec::new(),
        };
        out.insert(
            fields[0].clone(),
            authn::User {
                name: fields[1].clone(),
                groups,
            },
        );
    }
    Ok(out)
}

/// One CSV record: fields separated by commas, a field in double quotes may hold commas and `""`
/// for a quote; spaces before a field are skipped (Go's `csv.Reader` with `TrimLeadingSpace`).
fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
            chars.next();
        }
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("unterminated quoted field".into()),
                }
            }
            match chars.next() {
                None => {
                    out.push(field);
                    return Ok(out);
                }
                Some(',') => out.push(field),
                Some(c) => return Err(format!("unexpected {c:?} after a quoted field")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        out.push(field);
                        return Ok(out);
                    }
                    Some(',') => break,
                    Some(c) => field.push(c),
                }
            }
            out.push(field);
        }
    }
}

/// Starts serving; returns once the listener is bound. Creates the system namespaces first.
pub async fn start(cfg: Config) -> Result<Server, ServeError> {
    let ip_range = IpRange::parse(&cfg.ip_range).map_err(ServeError::Config)?;
    let port_range = PortRange::parse(&cfg.port_range).map_err(ServeError::Config)?;
    let mut metrics_registry = MetricsRegistry::default();
    let metrics = Metrics {
        requests: Family::default(),
        watchers: Family::default(),
        durations: Family::new_with_constructor(|| {
            Histogram::new([
                0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
            ])
        }),
    };
    metrics_registry.register("apiserver_request", "Counter of apiserver requests broken out for each verb, dry run value, group, version, resource, scope, component, and HTTP response code.", metrics.requests.clone());
    metrics_registry.register(
        "apiserver_registered_watchers",
        "Number of currently registered watchers for a given resources",
        metrics.watchers.clone(),
    );
    metrics_registry.register("apiserver_request_duration_seconds", "Response latency distribution in seconds for each verb, dry run value, group, version, resource, subresource, scope and component.", metrics.durations.clone());
    // The system namespaces first: the default policy has a binding in kube-public.
    bootstrap_namespaces(&cfg.registry).await?;
    authz::bootstrap::reconcile(&cfg.registry).await?;
    let (policy, mut background) = authz::cache::PolicyCache::start(cfg.registry.clone()).await?;
    let audit = match &cfg.audit_log {
        Some(path) => {
            let (log, task) = audit::AuditLog::open(path)
                .await
                .map_err(|e| ServeError::Config(format!("audit log {}: {e}", path.display())))?;
            background.push(task);
            Some(log)
        }
        None => None,
    };
    let state = Arc::new(State {
        registry: cfg.registry,
        ip_range,
        ip_range_text: cfg.ip_range.clone(),
        port_range,
        authn: authn::Authenticator::new(cfg.tokens, cfg.bootstrap_tokens),
        authz: authz::Authorizer::new(cfg.authorization, policy),
        audit,
        bookmark_interval: cfg.bookmark_interval,
        watch_cache: Default::default(),
        kubelet: match &cfg.kubelet_client {
            Some((cert, key)) => Some(
                kubelet::KubeletClient::new(cert, key)
                    .map_err(|e| ServeError::Config(e.to_string()))?,
            ),
            None => None,
        },
        service_accounts: cfg.service_accounts,
        metrics,
        metrics_registry,
    });
    let app = router(state.clone());
    let listener = TcpListener::bind(cfg.bind)
        .await
        .map_err(|source| ServeError::Bind {
            addr: cfg.bind,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: cfg.bind,
        source,
    })?;
    bootstrap(&state, addr).await?;
    let acceptor = TlsAcceptor::from(cfg.tls);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(crate::serve::accept_loop(listener, acceptor, app, stopped));
    tracing::info!(%addr, "API server listening");
    Ok(Server {
        addr,
        task,
        background,
        stop,
    })
}

/// Creates the system namespaces.
async fn bootstrap_namespaces(registry: &Registry) -> Result<(), ServeError> {
    let ns = api::lookup("", "v1", "namespaces").expect("namespaces are served");
    for name in api::SYSTEM_NAMESPACES {
        let mut obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name,
            "uid": meta::new_uid(), "creationTimestamp": meta::now()}});
        api::defaults::apply(ns, &mut obj);
        create_if_missing(registry, ns, &obj, Default::default()).await?;
    }
    Ok(())
}

/// Creates what exists from the start besides namespaces and policy: the `kubernetes` Service in
/// `default` on the range's first address, with Endpoints naming this server.
async fn bootstrap(st: &State, addr: SocketAddr) -> Result<(), ServeError> {
    let svc = api::lookup("", "v1", "services").expect("services are served");
    let ip = st.ip_range.first();
    let mut obj = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kubernetes",
        "namespace": "default", "uid": meta::new_uid(), "creationTimestamp": meta::now(),
        "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": addr.port()}],
            "clusterIP": ip.to_string(), "clusterIPs": [ip.to_string()]}});
    api::defaults::apply(svc, &mut obj);
    let (claim, op) = crate::registry::alloc::claim_ip(ip, "default/kubernetes");
    let side = crate::registry::SideEffects {
        compares: vec![claim],
        ops: vec![op],
    };
    create_if_missing(&st.registry, svc, &obj, side).await?;
    let ep = api::lookup("", "v1", "endpoints").expect("endpoints are served");
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    };
    let obj = json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "kubernetes",
        "namespace": "default", "uid": meta::new_uid(), "creationTimestamp": meta::now(),
        "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": host}], "ports": [{"name": "https", "port": addr.port(), "protocol": "TCP"}]}]});
    create_if_missing(&st.registry, ep, &obj, Default::default()).await?;
    Ok(())
}

async fn create_if_missing(
    registry: &Registry,
    r: &api::Resource,
    obj: &Value,
    side: crate::registry::SideEffects,
) -> Result<(), ServeError> {
    match registry.create(r, obj.clone(), side).await {
        // An earlier start created it (or its address is held by it): keep what is stored.
        Ok(_)
        | Err(crate::registry::StoreError::AlreadyExists)
        | Err(crate::registry::StoreError::Conflict) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn router(state: Arc<State>) -> Router {
    let open = Router::new()
        .route("/healthz", get(health))
        .route("/livez", get(health))
        .route("/readyz", get(health));
    let authed = Router::new()
        .route(
            "/version",
            get(|| async { axum::Json(discovery::version()) }),
        )
        .route(
            "/api",
            get(|h: HeaderMap| async move { discovery::core(&h) }),
        )
        .route(
            "/apis",
            get(|h: HeaderMap| async move { discovery::groups(&h) }),
        )
        .route("/metrics", get(metrics))
        .route("/openapi/v3", get(openapi::root))
        .route("/openapi/v3/{*path}", get(openapi::document))
        .fallback(resource_entry)
        // Outermost last: authentication, then the audit record, then authorization.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            authz::authorize,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), audit::record))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            authn::authenticate,
        ));
    open.merge(authed)
        .layer(middleware::from_fn(recover))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

async fn health(AxState(st): AxState<Arc<State>>) -> Response {
    match st.registry.current_revision().await {
        Ok(_) => "ok".into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("[-]etcd failed: {e}\nhealthz check failed\n"),
        )
            .into_response(),
    }
}

async fn metrics(AxState(st): AxState<Arc<State>>) -> Response {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &st.metrics_registry) {
        return ApiError::internal(e.to_string()).into_response();
    }
    let mut resp = out.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// A handler that panics answers 500 instead of dropping the client's connection, as
/// kube-apiserver's panic filter does; the panic itself is already printed by the panic hook.
async fn recover(req: Request, next: Next) -> Response {
    use futures::FutureExt;
    let method = req.method().clone();
    let uri = req.uri().clone();
    match std::panic::AssertUnwindSafe(next.run(req))
        .catch_unwind()
        .await
    {
        Ok(resp) => resp,
        Err(_) => {
            tracing::error!(%method, %uri, "request handler panicked");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "This request caused apiserver to panic. Look in the logs for details.\n",
            )
                .into_response()
        }
    }
}

/// Counts and times every request by its Kubernetes verb and resource.
async fn observe(AxState(st): AxState<Arc<State>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let query = Query::parse(req.uri().query());
    let target = request::parse_target(req.uri().path()).ok().flatten();
    // Kubernetes' metric verbs: the HTTP method, with GET told apart as GET, LIST or WATCH.
    let verb = match request::verb(req.method(), target.as_ref(), &query) {
        v @ ("get" | "list" | "watch") => v.to_uppercase(),
        _ => req.method().as_str().to_string(),
    };
    let (group, version, resource, sub, scope) = match &target {
        Some(t) => (
            t.resource.group.to_string(),
            t.resource.version.to_string(),
            t.resource.plural.to_string(),
            t.sub.map(|s| s.name().to_string()).unwrap_or_default(),
            if t.name.is_some() {
                "resource"
            } else if t.namespace.is_some() {
                "namespace"
            } else {
                "cluster"
            }
            .to_string(),
        ),
        None => Default::default(),
    };
    let resp = next.run(req).await;
    let d = DurationLabels {
        verb: verb.clone(),
        group: group.clone(),
        version: version.clone(),
        resource: resource.clone(),
        subresource: sub.clone(),
        scope: scope.clone(),
        component: "apiserver".into(),
    };
    if verb != "WATCH" {
        st.metrics
            .durations
            .get_or_create(&d)
            .observe(start.elapsed().as_secs_f64());
    }
    st.metrics
        .requests
        .get_or_create(&RequestLabels {
            verb,
            group,
            version,
            resource,
            subresource: sub,
            scope,
            component: "apiserver".into(),
            code: resp.status().as_u16().to_string(),
        })
        .inc();
    resp
}

fn meta_rv(obj: &Value) -> String {
    meta::resource_version(obj).to_string()
}

fn json_answer(code: StatusCode, v: &Value, warnings: &[String]) -> Response {
    let mut resp = (code, serde_json::to_vec(v).unwrap_or_default()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

/// Every path not routed above: group discovery and resources.
async fn resource_entry(AxState(st): AxState<Arc<State>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    // Group and group-version discovery.
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (parts.method.clone(), segs.as_slice()) {
        (Method::GET, ["api", v]) => {
            return match discovery::resource_list("", v) {
                Some(l) => json_answer(StatusCode::OK, &l, &[]),
                None => not_found_path(),
            }
        }
        (Method::GET, ["apis", g]) => {
            return match discovery::group(g) {
                Some(l) => json_answer(StatusCode::OK, &l, &[]),
                None => not_found_path(),
            }
        }
        (Method::GET, ["apis", g, v]) => {
            return match discovery::resource_list(g, v) {
                Some(l) => json_answer(StatusCode::OK, &l, &[]),
                None => not_found_path(),
            }
        }
        _ => {}
    }
    if let Some(kind) = reviews::Review::at(&parts.method, &path) {
        let body = match read_body(body).await {
            Ok(b) => b,
            Err(e) => return e.into_response(),
        };
        let user = parts.extensions.get::<authn::User>().cloned();
        return match reviews::answer(&st, kind, user, &parts.headers, &body) {
            Ok(v) => json_answer(StatusCode::CREATED, &v, &[]),
            Err(e) => e.into_response(),
        };
    }
    let target = match request::parse_target(&path) {
        Ok(Some(t)) => t,
        Ok(None) => return after_body(body, not_found_path()).await,
        Err(e) => return after_body(body, e.into_response()).await,
    };
    if target.sub == Some(Subresource::Exec) {
        let req = Request::from_parts(parts, body);
        return kubelet::pod_exec(&st, &target, req)
            .await
            .unwrap_or_else(|e| e.into_response());
    }
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let query = Query::parse(parts.uri.query());
    if let Err(e) = check_escalation(&st, &parts, &target, &query, &body).await {
        return e.into_response();
    }
    match handle(st, parts.method, &parts.headers, target, query, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// Refuses a write of a role or binding that would grant more than its author holds. A patch is
/// first applied without storing it, to see what it would store.
async fn check_escalation(
    st: &State,
    parts: &axum::http::request::Parts,
    t: &Target,
    q: &Query,
    body: &Bytes,
) -> ApiResult<()> {
    if !authz::escalation::guards(t.resource) || t.sub.is_some() {
        return Ok(());
    }
    let Some(user) = parts.extensions.get::<authn::User>() else {
        return Ok(());
    };
    if st.authz.unrestricted(user) {
        return Ok(());
    }
    let obj = match parts.method {
        Method::POST | Method::PUT => match request::decode_object(&parts.headers, body) {
            Ok(o) => o,
            // The handler answers the malformed body.
            Err(_) => return Ok(()),
        },
        Method::PATCH => {
            let pt = request::patch_type(&parts.headers)?;
            let mut dry = q.clone();
            dry.set("dryRun", "All");
            let (obj, _) = resources::update(
                st,
                t,
                &dry,
                resources::Mutation::Patch(pt, body),
                &mut Vec::new(),
            )
            .await?;
            obj
        }
        _ => return Ok(()),
    };
    let mut obj = obj;
    if meta::name(&obj).is_empty() {
        if let Some(n) = &t.name {
            obj["metadata"]["name"] = json!(n);
        }
    }
    authz::escalation::check(
        &st.authz,
        user,
        t.resource,
        t.namespace.as_deref().unwrap_or(""),
        &obj,
    )
}

/// The request body, at most `MAX_BODY` bytes. A larger one is still read (up to a bound) before the
/// 413 goes out, so the client, which may still be sending, gets the answer rather than a reset.
async fn read_body(body: axum::body::Body) -> ApiResult<Bytes> {
    use http_body_util::BodyExt;
    const DRAIN: usize = 64 * 1024 * 1024;
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len();
        if seen <= request::MAX_BODY {
            buf.extend_from_slice(&data);
        } else if seen > DRAIN {
            break;
        }
    }
    if seen > request::MAX_BODY {
        return Err(ApiError::new(
            413,
            "RequestEntityTooLarge",
            "Request entity too large: limit is 3145728",
        ));
    }
    Ok(buf.freeze())
}

/// Answers a request refused before its body was needed, once the body is read (as `read_body`
/// reads it, to a bound). hyper closes a connection whose request body was left unread; a client
/// still sending a large body would then get a broken pipe instead of this answer.
async fn after_body(body: axum::body::Body, resp: Response) -> Response {
    let _ = read_body(body).await;
    resp
}

fn not_found_path() -> Response {
    ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
    .into_response()
}

async fn handle(
    st: Arc<State>,
    method: Method,
    headers: &HeaderMap,
    t: Target,
    q: Query,
    body: Bytes,
) -> ApiResult<Response> {
    let r = t.resource;
    let table = request::wants_table(headers);
    let mut warnings = Vec::new();
    let not_allowed = || {
        ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource",
        )
    };
    match (&method, &t.name, t.sub) {
        (&Method::GET, None, None) if q.flag("watch") => watch::watch(st, t, q, table).await,
        (&Method::GET, None, None) => {
            let listed = resources::list(&st, &t, &q).await?;
            if table {
                let mut md = json!({"resourceVersion": listed.revision.to_string()});
                if let Some(c) = &listed.continue_token {
                    md["continue"] = json!(c);
                }
                if let Some(n) = listed.remaining {
                    md["remainingItemCount"] = json!(n);
                }
                let include = q.get("includeObject").unwrap_or("Metadata");
                return Ok(json_answer(
                    StatusCode::OK,
                    &table::table(r, &listed.items, md, include),
                    &[],
                ));
            }
            Ok(json_answer(
                StatusCode::OK,
                &resources::list_object(r, listed),
                &[],
            ))
        }
        (&Method::GET, Some(_), None | Some(Subresource::Status) | Some(Subresource::Scale)) => {
            let obj = resources::get(&st, &t).await?;
            if table && t.sub.is_none() {
                let md = json!({"resourceVersion": meta_rv(&obj)});
                let include = q.get("includeObject").unwrap_or("Metadata");
                return Ok(json_answer(
                    StatusCode::OK,
                    &table::table(r, &[obj], md, include),
                    &[],
                ));
            }
            Ok(json_answer(StatusCode::OK, &obj, &[]))
        }
        (&Method::GET, Some(_), Some(Subresource::Log)) => kubelet::pod_log(&st, &t, &q).await,
        (&Method::POST, Some(_), Some(Subresource::Binding)) => {
            let obj = request::decode_object(headers, &body)?;
            let status = resources::bind(&st, &t, obj).await?;
            Ok(json_answer(StatusCode::CREATED, &status, &[]))
        }
        (&Method::POST, Some(_), Some(Subresource::Token)) => {
            let (code, answer) = serviceaccount::create_token(&st, &t, headers, &body).await?;
            Ok(json_answer(code, &answer, &[]))
        }
        (&Method::POST, None, None) => {
            let obj = request::decode_object(headers, &body)?;
            let created = resources::create(&st, &t, &q, obj, &mut warnings).await?;
            Ok(json_answer(StatusCode::CREATED, &created, &warnings))
        }
        (
            &Method::PUT,
            Some(_),
            None
            | Some(Subresource::Status)
            | Some(Subresource::Scale)
            | Some(Subresource::Finalize),
        ) => {
            let obj = request::decode_object(headers, &body)?;
            let (updated, _) = resources::update(
                &st,
                &t,
                &q,
                resources::Mutation::Replace(obj),
                &mut warnings,
            )
            .await?;
            Ok(json_answer(StatusCode::OK, &updated, &warnings))
        }
        (&Method::PATCH, Some(_), None | Some(Subresource::Status) | Some(Subresource::Scale)) => {
            let pt = request::patch_type(headers)?;
            let (updated, created) = resources::update(
                &st,
                &t,
                &q,
                resources::Mutation::Patch(pt, &body),
                &mut warnings,
            )
            .await?;
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(json_answer(code, &updated, &warnings))
        }
        (&Method::DELETE, Some(_), None) => {
            let opts = resources::DeleteOptions::parse(&q, &body)?;
            let obj = resources::delete(&st, &t, &q, &opts).await?;
            Ok(json_answer(StatusCode::OK, &obj, &[]))
        }
        (&Method::DELETE, None, None) => {
            let opts = resources::DeleteOptions::parse(&q, &body)?;
            let list = resources::delete_collection(&st, &t, &q, &opts).await?;
            Ok(json_answer(StatusCode::OK, &list, &[]))
        }
        _ => Err(not_allowed()),
    }
}

/// Where the API server's generated files go when no paths are given.
pub fn default_cert_dir() -> PathBuf {
    PathBuf::from("/var/run/cairn-orchestrator")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_answers_500_and_keeps_the_connection() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let app = Router::new()
            .route(
                "/boom",
                get(|| async { panic!("handler failure under test") as &'static str }),
            )
            .route("/fine", get(|| async { "fine" }))
            .layer(middleware::from_fn(recover));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /boom HTTP/1.1\r\nhost: x\r\n\r\nGET /fine HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(10), conn.read_to_string(&mut out))
            .await
            .expect("both answers in time")
            .unwrap();
        server.abort();
        let first = out.find("HTTP/1.1 500").expect(&out);
        let second = out.find("HTTP/1.1 200").expect(&out);
        assert!(first < second, "{out}");
        assert!(out.contains("caused apiserver to panic"), "{out}");
        assert!(out.ends_with("fine"), "{out}");
    }

    #[test]
    fn token_file_users_carry_their_groups() {
        let text = "# comment\n\
            t1,alice,1\n\
            t2,bob,2,\"dev,ops\"\n\
            t3,carol,3,system:masters\n\
            \"t,4\",dave,4,\"a \"\"quoted\"\" group\"\n";
        let users = parse_token_file(text).unwrap();
        assert_eq!(users["t1"], authn::User::new("alice", &[]));
        assert_eq!(users["t2"], authn::User::new("bob", &["dev", "ops"]));
        assert_eq!(users["t3"], authn::User::new("carol", &["system:masters"]));
        assert_eq!(
            users["t,4"],
            authn::User::new("dave", &["a \"quoted\" group"])
        );
        assert!(parse_token_file("t1,alice").is_err());
        assert!(parse_token_file("t1,alice,1,\"dev").is_err());
    }

    #[test]
    fn authorization_modes() {
        assert_eq!("RBAC".parse::<authz::Mode>(), Ok(authz::Mode::Rbac));
        assert_eq!(
            "AlwaysAllow".parse::<authz::Mode>(),
            Ok(authz::Mode::AlwaysAllow)
        );
        assert!("Node".parse::<authz::Mode>().is_err());
    }
}
