//! Backup files: what Maintenance.Snapshot streams and what a restore reads.
//!
//! Maintenance.Snapshot sends etcd's own snapshot format (see `etcd_snapshot`): a bbolt database
//! followed by the SHA-256 of everything before it, so `etcdctl snapshot status` and `etcdctl
//! snapshot restore` take a Cairn backup, and `--restore-from` takes an etcd one. A restore tells
//! the formats apart by content: a bbolt meta page at the start, or Cairn's older format.
//!
//! Cairn's older format, still read so earlier backups restore: [`MAGIC`], then the store's rows in
//! the Raft snapshot file layout (see `snapshot_file`), zero padding, then the SHA-256 of
//! everything before it (where `etcdctl snapshot save` looks for it: the file size is a multiple
//! of 512 plus the 32 trailer bytes). It is no longer written: etcd's format carries everything a
//! restore keeps. Files are read row by row (or page by page), never held whole.
//!
//! Restoring keeps the data, revisions, compaction point and leases; it drops the old cluster's
//! membership, member attributes and alarms, so the restored members form a new cluster from their
//! own `--initial-cluster`.
//!
//! Must never import `raft/` or `grpc/`.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::backend::Backend;
use super::error::RestoreError;
use super::etcd_snapshot;
use super::keys::{
    ALARM_PREFIX, MEMBER_PREFIX, META_APPLIED, META_MEMBERSHIP, META_RESTORING, META_REVISION,
};
use super::snapshot_file::RowReader;
#[cfg(test)]
use super::snapshot_file::RowWriter;
use crate::codec::decode;

/// Identifies a Cairn backup file and its format version.
pub const MAGIC: &[u8] = b"CAIRN-SNAPSHOT-2\n";
const DIGEST_LEN: usize = 32;

/// Writes a backup file in Cairn's older format, hashing and counting what passes (kept to test
/// that such files still restore).
#[cfg(test)]
pub(crate) struct BackupFile {
    out: io::BufWriter<File>,
    hasher: Sha256,
    written: u64,
}

#[cfg(test)]
impl BackupFile {
    /// Starts a backup file at `path`; rows go to the returned writer.
    pub fn create(path: &Path) -> io::Result<RowWriter<BackupFile>> {
        let mut file = BackupFile {
            out: io::BufWriter::with_capacity(1 << 20, File::create(path)?),
            hasher: Sha256::new(),
            written: 0,
        };
        file.write_all(MAGIC)?;
        RowWriter::new(file)
    }

    /// Pads, appends the trailer and flushes; returns the file's size.
    pub fn finish(rows: RowWriter<BackupFile>) -> io::Result<u64> {
        let mut file = rows.finish()?;
        let pad = file.written.next_multiple_of(512) - file.written;
        file.write_all(&vec![0; pad as usize])?;
        let digest = file.hasher.finalize_reset();
        file.out.write_all(&digest)?;
        file.out.flush()?;
        Ok(file.written + DIGEST_LEN as u64)
    }
}

