//! The agent's own HTTPS port (the kubelet's 10250), where the API server fetches container logs
//! for `pods/log` and opens `pods/exec` sessions (`exec`). Only callers presenting a client certificate signed by the cluster's CA are
//! served (the API server's kubelet client certificate); the serving certificate is generated at
//! start. It never imports `registry` or `apiserver`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::Store;
use rcgen::{CertificateParams, KeyPair, SanType};
use serde::Deserialize;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};

use super::AgentError;
use crate::runtime::{Runtime, RuntimeError};

#[derive(Clone)]
pub(super) struct Ctx {
    pub(super) pods: Store<Pod>,
    pub(super) rt: Arc<Runtime>,
}

/// The running server: its port, and the loop that stops when this is dropped.
pub struct Serving {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
    _stop: tokio::sync::watch::Sender<bool>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn tls(address: &str, client_ca: &[Vec<u8>]) -> Result<Arc<ServerConfig>, AgentError> {
    let bad = |e: &dyn std::fmt::Display| AgentError::Tls(e.to_string());
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).map_err(|e| bad(&e))?;
    if let Ok(ip) = address.parse() {
        p.subject_alt_names.push(SanType::IpAddress(ip));
    }
    let kp = KeyPair::generate().map_err(|e| bad(&e))?;
    let cert = p.self_signed(&kp).map_err(|e| bad(&e))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(kp.serialize_der()));
    let mut roots = RootCertStore::empty();
    for der in client_ca {
        roots
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| bad(&e))?;
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| bad(&e))?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert.der().clone()], key)
        .map_err(|e| bad(&e))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Binds `bind` and serves until the returned value is dropped.
pub async fn start(
    bind: SocketAddr,
    address: &str,
    client_ca: &[Vec<u8>],
    pods: Store<Pod>,
    rt: Arc<Runtime>,
) -> Result<Serving, AgentError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls(address, client_ca)?);
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|e| AgentError::Tls(format!("bind {bind}: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| AgentError::Tls(e.to_string()))?
        .port();
    let app = Router::new()
        .route("/containerLogs/{ns}/{pod}/{container}", get(container_logs))
        // GET for WebSocket clients, POST for SPDY ones (refused with a clear answer).
        .route(
            "/exec/{ns}/{pod}/{container}",
            get(super::exec::exec).post(super::exec::exec),
        )
        .route("/healthz", get(|| async { "ok" }))
        .with_state(Ctx { pods, rt });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(crate::serve::accept_loop(listener, acceptor, app, stopped));
    tracing::info!(port, "agent serving logs and exec");
    Ok(Serving {
        port,
        task,
        _stop: stop,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogQuery {
    follow: Option<bool>,
    tail_lines: Option<usize>,
    previous: Option<bool>,
    limit_bytes: Option<usize>,
}

fn status(code: StatusCode, message: String) -> Response {
    let reason = if code == StatusCode::NOT_FOUND {
        "NotFound"
    } else {
        "BadRequest"
    };
    let body = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16()});
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn container_logs(
    State(ctx): State<Ctx>,
    Path((ns, name, container)): Path<(String, String, String)>,
    Query(q): Query<LogQuery>,
) -> Response {
    let Some(pod) = ctx.pods.state().into_iter().find(|p| {
        p.metadata.namespace.as_deref() == Some(ns.as_str())
            && p.metadata.name.as_deref() == Some(name.as_str())
    }) else {
        return status(
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{name} is not on this node"),
        );
    };
    let uid = super::convert::runtime_name(&pod);
    if q.previous == Some(true) {
        // The runtime keeps one log per container across its runs.
        return status(
            StatusCode::BAD_REQUEST,
            format!("previous terminated container \"{container}\" in pod \"{name}\" not found"),
        );
    }
    let missing = |e: RuntimeError| {
        status(
            StatusCode::NOT_FOUND,
            format!("container \"{container}\" in pod \"{name}\" is waiting to start: {e}"),
        )
    };
    let text_plain = [(header::CONTENT_TYPE, "text/plain")];
    if q.follow == Some(true) {
        return match ctx.rt.follow_logs(&uid, &container, q.tail_lines) {
            Ok(rx) => {
                let stream =
                    tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, Infallible>);
                (text_plain, Body::from_stream(stream)).into_response()
            }
            Err(e) => missing(e),
        };
    }
    match ctx.rt.logs(&uid, &container, q.tail_lines) {
        Ok(mut data) => {
            if let Some(n) = q.limit_bytes {
                data.truncate(n);
            }
            (text_plain, data).into_response()
        }
        Err(e) => missing(e),
    }
}
