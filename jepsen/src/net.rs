//! Per-link TCP proxies for member-to-member traffic, so network faults need no root, Docker or
//! iptables.
//!
//! Topology choice. A member's id is a hash of its name and its peer URLs, and the founding
//! membership (with those URLs) is the same on every member, so every member must see the same
//! peer URL for a given member: per-viewer URLs would give members different ids for the same
//! peer. Therefore there is one proxy per *destination* member: member `d` listens on a private
//! port and advertises its proxy's address as its peer URL. To know which member a connection
//! comes from, the proxy resolves the connecting socket to its owning process: the client end of
//! the connection (local port = the accepted connection's remote port) is found in
//! `/proc/net/tcp`, and its inode among the file descriptors of the member processes the harness
//! started. That gives a rule per ordered pair `source -> destination` without any help from the
//! server.
//!
//! Faults per ordered link:
//! - `cut`: existing connections carrying the link are closed, new ones are closed on accept;
//!   a connection carries both directions, so cutting either direction closes it;
//! - `delay` (+ `jitter`): every chunk is forwarded after that much time, preserving order;
//! - `loss`: a TCP stream cannot lose bytes without breaking the peer protocol, so loss is
//!   modeled as what TCP turns it into: with that probability a chunk is held back for a
//!   retransmission timeout ([`RETRANSMIT`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The stall a "lost" chunk suffers, like TCP's minimum retransmission timeout.
pub const RETRANSMIT: Duration = Duration::from_millis(200);

/// The state of one ordered link.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkRule {
    pub cut: bool,
    pub delay: Duration,
    pub jitter: Duration,
    /// Probability in [0, 1] that a chunk is delayed by [`RETRANSMIT`].
    pub loss: f64,
}

/// Pids of the member processes, by member index; shared with the cluster.
pub type Pids = Arc<Mutex<Vec<Option<u32>>>>;

struct State {
    rules: Mutex<HashMap<(usize, usize), LinkRule>>,
    changed: watch::Sender<u64>,
    pids: Pids,
    unidentified: AtomicU64,
    connections: AtomicU64,
}

impl State {
    fn rule(&self, from: usize, to: usize) -> LinkRule {
        self.rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(from, to))
            .copied()
            .unwrap_or_default()
    }
}

/// The proxies of one cluster.
pub struct Net {
    state: Arc<State>,
    tasks: Vec<JoinHandle<()>>,
    /// The port each member's proxy listens on (its advertised peer port).
    pub proxy_ports: Vec<u16>,
}

impl Net {
    /// Binds one proxy per member on loopback, forwarding to the members' real peer ports.
    pub async fn start(targets: Vec<u16>, pids: Pids) -> std::io::Result<Net> {
        let (changed, _) = watch::channel(0);
        let state = Arc::new(State {
            rules: Mutex::default(),
            changed,
            pids,
            unidentified: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        });
        let mut tasks = Vec::new();
        let mut proxy_ports = Vec::new();
        for (dst, target) in targets.into_iter().enumerate() {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            proxy_ports.push(listener.local_addr()?.port());
            tasks.push(tokio::spawn(accept_loop(
                listener,
                dst,
                target,
                state.clone(),
            )));
        }
        Ok(Net {
            state,
            tasks,
            proxy_ports,
        })
    }

    /// Sets the rule of the link `from -> to`.
    pub fn set(&self, from: usize, to: usize, rule: LinkRule) {
        self.state
            .rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((from, to), rule);
        self.state.changed.send_modify(|g| *g += 1);
    }

    /// The rule of the link `from -> to`.
    pub fn rule(&self, from: usize, to: usize) -> LinkRule {
        self.state.rule(from, to)
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut_both(&self, a: usize, b: usize) {
        for (x, y) in [(a, b), (b, a)] {
            let mut r = self.rule(x, y);
            r.cut = true;
            self.set(x, y, r);
        }
    }

    /// Splits the members into groups that only talk within themselves.
    pub fn partition(&self, groups: &[Vec<usize>]) {
        for (gi, g) in groups.iter().enumerate() {
            for other in groups.iter().skip(gi + 1) {
                for &a in g {
                    for &b in other {
                        self.cut_both(a, b);
                    }
                }
            }
        }
    }

    /// Every member talks only to its ring neighbours: each sees a majority (for n = 5), but no
    /// two see the same one.
    pub fn ring(&self, n: usize) {
        for a in 0..n {
            for b in (a + 1)..n {
                let d = b - a;
                if d != 1 && d != n - 1 {
                    self.cut_both(a, b);
                }
            }
        }
    }

    /// Removes every fault.
    pub fn heal(&self) {
        self.state
            .rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.state.changed.send_modify(|g| *g += 1);
    }

    /// Connections whose source member could not be identified (they are refused).
    pub fn unidentified(&self) -> u64 {
        self.state.unidentified.load(Ordering::Relaxed)
    }

    /// Connections proxied so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, dst: usize, target: u16, state: Arc<State>) {
    let proxy_port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    loop {
        let (inbound, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, dst, "proxy accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let src = identify(peer, proxy_port, &state).await;
            let Some(src) = src else {
                state.unidentified.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, dst, "peer connection from an unknown process refused");
                return;
            };
            if state.rule(src, dst).cut || state.rule(dst, src).cut {
                return;
            }
            let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                return;
            };
            state.connections.fetch_add(1, Ordering::Relaxed);
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            relay(inbound, outbound, src, dst, state).await;
        });
    }
}

