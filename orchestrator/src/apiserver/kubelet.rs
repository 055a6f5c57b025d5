//! The API server's calls to node agents, as kube-apiserver's to kubelets: HTTPS to the node's
//! InternalIP and advertised kubeletEndpoint port, presenting the kubelet client certificate
//! (`--kubelet-client-certificate`). The agent's serving certificate is not verified, as
//! kube-apiserver does not verify kubelets' without `--kubelet-certificate-authority`. Serves
//! `pods/log` (streamed) and `pods/exec` (the upgraded connection spliced through). It never
//! imports `registry` directly; it reads pods and nodes through `resources`.

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use cairn_server::tls::Unverified;
use http_body_util::{BodyExt, Empty};
use serde_json::Value;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::ClientConfig;

use super::request::{Query, Target};
use super::status::{ApiError, ApiResult};
use super::tls::TlsError;
use super::{resources, State};
use crate::api;

/// Connections to node agents with the API server's client certificate.
pub struct KubeletClient {
    tls: Arc<ClientConfig>,
}

impl KubeletClient {
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<KubeletClient, TlsError> {
        let bad = |e: &dyn std::fmt::Display| TlsError::Config(format!("kubelet client: {e}"));
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| bad(&e))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| bad(&e))?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let cfg = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(&e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
            .with_client_auth_cert(certs, key)
            .map_err(|e| bad(&e))?;
        Ok(KubeletClient { tls: Arc::new(cfg) })
    }

    /// GET `path` from the agent at `host:port`; the answer streams.
    pub async fn get(
        &self,
        host: IpAddr,
        port: u16,
        path: &str,
    ) -> Result<axum::http::Response<hyper::body::Incoming>, String> {
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("dial tcp {host}:{port}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(ServerName::IpAddress(host.into()), tcp)
            .await
            .map_err(|e| format!("tls handshake with {host}:{port}: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::get(path)
            .header(header::HOST, format!("{host}:{port}"))
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        sender.send_request(req).await.map_err(|e| e.to_string())
    }

    /// Sends an upgrade request (`method path` with `headers`) to the agent at `host:port` on a
    /// connection of its own. A `101` answer's connection is then taken with
    /// `hyper::upgrade::on`.
    pub async fn upgrade(
        &self,
        host: IpAddr,
        port: u16,
        method: Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<axum::http::Response<hyper::body::Incoming>, String> {
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("dial tcp {host}:{port}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let tls = tokio_rustls::TlsConnector::from(self.http1_only())
            .connect(ServerName::IpAddress(host.into()), tcp)
            .await
            .map_err(|e| format!("tls handshake with {host}:{port}: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let mut req = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let req = req
            .header(header::HOST, format!("{host}:{port}"))
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        sender.send_request(req).await.map_err(|e| e.to_string())
    }

    /// Upgrades exist in HTTP/1.1 only; the agent would otherwise be free to pick HTTP/2.
    fn http1_only(&self) -> Arc<ClientConfig> {
        let mut cfg = (*self.tls).clone();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    }
}

/// The query parameters of pods/log the agent understands, passed through.
const LOG_PARAMS: [&str; 6] = [
    "follow",
    "tailLines",
    "previous",
    "timestamps",
    "sinceSeconds",
    "limitBytes",
];

/// The container a pods/log or pods/exec request names, defaulted as kube-apiserver does: the
/// pod's only container, else the request must say which.
fn pick_container(pod: &Value, name: &str, asked: Option<&str>) -> ApiResult<String> {
    let names = |field: &str| -> Vec<String> {
        pod["spec"][field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect()
    };
    let containers = names("containers");
    let init = names("initContainers");
    match asked.filter(|c| !c.is_empty()) {
        Some(c) if containers.iter().chain(&init).any(|n| n == c) => Ok(c.to_string()),
        Some(c) => Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {name}"
        ))),
        None if containers.len() == 1 => Ok(containers[0].clone()),
        None => {
            let mut m = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            );
            if !init.is_empty() {
                m.push_str(&format!(
                    " or one of the init containers: [{}]",
                    init.join(" ")
                ));
            }
            Err(ApiError::bad_request(m))
        }
    }
}

/// The agent of the pod's node: its InternalIP and port, and the client to reach it with.
async fn agent_of<'a>(
    st: &'a State,
    pod: &Value,
    name: &str,
) -> ApiResult<(IpAddr, u16, &'a KubeletClient)> {
    let node_name = pod["spec"]["nodeName"].as_str().unwrap_or("");
    if node_name.is_empty() {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let nodes = api::lookup("", "v1", "nodes").expect("nodes are served");
    let node_target = Target {
        resource: nodes,
        namespace: None,
        name: Some(node_name.to_string()),
        sub: None,
    };
    let node = resources::get(st, &node_target).await?;
    let unavailable = |why: String| ApiError::new(503, "ServiceUnavailable", why);
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .ok_or_else(|| unavailable(format!("the agent of node {node_name} serves no logs")))?;
    let host: IpAddr = node["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| unavailable(format!("node {node_name} has no InternalIP")))?;
    let client = st.kubelet.as_ref().ok_or_else(|| {
        unavailable(
            "the API server has no kubelet client certificate (--kubelet-client-certificate)"
                .into(),
        )
    })?;
    Ok((host, port, client))
}

/// `GET pods/<name>/log`: the container's log from the agent of the pod's node, streamed.
pub async fn pod_log(st: &State, t: &Target, q: &Query) -> ApiResult<Response> {
    let pod = resources::get(st, t).await?;
    let name = t.name.as_deref().unwrap_or("");
    let ns = t.namespace.as_deref().unwrap_or("default");
    let container = pick_container(&pod, name, q.get("container"))?;
    let (host, port, client) = agent_of(st, &pod, name).await?;
    let query: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(LOG_PARAMS.iter().filter_map(|k| q.get(k).map(|v| (*k, v))))
        .finish();
    let path = format!("/containerLogs/{ns}/{name}/{container}?{query}");
    let resp = client
        .get(host, port, &path)
        .await
        .map_err(|e| ApiError::new(500, "InternalError", e))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        let message = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or(body);
        let reason = if status == StatusCode::NOT_FOUND {
            "NotFound"
        } else {
            "BadRequest"
        };
        return Err(ApiError::new(status.as_u16(), reason, message));
    }
    let mut out = Response::new(Body::new(resp.into_body()));
    out.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(out)
}

/// Request headers that stay with the API server: the caller's credentials and the hop itself.
fn forwarded(h: &HeaderName) -> bool {
    !matches!(
        h.as_str(),
        "authorization" | "host" | "cookie" | "content-length" | "transfer-encoding"
    ) && !h.as_str().starts_with("impersonate-")
}

/// `GET|POST pods/<name>/exec`: checks the request as kube-apiserver does, then proxies the
/// upgrade to the agent of the pod's node on the kubelet's `/exec` path (its query names) and,
/// once the agent has answered `101`, splices the two connections byte for byte, as
/// kube-apiserver's UpgradeAwareHandler does. Whatever the agent answers otherwise goes back to
/// the caller as it is. The proxy knows no stream protocol: the agent picks the subprotocol
/// (v5/v4.channel.k8s.io over WebSocket) and says so in its answer, which is passed on.
pub async fn pod_exec(st: &State, t: &Target, mut req: Request<Body>) -> ApiResult<Response> {
    let name = t.name.as_deref().unwrap_or("");
    let ns = t.namespace.as_deref().unwrap_or("default");
    let mut command = Vec::new();
    let mut container = None;
    let mut flags: Vec<(&str, bool)> = Vec::new();
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        let on = v == "true" || v == "1";
        match k.as_ref() {
            "command" => command.push(v.into_owned()),
            "container" => container = Some(v.into_owned()),
            "stdin" | "input" => flags.push(("input", on)),
            "stdout" | "output" => flags.push(("output", on)),
            "stderr" | "error" => flags.push(("error", on)),
            "tty" => flags.push(("tty", on)),
            _ => {}
        }
    }
    let pod = resources::get(st, t).await?;
    let container = pick_container(&pod, name, container.as_deref())?;
    if command.is_empty() {
        return Err(ApiError::bad_request(
            "you must specify at least one command for the container",
        ));
    }
    if !req.headers().contains_key(header::UPGRADE) {
        return Err(ApiError::bad_request("Upgrade request required"));
    }
    let (host, port, client) = agent_of(st, &pod, name).await?;
    let query = {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for c in &command {
            q.append_pair("command", c);
        }
        for (k, on) in flags {
            if on {
                q.append_pair(k, "1");
            }
        }
        q.finish()
    };
    let path = format!("/exec/{ns}/{name}/{container}?{query}");
    let mut headers = HeaderMap::new();
    for (k, v) in req.headers().iter().filter(|(k, _)| forwarded(k)) {
        headers.append(k, v.clone());
    }
    let from_client = hyper::upgrade::on(&mut req);
    let resp = client
        .upgrade(host, port, req.method().clone(), &path, &headers)
        .await
        .map_err(|e| ApiError::new(500, "InternalError", format!("error dialing backend: {e}")))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (parts, body) = resp.into_parts();
        return Ok(Response::from_parts(parts, Body::new(body)));
    }
    let mut out = Response::new(Body::empty());
    *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (k, v) in resp.headers() {
        if k != header::CONTENT_LENGTH {
            out.headers_mut().append(k, v.clone());
        }
    }
    let target = format!("{ns}/{name}/{container}");
    tokio::spawn(async move {
        let (to_agent, to_client) = match tokio::join!(hyper::upgrade::on(resp), from_client) {
            (Ok(a), Ok(c)) => (a, c),
            (a, c) => {
                tracing::debug!(target, agent = ?a.err(), client = ?c.err(), "exec upgrade failed");
                return;
            }
        };
        let mut agent = hyper_util::rt::TokioIo::new(to_agent);
        let mut caller = hyper_util::rt::TokioIo::new(to_client);
        if let Err(e) = tokio::io::copy_bidirectional(&mut caller, &mut agent).await {
            tracing::debug!(target, error = %e, "exec stream ended");
        }
    });
    Ok(out)
}
