//! The node side of the daemon-level redirect tests: the apiserver double
//! and the real hub on a runtime whose threads live in the sandbox's node
//! namespace, the hub server's surfaces seen from there, and an unmodified
//! in-cluster kubectl run as a pod (pod network namespace, a pod cgroup, a
//! service account mounted as kubelet would).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{NetSandbox, Side};
use crate::apiserver::{ApiServer, User};
use crate::hub::{Hub, HubFiles, NODE};
use crate::pki::TestPki;

/// The `kubernetes` Service VIP the pods dial.
pub const VIP: &str = "10.96.0.1:443";
/// The pod's service-account token (known to the double).
pub const POD_TOKEN: &str = "pod-sa-token-0123456789";

/// The double and the hub, running on a runtime whose threads live in the
/// sandbox's node namespace (sockets and netlink calls happen there).
pub struct NodeSide {
    pub api: Arc<ApiServer>,
    pub hub_server: SocketAddr,
    pub proxy: SocketAddr,
    pub pki: Arc<TestPki>,
    runtime: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _files: Arc<HubFiles>,
}

impl NodeSide {
    pub fn start(sandbox: &NetSandbox, cgroup: &Path, pin_dir: &str, extra: &[&str]) -> NodeSide {
        let ns = std::fs::File::open(sandbox.path(Side::Node)).expect("open node netns");
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let mut args_extra: Vec<String> = vec![
            "--redirect-mode=ebpf".into(),
            "--hub-address=169.254.2.1".into(),
            "--proxy-secure-port=10268".into(),
            format!("--redirect-cgroup={}", cgroup.display()),
            format!("--redirect-pin-dir={pin_dir}"),
        ];
        args_extra.extend(extra.iter().map(|s| s.to_string()));
        let thread = std::thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns node");
            // Built after setns: every runtime thread inherits the namespace.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let pki = Arc::new(TestPki::new().expect("pki"));
                let api = Arc::new(ApiServer::builder().pki(pki.clone()).start().await.expect("double"));
                api.create(serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})).expect("node");
                api.create(serde_json::json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "seen-through-the-vip", "namespace": "default"},
                    "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "pause"}]}}))
                .expect("pod");
                api.add_token(POD_TOKEN, User::new("system:serviceaccount:default:app", &["system:serviceaccounts"]));
                let files = Arc::new(HubFiles::new(&pki));
                let mut args: Vec<String> = files.args(&[api.url()], &[]);
                // Replace the development defaults with the redirect's.
                args.retain(|a| !a.starts_with("--hub-address") && !a.starts_with("--redirect-mode") && !a.starts_with("--proxy-secure-port"));
                args.extend(args_extra);
                let hub = Hub::start(&args).await;
                let handle = tokio::runtime::Handle::current();
                tx.send((api.clone(), hub.hub_server, hub.proxy, pki.clone(), files.clone(), handle)).expect("report");
                let _ = stop_rx.await;
                hub.stop().await;
            });
        });
        let (api, hub_server, proxy, pki, files, runtime) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("hub starts in the node namespace");
        NodeSide {
            api,
            hub_server,
            proxy,
            pki,
            runtime,
            stop: Some(stop_tx),
            thread: Some(thread),
            _files: files,
        }
    }

    /// The cloud vanishes (listener closed, connections reset) and the hub
    /// is seen to notice it on its metrics.
    pub fn cut_cloud(&self, sandbox: &NetSandbox) {
        let api = self.api.clone();
        self.runtime.block_on(async move { api.shutdown().await });
        let server = self.api.url();
        wait_for(
            "the hub to see the cloud down",
            Duration::from_secs(15),
            || {
                hub_get(sandbox, self.hub_server, "/metrics")
                    .lines()
                    .any(|l| {
                        l.starts_with("node_yurthub_server_healthy_status")
                            && l.contains(&server)
                            && l.trim_end().ends_with(" 0")
                    })
            },
        );
    }

    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().expect("node side thread");
        }
    }
}

impl Drop for NodeSide {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A GET to the hub server from inside the node namespace.
pub fn hub_get(sandbox: &NetSandbox, addr: SocketAddr, path: &str) -> String {
    hub_get_as(sandbox, addr, path, "test/1")
}

/// The same with a User-Agent (the component filters and the cache key on).
pub fn hub_get_as(sandbox: &NetSandbox, addr: SocketAddr, path: &str, ua: &str) -> String {
    let (path, ua) = (path.to_string(), ua.to_string());
    sandbox.in_thread(Side::Node, move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .expect("connect hub server");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: {ua}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    })
}

pub fn redirect_status(sandbox: &NetSandbox, hub: SocketAddr) -> Value {
    serde_json::from_str(&hub_get(sandbox, hub, "/v1/redirect")).expect("/v1/redirect is JSON")
}

/// Runs kubectl in the pod: test cgroup, pod network namespace, and a private
/// mount namespace where the service account is mounted as kubelet would.
pub fn kubectl_in_pod(sandbox: &NetSandbox, cgroup: &Path, ca_pem: &str, args: &[&str]) -> String {
    let ca = ca_pem.to_string();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    super::run_in_child(
        Some(cgroup),
        Some(&sandbox.path(Side::Pod)),
        Duration::from_secs(60),
        move || {
            use nix::mount::{MsFlags, mount};
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare mount ns");
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .expect("make / private");
            mount(
                Some("tmpfs"),
                "/run",
                Some("tmpfs"),
                MsFlags::empty(),
                None::<&str>,
            )
            .expect("tmpfs on /run");
            let sa = PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount");
            std::fs::create_dir_all(&sa).expect("sa dir");
            std::fs::write(sa.join("ca.crt"), &ca).expect("ca.crt");
            std::fs::write(sa.join("token"), POD_TOKEN).expect("token");
            std::fs::write(sa.join("namespace"), "default").expect("namespace");
            std::fs::create_dir_all("/run/home").expect("home");
            let out = std::process::Command::new("/usr/bin/kubectl")
                .args(&args)
                .env_clear()
                .env("HOME", "/run/home")
                .env("KUBERNETES_SERVICE_HOST", "10.96.0.1")
                .env("KUBERNETES_SERVICE_PORT", "443")
                .output()
                .expect("run kubectl");
            format!(
                "exit={}\n--stdout--\n{}--stderr--\n{}",
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        },
    )
}

pub fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
