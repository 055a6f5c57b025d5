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
//!   empty.
//! - `authUsers` (name -> authpb.User, its password a bcrypt hash), `authRoles` (name ->
//!   authpb.Role), `auth` (`authEnabled` = 1 or 0, `authRevision` = 8 bytes big-endian): Cairn's
//!   users, roles, enabled flag and auth revision, one for one, so a restore (into Cairn or etcd)
//!   keeps who may do what.
//!
//! Must never import `raft/` or `grpc/`.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use prost::Message;
use sha2::{Digest, Sha256};

use super::backend::Backend;
use super::bbolt::reader::Db;
use super::bbolt::writer::{BucketBuilder, DbWriter, PAGE_SIZE};
use super::error::RestoreError;
use super::keys::{
    decode_lease_key, kv_key, lease_key, prefixed, StoredKv, KV_PREFIX, LEASE_PREFIX, META_AUTH,
    META_COMPACT, META_RESTORING, META_REVISION, ROLE_PREFIX, USER_PREFIX,
};
use crate::auth::{PermType, Permission, Role, User};
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
const AUTH_REVISION: &[u8] = b"authRevision";
const USERS_BUCKET: &[u8] = b"authUsers";
const ROLES_BUCKET: &[u8] = b"authRoles";
/// Buckets etcd 3.4 keeps that an export leaves empty.
const EMPTY_BUCKETS: [&[u8]; 4] = [b"alarm", b"cluster", b"members", b"members_removed"];

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

/// authpb.UserAddOptions.
#[derive(Clone, PartialEq, Message)]
struct EtcdUserOptions {
    #[prost(bool, tag = "1")]
    no_password: bool,
}

/// authpb.User, as etcd stores it in the `authUsers` bucket.
#[derive(Clone, PartialEq, Message)]
struct EtcdUser {
    #[prost(bytes = "vec", tag = "1")]
    name: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    password: Vec<u8>,
    #[prost(string, repeated, tag = "3")]
    roles: Vec<String>,
    #[prost(message, optional, tag = "4")]
    options: Option<EtcdUserOptions>,
}

/// authpb.Permission.
#[derive(Clone, PartialEq, Message)]
struct EtcdPermission {
    #[prost(int32, tag = "1")]
    perm_type: i32,
    #[prost(bytes = "vec", tag = "2")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    range_end: Vec<u8>,
}

/// authpb.Role, as etcd stores it in the `authRoles` bucket.
#[derive(Clone, PartialEq, Message)]
struct EtcdRole {
    #[prost(bytes = "vec", tag = "1")]
    name: Vec<u8>,
    #[prost(message, repeated, tag = "2")]
    key_permission: Vec<EtcdPermission>,
}

impl From<&User> for EtcdUser {
    fn from(u: &User) -> Self {
        EtcdUser {
            name: u.name.as_bytes().to_vec(),
            password: u.password.as_bytes().to_vec(),
            roles: u.roles.clone(),
            options: u
                .no_password
                .then_some(EtcdUserOptions { no_password: true }),
        }
    }
}

