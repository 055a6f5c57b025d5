//! A lazy filesystem for power-loss faults, after Jepsen's lazyfs: file data written through it
//! stays in memory until the file is fsynced; a simulated power loss throws the unsynced data
//! away. Metadata operations (create, rename, unlink, mkdir) go straight to the backing
//! directory, as on a journaling filesystem that commits metadata eagerly. A file unlinked while
//! open stays readable and writable through its handles until they close, as a page cache keeps
//! it; nothing of it survives a power loss.
//!
//! [`Overlay`] is the data model (unit-tested alone); [`LazyFs`] mounts it.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
};

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

/// A mounted lazy filesystem; unmounted when dropped.
pub struct LazyFs {
    mountpoint: PathBuf,
    overlay: Arc<Mutex<Overlay>>,
    _session: fuser::BackgroundSession,
}

impl LazyFs {
    /// Mounts a lazy view of `backing` at `mountpoint` (both created), or says why it cannot.
    pub fn mount(backing: &Path, mountpoint: &Path) -> Result<LazyFs, String> {
        if !Path::new("/dev/fuse").exists() {
            return Err("/dev/fuse does not exist".into());
        }
        for d in [backing, mountpoint] {
            std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
        }
        let backing = backing
            .canonicalize()
            .map_err(|e| format!("{}: {e}", backing.display()))?;
        let mountpoint = mountpoint
            .canonicalize()
            .map_err(|e| format!("{}: {e}", mountpoint.display()))?;
        let overlay: Arc<Mutex<Overlay>> = Arc::default();
        let fs = Passthrough::new(backing, overlay.clone());
        let session = fuser::spawn_mount2(
            fs,
            &mountpoint,
            &[fuser::MountOption::FSName("cairn-lazyfs".into())],
        )
        .map_err(|e| format!("mounting FUSE at {}: {e}", mountpoint.display()))?;
        Ok(LazyFs {
            mountpoint,
            overlay,
            _session: session,
        })
    }

    /// Where the filesystem is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Simulates a power loss for everything under `prefix` (relative to the mount); returns
    /// the unsynced bytes thrown away.
    pub fn power_loss(&self, prefix: &Path) -> u64 {
        self.overlay
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .power_loss(prefix)
    }
}

const ENOENT: i32 = 2;
const EIO: i32 = 5;
const EBADF: i32 = 9;
/// Attributes are never cached by the kernel: sizes change with the overlay.
const TTL: Duration = Duration::ZERO;

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(EIO)
}

/// The FUSE side: inodes are paths relative to the backing dir.
struct Passthrough {
    backing: PathBuf,
    overlay: Arc<Mutex<Overlay>>,
    paths: HashMap<u64, PathBuf>,
    inodes: HashMap<PathBuf, u64>,
    next: u64,
    /// The backing file behind each open handle: a file stays readable through a handle opened
    /// before it was unlinked, as on a real filesystem (a snapshot being sent while a newer one
    /// replaces it).
    handles: HashMap<u64, std::fs::File>,
    next_handle: u64,
}

impl Passthrough {
    fn new(backing: PathBuf, overlay: Arc<Mutex<Overlay>>) -> Passthrough {
        let mut p = Passthrough {
            backing,
            overlay,
            paths: HashMap::new(),
            inodes: HashMap::new(),
            next: 2,
            handles: HashMap::new(),
            next_handle: 1,
        };
        p.paths.insert(fuser::FUSE_ROOT_ID, PathBuf::new());
        p.inodes.insert(PathBuf::new(), fuser::FUSE_ROOT_ID);
        p
    }

    fn overlay(&self) -> std::sync::MutexGuard<'_, Overlay> {
        self.overlay.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ino(&mut self, rel: &Path) -> u64 {
        if let Some(i) = self.inodes.get(rel) {
            return *i;
        }
        let i = self.next;
        self.next += 1;
        self.paths.insert(i, rel.to_path_buf());
        self.inodes.insert(rel.to_path_buf(), i);
        i
    }

