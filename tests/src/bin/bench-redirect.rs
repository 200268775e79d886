//! `cargo xtask bench redirect`: what a pod pays to reach the hub, per
//! connection, inside a sandbox (needs root, cgroup v2 and bpffs; fails
//! loudly otherwise).
//!
//! The "node" network namespace holds a TCP server on the hub address
//! (169.254.2.1:10268) that writes one byte to every connection. A client
//! process in the "pod" namespace and a test cgroup opens connections one
//! after another and times connect() + first byte. Scenarios, in this order:
//! - (a) direct to the hub address, nothing installed;
//! - (b) to the VIP 10.96.0.1:443, rewritten by yurthub's cgroup/connect4
//!   program (`Redirect::install` on the test cgroup, heartbeating);
//! - (b1000) the same with 1,000 unrelated DNAT rules in the pod's nat
//!   OUTPUT path (they are traversed by every new connection, redirected or
//!   not, and they switch on conntrack in the namespace);
//! - (c1000) the redirect removed, the VIP DNATed to the hub address by an
//!   iptables rule placed after those 1,000 rules, as kube-proxy's
//!   KUBE-SERVICES chain orders them;
//! - (c) only the VIP's DNAT rule.
//!
//! The rules live in the pod namespace's nat table (OUTPUT, for a connect
//! made inside that namespace); everything is deleted with the namespaces.
//! The eBPF programs are attached to the test cgroup only, pinned under a
//! unique directory, and removed by `Redirect::shutdown`.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use clap::Parser;
use yurthub::redirect::{Config, Redirect};
use yurthub_e2e::sandbox::{
    BPFFS, NetSandbox, Side, TestCgroup, require_bpffs, require_cgroup2, require_root, run_in_child,
    unique_name,
};

#[derive(Debug, Parser)]
#[command(about = "Benchmark: eBPF connect redirect vs direct vs iptables DNAT, in a sandbox")]
struct Args {
    /// Measured seconds per scenario.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Connections per scenario before measuring.
    #[arg(long, default_value_t = 500)]
    warmup: usize,
    /// Unrelated DNAT rules for the (b1000)/(c1000) scenarios.
    #[arg(long, default_value_t = 1000)]
    rules: usize,
    /// Upper bound of measured connections per scenario.
    #[arg(long, default_value_t = 200_000)]
    max_connections: usize,
}

const HUB: Ipv4Addr = Ipv4Addr::new(169, 254, 2, 1);
const HUB_PORT: u16 = 10268;
const VIP: &str = "10.96.0.1:443";
const TARGET_B_VS_A: f64 = 1.05;