/// Finds which member process owns the client end of an accepted connection.
async fn identify(peer: SocketAddr, proxy_port: u16, state: &State) -> Option<usize> {
    // The client socket can take a moment to show up; retry briefly.
    for _ in 0..20 {
        if let Some(inode) = socket_inode(peer.port(), proxy_port) {
            let pids = state.pids.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let needle = format!("socket:[{inode}]");
            for (i, pid) in pids.iter().enumerate() {
                let Some(pid) = pid else { continue };
                let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                    continue;
                };
                for fd in fds.flatten() {
                    if std::fs::read_link(fd.path())
                        .map(|l| l.to_string_lossy() == needle)
                        .unwrap_or(false)
                    {
                        return Some(i);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// The inode of the IPv4 socket with local port `local` connected to remote port `remote`.
fn socket_inode(local: u16, remote: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    for line in table.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 10 {
            continue;
        }
        let port = |s: &str| {
            s.rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
        };
        if port(cols[1]) == Some(local) && port(cols[2]) == Some(remote) {
            let inode: u64 = cols[9].parse().ok()?;
            if inode != 0 {
                return Some(inode);
            }
        }
    }
    None
}

async fn relay(inbound: TcpStream, outbound: TcpStream, src: usize, dst: usize, state: Arc<State>) {
    let (ir, iw) = inbound.into_split();
    let (or, ow) = outbound.into_split();
    let mut changed = state.changed.subscribe();
    let up = pump(ir, ow, src, dst, state.clone());
    let down = pump(or, iw, dst, src, state.clone());
    let watch_cut = async {
        loop {
            if state.rule(src, dst).cut || state.rule(dst, src).cut {
                return;
            }
            if changed.changed().await.is_err() {
                return;
            }
        }
    };
    // Whichever ends first (a side closed, or the link was cut) drops the whole connection.
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = watch_cut => {}
    }
}

/// Copies one direction, holding each chunk for the link's delay.
async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    from: usize,
    to: usize,
    state: Arc<State>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(1024);
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let rule = state.rule(from, to);
            let mut hold = rule.delay;
            if !rule.jitter.is_zero() {
                hold += rule.jitter.mul_f64(fastrand::f64());
            }
            if rule.loss > 0.0 && fastrand::f64() < rule.loss {
                hold += RETRANSMIT;
            }
            if tx
                .send((Instant::now() + hold, buf[..n].to_vec()))
                .await
                .is_err()
            {
                return;
            }
        }
    };
    let writer = async move {
        let mut not_before = Instant::now();
        while let Some((at, chunk)) = rx.recv().await {
            // Order is kept: a chunk never overtakes the one before it.
            not_before = not_before.max(at);
            tokio::time::sleep_until(not_before).await;
            if w.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn proxy_identifies_this_process_and_forwards_cuts_and_delays() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_port = echo.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 1024];
                    while let Ok(n) = s.read(&mut b).await {
                        if n == 0 || s.write_all(&b[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        // This test process plays member 0; member 1 is the echo server.
        let pids: Pids = Arc::new(Mutex::new(vec![Some(std::process::id()), None]));
        let net = Net::start(vec![0, echo_port], pids).await.unwrap();
        let port = net.proxy_ports[1];
        let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut b))
            .await
            .expect("echo through proxy")
            .unwrap();
        assert_eq!(&b, b"ping");
        assert_eq!(net.connections(), 1);

        net.set(
            0,
            1,
            LinkRule {
                delay: Duration::from_millis(150),
                ..Default::default()
            },
        );
        let t = std::time::Instant::now();
        c.write_all(b"pong").await.unwrap();
        c.read_exact(&mut b).await.unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(150),
            "{:?}",
            t.elapsed()
        );

        net.cut_both(0, 1);
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut b))
            .await
            .expect("cut closes the connection");
        assert!(matches!(n, Ok(0) | Err(_)));
        let mut c2 = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), c2.read(&mut b))
            .await
            .expect("a new connection on a cut link is closed");
        assert!(matches!(n, Ok(0) | Err(_)));

        net.heal();
        let mut c3 = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        c3.write_all(b"back").await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), c3.read_exact(&mut b))
            .await
            .expect("healed")
            .unwrap();
        assert_eq!(&b, b"back");
    }
}
