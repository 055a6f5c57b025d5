//! Per-key revision history.
//!
//! A key's history is a list of *generations*. A generation holds the
//! revisions of one incarnation of the key: it starts with the put that
//! created the key and, unless it is the last one, ends with the revision of
//! the delete (the tombstone). A delete therefore closes the current
//! generation and opens a new, empty one.
//!
//! Example: `put(1.0); put(2.0); tombstone(3.0); put(4.0); tombstone(5.0)`
//! on key "foo" gives
//!
//! ```text
//! generations:
//!     {1.0, 2.0, 3.0(t)}
//!     {4.0, 5.0(t)}
//!     {empty}
//! ```
//!
//! Compacting at `rev` drops every revision that is not needed to read at
//! any revision `>= rev`: within the generation that is live at `rev` only
//! the largest revision `<= rev` is kept (older ones can never be read
//! again), unless that revision is a tombstone, in which case the whole
//! generation goes. Generations that ended before `rev` go as well. On the
//! example above:
//!
//! ```text
//! compact(2): {2.0, 3.0(t)}  {4.0, 5.0(t)}  {empty}
//! compact(4): {4.0, 5.0(t)}  {empty}
//! compact(5): {empty}        -> the key is removed from the index
//! compact(6): {empty}        -> the key is removed from the index
//! ```

use super::revision::Revision;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Generation {
    /// Ascending. In every generation but the last, the final entry is the
    /// tombstone.
    pub revs: Vec<Revision>,
}

impl Generation {
    pub fn is_empty(&self) -> bool {
        self.revs.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyIndex {
    /// Last revision written for this key (put or tombstone).
    pub modified: Revision,
    /// Oldest first; never empty.
    pub generations: Vec<Generation>,
    /// What a put or a compare needs of the live value, kept here (as etcd's key index keeps
    /// the create revision and version) so that neither reads the value from storage.
    /// Meaningful only while the last generation is not empty.
    pub live: Live,
}

/// A key history's position, taken before a request writes to it (see [`KeyIndex::mark`]).
#[derive(Clone, Copy, Debug)]
pub struct Mark {
    modified: Revision,
    live: Live,
    generations: usize,
    last: usize,
}

/// The create revision, version and lease of a key's live value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Live {
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
}

impl Default for KeyIndex {
    fn default() -> Self {
        KeyIndex::new()
    }
}

impl KeyIndex {
    /// A key with no history yet.
    pub fn new() -> Self {
        KeyIndex {
            modified: Revision::default(),
            generations: vec![Generation::default()],
            live: Live::default(),
        }
    }

    /// Where this history stands, for [`KeyIndex::rewind`]: puts and tombstones only append, so
    /// the lengths of the generation list and of its last generation say what came after.
    pub fn mark(&self) -> Mark {
        Mark {
            modified: self.modified,
            live: self.live,
            generations: self.generations.len(),
            last: self.generations.last().map_or(0, |g| g.revs.len()),
        }
    }

    /// Drops every put and tombstone recorded since `mark` was taken.
    pub fn rewind(&mut self, mark: &Mark) {
        self.generations.truncate(mark.generations);
        if let Some(last) = self.generations.last_mut() {
            last.revs.truncate(mark.last);
        }
        self.modified = mark.modified;
        self.live = mark.live;
    }

    /// Records a put at `rev` attaching `lease` (0 for none); `rev` must be newer than
    /// anything recorded.
    pub fn put(&mut self, rev: Revision, lease: i64) {
        let live = match self.live_revision() {
            Some(_) => Live {
                version: self.live.version + 1,
                lease,
                ..self.live
            },
            None => Live {
                create_revision: rev.main,
                version: 1,
                lease,
            },
        };
        self.push(rev);
        self.live = live;
    }

    /// Records a stored put whose value says what the live value is (its generation's earlier
    /// revisions may have been compacted away, so the version cannot be counted).
    pub fn restore_put(&mut self, rev: Revision, live: Live) {
        self.push(rev);
        self.live = live;
    }

    fn push(&mut self, rev: Revision) {
        debug_assert!(rev > self.modified, "{rev:?} <= {:?}", self.modified);
        self.generations
            .last_mut()
            .expect("generations never empty")
            .revs
            .push(rev);
        self.modified = rev;
    }

    /// The revision of the key's value as of its last write, if the key exists.
    pub fn live_revision(&self) -> Option<Revision> {
        // A live key's last write is its latest put, so neither generation list needs reading:
        // on a large index those are two dependent cache misses per write.
        let live = (self.live.version > 0).then_some(self.modified);
        debug_assert_eq!(
            live,
            self.generations
                .last()
                .expect("generations never empty")
                .revs
                .last()
                .copied()
        );
        live
    }

    /// Records a delete at `rev`. Returns false (and records nothing) if the
    /// key does not currently exist.
    pub fn tombstone(&mut self, rev: Revision) -> bool {
        if self.generations.last().is_none_or(Generation::is_empty) {
            return false;
        }
        self.push(rev);
        self.generations.push(Generation::default());
        self.live = Live::default();
        true
    }