    /// Opens the backing file of `rel` and returns its handle number. Writable where the backing
    /// file is: once the file is unlinked, its writes go through the handle.
    fn open_handle(&mut self, rel: &Path) -> std::io::Result<u64> {
        let path = self.backing.join(rel);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .or_else(|_| std::fs::File::open(&path))?;
        let fh = self.next_handle;
        self.next_handle += 1;
        self.handles.insert(fh, file);
        Ok(fh)
    }

    fn child(&self, parent: u64, name: &OsStr) -> Option<PathBuf> {
        self.paths.get(&parent).map(|p| p.join(name))
    }

    fn attr(&mut self, rel: &Path) -> std::io::Result<FileAttr> {
        let md = std::fs::symlink_metadata(self.backing.join(rel))?;
        let ino = self.ino(rel);
        let kind = if md.is_dir() {
            FileType::Directory
        } else if md.file_type().is_symlink() {
            FileType::Symlink
        } else {
            FileType::RegularFile
        };
        let size = if kind == FileType::RegularFile {
            self.overlay().size(rel, md.len())
        } else {
            md.len()
        };
        let t = |s: i64| UNIX_EPOCH + Duration::from_secs(s.max(0) as u64);
        Ok(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: t(md.atime()),
            mtime: t(md.mtime()),
            ctime: t(md.ctime()),
            crtime: t(md.ctime()),
            kind,
            perm: (md.mode() & 0o7777) as u16,
            nlink: md.nlink() as u32,
            uid: md.uid(),
            gid: md.gid(),
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn forget_path(&mut self, rel: &Path) {
        if let Some(i) = self.inodes.remove(rel) {
            self.paths.remove(&i);
        }
    }

    /// Writes the pending changes of one file to disk and syncs it.
    fn sync(&mut self, rel: &Path) -> std::io::Result<()> {
        self.write_pending(rel)?.sync_all()
    }

    /// Writes the pending changes of one file to disk, unsynced; returns the file.
    fn write_pending(&mut self, rel: &Path) -> std::io::Result<std::fs::File> {
        let pending = self.overlay().take(rel);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(self.backing.join(rel))?;
        for p in pending {
            match p {
                Pending::Write { offset, data } => file.write_all_at(&data, offset)?,
                Pending::Truncate { len } => file.set_len(len)?,
            }
        }
        Ok(file)
    }
}

impl Filesystem for Passthrough {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let Some(rel) = self.child(parent, name) else {
            return reply.error(ENOENT);
        };
        match self.attr(&rel) {
            Ok(a) => reply.entry(&TTL, &a, 0),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        let Some(rel) = self.paths.get(&ino).cloned() else {
            return reply.error(ENOENT);
        };
        match self.attr(&rel) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let Some(rel) = self.paths.get(&ino).cloned() else {
            return reply.error(ENOENT);
        };
        if let Some(len) = size {
            // Truncation is data: lazy like writes.
            self.overlay().truncate(&rel, len);
        }
        if let Some(m) = mode {
            let perm = std::fs::Permissions::from_mode(m & 0o7777);
            if let Err(e) = std::fs::set_permissions(self.backing.join(&rel), perm) {
                return reply.error(errno(&e));
            }
        }
        match self.attr(&rel) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mkdir(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let Some(rel) = self.child(parent, name) else {
            return reply.error(ENOENT);
        };
        let res = std::fs::DirBuilder::new()
            .mode(mode & 0o7777)
            .create(self.backing.join(&rel));
        match res.and_then(|_| self.attr(&rel)) {
            Ok(a) => reply.entry(&TTL, &a, 0),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let Some(rel) = self.child(parent, name) else {
            return reply.error(ENOENT);
        };
        self.overlay().remove(&rel);
        let res = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(mode & 0o7777)
            .open(self.backing.join(&rel));
        match res
            .and_then(|_| self.attr(&rel))
            .and_then(|a| Ok((a, self.open_handle(&rel)?)))
        {
            Ok((a, fh)) => reply.created(&TTL, &a, 0, fh, fuser::consts::FOPEN_DIRECT_IO),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let Some(rel) = self.child(parent, name) else {
            return reply.error(ENOENT);
        };
        // A file open elsewhere stays readable through its handles, with what was written to it:
        // its unsynced data goes to the backing file, which goes with the name. Nothing of an
        // unlinked file survives a power loss, whether it was synced or not.
        if let Err(e) = self.write_pending(&rel) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return reply.error(errno(&e));
            }
        }
        match std::fs::remove_file(self.backing.join(&rel)) {
            Ok(()) => {
                self.overlay().remove(&rel);
                self.forget_path(&rel);
                reply.ok()
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let Some(rel) = self.child(parent, name) else {
            return reply.error(ENOENT);
        };
        match std::fs::remove_dir(self.backing.join(&rel)) {
            Ok(()) => {
                self.forget_path(&rel);
                reply.ok()
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        _flags: u32,
        reply: ReplyEmpty,
    ) {
        let (Some(from), Some(to)) = (self.child(parent, name), self.child(newparent, newname))
        else {
            return reply.error(ENOENT);
        };
        if let Err(e) = std::fs::rename(self.backing.join(&from), self.backing.join(&to)) {
            return reply.error(errno(&e));
        }
        {
            let mut o = self.overlay();
            o.remove(&to);
            o.rename(&from, &to);
        }
        self.forget_path(&to);
        let moved: Vec<(PathBuf, u64)> = self
            .inodes
            .iter()
            .filter(|(p, _)| p.starts_with(&from))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (p, i) in moved {
            self.inodes.remove(&p);
            let rest = p
                .strip_prefix(&from)
                .map(Path::to_path_buf)
                .unwrap_or_default();
            let np = if rest.as_os_str().is_empty() {
                to.clone()
            } else {
                to.join(rest)
            };
            self.paths.insert(i, np.clone());
            self.inodes.insert(np, i);
        }
        reply.ok()
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        let Some(rel) = self.paths.get(&ino).cloned() else {
            return reply.error(ENOENT);
        };
        match self.open_handle(&rel) {
            Ok(fh) => reply.opened(fh, fuser::consts::FOPEN_DIRECT_IO),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.handles.remove(&fh);
        reply.ok()
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        // An unlinked file has no path any more, and its unsynced changes went with it.
        let rel = self.paths.get(&ino).cloned();
        let offset = offset.max(0) as u64;
        // Every read comes through a handle `open` or `create` gave out.
        let Some(file) = self.handles.get(&fh) else {
            return reply.error(EBADF);
        };
        let disk = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut buf = vec![0u8; size as usize];
        let mut filled = 0;
        while offset + (filled as u64) < disk && filled < buf.len() {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) => return reply.error(errno(&e)),
            }
        }
        match &rel {
            Some(rel) => self.overlay().read(rel, offset, &mut buf, disk),
            None => buf.truncate(disk.saturating_sub(offset).min(buf.len() as u64) as usize),
        }
        reply.data(&buf)
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let offset = offset.max(0) as u64;
        let Some(rel) = self.paths.get(&ino).cloned() else {
            // Unlinked while open: written through the handle, as a page cache would keep it for
            // the file's remaining readers.
            let Some(file) = self.handles.get(&fh) else {
                return reply.error(EBADF);
            };
            return match file.write_all_at(data, offset) {
                Ok(()) => reply.written(data.len() as u32),
                Err(e) => reply.error(errno(&e)),
            };
        };
        self.overlay().write(&rel, offset, data);
        reply.written(data.len() as u32)
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _lo: u64, reply: ReplyEmpty) {
        // close() is not a sync: data stays volatile, as in a page cache.
        reply.ok()
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _ds: bool, reply: ReplyEmpty) {
        let Some(rel) = self.paths.get(&ino).cloned() else {
            return reply.error(ENOENT);
        };
        match self.sync(&rel) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fsyncdir(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _ds: bool, reply: ReplyEmpty) {
        // Metadata is written through eagerly.
        reply.ok()
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let Some(rel) = self.paths.get(&ino).cloned() else {
            return reply.error(ENOENT);
        };
        let rd = match std::fs::read_dir(self.backing.join(&rel)) {
            Ok(rd) => rd,
            Err(e) => return reply.error(errno(&e)),
        };
        let mut entries: Vec<(u64, FileType, std::ffi::OsString)> = vec![
            (ino, FileType::Directory, ".".into()),
            (ino, FileType::Directory, "..".into()),
        ];
        for e in rd.flatten() {
            let child = rel.join(e.file_name());
            let kind = match e.file_type() {
                Ok(t) if t.is_dir() => FileType::Directory,
                Ok(t) if t.is_symlink() => FileType::Symlink,
                _ => FileType::RegularFile,
            };
            let i = self.ino(&child);
            entries.push((i, kind, e.file_name()));
        }
        for (k, (i, kind, name)) in entries.into_iter().enumerate().skip(offset.max(0) as usize) {
            if reply.add(i, (k + 1) as i64, kind, name) {
                break;
            }
        }
        reply.ok()
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        reply.statfs(1 << 24, 1 << 23, 1 << 23, 1 << 20, 1 << 19, 4096, 255, 4096)
    }

    fn access(&mut self, _req: &Request<'_>, _ino: u64, _mask: i32, reply: ReplyEmpty) {
        reply.ok()
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _offset: i64,
        _length: i64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounted_fs_drops_unsynced_data_on_power_loss() {
        let Some((dir, fs)) = mounted() else { return };
        let m = fs.mountpoint().to_path_buf();
        std::fs::create_dir(m.join("n0.data")).unwrap();
        let synced = m.join("n0.data/synced");
        let lazy = m.join("n0.data/lazy");
        {
            let f = std::fs::File::create(&synced).unwrap();
            f.write_all_at(b"durable", 0).unwrap();
            f.sync_all().unwrap();
            f.write_all_at(b"-volatile", 7).unwrap();
            std::fs::write(&lazy, b"gone").unwrap();
        }
        assert_eq!(std::fs::read(&synced).unwrap(), b"durable-volatile");
        assert_eq!(std::fs::read(&lazy).unwrap(), b"gone");
        // Nothing but the synced part reached the backing dir.
        assert_eq!(
            std::fs::read(dir.path().join("disk/n0.data/synced")).unwrap(),
            b"durable"
        );
        std::fs::rename(&lazy, m.join("n0.data/renamed")).unwrap();
        assert_eq!(fs.power_loss(Path::new("n0.data")), 13);
        assert_eq!(std::fs::read(&synced).unwrap(), b"durable");
        // The file exists (metadata is eager) but its data was never synced.
        assert_eq!(std::fs::read(m.join("n0.data/renamed")).unwrap(), b"");
    }

    /// As on a real filesystem, a file opened before it is renamed and then unlinked (a Raft
    /// snapshot being sent while newer ones replace it) reads whole through that handle.
    #[test]
    fn an_open_file_reads_after_it_is_renamed_and_unlinked() {
        use std::io::Read;
        let Some((_dir, fs)) = mounted() else { return };
        let m = fs.mountpoint().to_path_buf();
        let (first, second) = (m.join("a.snap"), m.join("b.snap"));
        let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        {
            let f = std::fs::File::create(&first).unwrap();
            f.write_all_at(&content, 0).unwrap();
            f.sync_all().unwrap();
        }
        let mut reader = std::fs::File::open(&first).unwrap();
        let mut head = vec![0; 1000];
        reader.read_exact(&mut head).unwrap();
        std::fs::rename(&first, &second).unwrap();
        std::fs::remove_file(&second).unwrap();
        assert!(std::fs::File::open(&second).is_err());
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).unwrap();
        head.extend(rest);
        assert_eq!(head, content);
    }

    #[test]
    fn an_open_file_is_written_and_read_after_it_is_unlinked() {
        let Some((_dir, fs)) = mounted() else { return };
        let path = fs.mountpoint().join("kept.tmp");
        let f = std::fs::OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        f.write_all_at(b"before-", 0).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(std::fs::File::open(&path).is_err());
        f.write_all_at(b"after", 7).unwrap();
        let mut back = vec![0; 12];
        f.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back, b"before-after");
    }

    /// A lazy filesystem over a fresh directory (kept alive with it), or `None` with the reason
    /// printed where FUSE is not available.
    fn mounted() -> Option<(tempfile::TempDir, LazyFs)> {
        let dir = tempfile::tempdir().unwrap();
        match LazyFs::mount(&dir.path().join("disk"), &dir.path().join("mnt")) {
            Ok(fs) => Some((dir, fs)),
            Err(why) => {
                eprintln!("skipping: cannot mount the lazy filesystem: {why}");
                None
            }
        }
    }

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
