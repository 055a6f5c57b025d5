//! Watch fan-out, idle watcher memory and lease keep-alive, Cairn beside etcd on the same machine in
//! the same run: 3 members on loopback each, fsync on. Prints a markdown table.
//!
//! `cargo bench -p cairn-server --bench watch` (etcd comes from Debian's `etcd-server`; without it
//! only Cairn is measured). `CAIRN_BENCH_SECS` sets how long the writer runs during fan-out (default
//! 10), `CAIRN_BENCH_SYSTEMS=cairn` skips etcd.
//!
//! - Fan-out: 1,000 watchers on one prefix, 10 per watch stream, 100 streams (one connection each)
//!   spread round-robin over the members; one writer puts 1,000 keys/s under the prefix. Every
//!   watcher must see every acknowledged put exactly once, in revision order.
//! - Idle watchers: RSS summed over all members (the streams are spread over all of them) before
//!   and after creating the 1,000 watchers, with the connections already open.
//! - Leases: 10,000 leases with a 10 s TTL, granted 64 at a time, renewed every TTL/3 for 20 s over
//!   100 keep-alive streams of 100 leases each; then every lease must still exist.

mod common;

use std::collections::HashSet;
use std::path::Path;

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_proto::etcdserverpb::lease_client::LeaseClient as RawLeaseClient;
use cairn_proto::etcdserverpb::LeaseKeepAliveRequest;
use common::{connect, record, rss_kib, start, Cluster, Row, Stolen, System};
use etcd_client::{WatchOptions, WatchStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

const PREFIX: &str = "wb/";
const WATCH_STREAMS: usize = 100;
const WATCHERS_PER_STREAM: usize = 10;
const WATCHERS: usize = WATCH_STREAMS * WATCHERS_PER_STREAM;
const PUTS_PER_SEC: u64 = 1_000;
/// Time the watchers get to deliver what is still in flight once the writer stops.
const DRAIN_LIMIT: Duration = Duration::from_secs(20);
/// Delivery stalled this long counts as finished, so a lost event does not cost the whole limit.
const DRAIN_STALL: Duration = Duration::from_secs(5);
const IDLE_SECS: u64 = 2;

const LEASES: usize = 10_000;
const LEASE_TTL: i64 = 10;
const GRANT_CONCURRENCY: usize = 64;
const GRANT_CONNECTIONS: usize = 16;
const KEEPALIVE_STREAMS: usize = 100;
const KEEPALIVE_SECS: u64 = 20;
const TTL_SAMPLE: usize = 100;

fn cpu_secs(pid: &str) -> f64 {
    let stat =
        std::fs::read_to_string(Path::new("/proc").join(pid).join("stat")).unwrap_or_default();
    // The command name may hold spaces; the numeric fields start after its closing parenthesis.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (tick(11) + tick(12)) as f64 / 100.0
}

fn members_cpu_secs(cluster: &Cluster) -> f64 {
    cluster
        .children
        .iter()
        .map(|c| cpu_secs(&c.id().to_string()))
        .sum()
}

fn rss_sum_bytes(cluster: &Cluster) -> u64 {
    cluster
        .children
        .iter()
        .map(|c| rss_kib(c.id()) * 1024)
        .sum()
}

/// `sorted` must be sorted; microseconds in, milliseconds out.
fn pct_ms(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)] as f64 / 1000.0
}

fn key(i: usize) -> String {
    format!("{PREFIX}{i:08}")
}

fn index_of(key: &[u8]) -> Option<usize> {
    std::str::from_utf8(key.strip_prefix(PREFIX.as_bytes())?)
        .ok()?
        .parse()
        .ok()
}

/// What one watcher saw: a bit per put index, so duplicates and gaps are both visible.
struct Watcher {
    seen: Vec<u64>,
    last_revision: i64,
    duplicates: u64,
    out_of_order: u64,
}

impl Watcher {
    fn new(puts: usize) -> Self {
        Watcher {
            seen: vec![0; puts.div_ceil(64)],
            last_revision: 0,
            duplicates: 0,
            out_of_order: 0,
        }
    }

    fn has(&self, i: usize) -> bool {
        self.seen[i / 64] & (1 << (i % 64)) != 0
    }
}

