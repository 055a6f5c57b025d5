//! The multi-version key index and the request logic on top of it.
//!
//! The index lives in memory; values live in the caller's storage, keyed by
//! revision. Writes do not touch storage: they return the [`BackendOp`]s the
//! caller must persist, so that the caller can commit them in the same
//! atomic batch as its applied log index. Every request is executed against
//! a staged copy of the touched keys and only merged into the index once it
//! has fully succeeded, so an error leaves the index untouched.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::{Bound, Deref, DerefMut};

use super::index_key::IndexKey;
use super::key_index::{KeyIndex, Live, Mark};
use super::revision::Revision;
use super::types::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, Event,
    EventType, KeyValue, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseOp, SortOrder, SortTarget, TxnRequest, TxnResponse,
};

#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MvccError {
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("key not found")]
    KeyNotFound,
    #[error("requested lease not found")]
    LeaseNotFound,
    #[error("mvcc: storage error: {0}")]
    Storage(String),
}

pub type StoreError = MvccError;

/// What the caller must persist, atomically with its applied index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendOp {
    /// Store `kv` under `rev`. A tombstone records a delete; its `kv` holds
    /// only the key and `mod_revision`. Tombstones must be kept until a
    /// compaction deletes them: [`KvIndex::restore`] needs them to rebuild
    /// the key's generations.
    Put {
        rev: Revision,
        kv: KeyValue,
        tombstone: bool,
    },
    /// Drop the entry stored under `rev`.
    Delete { rev: Revision },
}

/// Reads stored values by revision (the caller's storage).
pub trait ValueReader {
    fn read(&self, rev: Revision) -> Result<Option<KeyValue>, StoreError>;

    /// Whether a put may attach lease `id` (non-zero). Leases live outside the MVCC model; the
    /// default accepts every lease.
    fn lease_exists(&self, _id: i64) -> bool {
        true
    }
}

/// Outcome of a write request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteResult<T> {
    pub response: T,
    /// Store revision after the request.
    pub revision: i64,
    /// To persist, in order, in one batch. Empty if nothing changed.
    pub ops: Vec<BackendOp>,
    /// In sub-revision order; all share main revision `revision`.
    pub events: Vec<Event>,
}

/// Per-key revision history of the whole keyspace, plus the store's current
/// and compacted revisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvIndex {
    tree: BTreeMap<IndexKey, KeyIndex>,
    current_rev: i64,
    /// -1 until the first compaction, as in etcd, so that compacting at 0
    /// is accepted once.
    compact_rev: i64,
}

impl Default for KvIndex {
    fn default() -> Self {
        KvIndex::new()
    }
}

impl KvIndex {
    /// An empty store at revision 1; its first write gets revision 2.
    pub fn new() -> Self {
        KvIndex {
            tree: BTreeMap::new(),
            current_rev: 1,
            compact_rev: -1,
        }
    }

    /// Rebuilds the index from one stored entry. Call it for every stored
    /// entry in ascending revision order, then [`KvIndex::set_restored_meta`].
    pub fn restore(&mut self, rev: Revision, kv: &KeyValue, tombstone: bool) {
        let key = kv.key.as_slice();
        if !self.tree.contains_key(key) {
            self.tree.insert(IndexKey::from(key), KeyIndex::new());
        }
        let ki = self.tree.get_mut(key).expect("just inserted");
        if rev <= ki.modified {
            // Replayed twice or out of order: the first record wins.
            return;
        }
        if !tombstone {
            let live = Live {
                create_revision: kv.create_revision,
                version: kv.version,
                lease: kv.lease,
            };
            ki.restore_put(rev, live);
        } else if !ki.tombstone(rev) {
            // The generation's puts were compacted away; keep the tombstone
            // so that a later compaction still deletes it from storage.
            ki.restore_lone_tombstone(rev);
        }
        self.current_rev = self.current_rev.max(rev.main);
    }

    /// Sets the revisions persisted alongside the entries. The current
    /// revision cannot be derived from the entries alone once compaction
    /// has removed the newest ones (e.g. a delete at the compact revision).
    pub fn set_restored_meta(&mut self, current_rev: i64, compact_rev: i64) {
        self.current_rev = current_rev;
        self.compact_rev = compact_rev;
    }

    pub fn current_revision(&self) -> i64 {
        self.current_rev
    }

    /// Keys that exist at the current revision (a full scan of the index).
    pub fn key_count(&self) -> usize {
        self.tree
            .values()
            .filter(|ki| ki.get(self.current_rev).is_some())
            .count()
    }

    /// -1 if the store was never compacted.
    pub fn compact_revision(&self) -> i64 {
        self.compact_rev
    }

    /// The revision holding `key`'s value as of `at_rev`, if the key existed then.
    pub fn revision_at(&self, key: &[u8], at_rev: i64) -> Option<Revision> {
        self.tree.get(key)?.get(at_rev)
    }

    pub fn range(
        &self,
        r: &RangeRequest,
        reader: &dyn ValueReader,
    ) -> Result<RangeResponse, MvccError> {
        Exec::new(self, reader).range(r)
    }

