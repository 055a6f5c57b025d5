//! Container images on the node, in the role containerd's image service plays for the kubelet:
//! pulling from OCI registries (`registry`), loading OCI layouts and `docker save` archives
//! (`import`), keeping them content-addressed under the agent's root directory (`store`), each
//! layer unpacked once for overlayfs (`layer`), honouring imagePullPolicy with the kubelet's
//! reasons, reporting them in the Node's status and collecting unused ones at the kubelet's disk
//! thresholds (`gc`).
//!
//! What a container gets from an image is plain data: the unpacked layers' paths (topmost first)
//! and the config's Entrypoint, Cmd, Env, WorkingDir and User, merged into the runtime's
//! container spec with Kubernetes' rules by [`Image::apply`]. The runtime never learns of images.
//! Concurrent pulls of one reference share one download. This module never imports `registry`
//! or `apiserver`; of the runtime it reads only which pods use which images.

pub mod gc;
pub mod import;
pub mod layer;
pub mod reference;
pub mod registry;
pub mod store;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use reference::{normalize, Reference};
use store::{ImageRecord, Index, Store};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("couldn't parse image name {0:?}: {1}")]
    InvalidReference(String, String),
    #[error("image {0:?} not found")]
    NotFound(String),
    #[error("image {0} is in use by a container")]
    InUse(String),
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("{0}")]
    Registry(String),
    #[error("{0}")]
    Format(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// The parts of an image's config a container runs with.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub working_dir: String,
    #[serde(default)]
    pub user: String,
}

impl ImageConfig {
    /// From an OCI (or Docker) image config document.
    pub fn parse(bytes: &[u8]) -> Result<ImageConfig, ImageError> {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| ImageError::Format(format!("image config: {e}")))?;
        let c = &v["config"];
        let strings = |k: &str| -> Vec<String> {
            c[k].as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        };
        let text = |k: &str| c[k].as_str().unwrap_or("").to_string();
        Ok(ImageConfig {
            entrypoint: strings("Entrypoint"),
            cmd: strings("Cmd"),
            env: strings("Env"),
            working_dir: text("WorkingDir"),
            user: text("User"),
        })
    }
}

/// An image in the store, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// The manifest digest (`sha256:...`): the image's ID.
    pub id: String,
    pub names: Vec<String>,
    /// Unpacked layers, topmost first (overlayfs' lowerdir order).
    pub layers: Vec<PathBuf>,
    pub config: ImageConfig,
    pub size: u64,
}

impl Image {
    fn from_record(store: &Store, id: &str, rec: &ImageRecord, index: &Index) -> Self {
        Image {
            id: id.to_string(),
            names: index.names_of(id),
            layers: rec
                .layers
                .iter()
                .rev()
                .filter_map(|d| store.layer_path(d).ok())
                .collect(),
            config: rec.config.clone(),
            size: rec.size,
        }
    }

    /// A file as the image's root shows it (the topmost layer that has it, unless whited out).
    fn read_file(&self, rel: &str) -> Option<String> {
        use std::os::unix::fs::FileTypeExt;
        for l in &self.layers {
            let p = l.join(rel);
            match p.symlink_metadata() {
                Ok(m) if m.file_type().is_char_device() => return None,
                Ok(m) if m.is_file() => return std::fs::read_to_string(p).ok(),
                _ => {}
            }
        }
        None
    }

