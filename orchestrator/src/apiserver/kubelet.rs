//! The API server's calls to node agents, as kube-apiserver's to kubelets: HTTPS to the node's
//! InternalIP and advertised kubeletEndpoint port, presenting the kubelet client certificate
//! (`--kubelet-client-certificate`). The agent's serving certificate is not verified, as
//! kube-apiserver does not verify kubelets' without `--kubelet-certificate-authority`. Serves
//! `pods/log`. It never imports `registry` directly; it reads pods and nodes through `resources`.

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use serde_json::Value;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider,
};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

use super::request::{Query, Target};
use super::status::{ApiError, ApiResult};
use super::tls::TlsError;
use super::{resources, State};
use crate::api;

/// Accepts any serving certificate, checking only that the handshake was signed by its key.
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, tokio_rustls::rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

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
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
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

/// `GET pods/<name>/log`: the container's log from the agent of the pod's node, streamed.
pub async fn pod_log(st: &State, t: &Target, q: &Query) -> ApiResult<Response> {
    let pod = resources::get(st, t).await?;
    let name = t.name.as_deref().unwrap_or("");
    let ns = t.namespace.as_deref().unwrap_or("default");
    let names = |field: &str| -> Vec<String> {
        pod["spec"][field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect()
    };
    let containers = names("containers");
    let container = match q.get("container") {
        Some(c) => c.to_string(),
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            )))
        }
    };
    if !containers.contains(&container) && !names("initContainers").contains(&container) {
        return Err(ApiError::bad_request(format!(
            "container {container} is not valid for pod {name}"
        )));
    }
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