#[cfg(test)]
impl Write for BackupFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = self.out.write(bytes)?;
        self.hasher.update(&bytes[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A verified backup, ready to be written into a new data dir.
pub struct Backup {
    path: PathBuf,
    format: Format,
}

enum Format {
    Cairn,
    /// An etcd snapshot whose database is this many bytes (the trailer follows).
    Etcd(u64),
}

/// Reads and verifies a backup file meant for a new store at `data_dir` (one pass, in bounded
/// memory; the rows are read again when they are written).
pub fn read_backup(file: &Path, data_dir: &Path) -> Result<Backup, RestoreError> {
    if data_dir.join("db").exists() {
        return Err(RestoreError::DataDirInUse(data_dir.display().to_string()));
    }
    let read = |e| RestoreError::Read(file.display().to_string(), e);
    let f = File::open(file).map_err(read)?;
    let len = f.metadata().map_err(read)?.len();
    if len < (MAGIC.len() + DIGEST_LEN) as u64 {
        return Err(RestoreError::NotASnapshot);
    }
    let mut input = BufReader::with_capacity(1 << 20, f);
    let mut magic = vec![0; MAGIC.len()];
    input.read_exact(&mut magic).map_err(read)?;
    if magic != MAGIC {
        let mut head = [0u8; 20];
        head[..MAGIC.len()].copy_from_slice(&magic);
        input.read_exact(&mut head[MAGIC.len()..]).map_err(read)?;
        if !etcd_snapshot::looks_like(&head) {
            return Err(RestoreError::NotASnapshot);
        }
        let db_len = etcd_snapshot::verify(file)?;
        return Ok(Backup {
            path: file.to_path_buf(),
            format: Format::Etcd(db_len),
        });
    }
    let mut hasher = Sha256::new();
    hasher.update(&magic);
    let body_rest = len - (MAGIC.len() + DIGEST_LEN) as u64;
    io::copy(
        &mut (&mut input).take(body_rest),
        &mut HashWriter(&mut hasher),
    )
    .map_err(read)?;
    let mut digest = [0; DIGEST_LEN];
    input.read_exact(&mut digest).map_err(read)?;
    if hasher.finalize().as_slice() != digest {
        return Err(RestoreError::Checksum);
    }
    Ok(Backup {
        path: file.to_path_buf(),
        format: Format::Cairn,
    })
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes a backup into a freshly opened store, row by row; returns the store revision it holds.
/// The member that starts on it founds a new cluster (with `--initial-cluster-state new`).
pub(crate) fn write_backup(backup: Backup, backend: &Backend) -> Result<i64, RestoreError> {
    if let Format::Etcd(db_len) = backup.format {
        return etcd_snapshot::import(&backup.path, db_len, backend);
    }
    let storage = |e: sled::Error| RestoreError::Storage(e.to_string());
    let image = |e: io::Error| RestoreError::Image(e.to_string());
    let read = |e| RestoreError::Read(backup.path.display().to_string(), e);
    let mut input = BufReader::with_capacity(1 << 20, File::open(&backup.path).map_err(read)?);
    let mut magic = vec![0; MAGIC.len()];
    input.read_exact(&mut magic).map_err(read)?;
    let mut rows = RowReader::new(input).map_err(image)?;
    let sm = &backend.sm();
    sm.insert(META_RESTORING, &[]).map_err(storage)?;
    let mut revision = 1;
    while let Some((key, value)) = rows.next_row().map_err(image)? {
        let old_cluster = key == META_APPLIED
            || key == META_MEMBERSHIP
            || key.starts_with(MEMBER_PREFIX)
            || key.starts_with(ALARM_PREFIX);
        if old_cluster {
            continue;
        }
        if key == META_REVISION {
            revision = decode(&value).map_err(|e| RestoreError::Image(e.to_string()))?;
        }
        sm.insert(key, value).map_err(storage)?;
    }
    sm.remove(META_RESTORING).map_err(storage)?;
    backend
        .flush_blocking()
        .map_err(|e| RestoreError::Storage(e.to_string()))?;
    Ok(revision)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup_bytes(rows: &[(&[u8], &[u8])], path: &Path) -> Vec<u8> {
        let mut w = BackupFile::create(path).unwrap();
        for (k, v) in rows {
            w.row(k, v).unwrap();
        }
        let size = BackupFile::finish(w).unwrap();
        let file = std::fs::read(path).unwrap();
        assert_eq!(file.len() as u64, size);
        file
    }

    #[test]
    fn backups_verify_and_corrupt_or_foreign_files_are_refused() {
        let big = vec![7u8; 5000];
        let rows: Vec<(&[u8], &[u8])> = vec![(b"m/revision", b"\x05"), (b"r1", &big)];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.snap");
        let file = backup_bytes(&rows, &path);
        assert_eq!(file.len() % 512, 32, "where etcdctl looks for the checksum");
        let backup = read_backup(&path, &dir.path().join("new")).expect("a good file");
        // Files of this older format still restore, row for row.
        let backend = Backend::open(&dir.path().join("new"), 1 << 20).unwrap();
        let revision: i64 = decode(b"\x05").unwrap();
        assert_eq!(write_backup(backup, &backend).unwrap(), revision);
        let restored: Vec<(Vec<u8>, Vec<u8>)> = backend
            .sm()
            .iter()
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
            .collect();
        let expected: Vec<(Vec<u8>, Vec<u8>)> =
            rows.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        assert_eq!(restored, expected);
        drop(backend);
        let mut flipped = file.clone();
        flipped[MAGIC.len() + 30] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(matches!(
            read_backup(&path, &dir.path().join("other")),
            Err(RestoreError::Checksum)
        ));
        std::fs::write(
            &path,
            b"SQLite format 3\0 and then some more bytes, enough of them",
        )
        .unwrap();
        assert!(matches!(
            read_backup(&path, &dir.path().join("other")),
            Err(RestoreError::NotASnapshot)
        ));
    }
}
