//! Membership change: remove a member through the Cluster API, stop it, wipe its data, then
//! add it back (MemberAdd) and start it as a joining member, as an operator replacing a disk
//! would. Reported as skipped when the server does not implement membership changes.

use std::time::Duration;

use super::{Status, Undo};
use crate::cluster::{Cluster, ClusterError};
use crate::workload::client::Conn;

fn conn_to_other(cluster: &Cluster, not: usize) -> Option<Conn> {
    (0..cluster.members.len())
        .find(|i| *i != not && cluster.is_running(*i))
        .map(|i| {
            Conn::connect(
                &cluster.members[i].url(),
                cluster.options(),
                Duration::from_secs(5),
            )
        })
}

/// Removes a random member (never the last ones needed for a quorum of the rest).
pub async fn install(cluster: &mut Cluster) -> Result<(Status, String, Undo), ClusterError> {
    let n = cluster.members.len();
    let target = fastrand::usize(..n);
    let Some(conn) = conn_to_other(cluster, target) else {
        return Ok((
            Status::Skipped,
            "no other member running".into(),
            Undo::Nothing,
        ));
    };
    let members = match conn.member_list().await {
        Ok(m) => m,
        Err(e) if e.code == tonic::Code::Unimplemented => {
            return Ok((Status::Skipped, format!("server: {e}"), Undo::Nothing))
        }
        Err(e) => {
            return Ok((
                Status::Skipped,
                format!("member list failed: {e}"),
                Undo::Nothing,
            ))
        }
    };
    let name = cluster.members[target].name.clone();
    let Some(id) = members.iter().find(|m| m.name == name).map(|m| m.id) else {
        return Ok((
            Status::Skipped,
            format!("{name} not in the member list"),
            Undo::Nothing,
        ));
    };
    match conn.member_remove(id).await {
        Ok(()) => {
            cluster.kill(target);
            Ok((
                Status::Installed,
                format!("removed {name} ({id:x})"),
                Undo::Readd(target, id),
            ))
        }
        Err(e) if e.code == tonic::Code::Unimplemented => Ok((
            Status::Skipped,
            format!("MemberRemove unimplemented: {e}"),
            Undo::Nothing,
        )),
        Err(e) if e.definite => Ok((
            Status::Skipped,
            format!("MemberRemove refused: {e}"),
            Undo::Nothing,
        )),
        // It may or may not have been removed; healing re-adds it either way.
        Err(e) => Ok((
            Status::Indeterminate,
            format!("MemberRemove: {e}"),
            Undo::Readd(target, id),
        )),
    }
}

/// Wipes the removed member's data, adds it back and starts it as joining.
pub async fn heal(
    cluster: &mut Cluster,
    target: usize,
    old_id: u64,
) -> Result<(Status, String), ClusterError> {
    cluster.kill(target);
    let Some(conn) = conn_to_other(cluster, target) else {
        return Ok((Status::Indeterminate, "no member to add through".into()));
    };
    // A removal with an unknown outcome may not have happened: then the member is still a
    // voter and must come back with its data, never wiped (that would be a lost disk).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let still_member = loop {
        match conn.member_list().await {
            Ok(members) => break members.iter().any(|m| m.id == old_id),
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            Err(e) => return Ok((Status::Indeterminate, format!("member list failed: {e}"))),
        }
    };
    if still_member {
        cluster.spawn(target)?;
        return Ok((
            Status::Healed,
            format!("removal of {old_id:x} had not happened; restarted {target} with its data"),
        ));
    }
    let dir = cluster.members[target].data_dir.clone();
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let url = cluster.members[target].peer_url();
    // A lost leader makes MemberAdd fail or leaves its outcome unknown; the member list tells
    // whether it happened, so retry until the member is in or the time is up.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        if let Ok(members) = conn.member_list().await {
            if let Some(m) = members.iter().find(|m| m.peer_ur_ls.contains(&url)) {
                let view: Vec<usize> = (0..cluster.members.len()).collect();
                cluster.spawn_joining(target, &view)?;
                return Ok((
                    Status::Healed,
                    format!("re-added member {target} as {:x}", m.id),
                ));
            }
        }
        if let Err(e) = conn.member_add(&url).await {
            last = e.to_string();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok((
        Status::Indeterminate,
        format!("MemberAdd did not succeed: {last}"),
    ))
}
