//! Leases: the replicated lease table ([`LeaseTable`], part of the state machine) and the
//! leader-only expiry clock ([`lessor::Lessor`]) and the loop that drives it ([`expiry`]).
//!
//! Granting and revoking go through Raft, so every member agrees on which leases exist and which keys
//! they carry. When a lease expires is decided only by the leader, which keeps expiry deadlines in
//! memory and proposes a revoke when one passes: apply stays deterministic, and a lease never expires
//! earlier than its TTL after the last keep-alive the leader answered.
//!
//! Must never import `raft/`, `storage/` or `grpc/`: consensus is reached through
//! [`expiry::ExpiryHost`].

pub mod expiry;
pub mod lessor;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::mvcc::{Event, EventType};

/// etcd's upper bound on a lease TTL, in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// A lease as every member stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Granted TTL in seconds.
    pub ttl: i64,
    /// Keys currently attached (derived from the keys' `lease` field).
    #[serde(skip)]
    pub keys: BTreeSet<Vec<u8>>,
}

/// The replicated lease table.
#[derive(Clone, Debug, Default)]
pub struct LeaseTable {
    leases: BTreeMap<i64, Lease>,
    /// The lease each attached key is on: a write learns here which lease a key leaves, without
    /// reading the key's previous value.
    attached: HashMap<Vec<u8>, i64>,
}

impl LeaseTable {
    pub fn get(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    pub fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    pub fn ids(&self) -> Vec<i64> {
        self.leases.keys().copied().collect()
    }

    pub fn ttls(&self) -> Vec<(i64, i64)> {
        self.leases.iter().map(|(id, l)| (*id, l.ttl)).collect()
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    pub fn insert(&mut self, id: i64, ttl: i64) {
        self.leases.insert(
            id,
            Lease {
                ttl,
                keys: BTreeSet::new(),
            },
        );
    }

    pub fn remove(&mut self, id: i64) -> Option<Lease> {
        let lease = self.leases.remove(&id)?;
        for key in &lease.keys {
            self.attached.remove(key);
        }
        Some(lease)
    }

    /// Follows key attachments through applied changes.
    pub fn track(&mut self, events: &[Event]) {
        for e in events {
            let after = match e.kind {
                EventType::Put => e.kv.lease,
                EventType::Delete => 0,
            };
            if after == 0 && self.attached.is_empty() {
                continue;
            }
            let key = &e.kv.key;
            let before = self.attached.get(key).copied().unwrap_or(0);
            if before == after {
                continue;
            }
            if let Some(l) = self.leases.get_mut(&before) {
                l.keys.remove(key);
            }
            self.attached.remove(key);
            self.attach(after, key);
        }
    }

    /// Attaches `key` to `lease` (a live key at load time, or one a put moved there).
    pub fn attach(&mut self, lease: i64, key: &[u8]) {
        if let Some(l) = self.leases.get_mut(&lease) {
            l.keys.insert(key.to_vec());
            self.attached.insert(key.to_vec(), lease);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::KeyValue;

    /// A write's event as apply produces it: the previous value is not loaded.
    fn event(kind: EventType, key: &str, lease: i64) -> Event {
        Event {
            kind,
            kv: KeyValue {
                key: key.into(),
                lease,
                version: 2,
                ..Default::default()
            },
            prev_kv: None,
        }
    }

    fn put(key: &str, lease: i64) -> Event {
        event(EventType::Put, key, lease)
    }

    #[test]
    fn attachments_follow_puts_and_deletes() {
        let mut t = LeaseTable::default();
        t.insert(1, 10);
        t.insert(2, 10);
        t.track(&[put("a", 1), put("b", 1)]);
        assert_eq!(t.get(1).unwrap().keys.len(), 2);
        // Moving a key to another lease, then detaching it with a plain put.
        t.track(&[put("a", 2)]);
        assert_eq!(t.get(1).unwrap().keys, BTreeSet::from([b"b".to_vec()]));
        assert_eq!(t.get(2).unwrap().keys, BTreeSet::from([b"a".to_vec()]));
        t.track(&[put("a", 0)]);
        assert!(t.get(2).unwrap().keys.is_empty());
        t.track(&[event(EventType::Delete, "b", 0)]);
        assert!(t.get(1).unwrap().keys.is_empty());
        assert!(t.attached.is_empty());
    }

    #[test]
    fn a_revoked_lease_leaves_no_attachment_behind() {
        let mut t = LeaseTable::default();
        t.insert(1, 10);
        t.track(&[put("a", 1)]);
        let revoked = t.remove(1).expect("granted");
        assert_eq!(revoked.keys, BTreeSet::from([b"a".to_vec()]));
        // Granted again under the same id: the key written since is not on it.
        t.insert(1, 10);
        t.track(&[put("a", 0)]);
        assert!(t.get(1).unwrap().keys.is_empty());
        t.track(&[put("c", 1)]);
        assert_eq!(t.get(1).unwrap().keys, BTreeSet::from([b"c".to_vec()]));
    }
}