#[derive(Default)]
struct StreamOutcome {
    watchers: Vec<Watcher>,
    latencies_us: Vec<u32>,
    canceled: u64,
    cancel_reason: Option<String>,
    unknown_events: u64,
    error: Option<String>,
}

/// Shared between the writer and the stream readers.
struct FanOut {
    epoch: Instant,
    /// Nanoseconds since `epoch` at which put `i` was sent; 0 until then.
    sent_at: Vec<AtomicU64>,
    delivered: AtomicU64,
    last_delivery_ns: AtomicU64,
}

impl FanOut {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

async fn created_id(stream: &mut WatchStream) -> i64 {
    loop {
        let resp = stream
            .message()
            .await
            .expect("watch create")
            .expect("watch stream closed during create");
        assert!(
            !resp.canceled(),
            "watch create refused: {}",
            resp.cancel_reason()
        );
        if resp.created() {
            return resp.watch_id();
        }
    }
}

async fn read_stream(
    mut stream: WatchStream,
    ids: Vec<i64>,
    shared: Arc<FanOut>,
    mut stop: watch::Receiver<bool>,
) -> StreamOutcome {
    let puts = shared.sent_at.len();
    let mut out = StreamOutcome {
        watchers: (0..ids.len()).map(|_| Watcher::new(puts)).collect(),
        ..Default::default()
    };
    loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            _ = stop.wait_for(|s| *s) => break,
        };
        let resp = match msg {
            Ok(Some(resp)) => resp,
            Ok(None) => {
                out.error = Some("stream ended by the server".into());
                break;
            }
            Err(e) => {
                out.error = Some(e.to_string());
                break;
            }
        };
        if resp.canceled() {
            out.canceled += 1;
            out.cancel_reason
                .get_or_insert_with(|| resp.cancel_reason().to_string());
            continue;
        }
        if resp.events().is_empty() {
            continue;
        }
        let now = shared.now_ns();
        let Some(w) = ids.iter().position(|&id| id == resp.watch_id()) else {
            out.unknown_events += resp.events().len() as u64;
            continue;
        };
        let watcher = &mut out.watchers[w];
        for ev in resp.events() {
            let Some(kv) = ev.kv() else {
                out.unknown_events += 1;
                continue;
            };
            let Some(i) = index_of(kv.key()).filter(|&i| i < puts) else {
                out.unknown_events += 1;
                continue;
            };
            if kv.mod_revision() <= watcher.last_revision {
                watcher.out_of_order += 1;
            }
            watcher.last_revision = watcher.last_revision.max(kv.mod_revision());
            if watcher.has(i) {
                watcher.duplicates += 1;
            }
            watcher.seen[i / 64] |= 1 << (i % 64);
            let sent = shared.sent_at[i].load(Ordering::Acquire);
            if sent != 0 {
                out.latencies_us
                    .push((now.saturating_sub(sent) / 1000).min(u32::MAX as u64) as u32);
            }
        }
        shared
            .delivered
            .fetch_add(resp.events().len() as u64, Ordering::Relaxed);
        shared.last_delivery_ns.fetch_max(now, Ordering::Relaxed);
    }
    out
}

