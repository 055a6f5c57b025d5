//! Power loss: the member's data dir sits on the harness's lazy filesystem
//! ([`crate::lazyfs`]), which keeps written data in memory until fsync. A power cut kills the
//! member with SIGKILL, throws away everything it wrote but did not sync, and restarts it from
//! what reached the disk, as Jepsen's lazyfs does.

use super::{Status, Undo};
use crate::cluster::{Cluster, ClusterError};
use crate::lazyfs::LazyFs;

/// The lazy filesystem under the run's data dirs, when one could be mounted.
pub type Power = LazyFs;

/// Cuts power to one random member, or reports why it cannot.
pub async fn install(
    cluster: &mut Cluster,
    power: Option<&Power>,
) -> Result<(Status, String, Undo), ClusterError> {
    let Some(fs) = power else {
        return Ok((
            Status::Skipped,
            "data dirs are not on a lazy filesystem (FUSE unavailable for this run)".into(),
            Undo::Nothing,
        ));
    };
    let n = cluster.members.len();
    let target = fastrand::usize(..n);
    if !cluster.is_running(target) {
        return Ok((
            Status::Skipped,
            format!("member {target} not running"),
            Undo::Nothing,
        ));
    }
    cluster.kill(target);
    let rel = cluster.members[target]
        .data_dir
        .strip_prefix(fs.mountpoint())
        .map(|p| p.to_path_buf())
        .unwrap_or_default();
    let dropped = fs.power_loss(&rel);
    Ok((
        Status::Installed,
        format!("power cut on {target}: dropped {dropped} unsynced bytes"),
        Undo::Restart(vec![target]),
    ))
}
