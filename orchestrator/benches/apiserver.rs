//! The API server as a client sees it: a 3-member Cairn cluster and `cairn-orchestrator apiserver`
//! as real processes on 127.0.0.1 (fsync on), driven over HTTPS by the kube crate. In order:
//! memory idle; `CAIRN_BENCH_PODS` pods stored by concurrent creates, memory again; full LISTs of
//! them paged by 500 (and one unpaged); timed Pod creates from concurrent clients, through an API
//! server whose store endpoint is a follower and through one whose store endpoint is the leader,
//! each followed by the same store calls made without the API server; watch event latency of many
//! watchers under a steady writer. Prints a markdown table with each value beside its target.
//!
//! `cargo build --release -p cairn-server --bin cairn` first (the bench runs `cairn` from the same
//! target directory, or `CAIRN_BIN`), then `cargo bench -p cairn-orchestrator --bench apiserver`.
//! Knobs: `CAIRN_BENCH_SECS` (seconds of each timed create run, store-alone run and of the watch
//! writer; default 10), `CAIRN_BENCH_CLIENTS` (concurrent creators, default 64),
//! `CAIRN_BENCH_PODS` (pods stored for the LIST and memory, default 10000),
//! `CAIRN_BENCH_WATCHERS` (default 100), `CAIRN_BENCH_WRITES` (writes per second under the
//! watchers, default 1000), `CAIRN_BENCH_VIA=follower,leader` (which store endpoints the creates
//! go through; the first also serves the stored pods, the LISTs and the watches). A quick run:
//! `CAIRN_BENCH_SECS=3 CAIRN_BENCH_PODS=1000 CAIRN_BENCH_WATCHERS=10 CAIRN_BENCH_VIA=follower`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{cpu_secs, pct_ms, row, rss_kib, Row};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

/// kube clients the load is spread over; each has its own connection pool (HTTP/1.1, so one
/// connection per request in flight).
const KUBE_CLIENTS: usize = 4;
const PAGE: u32 = 500;
const LIST_RUNS: usize = 3;
/// Where the stored pods live (filled, listed).
const NS: &str = "bench";
/// Where the timed creates go, so the listed namespace holds exactly the pods asked for.
const CREATE_NS: &str = "bench-create";
const WATCH_NS: &str = "bench-watch";
/// How long watchers may take after the last write to receive every event.
const DRAIN: Duration = Duration::from_secs(30);
/// Writes in flight beyond which the writer skips a tick (and counts it).
const MAX_IN_FLIGHT: usize = 1024;

struct Knobs {
    secs: u64,
    clients: usize,
    pods: usize,
    watchers: usize,
    writes: u64,
    /// Store endpoints the API servers' clients use for the timed creates (`CAIRN_BENCH_VIA`);
    /// the first serves the stored pods, the LISTs and the watches too.
    via: Vec<Via>,
}

impl Knobs {
    fn from_env() -> Knobs {
        Knobs {
            secs: common::knob("CAIRN_BENCH_SECS", 10).max(1),
            clients: common::knob("CAIRN_BENCH_CLIENTS", 64).max(1) as usize,
            pods: common::knob("CAIRN_BENCH_PODS", 10_000) as usize,
            watchers: common::knob("CAIRN_BENCH_WATCHERS", 100) as usize,
            writes: common::knob("CAIRN_BENCH_WRITES", 1000).max(1),
            via: {
                let v = std::env::var("CAIRN_BENCH_VIA").unwrap_or_default();
                let mut via: Vec<Via> = v
                    .split(',')
                    .filter_map(|w| match w.trim() {
                        "follower" => Some(Via::Follower),
                        "leader" => Some(Via::Leader),
                        _ => None,
                    })
                    .collect();
                if via.is_empty() {
                    via = vec![Via::Follower, Via::Leader];
                }
                via
            },
        }
    }
}

