//! Model-based test: random histories are applied both to [`KvIndex`] and to
//! a naive model that keeps a full snapshot of the keyspace per revision,
//! and every answer is compared. An index rebuilt from the persisted
//! entries must answer exactly like the live one.

use std::collections::BTreeMap;

use proptest::collection::vec;
use proptest::prelude::*;

use super::*;

/// Storage stand-in: the persisted entries by revision.
#[derive(Clone, Debug, Default)]
pub(super) struct MemBackend {
    pub entries: BTreeMap<Revision, (KeyValue, bool)>,
}

impl MemBackend {
    pub fn apply(&mut self, ops: &[BackendOp]) {
        for op in ops {
            match op {
                BackendOp::Put { rev, kv, tombstone } => {
                    let old = self.entries.insert(*rev, (kv.clone(), *tombstone));
                    assert!(old.is_none(), "revision {rev:?} written twice");
                }
                BackendOp::Delete { rev } => {
                    assert!(
                        self.entries.remove(rev).is_some(),
                        "delete of unknown revision {rev:?}"
                    );
                }
            }
        }
    }

    pub fn rebuild(&self, current_rev: i64, compact_rev: i64) -> KvIndex {
        let mut idx = KvIndex::new();
        for (rev, (kv, tombstone)) in &self.entries {
            idx.restore(*rev, kv, *tombstone);
        }
        idx.set_restored_meta(current_rev, compact_rev);
        idx
    }
}

impl ValueReader for MemBackend {
    fn read(&self, rev: Revision) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.entries.get(&rev).map(|(kv, _)| kv.clone()))
    }
}

// ---------------------------------------------------------------------------
// The model.

type Snap = BTreeMap<Vec<u8>, KeyValue>;

struct Model {
    /// `snaps[r]` is the keyspace at revision `r`; revisions 0 and 1 are
    /// empty.
    snaps: Vec<Snap>,
    compact: i64,
}

fn in_range(k: &[u8], key: &[u8], end: &[u8]) -> bool {
    match end {
        [] => k == key,
        [0] => k >= key,
        _ => key <= k && k < end,
    }
}

impl Model {
    fn new() -> Self {
        Model {
            snaps: vec![Snap::new(), Snap::new()],
            compact: -1,
        }
    }

    fn cur(&self) -> i64 {
        self.snaps.len() as i64 - 1
    }

    fn latest(&self) -> &Snap {
        self.snaps.last().unwrap()
    }

    fn range(&self, work: &Snap, r: &RangeRequest) -> Result<RangeResponse, MvccError> {
        if r.revision > self.cur() {
            return Err(MvccError::FutureRevision);
        }
        let snap = if r.revision <= 0 {
            work
        } else if r.revision < self.compact {
            return Err(MvccError::Compacted);
        } else {
            &self.snaps[r.revision as usize]
        };
        let all: Vec<KeyValue> = snap
            .values()
            .filter(|kv| in_range(&kv.key, &r.key, &r.range_end))
            .cloned()
            .collect();
        let count = all.len() as i64;
        if r.count_only {
            return Ok(RangeResponse {
                kvs: vec![],
                more: false,
                count,
            });
        }
        let mut kvs: Vec<KeyValue> = all
            .into_iter()
            .filter(|kv| r.min_mod_revision == 0 || kv.mod_revision >= r.min_mod_revision)
            .filter(|kv| r.max_mod_revision == 0 || kv.mod_revision <= r.max_mod_revision)
            .filter(|kv| r.min_create_revision == 0 || kv.create_revision >= r.min_create_revision)
            .filter(|kv| r.max_create_revision == 0 || kv.create_revision <= r.max_create_revision)
            .collect();
        // etcd only fetches the whole range when an explicit order or a
        // filter is given; otherwise it reads one past the limit in key order
        // and sorts just that (visible with no order and a non-key target).
        let filtered = r.min_mod_revision != 0
            || r.max_mod_revision != 0
            || r.min_create_revision != 0
            || r.max_create_revision != 0;
        if r.limit > 0 && r.sort_order == SortOrder::None && !filtered {
            kvs.truncate(r.limit as usize + 1);
        }
        let field = |kv: &KeyValue| -> (i64, Vec<u8>) {
            match r.sort_target {
                SortTarget::Key => (0, kv.key.clone()),
                SortTarget::Version => (kv.version, vec![]),
                SortTarget::Create => (kv.create_revision, vec![]),
                SortTarget::Mod => (kv.mod_revision, vec![]),
                SortTarget::Value => (0, kv.value.clone()),
            }
        };
        match (r.sort_order, r.sort_target) {
            (SortOrder::None | SortOrder::Ascend, SortTarget::Key) => {}
            (SortOrder::Descend, _) => kvs.sort_by_key(|kv| std::cmp::Reverse(field(kv))),
            _ => kvs.sort_by_key(field),
        }
        let more = r.limit > 0 && kvs.len() as i64 > r.limit;
        if more {
            kvs.truncate(r.limit as usize);
        }
        if r.keys_only {
            kvs.iter_mut().for_each(|kv| kv.value = vec![]);
        }
        Ok(RangeResponse { kvs, more, count })
    }

