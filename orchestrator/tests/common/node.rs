//! A node agent run inside the test process on a runtime state directory and cgroup parent of
//! its own, removed (with any pod left) when the test ends.

use std::path::Path;
use std::time::Duration;

use cairn_orchestrator::agent::{self, AgentConfig};
use cairn_orchestrator::runtime::{Runtime, RuntimeConfig};

/// The agent's runtime state and cgroups, removed (with any pod left) when the test ends.
pub struct AgentNode {
    pub cfg: RuntimeConfig,
}

impl AgentNode {
    pub fn new(tag: &str) -> AgentNode {
        let id = format!("{}-{tag}", std::process::id());
        let state_dir = std::env::temp_dir().join(format!("cairn-agent-{id}"));
        let _ = std::fs::remove_dir_all(&state_dir);
        let mut cfg = RuntimeConfig::new(&state_dir, super::HELPER);
        cfg.cgroup_parent = format!("cairn-agent-{id}");
        AgentNode { cfg }
    }

    pub fn agent(&self, client: kube::Client, name: &str) -> tokio::task::JoinHandle<()> {
        self.agent_with_ca(client, name, Vec::new())
    }

    /// An agent that serves logs to callers with a certificate from the cluster's CA.
    pub fn agent_with_ca(
        &self,
        client: kube::Client,
        name: &str,
        client_ca: Vec<Vec<u8>>,
    ) -> tokio::task::JoinHandle<()> {
        let mut cfg = AgentConfig::new(name, self.cfg.clone());
        cfg.heartbeat = Duration::from_secs(1);
        cfg.sync_period = Duration::from_millis(200);
        cfg.port = 0;
        cfg.client_ca = client_ca;
        tokio::spawn(async move {
            if let Err(e) = agent::run(client, cfg, std::future::pending()).await {
                panic!("agent: {e}");
            }
        })
    }

    pub fn runtime(&self) -> Runtime {
        Runtime::new(self.cfg.clone()).expect("runtime")
    }

    /// The agent's root directory (its runtime state, images and volumes).
    pub fn root(&self) -> &Path {
        &self.cfg.state_dir
    }

    /// `cairn-orchestrator image ARGS --root-dir <the agent's>`: (success, stdout + stderr).
    pub fn image_cmd(&self, args: &[&str]) -> (bool, String) {
        let out = std::process::Command::new(super::HELPER)
            .arg("image")
            .args(args)
            .arg("--root-dir")
            .arg(self.root())
            .output()
            .unwrap();
        let mut text = String::from_utf8_lossy(&out.stdout).to_string();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }
}

impl Drop for AgentNode {
    fn drop(&mut self) {
        let cfg = self.cfg.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(runtime) = Runtime::new(cfg.clone()) {
                    for p in runtime.list().unwrap_or_default() {
                        let _ = runtime.remove_pod(&p.name).await;
                    }
                    let _ = runtime
                        .cgroups()
                        .remove(std::path::Path::new(&cfg.cgroup_parent));
                }
            });
            let _ = std::fs::remove_dir_all(&cfg.state_dir);
        })
        .join();
    }
}
