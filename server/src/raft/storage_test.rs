//! openraft's storage conformance suite against the sled log store and state machine.

use openraft::testing::{StoreBuilder, Suite};
use prometheus_client::metrics::histogram::Histogram;

use super::log_store::LogStore;
use super::state_machine::StateMachineStore;
use super::types::{StorageError, TypeConfig};
use crate::backend::Backend;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for SledBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let backend = Backend::open(dir.path(), 1024 * 1024).expect("open sled");
        let histogram = || Histogram::new([1.0]);
        let (log, _flusher) = LogStore::new(&backend, histogram());
        let sm =
            StateMachineStore::open(backend, std::time::Duration::from_secs(600), histogram())?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() -> Result<(), StorageError> {
    Suite::test_all(SledBuilder)
}