    /// Runs one write request; on success commits a new revision if
    /// anything changed.
    fn write<T>(
        &mut self,
        f: impl FnOnce(&mut MTx) -> Result<T, MvccError>,
    ) -> Result<(T, Vec<Event>), MvccError> {
        let mut tx = MTx {
            m: self,
            work: self.latest().clone(),
            rev: self.cur() + 1,
            events: vec![],
        };
        let resp = f(&mut tx)?;
        let MTx { work, events, .. } = tx;
        if !events.is_empty() {
            self.snaps.push(work);
        }
        Ok((resp, events))
    }

    fn compact(&mut self, rev: i64) -> Result<(), MvccError> {
        if rev <= self.compact {
            return Err(MvccError::Compacted);
        }
        if rev > self.cur() {
            return Err(MvccError::FutureRevision);
        }
        self.compact = rev;
        Ok(())
    }
}

struct MTx<'a> {
    m: &'a Model,
    work: Snap,
    rev: i64,
    events: Vec<Event>,
}

impl MTx<'_> {
    fn put(&mut self, r: PutRequest) -> Result<PutResponse, MvccError> {
        let prev = self.work.get(&r.key).cloned();
        if (r.ignore_value || r.ignore_lease) && prev.is_none() {
            return Err(MvccError::KeyNotFound);
        }
        let kv = KeyValue {
            key: r.key.clone(),
            create_revision: prev.as_ref().map_or(self.rev, |p| p.create_revision),
            mod_revision: self.rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value: if r.ignore_value {
                prev.as_ref().unwrap().value.clone()
            } else {
                r.value.clone()
            },
            lease: if r.ignore_lease {
                prev.as_ref().unwrap().lease
            } else {
                r.lease
            },
        };
        self.work.insert(r.key.clone(), kv.clone());
        self.events.push(Event {
            kind: EventType::Put,
            kv,
            prev_kv: prev.clone(),
        });
        Ok(PutResponse {
            prev_kv: prev.filter(|_| r.prev_kv),
        })
    }

    fn delete(&mut self, r: &DeleteRangeRequest) -> Result<DeleteRangeResponse, MvccError> {
        let doomed: Vec<KeyValue> = self
            .work
            .values()
            .filter(|kv| in_range(&kv.key, &r.key, &r.range_end))
            .cloned()
            .collect();
        for kv in &doomed {
            self.work.remove(&kv.key);
            self.events.push(Event {
                kind: EventType::Delete,
                kv: KeyValue {
                    key: kv.key.clone(),
                    mod_revision: self.rev,
                    ..Default::default()
                },
                prev_kv: Some(kv.clone()),
            });
        }
        Ok(DeleteRangeResponse {
            deleted: doomed.len() as i64,
            prev_kvs: if r.prev_kv { doomed } else { vec![] },
        })
    }

    fn compare(&self, c: &Compare) -> bool {
        // Compares, nested ones included, see the state before the txn.
        let kvs: Vec<&KeyValue> = self
            .m
            .latest()
            .values()
            .filter(|kv| in_range(&kv.key, &c.key, &c.range_end))
            .collect();
        let zero = KeyValue::default();
        let kvs = if kvs.is_empty() {
            if matches!(c.target, CompareTarget::Value(_)) {
                return false;
            }
            vec![&zero]
        } else {
            kvs
        };
        kvs.into_iter().all(|kv| {
            let ord = match &c.target {
                CompareTarget::Version(v) => kv.version.cmp(v),
                CompareTarget::CreateRevision(v) => kv.create_revision.cmp(v),
                CompareTarget::ModRevision(v) => kv.mod_revision.cmp(v),
                CompareTarget::Lease(v) => kv.lease.cmp(v),
                CompareTarget::Value(v) => kv.value.cmp(v),
            };
            match c.result {
                CompareResult::Equal => ord.is_eq(),
                CompareResult::NotEqual => ord.is_ne(),
                CompareResult::Greater => ord.is_gt(),
                CompareResult::Less => ord.is_lt(),
            }
        })
    }

    fn txn(&mut self, r: &TxnRequest) -> Result<TxnResponse, MvccError> {
        let succeeded = r.compare.iter().all(|c| self.compare(c));
        let ops = if succeeded { &r.success } else { &r.failure };
        let mut responses = vec![];
        for op in ops {
            responses.push(match op {
                RequestOp::Range(q) => ResponseOp::Range(self.m.range(&self.work, q)?),
                RequestOp::Put(q) => ResponseOp::Put(self.put(q.clone())?),
                RequestOp::DeleteRange(q) => ResponseOp::DeleteRange(self.delete(q)?),
                RequestOp::Txn(q) => ResponseOp::Txn(self.txn(q)?),
            });
        }
        Ok(TxnResponse {
            succeeded,
            responses,
        })
    }
}

