//! Unpacking one layer archive (tar, or tar+gzip told by its magic bytes) into a directory that
//! overlayfs can stack: OCI whiteouts become overlayfs' own. A `.wh.<name>` entry (the layer
//! deletes `<name>` from the layers below) becomes a 0/0 character device named `<name>`; a
//! `.wh..wh..opq` entry (the directory hides everything below it) becomes the
//! `trusted.overlay.opaque=y` attribute on its directory. Paths that would leave the directory
//! (`..`, or through a symlink) are refused by the tar reader and by [`inside`].

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use super::ImageError;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

fn bad(what: impl Into<String>) -> ImageError {
    ImageError::Format(what.into())
}

/// `rel` below `root`, or `None` if it would climb out (by `..`, or through a symlink the layer
/// made, since a whiteout is created where its parent path leads).
fn inside(root: &Path, rel: &Path) -> Option<PathBuf> {
    let mut out = root.to_path_buf();
    for c in rel.components() {
        match c {
            Component::Normal(p) => {
                out.push(p);
                if out
                    .symlink_metadata()
                    .is_ok_and(|m| m.file_type().is_symlink())
                {
                    return None;
                }
            }
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// The archive's content stream, decompressed if it is gzip.
pub fn open_archive(path: &Path) -> Result<Box<dyn Read>, ImageError> {
    let f = File::open(path).map_err(|e| ImageError::Io {
        context: format!("open {}", path.display()),
        source: e,
    })?;
    let mut r = BufReader::with_capacity(256 * 1024, f);
    let head = r.fill_buf().map_err(|e| ImageError::Io {
        context: format!("read {}", path.display()),
        source: e,
    })?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::GzDecoder::new(r)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Err(bad("zstd-compressed layers are not supported"))
    } else {
        Ok(Box::new(r))
    }
}

/// Unpacks the archive at `archive` into `dest` (which must exist and be empty).
pub fn unpack(archive: &Path, dest: &Path) -> Result<(), ImageError> {
    let mut ar = tar::Archive::new(open_archive(archive)?);
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(true);
    ar.set_preserve_mtime(true);
    ar.set_unpack_xattrs(true);
    ar.set_overwrite(true);
    let tar_err = |e: io::Error| {
        let mut msg = format!("layer {}: {e}", archive.display());
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            msg.push_str(&format!(": {c}"));
            cause = c.source();
        }
        bad(msg)
    };
    for entry in ar.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        let path = entry.path().map_err(tar_err)?.into_owned();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            entry.unpack_in(dest).map_err(tar_err)?;
            continue;
        };
        let parent = path.parent().unwrap_or(Path::new(""));
        let dir = inside(dest, parent)
            .ok_or_else(|| bad(format!("layer entry {} leaves the layer", path.display())))?;
        if name == OPAQUE {
            fs::create_dir_all(&dir).map_err(tar_err)?;
            xattr::set(&dir, "trusted.overlay.opaque", b"y").map_err(|e| ImageError::Io {
                context: format!("mark {} opaque (overlayfs needs root)", dir.display()),
                source: e,
            })?;
        } else if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            fs::create_dir_all(&dir).map_err(tar_err)?;
            let target = dir.join(hidden);
            if target.symlink_metadata().is_ok() {
                let _ = fs::remove_dir_all(&target).or_else(|_| fs::remove_file(&target));
            }
            nix::sys::stat::mknod(
                &target,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::empty(),
                nix::sys::stat::makedev(0, 0),
            )
            .map_err(|e| ImageError::Io {
                context: format!("whiteout {}", target.display()),
                source: e.into(),
            })?;
        } else {
            entry.unpack_in(dest).map_err(tar_err)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    fn add(b: &mut tar::Builder<Vec<u8>>, path: &str, data: Option<&[u8]>) {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        match data {
            Some(d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(d.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                b.append_data(&mut h, path, d).unwrap();
            }
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_mode(0o755);
                h.set_cksum();
                b.append_data(&mut h, path, &[][..]).unwrap();
            }
        }
    }

    #[test]
    fn whiteouts_become_overlayfs_whiteouts() {
        if !nix::unistd::geteuid().is_root() {
            println!(
                "SKIPPED: whiteouts_become_overlayfs_whiteouts: needs root (mknod, trusted xattrs)"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        add(&mut b, "etc/", None);
        add(&mut b, "etc/motd", Some(b"hi\n"));
        add(&mut b, "etc/.wh.passwd", Some(b""));
        add(&mut b, "var/cache/", None);
        add(&mut b, "var/cache/.wh..wh..opq", Some(b""));
        let data = b.into_inner().unwrap();
        // Gzip, as registries serve layers.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &data).unwrap();
        let archive = dir.path().join("layer.tar.gz");
        fs::write(&archive, gz.finish().unwrap()).unwrap();
        let dest = dir.path().join("fs");
        fs::create_dir(&dest).unwrap();
        unpack(&archive, &dest).unwrap();
        assert_eq!(fs::read(dest.join("etc/motd")).unwrap(), b"hi\n");
        let wh = fs::symlink_metadata(dest.join("etc/passwd")).unwrap();
        assert!(wh.file_type().is_char_device());
        assert!(!dest.join("etc/.wh.passwd").exists());
        assert_eq!(
            xattr::get(dest.join("var/cache"), "trusted.overlay.opaque").unwrap(),
            Some(b"y".to_vec())
        );
    }

    #[test]
    fn entries_cannot_leave_the_layer() {
        let root = Path::new("/x");
        assert_eq!(
            inside(root, Path::new("./a/b")),
            Some(PathBuf::from("/x/a/b"))
        );
        assert_eq!(inside(root, Path::new("/a")), Some(PathBuf::from("/x/a")));
        assert_eq!(inside(root, Path::new("a/../../b")), None);
    }
}
