//! Multi-version concurrency control: the revisioned key-value model of the
//! etcd v3 API.
//!
//! [`KvIndex`] keeps, in memory, the revision history of every key and
//! answers range, put, delete-range, transaction and compaction requests.
//! Values are stored by the caller, keyed by [`Revision`], and read back
//! through [`ValueReader`]; writes hand back the [`BackendOp`]s to persist.
//!
//! The bottom of the server: it must never import another module of the crate, nor openraft,
//! sled, tonic or prost.

mod index_key;
pub mod key_index;
pub mod revision;
pub mod store;
pub mod types;

#[cfg(test)]
mod model_test;

pub use revision::Revision;
pub use store::{
    check_delete_shape, check_put_shape, check_range_shape, check_txn_shape, BackendOp, KvIndex,
    MvccError, ShapeError, StoreError, ValueReader, WriteResult,
};
pub use types::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, Event,
    EventType, KeyValue, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseOp, SortOrder, SortTarget, TxnRequest, TxnResponse,
};