// ---------------------------------------------------------------------------
// Checks.

fn all_keys_at(rev: i64) -> RangeRequest {
    RangeRequest {
        key: vec![0],
        range_end: vec![0],
        revision: rev,
        ..Default::default()
    }
}

/// Compares a write's outcome with the model's and persists its ops.
fn check_write<T: std::fmt::Debug + PartialEq>(
    got: Result<WriteResult<T>, MvccError>,
    want: Result<(T, Vec<Event>), MvccError>,
    m: &Model,
    be: &mut MemBackend,
) {
    let (got, (want, want_events)) = match (got, want) {
        (Ok(g), Ok(w)) => (g, w),
        (g, w) => {
            assert_eq!(g.map(|g| g.response), w.map(|w| w.0));
            return;
        }
    };
    assert_eq!(got.response, want);
    // The model loads every previous value; a write loads only those its request returns, and
    // leaves the rest to whoever needs them, which needs one to exist.
    let want_events: Vec<Event> = want_events
        .into_iter()
        .zip(&got.events)
        .map(|(mut want, got)| {
            if got.prev_unloaded() {
                assert!(
                    want.prev_kv.is_some(),
                    "unloaded, but none existed: {got:?}"
                );
                want.prev_kv = None;
            }
            want
        })
        .collect();
    assert_eq!(got.events, want_events);
    assert_eq!(got.revision, m.cur());
    assert_eq!(got.ops.len(), got.events.len());
    for (i, (op, ev)) in got.ops.iter().zip(&got.events).enumerate() {
        let BackendOp::Put { rev, kv, tombstone } = op else {
            panic!("write produced {op:?}");
        };
        assert_eq!(*rev, Revision::new(m.cur(), i as i64));
        assert_eq!(kv, &ev.kv);
        assert_eq!(*tombstone, ev.kind == EventType::Delete);
    }
    be.apply(&got.ops);
}

