//! The sandbox part of `cargo xtask demo` (root, cgroup v2 and bpffs): an
//! unmodified "pod" reaches the apiserver double through the kubernetes
//! Service VIP, redirected in the kernel to a yurthub.
//!
//! It builds a node/pod network-namespace pair and a test cgroup, relays the
//! node namespace's `127.0.0.1:<port>` to the double on the host's loopback
//! (so the one double of the demo is the cloud for both hubs), starts the
//! yurthub binary inside the node namespace with `--redirect-mode=ebpf`
//! attached to the test cgroup only, waits for `/v1/redirect` to report the
//! VIP active, and runs kubectl in the pod with in-cluster configuration
//! only. Then it prints [`WAITING`] and waits for a line on stdin (the demo
//! cuts the cloud meanwhile), runs the same kubectl again, and cleans up:
//! the hub removes its programs, pins and address on SIGTERM; the
//! namespaces and the cgroup are deleted. Ctrl-C at any point cleans up too.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use tokio::io::AsyncBufReadExt as _;
use tokio::signal::unix::{SignalKind, signal};
use yurthub_e2e::sandbox::{self, BPFFS, NetSandbox, Side, TestCgroup};

/// The line the demo waits for before cutting the cloud.
const WAITING: &str = "demo-sandbox: waiting for the cloud to be cut";
const VIP: &str = "10.96.0.1:443";
const HUB_SERVER: &str = "127.0.0.1:10267";

#[derive(Debug, Parser)]
#[command(about = "Sandbox part of `cargo xtask demo`")]
struct Args {
    /// The yurthub binary.
    #[arg(long)]
    hub_bin: PathBuf,
    /// Port of the apiserver double on the host's 127.0.0.1.
    #[arg(long)]
    server_port: u16,
    /// Directory with ca.crt, token, hub-client.pem, hub-serving.{crt,key}
    /// (written by `apiserver-double --hub-certs-for`).
    #[arg(long)]
    pki_dir: PathBuf,
    /// Node name (the one the certificates were written for).
    #[arg(long)]
    node: String,
    /// Scratch directory for the hub's root dir and log.
    #[arg(long)]
    work_dir: PathBuf,
    /// Seconds to wait for the cut before giving up.
    #[arg(long, default_value_t = 300)]
    wait_seconds: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    sandbox::require_root();
    sandbox::require_cgroup2();
    sandbox::require_bpffs();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    match rt.block_on(run(args)) {
        Err(e) if e.is::<Interrupted>() => {
            say("demo-sandbox: interrupted; the sandbox is removed");
            std::process::exit(130)
        }
        other => other,
    }
}

/// Ctrl-C or SIGTERM arrived; everything was cleaned up on the way out.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
struct Interrupted;

