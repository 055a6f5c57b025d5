//! etcd's snapshot files, both ways: what `etcdctl snapshot save` writes (a bbolt database, see
//! `bbolt`, followed by the SHA-256 of everything before it) mapped onto Cairn's rows and back.
//! This is what Maintenance.Snapshot sends and one of the two formats `--restore-from` reads, so
//! data moves between etcd and Cairn with its revisions intact (Kubernetes' resourceVersions are
//! mod revisions, and stay valid across the move).
//!
//! etcd's buckets and how they map:
//! - `key`: key = main revision (8 bytes big-endian), `_`, sub revision (8 bytes big-endian), and a
//!   trailing `t` for a tombstone; value = mvccpb.KeyValue (protobuf). These are Cairn's stored key
//!   revisions, one for one (every stored revision, so history after the compaction point is
//!   kept). etcd's tombstones carry only the key; Cairn's also carry the deleting revision as
//!   `mod_revision`, which the revision key gives back.
//! - `lease`: key = lease id (8 bytes big-endian), value = leasepb.Lease {ID, TTL, RemainingTTL}.
//!   Only the granted TTL is kept: a restored lease starts its full TTL when a leader takes it over,
//!   in etcd as in Cairn. Attached keys are not stored in either: they follow from the keys' lease.
//! - `meta`: `scheduledCompactRev` / `finishedCompactRev` (a revision key, sub 0) give the
//!   compaction point; etcd finishes a scheduled compaction when it opens the file, so the later of
//!   the two is the point reads below which are refused. The current revision is not stored: as
//!   etcd does on opening, it is the newest stored key revision, or the compaction point when
//!   compaction removed the newest ones (a delete at the compaction point). `consistent_index` and
//!   `term` belong to the old cluster's log, which a restored member does not continue.
//! - `members`, `members_removed`, `cluster`, `alarm`: the old cluster's membership and alarms,
//!   dropped (a restore founds a new cluster, as `etcdctl snapshot restore` does) and written
//!   empty. `auth*`: Cairn has no authentication; an etcd snapshot with auth enabled is restored
//!   without it (with a warning), and exports carry it disabled.
//!
//! Must never import `raft/` or `grpc/`.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use prost::Message;
use sha2::{Digest, Sha256};

use super::backend::Backend;
use super::backup::RestoreError;
use super::bbolt::reader::Db;
use super::bbolt::writer::{BucketBuilder, DbWriter, PAGE_SIZE};
use super::keys::{
    decode_lease_key, kv_key, lease_key, StoredKv, KV_PREFIX, LEASE_PREFIX, META_COMPACT,
    META_RESTORING, META_REVISION,
};
use crate::codec::{decode, encode};
use crate::mvcc::{KeyValue, Revision};

/// Bytes of the SHA-256 trailer.
pub(crate) const DIGEST_LEN: u64 = 32;
const KEY_BUCKET: &[u8] = b"key";
const LEASE_BUCKET: &[u8] = b"lease";
const META_BUCKET: &[u8] = b"meta";
const AUTH_BUCKET: &[u8] = b"auth";
const SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
const FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
const AUTH_ENABLED: &[u8] = b"authEnabled";
/// Buckets etcd 3.4 keeps that an export leaves empty.
const EMPTY_BUCKETS: [&[u8]; 7] = [
    b"alarm",
    b"auth",
    b"authRoles",
    b"authUsers",
    b"cluster",
    b"members",
    b"members_removed",
];

/// mvccpb.KeyValue, as etcd stores it in the `key` bucket.
#[derive(Clone, PartialEq, Message)]
struct EtcdKeyValue {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(int64, tag = "2")]
    create_revision: i64,
    #[prost(int64, tag = "3")]
    mod_revision: i64,
    #[prost(int64, tag = "4")]
    version: i64,
    #[prost(bytes = "vec", tag = "5")]
    value: Vec<u8>,
    #[prost(int64, tag = "6")]
    lease: i64,
}

/// leasepb.Lease, as etcd stores it in the `lease` bucket.
#[derive(Clone, PartialEq, Message)]
struct EtcdLease {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
    #[prost(int64, tag = "3")]
    remaining_ttl: i64,
}

/// Whether a file's first bytes are a bbolt meta page.
pub(crate) fn looks_like(head: &[u8]) -> bool {
    head.len() >= 20
        && u32::from_le_bytes([head[16], head[17], head[18], head[19]]) == super::bbolt::MAGIC
}

