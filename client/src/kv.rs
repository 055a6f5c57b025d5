//! Key-value calls: `get`, `put`, `delete`, `txn`, `compact`, and their builder options.
//!
//! Ranges follow etcd: no range end means the single key; `with_prefix` is the key with its last byte
//! incremented (trailing 0xff bytes dropped; an all-0xff or empty key means every key from `key`);
//! `with_from_key` is every key ≥ `key` (range end `"\0"`).
//!
//! Reads (and transactions without writes) are idempotent and fail over freely; puts, deletes, write
//! transactions and compactions are not retried once sent (see [`crate::Error::OutcomeUnknown`]).

use cairn_proto::etcdserverpb::kv_client::KvClient;
use cairn_proto::etcdserverpb::range_request::{
    SortOrder as PbSortOrder, SortTarget as PbSortTarget,
};
use cairn_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnResponse,
};

use crate::client::Client;
use crate::error::Result;
use crate::txn::Txn;

/// The largest answer a client accepts: etcd's clients allow `math.MaxInt32` bytes, so a large range
/// or transaction result is never refused by the client alone.
pub(crate) const MAX_RECV: usize = i32::MAX as usize;

fn kv_client(ch: crate::client::AuthedChannel) -> KvClient<crate::client::AuthedChannel> {
    KvClient::new(ch).max_decoding_message_size(MAX_RECV)
}

/// The range end that covers every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff (or the prefix was empty): no upper bound exists, so use etcd's "to the end".
    vec![0]
}

/// The range setters every option builder with a `range: RangeSpec` field shares.
macro_rules! range_setters {
    () => {
        /// Every key starting with the given key.
        pub fn with_prefix(mut self) -> Self {
            self.range = RangeSpec::Prefix;
            self
        }
        /// Every key greater than or equal to the given key.
        pub fn with_from_key(mut self) -> Self {
            self.range = RangeSpec::FromKey;
            self
        }
        /// Keys in `[key, end)`.
        pub fn with_range(mut self, end: impl Into<Vec<u8>>) -> Self {
            self.range = RangeSpec::End(end.into());
            self
        }
    };
}
pub(crate) use range_setters;

/// What a range covers, resolved against a key when the request is built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum RangeSpec {
    #[default]
    Key,
    Prefix,
    FromKey,
    End(Vec<u8>),
}

impl RangeSpec {
    /// The (key, range end) pair sent for `key`. An empty key with a prefix or from-key range means every
    /// key, which etcd spells `"\0"`..`"\0"` (an empty key alone is refused by the server).
    pub(crate) fn resolve(&self, key: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
        match self {
            RangeSpec::Key => (key, Vec::new()),
            RangeSpec::Prefix | RangeSpec::FromKey if key.is_empty() => (vec![0], vec![0]),
            RangeSpec::Prefix => {
                let end = prefix_end(&key);
                (key, end)
            }
            RangeSpec::FromKey => (key, vec![0]),
            RangeSpec::End(end) => (key, end.clone()),
        }
    }
}

/// Which field a range is sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortTarget {
    /// The key (etcd's default order).
    #[default]
    Key,
    /// The key's version.
    Version,
    /// The create revision.
    Create,
    /// The last modification revision.
    Modify,
    /// The value bytes.
    Value,
}

/// Sort direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortOrder {
    /// The server's default (by key, ascending).
    #[default]
    None,
    /// Ascending.
    Ascend,
    /// Descending.
    Descend,
}

/// Options of [`Client::get`].
#[derive(Debug, Clone, Default)]
pub struct GetOptions {
    pub(crate) range: RangeSpec,
    req: RangeRequest,
}

