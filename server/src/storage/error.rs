//! What can go wrong below consensus: sled, the file system, a row that does not decode, a data
//! dir left torn by a restore or a snapshot install, a backup that cannot be restored.
//!
//! Must never import `raft/` or `grpc/`: consensus maps these to its own errors.

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("encoding a row: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("decoding a row: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error(transparent)]
    RowWrite(#[from] RowWriteError),
    #[error(transparent)]
    Mvcc(#[from] crate::mvcc::MvccError),
    #[error("corrupt store: {0}")]
    Corrupt(&'static str),
    #[error("a restore into this data dir was cut short: remove the data dir and restore again")]
    RestoreCutShort,
    #[error("a snapshot install was cut short and its file is gone")]
    InstallFileGone,
    #[error("the current snapshot file keeps disappearing")]
    SnapshotVanishing,
    #[error("a storage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A redo record (see `backend::RowWrites`) that cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum RowWriteError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("redo record cut short")]
    Truncated,
    #[error("redo record: unknown change tag {0}")]
    Tag(u8),
}

/// Why a backup or etcd snapshot file cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    #[error("not a snapshot file: neither an etcd snapshot (bbolt) nor a Cairn backup")]
    NotASnapshot,
    #[error(
        "the etcd snapshot has no SHA-256 trailer (its size, {0} bytes, is not 512·n + 32): \
         not a complete `etcdctl snapshot save` file (a database copied from an etcd \
         data dir has none: save a snapshot of it with etcdctl)"
    )]
    NoTrailer(u64),
    #[error("etcd snapshot: {0}")]
    Bbolt(#[from] super::bbolt::BboltError),
    #[error("snapshot file is corrupt: its SHA-256 does not match its content")]
    Checksum,
    #[error("snapshot image is unreadable: {0}")]
    Image(String),
    #[error("data dir {0} already holds a store; restore needs a new one")]
    DataDirInUse(String),
    #[error("writing the restored store: {0}")]
    Storage(String),
}