/// Every readable revision must read like the model's snapshot, older ones
/// must be compacted, and storage must hold nothing at or below the compact
/// revision beyond what that revision still needs.
fn check_state(m: &Model, idx: &KvIndex, be: &MemBackend) {
    assert_eq!(idx.current_revision(), m.cur());
    assert_eq!(idx.compact_revision(), m.compact);
    for rev in 1..=m.cur() {
        let got = idx.range(&all_keys_at(rev), be);
        if rev < m.compact {
            assert_eq!(got, Err(MvccError::Compacted), "at {rev}");
            continue;
        }
        let want: Vec<KeyValue> = m.snaps[rev as usize].values().cloned().collect();
        let got = got.unwrap();
        assert_eq!(got.kvs, want, "at {rev}");
        assert_eq!(got.count, want.len() as i64);
        assert!(!got.more);
    }
    assert_eq!(
        idx.range(&all_keys_at(m.cur() + 1), be),
        Err(MvccError::FutureRevision)
    );

    if m.compact >= 0 {
        let snap = &m.snaps[m.compact as usize];
        let old: Vec<_> = be
            .entries
            .iter()
            .filter(|(rev, _)| rev.main <= m.compact)
            .collect();
        for (rev, (kv, tombstone)) in &old {
            assert!(!tombstone, "tombstone {rev:?} survived compaction");
            assert_eq!(snap.get(&kv.key), Some(kv), "stale entry {rev:?}");
        }
        assert_eq!(old.len(), snap.len(), "compaction left {old:?}");
    }
    assert!(be.entries.keys().all(|r| r.main <= m.cur()));
}

// ---------------------------------------------------------------------------
// Generators.

// Two keys longer than the index holds inline (`index_key::INLINE`), ordered among the short
// ones, so that both forms meet in one tree.
const KEYS: &[&[u8]] = &[
    b"a",
    b"ab",
    b"ab/longer-than-the-inline-limit",
    b"b",
    b"c",
    b"c/longer-than-the-inline-limit",
    b"d",
];
const VALUES: &[&[u8]] = &[b"", b"x", b"y", b"z"];
const RANGE_ENDS: &[&[u8]] = &[
    b"a",
    b"ab",
    b"ab/longer-than-the-inline-limit-too",
    b"b",
    b"c",
    b"d",
    b"e",
];

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(KEYS).prop_map(|k| k.to_vec())
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(VALUES).prop_map(|v| v.to_vec())
}

fn range_end() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => Just(vec![]),
        1 => Just(vec![0]),
        2 => prop::sample::select(RANGE_ENDS).prop_map(|k| k.to_vec()),
    ]
}

fn small_rev() -> impl Strategy<Value = i64> {
    prop_oneof![3 => Just(0i64), 1 => -1i64..25]
}

fn filter_rev() -> impl Strategy<Value = i64> {
    prop_oneof![6 => Just(0i64), 1 => 1i64..25]
}

fn range_req() -> impl Strategy<Value = RangeRequest> {
    (
        (key(), range_end(), 0i64..4, small_rev()),
        (
            prop::sample::select(&[SortOrder::None, SortOrder::Ascend, SortOrder::Descend][..]),
            prop::sample::select(
                &[
                    SortTarget::Key,
                    SortTarget::Version,
                    SortTarget::Create,
                    SortTarget::Mod,
                    SortTarget::Value,
                ][..],
            ),
            any::<bool>(),
            prop::bool::weighted(0.15),
        ),
        (filter_rev(), filter_rev(), filter_rev(), filter_rev()),
    )
        .prop_map(
            |((key, range_end, limit, revision), (so, st, keys_only, count_only), f)| {
                RangeRequest {
                    key,
                    range_end,
                    limit,
                    revision,
                    sort_order: so,
                    sort_target: st,
                    keys_only,
                    count_only,
                    min_mod_revision: f.0,
                    max_mod_revision: f.1,
                    min_create_revision: f.2,
                    max_create_revision: f.3,
                }
            },
        )
}

fn put_req() -> impl Strategy<Value = PutRequest> {
    (
        key(),
        value(),
        0i64..3,
        any::<bool>(),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(key, value, lease, prev_kv, ignore_value, ignore_lease)| PutRequest {
                key,
                value,
                lease,
                prev_kv,
                ignore_value,
                ignore_lease,
            },
        )
}

