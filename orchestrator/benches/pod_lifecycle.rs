//! Create -> running -> stopped -> removed for a one-container pod.
//!
//! Run with `cargo bench --bench pod_lifecycle` (as root). Without `--bench`
//! among the arguments (as under `cargo test --all-targets`) it exits at once.

use cairn_orchestrator::runtime::{
    ConfigMaps, ContainerState, NetworkConfig, Pod, Runtime, RuntimeConfig,
};
use std::time::{Duration, Instant};

const ITERATIONS: usize = 40;
const WARMUP: usize = 3;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn report(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{label:<44} median {:>8.2} ms   p90 {:>8.2} ms   (n={})",
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.9).as_secs_f64() * 1e3,
        samples.len()
    );
}

struct Phases {
    create_to_running: Vec<Duration>,
    stop: Vec<Duration>,
    remove: Vec<Duration>,
    total: Vec<Duration>,
}

async fn lifecycle(rt: &Runtime, tag: &str, command: &str, wait_exit: bool) -> Phases {
    let mut p = Phases {
        create_to_running: vec![],
        stop: vec![],
        remove: vec![],
        total: vec![],
    };
    for i in 0..WARMUP + ITERATIONS {
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bench-{tag}-{i}\nspec:\n  containers:\n    - name: c\n      command: {command}\n"
        );
        let pod = Pod::from_yaml(&yaml).expect("pod");
        let t0 = Instant::now();
        let st = rt.run_pod(&pod, &ConfigMaps::new()).await.expect("run");
        let t1 = Instant::now();
        if wait_exit {
            let deadline = Instant::now() + Duration::from_secs(10);
            while rt.container_status(pod.name(), "c").unwrap().state == ContainerState::Running
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        } else {
            assert_eq!(st.containers[0].state, ContainerState::Running);
        }
        rt.stop_pod(pod.name(), Some(Duration::ZERO))
            .await
            .expect("stop");
        let t2 = Instant::now();
        rt.remove_pod(pod.name()).await.expect("remove");
        let t3 = Instant::now();
        if i >= WARMUP {
            p.create_to_running.push(t1 - t0);
            p.stop.push(t2 - t1);
            p.remove.push(t3 - t2);
            p.total.push(t3 - t0);
        }
    }
    p
}

fn print_phases(label: &str, p: Phases) {
    println!("{label}");
    report("  create sandbox + start (running)", p.create_to_running);
    report("  stop", p.stop);
    report("  remove", p.remove);
    report("  total create->running->stopped->removed", p.total);
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED: pod_lifecycle benchmark needs root");
        return;
    }
    let state = std::env::temp_dir().join(format!("cairn-bench-{}", std::process::id()));
    let parent = format!("cairn-bench-{}", std::process::id());
    let bridge = format!("cbench{}", std::process::id() % 100000);
    let tokio_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    tokio_rt.block_on(async {
        let mut cfg = RuntimeConfig::new(&state, env!("CARGO_BIN_EXE_cairn-orchestrator"));
        cfg.cgroup_parent = parent.clone();
        let rt = Runtime::new(cfg.clone()).expect("runtime");
        print_phases(
            "one container `sleep 60`, loopback only, SIGKILL stop:",
            lifecycle(&rt, "sleep", "[\"/bin/sleep\", \"60\"]", false).await,
        );
        print_phases(
            "one container `/bin/true`, loopback only, waits for exit:",
            lifecycle(&rt, "true", "[\"/bin/true\"]", true).await,
        );
        cfg.network = Some(NetworkConfig {
            bridge: bridge.clone(),
            cidr: "10.213.250.0/24".into(),
        });
        let rt_net = Runtime::new(cfg).expect("runtime");
        print_phases(
            "one container `sleep 60`, bridge + veth + IPAM, SIGKILL stop:",
            lifecycle(&rt_net, "net", "[\"/bin/sleep\", \"60\"]", false).await,
        );
        let _ = rt.cgroups().remove(std::path::Path::new(&parent));
        let _ = cairn_orchestrator::runtime::network::delete_link(&bridge).await;
    });
    let _ = std::fs::remove_dir_all(&state);
}
