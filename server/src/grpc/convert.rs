//! Protobuf <-> domain conversions, and nowhere else.

use cairn_proto::etcdserverpb as pb;
use cairn_proto::mvccpb;

use crate::error::ServerError;
use crate::mvcc::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, KeyValue,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseOp, SortOrder,
    SortTarget, TxnRequest, TxnResponse,
};

pub(crate) fn range_request(r: pb::RangeRequest) -> RangeRequest {
    use pb::range_request::{SortOrder as O, SortTarget as T};
    RangeRequest {
        sort_order: match r.sort_order() {
            O::None => SortOrder::None,
            O::Ascend => SortOrder::Ascend,
            O::Descend => SortOrder::Descend,
        },
        sort_target: match r.sort_target() {
            T::Key => SortTarget::Key,
            T::Version => SortTarget::Version,
            T::Create => SortTarget::Create,
            T::Mod => SortTarget::Mod,
            T::Value => SortTarget::Value,
        },
        key: r.key,
        range_end: r.range_end,
        limit: r.limit,
        revision: r.revision,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    }
}

pub(crate) fn put_request(r: pb::PutRequest) -> PutRequest {
    PutRequest {
        key: r.key,
        value: r.value,
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    }
}

pub(crate) fn delete_request(r: pb::DeleteRangeRequest) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: r.key,
        range_end: r.range_end,
        prev_kv: r.prev_kv,
    }
}

fn compare(c: pb::Compare) -> Compare {
    use pb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let result = match c.result() {
        R::Equal => CompareResult::Equal,
        R::Greater => CompareResult::Greater,
        R::Less => CompareResult::Less,
        R::NotEqual => CompareResult::NotEqual,
    };
    // etcd selects the operand by `target`; a union holding another field reads as that field's zero.
    let target = match (c.target(), c.target_union) {
        (T::Version, Some(U::Version(v))) => CompareTarget::Version(v),
        (T::Version, _) => CompareTarget::Version(0),
        (T::Create, Some(U::CreateRevision(v))) => CompareTarget::CreateRevision(v),
        (T::Create, _) => CompareTarget::CreateRevision(0),
        (T::Mod, Some(U::ModRevision(v))) => CompareTarget::ModRevision(v),
        (T::Mod, _) => CompareTarget::ModRevision(0),
        (T::Value, Some(U::Value(v))) => CompareTarget::Value(v),
        (T::Value, _) => CompareTarget::Value(Vec::new()),
        (T::Lease, Some(U::Lease(v))) => CompareTarget::Lease(v),
        (T::Lease, _) => CompareTarget::Lease(0),
    };
    Compare {
        key: c.key,
        range_end: c.range_end,
        result,
        target,
    }
}

fn request_op(op: pb::RequestOp) -> Result<RequestOp, ServerError> {
    use pb::request_op::Request;
    match op.request {
        Some(Request::RequestRange(r)) => Ok(RequestOp::Range(range_request(r))),
        Some(Request::RequestPut(r)) => Ok(RequestOp::Put(put_request(r))),
        Some(Request::RequestDeleteRange(r)) => Ok(RequestOp::DeleteRange(delete_request(r))),
        Some(Request::RequestTxn(r)) => Ok(RequestOp::Txn(txn_request(r)?)),
        None => Err(ServerError::InvalidRequest(
            "empty operation in txn request",
        )),
    }
}

pub(crate) fn txn_request(r: pb::TxnRequest) -> Result<TxnRequest, ServerError> {
    Ok(TxnRequest {
        compare: r.compare.into_iter().map(compare).collect(),
        success: r
            .success
            .into_iter()
            .map(request_op)
            .collect::<Result<_, _>>()?,
        failure: r
            .failure
            .into_iter()
            .map(request_op)
            .collect::<Result<_, _>>()?,
    })
}

pub(crate) fn key_value(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

pub(crate) fn range_response(
    r: RangeResponse,
    header: Option<pb::ResponseHeader>,
) -> pb::RangeResponse {
    pb::RangeResponse {
        header,
        kvs: r.kvs.into_iter().map(key_value).collect(),
        more: r.more,
        count: r.count,
    }
}

pub(crate) fn put_response(r: PutResponse, header: Option<pb::ResponseHeader>) -> pb::PutResponse {
    pb::PutResponse {
        header,
        prev_kv: r.prev_kv.map(key_value),
    }
}

pub(crate) fn delete_response(
    r: DeleteRangeResponse,
    header: Option<pb::ResponseHeader>,
) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header,
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.into_iter().map(key_value).collect(),
    }
}

/// Inner responses carry no header, as etcd's; a nested txn gets the outer one.
pub(crate) fn txn_response(r: TxnResponse, header: Option<pb::ResponseHeader>) -> pb::TxnResponse {
    // As etcd, each response inside a txn carries a header holding only a revision: the one a
    // range observed (before or after the txn's earlier writes), the txn's own for writes.
    fn writes(r: &TxnResponse) -> bool {
        r.responses.iter().any(|op| match op {
            ResponseOp::Put(_) => true,
            ResponseOp::DeleteRange(d) => d.deleted > 0,
            ResponseOp::Txn(t) => writes(t),
            ResponseOp::Range(_) => false,
        })
    }
    fn inner(r: TxnResponse, base: i64, fin: i64, wrote: &mut bool) -> Vec<pb::ResponseOp> {
        use pb::response_op::Response;
        let at = |revision| {
            Some(pb::ResponseHeader {
                revision,
                ..Default::default()
            })
        };
        r.responses
            .into_iter()
            .map(|op| pb::ResponseOp {
                response: Some(match op {
                    ResponseOp::Range(r) => Response::ResponseRange(range_response(
                        r,
                        at(if *wrote { fin } else { base }),
                    )),
                    ResponseOp::Put(r) => {
                        *wrote = true;
                        Response::ResponsePut(put_response(r, at(fin)))
                    }
                    ResponseOp::DeleteRange(r) => {
                        *wrote |= r.deleted > 0;
                        Response::ResponseDeleteRange(delete_response(r, at(fin)))
                    }
                    ResponseOp::Txn(t) => {
                        let succeeded = t.succeeded;
                        Response::ResponseTxn(pb::TxnResponse {
                            header: at(fin),
                            succeeded,
                            responses: inner(t, base, fin, wrote),
                        })
                    }
                }),
            })
            .collect()
    }
    let fin = header.map_or(0, |h| h.revision);
    let base = if writes(&r) { fin - 1 } else { fin };
    pb::TxnResponse {
        header,
        succeeded: r.succeeded,
        responses: inner(r, base, fin, &mut false),
    }
}

pub(crate) fn permission(p: cairn_proto::authpb::Permission) -> Option<crate::auth::Permission> {
    Some(crate::auth::Permission {
        perm_type: crate::auth::PermType::from_i32(p.perm_type)?,
        key: p.key,
        range_end: p.range_end,
    })
}

pub(crate) fn permission_pb(p: &crate::auth::Permission) -> cairn_proto::authpb::Permission {
    cairn_proto::authpb::Permission {
        perm_type: p.perm_type as i32,
        key: p.key.clone(),
        range_end: p.range_end.clone(),
    }
}
