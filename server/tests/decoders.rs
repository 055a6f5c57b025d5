//! Every request decoder of a member, fed random and damaged messages for a bounded time: each
//! client-API method (KV, Watch, Lease, Cluster, Maintenance, Auth, Lock, Election) and each method of the
//! member-to-member transport. Requests are built two ways: well-formed messages with hostile field
//! values (negative revisions, unknown enum numbers, empty and huge keys, deep transactions), and the
//! same bytes damaged (bit flips, cuts, splices, length prefixes pointing past the end).
//!
//! What must hold: no handler panics, every failure is a gRPC status with a message, no connection
//! is torn down, and the member still answers a read after every round. Blocking calls (Lock,
//! Campaign, streams) may wait; the member around them must not.
//!
//! `CAIRN_FUZZ_SECS` sets the time spent (default 20 s) and `CAIRN_FUZZ_SEED` replays a run; the
//! seed is printed first.

use crate::common;

use common::damage::damage;

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_proto::etcdserverpb as pb;
use cairn_proto::v3electionpb as el;
use cairn_proto::v3lockpb as lk;
use prost::bytes::{Buf, BufMut};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Passes messages through as bytes, so damaged encodings reach the server as they are.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        Ok(Some(bytes.to_vec()))
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Shape {
    Unary,
    /// One request, a stream of answers (Snapshot, Observe).
    ServerStream,
    /// Streams both ways (Watch, LeaseKeepAlive).
    Bidi,
}

struct Method {
    path: &'static str,
    shape: Shape,
    /// Waits by design (a lock held elsewhere, a campaign behind another leader).
    may_block: bool,
    generate: fn(&mut fastrand::Rng) -> Vec<u8>,
}

fn method(path: &'static str, generate: fn(&mut fastrand::Rng) -> Vec<u8>) -> Method {
    Method {
        path,
        shape: Shape::Unary,
        may_block: false,
        generate,
    }
}

fn bytes(rng: &mut fastrand::Rng) -> Vec<u8> {
    match rng.u8(0..10) {
        0 => Vec::new(),
        1 => vec![0],
        2 => vec![0xff; rng.usize(1..4)],
        3 => b"fuzz/".to_vec(),
        4 => {
            let mut k = b"fuzz/".to_vec();
            k.push(rng.u8(b'a'..=b'e'));
            k
        }
        // Larger than etcd's 1.5 MiB request limit.
        5 if rng.u8(0..20) == 0 => vec![b'x'; 2 * 1024 * 1024],
        6 => "ключ/\u{0}/😀".as_bytes().to_vec(),
        _ => (0..rng.usize(0..40)).map(|_| rng.u8(..)).collect(),
    }
}

fn range_end(rng: &mut fastrand::Rng, key: &[u8]) -> Vec<u8> {
    match rng.u8(0..5) {
        0 => Vec::new(),
        1 => vec![0],
        2 => {
            let mut end = key.to_vec();
            match end.last_mut() {
                Some(b) => *b = b.wrapping_add(1),
                None => end.push(1),
            }
            end
        }
        _ => bytes(rng),
    }
}

fn int(rng: &mut fastrand::Rng) -> i64 {
    match rng.u8(0..10) {
        0 => 0,
        1 => -1,
        2 => i64::MIN,
        3 => i64::MAX,
        4 => rng.i64(..),
        5 => rng.i64(-5..0),
        _ => rng.i64(0..200),
    }
}

fn id(rng: &mut fastrand::Rng) -> u64 {
    match rng.u8(0..4) {
        0 => 0,
        1 => u64::MAX,
        _ => rng.u64(..),
    }
}

/// An enum field: known numbers and ones no version of the API defines.
fn enum_value(rng: &mut fastrand::Rng) -> i32 {
    match rng.u8(0..8) {
        0 => -1,
        1 => 99,
        2 => i32::MAX,
        3 => i32::MIN,
        _ => rng.i32(0..5),
    }
}

fn url(rng: &mut fastrand::Rng) -> String {
    match rng.u8(0..5) {
        0 => String::new(),
        1 => "not a url".into(),
        2 => format!("http://127.0.0.1:{}", rng.u16(1..1024)),
        3 => "unix:///nowhere".into(),
        _ => String::from_utf8_lossy(&bytes(rng)).into_owned(),
    }
}

