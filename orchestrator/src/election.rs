//! Leader election through a coordination.k8s.io/v1 Lease, as Kubernetes' control-plane components
//! do it: one replica holds the Lease and renews it every retry period; the others take it over only
//! after they have seen the same record unchanged for a whole lease duration on their own clock.
//!
//! Safety rests on renew deadline < lease duration: a holder that cannot renew for the renew
//! deadline reports the loss and must stop acting, which happens before any other replica may take
//! the Lease (it waits a full lease duration after the holder's last renewal it saw). This module
//! talks to the API server only, never to the store.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio::sync::watch;

/// Kubernetes' defaults: 15 s lease, 10 s renew deadline, 2 s retry period.
#[derive(Debug, Clone)]
pub struct ElectionConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl ElectionConfig {
    pub fn new(name: &str, identity: &str) -> ElectionConfig {
        ElectionConfig {
            namespace: "kube-system".into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("renew deadline must be shorter than the lease duration")]
    Timing,
}

/// Held leadership: [`Leadership::lost`] resolves when it is gone.
pub struct Leadership {
    lost: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Resolves once this replica may no longer act.
    pub async fn lost(&mut self) {
        let _ = self.lost.wait_for(|l| *l).await;
    }

    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn now_micro() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

enum Attempt {
    Held,
    Busy,
}

/// One try to take or renew the Lease. `observed` remembers the other holder's record and when this
/// replica first saw it, so expiry is judged on the local clock only.
async fn try_acquire(
    api: &Api<Lease>,
    cfg: &ElectionConfig,
    observed: &mut Option<(String, Instant)>,
) -> Result<Attempt, kube::Error> {
    let secs = cfg.lease_duration.as_secs().max(1) as i32;
    let current = match api.get_opt(&cfg.name).await? {
        None => {
            let lease: Lease = serde_json::from_value(json!({
                "metadata": {"name": cfg.name, "namespace": cfg.namespace},
                "spec": {"holderIdentity": cfg.identity, "leaseDurationSeconds": secs,
                    "acquireTime": now_micro(), "renewTime": now_micro(), "leaseTransitions": 0}
            }))
            .expect("a lease literal decodes");
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Held),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Busy),
                Err(e) => Err(e),
            };
        }
        Some(l) => l,
    };
    let spec = current.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let mut next = current.clone();
    let ns = next.spec.get_or_insert_with(Default::default);
    if holder == cfg.identity {
        ns.renew_time = Some(now_micro());
        ns.lease_duration_seconds = Some(secs);
    } else {
        // The record as last written by its holder; any change restarts the wait.
        let record = format!(
            "{holder}|{:?}|{}",
            spec.renew_time.as_ref().map(|t| t.0),
            current
                .metadata
                .resource_version
                .clone()
                .unwrap_or_default()
        );
        let held_for = spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(s.max(0) as u64))
            .unwrap_or(cfg.lease_duration);
        let since = match observed {
            Some((r, at)) if *r == record => *at,
            _ => {
                *observed = Some((record, Instant::now()));
                return Ok(Attempt::Busy);
            }
        };
        if !holder.is_empty() && since.elapsed() < held_for {
            return Ok(Attempt::Busy);
        }
        ns.holder_identity = Some(cfg.identity.clone());
        ns.acquire_time = Some(now_micro());
        ns.renew_time = Some(now_micro());
        ns.lease_duration_seconds = Some(secs);
        ns.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    // The resourceVersion in `next` makes this a compare-and-swap.
    match api.replace(&cfg.name, &PostParams::default(), &next).await {
        Ok(_) => {
            *observed = None;
            Ok(Attempt::Held)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Busy),
        Err(e) => Err(e),
    }
}

/// Waits until this replica holds the Lease, then keeps renewing it in the background.
pub async fn acquire(
    client: kube::Client,
    cfg: ElectionConfig,
) -> Result<Leadership, ElectionError> {
    if cfg.renew_deadline >= cfg.lease_duration || cfg.retry_period >= cfg.renew_deadline {
        return Err(ElectionError::Timing);
    }
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let mut observed = None;
    loop {
        match try_acquire(&api, &cfg, &mut observed).await {
            Ok(Attempt::Held) => break,
            Ok(Attempt::Busy) => {}
            Err(e) => {
                tracing::warn!(error = %e, lease = %cfg.name, "leader election: cannot reach the lease")
            }
        }
        tokio::time::sleep(cfg.retry_period).await;
    }
    tracing::info!(lease = %cfg.name, identity = %cfg.identity, "became leader");
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut last_renew = Instant::now();
        let mut observed = None;
        loop {
            tokio::time::sleep(cfg.retry_period).await;
            // Each try is bounded so a hung request cannot outlive the deadline.
            let left = cfg.renew_deadline.saturating_sub(last_renew.elapsed());
            match tokio::time::timeout(left, try_acquire(&api, &cfg, &mut observed)).await {
                Ok(Ok(Attempt::Held)) => last_renew = Instant::now(),
                Ok(Ok(Attempt::Busy)) => {
                    tracing::warn!(lease = %cfg.name, "leader election: another replica holds the lease");
                    break;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, lease = %cfg.name, "leader election: renew failed")
                }
                Err(_) => {}
            }
            if last_renew.elapsed() >= cfg.renew_deadline {
                tracing::warn!(lease = %cfg.name, "leader election: renew deadline passed");
                break;
            }
        }
        let _ = tx.send(true);
    });
    Ok(Leadership { lost: rx, task })
}