/// Checks the SHA-256 trailer of the etcd snapshot at `path`; returns the database's length.
pub(crate) fn verify(path: &Path) -> Result<u64, RestoreError> {
    let read = |e| RestoreError::Read(path.display().to_string(), e);
    let file = File::open(path).map_err(read)?;
    let len = file.metadata().map_err(read)?.len();
    // etcd's check too: a snapshot is whole pages (a multiple of 512 bytes) and the digest.
    if len % 512 != DIGEST_LEN {
        return Err(RestoreError::NoTrailer(len));
    }
    let db_len = len - DIGEST_LEN;
    let mut input = BufReader::with_capacity(1 << 20, file);
    let mut hasher = Sha256::new();
    let mut left = db_len;
    let mut buf = vec![0; 1 << 20];
    while left > 0 {
        let n = (buf.len() as u64).min(left) as usize;
        input.read_exact(&mut buf[..n]).map_err(read)?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    let mut digest = [0; DIGEST_LEN as usize];
    input.read_exact(&mut digest).map_err(read)?;
    if hasher.finalize().as_slice() != digest {
        return Err(RestoreError::Checksum);
    }
    Ok(db_len)
}

/// etcd's revision key: main and sub big-endian around a `_`, and `t` for a tombstone.
fn etcd_rev_key(rev: Revision, tombstone: bool) -> Vec<u8> {
    let mut key = Vec::with_capacity(18);
    key.extend_from_slice(&rev.main.to_be_bytes());
    key.push(b'_');
    key.extend_from_slice(&rev.sub.to_be_bytes());
    if tombstone {
        key.push(b't');
    }
    key
}

fn parse_etcd_rev_key(key: &[u8]) -> Option<(Revision, bool)> {
    let tombstone = match key.len() {
        17 => false,
        18 if key[17] == b't' => true,
        _ => return None,
    };
    if key[8] != b'_' {
        return None;
    }
    let main = i64::from_be_bytes(key[..8].try_into().ok()?);
    let sub = i64::from_be_bytes(key[9..17].try_into().ok()?);
    (main >= 0 && sub >= 0).then_some((Revision::new(main, sub), tombstone))
}

/// Writes the etcd snapshot at `path` (verified by [`verify`]; its database is `db_len` bytes)
/// into a freshly opened store, row by row; returns the store revision it holds.
pub(crate) fn import(path: &Path, db_len: u64, backend: &Backend) -> Result<i64, RestoreError> {
    let read = |e| RestoreError::Read(path.display().to_string(), e);
    let storage = |e: sled::Error| RestoreError::Storage(e.to_string());
    let encoding = |e: bincode::error::EncodeError| RestoreError::Storage(e.to_string());
    let image = |what: String| RestoreError::Image(what);
    let db = Db::open(File::open(path).map_err(read)?, db_len)?;
    let buckets: Vec<String> = db
        .bucket_names()?
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    tracing::debug!(?buckets, "reading an etcd snapshot");
    let sm = &backend.sm;
    sm.insert(META_RESTORING, &[]).map_err(storage)?;

    let mut newest = 0i64;
    let mut revisions = 0u64;
    let found = db.for_each(KEY_BUCKET, |key, value| {
        let (rev, tombstone) = parse_etcd_rev_key(key)
            .ok_or_else(|| image(format!("key bucket: {key:02x?} is not a revision")))?;
        let etcd = EtcdKeyValue::decode(value)
            .map_err(|e| image(format!("key bucket: revision {}: {e}", rev.main)))?;
        let kv = if tombstone {
            KeyValue {
                key: etcd.key,
                mod_revision: rev.main,
                ..KeyValue::default()
            }
        } else {
            KeyValue {
                key: etcd.key,
                create_revision: etcd.create_revision,
                mod_revision: etcd.mod_revision,
                version: etcd.version,
                value: etcd.value,
                lease: etcd.lease,
            }
        };
        let stored = encode(&StoredKv { kv, tombstone }).map_err(encoding)?;
        sm.insert(kv_key(rev), stored).map_err(storage)?;
        newest = rev.main;
        revisions += 1;
        Ok::<_, RestoreError>(())
    })?;
    if !found {
        return Err(image("the etcd snapshot has no `key` bucket".into()));
    }

    let mut leases = 0u64;
    db.for_each(LEASE_BUCKET, |key, value| {
        let id = <[u8; 8]>::try_from(key)
            .map(i64::from_be_bytes)
            .map_err(|_| image(format!("lease bucket: {key:02x?} is not a lease id")))?;
        let lease = EtcdLease::decode(value).map_err(|e| image(format!("lease {id:x}: {e}")))?;
        sm.insert(lease_key(id), encode(&lease.ttl).map_err(encoding)?)
            .map_err(storage)?;
        leases += 1;
        Ok::<_, RestoreError>(())
    })?;

    let mut compact = -1i64;
    db.for_each(META_BUCKET, |key, value| {
        if key == SCHEDULED_COMPACT || key == FINISHED_COMPACT {
            let (rev, _) = parse_etcd_rev_key(value).ok_or_else(|| {
                image(format!("meta bucket: bad {}", String::from_utf8_lossy(key)))
            })?;
            compact = compact.max(rev.main);
        }
        Ok::<_, RestoreError>(())
    })?;
    db.for_each(AUTH_BUCKET, |key, value| {
        if key == AUTH_ENABLED && value == [1] {
            tracing::warn!(
                "the etcd snapshot has authentication enabled; Cairn serves its data without it"
            );
        }
        Ok::<_, RestoreError>(())
    })?;

    let revision = newest.max(compact).max(1);
    sm.insert(META_REVISION, encode(&revision).map_err(encoding)?)
        .map_err(storage)?;
    sm.insert(META_COMPACT, encode(&compact).map_err(encoding)?)
        .map_err(storage)?;
    sm.remove(META_RESTORING).map_err(storage)?;
    backend
        .flush_blocking()
        .map_err(|e| RestoreError::Storage(e.to_string()))?;
    tracing::info!(
        revisions,
        leases,
        revision,
        compact,
        "read an etcd snapshot"
    );
    Ok(revision)
}

/// Builds an etcd snapshot's database from Cairn's rows as a capture yields them (the small rows
/// first, then the key revisions in order). The SHA-256 trailer is added by whoever sends it.
pub(crate) struct Export {
    db: DbWriter,
    keys: BucketBuilder,
    /// Lease rows come before the key revisions and are few: (id, TTL).
    leases: Vec<(i64, i64)>,
    compact: i64,
}

impl Export {
    /// Starts an export into `file`, which must be empty.
    pub fn create(file: File) -> io::Result<Export> {
        Ok(Export {
            db: DbWriter::new(file, PAGE_SIZE)?,
            keys: BucketBuilder::new(),
            leases: Vec::new(),
            compact: -1,
        })
    }

    /// Takes one row of the store; rows that are not etcd's to know are left out.
    pub fn row(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        let bad = |e: bincode::error::DecodeError| io::Error::new(io::ErrorKind::InvalidData, e);
        if key.first() == Some(&KV_PREFIX) {
            let rev = Revision::from_bytes(&key[1..])
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad revision key"))?;
            let stored: StoredKv = decode(value).map_err(bad)?;
            let kv = stored.kv;
            let etcd = if stored.tombstone {
                EtcdKeyValue {
                    key: kv.key,
                    ..EtcdKeyValue::default()
                }
            } else {
                EtcdKeyValue {
                    key: kv.key,
                    create_revision: kv.create_revision,
                    mod_revision: kv.mod_revision,
                    version: kv.version,
                    value: kv.value,
                    lease: kv.lease,
                }
            };
            let key = etcd_rev_key(rev, stored.tombstone);
            self.keys.put(&mut self.db, &key, &etcd.encode_to_vec())
        } else if key.starts_with(LEASE_PREFIX) {
            let id = decode_lease_key(key)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad lease key"))?;
            self.leases.push((id, decode(value).map_err(bad)?));
            Ok(())
        } else {
            if key == META_COMPACT {
                self.compact = decode(value).map_err(bad)?;
            }
            Ok(())
        }
    }

    /// Writes the remaining buckets and the meta pages; returns the file and its length.
    pub fn finish(mut self) -> io::Result<(File, u64)> {
        let db = &mut self.db;
        let mut buckets = vec![(KEY_BUCKET.to_vec(), self.keys.finish(db)?)];
        let mut leases = BucketBuilder::new();
        for (id, ttl) in &self.leases {
            let lease = EtcdLease {
                id: *id,
                ttl: *ttl,
                remaining_ttl: 0,
            };
            leases.put(db, &id.to_be_bytes(), &lease.encode_to_vec())?;
        }
        buckets.push((LEASE_BUCKET.to_vec(), leases.finish(db)?));
        let mut meta = BucketBuilder::new();
        if self.compact > 0 {
            let rev = etcd_rev_key(Revision::new(self.compact, 0), false);
            meta.put(db, FINISHED_COMPACT, &rev)?;
            meta.put(db, SCHEDULED_COMPACT, &rev)?;
        }
        buckets.push((META_BUCKET.to_vec(), meta.finish(db)?));
        for name in EMPTY_BUCKETS {
            buckets.push((name.to_vec(), BucketBuilder::new().finish(db)?));
        }
        buckets.sort_by(|a, b| a.0.cmp(&b.0));
        self.db.finish(buckets)
    }
}