fn range_request(rng: &mut fastrand::Rng) -> pb::RangeRequest {
    let key = bytes(rng);
    pb::RangeRequest {
        range_end: range_end(rng, &key),
        key,
        limit: int(rng),
        revision: int(rng),
        sort_order: enum_value(rng),
        sort_target: enum_value(rng),
        serializable: rng.bool(),
        keys_only: rng.bool(),
        count_only: rng.bool(),
        min_mod_revision: int(rng),
        max_mod_revision: int(rng),
        min_create_revision: int(rng),
        max_create_revision: int(rng),
    }
}

fn put_request(rng: &mut fastrand::Rng) -> pb::PutRequest {
    pb::PutRequest {
        key: bytes(rng),
        value: bytes(rng),
        lease: if rng.bool() { 0 } else { int(rng) },
        prev_kv: rng.bool(),
        ignore_value: rng.u8(0..4) == 0,
        ignore_lease: rng.u8(0..4) == 0,
    }
}

fn delete_request(rng: &mut fastrand::Rng) -> pb::DeleteRangeRequest {
    let key = bytes(rng);
    pb::DeleteRangeRequest {
        range_end: range_end(rng, &key),
        key,
        prev_kv: rng.bool(),
    }
}

fn txn_request(rng: &mut fastrand::Rng, depth: u32) -> pb::TxnRequest {
    use pb::compare::TargetUnion;
    let compare = (0..rng.usize(0..4))
        .map(|_| {
            let key = bytes(rng);
            let target = match rng.u8(0..6) {
                0 => None,
                1 => Some(TargetUnion::Version(int(rng))),
                2 => Some(TargetUnion::CreateRevision(int(rng))),
                3 => Some(TargetUnion::ModRevision(int(rng))),
                4 => Some(TargetUnion::Value(bytes(rng))),
                _ => Some(TargetUnion::Lease(int(rng))),
            };
            pb::Compare {
                result: enum_value(rng),
                target: enum_value(rng),
                range_end: range_end(rng, &key),
                key,
                target_union: target,
            }
        })
        .collect();
    let ops = |rng: &mut fastrand::Rng| -> Vec<pb::RequestOp> {
        (0..rng.usize(0..4))
            .map(|_| {
                use pb::request_op::Request;
                let request = match rng.u8(0..5) {
                    0 => None,
                    1 => Some(Request::RequestRange(range_request(rng))),
                    2 => Some(Request::RequestPut(put_request(rng))),
                    3 => Some(Request::RequestDeleteRange(delete_request(rng))),
                    _ if depth < 3 => Some(Request::RequestTxn(txn_request(rng, depth + 1))),
                    _ => None,
                };
                pb::RequestOp { request }
            })
            .collect()
    };
    let success = ops(rng);
    let failure = ops(rng);
    pb::TxnRequest {
        compare,
        success,
        failure,
    }
}

fn watch_request(rng: &mut fastrand::Rng) -> pb::WatchRequest {
    use pb::watch_request::RequestUnion;
    let union = match rng.u8(0..6) {
        0 => None,
        1 => Some(RequestUnion::CancelRequest(pb::WatchCancelRequest {
            watch_id: int(rng),
        })),
        2 => Some(RequestUnion::ProgressRequest(pb::WatchProgressRequest {})),
        _ => {
            let key = bytes(rng);
            Some(RequestUnion::CreateRequest(pb::WatchCreateRequest {
                range_end: range_end(rng, &key),
                key,
                start_revision: int(rng),
                progress_notify: rng.bool(),
                filters: (0..rng.usize(0..3)).map(|_| enum_value(rng)).collect(),
                prev_kv: rng.bool(),
                watch_id: if rng.bool() { 0 } else { int(rng) },
                fragment: rng.bool(),
            }))
        }
    };
    pb::WatchRequest {
        request_union: union,
    }
}

fn leader_key(rng: &mut fastrand::Rng) -> Option<el::LeaderKey> {
    rng.u8(0..5).ne(&0).then(|| el::LeaderKey {
        name: bytes(rng),
        key: bytes(rng),
        rev: int(rng),
        lease: int(rng),
    })
}

