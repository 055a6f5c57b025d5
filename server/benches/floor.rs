//! The machine's floor for one replicated, durable write: what the 1-client put row could reach
//! with nothing but the unavoidable steps, so that row's numbers can be read against it.
//!
//! Three member processes and a client, on 127.0.0.1, each step a blocking system call and
//! nothing else: the client sends a 300-byte request; the leader appends a 400-byte record to its
//! log file, sends it to both followers, `fdatasync`s its own copy while they do theirs, and
//! answers the client once its own sync and one follower's acknowledgement are in (a quorum of
//! three). A follower appends, syncs and acknowledges. No encoding, no state machine, no runtime:
//! every wait is a thread parked in the kernel and woken by a socket or the disk, as a member's
//! worker is. The log files are written with zeros ahead of the records, as the store's
//! write-ahead file is, so a sync never commits a new file size.
//!
//! Rows beyond the floor hand a member's sync to a thread of its own, which reports back through
//! a socket, as the store's members hand theirs to their log's sync thread: the cost of that
//! hand-off on this machine.
//!
//! Run: `cargo bench -p cairn-server --bench floor` (`CAIRN_FLOOR_SECS`, default 5 s per row).
//! Owns only its own processes; imports nothing of the store.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

const REQUEST: usize = 300;
const RECORD: usize = 400;
const ZEROS: u64 = 64 << 20;
/// How long a member waits for its next message before it gives up (the run is over or gone).
const IDLE: Duration = Duration::from_secs(30);

fn main() {
    match std::env::var("CAIRN_FLOOR_ROLE").as_deref() {
        Ok("follower") => follower(),
        Ok("leader") => leader(),
        _ => run(),
    }
}

/// A log file of zeros that records overwrite in place.
fn log_file(dir: &Path, name: &str) -> File {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join(name))
        .expect("log file");
    let chunk = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < ZEROS {
        file.write_all_at(&chunk, at).expect("zeros");
        at += chunk.len() as u64;
    }
    file.sync_all().expect("sync zeros");
    file
}

/// A member's log and where its `fdatasync` runs: on the thread that appended, or on a thread of
/// its own that reports each completion with a byte on `done`.
struct Log {
    file: File,
    at: u64,
    record: Vec<u8>,
    sync_thread: Option<(mpsc::Sender<()>, UnixStream)>,
    synced: Arc<Synced>,
}

/// Time spent in `fdatasync` and how many, wherever they ran.
#[derive(Default)]
struct Synced {
    nanos: AtomicU64,
    count: AtomicU64,
}

impl Synced {
    fn sync(&self, file: &File) {
        let started = Instant::now();
        file.sync_data().expect("fdatasync");
        self.nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Mean µs per sync, written where the run reads it once the member has ended.
    fn report(&self, dir: &Path) {
        let n = self.count.load(Ordering::Relaxed).max(1);
        let mean = self.nanos.load(Ordering::Relaxed) as f64 / n as f64 / 1e3;
        std::fs::write(dir.join("fsync"), format!("{mean:.0}")).expect("report");
    }
}

impl Log {
    fn new(dir: &Path, name: &str, hand_off: bool) -> Log {
        let file = log_file(dir, name);
        let synced = Arc::new(Synced::default());
        let timer = synced.clone();
        let sync_thread = hand_off.then(|| {
            let (start, requests) = mpsc::channel::<()>();
            let (done, mut report) = UnixStream::pair().expect("socketpair");
            let synced = file.try_clone().expect("clone");
            std::thread::spawn(move || {
                while requests.recv().is_ok() {
                    timer.sync(&synced);
                    if report.write_all(&[1]).is_err() {
                        break;
                    }
                }
            });
            (start, done)
        });
        Log {
            file,
            at: 0,
            record: vec![7u8; RECORD],
            sync_thread,
            synced,
        }
    }

    fn append(&mut self, payload: &[u8]) {
        self.record[..payload.len()].copy_from_slice(payload);
        self.file
            .write_all_at(&self.record, self.at)
            .expect("append");
        self.at = (self.at + RECORD as u64) % (ZEROS - RECORD as u64);
    }

    /// Syncs, or starts the sync on the sync thread: true once it is done.
    fn sync(&self) -> bool {
        match &self.sync_thread {
            None => {
                self.synced.sync(&self.file);
                true
            }
            Some((start, _)) => {
                start.send(()).expect("sync thread");
                false
            }
        }
    }

