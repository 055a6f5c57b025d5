//! The node's content store on disk, below `<root>/images`:
//!
//! ```text
//! blobs/sha256/<hex>   manifests, configs and layer archives, each named by its verified digest
//! layers/<hex>         a layer archive unpacked (with overlayfs whiteouts), named by the archive's digest
//! index.json           image records by manifest digest, and names (repo:tag, repo@digest) -> digest
//! tmp/                 downloads and unpacks in progress; renamed into place only when complete
//! index.lock, pull.lock
//! ```
//!
//! Invariants: a file under `blobs/` always matches its name (it is hashed on the way in and
//! renamed into place only then); a directory under `layers/` is complete (unpacked under `tmp/`
//! first). The index is rewritten whole, atomically, under an exclusive `index.lock`, so the agent
//! and the `image` command can share a store. Pulls and imports hold `pull.lock` shared while they
//! add blobs the index does not name yet; a sweep of unnamed blobs needs it exclusively and is
//! skipped while any is in progress.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{ImageConfig, ImageError};

fn ioc(context: impl Into<String>) -> impl FnOnce(io::Error) -> ImageError {
    let context = context.into();
    move |source| ImageError::Io { context, source }
}

/// One image: a platform manifest and what it names.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRecord {
    pub config_digest: String,
    /// Layer archive digests, bottom first, as the manifest lists them.
    pub layers: Vec<String>,
    /// Bytes of the manifest, config and layer archives (the size registries and crictl report).
    pub size: u64,
    pub config: ImageConfig,
    /// Blobs kept for this image besides its manifest, config and layers (an index it was chosen from).
    #[serde(default)]
    pub extra_blobs: Vec<String>,
    pub created_ms: u64,
    pub last_used_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Index {
    /// Manifest digest -> image.
    pub images: BTreeMap<String, ImageRecord>,
    /// `repo:tag` or `repo@digest` -> manifest digest.
    pub refs: BTreeMap<String, String>,
}