/// CPU seconds used so far by the API server, the members (summed), this process and the whole
/// machine.
#[derive(Clone, Copy)]
struct Cpu {
    apiserver: f64,
    members: f64,
    bench: f64,
    machine: f64,
    at: Instant,
}

struct Pids {
    apiserver: u32,
    members: Vec<u32>,
}

impl Pids {
    fn cpu(&self) -> Cpu {
        Cpu {
            apiserver: cpu_secs(self.apiserver),
            members: self.members.iter().map(|p| cpu_secs(*p)).sum(),
            bench: cpu_secs(std::process::id()),
            machine: common::machine_busy_secs(),
            at: Instant::now(),
        }
    }

    /// Cores busy since `before`: API server / members summed / bench client / whole machine
    /// (these and everything else running).
    fn busy_since(&self, before: Cpu) -> String {
        let now = self.cpu();
        let s = now.at.duration_since(before.at).as_secs_f64();
        format!(
            "{:.2} / {:.2} / {:.2} / {:.2}",
            (now.apiserver - before.apiserver) / s,
            (now.members - before.members) / s,
            (now.bench - before.bench) / s,
            (now.machine - before.machine) / s
        )
    }

    fn rss_mib(&self) -> (f64, Vec<f64>) {
        let mib = |p: u32| rss_kib(p) as f64 / 1024.0;
        (
            mib(self.apiserver),
            self.members.iter().map(|p| mib(*p)).collect(),
        )
    }
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }))
    .unwrap()
}

/// When a batch of creates stops.
#[derive(Clone, Copy)]
enum Until {
    Deadline(Instant),
    /// This many creates in all, acknowledged or failed.
    Count(u64),
}

#[derive(Default)]
struct Creates {
    /// Microseconds per acknowledged create.
    latencies: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
}

