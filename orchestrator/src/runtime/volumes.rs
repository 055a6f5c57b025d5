//! A pod's volumes on the host: emptyDir, hostPath, configMap and the like, prepared in the pod's
//! state directory before any container starts, and how a container's mount names a source.
//!
//! Must never import anything outside `runtime/`.

use std::fs;
use std::path::{Path, PathBuf};

use super::spec::{ConfigMaps, Pod};
use super::{ioc, Result, Runtime, RuntimeError};

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
        } else {
            v.host_path
                .as_ref()
                .map(|h| (PathBuf::from(&h.path), false))
        }
    }
}
