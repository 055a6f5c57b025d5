//! Pulling from an OCI distribution registry (through `oci-client`): the manifest by tag or
//! digest, the linux entry for this node's architecture when it is an index, then the config and
//! every layer not already in the store. Every byte is checked against the digest that names it
//! before the store keeps it. Registries on the loopback interface are spoken to over plain HTTP
//! (Docker treats them as insecure by default); every other one over TLS. Anonymous access only.

use std::sync::Once;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::Client;
use serde_json::Value;

use super::reference::{self, Reference};
use super::store::{sha256_of, Store};
use super::ImageError;

const ACCEPT: &[&str] = &[
    OCI_IMAGE_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

/// What a pull put in the store.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The platform manifest: the image's ID.
    pub manifest_digest: String,
    /// What the reference resolved to (an index's digest when it named one).
    pub top_digest: String,
    pub extra_blobs: Vec<String>,
}

/// The names a pull of `r` records: as asked, and pinned by the digest it resolved to.
pub fn names_for(r: &Reference, top_digest: &str) -> Vec<String> {
    let mut names = vec![reference::index_name(r)];
    let pinned = format!("{}@{top_digest}", reference::repository(r));
    if !names.contains(&pinned) {
        names.push(pinned);
    }
    names
}

/// The node's architecture as OCI platforms name it.
pub fn node_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    }
}

fn client_for(r: &Reference) -> Client {
    static PROVIDER: Once = Once::new();
    PROVIDER.call_once(|| {
        // TLS goes through rustls with the ring provider the rest of the crate uses; another
        // component may have installed it already, which is as good.
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    });
    let protocol = if reference::is_loopback(r.registry()) {
        ClientProtocol::Http
    } else {
        ClientProtocol::Https
    };
    Client::new(ClientConfig {
        protocol,
        platform_resolver: None,
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(60)),
        ..Default::default()
    })
}

/// The error with its causes: a refused connection is only said in the innermost one.
fn registry_err(e: oci_client::errors::OciDistributionError) -> ImageError {
    let mut msg = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let s = c.to_string();
        if !msg.contains(&s) {
            msg.push_str(": ");
            msg.push_str(&s);
        }
        cause = c.source();
    }
    ImageError::Registry(msg)
}

/// The manifest `r` names, checked against its digest when `r` has one.
async fn manifest(client: &Client, r: &Reference) -> Result<(Vec<u8>, String), ImageError> {
    let (bytes, _) = client
        .pull_manifest_raw(r, &RegistryAuth::Anonymous, ACCEPT)
        .await
        .map_err(registry_err)?;
    let digest = sha256_of(&bytes);
    if let Some(want) = r.digest() {
        if want != digest {
            return Err(ImageError::DigestMismatch {
                expected: want.to_string(),
                actual: digest,
            });
        }
    }
    Ok((bytes.to_vec(), digest))
}

pub fn is_index_doc(v: &Value) -> bool {
    let mt = v["mediaType"].as_str().unwrap_or("");
    mt == OCI_IMAGE_INDEX_MEDIA_TYPE
        || mt == IMAGE_MANIFEST_LIST_MEDIA_TYPE
        || (mt.is_empty() && v["manifests"].is_array())
}

/// The manifest for linux on this node's architecture among an index's entries.
pub fn pick_platform(index: &Value) -> Option<String> {
    index["manifests"]
        .as_array()?
        .iter()
        .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == node_arch())
        .and_then(|m| m["digest"].as_str().map(str::to_string))
}

/// Downloads what the store lacks of the image `r` names.
pub async fn pull(store: &Store, r: &Reference) -> Result<Pulled, ImageError> {
    let client = client_for(r);
    let (bytes, top) = manifest(&client, r).await?;
    let top_v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ImageError::Format(format!("manifest of {r}: {e}")))?;
    let mut extra = Vec::new();
    let (bytes, digest) = if is_index_doc(&top_v) {
        store.put_blob_bytes(&bytes, Some(&top))?;
        extra.push(top.clone());
        let want = pick_platform(&top_v).ok_or_else(|| {
            ImageError::Registry(format!(
                "no matching manifest for linux/{} in the manifest list entries",
                node_arch()
            ))
        })?;
        manifest(&client, &r.clone_with_digest(want)).await?
    } else {
        (bytes, top.clone())
    };
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ImageError::Format(format!("manifest {digest}: {e}")))?;
    if v["schemaVersion"] != 2 || !v["config"].is_object() {
        return Err(ImageError::Format(format!(
            "manifest {digest} of {r} is not an image manifest (schema 2)"
        )));
    }
    let mut wanted = vec![v["config"]["digest"].as_str().unwrap_or("").to_string()];
    for l in v["layers"].as_array().into_iter().flatten() {
        wanted.push(l["digest"].as_str().unwrap_or("").to_string());
    }
    for d in wanted {
        super::store::hex_of(&d)?;
        if store.has_blob(&d) {
            continue;
        }
        let tmp = store.temp("download");
        let file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| ImageError::Io {
                context: format!("create {}", tmp.display()),
                source: e,
            })?;
        let got = client.pull_blob(r, d.as_str(), file).await;
        let checked = match got {
            Ok(()) => {
                let (s, t, d2) = (store.clone(), tmp.clone(), d.clone());
                tokio::task::spawn_blocking(move || s.adopt(&t, &d2))
                    .await
                    .map_err(|e| ImageError::Format(e.to_string()))
                    .and_then(|r| r)
            }
            Err(e) => Err(registry_err(e)),
        };
        if let Err(e) = checked {
            let _ = std::fs::remove_file(&tmp);
            return Err(match e {
                ImageError::DigestMismatch { expected, actual } => ImageError::Registry(format!(
                    "blob {expected}: digest verification failed: got {actual}"
                )),
                e => e,
            });
        }
    }
    // The manifest last: a manifest in the store means its blobs are too.
    store.put_blob_bytes(&bytes, Some(&digest))?;
    Ok(Pulled {
        manifest_digest: digest,
        top_digest: top,
        extra_blobs: extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_index_yields_the_linux_entry_for_this_architecture() {
        let idx = json!({"schemaVersion": 2, "mediaType": OCI_IMAGE_INDEX_MEDIA_TYPE, "manifests": [
            {"digest": "sha256:a", "platform": {"os": "windows", "architecture": node_arch()}},
            {"digest": "sha256:b", "platform": {"os": "linux", "architecture": "s390x"}},
            {"digest": "sha256:c", "platform": {"os": "linux", "architecture": node_arch()}},
        ]});
        assert!(is_index_doc(&idx));
        assert_eq!(pick_platform(&idx).as_deref(), Some("sha256:c"));
        assert!(!is_index_doc(&json!({"schemaVersion": 2, "config": {}})));
    }

    #[test]
    fn a_pull_records_the_name_and_the_digest_it_resolved_to() {
        let r = super::super::normalize("127.0.0.1:5000/app:1").unwrap();
        let d = format!("sha256:{}", "b".repeat(64));
        assert_eq!(
            names_for(&r, &d),
            [
                "127.0.0.1:5000/app:1".to_string(),
                format!("127.0.0.1:5000/app@{d}")
            ]
        );
    }
}