fn delete_req() -> impl Strategy<Value = DeleteRangeRequest> {
    (key(), range_end(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| DeleteRangeRequest {
        key,
        range_end,
        prev_kv,
    })
}

fn compare() -> impl Strategy<Value = Compare> {
    let target = prop_oneof![
        (0i64..4).prop_map(CompareTarget::Version),
        (0i64..20).prop_map(CompareTarget::CreateRevision),
        (0i64..20).prop_map(CompareTarget::ModRevision),
        value().prop_map(CompareTarget::Value),
        (0i64..3).prop_map(CompareTarget::Lease),
    ];
    let result = prop::sample::select(
        &[
            CompareResult::Equal,
            CompareResult::Greater,
            CompareResult::Less,
            CompareResult::NotEqual,
        ][..],
    );
    let end = prop_oneof![4 => Just(vec![]), 1 => range_end()];
    (key(), end, result, target).prop_map(|(key, range_end, result, target)| Compare {
        key,
        range_end,
        result,
        target,
    })
}

fn txn_from(op: BoxedStrategy<RequestOp>) -> impl Strategy<Value = TxnRequest> {
    (vec(compare(), 0..3), vec(op.clone(), 0..4), vec(op, 0..4)).prop_map(
        |(compare, success, failure)| TxnRequest {
            compare,
            success,
            failure,
        },
    )
}

fn txn_req() -> impl Strategy<Value = TxnRequest> {
    let leaf = prop_oneof![
        range_req().prop_map(RequestOp::Range),
        put_req().prop_map(RequestOp::Put),
        delete_req().prop_map(RequestOp::DeleteRange),
    ];
    let op = leaf
        .prop_recursive(2, 16, 4, |inner| txn_from(inner).prop_map(RequestOp::Txn))
        .boxed();
    txn_from(op)
}

#[derive(Clone, Debug)]
enum Op {
    Put(PutRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
    /// The revision is picked relative to the store's when the op runs.
    Range(RangeRequest, u8),
    Compact(u8),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => put_req().prop_map(Op::Put),
        2 => delete_req().prop_map(Op::Delete),
        3 => txn_req().prop_map(Op::Txn),
        2 => (range_req(), any::<u8>()).prop_map(|(r, s)| Op::Range(r, s)),
        1 => any::<u8>().prop_map(Op::Compact),
        1 => Just(Op::Restart),
    ]
}

fn run(ops: Vec<Op>) {
    let mut m = Model::new();
    let mut idx = KvIndex::new();
    let mut be = MemBackend::default();
    for op in ops {
        match op {
            Op::Put(p) => {
                let got = idx.put(p.clone(), &be);
                let want = m.write(|tx| tx.put(p));
                check_write(got, want, &m, &mut be);
            }
            Op::Delete(d) => {
                let got = idx.delete_range(d.clone(), &be);
                let want = m.write(|tx| tx.delete(&d));
                check_write(got, want, &m, &mut be);
            }
            Op::Txn(t) => {
                let got = idx.txn(t.clone(), &be);
                let want = m.write(|tx| tx.txn(&t));
                check_write(got, want, &m, &mut be);
            }
            Op::Range(mut r, sel) => {
                r.revision = if sel < 64 {
                    0
                } else {
                    sel as i64 % (m.cur() + 3) - 1
                };
                assert_eq!(idx.range(&r, &be), m.range(m.latest(), &r), "{r:?}");
            }
            Op::Compact(sel) => {
                let rev = sel as i64 % (m.cur() + 2);
                let got = idx.compact(rev);
                let want = m.compact(rev);
                match got {
                    Ok(ops) => {
                        assert_eq!(want, Ok(()));
                        assert!(ops.iter().all(|o| matches!(o, BackendOp::Delete { .. })));
                        be.apply(&ops);
                    }
                    Err(e) => assert_eq!(Err(e), want),
                }
            }
            Op::Restart => idx = be.rebuild(m.cur(), m.compact),
        }
        check_state(&m, &idx, &be);
        check_state(&m, &be.rebuild(m.cur(), m.compact), &be);
    }
}

proptest! {
    // PROPTEST_CASES raises the count for a longer soak.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
        ..ProptestConfig::default()
    })]

    #[test]
    fn kv_index_matches_model(ops in vec(op(), 1..40)) {
        run(ops);
    }
}
