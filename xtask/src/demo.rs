//! `cargo xtask demo`: yurthub end to end on this machine, in about a
//! minute, touching only loopback and namespaces it creates.
//!
//! 1. builds the daemon, the apiserver double and the sandbox helper;
//! 2. starts the double on 127.0.0.1 (a throw-away PKI in a temp dir, a few
//!    seeded pods, and the node's kubelet certificate and the hub's serving
//!    certificate from the same CA);
//! 3. starts `yurthub` with its defaults, except what a laptop needs: the
//!    kubelet-certificate bootstrap from those files, no eBPF redirect (it
//!    would attach to the host's root cgroup), the pod-facing listener on
//!    127.0.0.1, and state in the temp dir;
//! 4. shows kubectl going through the hub, and the hub server's
//!    `/v1/healthz`, `/v1/readyz` and `/metrics`;
//! 5. as root with cgroup v2 and bpffs: runs `demo-sandbox`, where an
//!    unmodified in-cluster kubectl in a pod namespace reaches the double
//!    through the VIP 10.96.0.1:443, redirected in the kernel to a second
//!    hub in the sandbox's node namespace;
//! 6. cuts the cloud (kills the double) and shows the node keep working:
//!    kubelet's pods, Node and Lease from the cache, the hub restarting
//!    offline and answering within a second, kubectl (made a cache agent
//!    through `yurt-hub-cfg`) and the sandbox pod's own in-cluster reads,
//!    each refusal with one line saying what and why;
//! 7. stops everything and removes the temp dir — also on Ctrl-C.
//!
//! Ctrl-C reaches the whole foreground process group: the double, the hubs
//! and the sandbox helper stop themselves cleanly; this process only notes
//! SIGINT/SIGTERM in a flag it checks between steps, then waits for them
//! and cleans up.

