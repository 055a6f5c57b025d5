//! Revisions: the logical clock of the store.

use serde::{Deserialize, Serialize};

/// A point in the store's history.
///
/// `main` is bumped once per write transaction; `sub` numbers the individual
/// writes inside that transaction, so every stored entry has a unique
/// revision and entries of one transaction sort together.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

impl Revision {
    pub const fn new(main: i64, sub: i64) -> Self {
        Revision { main, sub }
    }

    /// Big-endian `main` then `sub`. Revisions are never negative, so the
    /// bytes sort exactly like the revisions themselves, which lets a
    /// byte-ordered backend scan history in revision order.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.main.to_be_bytes());
        out[8..].copy_from_slice(&self.sub.to_be_bytes());
        out
    }

    /// Inverse of [`Revision::to_bytes`]; `None` unless exactly 16 bytes.
    pub fn from_bytes(b: &[u8]) -> Option<Revision> {
        if b.len() != 16 {
            return None;
        }
        let main = i64::from_be_bytes(b[..8].try_into().ok()?);
        let sub = i64::from_be_bytes(b[8..].try_into().ok()?);
        Some(Revision { main, sub })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_order() {
        let revs = [
            Revision::new(0, 0),
            Revision::new(1, 0),
            Revision::new(1, 1),
            Revision::new(1, 255),
            Revision::new(1, 256),
            Revision::new(2, 0),
            Revision::new(256, 0),
            Revision::new(i64::MAX, i64::MAX),
        ];
        for w in revs.windows(2) {
            assert!(w[0] < w[1]);
            assert!(w[0].to_bytes() < w[1].to_bytes());
        }
        for r in revs {
            assert_eq!(Revision::from_bytes(&r.to_bytes()), Some(r));
        }
        assert_eq!(Revision::from_bytes(&[0u8; 15]), None);
        assert_eq!(Revision::from_bytes(&[0u8; 17]), None);
    }
}
