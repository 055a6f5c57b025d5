//! How key revisions lie in the `sm` tree: every revision is reachable by [`get`] and in order by
//! [`scan`], whether its row holds it alone or in a pack with others.
//!
//! A row under `kv_key(rev)` holds either the bincode [`super::keys::StoredKv`] of `rev` alone, or
//! a *pack*: consecutive revisions written by one applied entry, up to [`PACK_BYTES`] of values,
//! keyed by its first revision. Every row is a sled tree insert, and sled copies a tree node on
//! every insert and splits the growing right edge every few; an entry of many writes stores a row
//! per pack instead of one per revision. A pack keeps its key when compaction removes revisions
//! from it, so a revision is in the row with the greatest key at or below its own.
//!
//! Pack layout: [`PACK_MARK`], the count (u32 LE), per revision its 16 bytes (as
//! [`Revision::to_bytes`]) and its value's length (u32 LE), then the values in the same order.
//! A stored revision's own encoding starts with its key's length, never 0 (keys are not empty), so
//! the mark tells the two apart, and rows written before packs existed read as they are.
//!
//! Everything that leaves the tree (snapshots, backups, `HashKV`) sees one row per revision,
//! exactly as before packs: `kv_key(rev)` and the revision's bytes.
//!
//! Must never import `raft/` or `grpc/`.

use sled::IVec;

use super::error::StoreError;
use super::keys::{kv_key, KV_PREFIX};
use crate::mvcc::Revision;

/// About the most a pack holds in values. Larger packs save little more (at 300-byte values, 2 KiB
/// already makes one row of 6 revisions) and cost memory: a member held about 15 % more after
/// the same load with 4 KiB packs than with 2 KiB. Well below the node size sled writes to a file
/// of its own, too.
pub(crate) const PACK_BYTES: usize = 2048;
const PACK_MARK: u8 = 0;
const HEADER: usize = 5;
const SLOT: usize = 20;

/// The rows holding an entry's new revisions (ascending, every one above what is stored):
/// consecutive revisions share a pack while their values fit in [`PACK_BYTES`].
pub(crate) fn rows(revisions: Vec<(Revision, Vec<u8>)>) -> Vec<([u8; 17], Vec<u8>)> {
    let mut rows = Vec::new();
    let mut group = Vec::new();
    let mut bytes = 0;
    for (rev, value) in revisions {
        if !group.is_empty() && bytes + value.len() > PACK_BYTES {
            rows.push(row(std::mem::take(&mut group)));
            bytes = 0;
        }
        bytes += value.len();
        group.push((rev, value));
    }
    if !group.is_empty() {
        rows.push(row(group));
    }
    rows
}

/// One row for `group` (ascending, not empty): the revision as it is, or a pack.
fn row(mut group: Vec<(Revision, Vec<u8>)>) -> ([u8; 17], Vec<u8>) {
    let key = kv_key(group[0].0);
    if group.len() == 1 {
        return (key, group.pop().expect("one").1);
    }
    (key, pack(&group))
}

fn pack(group: &[(Revision, impl AsRef<[u8]>)]) -> Vec<u8> {
    let values: usize = group.iter().map(|(_, v)| v.as_ref().len()).sum();
    let mut out = Vec::with_capacity(HEADER + SLOT * group.len() + values);
    out.push(PACK_MARK);
    out.extend_from_slice(&(group.len() as u32).to_le_bytes());
    for (rev, value) in group {
        out.extend_from_slice(&rev.to_bytes());
        out.extend_from_slice(&(value.as_ref().len() as u32).to_le_bytes());
    }
    for (_, value) in group {
        out.extend_from_slice(value.as_ref());
    }
    out
}

fn is_pack(value: &[u8]) -> bool {
    value.first() == Some(&PACK_MARK)
}

pub(crate) fn is_revision_key(key: &[u8]) -> bool {
    key.len() == 17 && key[0] == KV_PREFIX
}

/// The revisions a pack holds and where each value lies in it.
fn slots(value: &[u8]) -> Result<Vec<(Revision, usize, usize)>, StoreError> {
    const BAD: StoreError = StoreError::Corrupt("bad revision pack");
    let count = value
        .get(1..HEADER)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
        .ok_or(BAD)?;
    let mut at = HEADER
        .checked_add(count.checked_mul(SLOT).ok_or(BAD)?)
        .ok_or(BAD)?;
    let table = value.get(HEADER..at).ok_or(BAD)?;
    let mut slots = Vec::with_capacity(count);
    for slot in table.chunks_exact(SLOT) {
        let rev = Revision::from_bytes(&slot[..16]).ok_or(BAD)?;
        let len = u32::from_le_bytes(slot[16..].try_into().expect("4 bytes")) as usize;
        let end = at.checked_add(len).filter(|end| *end <= value.len());
        slots.push((rev, at, end.ok_or(BAD)? - at));
        at += len;
    }
    Ok(slots)
}