fn main() -> Result<()> {
    let args = Args::parse();
    // Each of these panics naming the missing prerequisite.
    require_root();
    require_cgroup2();
    require_bpffs();
    for tool in ["ip", "iptables-restore", "iptables"] {
        ensure!(
            Command::new(tool).arg("--version").output().is_ok(),
            "{tool} is not installed: run `cargo xtask setup`"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    // Declared so that they drop in reverse: pins, server, cgroup, namespaces.
    let net = NetSandbox::new(&[]);
    let cgroup = TestCgroup::new();
    let _server = OneByteServer::start(&net)?;
    let pins = PinDir(unique_name("yurthub-bench"));
    net.add_address(Side::Node, IpAddr::V4(HUB));

    let hub = SocketAddr::from((HUB, HUB_PORT));
    let vip: SocketAddr = VIP.parse()?;
    let bench = Bench { net: &net, cgroup: &cgroup, args: &args };
    println!(
        "bench-redirect: sequential connect()+first byte from a pod namespace/test cgroup, {} s per scenario after {} warm-up connections, kernel {}",
        args.seconds,
        args.warmup,
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()
    );

    let mut rows = Vec::new();
    rows.push(("(a) direct to hub address", bench.measure(hub)?));

    let mut cfg = Config::new(IpAddr::V4(HUB), HUB_PORT, vec![vip]);
    cfg.cgroup = Some(cgroup.path().to_owned());
    cfg.bpffs = PathBuf::from(BPFFS);
    cfg.pin_dir_name = pins.0.clone();
    let redirect = Arc::new(install(&net, &runtime, cfg)?);
    let beat = Heartbeat::start(&redirect)?;
    rows.push(("(b) VIP via eBPF redirect", bench.measure(vip)?));
    rows.push(("(a') hub address, eBPF attached", bench.measure(hub)?));

    iptables_restore(&net, &dnat_rules(args.rules, false))?;
    rows.push((
        leak(format!("(b{}) VIP via eBPF, {} rules", args.rules, args.rules)),
        bench.measure(vip)?,
    ));
    let redirected = redirect
        .status()
        .vips
        .iter()
        .find(|v| v.vip == vip)
        .map_or(0, |v| v.redirected);
    drop(beat);
    let redirect = Arc::try_unwrap(redirect).map_err(|_| anyhow::anyhow!("redirect still shared"))?;
    runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), redirect.shutdown()).await })
        .context("redirect shutdown within 10 s")?
        .context("redirect shutdown")?;
    // Shutdown removes the hub address it ensured; the DNAT runs need it.
    if !net.has_address(Side::Node, IpAddr::V4(HUB)) {
        net.add_address(Side::Node, IpAddr::V4(HUB));
    }

    iptables_restore(&net, &dnat_rules(args.rules, true))?;
    rows.push((
        leak(format!("(c{}) VIP via DNAT, {} rules", args.rules, args.rules)),
        bench.measure(vip)?,
    ));
    iptables_restore(&net, &dnat_rules(0, true))?;
    rows.push(("(c) VIP via DNAT, 1 rule", bench.measure(vip)?));

    print(&rows, redirected, args.rules);
    Ok(())
}

/// Leaks a label (a handful per run) to keep the rows' type simple.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

struct Bench<'a> {
    net: &'a NetSandbox,
    cgroup: &'a TestCgroup,
    args: &'a Args,
}

/// One scenario's figures.
struct Figures {
    latencies_ns: Vec<u64>,
    elapsed: Duration,
}

impl Figures {
    fn pct_us(&self, p: f64) -> f64 {
        let v = &self.latencies_ns;
        let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
        v[i] as f64 / 1e3
    }
    fn rate(&self) -> f64 {
        self.latencies_ns.len() as f64 / self.elapsed.as_secs_f64()
    }
}

impl Bench<'_> {
    /// Runs the client loop in a forked process in the test cgroup and the
    /// pod namespace (cgroup membership is per process).
    fn measure(&self, to: SocketAddr) -> Result<Figures> {
        let (warmup, seconds, max) = (self.args.warmup, self.args.seconds, self.args.max_connections);
        let out = run_in_child(
            Some(self.cgroup.path()),
            Some(&self.net.path(Side::Pod)),
            Duration::from_secs(seconds + 60),
            move || match client_loop(to, warmup, Duration::from_secs(seconds), max) {
                Ok(text) => text,
                Err(e) => format!("ERR {e:#}"),
            },
        );
        if let Some(err) = out.strip_prefix("ERR ") {
            bail!("client to {to}: {err}");
        }
        let mut lines = out.lines();
        let elapsed_ns: u64 = lines.next().context("child output")?.parse()?;
        let mut latencies_ns = lines.map(str::parse).collect::<Result<Vec<u64>, _>>()?;
        ensure!(!latencies_ns.is_empty(), "client to {to}: no connection measured");
        latencies_ns.sort_unstable();
        Ok(Figures { latencies_ns, elapsed: Duration::from_nanos(elapsed_ns) })
    }
}

