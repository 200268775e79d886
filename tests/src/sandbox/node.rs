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
use crate::hub::{Hub, HubFiles, HubProcess, NODE, free_port};
use crate::pki::TestPki;

/// The `kubernetes` Service VIP the pods dial.
pub const VIP: &str = "10.96.0.1:443";
/// The pod's service-account token (known to the double).
pub const POD_TOKEN: &str = "pod-sa-token-0123456789";

/// The double and the hub, running on a runtime whose threads live in the
/// sandbox's node namespace (sockets and netlink calls happen there). The
/// hub runs either on that runtime ([`NodeSide::start`]) or as the real
/// binary in the node namespace ([`NodeSide::start_process`]), which a test
/// can kill outright ([`NodeSide::kill`]) to model a crash.
pub struct NodeSide {
    pub api: Arc<ApiServer>,
    pub hub_server: SocketAddr,
    pub proxy: SocketAddr,
    pub pki: Arc<TestPki>,
    runtime: tokio::runtime::Handle,
    process: Option<HubProcess>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _files: Arc<HubFiles>,
}

/// Where the hub runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Run {
    InProcess,
    Process,
}

/// What the node thread reports once the double (and an in-process hub) run.
struct Started {
    api: Arc<ApiServer>,
    pki: Arc<TestPki>,
    files: Arc<HubFiles>,
    /// The hub's flags (for a process hub).
    args: Vec<String>,
    /// The in-process hub's listeners.
    listeners: Option<(SocketAddr, SocketAddr)>,
    /// The node side's runtime (the double lives on it).
    runtime: tokio::runtime::Handle,
}

impl NodeSide {
    pub fn start(sandbox: &NetSandbox, cgroup: &Path, pin_dir: &str, extra: &[&str]) -> NodeSide {
        Self::launch(sandbox, cgroup, pin_dir, extra, Run::InProcess)
    }

    /// The same with the hub as the real binary, a child process in the node
    /// namespace (and the test process's cgroup, as the in-process hub).
    pub fn start_process(
        sandbox: &NetSandbox,
        cgroup: &Path,
        pin_dir: &str,
        extra: &[&str],
    ) -> NodeSide {
        Self::launch(sandbox, cgroup, pin_dir, extra, Run::Process)
    }

    fn launch(
        sandbox: &NetSandbox,
        cgroup: &Path,
        pin_dir: &str,
        extra: &[&str],
        run: Run,
    ) -> NodeSide {
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
                let started = |args, listeners| Started { api: api.clone(), pki: pki.clone(), files: files.clone(), args, listeners, runtime: tokio::runtime::Handle::current() };
                match run {
                    Run::InProcess => {
                        let hub = Hub::start(&args).await;
                        tx.send(started(Vec::new(), Some((hub.hub_server, hub.proxy)))).expect("report");
                        let _ = stop_rx.await;
                        hub.stop().await;
                    }
                    Run::Process => {
                        // A fixed proxy port (free in this namespace), so
                        // the caller knows it without asking the process.
                        args.retain(|a| !a.starts_with("--proxy-port"));
                        args.push(format!("--proxy-port={}", free_port()));
                        tx.send(started(args, None)).expect("report");
                        let _ = stop_rx.await;
                    }
                }
            });
        });
        let started = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the node side starts in the node namespace");
        let (process, (hub_server, proxy)) = match started.listeners {
            Some(listeners) => (None, listeners),
            None => {
                let port = |flag: &str| -> u16 {
                    started
                        .args
                        .iter()
                        .find_map(|a| a.strip_prefix(flag))
                        .and_then(|p| p.parse().ok())
                        .unwrap_or_else(|| panic!("{flag}<port> in the hub's flags"))
                };
                let loopback = |p| SocketAddr::from(([127, 0, 0, 1], p));
                let listeners = (
                    loopback(port("--serve-port=")),
                    loopback(port("--proxy-port=")),
                );
                let hub = HubProcess::spawn_in_netns(&started.args, &sandbox.path(Side::Node));
                (Some(hub), listeners)
            }
        };
        let mut node = NodeSide {
            api: started.api,
            hub_server,
            proxy,
            pki: started.pki,
            runtime: started.runtime,
            process,
            stop: Some(stop_tx),
            thread: Some(thread),
            _files: started.files,
        };
        if node.process.is_some() {
            node.wait_for_process_hub(sandbox);
        }
        node
    }

    /// Waits (bounded) until the process hub's `/v1/redirect` answers.
    fn wait_for_process_hub(&mut self, sandbox: &NetSandbox) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if try_hub_get(sandbox, self.hub_server, "/v1/redirect", "test/1").is_ok() {
                return;
            }
            let exited = self
                .process
                .as_mut()
                .and_then(|p| p.child.try_wait().ok().flatten());
            let log = || {
                self.process
                    .as_ref()
                    .map(HubProcess::log)
                    .unwrap_or_default()
            };
            assert!(exited.is_none(), "the hub exited ({exited:?}): {}", log());
            assert!(
                Instant::now() < deadline,
                "the hub's server did not answer within 30 s: {}",
                log()
            );
            std::thread::sleep(Duration::from_millis(100));
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

    /// A crash: SIGKILLs the process hub (no shutdown, no cleanup; the
    /// kernel closes its descriptors, its pins stay) and reaps it. Returns
    /// when it is gone.
    pub fn kill(&mut self) -> std::process::ExitStatus {
        let hub = self
            .process
            .as_mut()
            .expect("kill() needs a hub started with start_process()");
        hub.signal_and_wait(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5))
    }

    /// What the process hub printed so far (empty for an in-process hub).
    pub fn log(&self) -> String {
        self.process
            .as_ref()
            .map(HubProcess::log)
            .unwrap_or_default()
    }

    /// Stops the hub (SIGTERM for a process hub, which is killed if it does
    /// not exit within 15 s) and the double. Never panics on the hub's
    /// account: it also runs from `Drop` while a failed test unwinds.
    pub fn stop(&mut self) {
        if let Some(mut hub) = self.process.take() {
            let pid = nix::unistd::Pid::from_raw(hub.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while hub.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            // Dropping it kills and reaps whatever is left.
        }
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
    try_hub_get(sandbox, addr, path, ua).unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"))
}

/// The same, with failures returned (a hub that is not up yet, or gone).
pub fn try_hub_get(
    sandbox: &NetSandbox,
    addr: SocketAddr,
    path: &str,
    ua: &str,
) -> std::io::Result<String> {
    let (path, ua) = (path.to_string(), ua.to_string());
    sandbox.in_thread(Side::Node, move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: {ua}\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default())
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
