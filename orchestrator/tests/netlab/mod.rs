//! Network namespaces standing for one node and the hosts around it, for the service proxy's
//! tests and benches (root): a node namespace forwarding between a client and backends, each
//! joined to it by a veth pair on a /24 of its own. Everything goes (links, rules, conntrack)
//! when the value is dropped, unwinding included. From the orchestrator it uses only the proxy's
//! `Nft` command description.

use std::process::Command;

use cairn_orchestrator::proxy::Nft;

/// Runs a command that must succeed.
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Moves the calling thread into namespace `ns`.
pub fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
}

pub struct Hosts {
    pub node: String,
    pub client: String,
    /// Each backend's namespace and address.
    pub backends: Vec<(String, String)>,
}

impl Hosts {
    /// Namespaces `<prefix>-node`, `<prefix>-client` and `<prefix>-b1`...; in `<net>.0.0/16` the
    /// client is `<net>.1.2`, backend i (from 0) `<net>.<i+2>.2`, and the node `.1` of each /24,
    /// the leaves' default route.
    pub fn new(prefix: &str, net: &str, backends: usize) -> Hosts {
        let hosts = Hosts {
            node: format!("{prefix}-node"),
            client: format!("{prefix}-client"),
            backends: (0..backends)
                .map(|i| (format!("{prefix}-b{}", i + 1), format!("{net}.{}.2", i + 2)))
                .collect(),
        };
        // `hosts` exists before the first namespace, so a failure below still deletes what was
        // made.
        sh(&["ip", "netns", "add", &hosts.node]);
        sh(&["ip", "-n", &hosts.node, "link", "set", "lo", "up"]);
        sh(&[
            "ip",
            "netns",
            "exec",
            &hosts.node,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        let leaves: Vec<(String, String)> =
            std::iter::once((hosts.client.clone(), format!("{net}.1.2")))
                .chain(hosts.backends.iter().cloned())
                .collect();
        for (i, (ns, ip)) in leaves.iter().enumerate() {
            let gw = format!("{net}.{}.1", i + 1);
            let host_if = format!("v{i}");
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            sh(&[
                "ip",
                "-n",
                &hosts.node,
                "link",
                "add",
                &host_if,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            ]);
            let gw_cidr = format!("{gw}/24");
            sh(&[
                "ip",
                "-n",
                &hosts.node,
                "addr",
                "add",
                &gw_cidr,
                "dev",
                &host_if,
            ]);
            sh(&["ip", "-n", &hosts.node, "link", "set", &host_if, "up"]);
            let cidr = format!("{ip}/24");
            sh(&["ip", "-n", ns, "addr", "add", &cidr, "dev", "eth0"]);
            sh(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
            sh(&["ip", "-n", ns, "route", "add", "default", "via", &gw]);
        }
        hosts
    }

    /// `nft` run in the node's namespace.
    pub fn nft(&self) -> Nft {
        Nft {
            command: vec![
                "ip".into(),
                "netns".into(),
                "exec".into(),
                self.node.clone(),
                "nft".into(),
            ],
        }
    }

    /// What `args` prints, run in the node's namespace.
    pub fn on_node(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.node])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let leaves = self.backends.iter().map(|(ns, _)| ns);
        for ns in leaves.chain([&self.client, &self.node]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
