//! `cairn-orchestrator up` as a process: its arguments for a test (free ports, a cgroup parent of
//! its own), its log, a client from the kubeconfig it writes, Ctrl-C, and cleanup of its pods and
//! cgroups when the test ends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_orchestrator::runtime::{Runtime, RuntimeConfig};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `up` process and what it leaves on the machine, cleaned up when the test ends.
pub struct Up {
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    cgroup_parent: String,
    node_name: String,
}

impl Up {
    /// `tag` keeps the node name and cgroup parent apart from other tests' in the same process.
    pub fn new(dir: &Path, tag: &str) -> Up {
        let id = format!("{}-{tag}", std::process::id());
        let cgroup_parent = format!("cairn-up-{id}");
        let node_name = format!("up-{id}");
        let args = vec![
            "up".into(),
            "--data-dir".into(),
            dir.join("data").display().to_string(),
            "--kubeconfig".into(),
            dir.join("cairn.kubeconfig").display().to_string(),
            "--store-port".into(),
            free_port().to_string(),
            "--store-peer-port".into(),
            free_port().to_string(),
            "--secure-port".into(),
            free_port().to_string(),
            "--agent-port".into(),
            free_port().to_string(),
            "--node-name".into(),
            node_name.clone(),
            "--cgroup-parent".into(),
            cgroup_parent.clone(),
        ];
        Up {
            dir: dir.to_path_buf(),
            args,
            child: None,
            cgroup_parent,
            node_name,
        }
    }

    pub fn start(&mut self) {
        let log = std::fs::File::create(self.dir.join("up.log")).unwrap();
        let _ = std::fs::remove_file(self.dir.join("cairn.kubeconfig"));
        self.child = Some(
            Command::new(super::HELPER)
                .args(&self.args)
                .current_dir(&self.dir)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }

    /// The name `up` registers its node under.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("up.log")).unwrap_or_default()
    }

    pub async fn client(&self) -> kube::Client {
        let path = self.dir.join("cairn.kubeconfig");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !path.exists() {
            assert!(Instant::now() < deadline, "no kubeconfig: {}", self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(cfg).unwrap()
    }

    /// Ctrl-C, then the process must end on its own, successfully.
    pub fn interrupt(&mut self) {
        let mut child = self.child.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "up exited {status}: {}", self.log());
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("up did not stop within 60 s: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn runtime(&self) -> Runtime {
        let mut cfg = RuntimeConfig::new(self.dir.join("data/agent"), super::HELPER);
        cfg.cgroup_parent = self.cgroup_parent.clone();
        Runtime::new(cfg).unwrap()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let rt = self.runtime();
        let parent = self.cgroup_parent.clone();
        let _ = std::thread::spawn(move || {
            let r = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            r.block_on(async {
                for p in rt.list().unwrap_or_default() {
                    let _ = rt.remove_pod(&p.name).await;
                }
                let _ = rt.cgroups().remove(Path::new(&parent));
            });
        })
        .join();
    }
}
