//! openraft's storage conformance suite against the log store and state machine.

use openraft::testing::log::{StoreBuilder, Suite};
use prometheus_client::metrics::histogram::Histogram;

use super::log_store::LogStore;
use super::state_machine::StateMachineStore;
use super::types::{StorageError, TypeConfig};
use crate::storage::Backend;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for SledBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let backend = Backend::open(dir.path(), 1024 * 1024).expect("open the store");
        let histogram = || Histogram::new([1.0]);
        let (log, _flusher) = LogStore::new(&backend, histogram()).unwrap();
        let sm = StateMachineStore::open(backend, std::time::Duration::from_secs(600), histogram())
            .expect("open the state machine");
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() -> Result<(), StorageError> {
    Suite::test_all(SledBuilder).await
}

mod snapshots {
    use openraft::impls::leader_id_adv::LeaderId;
    use openraft::storage::RaftStateMachine;
    use openraft::{EntryPayload, RaftSnapshotBuilder};
    use openraft_legacy::network_v1::SnapshotReceiverFactory;
    use prometheus_client::metrics::histogram::Histogram;

    use crate::command::Command;
    use crate::mvcc::PutRequest;
    use crate::raft::state_machine::StateMachineStore;
    use crate::raft::types::{Entry, LogId};
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
        Entry {
            log_id: LogId::new(
                LeaderId {
                    term: 1,
                    node_id: 1,
                },
                index,
            ),
            payload: EntryPayload::Normal(Command::Put(PutRequest {
                key: key.into(),
                value: value.into(),
                ..Default::default()
            })),
        }
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