impl From<&Role> for EtcdRole {
    fn from(r: &Role) -> Self {
        EtcdRole {
            name: r.name.as_bytes().to_vec(),
            key_permission: r
                .perms
                .iter()
                .map(|p| EtcdPermission {
                    perm_type: p.perm_type as i32,
                    key: p.key.clone(),
                    range_end: p.range_end.clone(),
                })
                .collect(),
        }
    }
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
    // The meta pages too, before a data dir is made for it.
    Db::open(File::open(path).map_err(read)?, db_len)?;
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
    let started = std::time::Instant::now();
    let db = Db::open(File::open(path).map_err(read)?, db_len)?;
    let buckets: Vec<String> = db
        .bucket_names()?
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    tracing::debug!(?buckets, "reading an etcd snapshot");
    let sm = &backend.sm();
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
    let (mut auth_enabled, mut auth_revision) = (false, 1u64);
    db.for_each(AUTH_BUCKET, |key, value| {
        if key == AUTH_ENABLED {
            auth_enabled = value == [1];
        } else if key == AUTH_REVISION {
            auth_revision = <[u8; 8]>::try_from(value)
                .map(u64::from_be_bytes)
                .map_err(|_| image("auth bucket: bad authRevision".into()))?;
        }
        Ok::<_, RestoreError>(())
    })?;
    // A store that never changed auth has no auth row.
    if auth_enabled || auth_revision > 1 {
        sm.insert(
            META_AUTH,
            encode(&(auth_enabled, auth_revision)).map_err(encoding)?,
        )
        .map_err(storage)?;
    }
    let text = |b: Vec<u8>, what: &str| {
        String::from_utf8(b).map_err(|_| image(format!("{what}: name is not UTF-8")))
    };
    db.for_each(USERS_BUCKET, |_, value| {
        let u = EtcdUser::decode(value).map_err(|e| image(format!("authUsers: {e}")))?;
        let mut roles = u.roles;
        roles.sort();
        roles.dedup();
        let user = User {
            name: text(u.name, "authUsers")?,
            password: text(u.password, "authUsers password")?,
            roles,
            no_password: u.options.is_some_and(|o| o.no_password),
        };
        sm.insert(
            prefixed(USER_PREFIX, &user.name),
            encode(&user).map_err(encoding)?,
        )
        .map_err(storage)?;
        Ok::<_, RestoreError>(())
    })?;
    db.for_each(ROLES_BUCKET, |_, value| {
        let r = EtcdRole::decode(value).map_err(|e| image(format!("authRoles: {e}")))?;
        let mut perms = Vec::new();
        for p in r.key_permission {
            let perm_type = PermType::from_i32(p.perm_type)
                .ok_or_else(|| image(format!("authRoles: permission type {}", p.perm_type)))?;
            perms.push(Permission {
                perm_type,
                key: p.key,
                range_end: p.range_end,
            });
        }
        perms.sort_by(|a, b| (&a.key, &a.range_end).cmp(&(&b.key, &b.range_end)));
        let role = Role {
            name: text(r.name, "authRoles")?,
            perms,
        };
        sm.insert(
            prefixed(ROLE_PREFIX, &role.name),
            encode(&role).map_err(encoding)?,
        )
        .map_err(storage)?;
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
    let elapsed_ms = started.elapsed().as_millis() as u64;
    tracing::info!(
        revisions,
        leases,
        revision,
        compact,
        elapsed_ms,
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
    /// Users and roles (in name order, as the rows come) and (enabled, auth revision).
    users: Vec<User>,
    roles: Vec<Role>,
    auth: (bool, u64),
}

impl Export {
    /// Starts an export into `file`, which must be empty.
    pub fn create(file: File) -> io::Result<Export> {
        Ok(Export {
            db: DbWriter::new(file, PAGE_SIZE)?,
            keys: BucketBuilder::new(),
            leases: Vec::new(),
            compact: -1,
            users: Vec::new(),
            roles: Vec::new(),
            auth: (false, 1),
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
        } else if key.starts_with(USER_PREFIX) {
            self.users.push(decode(value).map_err(bad)?);
            Ok(())
        } else if key.starts_with(ROLE_PREFIX) {
            self.roles.push(decode(value).map_err(bad)?);
            Ok(())
        } else {
            if key == META_COMPACT {
                self.compact = decode(value).map_err(bad)?;
            } else if key == META_AUTH {
                self.auth = decode(value).map_err(bad)?;
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
        let mut auth = BucketBuilder::new();
        auth.put(db, AUTH_ENABLED, &[u8::from(self.auth.0)])?;
        auth.put(db, AUTH_REVISION, &self.auth.1.to_be_bytes())?;
        buckets.push((AUTH_BUCKET.to_vec(), auth.finish(db)?));
        let mut users = BucketBuilder::new();
        for u in &self.users {
            users.put(db, u.name.as_bytes(), &EtcdUser::from(u).encode_to_vec())?;
        }
        buckets.push((USERS_BUCKET.to_vec(), users.finish(db)?));
        let mut roles = BucketBuilder::new();
        for r in &self.roles {
            roles.put(db, r.name.as_bytes(), &EtcdRole::from(r).encode_to_vec())?;
        }
        buckets.push((ROLES_BUCKET.to_vec(), roles.finish(db)?));
        for name in EMPTY_BUCKETS {
            buckets.push((name.to_vec(), BucketBuilder::new().finish(db)?));
        }
        buckets.sort_by(|a, b| a.0.cmp(&b.0));
        self.db.finish(buckets)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::storage::backup::{read_backup, write_backup};
    use crate::storage::keys::{alarm_key, member_key};

    fn put(rev: Revision, key: &str, value: Vec<u8>, version: i64, lease: i64) -> StoredKv {
        StoredKv {
            kv: KeyValue {
                key: key.into(),
                create_revision: rev.main - version + 1,
                mod_revision: rev.main,
                version,
                value,
                lease,
            },
            tombstone: false,
        }
    }

    /// A store's rows as a capture yields them: the small rows in key order, then key revisions.
    fn rows() -> Rows {
        let mut small = vec![
            (
                member_key(3).to_vec(),
                encode(&("m".to_string(), Vec::<String>::new())).unwrap(),
            ),
            (lease_key(7).to_vec(), encode(&60i64).unwrap()),
            (lease_key(9).to_vec(), encode(&120i64).unwrap()),
            (META_COMPACT.to_vec(), encode(&4i64).unwrap()),
            (META_REVISION.to_vec(), encode(&2_000i64).unwrap()),
            (alarm_key(3, 1).to_vec(), Vec::new()),
            (META_AUTH.to_vec(), encode(&(true, 5u64)).unwrap()),
        ];
        let alice = User {
            name: "alice".into(),
            password: "$2b$04$hash".into(),
            roles: vec!["reader".into(), "root".into()],
            no_password: false,
        };
        let cn = User {
            name: "cn-only".into(),
            password: String::new(),
            roles: Vec::new(),
            no_password: true,
        };
        for u in [alice, cn] {
            small.push((prefixed(USER_PREFIX, &u.name), encode(&u).unwrap()));
        }
        let reader = Role {
            name: "reader".into(),
            perms: vec![
                Permission {
                    perm_type: PermType::Read,
                    key: b"/app/".to_vec(),
                    range_end: b"/app0".to_vec(),
                },
                Permission {
                    perm_type: PermType::ReadWrite,
                    key: b"/k".to_vec(),
                    range_end: Vec::new(),
                },
            ],
        };
        small.push((prefixed(ROLE_PREFIX, "reader"), encode(&reader).unwrap()));
        small.sort();
        let mut kvs = Vec::new();
        for main in 2..2_000 {
            let rev = Revision::new(main, 0);
            let stored = match main {
                // A value spilling over several pages.
                11 => put(rev, "big", vec![7; 20_000], 1, 0),
                m if m % 97 == 0 => StoredKv {
                    kv: KeyValue {
                        key: format!("k{}", m % 10).into(),
                        mod_revision: m,
                        ..KeyValue::default()
                    },
                    tombstone: true,
                },
                m => put(rev, &format!("k{}", m % 10), m.to_string().into(), 1, 7),
            };
            kvs.push((kv_key(rev).to_vec(), encode(&stored).unwrap()));
        }
        // Two writes of one transaction.
        for sub in 0..2 {
            let stored = put(
                Revision::new(2_000, sub),
                &format!("t{sub}"),
                Vec::new(),
                1,
                9,
            );
            kvs.push((
                kv_key(Revision::new(2_000, sub)).to_vec(),
                encode(&stored).unwrap(),
            ));
        }
        small.into_iter().chain(kvs).collect()
    }

    /// An etcd snapshot of `rows` at `path`: the database and its trailer.
    fn export(rows: &[(Vec<u8>, Vec<u8>)], path: &Path) -> Vec<u8> {
        let mut export = Export::create(File::create(path).unwrap()).unwrap();
        for (k, v) in rows {
            export.row(k, v).unwrap();
        }
        let (mut file, len) = export.finish().unwrap();
        let db = std::fs::read(path).unwrap();
        assert_eq!(db.len() as u64, len);
        file.write_all(&Sha256::digest(&db)).unwrap();
        std::fs::read(path).unwrap()
    }

    type Rows = Vec<(Vec<u8>, Vec<u8>)>;

    fn restore(path: &Path, dir: &Path) -> Result<Rows, RestoreError> {
        let backup = read_backup(path, dir)?;
        let backend = Backend::open(dir, 1 << 20).unwrap();
        let revision = write_backup(backup, &backend)?;
        assert_eq!(revision, 2_000);
        Ok(backend
            .sm()
            .iter()
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
            .collect())
    }

    #[test]
    fn an_export_restores_to_the_same_rows_less_the_old_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap.db");
        let rows = rows();
        let file = export(&rows, &path);
        assert_eq!(
            file.len() as u64 % 512,
            DIGEST_LEN,
            "where etcd looks for the trailer"
        );
        let restored = restore(&path, &dir.path().join("new")).expect("restores");
        let mut kept: Vec<_> = rows
            .into_iter()
            .filter(|(k, _)| !k.starts_with(b"a/") && !k.starts_with(b"x/"))
            .collect();
        // Users (`u/`) sort after the key revisions.
        kept.sort();
        assert_eq!(restored, kept);
    }

    #[test]
    fn damaged_etcd_snapshots_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap.db");
        let good = export(&rows(), &path);
        let refused = |bytes: &[u8], n: usize| -> String {
            std::fs::write(&path, bytes).unwrap();
            let err = restore(&path, &dir.path().join(format!("new{n}"))).expect_err("refused");
            err.to_string()
        };

        let mut flipped = good.clone();
        flipped[5 * 4096 + 100] ^= 1;
        assert!(refused(&flipped, 0).contains("SHA-256 does not match"));
        let err = refused(&good[..good.len() - 1], 1);
        assert!(err.contains("no SHA-256 trailer"), "{err}");
        assert!(refused(&good[..good.len() - 4096], 2).contains("SHA-256 does not match"));

        // Damage under a trailer that matches it: the file's own checks catch it.
        let rehash = |mut db: Vec<u8>| {
            let digest = Sha256::digest(&db);
            db.extend_from_slice(&digest);
            db
        };
        let db = good[..good.len() - DIGEST_LEN as usize].to_vec();
        let mut meta = db.clone();
        meta[PAGE_SIZE + 40] ^= 1;
        let err = refused(&rehash(meta), 3);
        assert!(err.contains("meta page 1 is corrupt"), "{err}");
        let err = refused(&rehash(db[..db.len() - PAGE_SIZE * 2].to_vec()), 4);
        assert!(err.contains("truncated"), "{err}");
    }
}
