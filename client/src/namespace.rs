//! A key-prefix namespace: a view of the store in which every key lives under a fixed prefix, invisible to
//! the caller. Keys and range ends are prefixed on the way out and stripped on the way back, in requests,
//! transaction compares and operations (nested too), responses, and watch events.
//!
//! Range ends map as etcd's namespace proxy maps them: an empty end stays a single key; `"\0"` ("every key
//! from here") becomes the end of the namespace, so a namespaced "all keys" never leaks past the prefix.

use cairn_proto::etcdserverpb::request_op::Request;
use cairn_proto::etcdserverpb::response_op::Response;
use cairn_proto::etcdserverpb::{
    DeleteRangeResponse, PutResponse, RangeResponse, TxnRequest, TxnResponse,
};
use cairn_proto::mvccpb::KeyValue;

use crate::client::Client;
use crate::error::Result;
use crate::kv::{prefix_end, DeleteOptions, GetOptions, PutOptions};
use crate::txn::Txn;
use crate::watch::{WatchOptions, WatchStream};

/// A [`Client`] view confined to keys under `prefix`.
#[derive(Debug, Clone)]
pub struct Namespace {
    client: Client,
    prefix: Vec<u8>,
}

pub(crate) fn strip_kv(prefix: &[u8], kv: Option<&mut KeyValue>) {
    if let Some(kv) = kv {
        if kv.key.starts_with(prefix) {
            kv.key.drain(..prefix.len());
        }
    }
}

fn namespaced_end(prefix: &[u8], end: &[u8]) -> Vec<u8> {
    match end {
        [] => Vec::new(),
        [0] => prefix_end(prefix),
        e => [prefix, e].concat(),
    }
}

impl Namespace {
    /// A view of `client` under `prefix`.
    pub fn new(client: &Client, prefix: impl Into<Vec<u8>>) -> Namespace {
        Namespace {
            client: client.clone(),
            prefix: prefix.into(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    fn key(&self, key: &[u8]) -> Vec<u8> {
        [self.prefix.as_slice(), key].concat()
    }

    fn end(&self, end: &[u8]) -> Vec<u8> {
        namespaced_end(&self.prefix, end)
    }

    fn strip_range(&self, r: &mut RangeResponse) {
        for kv in &mut r.kvs {
            strip_kv(&self.prefix, Some(kv));
        }
    }

    fn map_txn(&self, req: &mut TxnRequest) {
        for c in &mut req.compare {
            c.key = self.key(&c.key);
            c.range_end = self.end(&c.range_end);
        }
        for op in req.success.iter_mut().chain(req.failure.iter_mut()) {
            match &mut op.request {
                Some(Request::RequestRange(r)) => {
                    r.key = self.key(&r.key);
                    r.range_end = self.end(&r.range_end);
                }
                Some(Request::RequestPut(p)) => p.key = self.key(&p.key),
                Some(Request::RequestDeleteRange(d)) => {
                    d.key = self.key(&d.key);
                    d.range_end = self.end(&d.range_end);
                }
                Some(Request::RequestTxn(t)) => self.map_txn(t),
                None => {}
            }
        }
    }

    fn strip_txn(&self, resp: &mut TxnResponse) {
        for r in &mut resp.responses {
            match &mut r.response {
                Some(Response::ResponseRange(r)) => self.strip_range(r),
                Some(Response::ResponsePut(p)) => strip_kv(&self.prefix, p.prev_kv.as_mut()),
                Some(Response::ResponseDeleteRange(d)) => {
                    for kv in &mut d.prev_kvs {
                        strip_kv(&self.prefix, Some(kv));
                    }
                }
                Some(Response::ResponseTxn(t)) => self.strip_txn(t),
                None => {}
            }
        }
    }

    /// [`Client::get`] within the namespace.
    pub async fn get(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<GetOptions>,
    ) -> Result<RangeResponse> {
        let mut req = options.unwrap_or_default().build(key.into());
        req.key = self.key(&req.key);
        req.range_end = self.end(&req.range_end);
        let mut resp = self.client.range_request(req).await?;
        self.strip_range(&mut resp);
        Ok(resp)
    }

    /// [`Client::put`] within the namespace.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        options: Option<PutOptions>,
    ) -> Result<PutResponse> {
        let mut req = options.unwrap_or_default().build(key.into(), value.into());
        req.key = self.key(&req.key);
        let mut resp = self.client.put_request(req).await?;
        strip_kv(&self.prefix, resp.prev_kv.as_mut());
        Ok(resp)
    }

    /// [`Client::delete`] within the namespace.
    pub async fn delete(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<DeleteOptions>,
    ) -> Result<DeleteRangeResponse> {
        let mut req = options.unwrap_or_default().build(key.into());
        req.key = self.key(&req.key);
        req.range_end = self.end(&req.range_end);
        let mut resp = self.client.delete_request(req).await?;
        for kv in &mut resp.prev_kvs {
            strip_kv(&self.prefix, Some(kv));
        }
        Ok(resp)
    }

    /// [`Client::txn`] within the namespace.
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        let mut req = txn.into_request();
        self.map_txn(&mut req);
        let mut resp = self.client.txn(Txn::from_request(req)).await?;
        self.strip_txn(&mut resp);
        Ok(resp)
    }

    /// [`Client::watch`] within the namespace.
    pub async fn watch(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<WatchOptions>,
    ) -> Result<WatchStream> {
        let mut create = options.unwrap_or_default().build(key.into());
        create.key = self.key(&create.key);
        create.range_end = self.end(&create.range_end);
        self.client
            .watch_request(create, Some(self.prefix.clone()))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_key_ranges_stay_inside_the_namespace() {
        let prefix = b"ns/".to_vec();
        let ns_end = |end: &[u8]| namespaced_end(&prefix, end);
        assert_eq!(ns_end(b"\0"), b"ns0");
        assert_eq!(ns_end(b"b"), b"ns/b");
        assert!(ns_end(b"").is_empty());
        let mut kv = KeyValue {
            key: b"ns/a".to_vec(),
            ..Default::default()
        };
        strip_kv(&prefix, Some(&mut kv));
        assert_eq!(kv.key, b"a");
    }
}