    pub fn put(
        &mut self,
        r: PutRequest,
        reader: &dyn ValueReader,
    ) -> Result<WriteResult<PutResponse>, MvccError> {
        let mut exec = Exec::new(self, reader);
        let response = exec.put(r);
        exec.conclude(response)
    }

    pub fn delete_range(
        &mut self,
        r: DeleteRangeRequest,
        reader: &dyn ValueReader,
    ) -> Result<WriteResult<DeleteRangeResponse>, MvccError> {
        let mut exec = Exec::new(self, reader);
        let response = exec.delete_range(&r);
        exec.conclude(response)
    }

    /// Executes a transaction. All compares, including those of nested
    /// transactions, are evaluated against the state before the
    /// transaction (as etcd does); the operations of the chosen branches
    /// then run in order, each seeing the writes before it. All writes share
    /// one new main revision.
    pub fn txn(
        &mut self,
        r: TxnRequest,
        reader: &dyn ValueReader,
    ) -> Result<WriteResult<TxnResponse>, MvccError> {
        let mut exec = Exec::new(self, reader);
        let mut path = Vec::new();
        exec.compare_path(&r, &mut path)?;
        let mut path = path.into_iter();
        let response = exec.txn(r, &mut path);
        exec.conclude(response)
    }

    /// Compacts history up to `rev`: afterwards reads below `rev` fail with
    /// [`MvccError::Compacted`] while reads at `rev` or later are unaffected.
    /// Returns the stored entries that are no longer needed, as deletes to
    /// persist together with the new compact revision.
    pub fn compact(&mut self, rev: i64) -> Result<Vec<BackendOp>, MvccError> {
        if rev <= self.compact_rev {
            return Err(MvccError::Compacted);
        }
        if rev > self.current_rev {
            return Err(MvccError::FutureRevision);
        }
        let mut removed = Vec::new();
        self.tree.retain(|_, ki| {
            ki.compact(rev, &mut removed);
            !ki.is_empty()
        });
        self.compact_rev = rev;
        removed.sort_unstable();
        Ok(removed
            .into_iter()
            .map(|rev| BackendOp::Delete { rev })
            .collect())
    }
}

type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// Key bounds of a range request, or `None` if the range is empty.
fn key_bounds<'a>(key: &'a [u8], range_end: &'a [u8]) -> Option<KeyBounds<'a>> {
    match range_end {
        [] => Some((Bound::Included(key), Bound::Included(key))),
        [0] => Some((Bound::Included(key), Bound::Unbounded)),
        end if end > key => Some((Bound::Included(key), Bound::Excluded(end))),
        _ => None,
    }
}

/// One request in flight. A write request changes the key histories in place, and remembers where
/// each history stood before it wrote to it: a request that fails part way is rewound (see
/// [`Exec::conclude`]), so nothing it wrote stays, and no history is copied to be written to (a
/// copy cost a put as much as the key's whole history since the last compaction).
struct Exec<'a, B> {
    base: B,
    reader: &'a dyn ValueReader,
    /// One per entry of `ops`: the history of that op's key before the op, `None` where the key
    /// had none. Rewinding in reverse order restores each key to where the request found it.
    marks: Vec<Option<Mark>>,
    ops: Vec<BackendOp>,
    events: Vec<Event>,
}

