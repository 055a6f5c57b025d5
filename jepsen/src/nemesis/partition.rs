//! Network partitions through the peer proxies: isolate the leader, split into a majority and
//! a minority, or a ring where every member sees a different majority.

use super::{Status, Undo};
use crate::cluster::{Cluster, ClusterError};

/// The shapes of partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    IsolateLeader,
    MajorityMinority,
    Ring,
}

/// Installs a random partition shape.
pub async fn install(cluster: &mut Cluster) -> Result<(Status, String, Undo), ClusterError> {
    let shape = match fastrand::u8(..3) {
        0 => Shape::IsolateLeader,
        1 => Shape::MajorityMinority,
        _ => Shape::Ring,
    };
    install_shape(cluster, shape).await
}

/// Installs the given partition shape.
pub async fn install_shape(
    cluster: &mut Cluster,
    shape: Shape,
) -> Result<(Status, String, Undo), ClusterError> {
    let n = cluster.members.len();
    let mut all: Vec<usize> = (0..n).collect();
    match shape {
        Shape::IsolateLeader => {
            let running: Vec<usize> = (0..n).filter(|i| cluster.is_running(*i)).collect();
            let Some(l) = cluster.leader(&running).await else {
                return Ok((
                    Status::Skipped,
                    "no agreed leader to isolate".into(),
                    Undo::Nothing,
                ));
            };
            let rest: Vec<usize> = all.into_iter().filter(|i| *i != l).collect();
            cluster.net.partition(&[vec![l], rest.clone()]);
            Ok((
                Status::Installed,
                format!("isolated leader {l} from {rest:?}"),
                Undo::Net,
            ))
        }
        Shape::MajorityMinority => {
            fastrand::shuffle(&mut all);
            let minority = all.split_off(n / 2 + 1);
            cluster.net.partition(&[all.clone(), minority.clone()]);
            Ok((
                Status::Installed,
                format!("majority {all:?} | minority {minority:?}"),
                Undo::Net,
            ))
        }
        Shape::Ring => {
            if n < 5 {
                // With three members every member neighbours both others: a ring cuts nothing,
                // so fall back to a majority/minority split.
                return Box::pin(install_shape(cluster, Shape::MajorityMinority)).await;
            }
            cluster.net.ring(n);
            Ok((Status::Installed, format!("ring of {n}"), Undo::Net))
        }
    }
}