use std::{
    fs,
    io::{BufRead as _, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, kill, sigaction};
use nix::unistd::Pid;

use crate::{build_ebpf, cmd, setup};

#[derive(clap::Args)]
pub struct Args {
    /// Build and run the dev profile instead of release (faster to build
    /// when the tests were just built).
    #[arg(long)]
    pub dev: bool,
    /// Skip the eBPF sandbox part even when running as root.
    #[arg(long)]
    pub no_sandbox: bool,
    /// Keep the demo's directory (logs, caches, certificates) for reading
    /// afterwards; processes are stopped either way.
    #[arg(long)]
    pub keep: bool,
}

const NODE: &str = "demo-node";
const SEED_PODS: &str = "3";
const PROXY: &str = "127.0.0.1:10261";
const SECURE: &str = "127.0.0.1:10268";
const HUB_SERVER: &str = "127.0.0.1:10267";
/// Printed by demo-sandbox when it is ready for the cut.
const SANDBOX_WAITING: &str = "demo-sandbox: waiting for the cloud to be cut";
const KUBELET_UA: &str = "kubelet/v1.34.0 (linux/amd64) kubernetes/demo";

pub fn run(args: &Args) -> Result<()> {
    let mut signals = Signals::install()?;
    step("checking tools");
    setup::ensure()?;
    let profile = if args.dev { "debug" } else { "release" };
    step(&format!("building ({profile})"));
    let mut build = cmd::cargo();
    build.arg("build");
    if !args.dev {
        build.arg("--release");
    }
    build.args([
        "-p",
        "yurthub",
        "-p",
        "yurthub-e2e",
        "--bin",
        "yurthub",
        "--bin",
        "apiserver-double",
        "--bin",
        "demo-sandbox",
    ]);
    cmd::run(&mut build)?;
    signals.check()?;
    let bin_dir = build_ebpf::target_dir()?.join(profile);

    let dir = std::env::temp_dir().join(format!("yurthub-demo-{}", std::process::id()));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut demo = Demo {
        dir,
        bin_dir,
        signals,
        procs: Vec::new(),
        hub_args: Vec::new(),
        keep: args.keep,
    };
    let result = demo.run(args);
    demo.cleanup();
    if let Err(err) = &result
        && demo.signals.interrupted
    {
        eprintln!("demo interrupted ({err:#}); everything it started is stopped and removed");
        return Ok(());
    }
    result
}

fn step(title: &str) {
    println!("\n==> {title}");
}

fn indent(text: &str, prefix: &str) {
    for line in text.lines() {
        println!("{prefix}{line}");
    }
}

/// Set by the SIGINT/SIGTERM handler.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: std::ffi::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C and SIGTERM turned into a flag, so that this process outlives its
/// children's clean stop and then cleans up. Children get the default
/// dispositions back at exec, and an unchanged signal mask.
struct Signals {
    interrupted: bool,
}

impl Signals {
    fn install() -> Result<Signals> {
        let action = SigAction::new(
            SigHandler::Handler(on_signal),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        for signal in [Signal::SIGINT, Signal::SIGTERM] {
            // SAFETY: the handler only stores to an atomic, which is
            // async-signal-safe; no other handler is replaced.
            unsafe { sigaction(signal, &action) }
                .with_context(|| format!("installing a {signal} handler"))?;
        }
        Ok(Signals { interrupted: false })
    }

    /// Err once Ctrl-C or SIGTERM arrived.
    fn check(&mut self) -> Result<()> {
        self.interrupted |= INTERRUPTED.load(Ordering::SeqCst);
        if self.interrupted {
            bail!("interrupted");
        }
        Ok(())
    }
}

/// A process the demo started; stopped (SIGTERM, then SIGKILL after 10 s)
/// by [`Demo::cleanup`].
struct Proc {
    name: &'static str,
    child: Child,
}

struct Demo {
    dir: PathBuf,
    keep: bool,
    bin_dir: PathBuf,
    signals: Signals,
    procs: Vec<Proc>,
    /// The host hub's flags, to restart it offline.
    hub_args: Vec<String>,
}

impl Demo {
    fn run(&mut self, args: &Args) -> Result<()> {
        let pki = self.dir.join("pki");
        let api_port = free_port()?;
        for (what, addr) in [
            ("plain proxy", PROXY),
            ("secure proxy", SECURE),
            ("hub server", HUB_SERVER),
        ] {
            if TcpListener::bind(addr).is_err() {
                bail!(
                    "{addr} (the hub's default {what} port) is in use; stop what listens there and rerun"
                );
            }
        }

        step("starting the apiserver double on loopback (the \"cloud\")");
        let server = format!("https://127.0.0.1:{api_port}");
        self.spawn(
            "apiserver-double",
            "apiserver-double",
            &[
                &format!("--listen=127.0.0.1:{api_port}"),
                &format!("--pki-dir={}", pki.display()),
                &format!("--seed-pods={SEED_PODS}"),
                &format!("--node={NODE}"),
                &format!("--hub-certs-for={NODE}"),
            ],
            None,
        )?;
        self.wait_for(
            "the double to listen and write its PKI",
            Duration::from_secs(30),
            |_| {
                pki.join("hub-serving.key").exists()
                    && TcpStream::connect_timeout(
                        &SocketAddr::from(([127, 0, 0, 1], api_port)),
                        Duration::from_millis(200),
                    )
                    .is_ok()
            },
        )?;
        println!(
            "{server} is up; {} pods seeded on node {NODE}; PKI in {}",
            SEED_PODS,
            pki.display()
        );

        step("starting yurthub in front of it");
        let root = self.dir.join("hub");
        let hub_args = [
            format!("--server-addr={server}"),
            format!("--node-name={NODE}"),
            "--bootstrap-mode=kubeletcertificate".to_owned(),
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
            // A laptop is not a node: no eBPF on the host's root cgroup, and
            // the pod-facing listener on loopback instead of 169.254.2.1.
            "--redirect-mode=none".to_owned(),
            "--hub-address=127.0.0.1".to_owned(),
            format!("--root-dir={}", root.display()),
            format!("--disk-cache-path={}", root.join("cache").display()),
        ];
        let hub_refs: Vec<&str> = hub_args.iter().map(String::as_str).collect();
        self.spawn("yurthub", "yurthub", &hub_refs, None)?;
        self.hub_args = hub_args.to_vec();
        self.wait_for(
            "the hub server to answer /v1/healthz",
            Duration::from_secs(30),
            |_| http_get(HUB_SERVER, "/v1/healthz").is_ok_and(|(s, _)| s == 200),
        )?;
        let ready = self.wait_for("the hub to be ready", Duration::from_secs(30), |_| {
            http_get(HUB_SERVER, "/v1/readyz").is_ok_and(|(s, _)| s == 200)
        });
        if let Err(e) = ready {
            self.signals.check()?;
            println!("(not ready yet: {e:#}; continuing)");
        }

        step("kubectl through the hub (plain HTTP on 127.0.0.1:10261, as kubelet uses it)");
        let kubeconfig = self.dir.join("hub.kubeconfig");
        fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: hub\n  cluster:\n    server: http://{PROXY}\n\
                 users:\n- name: node\n  user: {{}}\ncontexts:\n- name: hub\n  context:\n    cluster: hub\n    user: node\n\
                 current-context: hub\n"
            ),
        )?;
        println!(
            "(the kubeconfig has no credentials: on loopback the hub lends the node's identity)"
        );
        self.kubectl(&kubeconfig, &["get", "pods", "-o", "wide"])?;
        self.kubectl(&kubeconfig, &["get", "nodes"])?;

        step("the hub server on 127.0.0.1:10267");
        for path in ["/v1/healthz", "/v1/readyz"] {
            let (status, body) = http_get(HUB_SERVER, path)?;
            println!("GET {path} -> {status} {}", body.trim());
        }
        let (_, metrics) = http_get(HUB_SERVER, "/metrics")?;
        println!("GET /metrics (node_yurthub_* samples, buckets omitted):");
        let excerpt: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("node_yurthub_") && !l.contains("_bucket{"))
            .take(20)
            .collect();
        indent(&excerpt.join("\n"), "  ");

        step(
            "making kubectl a cache agent (the labelled yurt-hub-cfg ConfigMap, applied in the cloud)",
        );
        let admin = pki.join("admin.kubeconfig");
        let cm = self.dir.join("yurt-hub-cfg.yaml");
        fs::write(
            &cm,
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: yurt-hub-cfg\n  namespace: kube-system\n  \
             labels:\n    openyurt.io/configmap-name: yurt-hub-cfg\ndata:\n  cache_agents: kubectl\n",
        )?;
        // The double serves no OpenAPI document to validate against.
        self.kubectl(
            &admin,
            &[
                "apply",
                "--validate=false",
                "-f",
                cm.to_str().context("utf-8 path")?,
            ],
        )?;
        let learned = self.wait_for(
            "the hub to learn the new cache agent",
            Duration::from_secs(20),
            |_| http_get(HUB_SERVER, "/v1/cache").is_ok_and(|(_, b)| b.contains("\"kubectl\"")),
        );
        match learned {
            Ok(()) => println!("/v1/cache: cacheAgents now include kubectl"),
            Err(e) => {
                self.signals.check()?;
                println!("(the hub has not listed kubectl as a cache agent yet: {e:#})");
            }
        }
        // Lists made as a cache agent are what it gets back offline.
        self.kubectl(&kubeconfig, &["get", "pods"])?;
        self.kubectl(&kubeconfig, &["get", "nodes"])?;

        step("kubelet's own reads through the hub (what it needs after a reboot)");
        for (what, path) in kubelet_reads() {
            match http_request(PROXY, "GET", &path, KUBELET_UA) {
                Ok((status, _)) => println!("kubelet GET {path} -> {status} ({what})"),
                Err(e) => println!("kubelet GET {path} failed: {e:#}"),
            }
        }

        let mut sandbox = None;
        match sandbox_blocker(args) {
            Some(reason) => {
                step("eBPF redirect in a sandbox: skipped");
                println!("{reason}");
            }
            None => {
                step(
                    "eBPF redirect: an unmodified in-cluster client in a pod namespace dials 10.96.0.1:443",
                );
                sandbox = Some(self.start_sandbox(api_port, &pki)?);
            }
        }

        step("cutting the cloud: killing the apiserver double");
        self.kill("apiserver-double");
        thread::sleep(Duration::from_secs(2));
        self.signals.check()?;
        self.wait_for(
            "the hub to see the cloud gone",
            Duration::from_secs(20),
            |_| {
                http_get(HUB_SERVER, "/metrics").is_ok_and(|(_, m)| {
                    m.lines().any(|l| {
                        l.starts_with("node_yurthub_server_healthy_status")
                            && l.trim_end().ends_with(" 0")
                    })
                })
            },
        )?;
        println!("the hub marked the apiserver unhealthy: it answers from its cache now");
        step("kubelet's view with the cloud gone: from the cache");
        self.kubelet_view();

        step("the hub restarts with the cloud gone (as after a node reboot)");
        println!(
            "(on a node, kubelet starts it again from its staticPodPath: `yurthub install-static`, see deploy/README.md)"
        );
        self.stop_proc("yurthub");
        let hub_args = self.hub_args.clone();
        let hub_refs: Vec<&str> = hub_args.iter().map(String::as_str).collect();
        let started = Instant::now();
        self.spawn("yurthub", "yurthub", &hub_refs, None)?;
        let pods = kubelet_reads()[0].1.clone();
        self.wait_for(
            "the restarted hub to answer kubelet",
            Duration::from_secs(20),
            |_| http_request(PROXY, "GET", &pods, KUBELET_UA).is_ok_and(|(s, _)| s == 200),
        )?;
        let took = started.elapsed();
        println!(
            "restarted offline; kubelet's pod list answered from the cache {} ms after the start ({})",
            took.as_millis(),
            if took < Duration::from_secs(1) {
                "within 1 s"
            } else {
                "slower than 1 s on this machine"
            }
        );
        self.kubelet_view();
        if let Ok((status, body)) = http_get(HUB_SERVER, "/v1/readyz") {
            println!("GET /v1/readyz -> {status} {}", body.trim());
        }

        step("kubectl (a cache agent now) with the cloud gone");
        self.kubectl(&kubeconfig, &["get", "pods", "--request-timeout=10s"])?;
        self.kubectl(&kubeconfig, &["get", "nodes", "--request-timeout=10s"])?;
        match http_request(
            PROXY,
            "DELETE",
            "/api/v1/namespaces/default/pods/seed-0",
            "kubectl/v1.34.0",
        ) {
            Ok((status, body)) => println!(
                "refused: DELETE pod default/seed-0 -> {status}: {} (only the cloud deletes; the hub never removes what it cannot confirm)",
                status_message(&body)
            ),
            Err(e) => println!("DELETE pod default/seed-0 failed: {e:#}"),
        }
        if let Some((stdin, lines)) = sandbox {
            self.finish_sandbox(stdin, &lines)?;
        }
        step("stopping the hub and removing the demo's files");
        Ok(())
    }

    fn spawn(
        &mut self,
        name: &'static str,
        bin: &str,
        args: &[&str],
        stdin: Option<Stdio>,
    ) -> Result<()> {
        let log = self.dir.join(format!("{name}.log"));
        let out = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let path = self.bin_dir.join(bin);
        println!("$ {} {}", path.display(), args.join(" "));
        println!("  (log: {})", log.display());
        let child = Command::new(&path)
            .args(args)
            .stdin(stdin.unwrap_or_else(Stdio::null))
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", path.display()))?;
        self.procs.push(Proc { name, child });
        Ok(())
    }

    /// Polls `check` every 200 ms for at most `within`, failing early if a
    /// process of the demo exited or Ctrl-C arrived.
    fn wait_for(
        &mut self,
        what: &str,
        within: Duration,
        mut check: impl FnMut(&mut Self) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            self.signals.check()?;
            if check(self) {
                return Ok(());
            }
            for p in &mut self.procs {
                if let Ok(Some(status)) = p.child.try_wait() {
                    bail!(
                        "{} exited ({status}) while waiting for {what}; see {}/{}.log",
                        p.name,
                        self.dir.display(),
                        p.name
                    );
                }
            }
            if Instant::now() >= deadline {
                bail!("timed out after {within:?} waiting for {what}");
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn kubectl(&mut self, kubeconfig: &Path, args: &[&str]) -> Result<()> {
        self.signals.check()?;
        let mut full = vec![
            "--kubeconfig",
            kubeconfig.to_str().context("kubeconfig path is UTF-8")?,
        ];
        full.extend_from_slice(args);
        if !args.iter().any(|a| a.starts_with("--request-timeout")) {
            full.push("--request-timeout=20s");
        }
        println!("$ kubectl {}", full.join(" "));
        let out = Command::new("kubectl")
            .args(&full)
            .stdin(Stdio::null())
            .output()
            .context("running kubectl (install it: it is the client this demo shows)")?;
        indent(&String::from_utf8_lossy(&out.stdout), "  ");
        indent(&String::from_utf8_lossy(&out.stderr), "  ");
        if !out.status.success() {
            println!("  (kubectl exited with {})", out.status);
        }
        self.signals.check()
    }

    /// Starts demo-sandbox and forwards its output until it waits for the cut.
    fn start_sandbox(
        &mut self,
        api_port: u16,
        pki: &Path,
    ) -> Result<(std::process::ChildStdin, mpsc::Receiver<String>)> {
        let path = self.bin_dir.join("demo-sandbox");
        let hub = self.bin_dir.join("yurthub");
        let work = self.dir.join("sandbox");
        let args = [
            format!("--hub-bin={}", hub.display()),
            format!("--server-port={api_port}"),
            format!("--pki-dir={}", pki.display()),
            format!("--node={NODE}"),
            format!("--work-dir={}", work.display()),
        ];
        println!("$ {} {}", path.display(), args.join(" "));
        let mut child = Command::new(&path)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", path.display()))?;
        let stdin = child.stdin.take().context("demo-sandbox stdin")?;
        let stdout = child.stdout.take().context("demo-sandbox stdout")?;
        self.procs.push(Proc {
            name: "demo-sandbox",
            child,
        });
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        self.forward(&rx, Some(SANDBOX_WAITING), Duration::from_secs(120))?;
        Ok((stdin, rx))
    }

    /// Lets the sandbox run its client once more (the cloud is gone now) and
    /// waits for it to clean up and exit.
    fn finish_sandbox(
        &mut self,
        mut stdin: std::process::ChildStdin,
        lines: &mpsc::Receiver<String>,
    ) -> Result<()> {
        step("the pod in the sandbox, with the cloud gone");
        let _ = writeln!(stdin);
        drop(stdin);
        self.forward(lines, None, Duration::from_secs(90))?;
        if let Some(p) = self.procs.iter_mut().find(|p| p.name == "demo-sandbox") {
            let status = p.child.wait()?;
            if !status.success() {
                bail!("demo-sandbox failed ({status})");
            }
        }
        Ok(())
    }

    /// Prints the sandbox's lines until `until` (or its end of output).
    fn forward(
        &mut self,
        lines: &mpsc::Receiver<String>,
        until: Option<&str>,
        within: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            self.signals.check()?;
            match lines.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    println!("  | {line}");
                    if until == Some(line.as_str()) {
                        return Ok(());
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return match until {
                        Some(_) => bail!("demo-sandbox ended early; see its output above"),
                        None => Ok(()),
                    };
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() >= deadline => {
                    bail!("demo-sandbox did not finish within {within:?}");
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// kubelet's pods, Node and Lease as the hub answers them, one line each;
    /// a refusal says what and why.
    fn kubelet_view(&mut self) {
        for (what, path) in kubelet_reads() {
            match http_request(PROXY, "GET", &path, KUBELET_UA) {
                Ok((200, body)) => println!("  {what}: {}", summarize(&body)),
                Ok((status, body)) => println!(
                    "  refused: kubelet's {what} -> {status}: {}",
                    status_message(&body)
                ),
                Err(e) => println!("  kubelet's {what}: no answer ({e:#})"),
            }
        }
    }

    /// SIGTERM and a bounded wait, for one process of the demo.
    fn stop_proc(&mut self, name: &str) {
        if let Some(i) = self.procs.iter().position(|p| p.name == name) {
            let mut p = self.procs.remove(i);
            let _ = kill(Pid::from_raw(p.child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while matches!(p.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
            let _ = p.child.kill();
            let _ = p.child.wait();
            println!("stopped {name} (SIGTERM)");
        }
    }

    /// SIGKILL: the cloud vanishes without a goodbye.
    fn kill(&mut self, name: &str) {
        // Forgotten once killed: later waits must not take its exit for a failure.
        if let Some(i) = self.procs.iter().position(|p| p.name == name) {
            let mut p = self.procs.remove(i);
            let _ = p.child.kill();
            let _ = p.child.wait();
            println!("killed {name} (pid {})", p.child.id());
        }
    }

    /// Stops every process (newest first) and removes the temp dir.
    fn cleanup(&mut self) {
        while let Some(mut p) = self.procs.pop() {
            if matches!(p.child.try_wait(), Ok(Some(_))) {
                continue;
            }
            let _ = kill(Pid::from_raw(p.child.id() as i32), Signal::SIGTERM);
            // The sandbox helper detaches programs and deletes namespaces.
            // The hubs give in-flight requests up to 15 s (their default).
            let limit = if p.name == "demo-sandbox" { 40 } else { 20 };
            let deadline = Instant::now() + Duration::from_secs(limit);
            let status = loop {
                match p.child.try_wait() {
                    Ok(Some(status)) => break status.to_string(),
                    Ok(None) if Instant::now() < deadline => {
                        thread::sleep(Duration::from_millis(100))
                    }
                    _ => {
                        let _ = p.child.kill();
                        let _ = p.child.wait();
                        break format!("killed after {limit} s");
                    }
                }
            };
            println!("stopped {} ({status})", p.name);
        }
        if self.keep {
            println!("kept {} (--keep)", self.dir.display());
        } else if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("could not remove {}: {e}", self.dir.display());
        } else {
            println!("removed {}", self.dir.display());
        }
    }
}

/// Why the sandbox part cannot run here, if it cannot.
fn sandbox_blocker(args: &Args) -> Option<String> {
    if args.no_sandbox {
        return Some("(--no-sandbox)".into());
    }
    match cmd::effective_uid() {
        Ok(0) => {}
        _ => {
            return Some(
                "it needs root (network namespaces, a cgroup, eBPF programs): rerun as `sudo -E cargo xtask demo`".into(),
            );
        }
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if !mountinfo.lines().any(|l| {
        l.split(" - ")
            .nth(1)
            .is_some_and(|t| t.starts_with("cgroup2 "))
    }) {
        return Some("no cgroup v2 hierarchy is mounted".into());
    }
    None
}

/// What kubelet reads after a restart: its pods, its Node, its Lease.
fn kubelet_reads() -> [(&'static str, String); 3] {
    [
        (
            "pods on this node",
            format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE}"),
        ),
        ("Node", format!("/api/v1/nodes/{NODE}")),
        (
            "Lease",
            format!("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{NODE}"),
        ),
    ]
}

/// One line about a pod list, a Node or a Lease.
fn summarize(body: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        return truncate(body, 120);
    };
    match v["kind"].as_str().unwrap_or_default() {
        "PodList" => {
            let pods: Vec<String> = v["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    format!(
                        "{} ({})",
                        p["metadata"]["name"].as_str().unwrap_or("?"),
                        p["status"]["phase"].as_str().unwrap_or("no status yet")
                    )
                })
                .collect();
            format!("{} pods: {}", pods.len(), pods.join(", "))
        }
        "Lease" => format!(
            "{} held by {}, renewed {}",
            v["metadata"]["name"].as_str().unwrap_or("?"),
            v["spec"]["holderIdentity"].as_str().unwrap_or("nobody"),
            v["spec"]["renewTime"].as_str().unwrap_or("never")
        ),
        kind => format!("{kind} {}", v["metadata"]["name"].as_str().unwrap_or("?")),
    }
}

/// The message of a Status body, or the body itself.
fn status_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| truncate(body.trim(), 200))
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// An HTTP/1.0 GET (no chunking, the server closes), 5 s bound.
fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    http_request(addr, "GET", path, "yurthub-demo")
}

/// An HTTP/1.0 request with a User-Agent (the hub tells components apart by it).
fn http_request(addr: &str, method: &str, path: &str, ua: &str) -> Result<(u16, String)> {
    let sock: SocketAddr = addr.parse()?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(2))
        .with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: {ua}\r\nAccept: application/json\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("read {addr}{path}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status line from {addr}{path}"))?;
    Ok((status, body.to_owned()))
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}