fn methods() -> Vec<Method> {
    let mut all = vec![
        method("/etcdserverpb.KV/Range", |r| {
            range_request(r).encode_to_vec()
        }),
        method("/etcdserverpb.KV/Put", |r| put_request(r).encode_to_vec()),
        method("/etcdserverpb.KV/DeleteRange", |r| {
            delete_request(r).encode_to_vec()
        }),
        method("/etcdserverpb.KV/Txn", |r| {
            txn_request(r, 0).encode_to_vec()
        }),
        method("/etcdserverpb.KV/Compact", |r| {
            pb::CompactionRequest {
                revision: int(r),
                physical: r.bool(),
            }
            .encode_to_vec()
        }),
        method("/etcdserverpb.Lease/LeaseGrant", |r| {
            pb::LeaseGrantRequest {
                ttl: int(r),
                id: if r.bool() { 0 } else { int(r) },
            }
            .encode_to_vec()
        }),
        method("/etcdserverpb.Lease/LeaseRevoke", |r| {
            pb::LeaseRevokeRequest { id: int(r) }.encode_to_vec()
        }),
        method("/etcdserverpb.Lease/LeaseTimeToLive", |r| {
            pb::LeaseTimeToLiveRequest {
                id: int(r),
                keys: r.bool(),
            }
            .encode_to_vec()
        }),
        method("/etcdserverpb.Lease/LeaseLeases", |_| Vec::new()),
        // Only learners: a voter that never starts would take the quorum away, which is the
        // caller's right (etcd allows it without --strict-reconfig-check) but not this test's point.
        method("/etcdserverpb.Cluster/MemberAdd", |r| {
            pb::MemberAddRequest {
                peer_ur_ls: (0..r.usize(0..3)).map(|_| url(r)).collect(),
                is_learner: true,
            }
            .encode_to_vec()
        }),
        method("/etcdserverpb.Cluster/MemberRemove", |r| {
            pb::MemberRemoveRequest { id: id(r) }.encode_to_vec()
        }),
        method("/etcdserverpb.Cluster/MemberUpdate", |r| {
            pb::MemberUpdateRequest {
                id: id(r),
                peer_ur_ls: (0..r.usize(0..3)).map(|_| url(r)).collect(),
            }
            .encode_to_vec()
        }),
        method("/etcdserverpb.Cluster/MemberList", |r| {
            pb::MemberListRequest {
                linearizable: r.bool(),
            }
            .encode_to_vec()
        }),
        method("/etcdserverpb.Cluster/MemberPromote", |r| {
            pb::MemberPromoteRequest { id: id(r) }.encode_to_vec()
        }),
        method("/etcdserverpb.Maintenance/Alarm", |r| {
            pb::AlarmRequest {
                action: enum_value(r),
                member_id: id(r),
                alarm: enum_value(r),
            }
            .encode_to_vec()
        }),
        method("/etcdserverpb.Maintenance/Status", |_| Vec::new()),
        method("/etcdserverpb.Maintenance/Hash", |_| Vec::new()),
        method("/etcdserverpb.Maintenance/HashKV", |r| {
            pb::HashKvRequest { revision: int(r) }.encode_to_vec()
        }),
        method("/etcdserverpb.Maintenance/MoveLeader", |r| {
            pb::MoveLeaderRequest { target_id: id(r) }.encode_to_vec()
        }),
        method("/v3lockpb.Lock/Unlock", |r| {
            lk::UnlockRequest { key: bytes(r) }.encode_to_vec()
        }),
        method("/v3electionpb.Election/Proclaim", |r| {
            el::ProclaimRequest {
                leader: leader_key(r),
                value: bytes(r),
            }
            .encode_to_vec()
        }),
        method("/v3electionpb.Election/Leader", |r| {
            el::LeaderRequest { name: bytes(r) }.encode_to_vec()
        }),
        method("/v3electionpb.Election/Resign", |r| {
            el::ResignRequest {
                leader: leader_key(r),
            }
            .encode_to_vec()
        }),
    ];
    all.extend(auth_methods());
    // The transport between members: its payloads are bincode, so the bytes are random outright.
    for path in [
        "/cairn.raft.RaftTransport/AppendEntries",
        "/cairn.raft.RaftTransport/Vote",
        "/cairn.raft.RaftTransport/InstallSnapshot",
        "/cairn.raft.RaftTransport/Forward",
        "/cairn.raft.RaftTransport/ReadIndex",
        "/cairn.raft.RaftTransport/Lease",
        "/cairn.raft.RaftTransport/Admin",
    ] {
        all.push(method(path, raft_payload));
    }
    // A member must answer a hostile replication stream too, not hold it open.
    all.push(Method {
        path: "/cairn.raft.RaftTransport/AppendStream",
        shape: Shape::Bidi,
        may_block: false,
        generate: raft_payload,
    });
    all.push(Method {
        path: "/etcdserverpb.Maintenance/Defragment",
        shape: Shape::Unary,
        may_block: false,
        generate: |_| Vec::new(),
    });
    all.push(Method {
        path: "/etcdserverpb.Maintenance/Snapshot",
        shape: Shape::ServerStream,
        may_block: false,
        generate: |_| Vec::new(),
    });
    all.push(Method {
        path: "/etcdserverpb.Watch/Watch",
        shape: Shape::Bidi,
        may_block: true,
        generate: |r| watch_request(r).encode_to_vec(),
    });
    all.push(Method {
        path: "/etcdserverpb.Lease/LeaseKeepAlive",
        shape: Shape::Bidi,
        may_block: true,
        generate: |r| pb::LeaseKeepAliveRequest { id: int(r) }.encode_to_vec(),
    });
    all.push(Method {
        path: "/v3lockpb.Lock/Lock",
        shape: Shape::Unary,
        may_block: true,
        generate: |r| {
            lk::LockRequest {
                name: bytes(r),
                lease: int(r),
            }
            .encode_to_vec()
        },
    });
    all.push(Method {
        path: "/v3electionpb.Election/Campaign",
        shape: Shape::Unary,
        may_block: true,
        generate: |r| {
            el::CampaignRequest {
                name: bytes(r),
                lease: int(r),
                value: bytes(r),
            }
            .encode_to_vec()
        },
    });
    all.push(Method {
        path: "/v3electionpb.Election/Observe",
        shape: Shape::ServerStream,
        may_block: true,
        generate: |r| el::LeaderRequest { name: bytes(r) }.encode_to_vec(),
    });
    all
}