impl<'a, B: Deref<Target = KvIndex>> Exec<'a, B> {
    fn new(base: B, reader: &'a dyn ValueReader) -> Self {
        Exec {
            base,
            reader,
            marks: Vec::new(),
            ops: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Revision that "now" means for reads: once this request has written,
    /// its own pending revision.
    fn read_rev(&self) -> i64 {
        if self.ops.is_empty() {
            self.base.current_rev
        } else {
            self.base.current_rev + 1
        }
    }

    fn next_rev(&self) -> Revision {
        Revision::new(self.base.current_rev + 1, self.ops.len() as i64)
    }

    fn key_index(&self, key: &[u8]) -> Option<&KeyIndex> {
        self.base.tree.get(key)
    }

    /// Calls `f` for every key in the range, in key order, with its
    /// revision visible at `at_rev` and its history.
    fn visit(
        &self,
        key: &[u8],
        range_end: &[u8],
        at_rev: i64,
        mut f: impl FnMut(&[u8], Revision, &KeyIndex),
    ) {
        let Some(bounds) = key_bounds(key, range_end) else {
            return;
        };
        for (k, ki) in self.base.tree.range::<[u8], _>(bounds) {
            if let Some(rev) = ki.get(at_rev) {
                f(k, rev, ki);
            }
        }
    }

    fn read(&self, rev: Revision) -> Result<KeyValue, MvccError> {
        // This request's own writes: its `ops`, in sub-revision order.
        if rev.main == self.base.current_rev + 1 {
            if let Some(BackendOp::Put { kv, .. }) = self.ops.get(rev.sub as usize) {
                return Ok(kv.clone());
            }
        }
        self.reader
            .read(rev)?
            .ok_or_else(|| MvccError::Storage(format!("no value stored at revision {rev:?}")))
    }

    /// The key's value as of "now" ([`Exec::read_rev`]), without reading it: its revision and
    /// what the index keeps of it.
    fn live(&self, key: &[u8]) -> Option<(Revision, Live)> {
        let ki = self.key_index(key)?;
        // Nothing is newer than "now", so the value then is the key's last write.
        let rev = ki.live_revision()?;
        debug_assert_eq!(ki.get(self.read_rev()), Some(rev));
        Some((rev, ki.live))
    }

    fn range(&self, r: &RangeRequest) -> Result<RangeResponse, MvccError> {
        // Requests name committed revisions: a transaction's own pending
        // revision is not addressable.
        if r.revision > self.base.current_rev {
            return Err(MvccError::FutureRevision);
        }
        let at = if r.revision <= 0 {
            self.read_rev()
        } else {
            r.revision
        };
        if at < self.base.compact_rev {
            return Err(MvccError::Compacted);
        }

        let mut revs = Vec::new();
        self.visit(&r.key, &r.range_end, at, |_, rev, _| revs.push(rev));
        let count = revs.len() as i64;
        if r.count_only {
            return Ok(RangeResponse {
                kvs: Vec::new(),
                more: false,
                count,
            });
        }

        let filtered = r.min_mod_revision != 0
            || r.max_mod_revision != 0
            || r.min_create_revision != 0
            || r.max_create_revision != 0;
        // Without an explicit order or a filter etcd reads only one value past
        // the limit (enough to set `more`), and sorts just those if the target
        // is not the key. Kept as is so paged listings match etcd.
        if r.limit > 0 && r.sort_order == SortOrder::None && !filtered {
            revs.truncate(r.limit.saturating_add(1) as usize);
        }
        let mut kvs = revs
            .into_iter()
            .map(|rev| self.read(rev))
            .collect::<Result<Vec<_>, _>>()?;

        if filtered {
            kvs.retain(|kv| {
                (r.max_mod_revision == 0 || kv.mod_revision <= r.max_mod_revision)
                    && (r.min_mod_revision == 0 || kv.mod_revision >= r.min_mod_revision)
                    && (r.max_create_revision == 0 || kv.create_revision <= r.max_create_revision)
                    && (r.min_create_revision == 0 || kv.create_revision >= r.min_create_revision)
            });
        }
        sort_kvs(&mut kvs, r.sort_order, r.sort_target);

        let mut more = false;
        if r.limit > 0 && kvs.len() as i64 > r.limit {
            kvs.truncate(r.limit as usize);
            more = true;
        }
        if r.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        Ok(RangeResponse { kvs, more, count })
    }
}

impl<B: DerefMut<Target = KvIndex>> Exec<'_, B> {
    /// Writes to the history of `key` with `write`, first recording where it stood; the next
    /// entry of `ops` must be that write. A key that exists is searched for once: the write
    /// happens inside (returning the history to the caller would take a second search, since the
    /// borrow checker cannot end a conditional borrow early).
    fn write_key<T>(&mut self, key: &[u8], write: impl FnOnce(&mut KeyIndex) -> T) -> T {
        debug_assert_eq!(self.marks.len(), self.ops.len());
        if let Some(ki) = self.base.tree.get_mut(key) {
            self.marks.push(Some(ki.mark()));
            return write(ki);
        }
        self.marks.push(None);
        write(self.base.tree.entry(IndexKey::from(key)).or_default())
    }

    /// Makes a request's writes part of the index under one new main revision, or, if it failed,
    /// rewinds every key history it wrote to.
    fn conclude<T>(mut self, outcome: Result<T, MvccError>) -> Result<WriteResult<T>, MvccError> {
        debug_assert_eq!(self.marks.len(), self.ops.len());
        match outcome {
            Ok(response) => {
                if !self.ops.is_empty() {
                    self.base.current_rev += 1;
                }
                Ok(WriteResult {
                    response,
                    revision: self.base.current_rev,
                    ops: self.ops,
                    events: self.events,
                })
            }
            Err(e) => {
                for (op, mark) in self.ops.iter().zip(&self.marks).rev() {
                    let BackendOp::Put { kv, .. } = op else {
                        unreachable!("a request writes puts and tombstones only");
                    };
                    match mark {
                        Some(mark) => self
                            .base
                            .tree
                            .get_mut(kv.key.as_slice())
                            .expect("a key written to stays in the index")
                            .rewind(mark),
                        None => {
                            self.base.tree.remove(kv.key.as_slice());
                        }
                    }
                }
                Err(e)
            }
        }
    }

    fn put(&mut self, r: PutRequest) -> Result<PutResponse, MvccError> {
        // The previous value is read only when the request itself needs it, as etcd's put reads
        // none: a watcher asking for previous values has them loaded when its events are sent
        // (see `Event::prev_unloaded`). Reading needs the whole request, so these puts search
        // the index once more.
        let prev = if r.prev_kv || r.ignore_value {
            match self.live(&r.key) {
                Some((at, _)) => Some(self.read(at)?),
                None if r.ignore_value => return Err(MvccError::KeyNotFound),
                None => None,
            }
        } else {
            None
        };
        if !r.ignore_lease && r.lease != 0 && !self.reader.lease_exists(r.lease) {
            return Err(MvccError::LeaseNotFound);
        }
        let rev = self.next_rev();
        // Every other put searches the index once: what the live value was, the mark and the
        // write all come from the one history found (see `write_key`).
        let live = match self.base.tree.get_mut(r.key.as_slice()) {
            Some(ki) => {
                let live = ki.live_revision().map(|_| ki.live);
                let lease = match (r.ignore_lease, live) {
                    (false, _) => r.lease,
                    (true, Some(l)) => l.lease,
                    (true, None) => return Err(MvccError::KeyNotFound),
                };
                self.marks.push(Some(ki.mark()));
                ki.put(rev, lease);
                live
            }
            None if r.ignore_lease => return Err(MvccError::KeyNotFound),
            None => {
                self.marks.push(None);
                let mut ki = KeyIndex::new();
                ki.put(rev, r.lease);
                self.base.tree.insert(IndexKey::from(r.key.as_slice()), ki);
                None
            }
        };
        let (create_revision, version, lease) = match live {
            Some(l) => (l.create_revision, l.version + 1, l.lease),
            None => (rev.main, 1, 0),
        };
        let kv = KeyValue {
            value: match (prev.as_ref(), r.ignore_value) {
                (Some(p), true) => p.value.clone(),
                _ => r.value,
            },
            lease: if r.ignore_lease { lease } else { r.lease },
            key: r.key,
            create_revision,
            mod_revision: rev.main,
            version,
        };
        self.ops.push(BackendOp::Put {
            rev,
            kv: kv.clone(),
            tombstone: false,
        });
        self.events.push(Event {
            kind: EventType::Put,
            kv,
            prev_kv: prev.clone(),
        });
        Ok(PutResponse {
            prev_kv: if r.prev_kv { prev } else { None },
        })
    }

    fn delete_range(&mut self, r: &DeleteRangeRequest) -> Result<DeleteRangeResponse, MvccError> {
        let mut targets = Vec::new();
        self.visit(&r.key, &r.range_end, self.read_rev(), |k, rev, _| {
            targets.push((k.to_vec(), rev))
        });
        // As for puts, the deleted values are read only when the request returns them.
        let prevs = if r.prev_kv {
            targets
                .iter()
                .map(|(_, rev)| self.read(*rev).map(Some))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            vec![None; targets.len()]
        };

        let deleted = targets.len() as i64;
        for ((key, _), prev) in targets.into_iter().zip(&prevs) {
            let rev = self.next_rev();
            let existed = self.write_key(&key, |ki| ki.tombstone(rev));
            debug_assert!(existed, "visited key must exist");
            let kv = KeyValue {
                key,
                mod_revision: rev.main,
                ..KeyValue::default()
            };
            self.ops.push(BackendOp::Put {
                rev,
                kv: kv.clone(),
                tombstone: true,
            });
            self.events.push(Event {
                kind: EventType::Delete,
                kv,
                prev_kv: prev.clone(),
            });
        }
        Ok(DeleteRangeResponse {
            deleted,
            prev_kvs: prevs.into_iter().flatten().collect(),
        })
    }

    /// Evaluates the compares of `r` and of the nested transactions on the
    /// branches taken, in the order the transactions will execute.
    fn compare_path(&self, r: &TxnRequest, path: &mut Vec<bool>) -> Result<(), MvccError> {
        let mut ok = true;
        for c in &r.compare {
            if !self.compare(c)? {
                ok = false;
                break;
            }
        }
        path.push(ok);
        for op in if ok { &r.success } else { &r.failure } {
            if let RequestOp::Txn(t) = op {
                self.compare_path(t, path)?;
            }
        }
        Ok(())
    }

    fn compare(&self, c: &Compare) -> Result<bool, MvccError> {
        let mut revs = Vec::new();
        // At "now" a key's visible value is its last write, which `live` describes.
        self.visit(&c.key, &c.range_end, self.read_rev(), |_, rev, ki| {
            revs.push((rev, ki.live))
        });
        if revs.is_empty() {
            // A missing value cannot be told apart from an empty one, so
            // value compares on missing keys always fail; the other targets
            // compare against zero.
            return Ok(
                !matches!(c.target, CompareTarget::Value(_)) && compare_kv(c, &KeyValue::default())
            );
        }
        for (rev, live) in revs {
            // Only a value compare reads the value; the other targets are in the index.
            let kv = match &c.target {
                CompareTarget::Value(_) => self.read(rev)?,
                _ => KeyValue {
                    create_revision: live.create_revision,
                    mod_revision: rev.main,
                    version: live.version,
                    lease: live.lease,
                    ..KeyValue::default()
                },
            };
            if !compare_kv(c, &kv) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn txn(
        &mut self,
        r: TxnRequest,
        path: &mut std::vec::IntoIter<bool>,
    ) -> Result<TxnResponse, MvccError> {
        let succeeded = path.next().expect("path covers every executed txn");
        let ops = if succeeded { r.success } else { r.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                RequestOp::Range(q) => ResponseOp::Range(self.range(&q)?),
                RequestOp::Put(q) => ResponseOp::Put(self.put(q)?),
                RequestOp::DeleteRange(q) => ResponseOp::DeleteRange(self.delete_range(&q)?),
                RequestOp::Txn(q) => ResponseOp::Txn(self.txn(q, path)?),
            });
        }
        Ok(TxnResponse {
            succeeded,
            responses,
        })
    }
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let ord = match &c.target {
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::CreateRevision(v) => kv.create_revision.cmp(v),
        CompareTarget::ModRevision(v) => kv.mod_revision.cmp(v),
        CompareTarget::Lease(v) => kv.lease.cmp(v),
        CompareTarget::Value(v) => kv.value.as_slice().cmp(v.as_slice()),
    };
    match c.result {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::NotEqual => ord != Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
    }
}

/// Sorts `kvs` (given in ascending key order) as a range request asks.
/// No order with a non-key target means ascending. The sort is stable, so
/// ties stay in ascending key order in both directions.
fn sort_kvs(kvs: &mut [KeyValue], order: SortOrder, target: SortTarget) {
    let order = match (order, target) {
        (SortOrder::None, SortTarget::Key) | (SortOrder::Ascend, SortTarget::Key) => return,
        (SortOrder::None, _) => SortOrder::Ascend,
        (o, _) => o,
    };
    let by = |a: &KeyValue, b: &KeyValue| match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    };
    if order == SortOrder::Descend {
        kvs.sort_by(|a, b| by(b, a));
    } else {
        kvs.sort_by(by);
    }
}