    /// Records a stored tombstone whose generation has no surviving put.
    /// The generation is kept (rather than ignored) so that a later
    /// compaction still reports the tombstone as removable from storage; it
    /// is never visible to reads because no put precedes it.
    pub fn restore_lone_tombstone(&mut self, rev: Revision) {
        debug_assert!(rev > self.modified);
        let last = self
            .generations
            .last_mut()
            .expect("generations never empty");
        debug_assert!(last.is_empty());
        last.revs.push(rev);
        self.modified = rev;
        self.generations.push(Generation::default());
        self.live = Live::default();
    }

    /// True when the key has no history left, i.e. it can be dropped from
    /// the index.
    pub fn is_empty(&self) -> bool {
        self.generations.len() == 1 && self.generations[0].is_empty()
    }

    /// Revision of the value visible at `at_rev`, or `None` if the key did
    /// not exist then.
    pub fn get(&self, at_rev: i64) -> Option<Revision> {
        if at_rev >= self.modified.main {
            // Nothing was written since: the last write decides (what reads at the current
            // revision ask).
            return self.live_revision();
        }
        let g = self.find_generation(at_rev)?;
        g.revs.iter().rev().find(|r| r.main <= at_rev).copied()
    }

    /// The generation live at `rev`, or `None` if `rev` falls before the
    /// first generation or in the gap after a tombstone.
    fn find_generation(&self, rev: i64) -> Option<&Generation> {
        let last = self.generations.len() - 1;
        for (i, g) in self.generations.iter().enumerate().rev() {
            let (Some(first), Some(end)) = (g.revs.first(), g.revs.last()) else {
                continue;
            };
            if i != last && end.main <= rev {
                // Deleted at or before `rev`, and no later generation had
                // started by then (we would have returned it).
                return None;
            }
            if first.main <= rev {
                return Some(g);
            }
        }
        None
    }

