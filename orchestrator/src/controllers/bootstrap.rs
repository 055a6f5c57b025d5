//! The bootstrap signer and the token cleaner (kube-controller-manager's `bootstrapsigner` and
//! `tokencleaner`): kube-public's `cluster-info` ConfigMap carries one detached JWS of its
//! kubeconfig per bootstrap token usable for signing, so a joining node holding a token can check
//! the CA it downloaded; signatures of tokens that are gone or expired are removed, and expired
//! token Secrets are deleted.
//!
//! Works from watches of kube-system's Secrets and of that one ConfigMap; wakes at the next expiry.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};

use crate::bootstrap::{self, Token, TokenSecret};

/// The tokens in kube-system's Secrets that are well formed, with the Secret's uid.
fn tokens(secrets: &Store<Secret>) -> Vec<(TokenSecret, String)> {
    secrets
        .state()
        .iter()
        .filter(|s| s.type_.as_deref() == Some(bootstrap::SECRET_TYPE))
        .filter(|s| s.metadata.deletion_timestamp.is_none())
        .filter_map(|s| {
            let name = s.metadata.name.as_deref()?;
            let data: BTreeMap<String, Vec<u8>> = s
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect();
            let t = TokenSecret::from_data(name, &data)?;
            Some((t, s.metadata.uid.clone().unwrap_or_default()))
        })
        .collect()
}

/// The cluster-info data with exactly one signature per signing token.
fn signed(data: &BTreeMap<String, String>, tokens: &[TokenSecret]) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = data
        .iter()
        .filter(|(k, _)| !k.starts_with(bootstrap::JWS_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let Some(content) = data.get(bootstrap::KUBECONFIG_KEY) else {
        return out;
    };
    for t in tokens {
        let token = Token {
            id: t.id.clone(),
            secret: t.secret.clone(),
        };
        out.insert(
            format!("{}{}", bootstrap::JWS_PREFIX, t.id),
            bootstrap::sign_detached(content, &token),
        );
    }
    out
}

async fn pass(
    client: &kube::Client,
    secrets: &Store<Secret>,
    info: &Store<ConfigMap>,
) -> Result<Option<jiff::Timestamp>, kube::Error> {
    let now = jiff::Timestamp::now();
    let all = tokens(secrets);
    let mut next_expiry: Option<jiff::Timestamp> = None;
    let api: Api<Secret> = Api::namespaced(client.clone(), bootstrap::NAMESPACE);
    for (t, uid) in &all {
        if t.expired(now) {
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api
                .delete(&format!("{}{}", bootstrap::SECRET_PREFIX, t.id), &dp)
                .await
            {
                Ok(_) => tracing::info!(token = %t.id, "deleted an expired bootstrap token"),
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => return Err(e),
            }
        } else if let Some(at) = t.expiration.as_ref().and_then(|e| e.parse().ok()) {
            next_expiry = Some(next_expiry.map_or(at, |n: jiff::Timestamp| n.min(at)));
        }
    }
    let signing: Vec<TokenSecret> = all
        .into_iter()
        .map(|(t, _)| t)
        .filter(|t| t.signing && !t.expired(now))
        .collect();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), bootstrap::CLUSTER_INFO_NAMESPACE);
    for cm in info.state() {
        if cm.metadata.name.as_deref() != Some(bootstrap::CLUSTER_INFO) {
            continue;
        }
        let data = cm.data.clone().unwrap_or_default();
        let want = signed(&data, &signing);
        if want != data {
            let mut new = (*cm).clone();
            new.data = Some(want);
            // The resourceVersion it carries makes a concurrent change a conflict, retried on the
            // next event.
            match cms
                .replace(bootstrap::CLUSTER_INFO, &PostParams::default(), &new)
                .await
            {
                Ok(_) => tracing::info!(tokens = signing.len(), "signed cluster-info"),
                Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(next_expiry)
}

/// Publishes kube-public's cluster-info: where the API server is and its CA, for nodes that join
/// (what `kubeadm init` does; the signer then adds a signature per token). Keeps signatures
/// already there.
pub async fn publish_cluster_info(
    client: &kube::Client,
    url: &str,
    ca_pem: &str,
) -> Result<(), kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), bootstrap::CLUSTER_INFO_NAMESPACE);
    let content = bootstrap::cluster_info_kubeconfig(url, ca_pem);
    let patch = serde_json::json!({"data": {bootstrap::KUBECONFIG_KEY: content}});
    match api
        .patch(
            bootstrap::CLUSTER_INFO,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let cm = ConfigMap {
                metadata: kube::api::ObjectMeta {
                    name: Some(bootstrap::CLUSTER_INFO.into()),
                    namespace: Some(bootstrap::CLUSTER_INFO_NAMESPACE.into()),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([(
                    bootstrap::KUBECONFIG_KEY.to_string(),
                    content,
                )])),
                ..Default::default()
            };
            api.create(&PostParams::default(), &cm).await.map(|_| ())
        }
        Err(e) => Err(e),
    }
}

