//! Lease checker: leases never expire early, and expired leases take their keys with them.
//!
//! Shapes: `grant` ok `{lease, ttl}`; `lease-put` invoke `{key, lease}` (each key is put once,
//! never deleted by clients); `keepalive` invoke `{lease}`, ok `{lease, ttl}`; `lease-read`
//! invoke `{key}`, ok `{present}`.
//!
//! Early expiry: a grant or keep-alive answered with TTL t is processed by the server somewhere
//! inside the request, so the lease is alive at least until `invoke + t`. A read that began
//! after that answer and after the key's put was acknowledged, and completed before
//! `invoke + t`, must see the key.
//!
//! Expiry: a lease whose last possible refresh was at time r is gone by `r + ttl + GRACE`; a
//! `lease-final-read` invoked after that must not see its key. Only final reads count: they run
//! after every fault healed and the cluster stayed quiet for TTL plus grace, because a new
//! leader legitimately extends every lease when it takes over (as etcd's lessor does on
//! promotion), so during faults expiry may be postponed. A refresh that did not answer ok may
//! have been processed up to [`IN_FLIGHT`] after its invocation.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use super::{Anomaly, Verdict};
use crate::history::{History, OpType};

/// Time the cluster may take past the TTL to revoke: detection on the leader, a leader change
/// (which extends leases) and the revoke's commit.
pub const GRACE: Duration = Duration::from_secs(5);
/// How long a refresh that did not answer may still be applied after its invocation.
pub const IN_FLIGHT: Duration = Duration::from_secs(8);

#[derive(Default)]
struct LeaseFacts {
    ttl_ns: u64,
    /// (invoke, complete) of every refresh (grant or keep-alive) answered ok with a live TTL.
    alive: Vec<(u64, u64, usize)>,
    /// Latest time a refresh may have been processed.
    last_refresh: u64,
    refreshes: Vec<usize>,
}