impl GetOptions {
    /// Reads the single key, linearizably, at the latest revision.
    pub fn new() -> Self {
        Self::default()
    }
    range_setters!();
    /// Reads the store as of `revision` (0 or less: latest).
    pub fn with_revision(mut self, revision: i64) -> Self {
        self.req.revision = revision;
        self
    }
    /// At most `limit` keys (0: no limit); `more` in the response tells whether keys were cut.
    pub fn with_limit(mut self, limit: i64) -> Self {
        self.req.limit = limit;
        self
    }
    /// Sorts by `target` in `order`.
    pub fn with_sort(mut self, target: SortTarget, order: SortOrder) -> Self {
        self.req.sort_target = match target {
            SortTarget::Key => PbSortTarget::Key,
            SortTarget::Version => PbSortTarget::Version,
            SortTarget::Create => PbSortTarget::Create,
            SortTarget::Modify => PbSortTarget::Mod,
            SortTarget::Value => PbSortTarget::Value,
        } as i32;
        self.req.sort_order = match order {
            SortOrder::None => PbSortOrder::None,
            SortOrder::Ascend => PbSortOrder::Ascend,
            SortOrder::Descend => PbSortOrder::Descend,
        } as i32;
        self
    }
    /// Returns keys without values.
    pub fn with_keys_only(mut self) -> Self {
        self.req.keys_only = true;
        self
    }
    /// Returns only the count of keys in the range.
    pub fn with_count_only(mut self) -> Self {
        self.req.count_only = true;
        self
    }
    /// Answers from the contacted member's local state, without a quorum round (may be stale).
    pub fn with_serializable(mut self) -> Self {
        self.req.serializable = true;
        self
    }
    /// Only keys whose mod revision is at least `rev`.
    pub fn with_min_mod_revision(mut self, rev: i64) -> Self {
        self.req.min_mod_revision = rev;
        self
    }
    /// Only keys whose mod revision is at most `rev`.
    pub fn with_max_mod_revision(mut self, rev: i64) -> Self {
        self.req.max_mod_revision = rev;
        self
    }
    /// Only keys whose create revision is at least `rev`.
    pub fn with_min_create_revision(mut self, rev: i64) -> Self {
        self.req.min_create_revision = rev;
        self
    }
    /// Only keys whose create revision is at most `rev`.
    pub fn with_max_create_revision(mut self, rev: i64) -> Self {
        self.req.max_create_revision = rev;
        self
    }

    pub(crate) fn build(&self, key: Vec<u8>) -> RangeRequest {
        let (key, range_end) = self.range.resolve(key);
        RangeRequest {
            range_end,
            key,
            ..self.req.clone()
        }
    }
}

/// Options of [`Client::put`].
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    req: PutRequest,
}

impl PutOptions {
    /// A plain put.
    pub fn new() -> Self {
        Self::default()
    }
    /// Attaches the key to a lease; the key is deleted when the lease ends.
    pub fn with_lease(mut self, lease: i64) -> Self {
        self.req.lease = lease;
        self
    }
    /// Returns the previous key-value pair.
    pub fn with_prev_kv(mut self) -> Self {
        self.req.prev_kv = true;
        self
    }
    /// Keeps the current value (the key must exist).
    pub fn with_ignore_value(mut self) -> Self {
        self.req.ignore_value = true;
        self
    }
    /// Keeps the current lease (the key must exist).
    pub fn with_ignore_lease(mut self) -> Self {
        self.req.ignore_lease = true;
        self
    }

    pub(crate) fn build(&self, key: Vec<u8>, value: Vec<u8>) -> PutRequest {
        PutRequest {
            key,
            value,
            ..self.req.clone()
        }
    }
}

/// Options of [`Client::delete`].
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub(crate) range: RangeSpec,
    prev_kv: bool,
}

impl DeleteOptions {
    /// Deletes the single key.
    pub fn new() -> Self {
        Self::default()
    }
    range_setters!();
    /// Returns the deleted key-value pairs.
    pub fn with_prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }

    pub(crate) fn build(&self, key: Vec<u8>) -> DeleteRangeRequest {
        let (key, range_end) = self.range.resolve(key);
        DeleteRangeRequest {
            range_end,
            key,
            prev_kv: self.prev_kv,
        }
    }
}

