//! The one byte encoding (bincode, standard settings) of everything Cairn stores or sends between
//! members: log entries, stored rows, snapshots' metadata and the peer transport's payloads.
//!
//! A leaf: it must never import another module of the crate.

use serde::Serialize;

/// Encodes `value` into a buffer of exactly its size. bincode's own `encode_to_vec` (serde) starts
/// from an empty buffer and doubles it as it writes: seven allocations and six copies for a stored
/// row of a 256-byte value, thirteen for a log entry of 80 such writes. Sizing first is a second
/// pass that only adds lengths.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::error::EncodeError> {
    let mut size = Size(0);
    bincode::serde::encode_into_writer(value, &mut size, bincode::config::standard())?;
    let mut out = Vec::with_capacity(size.0);
    bincode::serde::encode_into_writer(value, Append(&mut out), bincode::config::standard())?;
    debug_assert_eq!(out.len(), size.0);
    Ok(out)
}

/// Counts the bytes an encoding writes.
struct Size(usize);

impl bincode::enc::write::Writer for &mut Size {
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0 += bytes.len();
        Ok(())
    }
}

/// Appends an encoding to a buffer sized for it.
struct Append<'a>(&'a mut Vec<u8>);

impl bincode::enc::write::Writer for Append<'_> {
    #[inline(always)]
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<T, bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard()).map(|(v, _)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_as_bincode_does_into_a_buffer_of_its_exact_size() {
        let values: Vec<(u64, Vec<u8>, Option<String>)> = vec![
            (0, vec![], None),
            (300, vec![7; 256], Some("key".into())),
            (u64::MAX, vec![1; 70_000], Some("x".repeat(500))),
        ];
        for v in &values {
            let ours = encode(v).expect("encode");
            let theirs = bincode::serde::encode_to_vec(v, bincode::config::standard()).unwrap();
            assert_eq!(ours, theirs);
            assert_eq!(ours.capacity(), ours.len());
            assert_eq!(decode::<(u64, Vec<u8>, Option<String>)>(&ours).unwrap(), *v);
        }
    }
}
