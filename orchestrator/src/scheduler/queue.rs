//! The scheduling queue, after kube-scheduler's: pods waiting for a decision in priority order
//! (then oldest first), pods that fit nowhere parked until the cluster changes, and pods whose
//! binding failed waiting out a short backoff. It never imports `registry` or `apiserver`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

/// Orders the active pods: higher priority first, then by creation, then by name.
type Key = (Reverse<i32>, Option<i64>, String, String);

fn key(pod: &Pod) -> Key {
    (
        Reverse(pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)),
        pod.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_microsecond()),
        format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or(""),
            pod.metadata.name.as_deref().unwrap_or("")
        ),
        pod.metadata.uid.clone().unwrap_or_default(),
    )
}

enum State {
    Active(Key),
    Unschedulable,
    Backoff(Instant),
}

struct Entry {
    pod: Arc<Pod>,
    state: State,
    /// The last failure reported for the pod, so the same one is not reported again.
    reported: Option<String>,
}

/// How long a pod whose binding failed waits before it is tried again.
const BIND_BACKOFF: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Queue {
    entries: HashMap<String, Entry>,
    active: BTreeMap<Key, String>,
}

impl Queue {
    /// A pod waiting for a node was added or changed. A parked pod goes back to the active queue
    /// only when its spec or labels changed (its own status updates change nothing about where it
    /// fits).
    pub fn upsert(&mut self, pod: Arc<Pod>) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        match self.entries.get_mut(&uid) {
            None => {
                let k = key(&pod);
                self.active.insert(k.clone(), uid.clone());
                self.entries.insert(
                    uid,
                    Entry {
                        pod,
                        state: State::Active(k),
                        reported: None,
                    },
                );
            }
            Some(e) => {
                let relevant =
                    e.pod.spec != pod.spec || e.pod.metadata.labels != pod.metadata.labels;
                e.pod = pod;
                let k = key(&e.pod);
                match &e.state {
                    State::Active(old) if *old != k => {
                        self.active.remove(old);
                    }
                    State::Active(_) => return,
                    State::Unschedulable | State::Backoff(_) if !relevant => return,
                    _ => {}
                }
                self.active.insert(k.clone(), uid);
                e.state = State::Active(k);
            }
        }
    }

    pub fn remove(&mut self, uid: &str) {
        if let Some(e) = self.entries.remove(uid) {
            if let State::Active(k) = e.state {
                self.active.remove(&k);
            }
        }
    }

    pub fn has_active(&self) -> bool {
        !self.active.is_empty()
    }

    /// The next pod to decide on, taken out of the queue, with the failure last reported for it.
    pub fn pop(&mut self) -> Option<(Arc<Pod>, Option<String>)> {
        let (_, uid) = self.active.pop_first()?;
        let e = self.entries.remove(&uid)?;
        Some((e.pod, e.reported))
    }

    /// A pod that fits nowhere waits for the cluster to change.
    pub fn park(&mut self, pod: Arc<Pod>, reported: Option<String>) {
        self.set_aside(pod, State::Unschedulable, reported);
    }

    /// A pod whose binding failed is tried again after a short wait.
    pub fn back_off(&mut self, pod: Arc<Pod>, now: Instant) {
        self.set_aside(pod, State::Backoff(now + BIND_BACKOFF), None);
    }

    fn set_aside(&mut self, pod: Arc<Pod>, state: State, reported: Option<String>) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        self.remove(&uid);
        self.entries.insert(
            uid,
            Entry {
                pod,
                state,
                reported,
            },
        );
    }

    /// Parked pods (and, with `now`, backed-off pods whose wait is over) become active again.
    pub fn activate(&mut self, parked: bool, now: Instant) {
        for (uid, e) in &mut self.entries {
            let due = match e.state {
                State::Unschedulable => parked,
                State::Backoff(at) => at <= now,
                State::Active(_) => false,
            };
            if due {
                let k = key(&e.pod);
                self.active.insert(k.clone(), uid.clone());
                e.state = State::Active(k);
            }
        }
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.active.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, prio: i32, created: &str) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": name, "namespace": "d", "uid": name,
                "creationTimestamp": created}, "spec": {"priority": prio, "containers": []}}),
            )
            .unwrap(),
        )
    }

    #[test]
    fn higher_priority_then_older_pods_come_first() {
        let mut q = Queue::default();
        q.upsert(pod("late", 0, "2026-01-01T00:00:02Z"));
        q.upsert(pod("early", 0, "2026-01-01T00:00:01Z"));
        q.upsert(pod("urgent", 10, "2026-01-01T00:00:03Z"));
        let order: Vec<String> = std::iter::from_fn(|| q.pop())
            .map(|(p, _)| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(order, ["urgent", "early", "late"]);
    }

    #[test]
    fn a_parked_pod_waits_for_a_cluster_change_not_for_its_own_status() {
        let mut q = Queue::default();
        let p = pod("p", 0, "2026-01-01T00:00:01Z");
        q.upsert(p.clone());
        let (p, _) = q.pop().unwrap();
        q.park(p.clone(), Some("0/1 nodes are available.".into()));
        let mut with_status = (*p).clone();
        with_status.status = Some(Default::default());
        q.upsert(Arc::new(with_status));
        assert!(!q.has_active());
        q.activate(true, Instant::now());
        let (_, reported) = q.pop().unwrap();
        assert_eq!(reported.as_deref(), Some("0/1 nodes are available."));
    }

    #[test]
    fn a_failed_binding_is_retried_after_the_backoff() {
        let mut q = Queue::default();
        let now = Instant::now();
        q.back_off(pod("p", 0, "2026-01-01T00:00:01Z"), now);
        q.activate(false, now);
        assert!(!q.has_active());
        q.activate(false, now + BIND_BACKOFF);
        assert!(q.pop().is_some());
    }
}
