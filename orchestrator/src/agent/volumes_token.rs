//! Service account tokens for pods' projected volumes, kept as the kubelet's token manager keeps
//! them: one TokenRequest per pod, audience and lifetime, bound to the pod; asked for again once
//! 80 % of its lifetime has passed (or a day, for long-lived ones), so the file a client reads is
//! always a token with time left. A request that fails is remembered with its message (the
//! volume's FailedMount) and tried again on a later sync.
//!
//! Talks to the API server only; volume resolution reads the cache through [`Tokens::get`] and
//! stays pure. Never imports `registry` or `apiserver`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};

/// The lifetime a projection asks for when it names none (the API's default).
const DEFAULT_EXPIRATION: i64 = 3600;

/// A token older than this is renewed whatever its lifetime (the kubelet's maximum TTL).
const MAX_AGE_SECONDS: i64 = 24 * 60 * 60;

/// How long a failed request waits before the next attempt.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// How long one TokenRequest may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// TokenRequests in flight at once.
const CONCURRENT: usize = 8;

/// One token a pod's volumes need.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    pod_uid: String,
    /// Empty: the API server's own audiences.
    audience: String,
    expiration: i64,
}

#[derive(Debug, Clone)]
enum Entry {
    Token {
        token: String,
        /// Seconds since the epoch.
        issued: i64,
        expires: i64,
    },
    Failed {
        message: String,
        at: Instant,
    },
}

/// Whether a token issued at `issued` and expiring at `expires` is due for renewal at `now`.
fn needs_refresh(issued: i64, expires: i64, now: i64) -> bool {
    let ttl = (expires - issued).max(0);
    now >= issued + ttl * 8 / 10 || now >= issued + MAX_AGE_SECONDS
}