async fn run(args: Args) -> Result<()> {
    let mut interrupt = Interrupt::new()?;
    say("creating a node and a pod network namespace (veth, no route out) and a test cgroup");
    let net = NetSandbox::new(&[]);
    let cgroup = TestCgroup::new();
    let pins = PinDir(sandbox::unique_name("yurthub-demo"));
    let relay = Relay::start(&net, args.server_port)?;
    say(&format!(
        "relaying the node namespace's 127.0.0.1:{0} to the double on the host's 127.0.0.1:{0}",
        args.server_port
    ));

    std::fs::create_dir_all(&args.work_dir)?;
    let hub = HubInNode::start(&net, &args, cgroup.path(), &pins.0)?;
    say(&format!(
        "started yurthub (pid {}) in the node namespace: --redirect-mode=ebpf --redirect-cgroup={} (log: {})",
        hub.child.id(),
        cgroup.path().display(),
        hub.log.display()
    ));

    let status = interrupt
        .run(wait_active(&net, Duration::from_secs(45)))
        .await??;
    say(&format!(
        "/v1/redirect: active={} hub={} vips={} programs attached={}",
        status["active"],
        status["hub"],
        status["vips"],
        status["programs"]
            .as_array()
            .map_or(0, |p| p.iter().filter(|p| p["attached"] == true).count())
    ));

    // The pod's kubectl is a cache agent through yurt-hub-cfg (the demo
    // applied it): wait until this hub learned that, so the pod's online
    // reads are kept for the offline ones.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let learned = hub_get(&net, "/v1/cache").is_ok_and(|b| b.contains("\"kubectl\""));
        if learned {
            say("/v1/cache: kubectl is a cache agent of the sandbox hub (from yurt-hub-cfg)");
            break;
        }
        if Instant::now() > deadline {
            say(
                "the sandbox hub has not learned that kubectl is a cache agent: its offline reads will be refused",
            );
            break;
        }
        interrupt
            .run(tokio::time::sleep(Duration::from_millis(300)))
            .await?;
    }

    let ca = std::fs::read_to_string(args.pki_dir.join("ca.crt")).context("reading ca.crt")?;
    let token = std::fs::read_to_string(args.pki_dir.join("token")).context("reading token")?;
    say(
        "the pod: kubectl with only KUBERNETES_SERVICE_HOST=10.96.0.1, KUBERNETES_SERVICE_PORT=443 and a mounted service account",
    );
    if !print_kubectl(&net, &cgroup, &ca, &token) {
        say("  the pod's read failed online (see the error line above)");
    }
    if let Ok(body) = hub_get(&net, "/v1/redirect")
        && let Ok(s) = serde_json::from_str::<serde_json::Value>(&body)
    {
        say(&format!(
            "/v1/redirect after the pod's requests: vips={}",
            s["vips"]
        ));
    }

    say(WAITING);
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    match interrupt
        .run(tokio::time::timeout(
            Duration::from_secs(args.wait_seconds),
            lines.next_line(),
        ))
        .await?
    {
        Ok(_) => {}
        Err(_) => say("no cut within the wait time; cleaning up"),
    }
    say("the pod again, with the cloud gone: the same reads, with the same service-account token");
    if !print_kubectl(&net, &cgroup, &ca, &token) {
        say(
            "  refused: the sandbox hub did not answer the pod's read from its cache (its reason is the error line above)",
        );
    }

    say("stopping the sandbox hub (it detaches its programs and removes its pins and address)");
    let hub_exit = hub.stop();
    drop(relay);
    drop(pins);
    drop(cgroup);
    drop(net);
    say(&format!("sandbox removed (hub exit: {hub_exit})"));
    Ok(())
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Ctrl-C / SIGTERM turned into an error at the next await point.
struct Interrupt {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Interrupt {
    fn new() -> Result<Interrupt> {
        Ok(Interrupt {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    async fn run<F: std::future::Future>(&mut self, f: F) -> Result<F::Output> {
        tokio::select! {
            out = f => Ok(out),
            _ = self.int.recv() => Err(Interrupted.into()),
            _ = self.term.recv() => Err(Interrupted.into()),
        }
    }
}

/// A listener in the node namespace forwarding to the host's loopback: a
/// socket belongs to the namespace it was created in, so the listener is
/// bound from a node-namespace thread and the upstream sockets are made on
/// this (host namespace) runtime.
struct Relay {
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    fn start(net: &NetSandbox, port: u16) -> Result<Relay> {
        let listener = net.in_thread(Side::Node, move || {
            let l = std::net::TcpListener::bind(("127.0.0.1", port));
            l.and_then(|l| l.set_nonblocking(true).map(|()| l))
        });
        let listener = tokio::net::TcpListener::from_std(
            listener.with_context(|| format!("binding 127.0.0.1:{port} in the node namespace"))?,
        )?;
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut upstream) =
                        tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut upstream).await;
                    }
                });
            }
        });
        Ok(Relay { task })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The yurthub process, forked from a node-namespace thread (a child
/// inherits its creator's network namespace). SIGTERM and a bounded wait on
/// drop.
struct HubInNode {
    child: Child,
    log: PathBuf,
}

impl HubInNode {
    fn start(net: &NetSandbox, args: &Args, cgroup: &Path, pin_dir: &str) -> Result<HubInNode> {
        let pki = &args.pki_dir;
        let root = args.work_dir.join("sandbox-hub");
        let log = args.work_dir.join("sandbox-hub.log");
        let flags: Vec<String> = vec![
            format!("--server-addr=https://127.0.0.1:{}", args.server_port),
            format!("--node-name={}", args.node),
            "--bootstrap-mode=kubeletcertificate".into(),
            format!(
                "--kubelet-client-certificate={}",
                pki.join("hub-client.pem").display()
            ),
            format!("--kubelet-ca-file={}", pki.join("ca.crt").display()),
            format!("--tls-cert-file={}", pki.join("hub-serving.crt").display()),
            format!(
                "--tls-private-key-file={}",
                pki.join("hub-serving.key").display()
            ),
            "--redirect-mode=ebpf".into(),
            format!("--redirect-cgroup={}", cgroup.display()),
            format!("--redirect-pin-dir={pin_dir}"),
            format!("--root-dir={}", root.display()),
            format!("--disk-cache-path={}", root.join("cache").display()),
        ];
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let bin = args.hub_bin.clone();
        let child = net.in_thread(Side::Node, move || {
            let err = file.try_clone()?;
            Command::new(&bin)
                .args(&flags)
                .stdin(Stdio::null())
                .stdout(file)
                .stderr(err)
                .spawn()
        });
        let child = child.with_context(|| format!("starting {}", args.hub_bin.display()))?;
        Ok(HubInNode { child, log })
    }

    /// SIGTERM, then up to 15 s for a clean exit (then SIGKILL).
    fn stop(mut self) -> String {
        self.terminate()
    }

    fn terminate(&mut self) -> String {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status.to_string();
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.to_string();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        "killed after 15 s".into()
    }
}

impl Drop for HubInNode {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Removes the pin directory if the hub could not (unpinning detaches).
struct PinDir(String);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(PathBuf::from(BPFFS).join(&self.0));
    }
}