    /// The socket a handed-off sync reports on.
    fn done(&self) -> Option<&UnixStream> {
        self.sync_thread.as_ref().map(|(_, done)| done)
    }

    fn await_sync(&self) {
        let mut one = [0u8; 1];
        self.done()
            .expect("sync thread")
            .read_exact(&mut one)
            .expect("sync done");
    }
}

fn hand_off(role: &str) -> bool {
    std::env::var("CAIRN_FLOOR_HAND_OFF").is_ok_and(|v| v == role || v == "both")
}

fn listen() -> TcpListener {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    println!("{}", listener.local_addr().expect("addr").port());
    std::io::stdout().flush().expect("stdout");
    listener
}

fn accept(listener: &TcpListener) -> TcpStream {
    let (stream, _) = listener.accept().expect("accept");
    stream.set_nodelay(true).expect("nodelay");
    stream.set_read_timeout(Some(IDLE)).expect("timeout");
    stream
}

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream.set_read_timeout(Some(IDLE)).expect("timeout");
    stream
}

fn dir() -> PathBuf {
    PathBuf::from(std::env::var("CAIRN_FLOOR_DIR").expect("CAIRN_FLOOR_DIR"))
}

/// Append, sync, acknowledge, until the leader hangs up.
fn follower() {
    let mut log = Log::new(&dir(), "log", hand_off("follower"));
    let listener = listen();
    let mut leader = accept(&listener);
    let mut request = [0u8; REQUEST];
    while leader.read_exact(&mut request).is_ok() {
        log.append(&request);
        if !log.sync() {
            log.await_sync();
        }
        if leader.write_all(&[1]).is_err() {
            break;
        }
    }
    log.synced.report(&dir());
}

/// Waits until the leader's own sync is done and one follower has acknowledged `want` records,
/// reading every acknowledgement that has arrived; `acked` counts each follower's.
fn await_quorum(
    followers: &mut [TcpStream; 2],
    log: &Log,
    mut synced: bool,
    acked: &mut [u64; 2],
    want: u64,
) {
    while !synced || (acked[0] < want && acked[1] < want) {
        let done = match (synced, log.done()) {
            (false, Some(done)) => done.as_raw_fd(),
            _ => -1,
        };
        let mut fds =
            [followers[0].as_raw_fd(), followers[1].as_raw_fd(), done].map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        // SAFETY: `fds` is a live array of three pollfd for the call's length.
        #[allow(unsafe_code)]
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 3, IDLE.as_millis() as i32) };
        assert!(ready > 0, "no follower answered");
        for (i, fd) in fds[..2].iter().enumerate() {
            if fd.revents != 0 {
                let mut acks = [0u8; 64];
                let n = followers[i].read(&mut acks).expect("ack");
                assert!(n > 0, "a follower hung up");
                acked[i] += n as u64;
            }
        }
        if fds[2].revents != 0 {
            log.await_sync();
            synced = true;
        }
    }
}

fn leader() {
    let ports: Vec<u16> = std::env::var("CAIRN_FLOOR_FOLLOWERS")
        .expect("CAIRN_FLOOR_FOLLOWERS")
        .split(',')
        .map(|p| p.parse().expect("port"))
        .collect();
    let mut followers = [connect(ports[0]), connect(ports[1])];
    let hand_off = hand_off("leader");
    let mut log = Log::new(&dir(), "log", hand_off);
    let listener = listen();
    let mut client = accept(&listener);
    let mut request = [0u8; REQUEST];
    let (mut sent, mut acked) = (0u64, [0u64; 2]);
    while client.read_exact(&mut request).is_ok() {
        log.append(&request);
        // A handed-off sync starts before the followers are sent the record, as in the store; an
        // inline one after, so that theirs run alongside it.
        let mut synced = hand_off && log.sync();
        for f in followers.iter_mut() {
            f.write_all(&request).expect("replicate");
        }
        if !hand_off {
            synced = log.sync();
        }
        sent += 1;
        await_quorum(&mut followers, &log, synced, &mut acked, sent);
        if client.write_all(&[1]).is_err() {
            break;
        }
    }
    log.synced.report(&dir());
}