async fn bench_watch(cluster: &Cluster, system: System, secs: u64, rows: &mut Vec<Row>) {
    let urls = &cluster.client_urls;
    let writer = connect(&urls[0]).await.kv_client();
    let mut stream_clients = Vec::new();
    for s in 0..WATCH_STREAMS {
        stream_clients.push(connect(&urls[s % urls.len()]).await);
    }
    // Members settle after the connections open, so the delta below is the watchers' alone.
    tokio::time::sleep(Duration::from_secs(IDLE_SECS)).await;
    let rss_before = rss_sum_bytes(cluster);

    let opts = WatchOptions::new().with_prefix();
    let mut streams = Vec::new();
    for c in &stream_clients {
        let mut stream = c
            .watch_client()
            .watch(PREFIX, Some(opts.clone()))
            .await
            .expect("open watch stream");
        let mut ids = vec![created_id(&mut stream).await];
        for _ in 1..WATCHERS_PER_STREAM {
            stream
                .watch(PREFIX, Some(opts.clone()))
                .await
                .expect("add watcher");
            ids.push(created_id(&mut stream).await);
        }
        streams.push((stream, ids));
    }
    tokio::time::sleep(Duration::from_secs(IDLE_SECS)).await;
    let rss_after = rss_sum_bytes(cluster);
    let per_watcher = rss_after.saturating_sub(rss_before) as f64 / WATCHERS as f64;
    eprintln!(
        "{} idle watchers: RSS sum {:.1} -> {:.1} MiB, {per_watcher:.0} B per watcher",
        system.name(),
        rss_before as f64 / 1048576.0,
        rss_after as f64 / 1048576.0
    );
    record(
        rows,
        "idle watchers: RSS growth per watcher, 3 members summed",
        system,
        format!(
            "{per_watcher:.0} B ({:.1} MiB for {WATCHERS})",
            rss_after.saturating_sub(rss_before) as f64 / 1048576.0
        ),
    );

    let puts = (secs * PUTS_PER_SEC) as usize;
    let shared = Arc::new(FanOut {
        epoch: Instant::now(),
        sent_at: (0..puts).map(|_| AtomicU64::new(0)).collect(),
        delivered: AtomicU64::new(0),
        last_delivery_ns: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let readers: Vec<_> = streams
        .into_iter()
        .map(|(stream, ids)| {
            tokio::spawn(read_stream(stream, ids, shared.clone(), stop_rx.clone()))
        })
        .collect();

    // Open loop: a put per tick whatever the previous ones are doing, so a slow server shows up as
    // latency rather than as a lower send rate.
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / PUTS_PER_SEC));
    let mut put_tasks = Vec::with_capacity(puts);
    let first_send = shared.now_ns();
    let cpu_before = (members_cpu_secs(cluster), cpu_secs("self"));
    let stolen = Stolen::start();
    for i in 0..puts {
        tick.tick().await;
        shared.sent_at[i].store(shared.now_ns().max(1), Ordering::Release);
        let mut kv = writer.clone();
        put_tasks.push(tokio::spawn(async move {
            kv.put(key(i), i.to_string(), None).await.map(|_| ())
        }));
    }
    let send_secs = (shared.now_ns() - first_send) as f64 / 1e9;
    let mut acked = vec![false; puts];
    let mut put_error = None;
    for (i, t) in put_tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Ok(()) => acked[i] = true,
            Err(e) => {
                put_error.get_or_insert(e.to_string());
            }
        }
    }
    let acked_count = acked.iter().filter(|a| **a).count();
    let expected = (acked_count * WATCHERS) as u64;

    let drain_start = Instant::now();
    let mut last = (shared.delivered.load(Ordering::Relaxed), Instant::now());
    loop {
        let d = shared.delivered.load(Ordering::Relaxed);
        if d >= expected || drain_start.elapsed() > DRAIN_LIMIT {
            break;
        }
        if d != last.0 {
            last = (d, Instant::now());
        } else if last.1.elapsed() > DRAIN_STALL {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu_used = (
        members_cpu_secs(cluster) - cpu_before.0,
        cpu_secs("self") - cpu_before.1,
    );
    let cpu_wall = (shared.now_ns() - first_send) as f64 / 1e9;
    let steal = stolen.percent();
    let _ = stop_tx.send(true);
    let mut outcomes = Vec::new();
    for r in readers {
        outcomes.push(r.await.unwrap());
    }

    let mut missing = 0u64;
    let mut duplicates = 0u64;
    let mut out_of_order = 0u64;
    let mut canceled = 0u64;
    let mut unknown = 0u64;
    let mut broken = 0u64;
    let mut notes = Vec::new();
    let mut latencies = Vec::new();
    for o in &mut outcomes {
        for w in &o.watchers {
            missing += (0..puts).filter(|&i| acked[i] && !w.has(i)).count() as u64;
            duplicates += w.duplicates;
            out_of_order += w.out_of_order;
        }
        canceled += o.canceled;
        unknown += o.unknown_events;
        if let Some(e) = &o.error {
            broken += 1;
            if notes.len() < 3 {
                notes.push(format!("stream error: {e}"));
            }
        }
        if let Some(r) = &o.cancel_reason {
            if notes.len() < 3 {
                notes.push(format!("cancel reason: {r}"));
            }
        }
        latencies.append(&mut o.latencies_us);
    }
    if let Some(e) = &put_error {
        notes.push(format!("put error: {e}"));
    }
    latencies.sort_unstable();
    let delivered = latencies.len() as u64;
    let window = (shared
        .last_delivery_ns
        .load(Ordering::Relaxed)
        .saturating_sub(first_send)) as f64
        / 1e9;
    let rate = if window > 0.0 {
        shared.delivered.load(Ordering::Relaxed) as f64 / window
    } else {
        0.0
    };
    let (p50, p99) = (pct_ms(&latencies, 0.50), pct_ms(&latencies, 0.99));
    eprintln!(
        "{} fan-out: {puts} puts sent in {send_secs:.1} s, {acked_count} acked; {delivered} of {expected} deliveries, {rate:.0}/s, p50 {p50:.1} ms p99 {p99:.1} ms; missing {missing} dup {duplicates} out-of-order {out_of_order} canceled {canceled} broken streams {broken} unknown {unknown}; drain {:.1} s",
        system.name(),
        drain_start.elapsed().as_secs_f64()
    );
    for n in &notes {
        eprintln!("{}   {n}", system.name());
    }
    record(
        rows,
        "fan-out: puts sent / acknowledged",
        system,
        format!("{puts} / {acked_count}"),
    );
    record(
        rows,
        "fan-out: events delivered / expected",
        system,
        format!("{delivered} / {expected}"),
    );
    record(
        rows,
        "fan-out: missing / duplicate / out-of-order",
        system,
        format!("{missing} / {duplicates} / {out_of_order}"),
    );
    record(
        rows,
        "fan-out: canceled watchers / broken streams",
        system,
        format!("{canceled} / {broken}"),
    );
    record(
        rows,
        "fan-out: delivered events/s",
        system,
        format!("{rate:.0}"),
    );
    record(
        rows,
        "fan-out: put sent to event received, p50 / p99 ms",
        system,
        format!("{p50:.1} / {p99:.1}"),
    );
    // Both sides share the same cores, so the client's share bounds what the members could use.
    let wall = cpu_wall;
    eprintln!(
        "{} fan-out CPU: members {:.1} s, bench client {:.1} s over {wall:.1} s, steal {steal:.0} %",
        system.name(),
        cpu_used.0,
        cpu_used.1
    );
    record(
        rows,
        "fan-out: CPU cores busy, members summed / bench client; CPU stolen by the host",
        system,
        format!(
            "{:.2} / {:.2}; {steal:.0} %",
            cpu_used.0 / wall,
            cpu_used.1 / wall
        ),
    );
}

#[derive(Default)]
struct KeepAliveOutcome {
    renewed: u64,
    not_found: u64,
    latencies_us: Vec<u32>,
    error: Option<String>,
}

/// One keep-alive stream renewing its share of the leases, each once per TTL/3, evenly spread.
/// etcd-client's keeper binds a stream to a single lease, while Go's clientv3 multiplexes all of a
/// client's leases over one stream; the generated client can do the latter.
async fn keep_alive_stream(
    url: String,
    leases: Vec<i64>,
    phase: Duration,
    until: Instant,
) -> KeepAliveOutcome {
    let mut out = KeepAliveOutcome::default();
    if leases.is_empty() {
        return out;
    }
    let mut raw = match RawLeaseClient::connect(url).await {
        Ok(c) => c,
        Err(e) => {
            out.error = Some(e.to_string());
            return out;
        }
    };
    let gap = Duration::from_secs_f64(LEASE_TTL as f64 / 3.0 / leases.len() as f64);
    let (tx, rx) = mpsc::channel(256);
    let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<Instant>();
    // grpc-go sends response headers only with the first response, so requests must already be
    // flowing before the call can return.
    let sender = tokio::spawn(async move {
        tokio::time::sleep(phase).await;
        let mut tick = tokio::time::interval(gap);
        let mut j = 0;
        while Instant::now() < until {
            tick.tick().await;
            let _ = sent_tx.send(Instant::now());
            let req = LeaseKeepAliveRequest {
                id: leases[j % leases.len()],
            };
            if tx.send(req).await.is_err() {
                break;
            }
            j += 1;
        }
    });
    let mut responses = match raw.lease_keep_alive(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(e) => {
            out.error = Some(e.to_string());
            sender.abort();
            return out;
        }
    };
    loop {
        match tokio::time::timeout_at((until + Duration::from_secs(5)).into(), responses.message())
            .await
        {
            Ok(Ok(Some(r))) => {
                let sent = sent_rx.recv().await;
                if r.ttl > 0 {
                    out.renewed += 1;
                    if let Some(t) = sent {
                        out.latencies_us.push(t.elapsed().as_micros() as u32);
                    }
                } else {
                    out.not_found += 1;
                }
            }
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                out.error = Some(e.to_string());
                break;
            }
            Err(_) => {
                out.error = Some("no response within 5 s of the last request".into());
                break;
            }
        }
    }
    sender.abort();
    out
}