/// A user or role name: the reserved ones, empty, or anything.
fn name(rng: &mut fastrand::Rng) -> String {
    match rng.u8(0..5) {
        0 => "root".into(),
        1 => String::new(),
        2 => "u".into(),
        _ => String::from_utf8_lossy(&bytes(rng)).into_owned(),
    }
}

fn permission(rng: &mut fastrand::Rng) -> Option<cairn_proto::authpb::Permission> {
    rng.u8(0..5).ne(&0).then(|| {
        let key = bytes(rng);
        cairn_proto::authpb::Permission {
            perm_type: enum_value(rng),
            range_end: range_end(rng, &key),
            key,
        }
    })
}

/// The Auth service. Random calls may turn authentication on (root with role root exists, then
/// enable); the member must still answer, with refusals.
fn auth_methods() -> Vec<Method> {
    vec![
        method("/etcdserverpb.Auth/AuthEnable", |_| Vec::new()),
        method("/etcdserverpb.Auth/AuthDisable", |_| Vec::new()),
        method("/etcdserverpb.Auth/AuthStatus", |_| Vec::new()),
        method("/etcdserverpb.Auth/Authenticate", |r| {
            pb::AuthenticateRequest {
                name: name(r),
                password: name(r),
            }
            .encode_to_vec()
        }),
        method("/etcdserverpb.Auth/UserAdd", |r| {
            pb::AuthUserAddRequest {
                name: name(r),
                password: name(r),
                options: r.bool().then(|| cairn_proto::authpb::UserAddOptions {
                    no_password: r.bool(),
                }),
                hashed_password: if r.bool() { String::new() } else { name(r) },
            }
            .encode_to_vec()
        }),
        method("/etcdserverpb.Auth/UserGet", |r| {
            pb::AuthUserGetRequest { name: name(r) }.encode_to_vec()
        }),
        method("/etcdserverpb.Auth/UserList", |_| Vec::new()),
        method("/etcdserverpb.Auth/UserDelete", |r| {
            pb::AuthUserDeleteRequest { name: name(r) }.encode_to_vec()
        }),
        method("/etcdserverpb.Auth/UserChangePassword", |r| {
            pb::AuthUserChangePasswordRequest {
                name: name(r),
                password: name(r),
                hashed_password: if r.bool() { String::new() } else { name(r) },
            }
            .encode_to_vec()
        }),
        method("/etcdserverpb.Auth/UserGrantRole", |r| {
            pb::AuthUserGrantRoleRequest {
                user: name(r),
                role: name(r),
            }
            .encode_to_vec()
        }),
        method("/etcdserverpb.Auth/UserRevokeRole", |r| {
            pb::AuthUserRevokeRoleRequest {
                name: name(r),
                role: name(r),
            }
            .encode_to_vec()
        }),
        method("/etcdserverpb.Auth/RoleAdd", |r| {
            pb::AuthRoleAddRequest { name: name(r) }.encode_to_vec()
        }),
        method("/etcdserverpb.Auth/RoleGet", |r| {
            pb::AuthRoleGetRequest { role: name(r) }.encode_to_vec()
        }),
        method("/etcdserverpb.Auth/RoleList", |_| Vec::new()),
        method("/etcdserverpb.Auth/RoleDelete", |r| {
            pb::AuthRoleDeleteRequest { role: name(r) }.encode_to_vec()
        }),
        method("/etcdserverpb.Auth/RoleGrantPermission", |r| {
            pb::AuthRoleGrantPermissionRequest {
                name: name(r),
                perm: permission(r),
            }
            .encode_to_vec()
        }),
        method("/etcdserverpb.Auth/RoleRevokePermission", |r| {
            let key = bytes(r);
            pb::AuthRoleRevokePermissionRequest {
                role: name(r),
                range_end: range_end(r, &key),
                key,
            }
            .encode_to_vec()
        }),
    ]
}