/// Why a transaction request is malformed. These checks belong to the RPC
/// layer, before the request is proposed; the texts match etcd's without
/// its "etcdserver: " prefix.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum ShapeError {
    #[error("too many operations in txn request")]
    TooManyOps,
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    #[error("key is not provided")]
    EmptyKey,
    #[error("value is provided")]
    ValueProvided,
    #[error("lease is provided")]
    LeaseProvided,
}

pub fn check_range_shape(r: &RangeRequest) -> Result<(), ShapeError> {
    if r.key.is_empty() {
        return Err(ShapeError::EmptyKey);
    }
    Ok(())
}

pub fn check_put_shape(r: &PutRequest) -> Result<(), ShapeError> {
    if r.key.is_empty() {
        return Err(ShapeError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(ShapeError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(ShapeError::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete_shape(r: &DeleteRangeRequest) -> Result<(), ShapeError> {
    if r.key.is_empty() {
        return Err(ShapeError::EmptyKey);
    }
    Ok(())
}

/// etcd's request checks for a transaction: at most `max_ops` compares and
/// at most `max_ops` operations per branch (nested transactions get what
/// the enclosing level leaves), no empty keys, no malformed puts, and no key
/// written twice on any path through the transaction.
pub fn check_txn_shape(r: &TxnRequest, max_ops: usize) -> Result<(), ShapeError> {
    check_txn_ops(r, max_ops)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

fn check_txn_ops(r: &TxnRequest, max_ops: usize) -> Result<(), ShapeError> {
    let opc = r.compare.len().max(r.success.len()).max(r.failure.len());
    if opc > max_ops {
        return Err(ShapeError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(ShapeError::EmptyKey);
    }
    for op in r.success.iter().chain(&r.failure) {
        match op {
            RequestOp::Range(q) => check_range_shape(q)?,
            RequestOp::Put(q) => check_put_shape(q)?,
            RequestOp::DeleteRange(q) => check_delete_shape(q)?,
            RequestOp::Txn(q) => check_txn_ops(q, max_ops - opc)?,
        }
    }
    Ok(())
}

/// A deleted key interval, taken literally as etcd's interval tree does:
/// `[key, range_end)` in byte order, or the single key when `range_end` is
/// empty. (So a delete with `range_end == [0]` overlaps nothing here.)
struct DelInterval<'a> {
    key: &'a [u8],
    range_end: &'a [u8],
}

impl DelInterval<'_> {
    fn contains(&self, k: &[u8]) -> bool {
        if self.range_end.is_empty() {
            self.key == k
        } else {
            self.key <= k && k < self.range_end
        }
    }
}

/// Port of etcd's `checkIntervals`: returns the keys put and intervals
/// deleted by `ops` (including nested transactions), failing if a put
/// collides with another put or with a delete that can run in the same
/// execution. Deletes may overlap each other, and puts in the two branches
/// of one nested transaction may coincide since only one branch runs.
fn check_intervals(ops: &[RequestOp]) -> Result<(Vec<&[u8]>, Vec<DelInterval<'_>>), ShapeError> {
    let mut dels: Vec<DelInterval<'_>> = ops
        .iter()
        .filter_map(|op| match op {
            RequestOp::DeleteRange(d) => Some(DelInterval {
                key: &d.key,
                range_end: &d.range_end,
            }),
            _ => None,
        })
        .collect();
    let deleted = |dels: &[DelInterval<'_>], k: &[u8]| dels.iter().any(|d| d.contains(k));

    let mut puts: Vec<&[u8]> = Vec::new();
    for op in ops {
        let RequestOp::Txn(t) = op else { continue };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || deleted(&dels, k) {
                return Err(ShapeError::DuplicateKey);
            }
            puts.push(k);
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || deleted(&dels, k) {
                return Err(ShapeError::DuplicateKey);
            }
            if !puts.contains(k) {
                puts.push(k);
            }
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }

    for op in ops {
        let RequestOp::Put(p) = op else { continue };
        let k = p.key.as_slice();
        if puts.contains(&k) || deleted(&dels, k) {
            return Err(ShapeError::DuplicateKey);
        }
        puts.push(k);
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::super::model_test::MemBackend;
    use super::*;

    fn put_req(k: &str, v: &str) -> PutRequest {
        PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        }
    }

    fn get(
        idx: &KvIndex,
        be: &MemBackend,
        k: &str,
        rev: i64,
    ) -> Result<Option<KeyValue>, MvccError> {
        let r = RangeRequest {
            key: k.into(),
            revision: rev,
            ..Default::default()
        };
        idx.range(&r, be).map(|r| r.kvs.into_iter().next())
    }

    #[test]
    fn a_transaction_that_fails_part_way_leaves_the_index_as_it_was() {
        let mut idx = KvIndex::new();
        let mut be = MemBackend::default();
        put(&mut idx, &mut be, "a", "1");
        put(&mut idx, &mut be, "b", "1");
        del(&mut idx, &mut be, "b", "");
        let before = idx.clone();
        let txn = TxnRequest {
            success: vec![
                // Appended to an existing history, a new key, a new generation after a delete,
                // a tombstone, then a put that fails.
                RequestOp::Put(put_req("a", "2")),
                RequestOp::Put(put_req("new", "1")),
                RequestOp::Put(put_req("b", "2")),
                RequestOp::DeleteRange(DeleteRangeRequest {
                    key: "a".into(),
                    ..Default::default()
                }),
                RequestOp::Put(PutRequest {
                    key: "missing".into(),
                    ignore_value: true,
                    ..Default::default()
                }),
            ],
            ..Default::default()
        };
        assert_eq!(idx.txn(txn, &be).unwrap_err(), MvccError::KeyNotFound);
        assert_eq!(idx, before);
        let rev = put(&mut idx, &mut be, "a", "3");
        assert_eq!(rev, before.current_revision() + 1);
        let a = get(&idx, &be, "a", 0).unwrap().unwrap();
        assert_eq!((a.version, a.create_revision), (2, 2));
        assert_eq!(get(&idx, &be, "new", 0).unwrap(), None);
        assert_eq!(get(&idx, &be, "b", 0).unwrap(), None);
    }

    fn put(idx: &mut KvIndex, be: &mut MemBackend, k: &str, v: &str) -> i64 {
        let w = idx.put(put_req(k, v), be).unwrap();
        be.apply(&w.ops);
        w.revision
    }

    fn del(
        idx: &mut KvIndex,
        be: &mut MemBackend,
        k: &str,
        end: &str,
    ) -> WriteResult<DeleteRangeResponse> {
        let w = idx
            .delete_range(
                DeleteRangeRequest {
                    key: k.into(),
                    range_end: end.into(),
                    prev_kv: true,
                },
                be,
            )
            .unwrap();
        be.apply(&w.ops);
        w
    }

    #[test]
    fn revisions_versions_and_generations() {
        let (mut idx, mut be) = (KvIndex::new(), MemBackend::default());
        assert_eq!(idx.current_revision(), 1);
        assert_eq!(put(&mut idx, &mut be, "a", "1"), 2);
        assert_eq!(put(&mut idx, &mut be, "a", "2"), 3);
        let kv = get(&idx, &be, "a", 0).unwrap().unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
        assert_eq!(get(&idx, &be, "a", 2).unwrap().unwrap().value, b"1");

        let w = del(&mut idx, &mut be, "a", "");
        assert_eq!((w.revision, w.response.deleted), (4, 1));
        assert_eq!(w.events[0].kv.mod_revision, 4);
        assert_eq!(w.events[0].kind, EventType::Delete);
        // Deleting nothing does not advance the revision.
        let w = del(&mut idx, &mut be, "a", "");
        assert_eq!((w.revision, w.response.deleted, w.ops.len()), (4, 0, 0));

        assert_eq!(put(&mut idx, &mut be, "a", "3"), 5);
        let kv = get(&idx, &be, "a", 0).unwrap().unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
        assert_eq!(get(&idx, &be, "a", 4).unwrap(), None);
        assert_eq!(get(&idx, &be, "a", 6), Err(MvccError::FutureRevision));
    }

    #[test]
    fn ignore_value_and_lease() {
        let (mut idx, mut be) = (KvIndex::new(), MemBackend::default());
        let r = PutRequest {
            ignore_value: true,
            ..put_req("a", "")
        };
        assert_eq!(idx.put(r.clone(), &be), Err(MvccError::KeyNotFound));
        assert_eq!(idx.current_revision(), 1);
        let w = idx
            .put(
                PutRequest {
                    lease: 7,
                    ..put_req("a", "v")
                },
                &be,
            )
            .unwrap();
        be.apply(&w.ops);
        let w = idx
            .put(
                PutRequest {
                    lease: 9,
                    prev_kv: true,
                    ..r
                },
                &be,
            )
            .unwrap();
        assert_eq!(w.response.prev_kv.unwrap().lease, 7);
        be.apply(&w.ops);
        let kv = get(&idx, &be, "a", 0).unwrap().unwrap();
        assert_eq!(
            (kv.value.as_slice(), kv.lease, kv.version),
            (&b"v"[..], 9, 2)
        );
    }

    #[test]
    fn failed_txn_changes_nothing() {
        let (mut idx, mut be) = (KvIndex::new(), MemBackend::default());
        put(&mut idx, &mut be, "a", "1");
        let before = idx.clone();
        let t = TxnRequest {
            success: vec![
                RequestOp::Put(put_req("a", "2")),
                RequestOp::DeleteRange(DeleteRangeRequest {
                    key: "a".into(),
                    ..Default::default()
                }),
                RequestOp::Put(PutRequest {
                    ignore_value: true,
                    ..put_req("b", "")
                }),
            ],
            ..Default::default()
        };
        assert_eq!(idx.txn(t, &be), Err(MvccError::KeyNotFound));
        assert_eq!(idx.tree, before.tree);
        assert_eq!(idx.current_revision(), 2);
        assert_eq!(get(&idx, &be, "a", 0).unwrap().unwrap().value, b"1");
    }

    #[test]
    fn txn_reads_own_writes_but_compares_see_the_start() {
        let (mut idx, be) = (KvIndex::new(), MemBackend::default());
        let exists = |k: &str| Compare {
            key: k.into(),
            result: CompareResult::Greater,
            target: CompareTarget::Version(0),
            ..Default::default()
        };
        let t = TxnRequest {
            compare: vec![],
            success: vec![
                RequestOp::Put(put_req("a", "1")),
                RequestOp::Range(RangeRequest {
                    key: "a".into(),
                    ..Default::default()
                }),
                RequestOp::Txn(TxnRequest {
                    compare: vec![exists("a")],
                    success: vec![RequestOp::Put(put_req("yes", ""))],
                    failure: vec![RequestOp::Put(put_req("no", ""))],
                }),
            ],
            failure: vec![],
        };
        let w = idx.txn(t, &be).unwrap();
        assert_eq!(w.revision, 2);
        let subs: Vec<_> = w
            .ops
            .iter()
            .map(|op| match op {
                BackendOp::Put { rev, .. } => (rev.main, rev.sub),
                BackendOp::Delete { .. } => panic!(),
            })
            .collect();
        assert_eq!(subs, vec![(2, 0), (2, 1)]);
        let ResponseOp::Range(rr) = &w.response.responses[1] else {
            panic!()
        };
        assert_eq!(rr.kvs[0].value, b"1");
        let ResponseOp::Txn(nested) = &w.response.responses[2] else {
            panic!()
        };
        assert!(!nested.succeeded);
        assert_eq!(w.events[1].kv.key, b"no");
    }

    #[test]
    fn read_only_txn_keeps_revision() {
        let (mut idx, be) = (KvIndex::new(), MemBackend::default());
        let t = TxnRequest {
            success: vec![RequestOp::DeleteRange(DeleteRangeRequest {
                key: vec![0],
                range_end: vec![0],
                prev_kv: false,
            })],
            ..Default::default()
        };
        let w = idx.txn(t, &be).unwrap();
        assert!(w.response.succeeded);
        assert_eq!((w.revision, w.ops.len()), (1, 0));
    }

    #[test]
    fn compaction_and_restore() {
        let (mut idx, mut be) = (KvIndex::new(), MemBackend::default());
        put(&mut idx, &mut be, "a", "1"); // 2
        put(&mut idx, &mut be, "a", "2"); // 3
        put(&mut idx, &mut be, "b", "1"); // 4
        del(&mut idx, &mut be, "b", ""); // 5
        put(&mut idx, &mut be, "c", "1"); // 6
        del(&mut idx, &mut be, "c", ""); // 7

        assert_eq!(idx.compact(8), Err(MvccError::FutureRevision));
        let ops = idx.compact(5).unwrap();
        let dels: Vec<_> = ops
            .iter()
            .map(|op| match op {
                BackendOp::Delete { rev } => rev.main,
                BackendOp::Put { .. } => panic!(),
            })
            .collect();
        assert_eq!(dels, vec![2, 4, 5]);
        be.apply(&ops);
        assert_eq!(idx.compact(5), Err(MvccError::Compacted));
        assert_eq!(idx.compact(4), Err(MvccError::Compacted));
        assert_eq!(get(&idx, &be, "a", 4), Err(MvccError::Compacted));
        // Reading at the compact revision itself is still allowed.
        assert_eq!(get(&idx, &be, "a", 5).unwrap().unwrap().value, b"2");
        assert_eq!(get(&idx, &be, "c", 6).unwrap().unwrap().value, b"1");

        // "c" survives in storage as put + tombstone; a restored index must
        // know about both so that compacting past them cleans them up.
        let mut restored = be.rebuild(idx.current_revision(), idx.compact_revision());
        assert_eq!(restored.tree, idx.tree);
        let ops = restored.compact(7).unwrap();
        assert_eq!(ops, idx.compact(7).unwrap());
        assert_eq!(ops.len(), 2);
        be.apply(&ops);
        assert_eq!(be.entries.len(), 1);

        // Keys left with no history leave the index, and come back in key order when written
        // again.
        assert_eq!(idx.tree.len(), 1);
        put(&mut idx, &mut be, "c", "2");
        put(&mut idx, &mut be, "b", "2");
        let all = RangeRequest {
            key: b"\0".to_vec(),
            range_end: vec![0],
            ..Default::default()
        };
        let keys: Vec<_> = idx
            .range(&all, &be)
            .unwrap()
            .kvs
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        assert_eq!(keys, [b"a", b"b", b"c"]);
    }

    fn txn(success: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            success,
            ..Default::default()
        }
    }

    fn p(k: &str) -> RequestOp {
        RequestOp::Put(put_req(k, ""))
    }

    fn d(k: &str, end: &str) -> RequestOp {
        RequestOp::DeleteRange(DeleteRangeRequest {
            key: k.into(),
            range_end: end.into(),
            prev_kv: false,
        })
    }

    #[test]
    fn txn_shape_rules() {
        let ok = |t: TxnRequest| check_txn_shape(&t, 8);
        assert_eq!(ok(txn(vec![p("a"), p("b"), d("c", "")])), Ok(()));
        assert_eq!(ok(txn(vec![p("a"), p("a")])), Err(ShapeError::DuplicateKey));
        assert_eq!(
            ok(txn(vec![p("b"), d("a", "c")])),
            Err(ShapeError::DuplicateKey)
        );
        assert_eq!(ok(txn(vec![p("c"), d("a", "c")])), Ok(()));
        // Overlapping deletes are fine.
        assert_eq!(ok(txn(vec![d("a", "c"), d("b", "")])), Ok(()));
        // As in etcd, a from-key delete is not treated as an interval.
        assert_eq!(ok(txn(vec![d("a", "\0"), p("b")])), Ok(()));
        // Only one branch of a nested txn runs.
        let nested = RequestOp::Txn(TxnRequest {
            success: vec![p("a")],
            failure: vec![p("a")],
            ..Default::default()
        });
        assert_eq!(ok(txn(vec![nested.clone()])), Ok(()));
        assert_eq!(
            ok(txn(vec![nested.clone(), p("a")])),
            Err(ShapeError::DuplicateKey)
        );
        assert_eq!(
            ok(txn(vec![nested, d("a", "")])),
            Err(ShapeError::DuplicateKey)
        );
        assert_eq!(
            ok(txn(vec![RequestOp::Txn(txn(vec![d("a", "b")])), p("a")])),
            Err(ShapeError::DuplicateKey)
        );
        // The two top-level branches are independent.
        let t = TxnRequest {
            success: vec![p("a")],
            failure: vec![p("a")],
            ..Default::default()
        };
        assert_eq!(ok(t), Ok(()));

        assert_eq!(ok(txn(vec![p("")])), Err(ShapeError::EmptyKey));
        let t = TxnRequest {
            compare: vec![Compare::default()],
            ..Default::default()
        };
        assert_eq!(ok(t), Err(ShapeError::EmptyKey));
        let r = RequestOp::Put(PutRequest {
            ignore_value: true,
            ..put_req("a", "v")
        });
        assert_eq!(ok(txn(vec![r])), Err(ShapeError::ValueProvided));

        let many: Vec<_> = (0..9).map(|i| p(&format!("k{i}"))).collect();
        assert_eq!(ok(txn(many.clone())), Err(ShapeError::TooManyOps));
        assert_eq!(ok(txn(many[..8].to_vec())), Ok(()));
        // A nested txn gets what its parent leaves: 8 - 5 = 3 ops.
        let mut ops: Vec<_> = many[..4].to_vec();
        ops.push(RequestOp::Txn(txn(many[4..8].to_vec())));
        assert_eq!(ok(txn(ops.clone())), Err(ShapeError::TooManyOps));
        ops[4] = RequestOp::Txn(txn(many[4..7].to_vec()));
        assert_eq!(ok(txn(ops)), Ok(()));
    }
}
