//! A typed transaction builder.
//!
//! ```
//! use cairn_client::{Compare, Txn, TxnOp};
//! // Update "k" only if nobody changed it since revision 7 (optimistic concurrency).
//! let txn = Txn::new()
//!     .when([Compare::mod_revision("k").eq(7)])
//!     .and_then([TxnOp::put("k", "new", None)])
//!     .or_else([TxnOp::get("k", None)]);
//! assert!(!txn.is_read_only());
//! ```

use cairn_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_proto::etcdserverpb::request_op::Request;
use cairn_proto::etcdserverpb::{self as pb, RequestOp, TxnRequest};

use crate::kv::{prefix_end, DeleteOptions, GetOptions, PutOptions};

/// One comparison of a transaction's guard.
#[derive(Debug, Clone, PartialEq)]
pub struct Compare(pub(crate) pb::Compare);

/// The revision-like field a [`Compare`] looks at; finish it with `eq`, `ne`, `gt` or `lt`.
#[derive(Debug, Clone)]
pub struct CompareInt {
    key: Vec<u8>,
    target: CompareTarget,
}

/// A [`Compare`] on the value; finish it with `eq`, `ne`, `gt` or `lt`.
#[derive(Debug, Clone)]
pub struct CompareValue {
    key: Vec<u8>,
}

impl Compare {
    /// Compares the key's version (0: the key does not exist).
    pub fn version(key: impl Into<Vec<u8>>) -> CompareInt {
        CompareInt {
            key: key.into(),
            target: CompareTarget::Version,
        }
    }
    /// Compares the key's create revision (0: the key does not exist).
    pub fn create_revision(key: impl Into<Vec<u8>>) -> CompareInt {
        CompareInt {
            key: key.into(),
            target: CompareTarget::Create,
        }
    }
    /// Compares the key's last modification revision.
    pub fn mod_revision(key: impl Into<Vec<u8>>) -> CompareInt {
        CompareInt {
            key: key.into(),
            target: CompareTarget::Mod,
        }
    }
    /// Compares the key's lease id.
    pub fn lease(key: impl Into<Vec<u8>>) -> CompareInt {
        CompareInt {
            key: key.into(),
            target: CompareTarget::Lease,
        }
    }
    /// Compares the key's value.
    pub fn value(key: impl Into<Vec<u8>>) -> CompareValue {
        CompareValue { key: key.into() }
    }

    /// Applies the comparison to every key in `[key, end)`.
    pub fn with_range(mut self, end: impl Into<Vec<u8>>) -> Self {
        self.0.range_end = end.into();
        self
    }

    /// Applies the comparison to every key with the compared key as prefix.
    pub fn with_prefix(mut self) -> Self {
        self.0.range_end = prefix_end(&self.0.key);
        self
    }

    /// The wire form.
    pub fn into_proto(self) -> pb::Compare {
        self.0
    }
}

fn finish(
    key: Vec<u8>,
    target: CompareTarget,
    result: CompareResult,
    value: TargetUnion,
) -> Compare {
    Compare(pb::Compare {
        result: result as i32,
        target: target as i32,
        key,
        target_union: Some(value),
        range_end: Vec::new(),
    })
}

impl CompareInt {
    fn with(self, result: CompareResult, v: i64) -> Compare {
        let union = match self.target {
            CompareTarget::Version => TargetUnion::Version(v),
            CompareTarget::Create => TargetUnion::CreateRevision(v),
            CompareTarget::Mod => TargetUnion::ModRevision(v),
            CompareTarget::Lease => TargetUnion::Lease(v),
            CompareTarget::Value => unreachable!("value compares are built by CompareValue"),
        };
        finish(self.key, self.target, result, union)
    }
    /// Field == `v`.
    pub fn eq(self, v: i64) -> Compare {
        self.with(CompareResult::Equal, v)
    }
    /// Field != `v`.
    pub fn ne(self, v: i64) -> Compare {
        self.with(CompareResult::NotEqual, v)
    }
    /// Field > `v`.
    pub fn gt(self, v: i64) -> Compare {
        self.with(CompareResult::Greater, v)
    }
    /// Field < `v`.
    pub fn lt(self, v: i64) -> Compare {
        self.with(CompareResult::Less, v)
    }
}

