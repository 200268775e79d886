//! The whole redirect path with the real daemon, in a sandbox: an unmodified
//! "pod" (kubectl with only in-cluster configuration) in its own network
//! namespace and test cgroup dials the `kubernetes` Service VIP, lands on the
//! hub's TLS listener through the kernel redirect, verifies the hub's serving
//! certificate against its service-account ca.crt, and reaches the apiserver
//! double with its own token. Privileged: CI runs as root; a missing
//! prerequisite fails the test.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use yurthub_e2e::apiserver::{ApiServer, Auth, User};
use yurthub_e2e::hub::HubFiles;
use yurthub_e2e::pki::TestPki;
use yurthub_e2e::sandbox::node::{
    NodeSide, POD_TOKEN, VIP, hub_get, hub_get_as, kubectl_in_pod, redirect_status, wait_for,
};
use yurthub_e2e::sandbox::{self, NetSandbox, Side, TestCgroup};

#[test]
fn in_cluster_kubectl_in_a_pod_reaches_the_apiserver_through_the_hub() {
    sandbox::require_root();
    sandbox::require_cgroup2();
    sandbox::require_bpffs();
    let sandbox = NetSandbox::new(&[]);
    let cgroup = TestCgroup::new();
    let pin_dir = sandbox::unique_name("yurthub-vip");
    let mut node = NodeSide::start(&sandbox, cgroup.path(), &pin_dir, &[]);

    // The VIP is learned from default/kubernetes, and the redirect turns
    // active once the TLS listener answers the hub's own heartbeat.
    wait_for(
        "the redirect to learn the VIP and heartbeat",
        Duration::from_secs(45),
        || {
            let s = redirect_status(&sandbox, node.hub_server);
            s["active"] == true
                && s["vips"]
                    .as_array()
                    .is_some_and(|v| v.iter().any(|v| v["vip"] == VIP))
        },
    );

    let ca = node.pki.ca_pem().to_owned();
    let pod_kubectl = |args: &[&str]| kubectl_in_pod(&sandbox, cgroup.path(), &ca, args);
    let lists_its_pod =
        |out: &str| out.starts_with("exit=0") && out.contains("pod/seen-through-the-vip");
    let out = pod_kubectl(&["get", "pods", "-o", "name"]);
    assert!(lists_its_pod(&out), "{out}");

    // The request reached the apiserver with the pod's own token, via the hub.
    let seen = node.api.requests();
    let from_pod = seen
        .iter()
        .find(|r| {
            r.path == "/api/v1/namespaces/default/pods"
                && r.user_agent
                    .as_deref()
                    .is_some_and(|u| u.starts_with("kubectl"))
        })
        .unwrap_or_else(|| panic!("the double saw kubectl's list: {seen:#?}"));
    assert_eq!(from_pod.auth, Auth::Bearer(POD_TOKEN.into()));
    assert_eq!(
        from_pod.client_cert, None,
        "the node identity is never lent to pod traffic"
    );

    let s = redirect_status(&sandbox, node.hub_server);
    let counters = s["vips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vip"] == VIP)
        .unwrap()
        .clone();
    assert!(counters["redirected"].as_u64().unwrap_or(0) >= 1, "{s:#}");
    let metrics = hub_get(&sandbox, node.hub_server, "/metrics");
    assert!(
        metrics.contains(&format!(
            "node_yurthub_redirect_connections{{vip=\"{VIP}\"}}"
        )),
        "{metrics}"
    );

    // With the kernel redirect nothing needs rewriting: kubelet sees the real
    // kubernetes Service (masterservice and friends are off by default).
    let services = hub_get_as(
        &sandbox,
        node.proxy,
        "/api/v1/namespaces/default/services/kubernetes",
        "kubelet/v1.34.0",
    );
    let svc: Value = serde_json::from_str(&services).expect("service JSON");
    assert_eq!(svc["spec"]["clusterIP"], "10.96.0.1", "{svc}");

    // Offline, the same unmodified kubectl keeps working for what its
    // service account listed online, and nothing more: secrets were never
    // listed with its token, so the hub refuses rather than guess.
    node.cut_cloud(&sandbox);
    let out = pod_kubectl(&["get", "pods", "-o", "name"]);
    assert!(
        lists_its_pod(&out),
        "offline, the pod's own list is answered from its cache scope: {out}"
    );
    let out = pod_kubectl(&["get", "secrets", "-o", "name"]);
    assert!(
        !out.starts_with("exit=0") && out.contains("Forbidden"),
        "offline, what the pod's account never listed online is forbidden: {out}"
    );

    // A clean stop removes programs, pins and the hub address.
    node.stop();
    assert!(
        !PathBuf::from(sandbox::BPFFS).join(&pin_dir).exists(),
        "pins removed at shutdown"
    );
    assert!(
        !sandbox.has_address(Side::Node, "169.254.2.1".parse().unwrap()),
        "hub address removed at shutdown"
    );
}

