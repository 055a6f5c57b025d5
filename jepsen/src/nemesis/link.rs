//! Slow and lossy links: delay (with jitter) or retransmission stalls on a random subset of
//! ordered links. See [`crate::net`] for why loss is modeled as stalls on a TCP stream.

use std::time::Duration;

use super::{Status, Undo};
use crate::cluster::{Cluster, ClusterError};
use crate::net::LinkRule;

/// Slow or lossy.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Slow,
    Lossy,
}

/// Degrades every link out of one random member, plus a few random others.
pub fn install(cluster: &mut Cluster, kind: Kind) -> Result<(Status, String, Undo), ClusterError> {
    let n = cluster.members.len();
    let victim = fastrand::usize(..n);
    let rule = match kind {
        Kind::Slow => LinkRule {
            delay: Duration::from_millis(fastrand::u64(50..250)),
            jitter: Duration::from_millis(50),
            ..Default::default()
        },
        Kind::Lossy => LinkRule {
            loss: 0.2,
            jitter: Duration::from_millis(10),
            ..Default::default()
        },
    };
    let mut links = Vec::new();
    for other in (0..n).filter(|o| *o != victim) {
        for (a, b) in [(victim, other), (other, victim)] {
            cluster.net.set(a, b, rule);
            links.push((a, b));
        }
    }
    Ok((
        Status::Installed,
        format!("{kind:?} {rule:?} on {links:?}"),
        Undo::Net,
    ))
}
