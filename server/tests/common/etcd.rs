//! Running a real single-member etcd (Debian's `etcd-server`, 3.4) from tests, on loopback ports
//! of its own; killed by pid when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::Client;

use super::{connect, free_ports};

pub struct Etcd {
    child: Child,
    name: String,
    client_port: u16,
    log: PathBuf,
}

impl Etcd {
    pub fn peer_url(port: u16) -> String {
        format!("http://127.0.0.1:{port}")
    }

    /// Starts member `name` on `data_dir` (new, or laid out by `etcdctl snapshot restore` for the
    /// same name and peer port); its log goes beside the data dir.
    pub fn start(name: &str, data_dir: &Path, peer_port: u16) -> Etcd {
        let client_port = free_ports(1)[0];
        let log = data_dir.with_extension("log");
        let out = std::fs::File::create(&log).expect("etcd log");
        let peer = Etcd::peer_url(peer_port);
        let client = format!("http://127.0.0.1:{client_port}");
        let child = Command::new("etcd")
            .arg("--name")
            .arg(name)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("{name}={peer}"))
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("spawn etcd");
        Etcd {
            child,
            name: name.to_string(),
            client_port,
            log,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// A client once the member serves (bounded at 30 s; the log is shown if it never does).
    pub async fn client(&self) -> Client {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(mut c) = connect(&self.url()).await {
                if c.get("probe", None).await.is_ok() {
                    return c;
                }
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not serve within 30 s; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether etcd and etcdctl are installed; says so when they are not.
pub fn etcd_present() -> bool {
    let ok = super::etcdctl::etcdctl_present()
        && Command::new("etcd")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: etcd is not installed (apt-get install etcd-server)");
    }
    ok
}