async fn bench_leases(cluster: &Cluster, system: System, rows: &mut Vec<Row>) {
    let urls = &cluster.client_urls;
    let mut lease_clients = Vec::new();
    for i in 0..GRANT_CONNECTIONS {
        lease_clients.push(connect(&urls[i % urls.len()]).await.lease_client());
    }
    let ids: Arc<Vec<AtomicI64>> = Arc::new((0..LEASES).map(|_| AtomicI64::new(0)).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..GRANT_CONCURRENCY {
        let mut lc = lease_clients[c % lease_clients.len()].clone();
        let (ids, next) = (ids.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut error = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= LEASES {
                    break error;
                }
                match lc.grant(LEASE_TTL, None).await {
                    Ok(r) => ids[i].store(r.id(), Ordering::Relaxed),
                    Err(e) => {
                        error.get_or_insert(e.to_string());
                    }
                }
            }
        }));
    }
    let mut grant_error = None;
    for t in tasks {
        if let Some(e) = t.await.unwrap() {
            grant_error.get_or_insert(e);
        }
    }
    let grant_secs = started.elapsed().as_secs_f64();
    let ids: Vec<i64> = ids.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    let granted = ids.iter().filter(|&&id| id != 0).count();
    eprintln!(
        "{} lease grant: {granted} of {LEASES} in {grant_secs:.1} s ({:.0}/s){}",
        system.name(),
        granted as f64 / grant_secs,
        grant_error
            .as_deref()
            .map(|e| format!(", first error: {e}"))
            .unwrap_or_default()
    );
    record(
        rows,
        "leases: granted, 64 concurrent: grants/s",
        system,
        format!(
            "{granted} in {grant_secs:.1} s: {:.0}/s",
            granted as f64 / grant_secs
        ),
    );

    // Stream k takes leases k, k+100, ... in grant order, so its first pass reaches each lease at
    // most about max(grant time, TTL/3) after the grant.
    let started = Instant::now();
    let stolen = Stolen::start();
    let until = started + Duration::from_secs(KEEPALIVE_SECS);
    let phase_step = Duration::from_secs_f64(LEASE_TTL as f64 / 3.0 / LEASES as f64);
    let mut keepers = Vec::new();
    for k in 0..KEEPALIVE_STREAMS {
        let mine: Vec<i64> = (k..LEASES)
            .step_by(KEEPALIVE_STREAMS)
            .map(|i| ids[i])
            .filter(|&id| id != 0)
            .collect();
        keepers.push(tokio::spawn(keep_alive_stream(
            urls[k % urls.len()].clone(),
            mine,
            phase_step * k as u32,
            until,
        )));
    }
    let mut renewed = 0u64;
    let mut not_found = 0u64;
    let mut broken = 0u64;
    let mut first_error = None;
    let mut latencies = Vec::new();
    for k in keepers {
        let mut o = k.await.unwrap();
        renewed += o.renewed;
        not_found += o.not_found;
        if let Some(e) = o.error {
            broken += 1;
            first_error.get_or_insert(e);
        }
        latencies.append(&mut o.latencies_us);
    }
    let steal = stolen.percent();
    let ka_secs = started.elapsed().as_secs_f64().min(KEEPALIVE_SECS as f64);
    latencies.sort_unstable();
    let (p50, p99) = (pct_ms(&latencies, 0.50), pct_ms(&latencies, 0.99));
    eprintln!(
        "{} keep-alive: {renewed} renewals ({:.0}/s), p50 {p50:.1} ms p99 {p99:.1} ms, steal {steal:.0} %, {not_found} answered lease-not-found, {broken} broken streams{}",
        system.name(),
        renewed as f64 / ka_secs,
        first_error
            .as_deref()
            .map(|e| format!(", first error: {e}"))
            .unwrap_or_default()
    );
    record(
        rows,
        "leases: keep-alives/s (p50 / p99 ms); CPU stolen by the host",
        system,
        format!(
            "{:.0} ({p50:.1} / {p99:.1}); {steal:.0} %",
            renewed as f64 / ka_secs
        ),
    );
    record(
        rows,
        "leases: keep-alives answered not-found / broken streams",
        system,
        format!("{not_found} / {broken}"),
    );

    let mut checker = connect(&urls[0]).await;
    let listed: HashSet<i64> = match checker.leases().await {
        Ok(r) => r.leases().iter().map(|l| l.id()).collect(),
        Err(e) => {
            eprintln!("{} lease list failed: {e}", system.name());
            HashSet::new()
        }
    };
    let alive = ids
        .iter()
        .filter(|&&id| id != 0 && listed.contains(&id))
        .count();
    let mut sample_alive = 0;
    let mut sampled = 0;
    for &id in ids
        .iter()
        .step_by(LEASES / TTL_SAMPLE)
        .filter(|&&id| id != 0)
    {
        sampled += 1;
        if let Ok(r) = checker.lease_time_to_live(id, None).await {
            if r.ttl() > 0 {
                sample_alive += 1;
            }
        }
    }
    eprintln!(
        "{} after {KEEPALIVE_SECS} s: {alive} of {granted} leases listed, {sample_alive} of {sampled} sampled with TTL > 0",
        system.name()
    );
    record(
        rows,
        "leases: listed after 20 s / sample with TTL > 0",
        system,
        format!("{alive} / {sample_alive} of {sampled}"),
    );
    record(
        rows,
        "leases: missed renewals (granted leases gone)",
        system,
        format!("{}", granted - alive),
    );
}