/// Whether a failure is an answer of the member's. `Unknown` counts only when the member sent it
/// (etcd's election service answers "election: not leader" with it); a client sees it too, with
/// a transport error as its source, when the server resets the stream, as a panicking handler does.
fn clear_error(status: &Status) -> bool {
    if status.code() == Code::Unknown {
        return std::error::Error::source(status).is_none() && !status.message().is_empty();
    }
    matches!(
        status.code(),
        Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::Unimplemented
            | Code::Unavailable
            | Code::ResourceExhausted
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Cancelled
            | Code::Internal
    ) && !status.message().is_empty()
}

#[derive(Default)]
struct Tally {
    sent: usize,
    ok: usize,
    refused: usize,
    waited: usize,
    unclear: Vec<String>,
}

async fn call(
    channel: Channel,
    m: &Method,
    body: Vec<u8>,
    tally: &Mutex<Tally>,
    stream_tail: Vec<Vec<u8>>,
) {
    let path: tonic::codegen::http::uri::PathAndQuery = m.path.parse().expect("path");
    let mut grpc = tonic::client::Grpc::new(channel);
    let limit = if m.may_block {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(10)
    };
    let outcome = tokio::time::timeout(limit, async {
        grpc.ready()
            .await
            .map_err(|e| Status::unknown(e.to_string()))?;
        match m.shape {
            Shape::Unary => grpc
                .unary(tonic::Request::new(body), path, Raw)
                .await
                .map(|_| ()),
            Shape::ServerStream => {
                let mut s = grpc
                    .server_streaming(tonic::Request::new(body), path, Raw)
                    .await?
                    .into_inner();
                while s.message().await?.is_some() {}
                Ok(())
            }
            Shape::Bidi => {
                let msgs = std::iter::once(body).chain(stream_tail);
                let mut s = grpc
                    .streaming(tonic::Request::new(futures::stream::iter(msgs)), path, Raw)
                    .await?
                    .into_inner();
                while s.message().await?.is_some() {}
                Ok(())
            }
        }
    })
    .await;
    let mut t = tally.lock().unwrap();
    t.sent += 1;
    match outcome {
        Ok(Ok(())) => t.ok += 1,
        Ok(Err(status)) if clear_error(&status) => t.refused += 1,
        Ok(Err(status)) => t.unclear.push(format!("{}: {status:?}", m.path)),
        Err(_) if m.may_block => t.waited += 1,
        Err(_) => t
            .unclear
            .push(format!("{}: no answer within {limit:?}", m.path)),
    }
}