#[test]
fn keep_on_exit_then_yurthub_cleanup_removes_everything_idempotently() {
    sandbox::require_root();
    sandbox::require_cgroup2();
    sandbox::require_bpffs();
    let sandbox = NetSandbox::new(&[]);
    let cgroup = TestCgroup::new();
    let pin_dir = sandbox::unique_name("yurthub-keep");
    let mut node = NodeSide::start(
        &sandbox,
        cgroup.path(),
        &pin_dir,
        &["--keep-redirect-on-exit", "--apiserver-vip=10.96.0.1:443"],
    );
    wait_for("the redirect to heartbeat", Duration::from_secs(20), || {
        redirect_status(&sandbox, node.hub_server)["active"] == true
    });
    node.stop();
    let pins = PathBuf::from(sandbox::BPFFS).join(&pin_dir);
    assert!(
        pins.exists(),
        "--keep-redirect-on-exit leaves the pins for the next hub"
    );
    assert!(sandbox.has_address(Side::Node, "169.254.2.1".parse().unwrap()));

    // A restarted (or upgraded) hub adopts the pinned programs: redirecting
    // again, with exactly one attachment per program.
    let mut node = NodeSide::start(
        &sandbox,
        cgroup.path(),
        &pin_dir,
        &["--keep-redirect-on-exit", "--apiserver-vip=10.96.0.1:443"],
    );
    wait_for(
        "the adopting hub to heartbeat",
        Duration::from_secs(20),
        || redirect_status(&sandbox, node.hub_server)["active"] == true,
    );
    let attached = sandbox::attached_programs(cgroup.path());
    assert_eq!(
        attached.len(),
        4,
        "one attachment per program after adoption: {attached:?}"
    );
    node.stop();

    let bin = yurthub_e2e::hub::hub_binary();
    let cg = cgroup.path().to_path_buf();
    for round in 0..2 {
        let out = sandbox::run_in_child(
            None,
            Some(&sandbox.path(Side::Node)),
            Duration::from_secs(30),
            {
                let (bin, cg, pin_dir) = (bin.clone(), cg.clone(), pin_dir.clone());
                move || {
                    let o = std::process::Command::new(&bin)
                        .args([
                            "cleanup",
                            "--hub-address=169.254.2.1",
                            &format!("--redirect-pin-dir={pin_dir}"),
                            &format!("--redirect-cgroup={}", cg.display()),
                        ])
                        .output()
                        .expect("run yurthub cleanup");
                    format!(
                        "exit={}\n{}{}",
                        o.status.code().unwrap_or(-1),
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    )
                }
            },
        );
        assert!(out.starts_with("exit=0"), "cleanup round {round}: {out}");
    }
    assert!(!pins.exists(), "cleanup removed the pins");
    assert!(
        !sandbox.has_address(Side::Node, "169.254.2.1".parse().unwrap()),
        "cleanup removed the hub address"
    );
}

