//! Nemeses: the faults. Each installation reports `installed` (the fault is in place),
//! `skipped` (not possible here, with the reason) or `indeterminate` (attempted, effect unknown).
//! A failure of the harness itself is an error of the run, never a test outcome.
//!
//! Every fault knows how to heal itself; the runner heals whatever is installed before the
//! final phase.

pub mod kill;
pub mod link;
pub mod membership;
pub mod partition;
pub mod pause;
pub mod power;

use serde::{Deserialize, Serialize};

use crate::cluster::{Cluster, ClusterError};

/// The faults by CLI name.
pub const NAMES: &[&str] = &[
    "kill",
    "pause",
    "partition",
    "slow",
    "lossy",
    "membership",
    "power",
];

/// Outcome of installing or healing a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Installed,
    Skipped,
    Indeterminate,
    Healed,
}

/// One line of the nemesis log.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub nemesis: String,
    pub status: Status,
    pub detail: String,
    /// Seconds since the start of the run.
    pub time: f64,
}

/// What a fault left behind that healing must undo.
#[derive(Debug)]
pub enum Undo {
    Restart(Vec<usize>),
    Resume(Vec<usize>),
    Net,
    /// Member index and the id it had when its removal was asked for.
    Readd(usize, u64),
    Nothing,
}

/// Installs the fault named `name`; returns its status, a description and what undoes it.
pub async fn install(
    name: &str,
    cluster: &mut Cluster,
    power: Option<&power::Power>,
) -> Result<(Status, String, Undo), ClusterError> {
    match name {
        "kill" => kill::install(cluster).await,
        "pause" => pause::install(cluster).await,
        "partition" => partition::install(cluster).await,
        "slow" => link::install(cluster, link::Kind::Slow),
        "lossy" => link::install(cluster, link::Kind::Lossy),
        "membership" => membership::install(cluster).await,
        "power" => power::install(cluster, power).await,
        other => Ok((
            Status::Skipped,
            format!("unknown nemesis {other:?}"),
            Undo::Nothing,
        )),
    }
}

/// Undoes what an installation left behind.
pub async fn heal(cluster: &mut Cluster, undo: Undo) -> Result<(Status, String), ClusterError> {
    match undo {
        Undo::Restart(ms) => {
            for &m in &ms {
                cluster.spawn(m)?;
            }
            Ok((Status::Healed, format!("restarted {ms:?}")))
        }
        Undo::Resume(ms) => {
            for &m in &ms {
                cluster.resume(m)?;
            }
            Ok((Status::Healed, format!("resumed {ms:?}")))
        }
        Undo::Net => {
            cluster.net.heal();
            Ok((Status::Healed, "network healed".into()))
        }
        Undo::Readd(m, id) => membership::heal(cluster, m, id).await,
        Undo::Nothing => Ok((Status::Healed, String::new())),
    }
}