    /// The image's `User` as (uid, gid), names looked up in the image's /etc/passwd and /etc/group.
    pub fn user_ids(&self) -> Result<Option<(u32, u32)>, String> {
        let user = self.config.user.trim();
        if user.is_empty() {
            return Ok(None);
        }
        let (u, g) = match user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (user, None),
        };
        let passwd = self.read_file("etc/passwd").unwrap_or_default();
        let entry = |name: &str| {
            passwd.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 4 && (f[0] == name || f[2] == name))
                    .then(|| (f[2].parse::<u32>().ok(), f[3].parse::<u32>().ok()))
            })
        };
        let (uid, primary) = match (u.parse::<u32>(), entry(u)) {
            (Ok(uid), e) => (uid, e.and_then(|(_, g)| g)),
            (Err(_), Some((Some(uid), g))) => (uid, g),
            _ => {
                return Err(format!(
                    "unable to find user {u}: no matching entries in passwd file"
                ))
            }
        };
        let gid = match g {
            None => primary.unwrap_or(0),
            Some(g) => match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => self
                    .read_file("etc/group")
                    .unwrap_or_default()
                    .lines()
                    .find_map(|l| {
                        let f: Vec<&str> = l.split(':').collect();
                        (f.len() >= 3 && f[0] == g)
                            .then(|| f[2].parse().ok())
                            .flatten()
                    })
                    .ok_or_else(|| {
                        format!("unable to find group {g}: no matching entries in group file")
                    })?,
            },
        };
        Ok(Some((uid, gid)))
    }

    /// Merges the image into a runtime container (JSON, the runtime spec's shape) with
    /// Kubernetes' rules: `command` replaces Entrypoint, `args` replaces Cmd (and without a
    /// `command`, runs after the Entrypoint); the container's env wins over the image's; the
    /// image's WorkingDir and User apply when the pod sets none. The root becomes the layers.
    pub fn apply(&self, c: &mut Value, pod_run_as_user: bool) -> Result<(), String> {
        let list = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        };
        let (command, args) = (list(&c["command"]), list(&c["args"]));
        let cfg = &self.config;
        let (command, args) = match (command.is_empty(), args.is_empty()) {
            (false, _) => (command, args),
            (true, false) => (cfg.entrypoint.clone(), args),
            (true, true) => (cfg.entrypoint.clone(), cfg.cmd.clone()),
        };
        if command.is_empty() && args.is_empty() {
            return Err("no command specified".into());
        }
        c["command"] = json!(command);
        c["args"] = json!(args);
        let mut env: Vec<Value> = Vec::new();
        let own = list(&json!(c["env"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["name"].clone())
            .collect::<Vec<_>>()));
        for kv in &cfg.env {
            let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
            if !k.is_empty() && !own.iter().any(|o| o == k) {
                env.push(json!({"name": k, "value": v}));
            }
        }
        env.extend(c["env"].as_array().cloned().unwrap_or_default());
        c["env"] = json!(env);
        if c.get("workingDir").is_none_or(Value::is_null) && cfg.working_dir.starts_with('/') {
            c["workingDir"] = json!(cfg.working_dir);
        }
        let user_set = pod_run_as_user || c["securityContext"]["runAsUser"].is_number();
        if !user_set {
            if let Some((uid, gid)) = self.user_ids()? {
                if !c["securityContext"].is_object() {
                    c["securityContext"] = json!({});
                }
                c["securityContext"]["runAsUser"] = json!(uid);
                if !c["securityContext"]["runAsGroup"].is_number() {
                    c["securityContext"]["runAsGroup"] = json!(gid);
                }
            }
        }
        c["image"] = json!(self.id);
        c["imageLayers"] = json!(self.layers);
        Ok(())
    }
}

/// One row of `image ls` and of the Node's `status.images`.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub id: String,
    pub names: Vec<String>,
    pub size: u64,
    pub last_used_ms: u64,
}

/// A size as `crictl images` prints it (Go's `units.HumanSize`): four significant digits,
/// decimal units.
pub fn human_size(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i < units.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    let digits = if v >= 100.0 {
        1
    } else if v >= 10.0 {
        2
    } else {
        3
    };
    let s = format!("{v:.digits$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s}{}", units[i])
}

/// imagePullPolicy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// The pod's policy, or the API's default for `image` when it sets none (`:latest` or no
    /// tag: Always).
    pub fn of(policy: Option<&str>, image: &str) -> PullPolicy {
        match policy {
            Some("Always") => PullPolicy::Always,
            Some("Never") => PullPolicy::Never,
            Some("IfNotPresent") => PullPolicy::IfNotPresent,
            _ => match normalize(image) {
                Ok(r) if r.digest().is_none() && r.tag() == Some("latest") => PullPolicy::Always,
                _ => PullPolicy::IfNotPresent,
            },
        }
    }
}

/// Why an image cannot be had, in the kubelet's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullFailure {
    pub reason: &'static str,
    pub message: String,
}

type PullResult = Result<Image, String>;

/// The node's images. Cheap to share; every operation goes to the on-disk store, so several
/// processes (the agent, `image` commands) may use one root directory.
pub struct ImageStore {
    store: Store,
    /// Pulls in progress by normalized reference: later callers wait for the same result.
    pulls: Mutex<HashMap<String, Shared<BoxFuture<'static, PullResult>>>>,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("dir", &self.store.dir)
            .finish()
    }
}