#[test]
fn a_hub_whose_upstream_is_the_vip_itself_does_not_loop() {
    sandbox::require_root();
    sandbox::require_cgroup2();
    sandbox::require_bpffs();
    let vip_ip: std::net::IpAddr = "10.96.0.1".parse().unwrap();
    let sandbox = NetSandbox::new(&[vip_ip]);
    // The programs attach at the parent; the hub and the pod live in child
    // cgroups of their own, as containers do under kubepods.
    let mut cgroup = TestCgroup::new();
    let hub_cgroup = cgroup.child("hub");
    let pod_cgroup = cgroup.child("pod");
    let pin_dir = sandbox::unique_name("yurthub-loop");

    // The real apiserver behind the VIP, inside the node namespace.
    let ns = std::fs::File::open(sandbox.path(Side::Node)).expect("open node netns");
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let api_thread = std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns node");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let pki = Arc::new(TestPki::new().expect("pki"));
            let api = Arc::new(
                ApiServer::builder()
                    .pki(pki.clone())
                    .listen("10.96.0.1:443".parse().unwrap())
                    .server_names(&["kubernetes.default.svc"], &["10.96.0.1".parse().unwrap()])
                    .start()
                    .await
                    .expect("double on the VIP"),
            );
            api.add_token(
                POD_TOKEN,
                User::new(
                    "system:serviceaccount:default:app",
                    &["system:serviceaccounts"],
                ),
            );
            tx.send((api.clone(), pki)).expect("report");
            let _ = stop_rx.await;
        });
    });
    let (api, pki) = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("double starts");

    // The hub is a process under the redirected cgroup and in the node namespace,
    // in cloud mode with the VIP as its only upstream.
    let files = HubFiles::new(&pki);
    let hub_server: SocketAddr = "127.0.0.1:10267".parse().unwrap();
    let mut args = files.args(&["https://10.96.0.1:443".to_string()], &[]);
    args.retain(|a| {
        ![
            "--hub-address",
            "--redirect-mode",
            "--proxy-secure-port",
            "--proxy-port",
            "--serve-port",
        ]
        .iter()
        .any(|f| a.starts_with(f))
    });
    args.extend(
        [
            "--working-mode=cloud",
            "--redirect-mode=ebpf",
            "--hub-address=169.254.2.1",
            "--proxy-secure-port=10268",
            "--proxy-port=10261",
            "--serve-port=10267",
            "--apiserver-vip=10.96.0.1:443",
        ]
        .map(String::from),
    );
    args.push(format!("--redirect-cgroup={}", cgroup.path().display()));
    args.push(format!("--redirect-pin-dir={pin_dir}"));
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(hub_cgroup.join("cgroup.procs"))
        .expect("cgroup.procs");
    let netns = std::fs::File::open(sandbox.path(Side::Node)).expect("node netns");
    let mut cmd = std::process::Command::new(yurthub_e2e::hub::hub_binary());
    cmd.args(&args[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    {
        use std::os::fd::AsFd;
        use std::os::unix::process::CommandExt;
        // SAFETY: only async-signal-safe calls (write, setns) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                nix::unistd::write(procs.as_fd(), b"0\n").map_err(std::io::Error::from)?;
                nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)?;
                Ok(())
            });
        }
    }
    let mut hub = KillOnDrop(cmd.spawn().expect("spawn hub"));

    wait_for(
        "the hub in the redirected cgroup to heartbeat",
        Duration::from_secs(30),
        || {
            std::panic::catch_unwind(|| redirect_status(&sandbox, hub_server)["active"] == true)
                .unwrap_or(false)
        },
    );

    // Node traffic through the hub reaches the double at the VIP: the hub's
    // own connection to the VIP was not redirected back to itself.
    let body = hub_get(
        &sandbox,
        "127.0.0.1:10261".parse().unwrap(),
        "/api/v1/namespaces/default/services/kubernetes",
    );
    assert!(
        body.contains("\"kubernetes\""),
        "the hub reached the real apiserver: {body}"
    );
    assert!(
        api.requests()
            .iter()
            .any(|r| r.path == "/api/v1/namespaces/default/services/kubernetes")
    );
    let status = redirect_status(&sandbox, hub_server);
    let vip = status["vips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vip"] == VIP)
        .unwrap()
        .clone();
    assert!(
        vip["skipped_own"].as_u64().unwrap_or(0) >= 1,
        "the hub's own VIP connection was exempt: {status:#}"
    );

    // A pod in the same cgroup is still redirected to the hub, which forwards
    // to the VIP without looping.
    let out = kubectl_in_pod(
        &sandbox,
        &pod_cgroup,
        pki.ca_pem(),
        &["get", "services", "-o", "name"],
    );
    assert!(
        out.starts_with("exit=0") && out.contains("service/kubernetes"),
        "{out}"
    );
    let status = redirect_status(&sandbox, hub_server);
    let vip = status["vips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vip"] == VIP)
        .unwrap()
        .clone();
    assert!(vip["redirected"].as_u64().unwrap_or(0) >= 1, "{status:#}");

    let pid = nix::unistd::Pid::from_raw(hub.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let exit = wait_child(&mut hub.0, Duration::from_secs(15));
    assert!(exit.success(), "hub exit: {exit:?}");
    assert!(
        !PathBuf::from(sandbox::BPFFS).join(&pin_dir).exists(),
        "pins removed at shutdown"
    );
    let _ = stop_tx.send(());
    api_thread.join().expect("double thread");
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_child(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "process did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_node_that_cannot_redirect_still_serves_and_says_why() {
    sandbox::require_root();
    let sandbox = NetSandbox::new(&[]);
    // /proc is no cgroup v2 directory: the redirect cannot be installed.
    let mut node = NodeSide::start(
        &sandbox,
        Path::new("/proc"),
        &sandbox::unique_name("yurthub-none"),
        &[],
    );
    let status = redirect_status(&sandbox, node.hub_server);
    assert_eq!(status["installed"], false, "{status:#}");
    let reason = status["reason"].as_str().unwrap_or_default().to_string();
    assert!(
        reason.contains("/proc") && reason.contains("cgroup"),
        "the reason names what is wrong: {reason}"
    );
    let healthz = hub_get(&sandbox, node.hub_server, "/v1/healthz");
    assert_eq!(healthz, "OK");
    assert!(
        !sandbox.has_address(Side::Node, "169.254.2.1".parse().unwrap()),
        "a failed install leaves no address behind"
    );
    node.stop();
}
