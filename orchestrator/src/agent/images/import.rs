//! Loading images without a registry: an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/...`; a directory or a tar of one) or a `docker save` archive (`manifest.json`
//! naming a config file and layer tars per image). Every blob is copied into the store through
//! its digest check; a `docker save` image gets an OCI manifest written for it, so both end up
//! the same in the store.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use oci_client::manifest::{
    IMAGE_LAYER_GZIP_MEDIA_TYPE, IMAGE_LAYER_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
};
use serde_json::{json, Value};

use super::layer::open_archive;
use super::registry::{is_index_doc, pick_platform};
use super::store::Store;
use super::ImageError;

/// An image found in an archive, its blobs now in the store.
#[derive(Debug, Clone)]
pub struct Found {
    pub manifest_digest: String,
    pub extra_blobs: Vec<String>,
    /// Names the archive gives it (may be empty).
    pub names: Vec<String>,
}

fn bad(what: impl Into<String>) -> ImageError {
    ImageError::Format(what.into())
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> ImageError {
    move |source| ImageError::Io { context, source }
}

fn read_json(p: &Path) -> Result<Value, ImageError> {
    let b = fs::read(p).map_err(io_err(format!("read {}", p.display())))?;
    serde_json::from_slice(&b).map_err(|e| bad(format!("{}: {e}", p.display())))
}

/// Reads `path` (a layout or archive, directory or tar) into the store.
pub fn load(store: &Store, path: &Path) -> Result<Vec<Found>, ImageError> {
    if path.is_dir() {
        return load_dir(store, path);
    }
    let tmp = store.temp("import");
    fs::create_dir(&tmp).map_err(io_err(format!("create {}", tmp.display())))?;
    let r = (|| {
        let mut ar = tar::Archive::new(open_archive(path)?);
        ar.unpack(&tmp)
            .map_err(|e| bad(format!("{}: not a tar archive: {e}", path.display())))?;
        load_dir(store, &tmp)
    })();
    let _ = fs::remove_dir_all(&tmp);
    r
}

fn load_dir(store: &Store, dir: &Path) -> Result<Vec<Found>, ImageError> {
    if dir.join("oci-layout").is_file() || dir.join("index.json").is_file() {
        oci_layout(store, dir)
    } else if dir.join("manifest.json").is_file() {
        docker_save(store, dir)
    } else {
        Err(bad(format!(
            "{}: neither an OCI image layout (index.json) nor a docker save archive (manifest.json)",
            dir.display()
        )))
    }
}

/// Copies blob `digest` from an OCI layout into the store, checked.
fn copy_blob(store: &Store, layout: &Path, digest: &str) -> Result<(), ImageError> {
    if store.has_blob(digest) {
        return Ok(());
    }
    let hex = super::store::hex_of(digest)?;
    let src = layout.join("blobs/sha256").join(hex);
    let f = File::open(&src).map_err(io_err(format!("open {}", src.display())))?;
    store.put_blob(f, Some(digest)).map(|_| ())
}

/// A descriptor's name as the layout's annotations give it, when it is a full reference (a bare
/// tag such as `1` names no repository).
fn annotated_name(desc: &Value) -> Option<String> {
    let a = &desc["annotations"];
    a["io.containerd.image.name"]
        .as_str()
        .or_else(|| a["org.opencontainers.image.ref.name"].as_str())
        .filter(|n| n.contains('/'))
        .map(str::to_string)
}

fn oci_layout(store: &Store, dir: &Path) -> Result<Vec<Found>, ImageError> {
    let index = read_json(&dir.join("index.json"))?;
    let mut out = Vec::new();
    for desc in index["manifests"].as_array().into_iter().flatten() {
        let mut digest = desc["digest"].as_str().unwrap_or("").to_string();
        copy_blob(store, dir, &digest)?;
        let mut extra = Vec::new();
        let mut doc: Value = serde_json::from_slice(&store.read_blob(&digest)?)
            .map_err(|e| bad(format!("manifest {digest}: {e}")))?;
        if is_index_doc(&doc) {
            extra.push(digest.clone());
            digest = pick_platform(&doc).ok_or_else(|| {
                bad(format!(
                    "{}: no manifest for linux/{}",
                    dir.display(),
                    super::registry::node_arch()
                ))
            })?;
            copy_blob(store, dir, &digest)?;
            doc = serde_json::from_slice(&store.read_blob(&digest)?)
                .map_err(|e| bad(format!("manifest {digest}: {e}")))?;
        }
        if !doc["config"].is_object() {
            continue;
        }
        copy_blob(store, dir, doc["config"]["digest"].as_str().unwrap_or(""))?;
        for l in doc["layers"].as_array().into_iter().flatten() {
            copy_blob(store, dir, l["digest"].as_str().unwrap_or(""))?;
        }
        out.push(Found {
            manifest_digest: digest,
            extra_blobs: extra,
            names: annotated_name(desc).into_iter().collect(),
        });
    }
    Ok(out)
}

/// A file the archive's manifest names, kept inside the archive.
fn member(dir: &Path, rel: &str) -> Result<PathBuf, ImageError> {
    if rel.split('/').any(|c| c == "..") || rel.starts_with('/') {
        return Err(bad(format!(
            "manifest.json names {rel:?} outside the archive"
        )));
    }
    Ok(dir.join(rel))
}

fn docker_save(store: &Store, dir: &Path) -> Result<Vec<Found>, ImageError> {
    let manifest = read_json(&dir.join("manifest.json"))?;
    let mut out = Vec::new();
    for m in manifest.as_array().into_iter().flatten() {
        let config_path = member(dir, m["Config"].as_str().unwrap_or(""))?;
        let f =
            File::open(&config_path).map_err(io_err(format!("open {}", config_path.display())))?;
        let (config, config_size) = store.put_blob(f, None)?;
        let mut layers = Vec::new();
        for l in m["Layers"].as_array().into_iter().flatten() {
            let p = member(dir, l.as_str().unwrap_or(""))?;
            let mut f = File::open(&p).map_err(io_err(format!("open {}", p.display())))?;
            let mut magic = [0u8; 2];
            let gz = std::io::Read::read_exact(&mut f, &mut magic).is_ok() && magic == [0x1f, 0x8b];
            let f = File::open(&p).map_err(io_err(format!("open {}", p.display())))?;
            let (digest, size) = store.put_blob(f, None)?;
            let media = if gz {
                IMAGE_LAYER_GZIP_MEDIA_TYPE
            } else {
                IMAGE_LAYER_MEDIA_TYPE
            };
            layers.push(json!({"mediaType": media, "digest": digest, "size": size}));
        }
        let doc = json!({
            "schemaVersion": 2,
            "mediaType": OCI_IMAGE_MEDIA_TYPE,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
            "layers": layers,
        });
        let bytes = serde_json::to_vec(&doc).map_err(|e| bad(e.to_string()))?;
        let (digest, _) = store.put_blob_bytes(&bytes, None)?;
        let names = m["RepoTags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect();
        out.push(Found {
            manifest_digest: digest,
            extra_blobs: Vec::new(),
            names,
        });
    }
    Ok(out)
}
