//! A key as the index's B-tree holds it.
//!
//! A put finds its key by comparing it with a dozen or more keys of the tree. Were each key in an
//! allocation of its own, every comparison would first fetch that allocation, mostly a cache miss
//! among 100,000 keys. Keys of up to [`INLINE`] bytes therefore sit in the tree's node itself, in
//! the 24 bytes a `Vec<u8>` takes; longer keys live on the heap as before. Either form orders,
//! compares and hashes exactly as its bytes do, so the tree is searched with a plain `&[u8]`.
//!
//! Part of `mvcc`: imports nothing but the standard library.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

/// The longest key held inline: what fits beside the length and the variant's tag in 24 bytes.
pub const INLINE: usize = 22;

#[derive(Clone)]
pub enum IndexKey {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<[u8]>),
}

// The point of the type: no wider than the `Vec<u8>` it replaces, so a node's keys still take the
// same cache lines.
const _: () = assert!(std::mem::size_of::<IndexKey>() == 24);

impl IndexKey {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            IndexKey::Inline { len, bytes } => &bytes[..*len as usize],
            IndexKey::Heap(b) => b,
        }
    }
}

impl From<&[u8]> for IndexKey {
    fn from(key: &[u8]) -> Self {
        if key.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..key.len()].copy_from_slice(key);
            IndexKey::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            IndexKey::Heap(key.into())
        }
    }
}

impl std::ops::Deref for IndexKey {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Borrow<[u8]> for IndexKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl PartialEq for IndexKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for IndexKey {}

impl PartialOrd for IndexKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for IndexKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

// `Borrow` requires hashing as the borrowed form does.
impl Hash for IndexKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state)
    }
}

impl fmt::Debug for IndexKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&String::from_utf8_lossy(self.as_bytes()), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn both_forms_order_and_compare_as_their_bytes() {
        let keys: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0, 0],
            b"a".to_vec(),
            vec![b'x'; INLINE - 1],
            vec![b'x'; INLINE],
            vec![b'x'; INLINE + 1],
            [vec![b'x'; INLINE], vec![0]].concat(),
            b"/registry/pods/default/pod-00000001".to_vec(),
            vec![0xff; 40],
        ];
        for a in &keys {
            let ka = IndexKey::from(a.as_slice());
            assert_eq!(ka.as_bytes(), a.as_slice());
            assert_eq!(
                matches!(ka, IndexKey::Inline { .. }),
                a.len() <= INLINE,
                "{a:?}"
            );
            for b in &keys {
                let kb = IndexKey::from(b.as_slice());
                assert_eq!(ka.cmp(&kb), a.cmp(b), "{a:?} vs {b:?}");
                assert_eq!(ka == kb, a == b);
            }
        }
    }

    #[test]
    fn a_tree_of_them_is_searched_and_ranged_by_bytes() {
        let mut tree = BTreeMap::new();
        for k in [&b"b"[..], b"a", &[b'k'; 30], b"ab", &[b'k'; 22]] {
            tree.insert(IndexKey::from(k), k.len());
        }
        assert_eq!(tree.get(&b"ab"[..]), Some(&2));
        assert_eq!(tree.get(&[b'k'; 30][..]), Some(&30));
        assert_eq!(tree.get(&b"c"[..]), None);
        let from_a: Vec<&[u8]> = tree
            .range::<[u8], _>((
                std::ops::Bound::Included(&b"a"[..]),
                std::ops::Bound::Excluded(&b"b"[..]),
            ))
            .map(|(k, _)| k.as_bytes())
            .collect();
        assert_eq!(from_a, vec![&b"a"[..], b"ab"]);
    }
}