    /// Drops the history not needed for reads at revisions `>= at_rev`,
    /// appending the dropped revisions to `removed`. The caller removes the
    /// key from the index if it is [`KeyIndex::is_empty`] afterwards.
    pub fn compact(&mut self, at_rev: i64, removed: &mut Vec<Revision>) {
        let last = self.generations.len() - 1;
        // First generation that is still live at `at_rev` or starts after it.
        // A generation deleted *at* `at_rev` is skipped too (etcd stops at it
        // and then drops it below): when one transaction deletes and
        // re-creates a key, the following generation also starts at
        // `at_rev` and must be compacted as well.
        let mut gen_idx = 0;
        while gen_idx < last {
            let tomb = self.generations[gen_idx].revs.last().expect("closed");
            if tomb.main > at_rev {
                break;
            }
            gen_idx += 1;
        }
        for g in &self.generations[..gen_idx] {
            removed.extend_from_slice(&g.revs);
        }

        let g = &mut self.generations[gen_idx];
        if !g.is_empty() {
            if let Some(keep) = g.revs.iter().rposition(|r| r.main <= at_rev) {
                removed.extend(g.revs.drain(..keep));
            }
            // Only the tombstone left: the key does not exist at `at_rev`
            // and that fact needs no record.
            if g.revs.len() == 1 && gen_idx != last {
                removed.push(g.revs[0]);
                gen_idx += 1;
            }
        }
        self.generations.drain(..gen_idx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64, sub: i64) -> Revision {
        Revision::new(main, sub)
    }

    fn gens(ki: &KeyIndex) -> Vec<Vec<(i64, i64)>> {
        ki.generations
            .iter()
            .map(|g| g.revs.iter().map(|r| (r.main, r.sub)).collect())
            .collect()
    }

    /// The example from the module documentation.
    fn foo() -> KeyIndex {
        let mut ki = KeyIndex::new();
        ki.put(r(1, 0), 0);
        ki.put(r(2, 0), 0);
        assert!(ki.tombstone(r(3, 0)));
        ki.put(r(4, 0), 0);
        assert!(ki.tombstone(r(5, 0)));
        ki
    }

    #[test]
    fn generations_after_puts_and_deletes() {
        let ki = foo();
        assert_eq!(
            gens(&ki),
            vec![vec![(1, 0), (2, 0), (3, 0)], vec![(4, 0), (5, 0)], vec![]]
        );
        assert_eq!(ki.modified, r(5, 0));
    }

    #[test]
    fn tombstone_on_missing_key_is_refused() {
        let mut ki = KeyIndex::new();
        assert!(!ki.tombstone(r(1, 0)));
        assert!(ki.is_empty());
        let mut ki = foo();
        assert!(!ki.tombstone(r(6, 0)));
        assert_eq!(ki.modified, r(5, 0));
    }

    #[test]
    fn get_at_each_revision() {
        let ki = foo();
        let want = [
            (0, None),
            (1, Some(r(1, 0))),
            (2, Some(r(2, 0))),
            (3, None),
            (4, Some(r(4, 0))),
            (5, None),
            (6, None),
        ];
        for (at, rev) in want {
            assert_eq!(ki.get(at), rev, "at {at}");
        }
    }

    #[test]
    fn get_with_sub_revisions() {
        // Deleted and re-created inside one transaction at main revision 3.
        let mut ki = KeyIndex::new();
        ki.put(r(2, 0), 0);
        assert!(ki.tombstone(r(3, 0)));
        ki.put(r(3, 1), 0);
        ki.put(r(3, 2), 0);
        assert_eq!(ki.get(2), Some(r(2, 0)));
        assert_eq!(ki.get(3), Some(r(3, 2)));
        assert_eq!(ki.get(9), Some(r(3, 2)));
    }

    fn compacted(mut ki: KeyIndex, at: i64) -> (KeyIndex, Vec<(i64, i64)>) {
        let mut removed = Vec::new();
        ki.compact(at, &mut removed);
        removed.sort();
        (ki, removed.iter().map(|r| (r.main, r.sub)).collect())
    }

    #[test]
    fn compaction_follows_documented_example() {
        type Revs = Vec<(i64, i64)>;
        let cases: Vec<(i64, Vec<Revs>, Revs)> = vec![
            (
                1,
                vec![vec![(1, 0), (2, 0), (3, 0)], vec![(4, 0), (5, 0)], vec![]],
                vec![],
            ),
            (
                2,
                vec![vec![(2, 0), (3, 0)], vec![(4, 0), (5, 0)], vec![]],
                vec![(1, 0)],
            ),
            (
                3,
                vec![vec![(4, 0), (5, 0)], vec![]],
                vec![(1, 0), (2, 0), (3, 0)],
            ),
            (
                4,
                vec![vec![(4, 0), (5, 0)], vec![]],
                vec![(1, 0), (2, 0), (3, 0)],
            ),
            (
                5,
                vec![vec![]],
                vec![(1, 0), (2, 0), (3, 0), (4, 0), (5, 0)],
            ),
            (
                6,
                vec![vec![]],
                vec![(1, 0), (2, 0), (3, 0), (4, 0), (5, 0)],
            ),
        ];
        for (at, want_gens, want_removed) in cases {
            let (ki, removed) = compacted(foo(), at);
            assert_eq!(gens(&ki), want_gens, "compact({at})");
            assert_eq!(removed, want_removed, "compact({at})");
            assert_eq!(ki.is_empty(), at >= 5);
        }
    }

    #[test]
    fn compaction_keeps_reads_at_or_after_compact_revision() {
        let mut ki = KeyIndex::new();
        for main in 2..=4 {
            ki.put(r(main, 0), 0);
        }
        assert!(ki.tombstone(r(6, 0)));
        ki.put(r(8, 0), 0);
        ki.put(r(9, 0), 0);
        for at in 1..=10 {
            let (c, _) = compacted(ki.clone(), at);
            for read in at..=10 {
                assert_eq!(c.get(read), ki.get(read), "compact {at} read {read}");
            }
        }
        // Live generation: the value current at the compact revision stays.
        let (c, removed) = compacted(ki.clone(), 8);
        assert_eq!(gens(&c), vec![vec![(8, 0), (9, 0)]]);
        assert_eq!(removed, vec![(2, 0), (3, 0), (4, 0), (6, 0)]);
    }

    #[test]
    fn compaction_is_repeatable() {
        let (ki, _) = compacted(foo(), 2);
        let (ki, removed) = compacted(ki, 2);
        assert_eq!(removed, vec![]);
        let (ki, removed) = compacted(ki, 4);
        assert_eq!(removed, vec![(2, 0), (3, 0)]);
        assert_eq!(gens(&ki), vec![vec![(4, 0), (5, 0)], vec![]]);
    }

    #[test]
    fn compaction_when_recreated_in_the_same_revision() {
        // One transaction at revision 5 deletes the key and puts it twice.
        let mut ki = KeyIndex::new();
        ki.put(r(3, 0), 0);
        assert!(ki.tombstone(r(5, 0)));
        ki.put(r(5, 1), 0);
        ki.put(r(5, 2), 0);
        ki.put(r(6, 0), 0);
        let (c, removed) = compacted(ki.clone(), 5);
        assert_eq!(removed, vec![(3, 0), (5, 0), (5, 1)]);
        assert_eq!(gens(&c), vec![vec![(5, 2), (6, 0)]]);
        assert_eq!(c.get(5), Some(r(5, 2)));
    }

    #[test]
    fn lone_tombstone_is_invisible_and_compacted_away() {
        let mut ki = KeyIndex::new();
        ki.restore_lone_tombstone(r(5, 0));
        ki.put(r(7, 0), 0);
        for at in 0..7 {
            assert_eq!(ki.get(at), None);
        }
        assert_eq!(ki.get(7), Some(r(7, 0)));
        let (c, removed) = compacted(ki.clone(), 3);
        assert_eq!(removed, vec![(5, 0)]);
        assert_eq!(gens(&c), vec![vec![(7, 0)]]);
    }
}