/// Pod creates in `ns` from `tasks` concurrent tasks over the shared clients; pod names come from
/// `next`.
async fn create_pods(
    clients: &[kube::Client],
    ns: &'static str,
    tasks: usize,
    until: Until,
    next: &Arc<AtomicU64>,
) -> Creates {
    let started = Instant::now();
    let budget = Arc::new(AtomicU64::new(match until {
        Until::Count(n) => n,
        Until::Deadline(_) => u64::MAX,
    }));
    let mut handles = Vec::new();
    for t in 0..tasks {
        let api: Api<Pod> = Api::namespaced(clients[t % clients.len()].clone(), ns);
        let next = next.clone();
        let budget = budget.clone();
        handles.push(tokio::spawn(async move {
            let mut out = Creates::default();
            loop {
                if let Until::Deadline(d) = until {
                    if Instant::now() >= d {
                        break;
                    }
                }
                if budget
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
                    .is_err()
                {
                    break;
                }
                let name = format!("pod-{:07}", next.fetch_add(1, Ordering::Relaxed));
                let p = pod(&name);
                let t0 = Instant::now();
                match api.create(&PostParams::default(), &p).await {
                    Ok(_) => out.latencies.push(t0.elapsed().as_micros() as u32),
                    Err(e) => {
                        out.errors += 1;
                        out.first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            out
        }));
    }
    let mut all = Creates::default();
    for h in handles {
        let c = h.await.expect("create task");
        all.latencies.extend(c.latencies);
        all.errors += c.errors;
        if all.first_error.is_none() {
            all.first_error = c.first_error;
        }
    }
    all.elapsed = started.elapsed();
    all.latencies.sort_unstable();
    all
}

/// The API server's own sum of seconds and count of `verb` requests on `resource`, from its
/// `apiserver_request_duration_seconds` histogram on /metrics (time inside the handler: from the
/// parsed request to the encoded answer, without TLS and HTTP framing).
async fn server_time(client: &kube::Client, verb: &str, resource: &str) -> (f64, f64) {
    let req = axum::http::Request::get("/metrics")
        .body(Vec::new())
        .unwrap();
    let text = client.request_text(req).await.unwrap_or_default();
    let (mut sum, mut count) = (0.0, 0.0);
    let verb = format!("verb=\"{verb}\"");
    let resource = format!("resource=\"{resource}\"");
    for l in text.lines() {
        if !(l.contains(&verb) && l.contains(&resource)) {
            continue;
        }
        let v: f64 = l
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        if l.starts_with("apiserver_request_duration_seconds_sum{") {
            sum += v;
        } else if l.starts_with("apiserver_request_duration_seconds_count{") {
            count += v;
        }
    }
    (sum, count)
}

/// Mean milliseconds between two [`server_time`] readings.
fn mean_ms(before: (f64, f64), after: (f64, f64)) -> f64 {
    (after.0 - before.0) * 1000.0 / (after.1 - before.1)
}

fn mean_of(sorted_us: &[u32]) -> f64 {
    sorted_us.iter().map(|v| *v as f64).sum::<f64>() / sorted_us.len().max(1) as f64 / 1000.0
}

/// The store calls a Pod create makes (without `reads`: only its Txn), straight to the store with
/// cairn-client from `tasks` concurrent tasks over one client, as the API server holds one: a
/// linearizable get of the namespace, linearizable range reads of the namespace's LimitRanges and
/// ResourceQuotas, then a Txn putting `value` guarded on the key being new.
async fn store_creates(
    endpoints: &[String],
    tasks: usize,
    reads: bool,
    value: Vec<u8>,
    secs: u64,
) -> Creates {
    use cairn_client::{prefix_end, Compare, GetOptions, Txn, TxnOp};
    let client = cairn_client::Client::connect(endpoints, None)
        .await
        .expect("store client");
    let value = Arc::new(value);
    let next = Arc::new(AtomicU64::new(0));
    let tag = if reads { "r" } else { "w" };
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (c, value, next) = (client.clone(), value.clone(), next.clone());
        handles.push(tokio::spawn(async move {
            let mut out = Creates::default();
            while Instant::now() < deadline {
                let key = format!(
                    "/bench-store/{tag}/{:07}",
                    next.fetch_add(1, Ordering::Relaxed)
                );
                let t0 = Instant::now();
                let mut r = Ok(());
                if reads {
                    r = r.and(
                        c.get(format!("/registry/namespaces/{CREATE_NS}"), None)
                            .await
                            .map(|_| ()),
                    );
                    for res in ["limitranges", "resourcequotas"] {
                        let prefix = format!("/registry/{res}/{CREATE_NS}/");
                        let opts = GetOptions::new().with_range(prefix_end(prefix.as_bytes()));
                        r = r.and(c.get(prefix, Some(opts)).await.map(|_| ()));
                    }
                }
                let txn = Txn::new()
                    .when([Compare::create_revision(key.as_str()).eq(0)])
                    .and_then([TxnOp::put(key.as_str(), value.as_slice(), None)])
                    .or_else([TxnOp::get(
                        key.as_str(),
                        Some(GetOptions::new().with_count_only()),
                    )]);
                r = r.and(c.txn(txn).await.map(|_| ()));
                match r {
                    Ok(()) => out.latencies.push(t0.elapsed().as_micros() as u32),
                    Err(e) => {
                        out.errors += 1;
                        out.first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            out
        }));
    }
    let mut all = Creates::default();
    for h in handles {
        let c = h.await.expect("store task");
        all.latencies.extend(c.latencies);
        all.errors += c.errors;
    }
    all.elapsed = started.elapsed();
    all.latencies.sort_unstable();
    all
}

/// Which member the API server's store client talks to: the first of its `--etcd-servers`.
#[derive(Clone, Copy, PartialEq)]
enum Via {
    Follower,
    Leader,
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Follower => "a follower",
            Via::Leader => "the leader",
        }
    }
}

/// The index of the leader among `urls`, asked of each member until one says it leads.
async fn leader_index(urls: &[String]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for (i, u) in urls.iter().enumerate() {
            if let Ok(c) = cairn_client::Client::connect([u], None).await {
                if c.status()
                    .await
                    .is_ok_and(|s| s.header.is_some_and(|h| h.member_id == s.leader))
                {
                    return i;
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `urls` with the leader, or the member after it, first.
fn ordered(urls: &[String], leader: usize, via: Via) -> Vec<String> {
    let first = match via {
        Via::Leader => leader,
        Via::Follower => (leader + 1) % urls.len(),
    };
    std::iter::once(urls[first].clone())
        .chain(
            urls.iter()
                .enumerate()
                .filter(|(i, _)| *i != first)
                .map(|(_, u)| u.clone()),
        )
        .collect()
}

/// Every pod of the namespace through pages of `limit` (0: one unpaged request); the count and the
/// time taken.
async fn list_all(api: &Api<Pod>, limit: u32) -> kube::Result<(usize, Duration, usize)> {
    let t0 = Instant::now();
    let mut count = 0;
    let mut pages = 0;
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default();
        if limit > 0 {
            lp = lp.limit(limit);
        }
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = api.list(&lp).await?;
        count += page.items.len();
        pages += 1;
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
    }
    Ok((count, t0.elapsed(), pages))
}

#[derive(Default)]
struct Watched {
    /// Microseconds from a write's send to its event's arrival, over every watcher.
    latencies: Vec<u32>,
    events: u64,
    /// Watchers that did not receive every acknowledged write.
    short: usize,
    missing: u64,
    broken: usize,
    errors: u64,
}

struct Writes {
    sent: u64,
    acked: u64,
    failed: u64,
    skipped: u64,
    latencies: Vec<u32>,
    first_error: Option<String>,
    elapsed: Duration,
}

/// `watchers` watches on the ConfigMaps of `WATCH_NS` from the current resourceVersion, while one
/// writer creates a ConfigMap every 1/`rate` s (open loop) for `secs`, each carrying the moment it
/// was sent; every watcher records receive time minus send time of every ADDED event.
async fn watch_load(
    clients: &[kube::Client],
    writer: kube::Client,
    watchers: usize,
    rate: u64,
    secs: u64,
) -> (Writes, Watched) {
    let epoch = Instant::now();
    let lister: Api<ConfigMap> = Api::namespaced(clients[0].clone(), WATCH_NS);
    let rv = lister
        .list(&ListParams::default().limit(1))
        .await
        .expect("list configmaps")
        .metadata
        .resource_version
        .unwrap_or_default();
    let done = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    // A bound on the whole phase whatever happens to the writer.
    let hard_deadline = Instant::now() + Duration::from_secs(3 * secs + 120) + DRAIN;
    // Open every watch before the first write, so each must see all of them.
    let mut streams = Vec::new();
    for w in 0..watchers {
        let api: Api<ConfigMap> = Api::namespaced(clients[w % clients.len()].clone(), WATCH_NS);
        let s = api
            .watch(&WatchParams::default(), &rv)
            .await
            .expect("watch starts");
        streams.push(s.boxed());
    }
    let mut handles = Vec::new();
    for mut stream in streams {
        let done = done.clone();
        let acked = acked.clone();
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut broken = false;
            let mut drained_by = None;
            loop {
                let now = Instant::now();
                if done.load(Ordering::Acquire) {
                    let by = *drained_by.get_or_insert(now + DRAIN);
                    if lat.len() as u64 >= acked.load(Ordering::Acquire) || now >= by {
                        break;
                    }
                }
                if now >= hard_deadline {
                    break;
                }
                let ev = match tokio::time::timeout(Duration::from_millis(200), stream.next()).await
                {
                    Err(_) => continue,
                    Ok(None) => {
                        broken = true;
                        break;
                    }
                    Ok(Some(Err(_))) => {
                        errors += 1;
                        broken = true;
                        break;
                    }
                    Ok(Some(Ok(ev))) => ev,
                };
                match ev {
                    WatchEvent::Added(cm) => {
                        let now = epoch.elapsed().as_micros() as u64;
                        let sent = cm
                            .data
                            .as_ref()
                            .and_then(|d| d.get("sent"))
                            .and_then(|s| s.parse::<u64>().ok());
                        match sent {
                            Some(s) => lat.push(now.saturating_sub(s) as u32),
                            None => errors += 1,
                        }
                    }
                    WatchEvent::Bookmark(_) => {}
                    WatchEvent::Error(_) => {
                        errors += 1;
                        broken = true;
                        break;
                    }
                    _ => errors += 1,
                }
            }
            (lat, errors, broken)
        }));
    }

    // The writer: a create per tick, each in a task of its own so a slow one does not delay the
    // next tick.
    let api: Api<ConfigMap> = Api::namespaced(writer, WATCH_NS);
    let write_lat = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut ticker = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    let total = rate * secs;
    let started = Instant::now();
    let (mut sent, mut skipped) = (0u64, 0u64);
    let mut writes = Vec::new();
    for i in 0..total {
        ticker.tick().await;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            skipped += 1;
            continue;
        };
        sent += 1;
        let api = api.clone();
        let (acked, failed, write_lat, first_error) = (
            acked.clone(),
            failed.clone(),
            write_lat.clone(),
            first_error.clone(),
        );
        writes.push(tokio::spawn(async move {
            let _permit = permit;
            let t0 = Instant::now();
            let cm: ConfigMap = serde_json::from_value(json!({
                "metadata": {"name": format!("w-{i:07}")},
                "data": {"sent": epoch.elapsed().as_micros().to_string()},
            }))
            .unwrap();
            match api.create(&PostParams::default(), &cm).await {
                Ok(_) => {
                    write_lat
                        .lock()
                        .unwrap()
                        .push(t0.elapsed().as_micros() as u32);
                    acked.fetch_add(1, Ordering::AcqRel);
                }
                Err(e) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    first_error
                        .lock()
                        .unwrap()
                        .get_or_insert_with(|| e.to_string());
                }
            }
        }));
    }
    for w in writes {
        let _ = w.await;
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::Release);
    let acked_n = acked.load(Ordering::Acquire);
    let mut watched = Watched::default();
    for h in handles {
        let (lat, errors, broken) = h.await.expect("watch task");
        watched.events += lat.len() as u64;
        if (lat.len() as u64) < acked_n {
            watched.short += 1;
            watched.missing += acked_n - lat.len() as u64;
        }
        watched.errors += errors;
        watched.broken += broken as usize;
        watched.latencies.extend(lat);
    }
    watched.latencies.sort_unstable();
    let mut latencies = std::mem::take(&mut *write_lat.lock().unwrap());
    latencies.sort_unstable();
    let first_error = first_error.lock().unwrap().take();
    (
        Writes {
            sent,
            acked: acked_n,
            failed: failed.load(Ordering::Relaxed),
            skipped,
            latencies,
            first_error,
            elapsed,
        },
        watched,
    )
}

async fn kube_clients(server: &common::ApiServer) -> Vec<kube::Client> {
    let mut clients = Vec::new();
    for _ in 0..KUBE_CLIENTS {
        clients.push(server.client().await.expect("kube client"));
    }
    clients
}

/// Pod creates through one API server: one untimed create per task opens the connections, then
/// `secs` of creates; then the same store calls without the API server, to the same member.
async fn creates_through(
    rows: &mut Vec<Row>,
    via: Via,
    server: &common::ApiServer,
    pids: &Pids,
    store_urls: &[String],
    k: &Knobs,
    next: &Arc<AtomicU64>,
) {
    let clients = kube_clients(server).await;
    let warm = create_pods(
        &clients,
        CREATE_NS,
        k.clients,
        Until::Count(k.clients as u64),
        next,
    )
    .await;
    if warm.errors > 0 {
        eprintln!(
            "warm-up: {} errors, first: {:?}",
            warm.errors, warm.first_error
        );
    }
    let cpu = pids.cpu();
    let handled = server_time(&clients[0], "CREATE", "pods").await;
    let deadline = Instant::now() + Duration::from_secs(k.secs);
    let c = create_pods(
        &clients,
        CREATE_NS,
        k.clients,
        Until::Deadline(deadline),
        next,
    )
    .await;
    let busy = pids.busy_since(cpu);
    let handled = mean_ms(handled, server_time(&clients[0], "CREATE", "pods").await);
    let rate = c.latencies.len() as f64 / c.elapsed.as_secs_f64();
    let (n, v) = (k.clients, via.name());
    row(
        rows,
        &format!("Pod creates, {n} clients, store endpoint {v}: creates/s"),
        format!("{rate:.0}"),
        ">= 1000",
    );
    row(
        rows,
        &format!("Pod creates, store endpoint {v}: p50 / p99 latency"),
        format!(
            "{:.1} / {:.1} ms",
            pct_ms(&c.latencies, 0.50),
            pct_ms(&c.latencies, 0.99)
        ),
        "p99 < 100 ms",
    );
    row(
        rows,
        &format!("Pod creates, store endpoint {v}: mean latency at the client / inside the API server's handler"),
        format!("{:.1} / {handled:.1} ms", mean_of(&c.latencies)),
        "-",
    );
    row(
        rows,
        &format!("Pod creates, store endpoint {v}: failed"),
        match &c.first_error {
            None => "0".to_string(),
            Some(e) => format!("{} (first: {e})", c.errors),
        },
        "0",
    );
    row(
        rows,
        &format!("Pod creates, store endpoint {v}: CPU cores busy, API server / 3 members / bench client / machine"),
        busy,
        "-",
    );

    // A created pod as the value the store-alone Txn writes (the API server stores about this).
    let created = Api::<Pod>::namespaced(clients[0].clone(), CREATE_NS)
        .list(&ListParams::default().limit(1))
        .await
        .expect("list created pods");
    let value = serde_json::to_vec(&created.items[0]).unwrap();
    for reads in [true, false] {
        let s = store_creates(store_urls, k.clients, reads, value.clone(), k.secs).await;
        let what = if reads {
            "a create's store calls (3 linearizable reads + Txn)"
        } else {
            "the Txn alone"
        };
        row(
            rows,
            &format!("store alone, {v}: {what}, {n} clients: per s (p50 / p99 ms)"),
            format!(
                "{:.0} ({:.1} / {:.1}){}",
                s.latencies.len() as f64 / s.elapsed.as_secs_f64(),
                pct_ms(&s.latencies, 0.50),
                pct_ms(&s.latencies, 0.99),
                if s.errors > 0 {
                    format!(", {} failed", s.errors)
                } else {
                    String::new()
                }
            ),
            "-",
        );
    }
}

fn mib_list(members: &[f64]) -> String {
    members
        .iter()
        .map(|m| format!("{m:.1}"))
        .collect::<Vec<_>>()
        .join(" / ")
        + " MiB"
}

async fn bench(k: &Knobs) -> Vec<Row> {
    let setup = Instant::now();
    let cluster = common::start_cluster(3);
    for url in &cluster.client_urls {
        common::wait_serving(url).await;
    }
    let leader = leader_index(&cluster.client_urls).await;
    // One API server per store endpoint choice, all started now; the first in CAIRN_BENCH_VIA
    // serves every phase but the second's creates.
    let mut servers = Vec::new();
    for &via in &k.via {
        let mut s = common::ApiServer::start(&ordered(&cluster.client_urls, leader, via));
        s.wait_ready().await;
        servers.push(s);
    }
    let pids = Pids {
        apiserver: servers[0].pid(),
        members: cluster.pids(),
    };
    let clients = kube_clients(&servers[0]).await;
    let namespaces: Api<Namespace> = Api::all(clients[0].clone());
    for ns in [NS, CREATE_NS, WATCH_NS] {
        let obj: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
        namespaces
            .create(&PostParams::default(), &obj)
            .await
            .expect("create namespace");
    }
    eprintln!(
        "cluster and API servers up in {:.1} s: API server pids {:?}, member pids {:?} (leader m{leader})",
        setup.elapsed().as_secs_f64(),
        servers.iter().map(|s| s.pid()).collect::<Vec<_>>(),
        pids.members
    );
    let mut rows = Vec::new();
    let (rss, members) = pids.rss_mib();
    row(
        &mut rows,
        "API server RSS, idle (empty store)",
        format!("{rss:.1} MiB"),
        "-",
    );
    row(
        &mut rows,
        "member RSS, idle (3 members)",
        mib_list(&members),
        "-",
    );

    // 1. The stored pods: `pods` creates from the same concurrent clients.
    let next = Arc::new(AtomicU64::new(0));
    let fill = create_pods(&clients, NS, k.clients, Until::Count(k.pods as u64), &next).await;
    row(
        &mut rows,
        &format!("storing {} pods ({} clients)", k.pods, k.clients),
        format!(
            "{:.1} s, {:.0} creates/s, {} failed",
            fill.elapsed.as_secs_f64(),
            fill.latencies.len() as f64 / fill.elapsed.as_secs_f64(),
            fill.errors
        ),
        "-",
    );
    let stored = fill.latencies.len();
    let (rss, members) = pids.rss_mib();
    row(
        &mut rows,
        &format!("API server RSS, {stored} pods stored"),
        format!("{rss:.1} MiB"),
        "-",
    );
    row(
        &mut rows,
        &format!("member RSS, {stored} pods stored (3 members)"),
        mib_list(&members),
        "-",
    );

    // 2. Full LISTs: paged by PAGE, then one unpaged for comparison.
    let pods: Api<Pod> = Api::namespaced(clients[0].clone(), NS);
    let cpu = pids.cpu();
    let mut times = Vec::new();
    let mut counts = Vec::new();
    let mut pages = 0;
    for _ in 0..LIST_RUNS {
        let (count, took, p) = list_all(&pods, PAGE).await.expect("paged list");
        times.push(took.as_secs_f64() * 1000.0);
        counts.push(count);
        pages = p;
    }
    let busy = pids.busy_since(cpu);
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    row(
        &mut rows,
        &format!(
            "full LIST of {stored} pods, pages of {PAGE} ({pages} requests): median of {LIST_RUNS}"
        ),
        format!(
            "{:.0} ms (runs {}; items {})",
            sorted[LIST_RUNS / 2],
            times
                .iter()
                .map(|t| format!("{t:.0}"))
                .collect::<Vec<_>>()
                .join(", "),
            counts
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        "< 1000 ms",
    );
    row(
        &mut rows,
        "paged LISTs: CPU cores busy, API server / 3 members / bench client / machine",
        busy,
        "-",
    );
    let unpaged = match list_all(&pods, 0).await {
        Ok((count, took, _)) => format!("{:.0} ms (items {count})", took.as_secs_f64() * 1000.0),
        Err(kube::Error::Api(st)) => format!("fails: {} {}", st.code, st.message),
        Err(e) => format!("fails: {e}"),
    };
    row(
        &mut rows,
        &format!("full LIST of {stored} pods, unpaged (one request)"),
        unpaged,
        "-",
    );
    let (rss, _) = pids.rss_mib();
    row(
        &mut rows,
        "API server RSS after the LISTs",
        format!("{rss:.1} MiB"),
        "-",
    );

    // 3. Timed creates through each API server, into a namespace of their own.
    for (s, &via) in servers.iter().zip(&k.via) {
        let p = Pids {
            apiserver: s.pid(),
            members: cluster.pids(),
        };
        let urls = ordered(&cluster.client_urls, leader, via);
        creates_through(&mut rows, via, s, &p, &urls, k, &next).await;
    }
    let server = servers.swap_remove(0);
    drop(servers);

    // 4. Watch latency under a steady writer.
    if k.watchers > 0 {
        let writer = server.client().await.expect("kube client");
        let cpu = pids.cpu();
        let handled = server_time(&clients[0], "CREATE", "configmaps").await;
        let (w, watched) = watch_load(&clients, writer, k.watchers, k.writes, k.secs).await;
        let busy = pids.busy_since(cpu);
        let handled = mean_ms(
            handled,
            server_time(&clients[0], "CREATE", "configmaps").await,
        );
        let rate = k.writes;
        let nw = k.watchers;
        row(
            &mut rows,
            &format!("watch, {nw} watchers, {rate} ConfigMap creates/s: event latency p50 / p99"),
            format!(
                "{:.1} / {:.1} ms",
                pct_ms(&watched.latencies, 0.50),
                pct_ms(&watched.latencies, 0.99)
            ),
            "none set",
        );
        row(
            &mut rows,
            "watch: writes sent / acknowledged / failed / skipped (over 1024 in flight)",
            format!(
                "{} / {} / {} / {} in {:.1} s{}",
                w.sent,
                w.acked,
                w.failed,
                w.skipped,
                w.elapsed.as_secs_f64(),
                w.first_error
                    .map(|e| format!(" (first failure: {e})"))
                    .unwrap_or_default()
            ),
            &format!("{} / {} / 0 / 0", rate * k.secs, rate * k.secs),
        );
        row(
            &mut rows,
            "watch: write latency p50 / p99; mean at the client / inside the handler",
            format!(
                "{:.1} / {:.1} ms; {:.1} / {handled:.1} ms",
                pct_ms(&w.latencies, 0.50),
                pct_ms(&w.latencies, 0.99),
                mean_of(&w.latencies)
            ),
            "-",
        );
        row(
            &mut rows,
            "watch: events received / expected; watchers short, broken",
            format!(
                "{} / {}; {} short (missing {}), {} broken, {} bad events",
                watched.events,
                w.acked * nw as u64,
                watched.short,
                watched.missing,
                watched.broken,
                watched.errors
            ),
            "all; 0, 0",
        );
        row(
            &mut rows,
            "watch: CPU cores busy, API server / 3 members / bench client / machine",
            busy,
            "-",
        );
    }
    let (rss, members) = pids.rss_mib();
    row(
        &mut rows,
        "RSS at the end: API server; members",
        format!("{rss:.1} MiB; {}", mib_list(&members)),
        "-",
    );
    let end_leader = leader_index(&cluster.client_urls).await;
    row(
        &mut rows,
        "store leader at the start / at the end",
        format!("m{leader} / m{end_leader}"),
        "-",
    );
    drop(server);
    drop(cluster);
    rows
}

fn main() {
    if !common::benchmarking("apiserver") {
        return;
    }
    let k = Knobs::from_env();
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let rows = rt.block_on(bench(&k));
    common::print_table(
        &format!(
            "3 cairn members and cairn-orchestrator apiserver on 127.0.0.1 (fsync on), {KUBE_CLIENTS} kube clients over HTTPS (HTTP/1.1); \
             {} pods stored, LISTs and watches through the API server whose store endpoint is {}; creates {} s from {} clients; \
             {} watchers under {} writes/s for {} s; whole run {:.0} s",
            k.pods,
            k.via[0].name(),
            k.secs,
            k.clients,
            k.watchers,
            k.writes,
            k.secs,
            started.elapsed().as_secs_f64()
        ),
        &rows,
    );
}
