//! Joining a cluster with a bootstrap token, as `kubeadm join` discovers it: read the public
//! `cluster-info` ConfigMap without trusting the connection, check its kubeconfig against the
//! token's signature (only the token's holder and the cluster know the secret) and the CA against
//! the pinned public-key hashes, read it again over a connection verified with that CA, and write
//! the node's kubeconfig: the cluster's CA and address, with the token as its credential.
//!
//! A client of the API server only: never imports `registry` or `apiserver`.

use std::path::Path;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::CertificateDer;

use crate::bootstrap::{self, Token, TokenError};

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("invalid API server address {0:?}")]
    Address(String),
    #[error("failed to request the cluster-info ConfigMap: {0}")]
    Fetch(kube::Error),
    #[error("the cluster-info ConfigMap changed between the insecure and the verified read")]
    Changed,
    #[error("using token-based discovery without caCertHashes can be unsafe; pass --discovery-token-ca-cert-hash sha256:<hash> (printed by `cairn-orchestrator token create --print-join-command`), or --discovery-token-unsafe-skip-ca-verification to continue")]
    NoPins,
    #[error("write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// What discovery found and checked.
#[derive(Debug, Clone)]
pub struct Discovered {
    /// The API server address the node was told to join (kubeadm keeps the one it was given).
    pub server: String,
    pub ca_pem: String,
    /// DER of every certificate in `ca_pem`, for verifying the API server's callers.
    pub ca_der: Vec<Vec<u8>>,
}

async fn fetch(server: &str, ca: Option<&[Vec<u8>]>) -> Result<ConfigMap, JoinError> {
    let url: hyper::Uri = server
        .parse()
        .map_err(|_| JoinError::Address(server.into()))?;
    if url.scheme_str() != Some("https") || url.host().is_none() {
        return Err(JoinError::Address(server.into()));
    }
    let mut cfg = kube::Config::new(url);
    match ca {
        Some(ca) => cfg.root_cert = Some(ca.to_vec()),
        // Nothing is trusted yet: what comes back is checked against the token's signature.
        None => cfg.accept_invalid_certs = true,
    }
    cfg.connect_timeout = Some(std::time::Duration::from_secs(10));
    cfg.read_timeout = Some(std::time::Duration::from_secs(30));
    let client = kube::Client::try_from(cfg).map_err(JoinError::Fetch)?;
    Api::<ConfigMap>::namespaced(client, bootstrap::CLUSTER_INFO_NAMESPACE)
        .get(bootstrap::CLUSTER_INFO)
        .await
        .map_err(JoinError::Fetch)
}

/// Finds the cluster behind `server` and checks it with `token` and `pins` (`sha256:<hex>` of the
/// CA's public key; at least one must match unless `skip_ca_verification`).
pub async fn discover(
    server: &str,
    token: &Token,
    pins: &[String],
    skip_ca_verification: bool,
) -> Result<Discovered, JoinError> {
    let pins: Vec<String> = pins
        .iter()
        .map(|p| bootstrap::parse_pin(p))
        .collect::<Result<_, _>>()?;
    if pins.is_empty() && !skip_ca_verification {
        return Err(JoinError::NoPins);
    }
    let cm = fetch(server, None).await?;
    let data = cm.data.unwrap_or_default();
    let content = data
        .get(bootstrap::KUBECONFIG_KEY)
        .ok_or_else(|| TokenError::ClusterInfo("there is no kubeconfig in it".into()))?;
    let jws = data
        .get(&format!("{}{}", bootstrap::JWS_PREFIX, token.id))
        .ok_or_else(|| TokenError::NoSignature(token.id.clone()))?;
    bootstrap::verify_detached(jws, content, token)?;
    let (_, ca_pem) = bootstrap::parse_cluster_info(content)?;
    let ca_der: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| TokenError::BadCa(e.to_string()))?;
    if ca_der.is_empty() {
        return Err(TokenError::BadCa("no certificate in it".into()).into());
    }
    if !pins.is_empty() {
        let got: Vec<String> = ca_der
            .iter()
            .map(|d| bootstrap::ca_pin(d))
            .collect::<Result<_, _>>()?;
        if !got.iter().any(|g| pins.contains(g)) {
            return Err(TokenError::PinMismatch {
                got: got.join(", "),
            }
            .into());
        }
    }
    // Now the CA is trusted: the same object over a verified connection, as kubeadm checks, so a
    // server that only pretended to be the cluster is caught here.
    let again = fetch(server, Some(&ca_der)).await?;
    if again
        .data
        .unwrap_or_default()
        .get(bootstrap::KUBECONFIG_KEY)
        != Some(content)
    {
        return Err(JoinError::Changed);
    }
    Ok(Discovered {
        server: server.trim_end_matches('/').to_string(),
        ca_pem,
        ca_der,
    })
}

/// Writes the node's kubeconfig (owner-only: it holds the token).
pub fn write_kubeconfig(path: &Path, found: &Discovered, token: &Token) -> Result<(), JoinError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let text = crate::client::kubeconfig(
        &found.server,
        &found.ca_pem,
        &token.user(),
        &token.to_string(),
    );
    let err = |source| JoinError::Write {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}