async fn still_serving(channel: Channel) -> Result<(), String> {
    let mut grpc = tonic::client::Grpc::new(channel);
    let read = pb::RangeRequest {
        key: b"fuzz/".to_vec(),
        range_end: vec![0],
        count_only: true,
        ..Default::default()
    };
    let path = "/etcdserverpb.KV/Range".parse().expect("path");
    tokio::time::timeout(Duration::from_secs(10), async {
        grpc.ready().await.map_err(|e| e.to_string())?;
        match grpc
            .unary(tonic::Request::new(read.encode_to_vec()), path, Raw)
            .await
        {
            Ok(_) => Ok(()),
            // Refused because a random call turned authentication on: still an answer.
            Err(s)
                if s.code() == Code::PermissionDenied
                    || s.message() == "etcdserver: user name is empty" =>
            {
                Ok(())
            }
            Err(s) => Err(format!("{s:?}")),
        }
    })
    .await
    .map_err(|_| "no answer to a read within 10 s".to_string())?
}

/// A random alarm may have stopped writes: clear every raised one, so later rounds still reach
/// the write paths.
async fn clear_alarms(channel: Channel) {
    let mut grpc = tonic::client::Grpc::new(channel);
    let path = "/etcdserverpb.Maintenance/Alarm";
    grpc.ready().await.expect("ready");
    let get = pb::AlarmRequest::default().encode_to_vec();
    let Ok(raised) = grpc
        .unary(tonic::Request::new(get), path.parse().unwrap(), Raw)
        .await
    else {
        return;
    };
    let raised = pb::AlarmResponse::decode(raised.into_inner().as_slice()).expect("alarms");
    for a in raised.alarms {
        let clear = pb::AlarmRequest {
            action: 2,
            member_id: a.member_id,
            alarm: a.alarm,
        };
        grpc.ready().await.expect("ready");
        let _ = grpc
            .unary(
                tonic::Request::new(clear.encode_to_vec()),
                path.parse().unwrap(),
                Raw,
            )
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decoder_survives_random_and_damaged_requests() {
    let (seed, secs) = common::damage::settings(20);
    let panics = common::damage::count_panics();

    let node = common::TestNode::start().await;
    let running = node.node.as_ref().expect("running");
    let client = Channel::from_shared(node.url())
        .unwrap()
        .connect()
        .await
        .expect("client port");
    let peer = Channel::from_shared(format!("http://{}", running.peer_addr()))
        .unwrap()
        .connect()
        .await
        .expect("peer port");

    let methods = methods();
    let tally = Mutex::new(Tally::default());
    let mut rng = fastrand::Rng::with_seed(seed);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut rounds = 0;
    while Instant::now() < deadline {
        rounds += 1;
        // A round: a few concurrent calls, as clients would make them, then a liveness read.
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let m = &methods[rng.usize(0..methods.len())];
                let mut body = (m.generate)(&mut rng);
                if rng.u8(0..3) == 0 {
                    body = damage(&mut rng, body, true);
                }
                let tail = if m.shape == Shape::Bidi {
                    (0..rng.usize(0..4))
                        .map(|_| (m.generate)(&mut rng))
                        .collect()
                } else {
                    Vec::new()
                };
                let channel = if m.path.starts_with("/cairn.raft") {
                    peer.clone()
                } else {
                    client.clone()
                };
                call(channel, m, body, &tally, tail)
            })
            .collect();
        futures::future::join_all(calls).await;
        if let Err(e) = still_serving(client.clone()).await {
            panic!("round {rounds} (seed {seed}): the member stopped serving: {e}");
        }
        clear_alarms(client.clone()).await;
    }
    let t = tally.into_inner().unwrap();
    eprintln!(
        "{rounds} rounds, {} requests: {} answered, {} refused with a status, {} still waiting \
         (blocking calls)",
        t.sent, t.ok, t.refused, t.waited
    );
    assert_eq!(
        panics.load(Ordering::SeqCst),
        0,
        "a handler panicked (seed {seed})"
    );
    assert!(
        t.unclear.is_empty(),
        "answers without a clear status (seed {seed}):\n{}",
        t.unclear.join("\n")
    );
    // Both kinds of outcome happened, or the generators only ever made one of them.
    assert!(
        t.ok > 0 && t.refused > 0,
        "ok {} refused {}",
        t.ok,
        t.refused
    );
}

/// Random bytes as a peer message, at times with a length prefix claiming far more than follows.
fn raft_payload(r: &mut fastrand::Rng) -> Vec<u8> {
    let len = r.usize(0..64);
    let mut data: Vec<u8> = (0..len).map(|_| r.u8(..)).collect();
    if r.bool() {
        let at = r.usize(0..=data.len());
        data.splice(
            at..at,
            [0xfc, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
        );
    }
    cairn_proto::raftpb::RaftPayload { data }.encode_to_vec()
}
