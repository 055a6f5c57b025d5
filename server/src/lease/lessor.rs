//! The leader's lease clock. Deadlines live only in the leader's memory: a member that becomes
//! leader gives every lease its full TTL plus an election timeout (as etcd does on promotion), so a
//! leader change never cuts a lease short; a member that stops leading forgets its deadlines.
//!
//! Must never import anything outside `lease/`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most leases revoked per expiry round; etcd revokes at most 1,000 per second.
pub const MAX_REVOKES_PER_ROUND: usize = 500;

#[derive(Default)]
struct Clock {
    /// The term this member leads in, if it leads.
    term: Option<u64>,
    deadlines: HashMap<i64, Instant>,
}

pub struct Lessor {
    clock: Mutex<Clock>,
    /// Added to every lease on promotion.
    extend: Duration,
}

impl Lessor {
    pub fn new(extend: Duration) -> Lessor {
        Lessor {
            clock: Mutex::new(Clock::default()),
            extend,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Clock> {
        self.clock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings the clock in line with leadership and the lease table (`(id, ttl)` pairs); returns
    /// the leases whose deadline has passed, oldest first, at most [`MAX_REVOKES_PER_ROUND`].
    pub fn tick(&self, leading_term: Option<u64>, leases: &[(i64, i64)], now: Instant) -> Vec<i64> {
        let mut clock = self.lock();
        let Some(term) = leading_term else {
            clock.term = None;
            clock.deadlines.clear();
            return Vec::new();
        };
        if clock.term != Some(term) {
            clock.term = Some(term);
            clock.deadlines = leases
                .iter()
                .map(|(id, ttl)| (*id, now + ttl_duration(*ttl) + self.extend))
                .collect();
        } else {
            let live: HashMap<i64, i64> = leases.iter().copied().collect();
            clock.deadlines.retain(|id, _| live.contains_key(id));
            for (id, ttl) in leases {
                clock
                    .deadlines
                    .entry(*id)
                    .or_insert(now + ttl_duration(*ttl));
            }
        }
        let mut expired: Vec<(Instant, i64)> = clock
            .deadlines
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(id, d)| (*d, *id))
            .collect();
        expired.sort_unstable();
        expired
            .into_iter()
            .take(MAX_REVOKES_PER_ROUND)
            .map(|(_, id)| id)
            .collect()
    }

    /// Restarts a lease's TTL, unless it has already expired: its revoke is then on its way
    /// (or will be proposed at the next tick) and renewing it would acknowledge a keep-alive for a
    /// lease whose keys are about to go, as etcd's lessor also refuses.
    pub fn renew(&self, id: i64, ttl: i64, now: Instant) -> Renewal {
        let mut clock = self.lock();
        if clock.term.is_none() {
            return Renewal::NotLeading;
        }
        if clock.deadlines.get(&id).is_some_and(|d| *d <= now) {
            return Renewal::Expired;
        }
        clock.deadlines.insert(id, now + ttl_duration(ttl));
        Renewal::Renewed
    }

    /// Time left on a lease, if this member leads and tracks it.
    pub fn remaining(&self, id: i64, now: Instant) -> Option<Duration> {
        let clock = self.lock();
        clock.term?;
        clock
            .deadlines
            .get(&id)
            .map(|d| d.saturating_duration_since(now))
    }

    pub fn is_leading(&self) -> bool {
        self.lock().term.is_some()
    }
}

/// The outcome of [`Lessor::renew`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    Renewed,
    /// Past its deadline: about to be revoked.
    Expired,
    NotLeading,
}

fn ttl_duration(ttl: i64) -> Duration {
    Duration::from_secs(ttl.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promotion_extends_renewal_restarts_and_expiry_is_reported() {
        let l = Lessor::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert!(l.tick(None, &[(1, 5)], t0).is_empty());
        assert_eq!(
            l.renew(1, 5, t0),
            Renewal::NotLeading,
            "a follower does not renew"
        );
        assert!(l.tick(Some(3), &[(1, 5), (2, 10)], t0).is_empty());
        assert_eq!(
            l.remaining(1, t0),
            Some(Duration::from_secs(6)),
            "TTL plus the promotion extension"
        );
        assert!(l
            .tick(Some(3), &[(1, 5), (2, 10)], t0 + Duration::from_secs(5))
            .is_empty());
        assert_eq!(
            l.tick(Some(3), &[(1, 5), (2, 10)], t0 + Duration::from_secs(6)),
            vec![1]
        );
        // Past its deadline a lease is not renewed: its revoke is on its way.
        assert_eq!(l.renew(1, 5, t0 + Duration::from_secs(6)), Renewal::Expired);
        assert_eq!(
            l.renew(2, 10, t0 + Duration::from_secs(6)),
            Renewal::Renewed
        );
        assert!(l
            .tick(Some(3), &[(2, 10)], t0 + Duration::from_secs(15))
            .is_empty());
        // A new term re-extends everything; losing leadership forgets deadlines.
        assert!(l
            .tick(Some(4), &[(1, 5), (2, 10)], t0 + Duration::from_secs(20))
            .is_empty());
        assert!(l
            .tick(None, &[(1, 5)], t0 + Duration::from_secs(100))
            .is_empty());
        assert_eq!(l.remaining(1, t0), None);
    }
}
