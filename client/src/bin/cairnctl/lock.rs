//! `lock <name> [command ...]`: acquires a named lock (a [`cairn_client::Mutex`] on a session lease). With a
//! command, runs it while holding the lock with `ETCD_LOCK_KEY`/`ETCD_LOCK_REV` (and `CAIRN_LOCK_KEY`/
//! `CAIRN_LOCK_REV`) set — the revision is the fencing token — and exits with its status. Without one, prints
//! the lock key and holds the lock until interrupted.

use anyhow::{Context, Result};
use cairn_client::{Mutex, Session};
use clap::Args;

use crate::Global;

#[derive(Args, Debug)]
pub struct LockArgs {
    /// The lock name
    pub name: String,
    /// Command to run while holding the lock
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
    /// Timeout for session
    #[arg(long, default_value_t = 10)]
    pub ttl: i64,
}

pub async fn run(g: &Global, a: LockArgs) -> Result<i32> {
    let p = g.printer();
    let client = g.connect().await?;
    let session = Session::new(&client, a.ttl).await?;
    let mut mutex = Mutex::new(&session, a.name.clone());
    let fence = tokio::select! {
        f = mutex.lock() => f?,
        _ = tokio::signal::ctrl_c() => {
            let _ = mutex.unlock().await;
            session.close().await?;
            return Ok(130);
        }
    };
    let key = String::from_utf8_lossy(&fence.key).into_owned();
    if !a.command.is_empty() {
        let status = tokio::process::Command::new(&a.command[0])
            .args(&a.command[1..])
            .env("ETCD_LOCK_KEY", &key)
            .env("ETCD_LOCK_REV", fence.revision.to_string())
            .env("CAIRN_LOCK_KEY", &key)
            .env("CAIRN_LOCK_REV", fence.revision.to_string())
            .status()
            .await
            .with_context(|| format!("run {:?}", a.command[0]));
        mutex.unlock().await?;
        session.close().await?;
        return Ok(status?.code().unwrap_or(1));
    }
    let held = client.get(fence.key.clone(), None).await?;
    for kv in &held.kvs {
        p.kv(kv, false);
    }
    let mut session = session;
    let lost = tokio::select! {
        _ = tokio::signal::ctrl_c() => None,
        e = session.lost() => Some(e),
    };
    if let Some(e) = lost {
        return Err(e.into());
    }
    mutex.unlock().await?;
    session.close().await?;
    Ok(0)
}
