//! Cluster membership calls. Listing is idempotent and fails over; changes are not retried once sent.

use cairn_proto::etcdserverpb::cluster_client::ClusterClient;
use cairn_proto::etcdserverpb::{
    MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};

use crate::client::Client;
use crate::error::Result;

impl Client {
    /// Every member with its id, name, peer and client URLs.
    pub async fn member_list(&self) -> Result<MemberListResponse> {
        self.unary(true, |ch, _| async move {
            Ok(ClusterClient::new(ch)
                .member_list(MemberListRequest {
                    linearizable: false,
                })
                .await?
                .into_inner())
        })
        .await
    }

    /// Adds a member (a learner when `is_learner`) with the given peer URLs.
    pub async fn member_add(
        &self,
        peer_urls: Vec<String>,
        is_learner: bool,
    ) -> Result<MemberAddResponse> {
        let req = MemberAddRequest {
            peer_ur_ls: peer_urls,
            is_learner,
        };
        self.unary(false, |ch, _| {
            let req = req.clone();
            async move { Ok(ClusterClient::new(ch).member_add(req).await?.into_inner()) }
        })
        .await
    }

    /// Removes a member by id.
    pub async fn member_remove(&self, id: u64) -> Result<MemberRemoveResponse> {
        self.unary(false, |ch, _| async move {
            Ok(ClusterClient::new(ch)
                .member_remove(MemberRemoveRequest { id })
                .await?
                .into_inner())
        })
        .await
    }

    /// Changes a member's peer URLs.
    pub async fn member_update(
        &self,
        id: u64,
        peer_urls: Vec<String>,
    ) -> Result<MemberUpdateResponse> {
        let req = MemberUpdateRequest {
            id,
            peer_ur_ls: peer_urls,
        };
        self.unary(false, |ch, _| {
            let req = req.clone();
            async move {
                Ok(ClusterClient::new(ch)
                    .member_update(req)
                    .await?
                    .into_inner())
            }
        })
        .await
    }

    /// Promotes a learner to a voting member.
    pub async fn member_promote(&self, id: u64) -> Result<MemberPromoteResponse> {
        self.unary(false, |ch, _| async move {
            Ok(ClusterClient::new(ch)
                .member_promote(MemberPromoteRequest { id })
                .await?
                .into_inner())
        })
        .await
    }
}
