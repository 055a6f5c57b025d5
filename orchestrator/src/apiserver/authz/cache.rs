//! The RBAC policy in memory, kept current from the store: each of the four kinds is listed once,
//! then followed by a store watch from the list's revision, so a new or changed binding takes
//! effect as soon as its watch event arrives (milliseconds), without a read per request. A watch
//! that ends or fails (store unreachable, history compacted) is replaced by a fresh list and watch.
//!
//! Reads the store through `registry` only; answers nothing over HTTP itself.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::rules::{Kind, Policy};
use crate::api::{self, meta};
use crate::registry::{self, Change, ReadRevision, Registry, StoreError};

const KINDS: [Kind; 4] = [
    Kind::ClusterRole,
    Kind::ClusterRoleBinding,
    Kind::Role,
    Kind::RoleBinding,
];

/// How long a failed watch waits before listing again.
const RELIST_DELAY: Duration = Duration::from_millis(500);

fn resource(kind: Kind) -> &'static api::Resource {
    let plural = match kind {
        Kind::Role => "roles",
        Kind::ClusterRole => "clusterroles",
        Kind::RoleBinding => "rolebindings",
        Kind::ClusterRoleBinding => "clusterrolebindings",
    };
    api::lookup("rbac.authorization.k8s.io", "v1", plural).expect("RBAC kinds are served")
}

/// The shared policy and the tasks that follow the store.
pub struct PolicyCache {
    policy: RwLock<Policy>,
}

impl PolicyCache {
    /// Lists every RBAC object (so the policy is complete before the first request is decided)
    /// and starts following the store; the tasks stop when the returned handles are aborted.
    pub async fn start(
        registry: Registry,
    ) -> Result<(Arc<PolicyCache>, Vec<tokio::task::JoinHandle<()>>), StoreError> {
        let cache = Arc::new(PolicyCache {
            policy: RwLock::new(Policy::default()),
        });
        let mut tasks = Vec::new();
        for kind in KINDS {
            let rev = cache.load(&registry, kind).await?;
            let (c, reg) = (cache.clone(), registry.clone());
            tasks.push(tokio::spawn(async move { c.follow(reg, kind, rev).await }));
        }
        Ok((cache, tasks))
    }

    /// Runs `f` on the current policy.
    pub fn read<R>(&self, f: impl FnOnce(&Policy) -> R) -> R {
        f(&self.policy.read().expect("not poisoned"))
    }

    /// Replaces every object of `kind` with what the store holds now; returns the revision read.
    async fn load(&self, registry: &Registry, kind: Kind) -> Result<i64, StoreError> {
        let r = resource(kind);
        let page = registry
            .list_all(r, &registry::prefix(r, None), ReadRevision::Latest)
            .await?;
        let mut p = self.policy.write().expect("not poisoned");
        p.clear(kind);
        for obj in &page.items {
            p.put(kind, obj);
        }
        Ok(page.revision)
    }

    async fn follow(&self, registry: Registry, kind: Kind, mut rev: i64) {
        let r = resource(kind);
        loop {
            match registry.watch(r, &registry::prefix(r, None), rev + 1).await {
                Ok(mut w) => {
                    while let Some(batch) = w.next().await {
                        let Ok(batch) = batch else { break };
                        let mut p = self.policy.write().expect("not poisoned");
                        for change in &batch.changes {
                            match change {
                                Change::Put { object, .. } => p.put(kind, object),
                                Change::Delete { object } => {
                                    p.remove(kind, meta::namespace(object), meta::name(object))
                                }
                            }
                        }
                        rev = rev.max(batch.revision);
                    }
                }
                Err(e) => tracing::warn!(kind = ?kind, error = %e, "RBAC watch failed"),
            }
            tokio::time::sleep(RELIST_DELAY).await;
            match self.load(&registry, kind).await {
                Ok(r) => rev = r,
                Err(e) => tracing::warn!(kind = ?kind, error = %e, "RBAC relist failed"),
            }
        }
    }
}