/// In the child: warm-up, then connect + read one byte until the time or
/// count bound; returns "elapsed_ns\n" and one latency (ns) per line.
fn client_loop(to: SocketAddr, warmup: usize, measure: Duration, max: usize) -> Result<String> {
    let once = || -> Result<Duration> {
        let t0 = Instant::now();
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).with_context(|| format!("connect {to}"))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte).with_context(|| format!("first byte from {to}"))?;
        let took = t0.elapsed();
        ensure!(byte == *b"h", "{to} answered {byte:?}, not the hub's byte");
        // RST on close: no TIME_WAIT, so the loop never runs out of ports.
        socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO))?;
        Ok(took)
    };
    for _ in 0..warmup {
        once()?;
    }
    let start = Instant::now();
    let mut latencies = Vec::new();
    while start.elapsed() < measure && latencies.len() < max {
        latencies.push(once()?.as_nanos() as u64);
    }
    let elapsed = start.elapsed();
    let mut out = format!("{}\n", elapsed.as_nanos());
    for l in latencies {
        let _ = writeln!(out, "{l}");
    }
    Ok(out)
}

/// The hub stand-in: writes one byte per connection, then waits for the
/// client to close, on a small runtime in the node namespace.
struct OneByteServer {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl OneByteServer {
    fn start(net: &NetSandbox) -> Result<OneByteServer> {
        let ns = std::fs::File::open(net.path(Side::Node))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let stop = stop.clone();
            thread::spawn(move || {
                let run = || -> Result<()> {
                    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
                    // Built after setns: the runtime's threads live in the node namespace.
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                    rt.block_on(async {
                        // Any address of the node: the hub address comes and goes.
                        let listener = tokio::net::TcpListener::bind(("0.0.0.0", HUB_PORT)).await?;
                        let _ = ready_tx.send(Ok(()));
                        while !stop.load(Ordering::Relaxed) {
                            let Ok(Ok((mut s, _))) =
                                tokio::time::timeout(Duration::from_millis(100), listener.accept()).await
                            else {
                                continue;
                            };
                            tokio::spawn(async move {
                                use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                                let _ = s.set_nodelay(true);
                                if s.write_all(b"h").await.is_ok() {
                                    let mut sink = [0u8; 16];
                                    let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut sink)).await;
                                }
                            });
                        }
                        anyhow::Ok(())
                    })
                };
                if let Err(e) = run() {
                    let _ = ready_tx.send(Err(format!("{e:#}")));
                }
            })
        };
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(OneByteServer { stop, thread: Some(thread) }),
            Ok(Err(e)) => bail!("hub stand-in server: {e}"),
            Err(_) => bail!("hub stand-in server did not start within 5 s"),
        }
    }
}

impl Drop for OneByteServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Removes `<bpffs>/<name>` even on error paths (unpinning detaches).
struct PinDir(String);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(PathBuf::from(BPFFS).join(&self.0));
    }
}

fn install(net: &NetSandbox, runtime: &tokio::runtime::Runtime, cfg: Config) -> Result<Redirect> {
    let handle = runtime.handle().clone();
    net.in_thread(Side::Node, move || {
        handle.block_on(async { tokio::time::timeout(Duration::from_secs(30), Redirect::install(cfg)).await })
    })
    .context("Redirect::install within 30 s")?
    .map_err(|e| anyhow::anyhow!("Redirect::install: {}", chain(&e)))
}

fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let _ = write!(text, ": {e}");
        source = e.source();
    }
    text
}

