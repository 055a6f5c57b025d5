//! `elect <name> [proposal]`: campaigns with the proposal and, once leader, prints the leader key and value and
//! holds leadership until interrupted; `-l` only observes, printing each leader's key and value.

use anyhow::{bail, Result};
use cairn_client::{Election, Session};
use clap::Args;
use futures::StreamExt;

use crate::Global;

#[derive(Args, Debug)]
pub struct ElectArgs {
    /// The election name
    pub name: String,
    /// The value to announce as leader
    pub proposal: Option<String>,
    /// Observation mode
    #[arg(short, long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub listen: bool,
    /// Timeout for session
    #[arg(long, default_value_t = 60)]
    pub ttl: i64,
}

pub async fn run(g: &Global, a: ElectArgs) -> Result<i32> {
    let p = g.printer();
    let client = g.connect().await?;
    if a.listen {
        let observer = Election::observer(&client, a.name.clone());
        let mut leaders = observer.observe();
        loop {
            tokio::select! {
                next = leaders.next() => match next {
                    Some(Ok(kv)) => p.kv(&kv, false),
                    Some(Err(e)) => return Err(e.into()),
                    None => return Ok(0),
                },
                _ = tokio::signal::ctrl_c() => return Ok(0),
            }
        }
    }
    let Some(proposal) = a.proposal else {
        bail!("no proposal argument but -l not set");
    };
    let mut session = Session::new(&client, a.ttl).await?;
    let mut election = Election::new(&session, a.name.clone());
    let leader = tokio::select! {
        l = election.campaign(proposal) => l?,
        _ = tokio::signal::ctrl_c() => {
            let _ = election.resign().await;
            session.close().await?;
            return Ok(130);
        }
    };
    let held = client.get(leader.key.clone(), None).await?;
    for kv in &held.kvs {
        p.kv(kv, false);
    }
    let lost = tokio::select! {
        _ = tokio::signal::ctrl_c() => None,
        e = session.lost() => Some(e),
    };
    if let Some(e) = lost {
        return Err(e.into());
    }
    election.resign().await?;
    session.close().await?;
    Ok(0)
}
