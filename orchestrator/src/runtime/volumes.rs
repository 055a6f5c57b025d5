//! A pod's volumes on the host: emptyDir, hostPath, configMap and the like, prepared in the pod's
//! state directory before any container starts, and how a container's mount names a source.
//!
//! `files` volumes are written the way the kubelet's AtomicWriter writes them, so that a running
//! container never sees half an update: the payload lives in a timestamped directory
//! `..<time>`, the symlink `..data` points at the current one and each top-level name is a
//! symlink through `..data`. An update writes a new directory and renames a fresh `..data_tmp`
//! symlink over `..data` (one atomic rename), then drops the old directory.
//!
//! Must never import anything outside `runtime/`.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::spec::{ConfigMaps, Pod};
use super::{ioc, Result, Runtime, RuntimeError};

/// One file of a `files` volume: a relative path (no `..`), its bytes and permission bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeFile {
    pub path: String,
    pub data: Vec<u8>,
    pub mode: u32,
}

const DATA_LINK: &str = "..data";

fn files_dir(pod_dir: &Path, volume: &str) -> PathBuf {
    pod_dir.join("files").join(volume)
}

/// Unmounts the tmpfs of every `files` volume below a pod directory (before it is removed: a
/// mounted tmpfs would make the removal fail half-way).
pub(super) fn unmount_files(pod_dir: &Path) {
    let Ok(entries) = fs::read_dir(pod_dir.join("files")) else {
        return;
    };
    for e in entries.flatten() {
        // Not a mount point (a disk-backed volume): EINVAL, nothing to do.
        let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The files under the current payload directory: relative path -> (bytes, mode).
fn current_payload(dir: &Path) -> BTreeMap<String, (Vec<u8>, u32)> {
    fn walk(base: &Path, rel: &str, out: &mut BTreeMap<String, (Vec<u8>, u32)>) {
        let Ok(entries) = fs::read_dir(base.join(rel)) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            match e.metadata() {
                Ok(m) if m.is_dir() => walk(base, &r, out),
                Ok(m) => {
                    if let Ok(data) = fs::read(base.join(&r)) {
                        out.insert(r, (data, m.permissions().mode() & 0o7777));
                    }
                }
                Err(_) => {}
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&dir.join(DATA_LINK), "", &mut out);
    out
}

/// Replaces the payload of `dir` with `files` unless it already is exactly that; says whether
/// anything changed.
fn write_atomically(dir: &Path, files: &[VolumeFile]) -> io::Result<bool> {
    let want: BTreeMap<String, (Vec<u8>, u32)> = files
        .iter()
        .map(|f| (f.path.clone(), (f.data.clone(), f.mode & 0o7777)))
        .collect();
    let had_data = dir.join(DATA_LINK).symlink_metadata().is_ok();
    if had_data && current_payload(dir) == want {
        return Ok(false);
    }
    for f in files {
        if f.path.is_empty()
            || f.path.starts_with('/')
            || f.path.split('/').any(|p| p == ".." || p.is_empty())
            || f.path.starts_with("..")
        {
            return Err(io::Error::other(format!(
                "invalid path {:?}: must be relative without `..`",
                f.path
            )));
        }
    }
    let old = fs::read_link(dir.join(DATA_LINK)).ok();
    let stamp = format!("..{}_{}", super::init::now_ms(), fastrand::u32(..));
    let payload = dir.join(&stamp);
    fs::create_dir(&payload)?;
    fs::set_permissions(&payload, fs::Permissions::from_mode(0o755))?;
    for f in files {
        let target = payload.join(&f.path);
        if let Some(p) = target.parent() {
            fs::create_dir_all(p)?;
        }
        fs::write(&target, &f.data)?;
        fs::set_permissions(&target, fs::Permissions::from_mode(f.mode & 0o7777))?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp)?;
    fs::rename(&tmp, dir.join(DATA_LINK))?;
    // Top-level names resolve through `..data`, so they need changing only when the set of
    // names does.
    let top: std::collections::BTreeSet<&str> = files
        .iter()
        .filter_map(|f| f.path.split('/').next())
        .collect();
    for name in &top {
        let link = dir.join(name);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(Path::new(DATA_LINK).join(name), &link)?;
        }
    }
    for e in fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !top.contains(name.as_str()) {
            fs::remove_file(e.path())?;
        }
    }
    if let Some(old) = old.filter(|o| o.as_os_str() != stamp.as_str()) {
        fs::remove_dir_all(dir.join(old))?;
    }
    Ok(true)
}

impl Runtime {
    pub(super) fn prepare_volumes(
        &self,
        pod: &Pod,
        config_maps: &ConfigMaps,
        dir: &Path,
    ) -> Result<()> {
        for v in &pod.spec.volumes {
            if v.empty_dir.is_some() {
                let d = dir.join("volumes").join(&v.name);
                fs::create_dir_all(&d).map_err(ioc(format!("create emptyDir {}", v.name)))?;
                // World-writable like Kubernetes' emptyDir so non-root
                // containers can share it.
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&d, fs::Permissions::from_mode(0o777))
                    .map_err(ioc("chmod emptyDir"))?;
            } else if let Some(cm) = &v.config_map {
                let d = dir.join("configmaps").join(&v.name);
                fs::create_dir_all(&d).map_err(ioc(format!("create configMap dir {}", v.name)))?;
                let data = match config_maps.get(&cm.name) {
                    Some(d) => d.clone(),
                    None if cm.optional => Default::default(),
                    None => {
                        return Err(RuntimeError::ConfigMap(format!(
                            "volume {:?} refers to config map {:?}, which was not provided",
                            v.name, cm.name
                        )))
                    }
                };
                let items: Vec<(String, String)> = if cm.items.is_empty() {
                    data.keys().map(|k| (k.clone(), k.clone())).collect()
                } else {
                    cm.items
                        .iter()
                        .map(|i| (i.key.clone(), i.path.clone()))
                        .collect()
                };
                for (key, path) in items {
                    let value = data.get(&key).ok_or_else(|| {
                        RuntimeError::ConfigMap(format!(
                            "config map {:?} has no key {key:?}",
                            cm.name
                        ))
                    })?;
                    let target = d.join(&path);
                    if let Some(p) = target.parent() {
                        fs::create_dir_all(p).map_err(ioc("create configMap subdir"))?;
                    }
                    fs::write(&target, value)
                        .map_err(ioc(format!("write {}", target.display())))?;
                }
            } else if let Some(fv) = &v.files {
                let d = files_dir(dir, &v.name);
                fs::create_dir_all(&d).map_err(ioc(format!("create files dir {}", v.name)))?;
                if fv.medium.as_deref() == Some("Memory") {
                    nix::mount::mount(
                        Some("tmpfs"),
                        &d,
                        Some("tmpfs"),
                        nix::mount::MsFlags::MS_NOSUID
                            | nix::mount::MsFlags::MS_NODEV
                            | nix::mount::MsFlags::MS_NOEXEC,
                        Some("mode=0755"),
                    )
                    .map_err(|e| {
                        ioc(format!("mount tmpfs for volume {}", v.name))(io::Error::from(e))
                    })?;
                }
                // Empty until the caller writes the contents: a mount never sees a missing
                // `..data`.
                write_atomically(&d, &[]).map_err(ioc(format!("volume {}", v.name)))?;
            } else if let Some(hp) = &v.host_path {
                let p = Path::new(&hp.path);
                match hp.kind.as_deref() {
                    Some("DirectoryOrCreate") => {
                        fs::create_dir_all(p).map_err(ioc(format!("create {}", hp.path)))?
                    }
                    Some("FileOrCreate") => {
                        fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(p)
                            .map_err(ioc(format!("create {}", hp.path)))?;
                    }
                    _ if !p.exists() => {
                        return Err(RuntimeError::NotFound(format!("hostPath {}", hp.path)));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    pub(super) fn volume_source(&self, pod: &Pod, volume: &str) -> Option<(PathBuf, bool)> {
        let v = pod.spec.volumes.iter().find(|v| v.name == volume)?;
        let dir = self.pod_dir(pod.name());
        if v.empty_dir.is_some() {
            Some((dir.join("volumes").join(volume), false))
        } else if v.config_map.is_some() {
            Some((dir.join("configmaps").join(volume), true))
        } else if v.files.is_some() {
            Some((files_dir(&dir, volume), true))
        } else {
            v.host_path
                .as_ref()
                .map(|h| (PathBuf::from(&h.path), false))
        }
    }
}

impl Runtime {
    /// Replaces the contents of a pod's `files` volume, atomically for the containers reading
    /// it; says whether anything changed (an identical payload is left alone).
    pub fn write_volume_files(
        &self,
        pod: &str,
        volume: &str,
        files: &[VolumeFile],
    ) -> Result<bool> {
        let rec = self.load(pod)?;
        if !rec
            .pod
            .spec
            .volumes
            .iter()
            .any(|v| v.name == volume && v.files.is_some())
        {
            return Err(RuntimeError::NotFound(format!(
                "files volume {volume} in pod {pod}"
            )));
        }
        write_atomically(&files_dir(&self.pod_dir(pod), volume), files)
            .map_err(ioc(format!("write volume {volume} of pod {pod}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, data: &str, mode: u32) -> VolumeFile {
        VolumeFile {
            path: path.into(),
            data: data.as_bytes().to_vec(),
            mode,
        }
    }

    #[test]
    fn updates_swap_the_data_link_and_keep_top_level_names_pointing_through_it() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        assert!(
            write_atomically(dir, &[file("a", "1", 0o644), file("sub/b", "2", 0o400)]).unwrap()
        );
        assert_eq!(fs::read_link(dir.join("a")).unwrap(), Path::new("..data/a"));
        assert_eq!(fs::read_to_string(dir.join("sub/b")).unwrap(), "2");
        let mode = fs::metadata(dir.join("sub/b"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);
        let first = fs::read_link(dir.join(DATA_LINK)).unwrap();
        // The same payload again: nothing is touched.
        assert!(
            !write_atomically(dir, &[file("a", "1", 0o644), file("sub/b", "2", 0o400)]).unwrap()
        );
        assert_eq!(fs::read_link(dir.join(DATA_LINK)).unwrap(), first);
        assert!(write_atomically(dir, &[file("a", "3", 0o644), file("c", "4", 0o644)]).unwrap());
        assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "3");
        assert_eq!(fs::read_to_string(dir.join("c")).unwrap(), "4");
        assert!(
            dir.join("sub").symlink_metadata().is_err(),
            "a name no longer in the payload goes"
        );
        assert!(!dir.join(&first).exists(), "the old payload directory goes");
        let payloads = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().unwrap().is_dir())
            .count();
        assert_eq!(payloads, 1);
        assert!(write_atomically(dir, &[file("../x", "", 0o644)]).is_err());
    }
}