/// Every revision a row holds, with its bytes (slices of the row, not copies).
fn elements(key: &[u8], value: &IVec) -> Result<Vec<(Revision, IVec)>, StoreError> {
    if is_pack(value) {
        return Ok(slots(value)?
            .into_iter()
            .map(|(rev, at, len)| (rev, value.subslice(at, len)))
            .collect());
    }
    let rev = Revision::from_bytes(&key[1..]).ok_or(StoreError::Corrupt("bad revision key"))?;
    Ok(vec![(rev, value.clone())])
}

/// The row holding `rev`, if any: its key and value.
fn row_of(tree: &sled::Tree, rev: Revision) -> Result<Option<(IVec, IVec)>, StoreError> {
    let key = kv_key(rev);
    if let Some(value) = tree.get(key)? {
        return Ok(Some((IVec::from(&key[..]), value)));
    }
    // Not a row's first revision: only a pack before it can hold it.
    Ok(tree
        .get_lt(key)?
        .filter(|(k, v)| is_revision_key(k) && is_pack(v)))
}

/// The stored bytes of revision `rev`.
pub(crate) fn get(tree: &sled::Tree, rev: Revision) -> Result<Option<IVec>, StoreError> {
    let Some((key, value)) = row_of(tree, rev)? else {
        return Ok(None);
    };
    if !is_pack(&value) {
        return Ok((key[1..] == rev.to_bytes()).then_some(value));
    }
    Ok(slots(&value)?
        .into_iter()
        .find(|(r, _, _)| *r == rev)
        .map(|(_, at, len)| value.subslice(at, len)))
}

/// The stored revisions in `[from, end)`, ascending.
pub(crate) fn scan(tree: &sled::Tree, from: Revision, end: Revision) -> Result<Scan, StoreError> {
    // The pack holding `from` may start before it.
    let start = match tree.get_lt(kv_key(from))? {
        Some((k, v)) if is_revision_key(&k) && is_pack(&v) => k.to_vec(),
        _ => kv_key(from).to_vec(),
    };
    let end_key = kv_key(end).to_vec();
    Ok(Scan {
        rows: (start < end_key).then(|| tree.range(start..end_key)),
        from,
        end,
        held: Vec::new().into_iter(),
    })
}

/// Every stored revision, ascending.
pub(crate) fn scan_all(tree: &sled::Tree) -> Result<Scan, StoreError> {
    scan(tree, Revision::new(0, 0), Revision::new(i64::MAX, i64::MAX))
}

/// An iterator over stored revisions; see [`scan`].
pub(crate) struct Scan {
    rows: Option<sled::Iter>,
    from: Revision,
    end: Revision,
    held: std::vec::IntoIter<(Revision, IVec)>,
}