impl Index {
    pub fn names_of(&self, digest: &str) -> Vec<String> {
        self.refs
            .iter()
            .filter(|(_, d)| *d == digest)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The hex part of a sha256 digest, checked, so it can name a file.
pub fn hex_of(digest: &str) -> Result<&str, ImageError> {
    match digest.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(h),
        _ => Err(ImageError::Format(format!(
            "unsupported digest {digest:?} (sha256 only)"
        ))),
    }
}

pub fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

#[derive(Debug, Clone)]
pub struct Store {
    pub dir: PathBuf,
}

impl Store {
    pub fn open(root: &Path) -> Result<Store, ImageError> {
        let dir = root.join("images");
        for d in ["blobs/sha256", "layers", "tmp"] {
            fs::create_dir_all(dir.join(d)).map_err(ioc(format!("create {}", dir.display())))?;
        }
        Ok(Store { dir })
    }

    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.dir.join("blobs/sha256").join(hex_of(digest)?))
    }

    pub fn layer_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.dir.join("layers").join(hex_of(digest)?))
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    /// A fresh path under `tmp/` for work in progress.
    pub fn temp(&self, what: &str) -> PathBuf {
        self.dir
            .join("tmp")
            .join(format!("{what}-{}", uuid::Uuid::new_v4().simple()))
    }

    fn lock(&self, name: &str, arg: FlockArg) -> Result<Option<Flock<File>>, ImageError> {
        let path = self.dir.join(name);
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(ioc(format!("open {}", path.display())))?;
        match Flock::lock(f, arg) {
            Ok(l) => Ok(Some(l)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(ImageError::Io {
                context: format!("lock {}", path.display()),
                source: e.into(),
            }),
        }
    }

    /// Held (shared) while blobs are being added that the index does not name yet.
    pub fn adding(&self) -> Result<Flock<File>, ImageError> {
        self.lock("pull.lock", FlockArg::LockShared)?
            .ok_or_else(|| ImageError::Format("pull lock unavailable".into()))
    }

    pub fn read_index(&self) -> Result<Index, ImageError> {
        let p = self.dir.join("index.json");
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| ImageError::Format(format!("{}: {e}", p.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Index::default()),
            Err(e) => Err(ioc(format!("read {}", p.display()))(e)),
        }
    }

    /// Reads, changes and rewrites the index under its lock; `f`'s result is returned.
    pub fn update<T>(
        &self,
        f: impl FnOnce(&mut Index) -> Result<T, ImageError>,
    ) -> Result<T, ImageError> {
        let _lock = self.lock("index.lock", FlockArg::LockExclusive)?;
        let mut index = self.read_index()?;
        let out = f(&mut index)?;
        let p = self.dir.join("index.json");
        let tmp = self.temp("index");
        let data = serde_json::to_vec_pretty(&index)
            .map_err(|e| ImageError::Format(format!("index: {e}")))?;
        let mut file = File::create(&tmp).map_err(ioc("write index"))?;
        file.write_all(&data).map_err(ioc("write index"))?;
        file.sync_all().map_err(ioc("sync index"))?;
        fs::rename(&tmp, &p).map_err(ioc("replace index"))?;
        Ok(out)
    }

    /// Copies `from` into the store as blob `expected` (when given: refused unless the content
    /// hashes to it). Returns the digest and size.
    pub fn put_blob(
        &self,
        mut from: impl Read,
        expected: Option<&str>,
    ) -> Result<(String, u64), ImageError> {
        if let Some(d) = expected {
            hex_of(d)?;
        }
        let tmp = self.temp("blob");
        let mut out = File::create(&tmp).map_err(ioc("create blob"))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut size = 0u64;
        let r = (|| -> io::Result<()> {
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n])?;
                size += n as u64;
            }
        })();
        if let Err(e) = r.and_then(|_| out.sync_all()) {
            let _ = fs::remove_file(&tmp);
            return Err(ioc("write blob")(e));
        }
        let actual = format!("sha256:{:x}", hasher.finalize());
        if let Some(want) = expected {
            if want != actual {
                let _ = fs::remove_file(&tmp);
                return Err(ImageError::DigestMismatch {
                    expected: want.to_string(),
                    actual,
                });
            }
        }
        let dest = self.blob_path(&actual)?;
        fs::rename(&tmp, &dest).map_err(ioc(format!("store blob {actual}")))?;
        Ok((actual, size))
    }

    /// Moves the file at `tmp` into the store as blob `expected`, if it hashes to it.
    pub fn adopt(&self, tmp: &Path, expected: &str) -> Result<(), ImageError> {
        let dest = self.blob_path(expected)?;
        let mut f = File::open(tmp).map_err(ioc(format!("open {}", tmp.display())))?;
        let mut hasher = Sha256::new();
        io::copy(&mut f, &mut hasher).map_err(ioc(format!("read {}", tmp.display())))?;
        let actual = format!("sha256:{:x}", hasher.finalize());
        if actual != expected {
            return Err(ImageError::DigestMismatch {
                expected: expected.to_string(),
                actual,
            });
        }
        fs::rename(tmp, &dest).map_err(ioc(format!("store blob {expected}")))
    }

    pub fn put_blob_bytes(
        &self,
        bytes: &[u8],
        expected: Option<&str>,
    ) -> Result<(String, u64), ImageError> {
        self.put_blob(bytes, expected)
    }

    /// A stored blob, checked against its name again (a manifest or config about to be trusted).
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let p = self.blob_path(digest)?;
        let b = fs::read(&p).map_err(ioc(format!("read blob {digest}")))?;
        let actual = sha256_of(&b);
        if actual != digest {
            return Err(ImageError::DigestMismatch {
                expected: digest.to_string(),
                actual,
            });
        }
        Ok(b)
    }

    /// Removes blobs and unpacked layers no image names and `keep_layers` does not list (layers
    /// running containers stack), unless blobs are being added right now.
    pub fn sweep(&self, keep_layers: &BTreeSet<PathBuf>) -> Result<u64, ImageError> {
        let Some(_lock) = self.lock("pull.lock", FlockArg::LockExclusiveNonblock)? else {
            tracing::debug!("a pull is in progress: unreferenced blobs are left for later");
            return Ok(0);
        };
        let _index_lock = self.lock("index.lock", FlockArg::LockExclusive)?;
        let index = self.read_index()?;
        let mut live: BTreeSet<String> = BTreeSet::new();
        for (digest, img) in &index.images {
            live.insert(digest.clone());
            live.insert(img.config_digest.clone());
            live.extend(img.layers.iter().cloned());
            live.extend(img.extra_blobs.iter().cloned());
        }
        let mut freed = 0;
        let blobs = self.dir.join("blobs/sha256");
        for e in fs::read_dir(&blobs).map_err(ioc("list blobs"))?.flatten() {
            let digest = format!("sha256:{}", e.file_name().to_string_lossy());
            if !live.contains(&digest) {
                freed += e.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(e.path()).map_err(ioc(format!("remove blob {digest}")))?;
            }
        }
        let layers = self.dir.join("layers");
        for e in fs::read_dir(&layers).map_err(ioc("list layers"))?.flatten() {
            let digest = format!("sha256:{}", e.file_name().to_string_lossy());
            if !live.contains(&digest) && !keep_layers.contains(&e.path()) {
                fs::remove_dir_all(e.path()).map_err(ioc(format!("remove layer {digest}")))?;
            }
        }
        // Nothing is in progress: whatever is left under tmp/ was abandoned by a crash.
        let tmp = self.dir.join("tmp");
        for e in fs::read_dir(&tmp).map_err(ioc("list tmp"))?.flatten() {
            if e.file_name().to_string_lossy().starts_with("index-") {
                continue;
            }
            let _ = if e.path().is_dir() {
                fs::remove_dir_all(e.path())
            } else {
                fs::remove_file(e.path())
            };
        }
        Ok(freed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_kept_only_under_their_verified_digest() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let (d, n) = s.put_blob_bytes(b"hello", None).unwrap();
        assert_eq!(n, 5);
        assert_eq!(d, sha256_of(b"hello"));
        assert_eq!(s.read_blob(&d).unwrap(), b"hello");
        let wrong = sha256_of(b"other");
        let e = s.put_blob_bytes(b"hello", Some(&wrong)).unwrap_err();
        assert!(matches!(e, ImageError::DigestMismatch { .. }), "{e}");
        assert!(!s.has_blob(&wrong));
        assert_eq!(fs::read_dir(s.dir.join("tmp")).unwrap().count(), 0);
        // A blob changed on disk is noticed when read.
        fs::write(s.blob_path(&d).unwrap(), b"jello").unwrap();
        assert!(s.read_blob(&d).is_err());
    }

    #[test]
    fn the_index_survives_reopening_and_the_sweep_keeps_what_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let (kept, _) = s.put_blob_bytes(b"kept", None).unwrap();
        let (gone, _) = s.put_blob_bytes(b"gone", None).unwrap();
        s.update(|i| {
            i.images.insert(
                kept.clone(),
                ImageRecord {
                    config_digest: kept.clone(),
                    layers: vec![],
                    size: 4,
                    config: ImageConfig::default(),
                    extra_blobs: vec![],
                    created_ms: 0,
                    last_used_ms: 0,
                },
            );
            i.refs.insert("example.com/a:1".into(), kept.clone());
            Ok(())
        })
        .unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.read_index().unwrap().names_of(&kept), ["example.com/a:1"]);
        // A sweep waits for no pull: one in progress makes it skip.
        let held = s.adding().unwrap();
        assert_eq!(s.sweep(&BTreeSet::new()).unwrap(), 0);
        assert!(s.has_blob(&gone));
        drop(held);
        assert_eq!(s.sweep(&BTreeSet::new()).unwrap(), 4);
        assert!(s.has_blob(&kept) && !s.has_blob(&gone));
    }
}
