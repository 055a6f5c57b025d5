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

use std::collections::{BTreeMap, BTreeSet};

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
        self.leases.remove(&id)
    }

    /// Follows key attachments through applied changes.
    pub fn track(&mut self, events: &[Event]) {
        for e in events {
            let key = &e.kv.key;
            let before = e.prev_kv.as_ref().map_or(0, |p| p.lease);
            let after = match e.kind {
                EventType::Put => e.kv.lease,
                EventType::Delete => 0,
            };
            if before == after {
                continue;
            }
            if let Some(l) = self.leases.get_mut(&before) {
                l.keys.remove(key);
            }
            if let Some(l) = self.leases.get_mut(&after) {
                l.keys.insert(key.clone());
            }
        }
    }

    /// Re-attaches a live key at load time.
    pub fn attach(&mut self, lease: i64, key: &[u8]) {
        if let Some(l) = self.leases.get_mut(&lease) {
            l.keys.insert(key.to_vec());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::KeyValue;

    fn put(key: &str, lease: i64, prev: Option<i64>) -> Event {
        Event {
            kind: EventType::Put,
            kv: KeyValue {
                key: key.into(),
                lease,
                ..Default::default()
            },
            prev_kv: prev.map(|l| KeyValue {
                key: key.into(),
                lease: l,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn attachments_follow_puts_and_deletes() {
        let mut t = LeaseTable::default();
        t.insert(1, 10);
        t.insert(2, 10);
        t.track(&[put("a", 1, None), put("b", 1, None)]);
        assert_eq!(t.get(1).unwrap().keys.len(), 2);
        // Moving a key to another lease, then detaching it with a plain put.
        t.track(&[put("a", 2, Some(1))]);
        assert_eq!(t.get(1).unwrap().keys, BTreeSet::from([b"b".to_vec()]));
        assert_eq!(t.get(2).unwrap().keys, BTreeSet::from([b"a".to_vec()]));
        t.track(&[put("a", 0, Some(2))]);
        assert!(t.get(2).unwrap().keys.is_empty());
        let del = Event {
            kind: EventType::Delete,
            kv: KeyValue {
                key: b"b".to_vec(),
                ..Default::default()
            },
            prev_kv: Some(KeyValue {
                key: b"b".to_vec(),
                lease: 1,
                ..Default::default()
            }),
        };
        t.track(&[del]);
        assert!(t.get(1).unwrap().keys.is_empty());
    }
}