impl Iterator for Scan {
    type Item = Result<(Revision, IVec), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            for (rev, value) in self.held.by_ref() {
                if rev >= self.from && rev < self.end {
                    return Some(Ok((rev, value)));
                }
            }
            let (key, value) = match self.rows.as_mut()?.next()? {
                Ok(row) => row,
                Err(e) => return Some(Err(e.into())),
            };
            match elements(&key, &value) {
                Ok(held) => self.held = held.into_iter(),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// A row to set to a value, or to delete (`None`).
pub(crate) type RowChange = (IVec, Option<Vec<u8>>);

/// The row changes that remove `revisions` (ascending, each stored): a revision's own row is
/// deleted, a pack rewritten without them (deleted once empty). Also returns the bytes freed, as
/// [`stored_size`] counts them.
pub(crate) fn removals(
    tree: &sled::Tree,
    revisions: &[Revision],
) -> Result<(Vec<RowChange>, u64), StoreError> {
    let mut changes = Vec::new();
    let mut freed = 0;
    let mut i = 0;
    while i < revisions.len() {
        let asked = revisions[i];
        let Some((key, value)) = row_of(tree, asked)? else {
            i += 1;
            continue;
        };
        let held = elements(&key, &value)?;
        let (count, last) = (held.len(), held.last().map(|(r, _)| *r));
        let mut kept = Vec::new();
        for (rev, bytes) in held {
            // Asked for, but not stored (already gone).
            while i < revisions.len() && revisions[i] < rev {
                i += 1;
            }
            if i < revisions.len() && revisions[i] == rev {
                freed += stored_size(bytes.len());
                i += 1;
            } else {
                kept.push((rev, bytes));
            }
        }
        while i < revisions.len() && last.is_some_and(|l| revisions[i] <= l) {
            i += 1;
        }
        if revisions.get(i) == Some(&asked) {
            // The row before it ends below it: not stored.
            i += 1;
        }
        if kept.len() < count {
            changes.push(match kept.len() {
                0 => (key, None),
                _ => (key, Some(pack(&kept))),
            });
        }
    }
    Ok((changes, freed))
}

/// What a revision of `len` bytes counts toward the store's size in use: its bytes and its key.
pub(crate) fn stored_size(len: usize) -> u64 {
    (17 + len) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    fn value(main: i64, len: usize) -> Vec<u8> {
        let mut v = vec![main as u8; len];
        // Never the pack mark, as a stored revision's first byte never is.
        v[0] = 1;
        v
    }

    fn tree() -> (tempfile::TempDir, sled::Tree) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree("sm").unwrap();
        (dir, tree)
    }

    fn write(tree: &sled::Tree, revs: Vec<(Revision, Vec<u8>)>) -> usize {
        let rows = rows(revs);
        for (k, v) in &rows {
            tree.insert(k, v.as_slice()).unwrap();
        }
        rows.len()
    }

    fn all(tree: &sled::Tree, from: i64, end: i64) -> Vec<(i64, Vec<u8>)> {
        scan(tree, rev(from), rev(end))
            .unwrap()
            .map(|r| r.map(|(rev, v)| (rev.main, v.to_vec())).unwrap())
            .collect()
    }

    #[test]
    fn an_entrys_revisions_share_rows_and_read_back_one_by_one_and_in_order() {
        let (_dir, tree) = tree();
        // A lone revision keeps the layout it always had.
        assert_eq!(write(&tree, vec![(rev(2), value(2, 100))]), 1);
        assert_eq!(tree.get(kv_key(rev(2))).unwrap().unwrap(), value(2, 100));
        // 30 revisions of 300 bytes: packs of 6 (up to 2 KiB of values each).
        let entry: Vec<_> = (3..33).map(|m| (rev(m), value(m, 300))).collect();
        assert_eq!(write(&tree, entry), 5);
        // A value larger than a pack on its own, then another entry.
        assert_eq!(
            write(
                &tree,
                vec![(rev(33), value(33, 10_000)), (rev(34), value(34, 5))]
            ),
            2
        );
        for m in 2..35 {
            let len = match m {
                2 => 100,
                33 => 10_000,
                34 => 5,
                _ => 300,
            };
            assert_eq!(get(&tree, rev(m)).unwrap().unwrap(), value(m, len), "{m}");
        }
        assert_eq!(get(&tree, rev(1)).unwrap(), None);
        assert_eq!(get(&tree, rev(35)).unwrap(), None);
        assert_eq!(get(&tree, Revision::new(5, 1)).unwrap(), None);
        let mains = |v: Vec<(i64, Vec<u8>)>| v.into_iter().map(|(m, _)| m).collect::<Vec<_>>();
        assert_eq!(mains(all(&tree, 0, 100)), (2..35).collect::<Vec<_>>());
        // Ranges that start and end inside packs.
        assert_eq!(mains(all(&tree, 7, 20)), (7..20).collect::<Vec<_>>());
        assert_eq!(mains(all(&tree, 16, 17)), vec![16]);
        assert!(all(&tree, 20, 20).is_empty());
        assert_eq!(all(&tree, 30, 34)[0], (30, value(30, 300)));
    }

    #[test]
    fn removing_revisions_rewrites_packs_and_frees_their_bytes() {
        let (_dir, tree) = tree();
        write(&tree, vec![(rev(2), value(2, 50))]);
        write(&tree, (3..9).map(|m| (rev(m), value(m, 50))).collect());
        let doomed = [rev(2), rev(3), rev(5), rev(6)];
        let (changes, freed) = removals(&tree, &doomed).unwrap();
        assert_eq!(freed, 4 * stored_size(50));
        // The lone row goes; the pack is rewritten under its key.
        assert_eq!(changes.len(), 2);
        for (k, v) in changes {
            match v {
                Some(v) => tree.insert(k, v).unwrap(),
                None => tree.remove(k).unwrap(),
            };
        }
        let left: Vec<i64> = all(&tree, 0, 100).into_iter().map(|(m, _)| m).collect();
        assert_eq!(left, vec![4, 7, 8]);
        assert_eq!(get(&tree, rev(3)).unwrap(), None);
        assert_eq!(get(&tree, rev(7)).unwrap().unwrap(), value(7, 50));
        // Emptying the pack deletes its row; revisions already gone are skipped.
        let (changes, _) = removals(&tree, &[rev(3), rev(4), rev(7), rev(8)]).unwrap();
        assert_eq!(changes, vec![(IVec::from(&kv_key(rev(3))[..]), None)]);
    }

    #[test]
    fn a_damaged_pack_is_an_error_not_a_panic() {
        let (_dir, tree) = tree();
        let mut bad = pack(&[(rev(2), vec![1u8; 10]), (rev(3), vec![1u8; 10])]);
        bad.truncate(bad.len() - 1);
        tree.insert(kv_key(rev(2)), bad).unwrap();
        assert!(get(&tree, rev(3)).is_err());
        assert!(scan_all(&tree).unwrap().any(|r| r.is_err()));
        tree.insert(kv_key(rev(2)), vec![PACK_MARK, 0xff, 0xff, 0xff, 0xff])
            .unwrap();
        assert!(get(&tree, rev(2)).is_err());
    }
}
