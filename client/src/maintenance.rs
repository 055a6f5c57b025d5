//! Maintenance calls: status, hashes, alarms, defragmentation, snapshots and leader transfer.
//!
//! Status, hash and alarm listing are idempotent; a caller that wants one specific member's answer (as
//! `cairnctl endpoint status` does) connects a client to that endpoint alone.

use cairn_proto::etcdserverpb::alarm_request::AlarmAction as PbAlarmAction;
use cairn_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse, HashKvRequest,
    HashKvResponse, MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest, SnapshotResponse,
    StatusRequest, StatusResponse,
};
use futures::{Stream, StreamExt};

use crate::client::Client;
use crate::error::{Error, Result};

/// What an [`Client::alarm`] call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlarmAction {
    /// Lists raised alarms.
    Get,
    /// Raises an alarm.
    Activate,
    /// Clears an alarm.
    Deactivate,
}

impl Client {
    /// The answering member's status: version, db size, leader, raft indexes.
    pub async fn status(&self) -> Result<StatusResponse> {
        self.unary(true, |ch, _| async move {
            Ok(MaintenanceClient::new(ch)
                .status(StatusRequest {})
                .await?
                .into_inner())
        })
        .await
    }

    /// The hash of the key-value store up to `revision` (0: latest).
    pub async fn hash_kv(&self, revision: i64) -> Result<HashKvResponse> {
        self.unary(true, |ch, _| async move {
            Ok(MaintenanceClient::new(ch)
                .hash_kv(HashKvRequest { revision })
                .await?
                .into_inner())
        })
        .await
    }

    /// Lists, raises or clears alarms. `member_id` 0 with `AlarmType::None` lists all.
    pub async fn alarm(
        &self,
        action: AlarmAction,
        member_id: u64,
        alarm: AlarmType,
    ) -> Result<AlarmResponse> {
        let req = AlarmRequest {
            action: match action {
                AlarmAction::Get => PbAlarmAction::Get,
                AlarmAction::Activate => PbAlarmAction::Activate,
                AlarmAction::Deactivate => PbAlarmAction::Deactivate,
            } as i32,
            member_id,
            alarm: alarm as i32,
        };
        self.unary(action == AlarmAction::Get, |ch, _| async move {
            Ok(MaintenanceClient::new(ch).alarm(req).await?.into_inner())
        })
        .await
    }

    /// Defragments the answering member's backend.
    pub async fn defragment(&self) -> Result<DefragmentResponse> {
        self.unary(false, |ch, _| async move {
            Ok(MaintenanceClient::new(ch)
                .defragment(DefragmentRequest {})
                .await?
                .into_inner())
        })
        .await
    }

    /// Transfers leadership to member `target_id` (must be sent to the leader).
    pub async fn move_leader(&self, target_id: u64) -> Result<MoveLeaderResponse> {
        self.unary(false, |ch, _| async move {
            Ok(MaintenanceClient::new(ch)
                .move_leader(MoveLeaderRequest { target_id })
                .await?
                .into_inner())
        })
        .await
    }

    /// Streams a snapshot of the answering member's backend as chunks. Opening the stream fails over; a
    /// stream that breaks midway ends with an error (a snapshot cannot be resumed).
    pub async fn snapshot(
        &self,
    ) -> Result<impl Stream<Item = Result<SnapshotResponse>> + Send + Unpin + 'static> {
        let stream = self
            .unary(true, |ch, _| async move {
                Ok(MaintenanceClient::new(ch)
                    .snapshot(SnapshotRequest {})
                    .await?
                    .into_inner())
            })
            .await?;
        Ok(stream.map(|r| r.map_err(Error::from)))
    }
}