/// Heartbeats every 100 ms, like the daemon's serving path, until dropped.
struct Heartbeat {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Heartbeat {
    fn start(redirect: &Arc<Redirect>) -> Result<Heartbeat> {
        redirect.heartbeat().map_err(|e| anyhow::anyhow!("heartbeat: {}", chain(&e)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, redirect) = (stop.clone(), redirect.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = redirect.heartbeat();
                    thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Ok(Heartbeat { stop, thread: Some(thread) })
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An iptables-restore input replacing the nat table: a services chain
/// jumped to from OUTPUT holding `unrelated` DNAT rules for other ClusterIPs
/// (10.97.x.y:443 to documentation addresses), then, if `vip`, the VIP's.
fn dnat_rules(unrelated: usize, vip: bool) -> String {
    let mut r = String::from("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:BENCH-SERVICES - [0:0]\n");
    r.push_str("-A OUTPUT -j BENCH-SERVICES\n");
    for i in 0..unrelated {
        let _ = writeln!(
            r,
            "-A BENCH-SERVICES -d 10.97.{}.{}/32 -p tcp -m tcp --dport 443 -j DNAT --to-destination 192.0.2.{}:8443",
            i / 250,
            i % 250 + 1,
            i % 200 + 10
        );
    }
    if vip {
        let _ = writeln!(
            r,
            "-A BENCH-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j DNAT --to-destination {HUB}:{HUB_PORT}"
        );
    }
    r.push_str("COMMIT\n");
    r
}

/// Loads rules into the pod namespace's nat table (only there).
fn iptables_restore(net: &NetSandbox, rules: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", net.name(Side::Pod), "iptables-restore"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("run iptables-restore in the pod namespace")?;
    child.stdin.take().context("stdin")?.write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "iptables-restore in {} failed: {}",
        net.name(Side::Pod),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn print(rows: &[(&str, Figures)], redirected: u64, rules: usize) {
    println!();
    println!("{:<36} {:>9} {:>9} {:>10} {:>8}", "scenario", "p50 µs", "p99 µs", "conns/s", "count");
    for (name, f) in rows {
        println!(
            "{:<36} {:>9.1} {:>9.1} {:>10.0} {:>8}",
            name,
            f.pct_us(0.5),
            f.pct_us(0.99),
            f.rate(),
            f.latencies_ns.len()
        );
    }
    println!("eBPF redirect counter for {VIP}: {redirected} connections");
    let get = |prefix: &str| rows.iter().find(|(n, _)| n.starts_with(prefix)).map(|(_, f)| f);
    let (Some(a), Some(b), Some(b_n), Some(c), Some(c_n)) = (
        get("(a)"),
        get("(b)"),
        get(&format!("(b{rules})")),
        get("(c)"),
        get(&format!("(c{rules})")),
    ) else {
        return;
    };
    let ratio = |x: &Figures, y: &Figures| x.pct_us(0.5) / y.pct_us(0.5);
    println!();
    println!("ratios of p50 latency (conns/s ratio in brackets):");
    let line = |what: &str, x: &Figures, y: &Figures| {
        println!("  {what:<44} x{:.3}  [x{:.3}]", ratio(x, y), x.rate() / y.rate());
    };
    line("(b) eBPF / (a) direct", b, a);
    line("(b) eBPF / (c) DNAT, 1 rule", b, c);
    line(&format!("(b{rules}) eBPF / (c{rules}) DNAT"), b_n, c_n);
    line(&format!("(c{rules}) / (c) DNAT: {rules} rules vs 1"), c_n, c);
    line(&format!("(b{rules}) / (b) eBPF: {rules} rules vs 0"), b_n, b);
    println!();
    println!("targets (issue 4):");
    let verdict = |ok: bool, what: String| println!("  {} {what}", if ok { "met   " } else { "MISSED" });
    verdict(ratio(b, a) <= TARGET_B_VS_A, format!("(b) within 5% of (a): x{:.3}", ratio(b, a)));
    verdict(ratio(b, c) < 1.0, format!("(b) faster than (c): x{:.3}", ratio(b, c)));
    verdict(
        ratio(b_n, c_n) < 1.0,
        format!("(b) faster than (c) with {rules} rules: x{:.3}", ratio(b_n, c_n)),
    );
    verdict(
        ratio(b_n, b) < ratio(c_n, c),
        format!(
            "(b) flatter than (c) as rules grow: eBPF x{:.3} vs DNAT x{:.3}",
            ratio(b_n, b),
            ratio(c_n, c)
        ),
    );
    println!(
        "note: the {rules} rules sit in the pod namespace's nat OUTPUT path, which every new connection \
         traverses (and they turn on conntrack there), redirected or not; (b) vs (b{rules}) shows that cost."
    );
}