pub async fn run(client: kube::Client, stop: impl std::future::Future<Output = ()>) {
    let (secrets, secret_writer) = reflector::store();
    let (info, info_writer) = reflector::store();
    let secret_events = watcher(
        Api::<Secret>::namespaced(client.clone(), bootstrap::NAMESPACE),
        watcher::Config::default().fields(&format!("type={}", bootstrap::SECRET_TYPE)),
    )
    .default_backoff()
    .reflect(secret_writer)
    .map(|_| ());
    let info_events = watcher(
        Api::<ConfigMap>::namespaced(client.clone(), bootstrap::CLUSTER_INFO_NAMESPACE),
        watcher::Config::default().fields(&format!("metadata.name={}", bootstrap::CLUSTER_INFO)),
    )
    .default_backoff()
    .reflect(info_writer)
    .map(|_| ());
    let mut events = futures::stream::select(secret_events.boxed(), info_events.boxed());
    tokio::pin!(stop);
    let mut wake = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = &mut stop => return,
            e = events.next() => {
                if e.is_none() {
                    return;
                }
                // Take every event already queued before one pass over the caches.
                while let Some(Some(())) = futures::FutureExt::now_or_never(events.next()) {}
            }
            _ = tokio::time::sleep_until(wake) => {}
        }
        // Both caches listed first: a pass over a half-filled one would drop good signatures.
        let ready = |r: Option<Result<(), _>>| matches!(r, Some(Ok(())));
        if !ready(futures::FutureExt::now_or_never(secrets.wait_until_ready()))
            || !ready(futures::FutureExt::now_or_never(info.wait_until_ready()))
        {
            continue;
        }
        wake = match pass(&client, &secrets, &info).await {
            Ok(Some(at)) => {
                let secs = at.duration_since(jiff::Timestamp::now()).as_secs_f64();
                tokio::time::Instant::now() + Duration::from_secs_f64(secs.clamp(0.0, 3600.0))
            }
            Ok(None) => tokio::time::Instant::now() + Duration::from_secs(3600),
            Err(e) => {
                tracing::warn!(error = %e, "bootstrap signer pass");
                tokio::time::Instant::now() + Duration::from_secs(1)
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_the_signing_tokens() {
        let t = |id: &str| TokenSecret {
            id: id.into(),
            secret: "0123456789abcdef".into(),
            signing: true,
            ..Default::default()
        };
        let data = BTreeMap::from([
            ("kubeconfig".to_string(), "cfg".to_string()),
            ("jws-kubeconfig-gone00".to_string(), "old".to_string()),
        ]);
        let out = signed(&data, &[t("aaaaaa"), t("bbbbbb")]);
        let keys: Vec<&str> = out.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "jws-kubeconfig-aaaaaa",
                "jws-kubeconfig-bbbbbb",
                "kubeconfig"
            ]
        );
        let token = Token::parse("aaaaaa.0123456789abcdef").unwrap();
        bootstrap::verify_detached(&out["jws-kubeconfig-aaaaaa"], "cfg", &token).unwrap();
        // Nothing to sign without a kubeconfig.
        assert!(signed(&BTreeMap::new(), &[t("aaaaaa")]).is_empty());
    }
}
