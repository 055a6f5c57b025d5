//! The one byte encoding (bincode, standard settings) of everything Cairn stores or sends between
//! members: log entries, stored rows, snapshots' metadata and the peer transport's payloads.
//!
//! A leaf: it must never import another module of the crate.

use serde::Serialize;

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::error::EncodeError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<T, bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard()).map(|(v, _)| v)
}