async fn bench(system: System, secs: u64, rows: &mut Vec<Row>) {
    let cluster = start(system, 3);
    for url in &cluster.client_urls {
        connect(url).await;
    }
    bench_watch(&cluster, system, secs, rows).await;
    bench_watcher_entries(&cluster, system, rows).await;
    bench_leases(&cluster, system, rows).await;
}

/// Memory of watcher entries alone: 10,000 watchers added to one already open stream on the first
/// member, so stream and connection buffers are not part of the difference.
async fn bench_watcher_entries(cluster: &Cluster, system: System, rows: &mut Vec<Row>) {
    const ENTRIES: usize = 10_000;
    let pid = cluster.children[0].id();
    let mut c = connect(&cluster.client_urls[0]).await;
    let mut stream = c
        .watch("we/0", Some(WatchOptions::new().with_watch_id(1)))
        .await
        .expect("watch stream");
    created_id(&mut stream).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(pid);
    for i in 0..ENTRIES {
        let opts = WatchOptions::new().with_watch_id(i as i64 + 2);
        stream
            .watch(format!("we/{i}"), Some(opts))
            .await
            .expect("add watcher");
        created_id(&mut stream).await;
    }
    tokio::time::sleep(Duration::from_secs(IDLE_SECS)).await;
    let after = rss_kib(pid);
    let per = after.saturating_sub(before) * 1024 / ENTRIES as u64;
    eprintln!("{} watcher entries: {per} B each", system.name());
    record(
        rows,
        "idle watchers on one open stream: RSS growth per watcher, one member",
        system,
        format!("{per} B ({ENTRIES} watchers)"),
    );
}

fn main() {
    common::run(
        "watch",
        |secs| {
            format!(
            "3 members on 127.0.0.1, fsync on; {WATCHERS} watchers on one prefix over {WATCH_STREAMS} streams, 1 writer at {PUTS_PER_SEC} puts/s for {secs} s; {LEASES} leases (TTL {LEASE_TTL} s) kept alive {KEEPALIVE_SECS} s over {KEEPALIVE_STREAMS} streams"
        )
        },
        |system, secs, mut rows| async move {
            bench(system, secs, &mut rows).await;
            rows
        },
    );
}
