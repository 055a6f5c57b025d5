//! The audit log (`--audit-log-path`): one JSON line per request in Kubernetes' audit.k8s.io/v1
//! `Event` shape at the Metadata level: who (and whom they impersonated), what (verb, URI, the
//! object reference), the answer's code, and when it was received and answered. Watches are logged
//! when their response starts (stage `ResponseStarted`); everything else when it is answered
//! (`ResponseComplete`).
//!
//! Requests never wait on the disk: events go through a bounded channel to one writer task. When
//! the writer falls that far behind, a request waits at most [`SUBMIT_WAIT`] for room, then its
//! event is dropped and counted in a warning.
//!
//! Imports nothing of the store; reads only the request, the user and the response head.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State as AxState};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::authn::User;
use super::authz::rules::Decision;
use super::authz::{request_info, Impersonated};
use super::State;

/// Events waiting for the writer.
const QUEUE: usize = 16 * 1024;
/// The longest a request waits for room in a full queue.
const SUBMIT_WAIT: Duration = Duration::from_millis(100);
/// The largest created object whose name is read back from the answer for `objectRef.name`.
const MAX_CREATED: usize = 4 * 1024 * 1024;

/// A handle to the writer.
pub struct AuditLog {
    tx: mpsc::Sender<String>,
    dropped: Arc<AtomicU64>,
}

impl AuditLog {
    /// Opens `path` for appending (`-`: standard output) and starts the writer.
    pub async fn open(path: &Path) -> std::io::Result<(AuditLog, tokio::task::JoinHandle<()>)> {
        let mut out: Box<dyn tokio::io::AsyncWrite + Send + Unpin> = if path == Path::new("-") {
            Box::new(tokio::io::stdout())
        } else {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                tokio::fs::create_dir_all(dir).await?;
            }
            Box::new(
                tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await?,
            )
        };
        let (tx, mut rx) = mpsc::channel::<String>(QUEUE);
        let task = tokio::spawn(async move {
            let mut buf = Vec::new();
            while let Some(line) = rx.recv().await {
                buf.clear();
                buf.extend_from_slice(line.as_bytes());
                buf.push(b'\n');
                // Whatever else is already queued goes out in the same write.
                while let Ok(more) = rx.try_recv() {
                    buf.extend_from_slice(more.as_bytes());
                    buf.push(b'\n');
                }
                if let Err(e) = async {
                    out.write_all(&buf).await?;
                    out.flush().await
                }
                .await
                {
                    tracing::warn!(error = %e, "writing the audit log failed");
                }
            }
        });
        Ok((
            AuditLog {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            task,
        ))
    }

    async fn submit(&self, line: String) {
        let line = match self.tx.try_send(line) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(l)) => l,
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        };
        if tokio::time::timeout(SUBMIT_WAIT, self.tx.send(line))
            .await
            .is_err()
        {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(dropped = n, "audit log queue full; event dropped");
        }
    }
}

/// Kubernetes' MicroTime: RFC 3339 in UTC with microseconds.
fn micro_time(ts: jiff::Timestamp) -> String {
    let micros = ts.as_microsecond().rem_euclid(1_000_000);
    format!("{}.{micros:06}Z", ts.strftime("%Y-%m-%dT%H:%M:%S"))
}

fn user_json(u: &User) -> Value {
    json!({"username": u.name, "groups": u.groups})
}

/// The middleware: runs after authentication and around authorization and the handler.
pub async fn record(AxState(st): AxState<Arc<State>>, req: Request, next: Next) -> Response {
    let Some(log) = &st.audit else {
        return next.run(req).await;
    };
    let received = jiff::Timestamp::now();
    let a = request_info::attributes(req.method().as_str(), req.uri().path(), req.uri().query());
    let uri = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let user = req.extensions().get::<User>().cloned();
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let resp = next.run(req).await;
    let code = resp.status().as_u16();
    let mut name = a.name.clone();
    let (resp, created) = if a.verb == "create"
        && a.resource_request
        && a.subresource.is_empty()
        && resp.status().is_success()
    {
        // A create names its object in the body, which the answer carries.
        let (parts, body) = resp.into_parts();
        match axum::body::to_bytes(body, MAX_CREATED).await {
            Ok(bytes) => {
                let created = serde_json::from_slice::<Value>(&bytes).ok();
                (
                    Response::from_parts(parts, axum::body::Body::from(bytes)),
                    created,
                )
            }
            Err(_) => (Response::from_parts(parts, axum::body::Body::empty()), None),
        }
    } else {
        (resp, None)
    };
    if let Some(obj) = &created {
        if name.is_empty() {
            name = crate::api::meta::name(obj).to_string();
        }
    }
    let mut ev = json!({
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": crate::api::meta::new_uid(),
        "stage": if a.verb == "watch" { "ResponseStarted" } else { "ResponseComplete" },
        "requestURI": uri,
        "verb": a.verb,
        "user": user.as_ref().map(user_json).unwrap_or(json!({})),
        "responseStatus": {"metadata": {}, "code": code},
        "requestReceivedTimestamp": micro_time(received),
        "stageTimestamp": micro_time(jiff::Timestamp::now()),
    });
    if let Some(ip) = source {
        ev["sourceIPs"] = json!([ip]);
    }
    if let Some(agent) = agent {
        ev["userAgent"] = json!(agent);
    }
    if let Some(Impersonated(u)) = resp.extensions().get::<Impersonated>() {
        ev["impersonatedUser"] = user_json(u);
    }
    if a.resource_request {
        let mut obj_ref = json!({"resource": a.resource});
        for (k, v) in [
            ("namespace", &a.namespace),
            ("name", &name),
            ("apiGroup", &a.api_group),
            ("apiVersion", &a.api_version),
            ("subresource", &a.subresource),
        ] {
            if !v.is_empty() {
                obj_ref[k] = json!(v);
            }
        }
        ev["objectRef"] = obj_ref;
    }
    if let Some(d) = resp.extensions().get::<Decision>() {
        let mut ann =
            json!({"authorization.k8s.io/decision": if d.allowed { "allow" } else { "forbid" }});
        if !d.reason.is_empty() {
            ann["authorization.k8s.io/reason"] = json!(d.reason);
        }
        ev["annotations"] = ann;
    }
    log.submit(ev.to_string()).await;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_time_is_rfc3339_with_microseconds() {
        let ts = jiff::Timestamp::from_microsecond(1_700_000_000_000_123).unwrap();
        assert_eq!(micro_time(ts), "2023-11-14T22:13:20.000123Z");
    }
}