/// Checks a lease history.
pub fn check(history: &History) -> Verdict {
    let mut v = Verdict::new("lease");
    let mut leases: HashMap<i64, LeaseFacts> = HashMap::new();
    let mut key_lease: HashMap<String, (i64, u64, usize)> = HashMap::new();
    let pairs = history.pairs();
    let secs = |t: i64| t.max(0) as u64 * 1_000_000_000;
    for p in &pairs {
        let kind = p.kind();
        let val = p.complete.map(|c| &c.value);
        let get = |k: &str| val.and_then(|x| x.get(k)).and_then(Value::as_i64);
        match p.invoke.f.as_str() {
            "grant" if kind == OpType::Ok => {
                let (Some(id), Some(ttl)) = (get("lease"), get("ttl")) else {
                    continue;
                };
                let l = leases.entry(id).or_default();
                l.ttl_ns = secs(ttl);
                l.alive.push((p.invoke.time, p.end(), p.invoke.index));
                l.last_refresh = l.last_refresh.max(p.end());
                l.refreshes.push(p.invoke.index);
            }
            "keepalive" => {
                let Some(id) = p.invoke.value.get("lease").and_then(Value::as_i64) else {
                    continue;
                };
                let l = leases.entry(id).or_default();
                l.refreshes.push(p.invoke.index);
                match (kind, get("ttl")) {
                    (OpType::Ok, Some(ttl)) if ttl > 0 => {
                        l.alive.push((p.invoke.time, p.end(), p.invoke.index));
                        l.last_refresh = l.last_refresh.max(p.end());
                    }
                    (OpType::Ok, _) | (OpType::Fail, _) => {}
                    _ => {
                        let bound = p.invoke.time.saturating_add(IN_FLIGHT.as_nanos() as u64);
                        l.last_refresh = l.last_refresh.max(bound);
                    }
                }
            }
            "lease-put" if kind == OpType::Ok => {
                let (Some(key), Some(id)) = (
                    p.invoke.value.get("key").and_then(Value::as_str),
                    p.invoke.value.get("lease").and_then(Value::as_i64),
                ) else {
                    continue;
                };
                key_lease.insert(key.to_string(), (id, p.end(), p.invoke.index));
            }
            _ => {}
        }
    }
    let mut checked_alive = 0;
    let mut checked_gone = 0;
    let reads = pairs.iter().filter(|p| {
        (p.invoke.f == "lease-read" || p.invoke.f == "lease-final-read") && p.kind() == OpType::Ok
    });
    for p in reads {
        let is_final = p.invoke.f == "lease-final-read";
        let Some(key) = p.invoke.value.get("key").and_then(Value::as_str) else {
            continue;
        };
        let Some(present) = p
            .complete
            .and_then(|c| c.value.get("present"))
            .and_then(Value::as_bool)
        else {
            continue;
        };
        let Some((id, put_done, put_idx)) = key_lease.get(key) else {
            continue;
        };
        let Some(l) = leases.get(id) else { continue };
        let (start, end) = (p.invoke.time, p.end());
        if !present && start >= *put_done {
            if let Some((ka_inv, _, ka_idx)) = l
                .alive
                .iter()
                .find(|(inv, done, _)| *done <= start && end <= inv.saturating_add(l.ttl_ns))
            {
                checked_alive += 1;
                v.anomaly(Anomaly {
                    kind: "early-expiry".into(),
                    message: format!(
                        "{key} (lease {id:x}) was gone {} ms after a refresh answered with TTL {} s",
                        (end - ka_inv) / 1_000_000,
                        l.ttl_ns / 1_000_000_000
                    ),
                    ops: vec![*put_idx, *ka_idx, p.invoke.index],
                });
            } else {
                checked_alive += 1;
            }
        }
        let gone_by = l
            .last_refresh
            .saturating_add(l.ttl_ns)
            .saturating_add(GRACE.as_nanos() as u64);
        if !is_final {
            continue;
        }
        if present && start > gone_by {
            checked_gone += 1;
            v.anomaly(Anomaly {
                kind: "unexpired".into(),
                message: format!(
                    "{key} (lease {id:x}) still present {} ms after its lease must have expired",
                    (start - gone_by) / 1_000_000
                ),
                ops: l
                    .refreshes
                    .last()
                    .copied()
                    .into_iter()
                    .chain([*put_idx, p.invoke.index])
                    .collect(),
            });
        } else if start > gone_by {
            checked_gone += 1;
        }
    }
    v.stat("leases", leases.len());
    v.stat("reads-absent", checked_alive);
    v.stat("reads-after-expiry", checked_gone);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Builder;
    use serde_json::json;
    use OpType::*;

    const S: u64 = 1_000_000_000;

    fn setup() -> Builder {
        Builder::new()
            .op(0, 0, Invoke, "grant", json!({"ttl": 3}))
            .op(S / 100, 0, Ok, "grant", json!({"lease": 7, "ttl": 3}))
            .op(
                S / 50,
                0,
                Invoke,
                "lease-put",
                json!({"key": "k", "lease": 7}),
            )
            .op(S / 40, 0, Ok, "lease-put", json!({"rev": 2}))
    }
    fn ka(b: Builder, t: u64) -> Builder {
        b.op(t, 0, Invoke, "keepalive", json!({"lease": 7})).op(
            t + S / 100,
            0,
            Ok,
            "keepalive",
            json!({"lease": 7, "ttl": 3}),
        )
    }
    fn read(b: Builder, t: u64, present: bool) -> Builder {
        read_as(b, t, present, "lease-read")
    }
    fn final_read(b: Builder, t: u64, present: bool) -> Builder {
        read_as(b, t, present, "lease-final-read")
    }
    fn read_as(b: Builder, t: u64, present: bool, f: &str) -> Builder {
        b.op(t, 1, Invoke, f, json!({"key": "k"})).op(
            t + S / 100,
            1,
            Ok,
            f,
            json!({"present": present}),
        )
    }

    #[test]
    fn kept_alive_then_expired_is_valid() {
        let mut b = setup();
        for i in 1..5 {
            b = ka(b, i * S);
            b = read(b, i * S + S / 2, true);
        }
        // Keep-alives stop at 4 s: the key may vanish after 7 s, must be gone after 12 s.
        b = read(b, 8 * S, false);
        // A read during faults may still see it (a new leader extends leases).
        b = read(b, 14 * S, true);
        b = final_read(b, 15 * S, false);
        let v = check(&b.build());
        assert!(v.valid, "{v:?}");
        assert_eq!(v.stats["reads-after-expiry"], 1);
    }

    #[test]
    fn early_expiry_is_rejected() {
        let b = ka(setup(), S);
        // Gone 2 s after a keep-alive answered with TTL 3.
        let b = read(b, 3 * S, false);
        let v = check(&b.build());
        assert!(!v.valid);
        assert_eq!(v.anomalies[0].kind, "early-expiry");
    }

    #[test]
    fn key_outliving_its_lease_is_rejected() {
        let b = ka(setup(), S);
        let b = final_read(b, 20 * S, true);
        let v = check(&b.build());
        assert_eq!(v.anomalies[0].kind, "unexpired", "{v:?}");
    }

    #[test]
    fn unknown_keepalive_may_extend_the_lease() {
        let b = ka(setup(), S)
            .op(2 * S, 0, Invoke, "keepalive", json!({"lease": 7}))
            .op(3 * S, 0, Info, "keepalive", json!(null));
        // Present 14 s in: the unknown keep-alive may have been applied as late as 10 s.
        let b = final_read(b, 14 * S, true);
        assert!(check(&b.build()).valid);
    }
}
