//! SIGSTOP / SIGCONT: a member that stops answering without its connections closing, the way
//! a long GC pause or an overloaded VM looks to its peers.

use super::{Status, Undo};
use crate::cluster::{Cluster, ClusterError};

/// Pauses the leader or a random member.
pub async fn install(cluster: &mut Cluster) -> Result<(Status, String, Undo), ClusterError> {
    let n = cluster.members.len();
    let running: Vec<usize> = (0..n).filter(|i| cluster.is_running(*i)).collect();
    if running.is_empty() {
        return Ok((Status::Skipped, "no member running".into(), Undo::Nothing));
    }
    let target = if fastrand::bool() {
        cluster.leader(&running).await.unwrap_or(running[0])
    } else {
        running[fastrand::usize(..running.len())]
    };
    if cluster.pause(target)? {
        Ok((
            Status::Installed,
            format!("paused {target}"),
            Undo::Resume(vec![target]),
        ))
    } else {
        Ok((
            Status::Skipped,
            format!("member {target} not running"),
            Undo::Nothing,
        ))
    }
}
