//! The bytes already on members' disks stay readable: log entries carrying every kind of command,
//! membership and blank entries, the vote, log ids and the stored membership, checked against
//! their encodings as data dirs hold them. Reordering `Command`'s variants, or an openraft type
//! changing shape across a version, fails here before a member misreads its own log (or a peer's
//! entries during a rolling upgrade).

use std::collections::{BTreeMap, BTreeSet};

use openraft::impls::leader_id_adv::LeaderId;
use openraft::{EntryPayload, Membership};

use super::types::{Entry, LogId, Member, StoredMembership, Vote};
use crate::auth::AuthOp;
use crate::codec::{decode, encode};
use crate::command::Command;
use crate::mvcc::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn put() -> PutRequest {
    PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        lease: 7,
        prev_kv: true,
        ignore_value: false,
        ignore_lease: false,
    }
}

fn commands() -> Vec<(&'static str, Command)> {
    let txn = TxnRequest {
        compare: vec![Compare {
            key: b"k".to_vec(),
            range_end: Vec::new(),
            result: CompareResult::NotEqual,
            target: CompareTarget::ModRevision(3),
        }],
        success: vec![RequestOp::Put(put())],
        failure: vec![RequestOp::Range(RangeRequest {
            key: b"k".to_vec(),
            limit: 1,
            ..Default::default()
        })],
    };
    vec![
        ("put", Command::Put(put())),
        (
            "delete_range",
            Command::DeleteRange(DeleteRangeRequest {
                key: b"a".to_vec(),
                range_end: b"b".to_vec(),
                prev_kv: false,
            }),
        ),
        ("txn", Command::Txn(txn)),
        ("compact", Command::Compact(42)),
        ("lease_grant", Command::LeaseGrant { id: 9, ttl: 60 }),
        ("lease_revoke", Command::LeaseRevoke(9)),
        (
            "publish",
            Command::Publish {
                id: 5,
                name: "m0".into(),
                client_urls: vec!["http://127.0.0.1:2379".into()],
            },
        ),
        (
            "alarm",
            Command::Alarm {
                activate: true,
                member: 5,
                alarm: 1,
            },
        ),
        (
            "batch",
            Command::Batch(vec![Command::Compact(1), Command::LeaseRevoke(2)]),
        ),
        ("auth", Command::Auth(AuthOp::RoleAdd("r".into()))),
        (
            "authed",
            Command::Authed {
                user: "u".into(),
                revision: 3,
                cmd: Box::new(Command::Compact(1)),
            },
        ),
    ]
}

/// The encodings as members have written them. A new `Command` variant goes after the last one
/// and gets a line here; these lines never change.
const COMMANDS: &[(&str, &str)] = &[
    ("put", "00016b01760e010000"),
    ("delete_range", "010161016200"),
    (
        "txn",
        "0201016b000302060101016b01760e0100000100016b0002000000000000000000",
    ),
    ("compact", "0354"),
    ("lease_grant", "041278"),
    ("lease_revoke", "0512"),
    (
        "publish",
        "0605026d300115687474703a2f2f3132372e302e302e313a32333739",
    ),
    ("alarm", "07010502"),
    ("batch", "080203020504"),
    ("auth", "09070172"),
    ("authed", "0a0175030302"),
];

#[test]
fn commands_keep_their_encoding() {
    for (name, cmd) in commands() {
        let bytes = encode(&cmd).expect("encode");
        let want = COMMANDS
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no recorded encoding for {name}: {}", hex(&bytes)))
            .1;
        assert_eq!(hex(&bytes), want, "{name}");
        assert_eq!(decode::<Command>(&bytes).expect("decode"), cmd, "{name}");
    }
}

fn membership() -> Membership<u64, Member> {
    let voters = BTreeSet::from([1u64, 2]);
    let nodes = BTreeMap::from([
        (
            1u64,
            Member {
                name: "m1".into(),
                peer_urls: vec!["http://127.0.0.1:2380".into()],
                client_urls: Vec::new(),
                promote: false,
            },
        ),
        (2, Member::default()),
        (3, Member::default()),
    ]);
    Membership::new(vec![voters], nodes).expect("a valid membership")
}

#[test]
fn raft_state_keeps_its_encoding() {
    let log_id = LogId::new(
        LeaderId {
            term: 3,
            node_id: 1,
        },
        17,
    );
    let entries: Vec<(&str, Entry, &str)> = vec![
        (
            "normal",
            Entry {
                log_id,
                payload: EntryPayload::Normal(Command::Compact(1)),
            },
            "030111010302",
        ),
        (
            "blank",
            Entry {
                log_id,
                payload: EntryPayload::Blank,
            },
            "03011100",
        ),
        (
            "membership",
            Entry {
                log_id,
                payload: EntryPayload::Membership(membership()),
            },
            "03011102010201020301026d310115687474703a2f2f3132372e302e302e313a32333830000002000000000300000000",
        ),
    ];
    for (name, entry, want) in entries {
        let bytes = encode(&entry).expect("encode");
        assert_eq!(hex(&bytes), want, "{name} entry");
        let back: Entry = decode(&bytes).expect("decode");
        assert_eq!(back.log_id, entry.log_id, "{name}");
    }
    let vote = Vote::new_committed(4, 2);
    assert_eq!(hex(&encode(&vote).unwrap()), "040201", "vote");
    assert_eq!(decode::<Vote>(&encode(&vote).unwrap()).unwrap(), vote);
    assert_eq!(hex(&encode(&Some(log_id)).unwrap()), "01030111", "log id");
    let stored = StoredMembership::new(Some(log_id), membership());
    let bytes = encode(&stored).unwrap();
    assert_eq!(
        hex(&bytes),
        "01030111010201020301026d310115687474703a2f2f3132372e302e302e313a32333830000002000000000300000000",
        "stored membership"
    );
    assert_eq!(decode::<StoredMembership>(&bytes).unwrap(), stored);
}

/// A stored key revision, as the state machine's rows hold it.
#[test]
fn stored_revisions_keep_their_encoding() {
    use crate::mvcc::KeyValue;
    use crate::storage::keys::StoredKv;
    let row = StoredKv {
        kv: KeyValue {
            key: b"k".to_vec(),
            create_revision: 2,
            mod_revision: 300,
            version: 3,
            value: vec![0xff; 3],
            lease: 7,
        },
        tombstone: false,
    };
    let bytes = encode(&row).expect("encode");
    assert_eq!(hex(&bytes), "016b04fb58020603ffffff0e00");
    let back: StoredKv = decode(&bytes).expect("decode");
    assert_eq!((back.kv, back.tombstone), (row.kv, row.tombstone));
}