impl ImageStore {
    /// The store under `<root>/images`, created if missing.
    pub fn open(root: &Path) -> Result<Arc<ImageStore>, ImageError> {
        Ok(Arc::new(ImageStore {
            store: Store::open(root)?,
            pulls: Mutex::new(HashMap::new()),
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.store.dir
    }

    /// The image `name` refers to (a reference, or an image ID `sha256:...`), if present.
    pub fn resolve(&self, name: &str) -> Result<Option<Image>, ImageError> {
        let index = self.store.read_index()?;
        let id = if name.starts_with("sha256:") {
            Some(name.to_string())
        } else {
            let r = normalize(name)?;
            let by_name = index.refs.get(&reference::index_name(&r)).cloned();
            match r.digest() {
                // A digest pins the content, whatever the tag says now.
                Some(d) => index
                    .refs
                    .get(&format!("{}@{d}", reference::repository(&r)))
                    .cloned()
                    .or_else(|| index.images.contains_key(d).then(|| d.to_string())),
                None => by_name,
            }
        };
        Ok(id.and_then(|id| {
            let rec = index.images.get(&id)?;
            // Unpacked layers are made before the record; a missing one means the store was
            // tampered with, and the image is pulled again.
            let img = Image::from_record(&self.store, &id, rec, &index);
            img.layers.iter().all(|l| l.is_dir()).then_some(img)
        }))
    }

    /// Pulls `name` from its registry (sharing a pull already in progress) and returns it.
    pub async fn pull(self: &Arc<Self>, name: &str) -> Result<Image, ImageError> {
        let r = normalize(name)?;
        let key = r.to_string();
        let fut = {
            let mut pulls = self.pulls.lock().unwrap_or_else(|e| e.into_inner());
            pulls
                .entry(key.clone())
                .or_insert_with(|| {
                    let me = self.clone();
                    let r = r.clone();
                    // Spawned, so that a caller going away does not abandon the others' pull.
                    let task = tokio::spawn(async move {
                        let out = me.pull_uncached(&r).await.map_err(|e| e.to_string());
                        me.pulls
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&r.to_string());
                        out
                    });
                    async move { task.await.unwrap_or_else(|e| Err(e.to_string())) }
                        .boxed()
                        .shared()
                })
                .clone()
        };
        fut.await.map_err(ImageError::Registry)
    }

    async fn pull_uncached(self: &Arc<Self>, r: &Reference) -> Result<Image, ImageError> {
        let store = self.store.clone();
        let lock = {
            let s = store.clone();
            tokio::task::spawn_blocking(move || s.adding())
                .await
                .map_err(|e| ImageError::Format(e.to_string()))??
        };
        tracing::info!(image = %r, "pulling image");
        let started = std::time::Instant::now();
        let pulled = registry::pull(&store, r).await?;
        let names = registry::names_for(r, &pulled.top_digest);
        let s = store.clone();
        let img = tokio::task::spawn_blocking(move || {
            let img = commit(&s, &pulled.manifest_digest, &pulled.extra_blobs, &names);
            drop(lock);
            img
        })
        .await
        .map_err(|e| ImageError::Format(e.to_string()))??;
        tracing::info!(image = %r, id = %img.id, size = img.size, ms = started.elapsed().as_millis() as u64, "image pulled");
        Ok(img)
    }

    /// The image for a container, as its pull policy says: pulled if missing (IfNotPresent),
    /// always asked of the registry (Always; a pinned digest already here needs no asking),
    /// never pulled (Never). Failures come back in the kubelet's words.
    pub async fn ensure(
        self: &Arc<Self>,
        image: &str,
        policy: PullPolicy,
    ) -> Result<Image, PullFailure> {
        let fail = |reason, message| PullFailure { reason, message };
        let r = normalize(image).map_err(|e| {
            fail(
                "InvalidImageName",
                format!("Failed to apply default image tag {image:?}: {e}"),
            )
        })?;
        let present = self
            .resolve(image)
            .map_err(|e| fail("ErrImagePull", e.to_string()))?;
        let img = match (policy, present) {
            (PullPolicy::Never, None) => {
                return Err(fail(
                    "ErrImageNeverPull",
                    format!("Container image {image:?} is not present with pull policy of Never"),
                ))
            }
            (PullPolicy::Never | PullPolicy::IfNotPresent, Some(img)) => img,
            (PullPolicy::Always, Some(img)) if r.digest().is_some() => img,
            _ => self.pull(image).await.map_err(|e| {
                fail(
                    "ErrImagePull",
                    format!("failed to pull and unpack image \"{r}\": {e}"),
                )
            })?,
        };
        let id = img.id.clone();
        let store = self.store.clone();
        // Only a hint for garbage collection: losing it is harmless.
        let _ = tokio::task::spawn_blocking(move || {
            store.update(|i| {
                if let Some(rec) = i.images.get_mut(&id) {
                    rec.last_used_ms = store::now_ms();
                }
                Ok(())
            })
        })
        .await;
        Ok(img)
    }

    /// Every image, largest first.
    pub fn list(&self) -> Result<Vec<Summary>, ImageError> {
        let index = self.store.read_index()?;
        let mut out: Vec<Summary> = index
            .images
            .iter()
            .map(|(id, rec)| Summary {
                id: id.clone(),
                names: index.names_of(id),
                size: rec.size,
                last_used_ms: rec.last_used_ms,
            })
            .collect();
        out.sort_by(|a, b| b.size.cmp(&a.size).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// The Node's `status.images`: named images, largest first, at most 50 (the kubelet's cap).
    pub fn node_images(&self) -> Result<Value, ImageError> {
        let images: Vec<Value> = self
            .list()?
            .into_iter()
            .filter(|s| !s.names.is_empty())
            .take(50)
            .map(|s| {
                let mut names = s.names;
                // Digests first, as the kubelet lists RepoDigests before RepoTags.
                names.sort_by_key(|n| !n.contains('@'));
                json!({"names": names, "sizeBytes": s.size})
            })
            .collect();
        Ok(json!(images))
    }

    /// Removes the image `name` refers to (with all its names) unless a container uses it, then
    /// the blobs and layers nothing needs any more. Returns the image's ID.
    pub fn remove(&self, name: &str, in_use: &InUse) -> Result<String, ImageError> {
        let img = self
            .resolve(name)?
            .ok_or_else(|| ImageError::NotFound(name.to_string()))?;
        if in_use.ids.contains(&img.id) {
            return Err(ImageError::InUse(img.id));
        }
        self.store.update(|i| {
            i.images.remove(&img.id);
            i.refs.retain(|_, d| *d != img.id);
            Ok(())
        })?;
        self.store.sweep(&in_use.layers)?;
        tracing::info!(image = %name, id = %img.id, "image removed");
        Ok(img.id)
    }

    /// Loads images from an OCI layout (directory or tar) or a `docker save` archive, naming
    /// them `name` if given (else as the archive does).
    pub fn import(&self, path: &Path, name: Option<&str>) -> Result<Vec<Image>, ImageError> {
        let _lock = self.store.adding()?;
        let found = import::load(&self.store, path)?;
        if found.is_empty() {
            return Err(ImageError::Format(format!(
                "{}: no image manifests found",
                path.display()
            )));
        }
        let mut out = Vec::new();
        for (i, m) in found.iter().enumerate() {
            let names: Vec<String> = match name {
                Some(n) if i == 0 => vec![reference::index_name(&normalize(n)?)],
                Some(_) => vec![],
                None => m
                    .names
                    .iter()
                    .map(|n| normalize(n).map(|r| reference::index_name(&r)))
                    .collect::<Result<_, _>>()?,
            };
            out.push(commit(
                &self.store,
                &m.manifest_digest,
                &m.extra_blobs,
                &names,
            )?);
        }
        Ok(out)
    }

    /// Kubelet image garbage collection: see [`gc::collect`].
    pub fn collect_garbage(
        &self,
        policy: &gc::GcPolicy,
        in_use: &InUse,
    ) -> Result<gc::GcReport, ImageError> {
        gc::collect(&self.store, policy, in_use)
    }
}

/// How often the Node's image list is brought up to date.
const REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// How often garbage collection looks at the disk (the kubelet's ImageGCPeriod).
const GC_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

impl ImageStore {
    /// Keeps the Node's `status.images` current and collects unused images as `policy` says,
    /// until dropped.
    pub async fn housekeeping(
        self: Arc<Self>,
        client: kube::Client,
        node: String,
        rt: Arc<crate::runtime::Runtime>,
        policy: gc::GcPolicy,
    ) {
        let mut reported = None;
        let mut last_gc = tokio::time::Instant::now();
        loop {
            if last_gc.elapsed() >= GC_EVERY {
                last_gc = tokio::time::Instant::now();
                let (me, rt, policy) = (self.clone(), rt.clone(), policy.clone());
                let r = tokio::task::spawn_blocking(move || {
                    me.collect_garbage(&policy, &InUse::of(&rt))
                })
                .await;
                match r {
                    Ok(Err(e)) => tracing::warn!(error = %e, "image garbage collection failed"),
                    Err(e) => tracing::warn!(error = %e, "image garbage collection failed"),
                    Ok(Ok(_)) => {}
                }
            }
            match self.node_images() {
                Ok(images) if reported.as_ref() != Some(&images) => {
                    match super::node::set_images(&client, &node, images.clone()).await {
                        Ok(()) => reported = Some(images),
                        Err(e) => tracing::warn!(error = %e, "node images update failed"),
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot list images"),
            }
            tokio::time::sleep(REPORT_EVERY).await;
        }
    }
}

/// What running containers use: image IDs (never removed) and layer directories (never swept).
#[derive(Debug, Clone, Default)]
pub struct InUse {
    pub ids: BTreeSet<String>,
    pub layers: BTreeSet<PathBuf>,
}

impl InUse {
    /// From the runtime's records of the pods on this node (running or not yet removed).
    pub fn of(rt: &crate::runtime::Runtime) -> InUse {
        let mut out = InUse::default();
        for p in rt.list().unwrap_or_default() {
            let Ok(spec) = rt.pod_spec(&p.name) else {
                continue;
            };
            for c in &spec.spec.containers {
                if c.image.starts_with("sha256:") {
                    out.ids.insert(c.image.clone());
                }
                out.layers.extend(c.image_layers.iter().map(PathBuf::from));
            }
        }
        out
    }
}

/// Makes the image whose manifest (and every blob it names) is in the store runnable: unpacks
/// its layers not yet unpacked, then records it and points `names` at it.
fn commit(
    store: &Store,
    manifest_digest: &str,
    extra_blobs: &[String],
    names: &[String],
) -> Result<Image, ImageError> {
    let manifest: Value = serde_json::from_slice(&store.read_blob(manifest_digest)?)
        .map_err(|e| ImageError::Format(format!("manifest {manifest_digest}: {e}")))?;
    let digest_of = |d: &Value| -> Result<(String, u64), ImageError> {
        let digest = d["digest"].as_str().unwrap_or("").to_string();
        store::hex_of(&digest)?;
        Ok((digest, d["size"].as_u64().unwrap_or(0)))
    };
    let (config_digest, config_size) = digest_of(&manifest["config"])?;
    let config_bytes = store.read_blob(&config_digest)?;
    let config = ImageConfig::parse(&config_bytes)?;
    let mut layers = Vec::new();
    let mut size = store.read_blob(manifest_digest)?.len() as u64 + config_size;
    for l in manifest["layers"].as_array().into_iter().flatten() {
        let (digest, n) = digest_of(l)?;
        size += n;
        let dest = store.layer_path(&digest)?;
        if !dest.is_dir() {
            let archive = store.blob_path(&digest)?;
            if !archive.is_file() {
                return Err(ImageError::Format(format!("layer {digest} is missing")));
            }
            let tmp = store.temp("unpack");
            std::fs::create_dir(&tmp).map_err(|e| ImageError::Io {
                context: format!("create {}", tmp.display()),
                source: e,
            })?;
            if let Err(e) = layer::unpack(&archive, &tmp) {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
            // Another pull may have unpacked the same layer meanwhile: either copy will do.
            if std::fs::rename(&tmp, &dest).is_err() {
                let _ = std::fs::remove_dir_all(&tmp);
                if !dest.is_dir() {
                    return Err(ImageError::Format(format!("cannot place layer {digest}")));
                }
            }
        }
        layers.push(digest);
    }
    let now = store::now_ms();
    store.update(|index| {
        let rec = index
            .images
            .entry(manifest_digest.to_string())
            .or_insert_with(|| ImageRecord {
                config_digest: config_digest.clone(),
                layers: layers.clone(),
                size,
                config: config.clone(),
                extra_blobs: Vec::new(),
                created_ms: now,
                last_used_ms: now,
            });
        for b in extra_blobs {
            if !rec.extra_blobs.contains(b) {
                rec.extra_blobs.push(b.clone());
            }
        }
        for n in names {
            index.refs.insert(n.clone(), manifest_digest.to_string());
        }
        let rec = &index.images[manifest_digest];
        Ok(Image::from_record(store, manifest_digest, rec, index))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_crictl_prints_them() {
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1_000), "1kB");
        assert_eq!(human_size(1_234_567), "1.235MB");
        assert_eq!(human_size(12_345_678), "12.35MB");
        assert_eq!(human_size(123_456_789), "123.5MB");
    }

    fn image(cfg: ImageConfig) -> Image {
        Image {
            id: format!("sha256:{}", "1".repeat(64)),
            names: vec![],
            layers: vec![PathBuf::from("/l/top"), PathBuf::from("/l/base")],
            config: cfg,
            size: 1,
        }
    }

    #[test]
    fn command_and_args_follow_kubernetes_rules() {
        let img = image(ImageConfig {
            entrypoint: vec!["/ep".into()],
            cmd: vec!["c1".into()],
            env: vec!["PATH=/img/bin".into(), "A=image".into()],
            working_dir: "/work".into(),
            user: "".into(),
        });
        let run = |c: Value| {
            let mut c = c;
            img.apply(&mut c, false).unwrap();
            c
        };
        let c = run(json!({"name": "c"}));
        assert_eq!(
            (c["command"].clone(), c["args"].clone()),
            (json!(["/ep"]), json!(["c1"]))
        );
        let c = run(json!({"name": "c", "args": ["x"]}));
        assert_eq!(
            (c["command"].clone(), c["args"].clone()),
            (json!(["/ep"]), json!(["x"]))
        );
        let c = run(json!({"name": "c", "command": ["sh"]}));
        assert_eq!(
            (c["command"].clone(), c["args"].clone()),
            (json!(["sh"]), json!([]))
        );
        let c = run(
            json!({"name": "c", "command": ["sh"], "args": ["-c"], "workingDir": "/mine",
            "env": [{"name": "A", "value": "pod"}]}),
        );
        assert_eq!(c["args"], json!(["-c"]));
        assert_eq!(c["workingDir"], "/mine");
        assert_eq!(
            c["env"],
            json!([{"name": "PATH", "value": "/img/bin"}, {"name": "A", "value": "pod"}])
        );
        assert_eq!(c["imageLayers"], json!(["/l/top", "/l/base"]));
        assert_eq!(run(json!({"name": "c"}))["workingDir"], "/work");
        let mut bare = json!({"name": "c"});
        assert!(image(ImageConfig::default())
            .apply(&mut bare, false)
            .unwrap_err()
            .contains("no command"));
    }

    #[test]
    fn the_image_user_applies_only_when_the_pod_sets_none() {
        let img = image(ImageConfig {
            cmd: vec!["x".into()],
            user: "1000:50".into(),
            ..Default::default()
        });
        let mut c = json!({"name": "c"});
        img.apply(&mut c, false).unwrap();
        assert_eq!(
            c["securityContext"],
            json!({"runAsUser": 1000, "runAsGroup": 50})
        );
        let mut c = json!({"name": "c", "securityContext": {"runAsUser": 7}});
        img.apply(&mut c, false).unwrap();
        assert_eq!(c["securityContext"], json!({"runAsUser": 7}));
        let mut c = json!({"name": "c"});
        img.apply(&mut c, true).unwrap();
        assert!(c["securityContext"].is_null());
    }

    #[test]
    fn pull_policy_defaults_as_the_api_does() {
        assert_eq!(PullPolicy::of(None, "busybox"), PullPolicy::Always);
        assert_eq!(PullPolicy::of(None, "busybox:latest"), PullPolicy::Always);
        assert_eq!(PullPolicy::of(None, "busybox:1"), PullPolicy::IfNotPresent);
        assert_eq!(
            PullPolicy::of(None, "localhost:5000/app"),
            PullPolicy::Always
        );
        assert_eq!(PullPolicy::of(Some("Never"), "busybox"), PullPolicy::Never);
    }
}
