//! Garbage collector: objects whose owners are all gone are deleted (background propagation), an
//! owner being deleted in the foreground waits until its dependents are gone (the
//! `foregroundDeletion` finalizer), and an owner deleted with orphan propagation first lets its
//! dependents go (the `orphan` finalizer removes their references to it).
//!
//! It reads every served kind through reflector caches of `DynamicObject`s and confirms an owner's
//! absence with a live read before deleting anything, since one kind's cache may lag another's.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
    PropagationPolicy,
};
use kube::runtime::reflector::Store;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use serde_json::json;
use tokio::sync::Notify;

use crate::api::{Resource, RESOURCES};

fn api_resource(r: &Resource) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(r.group, r.version, r.kind), r.plural)
}

pub(crate) fn api_for(client: &kube::Client, r: &Resource, ns: Option<&str>) -> Api<DynamicObject> {
    let ar = api_resource(r);
    match ns {
        Some(ns) if r.namespaced => Api::namespaced_with(client.clone(), ns, &ar),
        _ => Api::all_with(client.clone(), &ar),
    }
}

struct Cache {
    resource: &'static Resource,
    store: Store<DynamicObject>,
}

/// Whether the owner named by `o` still exists with the same uid, read live.
async fn owner_exists(
    client: &kube::Client,
    ns: Option<&str>,
    o: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
) -> Result<bool, kube::Error> {
    let Some(r) = RESOURCES
        .iter()
        .find(|r| r.kind == o.kind && r.api_version() == o.api_version)
    else {
        // An owner of a kind this server does not serve cannot exist here.
        return Ok(false);
    };
    match api_for(client, r, ns).get_opt(&o.name).await? {
        Some(obj) => Ok(obj.metadata.uid.as_deref() == Some(o.uid.as_str())),
        None => Ok(false),
    }
}

pub async fn run(client: kube::Client, stop: impl std::future::Future<Output = ()>) {
    let wake = Arc::new(Notify::new());
    let mut caches = Vec::new();
    let mut tasks = Vec::new();
    for r in RESOURCES {
        let writer = reflector::store::Writer::new(api_resource(r));
        let store = writer.as_reader();
        let w = wake.clone();
        tasks.push(tokio::spawn(
            watcher(api_for(&client, r, None), watcher::Config::default())
                .default_backoff()
                .reflect(writer)
                .for_each(move |_| {
                    w.notify_one();
                    futures::future::ready(())
                }),
        ));
        caches.push(Cache { resource: r, store });
    }
    let _guard = super::AbortOnDrop(tasks);
    for c in &caches {
        let _ = c.store.wait_until_ready().await;
    }
    tokio::pin!(stop);
    loop {
        if let Err(e) = pass(&client, &caches).await {
            tracing::warn!(error = %e, "garbage collection pass");
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
        // A pass scans every cached object, so passes are spaced: a burst of changes (thousands of
        // pods being created) costs one pass a second, not one per change.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn pass(client: &kube::Client, caches: &[Cache]) -> Result<(), kube::Error> {
    // Every object by uid, and the dependents of each owner uid.
    let mut by_uid: HashMap<String, (&'static Resource, Arc<DynamicObject>)> = HashMap::new();
    let mut dependents: HashMap<String, Vec<(&'static Resource, Arc<DynamicObject>)>> =
        HashMap::new();
    for c in caches {
        for o in c.store.state() {
            if let Some(u) = o.metadata.uid.clone() {
                by_uid.insert(u, (c.resource, o.clone()));
            }
            for r in o.metadata.owner_references.iter().flatten() {
                dependents
                    .entry(r.uid.clone())
                    .or_default()
                    .push((c.resource, o.clone()));
            }
        }
    }
    let pp = PatchParams::default();
    // Owners being deleted with a propagation finalizer.
    for (r, o) in by_uid.values() {
        if o.metadata.deletion_timestamp.is_none() {
            continue;
        }
        let finalizers = o.metadata.finalizers.clone().unwrap_or_default();
        let uid = o.metadata.uid.clone().unwrap_or_default();
        let deps = dependents.get(&uid).cloned().unwrap_or_default();
        let ns = o.metadata.namespace.as_deref();
        let name = o.metadata.name.clone().unwrap_or_default();
        if finalizers.iter().any(|f| f == "orphan") {
            for (dr, d) in &deps {
                let refs: Vec<_> = d
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .filter(|x| x.uid != uid)
                    .cloned()
                    .collect();
                let patch = json!({"metadata": {"ownerReferences": refs, "uid": d.metadata.uid}});
                let _ = api_for(client, dr, d.metadata.namespace.as_deref())
                    .patch(
                        d.metadata.name.as_deref().unwrap_or(""),
                        &pp,
                        &Patch::Merge(patch),
                    )
                    .await;
            }
            remove_finalizer(client, r, ns, &name, &finalizers, "orphan").await?;
        } else if finalizers.iter().any(|f| f == "foregroundDeletion") {
            let live: Vec<_> = deps
                .iter()
                .filter(|(_, d)| d.metadata.deletion_timestamp.is_none())
                .collect();
            for (dr, d) in &live {
                let dp = DeleteParams {
                    propagation_policy: Some(PropagationPolicy::Foreground),
                    ..Default::default()
                };
                let _ = api_for(client, dr, d.metadata.namespace.as_deref())
                    .delete(d.metadata.name.as_deref().unwrap_or(""), &dp)
                    .await;
            }
            if deps.is_empty() {
                remove_finalizer(client, r, ns, &name, &finalizers, "foregroundDeletion").await?;
            }
        }
    }
    // Dependents whose owners are all gone.
    let mut seen = HashSet::new();
    for (r, o) in by_uid.values() {
        let refs = o.metadata.owner_references.clone().unwrap_or_default();
        if refs.is_empty()
            || o.metadata.deletion_timestamp.is_some()
            || !seen.insert(o.metadata.uid.clone())
        {
            continue;
        }
        if refs.iter().any(|x| by_uid.contains_key(&x.uid)) {
            continue;
        }
        let ns = o.metadata.namespace.as_deref();
        let mut absent = Vec::new();
        for x in &refs {
            if !owner_exists(client, ns, x).await? {
                absent.push(x.uid.clone());
            }
        }
        let name = o.metadata.name.clone().unwrap_or_default();
        let api = api_for(client, r, ns);
        if absent.len() == refs.len() {
            let dp = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Background),
                preconditions: Some(kube::api::Preconditions {
                    uid: o.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&name, &dp).await {
                Ok(_) => tracing::info!(kind = r.kind, %name, "deleted: its owners are gone"),
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => return Err(e),
            }
        } else if !absent.is_empty() {
            let keep: Vec<_> = refs
                .iter()
                .filter(|x| !absent.contains(&x.uid))
                .cloned()
                .collect();
            let patch = json!({"metadata": {"ownerReferences": keep, "uid": o.metadata.uid}});
            let _ = api.patch(&name, &pp, &Patch::Merge(patch)).await;
        }
    }
    Ok(())
}

async fn remove_finalizer(
    client: &kube::Client,
    r: &Resource,
    ns: Option<&str>,
    name: &str,
    finalizers: &[String],
    which: &str,
) -> Result<(), kube::Error> {
    let keep: Vec<&String> = finalizers.iter().filter(|f| *f != which).collect();
    let patch = json!({"metadata": {"finalizers": keep}});
    match api_for(client, r, ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) | Err(kube::Error::Api(_)) => Ok(()),
        Err(e) => Err(e),
    }
}