/// The (audience, lifetime) of every serviceAccountToken projection of `pod`.
fn projections(pod: &Pod) -> Vec<(String, i64)> {
    let mut out: Vec<(String, i64)> = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.projected.as_ref())
        .flat_map(|p| p.sources.iter().flatten())
        .filter_map(|src| src.service_account_token.as_ref())
        .map(|t| {
            (
                t.audience.clone().unwrap_or_default(),
                t.expiration_seconds.unwrap_or(DEFAULT_EXPIRATION),
            )
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The tokens of the node's pods.
#[derive(Clone)]
pub struct Tokens {
    client: kube::Client,
    cache: Arc<Mutex<HashMap<Key, Entry>>>,
}

impl Tokens {
    pub fn new(client: kube::Client) -> Tokens {
        Tokens {
            client,
            cache: Arc::default(),
        }
    }

    /// Requests the tokens `pods` need that are missing or due, and forgets those of pods that
    /// are gone or stopping.
    pub async fn refresh(&self, pods: &[Arc<Pod>]) {
        let now = jiff::Timestamp::now().as_second();
        let mut wanted: HashSet<Key> = HashSet::new();
        let mut due: Vec<(Key, Arc<Pod>)> = Vec::new();
        {
            let cache = self.cache.lock().expect("not poisoned");
            for pod in pods {
                let finished = matches!(
                    pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                );
                if pod.metadata.deletion_timestamp.is_some() || finished {
                    continue;
                }
                let Some(uid) = pod.metadata.uid.clone() else {
                    continue;
                };
                for (audience, expiration) in projections(pod) {
                    let key = Key {
                        pod_uid: uid.clone(),
                        audience,
                        expiration,
                    };
                    let stale = match cache.get(&key) {
                        None => true,
                        Some(Entry::Token {
                            issued, expires, ..
                        }) => needs_refresh(*issued, *expires, now),
                        Some(Entry::Failed { at, .. }) => at.elapsed() >= RETRY_AFTER,
                    };
                    if stale {
                        due.push((key.clone(), pod.clone()));
                    }
                    wanted.insert(key);
                }
            }
        }
        let fetched: Vec<(Key, Result<Entry, String>)> = futures::stream::iter(due)
            .map(|(key, pod)| async move {
                let entry = self.request(&key, &pod).await;
                (key, entry)
            })
            .buffer_unordered(CONCURRENT)
            .collect()
            .await;
        let mut cache = self.cache.lock().expect("not poisoned");
        cache.retain(|k, _| wanted.contains(k));
        for (key, entry) in fetched {
            let entry = match (entry, cache.get(&key)) {
                (Ok(e), _) => e,
                // A failed renewal keeps the token that still works until it expires.
                (Err(message), Some(Entry::Token { expires, .. })) if *expires > now => {
                    tracing::warn!(pod = %key.pod_uid, message = %message, "token renewal failed");
                    continue;
                }
                (Err(message), previous) => {
                    // Said once per cause, not on every retry.
                    let repeated =
                        matches!(previous, Some(Entry::Failed { message: m, .. }) if *m == message);
                    if !repeated {
                        tracing::warn!(pod = %key.pod_uid, message = %message, "token request failed");
                    }
                    Entry::Failed {
                        message,
                        at: Instant::now(),
                    }
                }
            };
            cache.insert(key, entry);
        }
    }

    async fn request(&self, key: &Key, pod: &Pod) -> Result<Entry, String> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let sa = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let tr = TokenRequest {
            spec: TokenRequestSpec {
                audiences: if key.audience.is_empty() {
                    Vec::new()
                } else {
                    vec![key.audience.clone()]
                },
                expiration_seconds: Some(key.expiration),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: pod.metadata.name.clone(),
                    uid: pod.metadata.uid.clone(),
                }),
            },
            ..Default::default()
        };
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), ns);
        let answer = tokio::time::timeout(
            REQUEST_TIMEOUT,
            api.create_token_request(&sa, &PostParams::default(), &tr),
        )
        .await
        .map_err(|_| "the TokenRequest timed out".to_string())?
        .map_err(|e| match e {
            kube::Error::Api(s) => s.message,
            e => e.to_string(),
        })?;
        let status = answer
            .status
            .ok_or_else(|| "the TokenRequest came back without a token".to_string())?;
        let expires = status.expiration_timestamp.0.as_second();
        Ok(Entry::Token {
            token: status.token,
            issued: jiff::Timestamp::now().as_second(),
            expires,
        })
    }

    /// The token for a projection of the pod `pod_uid`, or why there is none.
    pub fn get(&self, pod_uid: &str, audience: &str, expiration: i64) -> Result<Vec<u8>, String> {
        let key = Key {
            pod_uid: pod_uid.to_string(),
            audience: audience.to_string(),
            expiration,
        };
        match self.cache.lock().expect("not poisoned").get(&key) {
            Some(Entry::Token { token, .. }) => Ok(token.clone().into_bytes()),
            Some(Entry::Failed { message, .. }) => Err(message.clone()),
            None => Err("no token requested yet".into()),
        }
    }
}

/// The default lifetime, for volume resolution to find the cache key a projection used.
pub fn expiration_of(requested: Option<i64>) -> i64 {
    requested.unwrap_or(DEFAULT_EXPIRATION)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_token_is_renewed_after_80_percent_of_its_life_or_a_day() {
        assert!(!needs_refresh(1000, 1000 + 3607, 1000));
        assert!(!needs_refresh(1000, 1000 + 3600, 1000 + 2879));
        assert!(needs_refresh(1000, 1000 + 3600, 1000 + 2880));
        let year = 365 * 24 * 3600;
        assert!(!needs_refresh(0, year, MAX_AGE_SECONDS - 1));
        assert!(needs_refresh(0, year, MAX_AGE_SECONDS));
    }

    #[test]
    fn projections_are_found_in_every_projected_volume() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {
            "containers": [{"name": "c"}],
            "volumes": [
                {"name": "a", "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]}},
                {"name": "b", "projected": {"sources": [{"serviceAccountToken": {"path": "t", "audience": "vault"}}]}},
                {"name": "c", "projected": {"sources": [{"serviceAccountToken": {"path": "t2", "expirationSeconds": 3607}}]}},
                {"name": "d", "emptyDir": {}},
            ]}}))
        .unwrap();
        assert_eq!(
            projections(&pod),
            vec![(String::new(), 3607), ("vault".to_string(), 3600)]
        );
    }
}
