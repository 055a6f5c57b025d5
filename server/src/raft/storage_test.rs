//! openraft's storage conformance suite against the log store and state machine.

use openraft::testing::log::{StoreBuilder, Suite};
use prometheus_client::metrics::histogram::Histogram;

use super::log_store::{ClientWork, LogStore, LoneWrites};
use super::state_machine::StateMachineStore;
use super::types::{StorageError, TypeConfig};
use crate::storage::Backend;

/// `lone_writes`: where the log store syncs lone writes, as a member's role sets it.
struct SledBuilder {
    lone_writes: LoneWrites,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for SledBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let backend = Backend::open(dir.path(), 1024 * 1024).expect("open the store");
        let histogram = || Histogram::new([1.0]);
        let (log, _flusher) = LogStore::new(&backend, histogram(), ClientWork::default()).unwrap();
        log.lone_writes().set(self.lone_writes);
        let sm = StateMachineStore::open(backend, std::time::Duration::from_secs(600), histogram())
            .expect("open the state machine");
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_syncing_lone_writes_itself() -> Result<(), StorageError> {
    Suite::test_all(SledBuilder {
        lone_writes: LoneWrites::AtOnce,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_with_every_sync_on_the_flusher() -> Result<(), StorageError> {
    Suite::test_all(SledBuilder {
        lone_writes: LoneWrites::Flusher,
    })
    .await
}

/// An entry of term 1 carrying `cmd`.
fn entry(index: u64, cmd: crate::command::Command) -> super::types::Entry {
    use openraft::impls::leader_id_adv::LeaderId;
    super::types::Entry {
        log_id: super::types::LogId::new(
            LeaderId {
                term: 1,
                node_id: 1,
            },
            index,
        ),
        payload: openraft::EntryPayload::Normal(cmd),
    }
}

/// Which appends the log store syncs itself and which it hands to its flusher.
mod lone_writes {
    use std::time::Duration;

    use openraft::storage::{IOFlushed, RaftLogStorage};
    use openraft::type_config::TypeConfigExt;
    use openraft::RaftLogReader;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::Histogram;
    use tokio::sync::oneshot;

    use crate::command::Command;
    use crate::mvcc::PutRequest;
    use crate::raft::log_store::{ClientWork, LogStore, LoneWrites};
    use crate::raft::types::{Entry, TypeConfig};
    use crate::storage::Backend;

    fn put(key: &str) -> Command {
        Command::Put(PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            ..Default::default()
        })
    }

    type Flushed = oneshot::Receiver<Result<(), std::io::Error>>;

    async fn append(log: &mut LogStore, e: Entry) -> Flushed {
        let (tx, rx) = TypeConfig::oneshot();
        log.append([e], IOFlushed::signal(tx)).await.unwrap();
        rx
    }

    async fn durable(rx: Flushed) {
        tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .expect("the append was not made durable within 10 s")
            .expect("the callback was dropped")
            .expect("the sync failed");
    }

    fn store(dir: &std::path::Path, lone_writes: LoneWrites) -> LogStore {
        store_with(dir, lone_writes, Gauge::default())
    }

    /// `client_writes`: client requests waiting on the member, as its proposer counts its writes.
    fn store_with(
        dir: &std::path::Path,
        lone_writes: LoneWrites,
        client_writes: Gauge,
    ) -> LogStore {
        let backend = Backend::open(dir, 1024 * 1024).expect("open the store");
        let (log, _flusher) = LogStore::new(
            &backend,
            Histogram::new([1.0]),
            ClientWork(vec![client_writes]),
        )
        .unwrap();
        log.lone_writes().set(lone_writes);
        log
    }

    #[tokio::test]
    async fn an_idle_follower_makes_a_lone_write_durable_before_append_returns() {
        let dir = tempfile::tempdir().unwrap();
        let client_writes = Gauge::default();
        let mut log = store_with(
            dir.path(),
            LoneWrites::AtOnceWhileIdle,
            client_writes.clone(),
        );
        let mut rx = append(&mut log, super::entry(1, put("a"))).await;
        assert!(
            matches!(rx.try_recv(), Ok(Ok(()))),
            "an idle follower left a lone write's sync to the flusher"
        );
        // With a client write of its own waiting, the sync goes to the flusher, and still ends
        // durable.
        client_writes.inc();
        durable(append(&mut log, super::entry(2, put("b"))).await).await;
        assert_eq!(log.try_get_log_entries(1..3).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_sole_voter_makes_a_lone_write_durable_before_append_returns() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = store(dir.path(), LoneWrites::AtOnce);
        let mut rx = append(&mut log, super::entry(1, put("a"))).await;
        assert!(
            matches!(rx.try_recv(), Ok(Ok(()))),
            "a lone write's sync was left to the flusher"
        );
        let read = log.try_get_log_entries(1..2).await.unwrap();
        assert_eq!(read.len(), 1);
    }

    #[tokio::test]
    async fn entries_with_several_writes_and_other_members_lone_writes_go_to_the_flusher() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = store(dir.path(), LoneWrites::AtOnce);
        let batch = Command::Batch(vec![put("a"), put("b")]);
        durable(append(&mut log, super::entry(1, batch)).await).await;
        log.lone_writes().set(LoneWrites::Flusher);
        durable(append(&mut log, super::entry(2, put("c"))).await).await;
        assert_eq!(log.try_get_log_entries(1..3).await.unwrap().len(), 2);
    }

    /// openraft takes an append's completion as covering every earlier one: a lone write synced
    /// on the spot must not complete while an earlier append still waits in the flusher's queue.
    #[tokio::test]
    async fn a_lone_write_never_completes_before_an_earlier_queued_append() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = store(dir.path(), LoneWrites::AtOnce);
        for round in 0..50u64 {
            let first = super::entry(2 * round + 1, Command::Batch(vec![put("a"), put("b")]));
            let mut queued = append(&mut log, first).await;
            let mut lone = append(&mut log, super::entry(2 * round + 2, put("c"))).await;
            let lone_done = lone.try_recv();
            let queued_done = queued.try_recv();
            if lone_done.is_ok() {
                assert!(
                    queued_done.is_ok(),
                    "round {round}: the lone write completed before the append queued ahead of it"
                );
            }
            // Both end durable, whichever way they went.
            if lone_done.is_err() {
                durable(lone).await;
            }
            if queued_done.is_err() {
                durable(queued).await;
            }
        }
    }
}

mod snapshots {
    use openraft::storage::RaftStateMachine;
    use openraft::RaftSnapshotBuilder;
    use openraft_legacy::network_v1::SnapshotReceiverFactory;
    use prometheus_client::metrics::histogram::Histogram;

    use crate::command::Command;
    use crate::mvcc::PutRequest;
    use crate::raft::state_machine::StateMachineStore;
    use crate::raft::types::Entry;
    use crate::storage::Backend;

    fn open(dir: &std::path::Path) -> (Backend, StateMachineStore) {
        // The store dropped just before may still hold sled's file lock for a moment (its last
        // handle goes with a background thread), as a restarted process can find its
        // predecessor not yet gone: wait for it, within bounds.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let backend = loop {
            match Backend::open(dir, 1024 * 1024) {
                Ok(b) => break b,
                Err(e)
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("open the store: {e:?}"),
            }
        };
        let sm = StateMachineStore::open(
            backend.clone(),
            std::time::Duration::from_secs(600),
            Histogram::new([1.0]),
        )
        .expect("open state machine");
        (backend, sm)
    }

    fn put(index: u64, key: &str, value: &str) -> Entry {
        super::entry(
            index,
            Command::Put(PutRequest {
                key: key.into(),
                value: value.into(),
                ..Default::default()
            }),
        )
    }

    /// Applies entries as openraft hands them over, without waiting callers.
    async fn apply(sm: &mut StateMachineStore, entries: Vec<Entry>) {
        let stream = futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))));
        sm.apply(stream).await.unwrap();
    }

    fn rows(backend: &Backend) -> Vec<(Vec<u8>, Vec<u8>)> {
        backend
            .sm()
            .iter()
            .map(|r| r.unwrap())
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect()
    }

    /// A store that applied a write of its own, then received and installed `data`.
    async fn receive_into_used_store(
        dir: &std::path::Path,
        meta: &crate::raft::types::SnapshotMeta,
        data: &[u8],
    ) -> (Backend, StateMachineStore) {
        let (backend, mut sm) = open(dir);
        apply(&mut sm, vec![put(1, "other", "x")]).await;
        let mut file = sm.begin_receiving_snapshot().await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut file, data)
            .await
            .unwrap();
        sm.install_snapshot(meta, file).await.unwrap();
        (backend, sm)
    }

    #[tokio::test]
    async fn an_install_cut_short_is_redone_when_the_store_opens() {
        let src = tempfile::tempdir().unwrap();
        let (_, mut source) = open(src.path());
        let entries: Vec<Entry> = (1..=200)
            .map(|i| put(i, &format!("k{}", i % 37), &format!("v{i}")))
            .collect();
        apply(&mut source, entries).await;
        let snapshot = source
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let meta = snapshot.meta.clone();
        let mut data = Vec::new();
        {
            use tokio::io::{AsyncReadExt, AsyncSeekExt};
            let mut file = snapshot.snapshot;
            file.rewind().await.unwrap();
            file.read_to_end(&mut data).await.unwrap();
        }

        // Received and installed whole, into a store that held other data.
        let whole = tempfile::tempdir().unwrap();
        let expected = {
            let (backend, sm) = receive_into_used_store(whole.path(), &meta, &data).await;
            assert_eq!(sm.state().current_revision(), 201);
            rows(&backend)
        };

        // The same install, cut short after the store was marked and partly cleared.
        let cut = tempfile::tempdir().unwrap();
        {
            let (backend, _sm) = receive_into_used_store(cut.path(), &meta, &data).await;
            // Roll the rows back to a torn state under the marker, as a crash part way would leave.
            backend.sm().insert(b"m/installing", b"x".to_vec()).unwrap();
            let keys: Vec<_> = backend.sm().iter().keys().map(|k| k.unwrap()).collect();
            for key in keys.iter().step_by(2) {
                if &key[..] != b"m/installing" {
                    backend.sm().remove(key).unwrap();
                }
            }
            backend.sm().insert(b"r-garbage", b"x".to_vec()).unwrap();
            backend.flush_blocking().unwrap();
        }
        let (backend, sm) = open(cut.path());
        assert_eq!(rows(&backend), expected);
        assert_eq!(sm.state().current_revision(), 201);
        // The snapshot stays the current one, ready to be sent on.
        let mut sm = sm;
        let current = sm
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("a snapshot");
        assert_eq!(current.meta, meta);
    }
}
