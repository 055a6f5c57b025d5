//! How Cairn's rows are keyed and encoded in sled's `sm` tree: the MVCC key revisions, leases,
//! member attributes, alarms, auth users and roles, and the `m/` meta rows.
//!
//! Must never import `raft/` or `grpc/`; only storage reads these keys.

use serde::{Deserialize, Serialize};

use crate::mvcc::{KeyValue, Revision};

/// Sorts after the `m/` meta keys: revisions are appended at the right edge of the tree, and meta keys,
/// rewritten on every apply, stay in a small leaf of their own instead of the growing last one.
pub(crate) const KV_PREFIX: u8 = b'r';
/// Lease rows: `l/` + id (i64 big-endian) -> bincode TTL.
pub(crate) const LEASE_PREFIX: &[u8] = b"l/";
/// Published member attributes: `a/` + member id (u64 big-endian) -> bincode (name, client URLs).
pub(crate) const MEMBER_PREFIX: &[u8] = b"a/";
/// Raised alarms: `x/` + member id (u64 big-endian) + alarm type (i32 big-endian) -> empty.
pub(crate) const ALARM_PREFIX: &[u8] = b"x/";
/// Auth users: `u/` + name -> bincode [`crate::auth::User`].
pub(crate) const USER_PREFIX: &[u8] = b"u/";
/// Auth roles: `o/` + name -> bincode [`crate::auth::Role`].
pub(crate) const ROLE_PREFIX: &[u8] = b"o/";
/// Whether auth is enabled, and the auth revision: bincode (bool, u64).
pub(crate) const META_AUTH: &[u8] = b"m/auth";
pub(crate) const META_APPLIED: &[u8] = b"m/applied";
pub(crate) const META_MEMBERSHIP: &[u8] = b"m/membership";
pub(crate) const META_REVISION: &[u8] = b"m/revision";
pub(crate) const META_COMPACT: &[u8] = b"m/compact";
/// The redo record of the last applied entry; see [`RowWrites`].
pub(crate) const META_APPLY_RECORD: &[u8] = b"m/apply";

/// Present in a data dir while a restore writes into it: a store cut short there must not start.
pub(crate) const META_RESTORING: &[u8] = b"m/restoring";
/// Present while a received snapshot replaces the store: the store is then torn, and opening it
/// redoes the install from the current snapshot file.
pub(crate) const META_INSTALLING: &[u8] = b"m/installing";
/// In the `snapshot` tree, the current snapshot: bincode (meta, file name in the snapshot
/// directory), one value so the two move together.
pub(crate) const SNAP_CURRENT: &[u8] = b"current";

/// One stored revision of a key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StoredKv {
    pub kv: KeyValue,
    pub tombstone: bool,
}

pub(crate) fn kv_key(rev: Revision) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = KV_PREFIX;
    key[1..].copy_from_slice(&rev.to_bytes());
    key
}

pub(crate) fn member_key(id: u64) -> [u8; 10] {
    let mut key = [0u8; 10];
    key[..2].copy_from_slice(MEMBER_PREFIX);
    key[2..].copy_from_slice(&id.to_be_bytes());
    key
}

pub(crate) fn decode_member_key(key: &[u8]) -> Option<u64> {
    let id = key.strip_prefix(MEMBER_PREFIX)?;
    Some(u64::from_be_bytes(id.try_into().ok()?))
}

pub(crate) fn alarm_key(member: u64, alarm: i32) -> [u8; 14] {
    let mut key = [0u8; 14];
    key[..2].copy_from_slice(ALARM_PREFIX);
    key[2..10].copy_from_slice(&member.to_be_bytes());
    key[10..].copy_from_slice(&alarm.to_be_bytes());
    key
}

pub(crate) fn decode_alarm_key(key: &[u8]) -> Option<(u64, i32)> {
    let rest = key.strip_prefix(ALARM_PREFIX)?;
    let member = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    let alarm = i32::from_be_bytes(rest.get(8..12)?.try_into().ok()?);
    Some((member, alarm))
}

pub(crate) fn lease_key(id: i64) -> [u8; 10] {
    let mut key = [0u8; 10];
    key[..2].copy_from_slice(LEASE_PREFIX);
    key[2..].copy_from_slice(&id.to_be_bytes());
    key
}

pub(crate) fn decode_lease_key(key: &[u8]) -> Option<i64> {
    let id = key.strip_prefix(LEASE_PREFIX)?;
    Some(i64::from_be_bytes(id.try_into().ok()?))
}

pub(crate) fn prefixed(prefix: &[u8], name: &str) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}