/// A GET on the sandbox hub's server, from a node-namespace thread.
fn hub_get(net: &NetSandbox, path: &str) -> Result<String> {
    let path = path.to_owned();
    net.in_thread(Side::Node, move || {
        let addr: SocketAddr = HUB_SERVER.parse()?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default())
    })
}

/// Polls /v1/redirect until the VIP is known and the redirect heartbeats.
async fn wait_active(net: &NetSandbox, within: Duration) -> Result<serde_json::Value> {
    let deadline = Instant::now() + within;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        match hub_get(net, "/v1/redirect") {
            Ok(body) => match serde_json::from_str::<serde_json::Value>(&body) {
                Ok(s)
                    if s["active"] == true
                        && s["vips"]
                            .as_array()
                            .is_some_and(|v| v.iter().any(|v| v["vip"] == VIP)) =>
                {
                    return Ok(s);
                }
                _ => last = body,
            },
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("the sandbox hub's redirect did not turn active for {VIP} within {within:?}: {last}")
}

/// Runs the pod's kubectl and prints its output; true when it succeeded.
fn print_kubectl(net: &NetSandbox, cgroup: &TestCgroup, ca: &str, token: &str) -> bool {
    // No --request-timeout or other overrides: kubectl uses the in-cluster
    // configuration only when its client config is otherwise the default.
    let out = kubectl_in_pod(
        net,
        cgroup,
        ca,
        token,
        &["get", "pods", "-o", "wide", "-v=6"],
    );
    // stdout whole; from stderr (-v=6) the distinct request lines, which
    // show the URL dialled, and the errors.
    let mut seen = Vec::new();
    for line in out.lines() {
        if let Some(l) = line.strip_prefix("OUT ") {
            say(&format!("  pod$ {l}"));
        } else if let Some(l) = line.strip_prefix("ERR ") {
            let request = l
                .split_once("round_trippers.go")
                .map(|(_, r)| r.split_once("] ").map_or(r, |(_, r)| r));
            let shown = match request {
                Some(r) => {
                    let key = r.split(" in ").next().unwrap_or(r).to_owned();
                    (!seen.contains(&key)).then(|| {
                        seen.push(key);
                        r
                    })
                }
                None => (l.starts_with("Error") || l.starts_with("error")).then_some(l),
            };
            if let Some(text) = shown {
                say(&format!("  pod$ {text}"));
            }
        } else {
            say(&format!("  {line}"));
        }
    }
    out.ends_with("(kubectl exit 0)")
}

/// Runs kubectl in the pod: test cgroup, pod network namespace, and a
/// private mount namespace with the service account mounted as kubelet
/// would; returns its exit code and output as text.
fn kubectl_in_pod(
    net: &NetSandbox,
    cgroup: &TestCgroup,
    ca: &str,
    token: &str,
    args: &[&str],
) -> String {
    let (ca, token) = (ca.to_owned(), token.trim().to_owned());
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    sandbox::run_in_child(
        Some(cgroup.path()),
        Some(&net.path(Side::Pod)),
        Duration::from_secs(60),
        move || match pod_kubectl(&ca, &token, &args) {
            Ok(text) => text,
            Err(e) => format!("(kubectl could not run: {e:#})"),
        },
    )
}

fn pod_kubectl(ca: &str, token: &str, args: &[String]) -> Result<String> {
    use nix::mount::{MsFlags, mount};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).context("unshare mount namespace")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("make / private")?;
    mount(
        Some("tmpfs"),
        "/run",
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .context("tmpfs on /run")?;
    let sa = Path::new("/var/run/secrets/kubernetes.io/serviceaccount");
    std::fs::create_dir_all(sa)?;
    std::fs::write(sa.join("ca.crt"), ca)?;
    std::fs::write(sa.join("token"), token)?;
    std::fs::write(sa.join("namespace"), "default")?;
    std::fs::create_dir_all("/run/home")?;
    let out = Command::new("kubectl")
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", "/run/home")
        .env("KUBERNETES_SERVICE_HOST", "10.96.0.1")
        .env("KUBERNETES_SERVICE_PORT", "443")
        .output()
        .context("run kubectl")?;
    let mut text = String::new();
    for (prefix, bytes) in [("OUT", &out.stdout), ("ERR", &out.stderr)] {
        for line in String::from_utf8_lossy(bytes).lines() {
            text.push_str(&format!("{prefix} {line}\n"));
        }
    }
    text.push_str(&format!(
        "(kubectl exit {})",
        out.status.code().unwrap_or(-1)
    ));
    Ok(text)
}