impl CompareValue {
    fn with(self, result: CompareResult, v: impl Into<Vec<u8>>) -> Compare {
        finish(
            self.key,
            CompareTarget::Value,
            result,
            TargetUnion::Value(v.into()),
        )
    }
    /// Value == `v`.
    pub fn eq(self, v: impl Into<Vec<u8>>) -> Compare {
        self.with(CompareResult::Equal, v)
    }
    /// Value != `v`.
    pub fn ne(self, v: impl Into<Vec<u8>>) -> Compare {
        self.with(CompareResult::NotEqual, v)
    }
    /// Value > `v` (bytewise).
    pub fn gt(self, v: impl Into<Vec<u8>>) -> Compare {
        self.with(CompareResult::Greater, v)
    }
    /// Value < `v` (bytewise).
    pub fn lt(self, v: impl Into<Vec<u8>>) -> Compare {
        self.with(CompareResult::Less, v)
    }
}

/// One operation of a transaction branch.
#[derive(Debug, Clone, PartialEq)]
pub struct TxnOp(pub(crate) Request);

impl TxnOp {
    /// A read.
    pub fn get(key: impl Into<Vec<u8>>, options: Option<GetOptions>) -> TxnOp {
        TxnOp(Request::RequestRange(
            options.unwrap_or_default().build(key.into()),
        ))
    }
    /// A put.
    pub fn put(
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        options: Option<PutOptions>,
    ) -> TxnOp {
        TxnOp(Request::RequestPut(
            options.unwrap_or_default().build(key.into(), value.into()),
        ))
    }
    /// A delete.
    pub fn delete(key: impl Into<Vec<u8>>, options: Option<DeleteOptions>) -> TxnOp {
        TxnOp(Request::RequestDeleteRange(
            options.unwrap_or_default().build(key.into()),
        ))
    }
    /// A nested transaction.
    pub fn txn(txn: Txn) -> TxnOp {
        TxnOp(Request::RequestTxn(txn.into_request()))
    }
    /// Wraps a raw operation.
    pub fn from_proto(op: RequestOp) -> Option<TxnOp> {
        op.request.map(TxnOp)
    }
    /// The wire form.
    pub fn into_proto(self) -> RequestOp {
        RequestOp {
            request: Some(self.0),
        }
    }
}

/// A transaction: if every compare holds, run `and_then`, else `or_else`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Txn {
    req: TxnRequest,
}

impl Txn {
    /// An empty transaction (it succeeds and does nothing).
    pub fn new() -> Txn {
        Txn::default()
    }
    /// Adds guard comparisons; all must hold for the success branch.
    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Txn {
        self.req.compare.extend(compares.into_iter().map(|c| c.0));
        self
    }
    /// Adds operations to the success branch.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Txn {
        self.req
            .success
            .extend(ops.into_iter().map(TxnOp::into_proto));
        self
    }
    /// Adds operations to the failure branch.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Txn {
        self.req
            .failure
            .extend(ops.into_iter().map(TxnOp::into_proto));
        self
    }
    /// Wraps a raw request.
    pub fn from_request(req: TxnRequest) -> Txn {
        Txn { req }
    }
    /// The wire form.
    pub fn into_request(self) -> TxnRequest {
        self.req
    }
    /// The wire form, borrowed.
    pub fn request(&self) -> &TxnRequest {
        &self.req
    }
    /// True when no branch writes, so the transaction may be retried safely.
    pub fn is_read_only(&self) -> bool {
        fn ro(req: &TxnRequest) -> bool {
            req.success
                .iter()
                .chain(req.failure.iter())
                .all(|op| match &op.request {
                    Some(Request::RequestRange(_)) | None => true,
                    Some(Request::RequestTxn(t)) => ro(t),
                    Some(Request::RequestPut(_)) | Some(Request::RequestDeleteRange(_)) => false,
                })
        }
        ro(&self.req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_carry_target_and_result() {
        let c = Compare::mod_revision("k").eq(5).0;
        assert_eq!(c.target, CompareTarget::Mod as i32);
        assert_eq!(c.result, CompareResult::Equal as i32);
        assert_eq!(c.target_union, Some(TargetUnion::ModRevision(5)));
        let c = Compare::value("k").ne("v").with_prefix().0;
        assert_eq!(c.target_union, Some(TargetUnion::Value(b"v".to_vec())));
        assert_eq!(c.range_end, b"l");
    }

    #[test]
    fn read_only_looks_into_nested_txns() {
        let inner = Txn::new().and_then([TxnOp::get("a", None)]);
        assert!(Txn::new().and_then([TxnOp::txn(inner)]).is_read_only());
        let inner = Txn::new().or_else([TxnOp::delete("a", None)]);
        assert!(!Txn::new().and_then([TxnOp::txn(inner)]).is_read_only());
    }
}