fn spawn(role: &str, dir: &Path, followers: &str, hand_off: &str) -> (Child, u16) {
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .env("CAIRN_FLOOR_ROLE", role)
        .env("CAIRN_FLOOR_DIR", dir)
        .env("CAIRN_FLOOR_FOLLOWERS", followers)
        .env("CAIRN_FLOOR_HAND_OFF", hand_off)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn member");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("port");
    let port = line.trim().parse().expect("member port");
    (child, port)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

/// One client writing for `secs`: (ops/s, p50 ms, p99 ms).
fn drive(port: u16, secs: f64) -> (f64, f64, f64) {
    let mut leader = connect(port);
    let request = [3u8; REQUEST];
    let mut ack = [0u8; 1];
    let mut took = Vec::new();
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        let t = Instant::now();
        leader.write_all(&request).expect("request");
        leader.read_exact(&mut ack).expect("answer");
        took.push(t.elapsed());
    }
    let elapsed = start.elapsed().as_secs_f64();
    took.sort();
    (
        took.len() as f64 / elapsed,
        percentile(&took, 0.5),
        percentile(&took, 0.99),
    )
}

/// A lone 400-byte append and `fdatasync`, back to back: µs per sync.
fn lone_sync(dir: &Path, secs: f64) -> f64 {
    let mut log = Log::new(dir, "lone", false);
    let request = [5u8; REQUEST];
    let (start, mut n) = (Instant::now(), 0u64);
    while start.elapsed().as_secs_f64() < secs {
        log.append(&request);
        log.sync();
        n += 1;
    }
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}

/// What one cluster run measured.
struct Run {
    ops: f64,
    p50: f64,
    p99: f64,
    /// Mean `fdatasync` per member in µs, the leader's first.
    fsync: Vec<String>,
}

/// A 3-member cluster whose members hand their syncs off as `hand_off` says, driven by one
/// client for `secs`.
fn cluster(base: &Path, hand_off: &str, secs: f64) -> Run {
    let dirs: Vec<PathBuf> = (0..3).map(|i| base.join(format!("m{i}"))).collect();
    for d in &dirs {
        std::fs::create_dir_all(d).expect("member dir");
    }
    let (f1, p1) = spawn("follower", &dirs[1], "", hand_off);
    let (f2, p2) = spawn("follower", &dirs[2], "", hand_off);
    let (l, pl) = spawn("leader", &dirs[0], &format!("{p1},{p2}"), hand_off);
    // The client hangs up when it is done; the leader then ends, and its followers after it.
    let (ops, p50, p99) = drive(pl, secs);
    let deadline = Instant::now() + Duration::from_secs(10);
    for mut child in [l, f1, f2] {
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    let fsync = dirs
        .iter()
        .map(|d| std::fs::read_to_string(d.join("fsync")).unwrap_or_else(|_| "-".into()))
        .collect();
    Run {
        ops,
        p50,
        p99,
        fsync,
    }
}

fn run() {
    // As a test (`cargo test --benches`) it only says how to run it: a run writes 64 MiB of zeros
    // per member and cluster.
    if !std::env::args().any(|a| a == "--bench") {
        println!("floor bench: run with `cargo bench -p cairn-server --bench floor`");
        return;
    }
    let secs: f64 = std::env::var("CAIRN_FLOOR_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let base = std::env::temp_dir().join(format!("cairn-floor-{}", std::process::id()));
    std::fs::create_dir_all(&base).expect("bench dir");
    let lone = lone_sync(&base, secs.min(2.0));
    println!(
        "| floor, 3 members, 1 client | ops/s (p50 / p99 ms) | per write | mean fdatasync, leader first |"
    );
    println!("|---|---|---|---|");
    println!("| a lone 400-byte append + fdatasync, no network | | {lone:.0} µs | |");
    for (name, hand_off) in [
        ("every sync on the member's one thread", "none"),
        ("followers hand their sync to a thread", "follower"),
        ("the leader hands its sync to a thread", "leader"),
        ("every member hands its sync to a thread", "both"),
    ] {
        let Run {
            ops,
            p50,
            p99,
            fsync,
        } = cluster(&base, hand_off, secs);
        println!(
            "| {name} | {ops:.0} ({p50:.2} / {p99:.2}) | {:.0} µs | {} µs |",
            1e6 / ops,
            fsync.join(" / ")
        );
    }
    let _ = std::fs::remove_dir_all(&base);
}
