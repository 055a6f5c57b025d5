//! A lazy filesystem for power-loss faults, after Jepsen's lazyfs: file data written through it
//! stays in memory until the file is fsynced; a simulated power loss throws the unsynced data
//! away. Metadata operations (create, rename, unlink, mkdir) go straight to the backing
//! directory, as on a journaling filesystem that commits metadata eagerly.
//!
//! [`Overlay`] is the data model (unit-tested alone); [`LazyFs`] mounts it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A pending change to one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pending {
    Write { offset: u64, data: Vec<u8> },
    Truncate { len: u64 },
}

/// Unsynced changes per file (by path relative to the mount).
#[derive(Debug, Default)]
pub struct Overlay {
    files: HashMap<PathBuf, Vec<Pending>>,
}

impl Overlay {
    /// Records a write.
    pub fn write(&mut self, path: &Path, offset: u64, data: &[u8]) {
        self.files
            .entry(path.to_path_buf())
            .or_default()
            .push(Pending::Write {
                offset,
                data: data.to_vec(),
            });
    }

    /// Records a truncation.
    pub fn truncate(&mut self, path: &Path, len: u64) {
        self.files
            .entry(path.to_path_buf())
            .or_default()
            .push(Pending::Truncate { len });
    }

    /// The file's size as seen through the overlay, given its size on disk.
    pub fn size(&self, path: &Path, disk: u64) -> u64 {
        let mut size = disk;
        for p in self.files.get(path).into_iter().flatten() {
            match p {
                Pending::Write { offset, data } => size = size.max(offset + data.len() as u64),
                Pending::Truncate { len } => size = *len,
            }
        }
        size
    }

    /// Applies the pending changes to `buf`, which holds the disk's bytes at `offset` (zero
    /// filled past the disk's end), and cuts it to the visible size.
    pub fn read(&self, path: &Path, offset: u64, buf: &mut Vec<u8>, disk: u64) {
        let want = buf.len() as u64;
        let mut size = disk;
        for p in self.files.get(path).into_iter().flatten() {
            match p {
                Pending::Write { offset: o, data } => {
                    let (s, e) = (*o, o + data.len() as u64);
                    let (lo, hi) = (s.max(offset), e.min(offset + want));
                    if lo < hi {
                        buf[(lo - offset) as usize..(hi - offset) as usize]
                            .copy_from_slice(&data[(lo - s) as usize..(hi - s) as usize]);
                    }
                    size = size.max(e);
                }
                Pending::Truncate { len } => {
                    // Bytes past a truncation read as zeros if the file grows again.
                    if *len < offset + want {
                        let from = len.saturating_sub(offset) as usize;
                        buf[from..].iter_mut().for_each(|b| *b = 0);
                    }
                    size = *len;
                }
            }
        }
        let visible = size.saturating_sub(offset).min(want) as usize;
        buf.truncate(visible);
    }

    /// Takes the pending changes of a file, to apply them to disk on fsync.
    pub fn take(&mut self, path: &Path) -> Vec<Pending> {
        self.files.remove(path).unwrap_or_default()
    }

    /// Moves pending changes with a rename.
    pub fn rename(&mut self, from: &Path, to: &Path) {
        let moved: Vec<(PathBuf, Vec<Pending>)> = self
            .files
            .keys()
            .filter(|p| p.starts_with(from))
            .cloned()
            .collect::<Vec<_>>()
            .into_iter()
            .filter_map(|p| self.files.remove(&p).map(|v| (p, v)))
            .collect();
        for (p, v) in moved {
            let rest = p
                .strip_prefix(from)
                .map(Path::to_path_buf)
                .unwrap_or_default();
            let target = if rest.as_os_str().is_empty() {
                to.to_path_buf()
            } else {
                to.join(rest)
            };
            self.files.insert(target, v);
        }
    }

    /// Forgets a removed file.
    pub fn remove(&mut self, path: &Path) {
        self.files.remove(path);
    }

    /// Drops every unsynced change under `prefix`; returns the bytes lost.
    pub fn power_loss(&mut self, prefix: &Path) -> u64 {
        let mut lost = 0;
        self.files.retain(|p, v| {
            if p.starts_with(prefix) {
                lost += v
                    .iter()
                    .map(|c| match c {
                        Pending::Write { data, .. } => data.len() as u64,
                        Pending::Truncate { .. } => 0,
                    })
                    .sum::<u64>();
                false
            } else {
                true
            }
        });
        lost
    }
}

/// A mounted lazy filesystem.
pub struct LazyFs {
    mountpoint: PathBuf,
    overlay: std::sync::Arc<std::sync::Mutex<Overlay>>,
}

impl LazyFs {
    /// Mounts a lazy view of `backing` at `mountpoint`, or says why it cannot.
    pub fn mount(backing: &Path, mountpoint: &Path) -> Result<LazyFs, String> {
        let _ = (backing, mountpoint);
        Err("the FUSE mount is not available in this build".into())
    }

    /// Where the filesystem is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Simulates a power loss for everything under `prefix` (relative to the mount).
    pub fn power_loss(&self, prefix: &Path) -> u64 {
        self.overlay
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .power_loss(prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(o: &Overlay, p: &Path, disk: &[u8], offset: u64, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        let end = (offset as usize + n).min(disk.len());
        if (offset as usize) < end {
            buf[..end - offset as usize].copy_from_slice(&disk[offset as usize..end]);
        }
        o.read(p, offset, &mut buf, disk.len() as u64);
        buf
    }

    #[test]
    fn unsynced_writes_are_visible_until_power_loss() {
        let mut o = Overlay::default();
        let f = Path::new("n0.data/db");
        let disk = b"hello world".to_vec();
        o.write(f, 6, b"WORLD!!");
        assert_eq!(o.size(f, disk.len() as u64), 13);
        assert_eq!(read(&o, f, &disk, 0, 64), b"hello WORLD!!");
        assert_eq!(read(&o, f, &disk, 8, 3), b"RLD");
        o.truncate(f, 4);
        o.write(f, 6, b"x");
        assert_eq!(read(&o, f, &disk, 0, 64), b"hell\0\0x");
        assert_eq!(o.power_loss(Path::new("n0.data")), 8);
        assert_eq!(read(&o, f, &disk, 0, 64), b"hello world");
    }

    #[test]
    fn rename_carries_pending_data_and_loss_is_per_prefix() {
        let mut o = Overlay::default();
        o.write(Path::new("n0.data/tmp"), 0, b"abc");
        o.write(Path::new("n1.data/db"), 0, b"keep");
        o.rename(Path::new("n0.data/tmp"), Path::new("n0.data/conf"));
        assert_eq!(read(&o, Path::new("n0.data/conf"), b"", 0, 8), b"abc");
        assert_eq!(o.power_loss(Path::new("n0.data")), 3);
        assert_eq!(read(&o, Path::new("n1.data/db"), b"", 0, 8), b"keep");
        assert_eq!(o.take(Path::new("n1.data/db")).len(), 1);
    }
}
