//! Backup files: what Maintenance.Snapshot streams and what a restore reads.
//!
//! A file is [`MAGIC`], the image length (u64 big-endian), a consistent image of the store's
//! state, zero padding, then the SHA-256 of everything before it. etcd also ends its snapshots with
//! a SHA-256 trailer, and `etcdctl snapshot save` insists on finding one where etcd puts it: the
//! file size must be a multiple of 512 plus the 32 trailer bytes, hence the padding. Restoring keeps the data, revisions, compaction point and leases;
//! it drops the old cluster's membership, member attributes and alarms, so the restored members
//! form a new cluster from their own `--initial-cluster`.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::backend::{
    Backend, ALARM_PREFIX, MEMBER_PREFIX, META_APPLIED, META_MEMBERSHIP, META_REVISION,
};
use crate::raft::types::decode;

/// Identifies a Cairn backup file and its format version.
pub const MAGIC: &[u8] = b"CAIRN-SNAPSHOT-1\n";
const DIGEST_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    #[error("not a Cairn snapshot file (bad header)")]
    NotASnapshot,
    #[error("snapshot file is corrupt: its SHA-256 does not match its content")]
    Checksum,
    #[error("snapshot image is unreadable: {0}")]
    Image(String),
    #[error("data dir {0} already holds a store; restore needs a new one")]
    DataDirInUse(String),
    #[error("writing the restored store: {0}")]
    Storage(String),
}

/// The file body for an image (without the trailer, which is streamed last).
pub fn file_body(image: &[u8]) -> Vec<u8> {
    let unpadded = MAGIC.len() + 8 + image.len();
    let mut body = Vec::with_capacity(unpadded.next_multiple_of(512));
    body.extend_from_slice(MAGIC);
    body.extend_from_slice(&(image.len() as u64).to_be_bytes());
    body.extend_from_slice(image);
    body.resize(unpadded.next_multiple_of(512), 0);
    body
}

/// The trailer that ends a file with `body`.
pub fn trailer(body: &[u8]) -> Vec<u8> {
    Sha256::digest(body).to_vec()
}

/// Checks a whole file and returns the image inside it.
fn verified_image(file: &[u8]) -> Result<&[u8], RestoreError> {
    if file.len() < MAGIC.len() + DIGEST_LEN || !file.starts_with(MAGIC) {
        return Err(RestoreError::NotASnapshot);
    }
    let (body, digest) = file.split_at(file.len() - DIGEST_LEN);
    if Sha256::digest(body).as_slice() != digest {
        return Err(RestoreError::Checksum);
    }
    let rest = &body[MAGIC.len()..];
    let len = rest
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or(RestoreError::NotASnapshot)? as usize;
    rest.get(8..8 + len).ok_or(RestoreError::NotASnapshot)
}

/// Builds a new data dir from a backup file; returns the store revision it holds. The member that
/// then starts on `data_dir` founds a new cluster (with `--initial-cluster-state new`).
pub fn restore(file: &Path, data_dir: &Path) -> Result<i64, RestoreError> {
    let bytes =
        std::fs::read(file).map_err(|e| RestoreError::Read(file.display().to_string(), e))?;
    let entries = crate::raft::state_machine::decode_image(verified_image(&bytes)?)
        .map_err(RestoreError::Image)?;
    if data_dir.join("db").exists() {
        return Err(RestoreError::DataDirInUse(data_dir.display().to_string()));
    }
    std::fs::create_dir_all(data_dir)
        .map_err(|e| RestoreError::Read(data_dir.display().to_string(), e))?;
    let storage = |e: sled::Error| RestoreError::Storage(e.to_string());
    let backend = Backend::open(data_dir, 8 * 1024 * 1024).map_err(storage)?;
    let mut batch = sled::Batch::default();
    let mut revision = 1;
    for (key, value) in entries {
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
        batch.insert(key, value);
    }
    backend.sm.apply_batch(batch).map_err(storage)?;
    backend.db.flush().map_err(storage)?;
    Ok(revision)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_or_foreign_files_are_refused() {
        let body = file_body(b"image");
        let mut file = body.clone();
        file.extend(trailer(&body));
        assert_eq!(file.len() % 512, 32, "where etcdctl looks for the checksum");
        assert_eq!(verified_image(&file).unwrap(), b"image");
        let mut flipped = file.clone();
        flipped[MAGIC.len() + 8] ^= 1;
        assert!(matches!(
            verified_image(&flipped),
            Err(RestoreError::Checksum)
        ));
        assert!(matches!(
            verified_image(b"SQLite format 3\0 and then some more bytes, enough of them"),
            Err(RestoreError::NotASnapshot)
        ));
    }
}
