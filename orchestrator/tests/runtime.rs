//! End-to-end tests of the namespace runtime on the real kernel: real
//! namespaces, cgroups, veths and bridges created (and removed) per test.

use crate::common;

use cairn_orchestrator::runtime::{
    cgroup, ConfigMaps, ContainerState, ExitReason, Pod, Runtime, RuntimeConfig,
};
use common::{can_run, has_python, mounts_containing, TestEnv, HELPER};
use std::collections::BTreeMap;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

fn pod_yaml(name: &str, containers: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 5\n  containers:\n{containers}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_is_isolated() {
    if !can_run("container_is_isolated") {
        return;
    }
    let mut env = TestEnv::new("iso", None);
    let yaml = pod_yaml(
        "iso-pod",
        r#"    - name: app
      command: ["/bin/sh", "-c"]
      args:
        - |
          echo pid=$$
          echo host=$(hostname)
          echo procs=$(ls /proc | grep -c '^[0-9]')
          touch /probe 2>/dev/null && echo root=writable || echo root=readonly
          touch /tmp/probe && echo tmp=writable
          echo etc-hostname=$(cat /etc/hostname)
          ls /dev | tr '\n' ' '; echo
          exec sleep 30
"#,
    );
    env.run(&yaml).await;
    let log = env
        .wait_log("iso-pod", "app", "/dev", Duration::from_secs(10))
        .await;
    let log = if log.lines().count() < 7 {
        env.wait_log("iso-pod", "app", "zero", Duration::from_secs(5))
            .await
    } else {
        log
    };
    assert!(log.contains("pid=1\n"), "command must be PID 1: {log}");
    assert!(log.contains("host=iso-pod\n"), "{log}");
    assert!(log.contains("etc-hostname=iso-pod\n"), "{log}");
    assert!(log.contains("root=readonly\n"), "{log}");
    assert!(log.contains("tmp=writable\n"), "{log}");
    for dev in ["null", "zero", "random", "urandom", "tty", "pts"] {
        assert!(log.contains(dev), "/dev/{dev} missing: {log}");
    }
    let procs: usize = log
        .lines()
        .find_map(|l| l.strip_prefix("procs="))
        .and_then(|n| n.parse().ok())
        .unwrap();
    // sh, ls, grep and the command substitution's subshell at most.
    assert!(procs <= 5, "host processes visible: {procs}");

    // exec joins the same namespaces: it sees PID 1 = sleep and the hostname.
    let (code, out) = env
        .exec(
            "iso-pod",
            "app",
            "cat /proc/1/comm; hostname; grep NoNewPrivs /proc/self/status",
        )
        .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("sleep\niso-pod\n"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    let (code, _) = env.exec("iso-pod", "app", "exit 7").await;
    assert_eq!(code, 7);

    let st = env.runtime.status("iso-pod").unwrap();
    assert!(st.sandbox_running);
    assert_eq!(st.containers[0].state, ContainerState::Running);
    let pid = st.containers[0].pid.unwrap();
    let holder = st.holder_pid;

    env.runtime.remove_pod("iso-pod").await.unwrap();
    env.forget("iso-pod");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid),
        "container process leaked"
    );
    assert!(
        !Path::new(&format!("/proc/{holder}")).exists() || is_zombie(holder),
        "holder leaked"
    );
    assert!(
        !env.runtime
            .cgroups()
            .exists(&env.runtime.pod_cgroup("iso-pod")),
        "cgroup leaked"
    );
    assert!(
        mounts_containing(env.state_dir.to_str().unwrap()).is_empty(),
        "mount leaked"
    );
    assert!(!env.state_dir.join("pods/iso-pod").exists(), "state leaked");
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_honours_grace_period() {
    if !can_run("stop_honours_grace_period") {
        return;
    }
    let mut env = TestEnv::new("grace", None);
    let yaml = pod_yaml(
        "grace-pod",
        r#"    - name: polite
      command: ["/bin/sh", "-c", "trap 'echo got-term; sleep 1; exit 0' TERM; echo ready; while true; do sleep 0.1; done"]
    - name: stubborn
      command: ["/bin/sh", "-c", "trap '' TERM; echo ready; while true; do sleep 0.1; done"]
"#,
    );
    env.run(&yaml).await;
    env.wait_log("grace-pod", "polite", "ready", Duration::from_secs(10))
        .await;
    env.wait_log("grace-pod", "stubborn", "ready", Duration::from_secs(10))
        .await;

    // Handles SIGTERM: exits by itself after ~1 s, well inside the grace period.
    let t = Instant::now();
    let st = env
        .runtime
        .stop_container("grace-pod", "polite", Duration::from_secs(5))
        .await
        .unwrap();
    let took = t.elapsed();
    assert_eq!(
        st.state,
        ContainerState::Exited {
            exit_code: 0,
            reason: ExitReason::Completed
        }
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert!(env.log("grace-pod", "polite").contains("got-term"));

    // Ignores SIGTERM: killed when the grace period is over, not before.
    let t = Instant::now();
    let st = env
        .runtime
        .stop_container("grace-pod", "stubborn", Duration::from_millis(1500))
        .await
        .unwrap();
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(
        st.state,
        ContainerState::Exited {
            exit_code: 137,
            reason: ExitReason::Error
        }
    );
    assert!(st.finished_at_ms.unwrap() >= st.started_at_ms.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_hog_is_oom_killed() {
    if !can_run("memory_hog_is_oom_killed") {
        return;
    }
    let mut env = TestEnv::new("oom", None);
    // `tail` keeps the whole newline-free stream in memory.
    let yaml = pod_yaml(
        "oom-pod",
        r#"    - name: hog
      command: ["/bin/sh", "-c", "head -c 512M /dev/zero | tail"]
      resources:
        limits: {memory: 32Mi}
"#,
    );
    env.run(&yaml).await;
    let st = env
        .wait_exited("oom-pod", "hog", Duration::from_secs(30))
        .await;
    match st {
        ContainerState::Exited { reason, exit_code } => {
            assert_eq!(reason, ExitReason::OOMKilled, "exit code {exit_code}");
            assert_ne!(exit_code, 0);
        }
        other => panic!("hog not killed: {other:?}"),
    }
    let cg = env.runtime.container_cgroup("oom-pod", "hog");
    assert!(env.runtime.cgroups().oom_kills(&cg) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_bomb_stops_at_pids_limit() {
    if !can_run("fork_bomb_stops_at_pids_limit") || !has_python("fork_bomb_stops_at_pids_limit") {
        return;
    }
    let mut env = TestEnv::new("pids", None);
    let yaml = pod_yaml(
        "pids-pod",
        r#"    - name: bomb
      command: ["/usr/bin/python3", "-c"]
      args:
        - |
          import os, time
          n, err = 0, None
          for i in range(200):
              try:
                  pid = os.fork()
              except OSError as e:
                  err = e
                  break
              if pid == 0:
                  time.sleep(30)
                  os._exit(0)
              n += 1
          print('forked', n, 'error', err, flush=True)
          time.sleep(30)
      resources:
        limits: {pids: 16}
"#,
    );
    env.run(&yaml).await;
    let log = env
        .wait_log("pids-pod", "bomb", "forked", Duration::from_secs(20))
        .await;
    let forked: u64 = log
        .split_whitespace()
        .skip_while(|w| *w != "forked")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no result: {log}"));
    assert!(
        forked < 16,
        "forked {forked} children despite pids.max=16: {log}"
    );
    assert!(log.contains("Resource temporarily unavailable"), "{log}");
    let cg = env.runtime.container_cgroup("pids-pod", "bomb");
    let current = env.runtime.cgroups().pids_current(&cg).unwrap();
    assert!(current <= 16, "pids.current = {current}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_quota_limits_a_busy_loop() {
    if !can_run("cpu_quota_limits_a_busy_loop") {
        return;
    }
    let mut env = TestEnv::new("cpu", None);
    let yaml = pod_yaml(
        "cpu-pod",
        r#"    - name: spin
      command: ["/bin/sh", "-c", "while :; do :; done"]
      resources:
        limits: {cpu: 200m}
"#,
    );
    env.run(&yaml).await;
    let cg = env.runtime.container_cgroup("cpu-pod", "spin");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let u0 = env.runtime.cgroups().cpu_usage_ns(&cg).unwrap();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let u1 = env.runtime.cgroups().cpu_usage_ns(&cg).unwrap();
    let share = (u1 - u0) as f64 / t0.elapsed().as_nanos() as f64;
    println!("cpu share with 200m limit: {share:.3}");
    // The machine is shared, so the lower bound is loose; the quota caps
    // the upper one.
    assert!(share > 0.05 && share < 0.30, "share {share}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_share_localhost_ipc_uts_and_volumes() {
    if !can_run("containers_share_localhost_ipc_uts_and_volumes")
        || !has_python("containers_share_localhost_ipc_uts_and_volumes")
    {
        return;
    }
    let mut env = TestEnv::new("share", None);
    let yaml = r#"apiVersion: v1
kind: Pod
metadata:
  name: share-pod
spec:
  volumes:
    - name: shared
      emptyDir: {}
    - name: cfg
      configMap:
        name: app-config
  containers:
    - name: server
      command: ["/usr/bin/python3", "-c"]
      args:
        - |
          import socket
          open('/shared/from-server', 'w').write('written by server\n')
          s = socket.socket()
          s.bind(('127.0.0.1', 8081))
          s.listen(4)
          print('listening', flush=True)
          while True:
              c, _ = s.accept()
              c.sendall(b'pong\n')
              c.close()
      volumeMounts:
        - {name: shared, mountPath: /shared}
    - name: client
      command: ["/bin/sh", "-c", "echo \"$GREETING\"; sleep 60"]
      env:
        - name: GREETING
          valueFrom:
            configMapKeyRef: {name: app-config, key: greeting}
      volumeMounts:
        - {name: shared, mountPath: /data}
        - {name: cfg, mountPath: /etc/app}
"#;
    let mut cms = ConfigMaps::new();
    cms.insert(
        "app-config".into(),
        BTreeMap::from([("greeting".to_string(), "hello from config\n".to_string())]),
    );
    env.run_with(yaml, &cms).await;
    let log = env
        .wait_log("share-pod", "server", "listening", Duration::from_secs(15))
        .await;
    assert!(log.contains("listening"), "{log}");

    let connect = "import socket,time\nfor i in range(50):\n  try:\n    s=socket.create_connection(('127.0.0.1',8081),1); print(s.recv(16).decode(), end=''); break\n  except OSError: time.sleep(0.1)";
    let out = env
        .runtime
        .exec(
            "share-pod",
            "client",
            &["/usr/bin/python3".into(), "-c".into(), connect.into()],
        )
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "pong\n",
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (_, file) = env
        .exec("share-pod", "client", "cat /data/from-server")
        .await;
    assert_eq!(file, "written by server\n");
    let (code, _) = env
        .exec("share-pod", "client", "echo more >> /data/from-server")
        .await;
    assert_eq!(code, 0, "emptyDir must be writable");
    let (_, file) = env
        .exec("share-pod", "server", "cat /shared/from-server")
        .await;
    assert_eq!(file, "written by server\nmore\n");

    let (_, cfg) = env
        .exec("share-pod", "client", "cat /etc/app/greeting")
        .await;
    assert_eq!(cfg, "hello from config\n");
    let (code, _) = env
        .exec("share-pod", "client", "echo x > /etc/app/greeting")
        .await;
    assert_ne!(code, 0, "config map file must be read-only");
    assert!(env.log("share-pod", "client").contains("hello from config"));

    let ns = "readlink /proc/self/ns/net /proc/self/ns/ipc /proc/self/ns/uts /proc/self/ns/mnt /proc/self/ns/pid";
    let (_, a) = env.exec("share-pod", "server", ns).await;
    let (_, b) = env.exec("share-pod", "client", ns).await;
    let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    assert_eq!(a.len(), 5, "{a:?}");
    assert_eq!(a[..3], b[..3], "net/ipc/uts must be shared");
    assert_ne!(a[3], b[3], "mount namespaces must differ");
    assert_ne!(a[4], b[4], "pid namespaces must differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_reach_each_other_by_ip_and_remove_cleans_up() {
    if !can_run("pods_reach_each_other_by_ip_and_remove_cleans_up")
        || !has_python("pods_reach_each_other_by_ip_and_remove_cleans_up")
    {
        return;
    }
    let mut env = TestEnv::new("net", Some(31));
    let server = |name: &str| {
        pod_yaml(
            name,
            r#"    - name: web
      command: ["/usr/bin/python3", "-c"]
      args:
        - |
          import socket
          s = socket.socket()
          s.bind(('0.0.0.0', 8080))
          s.listen(4)
          print('listening', flush=True)
          while True:
              c, _ = s.accept()
              c.sendall(socket.gethostname().encode() + b'\n')
              c.close()
"#,
        )
    };
    env.run(&server("net-a")).await;
    env.run(&server("net-b")).await;
    let a = env.runtime.status("net-a").unwrap();
    let b = env.runtime.status("net-b").unwrap();
    let (ip_a, ip_b) = (a.ip.unwrap(), b.ip.unwrap());
    assert_ne!(ip_a, ip_b);
    assert!(ip_a.to_string().starts_with("10.213.31."));
    env.wait_log("net-a", "web", "listening", Duration::from_secs(15))
        .await;
    env.wait_log("net-b", "web", "listening", Duration::from_secs(15))
        .await;

    // Pod to pod, through the bridge.
    let connect = format!(
        "import socket,time\nfor i in range(50):\n  try:\n    s=socket.create_connection(('{ip_a}',8080),1); print(s.recv(64).decode(), end=''); break\n  except OSError: time.sleep(0.1)"
    );
    let out = env
        .runtime
        .exec(
            "net-b",
            "web",
            &["/usr/bin/python3".into(), "-c".into(), connect],
        )
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "net-a\n");

    // Host to pod.
    let addr = SocketAddr::from((ip_b, 8080));
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(3)).expect("host reaches pod IP");
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "net-b\n");

    // remove leaves no cgroup, veth, mount, address or state behind.
    let (veth_a, _) =
        cairn_orchestrator::runtime::network::veth_names(env.bridge.as_ref().unwrap(), "net-a");
    assert!(cairn_orchestrator::runtime::network::link_exists(&veth_a)
        .await
        .unwrap());
    for p in ["net-a", "net-b"] {
        env.runtime.remove_pod(p).await.unwrap();
        env.forget(p);
    }
    assert!(!cairn_orchestrator::runtime::network::link_exists(&veth_a)
        .await
        .unwrap());
    let leftover: Vec<_> = env
        .cgroup_dirs()
        .into_iter()
        .filter(|d| {
            std::fs::read_dir(d)
                .map(|e| e.flatten().any(|x| x.path().is_dir()))
                .unwrap_or(false)
        })
        .collect();
    assert!(leftover.is_empty(), "pod cgroups left: {leftover:?}");
    assert!(mounts_containing(env.state_dir.to_str().unwrap()).is_empty());
    let ipam = std::fs::read_to_string(
        env.state_dir
            .join(format!("ipam/{}.json", env.bridge.as_ref().unwrap())),
    )
    .unwrap();
    assert!(!ipam.contains("net-a") && !ipam.contains("net-b"), "{ipam}");
    assert!(env.runtime.list().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_readopted_by_a_new_runtime() {
    if !can_run("pods_are_readopted_by_a_new_runtime") {
        return;
    }
    let mut env = TestEnv::new("adopt", None);
    env.run(&pod_yaml(
        "adopt-pod",
        "    - name: app\n      command: [\"/bin/sleep\", \"60\"]\n",
    ))
    .await;
    // A second instance over the same state dir stands for a restarted agent.
    let again = Runtime::new(env.runtime.config().clone()).unwrap();
    let pods = again.list().unwrap();
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].name, "adopt-pod");
    assert!(pods[0].sandbox_running);
    assert_eq!(pods[0].containers[0].state, ContainerState::Running);
    let out = again
        .exec(
            "adopt-pod",
            "app",
            &["/bin/cat".into(), "/proc/1/comm".into()],
        )
        .await
        .unwrap();
    assert_eq!(out.stdout, b"sleep\n");
    let st = again
        .stop_pod("adopt-pod", Some(Duration::ZERO))
        .await
        .unwrap();
    assert!(!st.sandbox_running);
    assert!(matches!(
        st.containers[0].state,
        ContainerState::Exited { exit_code: 137, .. }
    ));
    again.remove_pod("adopt-pod").await.unwrap();
    env.forget("adopt-pod");
    assert!(again.list().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_capped_tailed_and_followed() {
    if !can_run("logs_are_capped_tailed_and_followed") {
        return;
    }
    let mut env = TestEnv::with("logs", None, |c| c.log_max_bytes = 4096);
    env.run(&pod_yaml(
        "logs-pod",
        r#"    - name: chatty
      command: ["/bin/sh", "-c", "i=0; while [ $i -lt 3000 ]; do echo line-$i; i=$((i+1)); done"]
    - name: slow
      command: ["/bin/sh", "-c", "for i in 1 2 3; do echo f$i; sleep 0.2; done"]
"#,
    ))
    .await;
    let mut rx = env.runtime.follow_logs("logs-pod", "slow", None).unwrap();
    let mut followed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            Ok(Some(chunk)) => followed.extend(chunk),
            Ok(None) => break,
            Err(_) => continue,
        }
    }
    assert_eq!(String::from_utf8_lossy(&followed), "f1\nf2\nf3\n");

    let st = env
        .wait_exited("logs-pod", "chatty", Duration::from_secs(20))
        .await;
    assert!(
        matches!(st, ContainerState::Exited { exit_code: 0, .. }),
        "{st:?}"
    );
    let all = env.runtime.logs("logs-pod", "chatty", None).unwrap();
    assert!(all.len() <= 2 * 4096, "log not capped: {} bytes", all.len());
    assert!(all.ends_with(b"line-2999\n"));
    let tail = env.runtime.logs("logs-pod", "chatty", Some(2)).unwrap();
    assert_eq!(tail, b"line-2998\nline-2999\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_and_capabilities() {
    if !can_run("identity_and_capabilities") {
        return;
    }
    let mut env = TestEnv::new("ids", None);
    env.run(&pod_yaml(
        "ids-pod",
        r#"    - name: root
      command: ["/bin/sh", "-c", "grep -E '^(CapBnd|CapEff|NoNewPrivs)' /proc/self/status; id -u; sleep 30"]
    - name: user
      command: ["/bin/sh", "-c", "grep -E '^(CapEff)' /proc/self/status; id -u; id -g; sleep 30"]
      securityContext:
        runAsUser: 1000
        runAsGroup: 1000
    - name: admin
      command: ["/bin/sh", "-c", "grep -E '^(CapEff)' /proc/self/status; sleep 30"]
      securityContext:
        allowPrivilegeEscalation: true
        capabilities: {add: [NET_ADMIN], drop: [NET_RAW]}
"#,
    ))
    .await;
    let default_mask: u64 = cairn_orchestrator::runtime::caps::effective_set(&[], &[])
        .unwrap()
        .iter()
        .fold(0, |m, c| m | (1u64 << c));
    let root = env
        .wait_log("ids-pod", "root", "\n0\n", Duration::from_secs(10))
        .await;
    assert!(
        root.contains(&format!("CapBnd:\t{default_mask:016x}")),
        "{root}"
    );
    assert!(
        root.contains(&format!("CapEff:\t{default_mask:016x}")),
        "{root}"
    );
    assert!(root.contains("NoNewPrivs:\t1"), "{root}");
    let user = env
        .wait_log("ids-pod", "user", "1000\n1000\n", Duration::from_secs(10))
        .await;
    assert!(
        user.contains("CapEff:\t0000000000000000\n1000\n1000\n"),
        "{user}"
    );
    let admin = env
        .wait_log("ids-pod", "admin", "CapEff", Duration::from_secs(10))
        .await;
    let want = (default_mask | (1 << 12)) & !(1 << 13);
    assert!(admin.contains(&format!("CapEff:\t{want:016x}")), "{admin}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_errors_are_reported_before_anything_runs() {
    if !can_run("spec_errors_are_reported_before_anything_runs") {
        return;
    }
    let env = TestEnv::new("badspec", None);
    let pod: Pod = Pod::from_yaml(&pod_yaml(
        "bad-pod",
        "    - name: app\n      command: [\"/definitely/not/here\"]\n",
    ))
    .unwrap();
    let err = env
        .runtime
        .run_pod(&pod, &ConfigMaps::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("/definitely/not/here"), "{err}");
    // The failed pod was cleaned up entirely.
    assert!(env.runtime.list().unwrap().is_empty());
    assert!(!env
        .runtime
        .cgroups()
        .exists(&env.runtime.pod_cgroup("bad-pod")));
}

/// The v2 code path driven by the full runtime over a fake cgroup2 root
/// (this machine has a v1/hybrid hierarchy): limits land in the v2 files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_on_fake_cgroup_v2_root() {
    if !can_run("runtime_on_fake_cgroup_v2_root") {
        return;
    }
    let fake = std::env::temp_dir().join(format!("cairn-fake-v2-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&fake);
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::write(fake.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(fake.clone());
    let mut env = TestEnv::with("fakev2", None, |c: &mut RuntimeConfig| {
        c.cgroup_root = fake.clone()
    });
    assert_eq!(env.runtime.cgroups().version(), cgroup::CgroupVersion::V2);
    env.run(&pod_yaml(
        "v2-pod",
        r#"    - name: app
      command: ["/bin/sleep", "30"]
      resources:
        requests: {cpu: 250m}
        limits: {cpu: 500m, memory: 64Mi, pids: 50}
"#,
    ))
    .await;
    let leaf = fake.join(env.runtime.container_cgroup("v2-pod", "app"));
    let read = |f: &str| std::fs::read_to_string(leaf.join(f)).unwrap();
    assert_eq!(read("memory.max"), (64u64 << 20).to_string());
    assert_eq!(read("cpu.max"), "50000 100000");
    assert_eq!(
        read("cpu.weight"),
        cgroup::shares_to_weight(256).to_string()
    );
    assert_eq!(read("pids.max"), "50");
    let pid = env.runtime.status("v2-pod").unwrap().containers[0]
        .pid
        .unwrap();
    assert_eq!(read("cgroup.procs"), pid.to_string());
    env.runtime.remove_pod("v2-pod").await.unwrap();
    env.forget("v2-pod");
    assert!(!leaf.exists());
    let _ = Path::new(HELPER);
}

/// Builds a minimal rootfs holding only dash and its libraries.
fn minimal_rootfs(dir: &Path) -> bool {
    let out = match std::process::Command::new("ldd").arg("/bin/sh").output() {
        Ok(o) if o.status.success() => o,
        _ => return false,
    };
    let mut files = vec![std::path::PathBuf::from("/bin/sh")];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(p) = line.split_whitespace().find(|w| w.starts_with('/')) {
            files.push(p.into());
        }
    }
    for f in files {
        let real = std::fs::canonicalize(&f).unwrap();
        let target = dir.join(f.strip_prefix("/").unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&real, &target).unwrap();
    }
    std::fs::write(dir.join("marker"), "from-image\n").unwrap();
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_directory_and_tarball_rootfs() {
    if !can_run("image_directory_and_tarball_rootfs") {
        return;
    }
    let mut env = TestEnv::new("image", None);
    let img = env.state_dir.with_extension("img");
    let _ = std::fs::remove_dir_all(&img);
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(img.clone());
    let rootfs = img.join("rootfs");
    if !minimal_rootfs(&rootfs) {
        println!("SKIPPED: image_directory_and_tarball_rootfs: cannot list /bin/sh libraries");
        return;
    }
    let tarball = img.join("rootfs.tar");
    let ok = std::process::Command::new("tar")
        .arg("-cf")
        .arg(&tarball)
        .arg("-C")
        .arg(&rootfs)
        .arg(".")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        println!("SKIPPED: image_directory_and_tarball_rootfs: tar unavailable");
        return;
    }
    let script = "read m < /marker; echo $m; [ -e /usr/bin/python3 ] && echo host-root || echo own-root; echo > /marker && echo writable || echo readonly; exec /bin/sh -c 'while :; do read x < /marker; done'";
    let yaml = pod_yaml(
        "image-pod",
        &format!(
            "    - name: dir\n      image: {}\n      command: [\"/bin/sh\", \"-c\", \"{script}\"]\n    - name: tar\n      image: {}\n      command: [\"/bin/sh\", \"-c\", \"{script}\"]\n",
            rootfs.display(),
            tarball.display()
        ),
    );
    env.run(&yaml).await;
    for c in ["dir", "tar"] {
        let log = env
            .wait_log("image-pod", c, "only", Duration::from_secs(10))
            .await;
        assert!(log.starts_with("from-image\nown-root\n"), "{c}: {log}");
        assert!(log.contains("readonly"), "{c}: {log}");
    }
    // Restart after an exit is the caller's policy; the runtime supports it.
    env.runtime
        .stop_container("image-pod", "dir", Duration::ZERO)
        .await
        .unwrap();
    let st = env
        .runtime
        .start_container("image-pod", "dir")
        .await
        .unwrap();
    assert_eq!(st.state, ContainerState::Running);
}
