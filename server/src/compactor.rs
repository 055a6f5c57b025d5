//! Auto compaction, as etcd's `--auto-compaction-mode`: the leader proposes a Compact entry, so every
//! member compacts at the same point in the log.
//!
//! - `periodic`: keep about `retention` of history. Revisions are sampled every `retention / 10`
//!   (at most hourly); the leader compacts to the newest sample at least `retention` old.
//! - `revision`: keep the last `retention` revisions, checked every 10 s.
//!
//! Proposes through [`RaftHandle`] like any client; must never import `storage/` or `grpc/`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::command::{Applied, Command};
use crate::config::AutoCompaction;
use crate::raft::RaftHandle;

const REVISION_CHECK: Duration = Duration::from_secs(10);

pub(crate) async fn run(
    raft: RaftHandle,
    member_id: u64,
    policy: AutoCompaction,
    mut stop: watch::Receiver<bool>,
) {
    let interval = match policy {
        AutoCompaction::Periodic(retention) => {
            (retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(3600))
        }
        AutoCompaction::Revision(_) => REVISION_CHECK,
    };
    let mut samples: VecDeque<(Instant, i64)> = VecDeque::new();
    let mut compacted = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let state = raft.state();
        let current = state.current_revision();
        let now = Instant::now();
        samples.push_back((now, current));
        let target = match policy {
            AutoCompaction::Periodic(retention) => {
                // Samples older than the newest one that is `retention` old are no longer needed.
                while samples.len() > 1 && now.duration_since(samples[1].0) >= retention {
                    samples.pop_front();
                }
                match samples.front() {
                    Some((at, rev)) if now.duration_since(*at) >= retention => *rev,
                    _ => continue,
                }
            }
            AutoCompaction::Revision(keep) => current - keep,
        };
        if raft.leader() != Some(member_id)
            || target <= compacted
            || target <= state.compact_revision()
        {
            continue;
        }
        match raft.propose(Command::Compact(target), 16).await {
            Ok(r) if matches!(r.result, Ok(Applied::Compact)) => {
                tracing::info!(revision = target, "auto-compacted");
                compacted = target;
            }
            Ok(r) => tracing::debug!(result = ?r.result, "auto compaction refused"),
            Err(e) => tracing::warn!(error = %e, "auto compaction failed; retrying"),
        }
    }
}

/// Parses etcd's `--auto-compaction-retention` for a mode: periodic takes a duration (`30m`, `1h`,
/// or a bare number of hours), revision a count.
pub fn parse_policy(mode: &str, retention: &str) -> Result<Option<AutoCompaction>, String> {
    let retention = retention.trim();
    match mode {
        "periodic" => {
            let d = parse_duration(retention)?;
            Ok((!d.is_zero()).then_some(AutoCompaction::Periodic(d)))
        }
        "revision" => {
            let n: i64 = retention
                .parse()
                .map_err(|_| format!("invalid revision retention {retention:?}"))?;
            Ok((n > 0).then_some(AutoCompaction::Revision(n)))
        }
        other => Err(format!(
            "unknown auto compaction mode {other:?} (periodic or revision)"
        )),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(hours) = s.parse::<u64>() {
        return Ok(Duration::from_secs(hours * 3600));
    }
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| format!("invalid duration {s:?}"))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid duration unit in {s:?} (ms, s, m or h)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_parses_as_etcd_does() {
        assert_eq!(
            parse_policy("periodic", "1").unwrap(),
            Some(AutoCompaction::Periodic(Duration::from_secs(3600)))
        );
        assert_eq!(
            parse_policy("periodic", "30m").unwrap(),
            Some(AutoCompaction::Periodic(Duration::from_secs(1800)))
        );
        assert_eq!(parse_policy("periodic", "0").unwrap(), None);
        assert_eq!(
            parse_policy("revision", "1000").unwrap(),
            Some(AutoCompaction::Revision(1000))
        );
        assert!(parse_policy("revision", "1h").is_err());
        assert!(parse_policy("hourly", "1").is_err());
    }
}
