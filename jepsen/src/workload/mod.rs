//! Workloads: concurrent clients that record every operation as invoke / ok / fail / info.
//!
//! Each logical process is bound to one member (as Jepsen binds clients to nodes), runs one
//! operation at a time and paces itself so that all clients together offer `rate` operations per
//! second. After an `info` the process may still have a request in flight, so it continues
//! under a fresh process number, keeping "one operation in flight per process" true.

pub mod append;
pub mod client;
pub mod lease;
pub mod register;
pub mod set;
pub mod watch;

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch as signal;

use crate::history::{OpType, Recorder};
use client::{ClientError, Conn};

/// The workloads by name.
pub const NAMES: &[&str] = &["register", "append", "set", "watch", "lease"];

/// Ways to make the system look wrong on purpose, to prove the checkers catch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Reads are served with `serializable=true` from whatever member a client is bound to, so
    /// a partitioned minority member answers from its stale local state: register reads, and
    /// the read-only transactions of the append workload.
    StaleReads,
}

/// What every workload gets.
#[derive(Clone)]
pub struct Ctx {
    pub recorder: Recorder,
    pub endpoints: Vec<String>,
    /// How to connect to them (TLS, user).
    pub options: cairn_client::ConnectOptions,
    pub clients: usize,
    /// Offered operations per second, over all clients.
    pub rate: f64,
    pub timeout: Duration,
    pub fault: Option<Fault>,
    /// Flips to true when clients must stop.
    pub stop: signal::Receiver<bool>,
    /// Source of unique values.
    pub counter: Arc<AtomicI64>,
    /// Keys a workload wants to revisit in its final phase.
    pub keys: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Ctx {
    /// A connection for process `p`, bound to member `slot mod n`.
    pub fn conn(&self, p: u64) -> Conn {
        Conn::connect(
            &self.endpoints[(p % PROCESS_STRIDE) as usize % self.endpoints.len()],
            &self.options,
            self.timeout,
        )
    }

    /// A fresh unique value.
    pub fn unique(&self) -> i64 {
        self.counter.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Whether clients were told to stop.
    pub fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Resolves once clients were told to stop.
    pub async fn until_stopped(&self) {
        let mut stop = self.stop.clone();
        let _ = stop.wait_for(|s| *s).await;
    }

    /// Waits one pacing interval (with jitter); false when stopped meanwhile.
    pub async fn pace(&self) -> bool {
        let per_client = self.clients as f64 / self.rate.max(0.1);
        let d = Duration::from_secs_f64(per_client * (0.5 + fastrand::f64()));
        tokio::select! {
            _ = tokio::time::sleep(d) => !self.stopped(),
            _ = self.until_stopped() => false,
        }
    }

    /// Runs `op` as one recorded operation of process `p`; returns the process number to use
    /// next (fresh after an unknown outcome) and the result.
    pub async fn record<T, F, Fut>(
        &self,
        p: u64,
        f: &str,
        invoke: Value,
        op: F,
        ok: impl FnOnce(&T) -> Value,
    ) -> (u64, Option<T>)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        self.recorder.invoke(p, f, invoke.clone());
        match op().await {
            Ok(t) => {
                self.recorder.complete(p, OpType::Ok, f, ok(&t), None);
                (p, Some(t))
            }
            Err(e) if e.definite => {
                self.recorder
                    .complete(p, OpType::Fail, f, invoke, Some(e.to_string()));
                (p, None)
            }
            Err(e) => {
                self.recorder
                    .complete(p, OpType::Info, f, invoke, Some(e.to_string()));
                (p + PROCESS_STRIDE, None)
            }
        }
    }
}

/// Process numbers of one client slot differ by this much; a slot gets a new one after `info`.
pub const PROCESS_STRIDE: u64 = 1000;

/// Runs the clients of `workload` until stopped.
pub async fn run(workload: &str, ctx: Ctx) {
    match workload {
        "register" => register::run(ctx).await,
        "append" => append::run(ctx).await,
        "set" => set::run(ctx).await,
        "watch" => watch::run(ctx).await,
        "lease" => lease::run(ctx).await,
        _ => {}
    }
}

/// The final phase after faults healed (final reads, reference watch, expiry reads).
pub async fn finish(workload: &str, ctx: Ctx) {
    match workload {
        "append" => append::finish(ctx).await,
        "set" => set::finish(ctx).await,
        "watch" => watch::finish(ctx).await,
        "lease" => lease::finish(ctx).await,
        _ => {}
    }
}

/// Spawns `ctx.clients` copies of `client` (given its first process number) and waits for all.
pub async fn spawn_clients<F, Fut>(ctx: &Ctx, client: F)
where
    F: Fn(Ctx, u64) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handles: Vec<_> = (0..ctx.clients as u64)
        .map(|p| tokio::spawn(client(ctx.clone(), p)))
        .collect();
    for h in handles {
        let _ = h.await;
    }
}

/// Retries `op` until it succeeds or `limit` passes; for final reads after healing.
pub async fn retry<T, F, Fut>(limit: Duration, mut op: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match op().await {
            Ok(t) => return Some(t),
            Err(e) => tracing::debug!(error = %e, "final read retry"),
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
