//! Key permissions as intervals, and the checks etcd makes with them: a request for one key needs
//! a permission interval containing the key; a request for `[key, range_end)` needs the union of
//! the user's intervals to cover all of it, however many roles and permissions that takes.
//!
//! Intervals are half-open over byte strings with an open end for "every key from here on"
//! (`range_end = "\0"`); a permission for a single key is the interval `[key, key + "\0")`, so a
//! request for exactly that key's range is covered by it.
//!
//! Worked example: read permissions `[/a, /c)` and `[/b, /d)` together cover a range request for
//! `[/a, /d)` (neither does alone); `[/a, /b)` and `[/c, /d)` leave `[/b, /c)` uncovered, so a range
//! request for `[/a, /d)` is refused while one for the key `/a` or `/c` is allowed.

use super::{Permission, Role};

/// One end of an interval: `None` is past every key.
type End = Option<Vec<u8>>;

/// A set of key intervals, kept sorted by start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Intervals(Vec<(Vec<u8>, End)>);

fn end_after(a: &End, b: &[u8]) -> bool {
    a.as_deref().is_none_or(|a| a > b)
}

/// `a >= b` for interval ends.
fn end_reaches(a: &End, b: &End) -> bool {
    match (a, b) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(a), Some(b)) => a >= b,
    }
}

impl Intervals {
    /// The interval a permission grants.
    fn of(perm: &Permission) -> (Vec<u8>, End) {
        let end = match perm.range_end.as_slice() {
            [] => {
                let mut end = perm.key.clone();
                end.push(0);
                Some(end)
            }
            [0] => None,
            end => Some(end.to_vec()),
        };
        (perm.key.clone(), end)
    }

    fn insert(&mut self, ivl: (Vec<u8>, End)) {
        let at = self.0.partition_point(|(b, _)| *b <= ivl.0);
        self.0.insert(at, ivl);
    }

    /// Whether some interval contains `key`.
    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.0
            .iter()
            .take_while(|(b, _)| b.as_slice() <= key)
            .any(|(_, e)| end_after(e, key))
    }

    /// Whether the intervals together cover `[key, end)` (`end` `None`: every key from `key`).
    pub fn covers(&self, key: &[u8], end: Option<&[u8]>) -> bool {
        let want: End = end.map(<[u8]>::to_vec);
        // How far from `key` on the intervals seen so far reach without a gap.
        let mut reached: End = Some(key.to_vec());
        for (begin, ivl_end) in &self.0 {
            let Some(r) = &reached else { return true };
            if begin.as_slice() > r.as_slice() {
                break;
            }
            if !end_reaches(&reached, ivl_end) {
                reached = ivl_end.clone();
            }
            if end_reaches(&reached, &want) {
                return true;
            }
        }
        false
    }
}

/// A user's read and write intervals, merged over all its roles.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangePerms {
    pub read: Intervals,
    pub write: Intervals,
}

impl RangePerms {
    pub fn of_roles<'a>(roles: impl IntoIterator<Item = &'a Role>) -> RangePerms {
        let mut perms = RangePerms::default();
        for perm in roles.into_iter().flat_map(|r| &r.perms) {
            let ivl = Intervals::of(perm);
            if perm.perm_type.reads() {
                perms.read.insert(ivl.clone());
            }
            if perm.perm_type.writes() {
                perms.write.insert(ivl);
            }
        }
        perms
    }

    /// Whether `key` (with `range_end` as in a request: empty for the key alone, `"\0"` for every
    /// key from `key` on) may be read (`write` false) or written.
    pub fn allows(&self, write: bool, key: &[u8], range_end: &[u8]) -> bool {
        let ivls = if write { &self.write } else { &self.read };
        match range_end {
            [] => ivls.contains_key(key),
            [0] => ivls.covers(key, None),
            end => ivls.covers(key, Some(end)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::PermType;
    use super::*;

    fn role(perms: &[(PermType, &str, &str)]) -> Role {
        Role {
            name: "r".into(),
            perms: perms
                .iter()
                .map(|(t, k, e)| Permission {
                    perm_type: *t,
                    key: k.as_bytes().to_vec(),
                    range_end: e.as_bytes().to_vec(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_prefix_permission_covers_its_keys_and_subranges_only() {
        let p = RangePerms::of_roles([&role(&[(PermType::Read, "/app/", "/app0")])]);
        assert!(p.allows(false, b"/app/x", b""));
        assert!(p.allows(false, b"/app/", b"/app0"));
        assert!(p.allows(false, b"/app/a", b"/app/b"));
        assert!(!p.allows(false, b"/ap", b"/aq"));
        assert!(!p.allows(false, b"/app/", b"\0"));
        assert!(!p.allows(false, b"/other/x", b""));
        assert!(!p.allows(true, b"/app/x", b""));
    }

    #[test]
    fn ranges_are_covered_by_the_union_of_several_permissions() {
        let joined = role(&[
            (PermType::Read, "/a", "/c"),
            (PermType::ReadWrite, "/b", "/d"),
        ]);
        let p = RangePerms::of_roles([&joined]);
        assert!(p.allows(false, b"/a", b"/d"));
        assert!(!p.allows(false, b"/a", b"/e"));
        assert!(!p.allows(true, b"/a", b"/c"));
        assert!(p.allows(true, b"/b", b"/d"));
        let gap = role(&[(PermType::Read, "/a", "/b"), (PermType::Read, "/c", "/d")]);
        let p = RangePerms::of_roles([&gap]);
        assert!(!p.allows(false, b"/a", b"/d"));
        assert!(p.allows(false, b"/a", b""));
        assert!(p.allows(false, b"/c", b""));
        assert!(!p.allows(false, b"/b", b""));
    }

    #[test]
    fn single_key_and_open_ended_permissions() {
        let p = RangePerms::of_roles([&role(&[
            (PermType::Write, "/k1", ""),
            (PermType::Read, "/z", "\0"),
        ])]);
        assert!(p.allows(true, b"/k1", b""));
        assert!(!p.allows(true, b"/k10", b""));
        assert!(p.allows(true, b"/k1", b"/k1\0"));
        assert!(!p.allows(true, b"/k1", b"/k2"));
        assert!(p.allows(false, b"/z", b"\0"));
        assert!(p.allows(false, b"/zz", b"\0"));
        assert!(p.allows(false, b"/z0", b"/zz"));
        assert!(!p.allows(false, b"/y", b"\0"));
        assert!(!p.allows(false, b"/k1", b""));
    }

    #[test]
    fn permissions_of_several_roles_merge() {
        let a = role(&[(PermType::Read, "a", "b")]);
        let b = role(&[(PermType::Read, "b", "c")]);
        let p = RangePerms::of_roles([&a, &b]);
        assert!(p.allows(false, b"a", b"c"));
        assert!(RangePerms::default() == RangePerms::of_roles([]));
        assert!(!RangePerms::default().allows(false, b"a", b""));
    }
}
