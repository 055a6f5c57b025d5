//! kill -9 and restart: one random member, a majority, or the current leader.

use super::{Status, Undo};
use crate::cluster::{Cluster, ClusterError};
use std::time::Duration;

/// Kills a random target set; healing restarts it from its data dir.
pub async fn install(cluster: &mut Cluster) -> Result<(Status, String, Undo), ClusterError> {
    let n = cluster.members.len();
    let running: Vec<usize> = (0..n).filter(|i| cluster.is_running(*i)).collect();
    if running.is_empty() {
        return Ok((Status::Skipped, "no member running".into(), Undo::Nothing));
    }
    let (what, targets) = match fastrand::u8(..3) {
        0 => ("one", vec![running[fastrand::usize(..running.len())]]),
        1 => {
            let mut all = running.clone();
            fastrand::shuffle(&mut all);
            all.truncate(n / 2 + 1);
            ("majority", all)
        }
        _ => match cluster.leader(&running).await {
            Some(l) => ("leader", vec![l]),
            None => ("one (no agreed leader)", vec![running[0]]),
        },
    };
    for &t in &targets {
        cluster.kill(t);
    }
    // Give the survivors a moment to notice before anything else changes.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok((
        Status::Installed,
        format!("killed {what}: {targets:?}"),
        Undo::Restart(targets),
    ))
}