/// Options of [`Client::compact`].
#[derive(Debug, Clone, Default)]
pub struct CompactOptions {
    physical: bool,
}

impl CompactOptions {
    /// A logical compaction (the call returns once it is committed).
    pub fn new() -> Self {
        Self::default()
    }
    /// Waits until the compaction is physically applied.
    pub fn with_physical(mut self) -> Self {
        self.physical = true;
        self
    }
}

impl Client {
    /// Reads a key or range. Idempotent: retried on other members when one is unavailable.
    pub async fn get(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<GetOptions>,
    ) -> Result<RangeResponse> {
        let req = options.unwrap_or_default().build(key.into());
        self.range_request(req).await
    }

    /// Sends a raw range request (used by recipes and the namespace wrapper).
    pub async fn range_request(&self, req: RangeRequest) -> Result<RangeResponse> {
        self.unary(true, |ch, _| {
            let req = req.clone();
            async move { Ok(kv_client(ch).range(req).await?.into_inner()) }
        })
        .await
    }

    pub(crate) async fn put_request(&self, req: PutRequest) -> Result<PutResponse> {
        self.unary(false, |ch, _| {
            let req = req.clone();
            async move { Ok(kv_client(ch).put(req).await?.into_inner()) }
        })
        .await
    }

    pub(crate) async fn delete_request(
        &self,
        req: DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse> {
        self.unary(false, |ch, _| {
            let req = req.clone();
            async move { Ok(kv_client(ch).delete_range(req).await?.into_inner()) }
        })
        .await
    }

    /// Writes `value` at `key`. Not retried once sent.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        options: Option<PutOptions>,
    ) -> Result<PutResponse> {
        let req = options.unwrap_or_default().build(key.into(), value.into());
        self.put_request(req).await
    }

    /// Deletes a key or range. Not retried once sent.
    pub async fn delete(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<DeleteOptions>,
    ) -> Result<DeleteRangeResponse> {
        let req = options.unwrap_or_default().build(key.into());
        self.delete_request(req).await
    }

    /// Runs a transaction: one revision for all its writes. Retried only when it contains no writes.
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        let idempotent = txn.is_read_only();
        let req = txn.into_request();
        self.unary(idempotent, |ch, _| {
            let req = req.clone();
            async move { Ok(kv_client(ch).txn(req).await?.into_inner()) }
        })
        .await
    }

    /// Compacts the history up to `revision`: reads and watches below it fail with
    /// [`crate::Error::Compacted`] afterwards.
    pub async fn compact(
        &self,
        revision: i64,
        options: Option<CompactOptions>,
    ) -> Result<CompactionResponse> {
        let req = CompactionRequest {
            revision,
            physical: options.unwrap_or_default().physical,
        };
        self.unary(false, |ch, _| async move {
            Ok(kv_client(ch).compact(req).await?.into_inner())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_follows_etcd() {
        assert_eq!(prefix_end(b"abc"), b"abd");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }

    #[test]
    fn options_build_ranges() {
        let r = GetOptions::new()
            .with_prefix()
            .with_limit(3)
            .build(b"k/".to_vec());
        assert_eq!(r.range_end, b"k0");
        assert_eq!(r.limit, 3);
        let r = GetOptions::new().with_from_key().build(b"a".to_vec());
        assert_eq!(r.range_end, b"\0");
        let d = DeleteOptions::new().with_range("z").build(b"a".to_vec());
        assert_eq!(d.range_end, b"z");
        assert!(GetOptions::new().build(b"a".to_vec()).range_end.is_empty());
        let all = GetOptions::new().with_prefix().build(Vec::new());
        assert_eq!((all.key, all.range_end), (b"\0".to_vec(), b"\0".to_vec()));
        let all = DeleteOptions::new().with_from_key().build(Vec::new());
        assert_eq!((all.key, all.range_end), (b"\0".to_vec(), b"\0".to_vec()));
    }
}
