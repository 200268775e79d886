//! `cargo xtask bench redirect`: what a pod pays to reach the hub, per
//! connection, inside a sandbox (needs root, cgroup v2 and bpffs; fails
//! loudly otherwise).
//!
//! The "node" network namespace holds a TCP server on the hub address
//! (169.254.2.1:10268) that writes one byte to every connection. Client
//! processes in the "pod" namespace open connections one after another and
//! time connect() + first byte:
//! - (a) direct to the hub address, from a cgroup with no program attached;
//! - (b) to the VIP 10.96.0.1:443, from a sibling cgroup where yurthub's
//!   cgroup/connect4 program rewrites it (`Redirect::install` on that cgroup
//!   only, heartbeating);
//! - (c) to the VIP from the program-free cgroup, DNATed to the hub address
//!   by an iptables rule in the pod namespace's nat OUTPUT chain (where a
//!   rule applies to a connect made inside that namespace).
//!
//! Four states of the pod's nat table, in order: none (no conntrack; (c)
//! cannot run); the VIP rule alone; the VIP rule after 1,000 unrelated
//! DNAT rules in a services chain jumped to from OUTPUT for every
//! connection — the way kube-proxy's KUBE-SERVICES is reached, so every new
//! connection walks them, redirected or not; and the same chain jumped to
//! only for the service range 10.96.0.0/12, which the redirected connection
//! (to the hub address) no longer enters. Within a state the scenarios alternate for several rounds and
//! their figures are pooled, so noise from the rest of the machine lands on
//! all of them alike.
//!
//! Everything is deleted with the namespaces and the cgroups; the programs
//! are pinned under a unique directory and removed by `Redirect::shutdown`.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use clap::Parser;
use yurthub::redirect::{Config, Redirect};
use yurthub_e2e::sandbox::{
    BPFFS, NetSandbox, Side, TestCgroup, require_bpffs, require_cgroup2, require_root,
    run_in_child, unique_name,
};

#[derive(Debug, Parser)]
#[command(about = "Benchmark: eBPF connect redirect vs direct vs iptables DNAT, in a sandbox")]
struct Args {
    /// Measured seconds per scenario and round.
    #[arg(long, default_value_t = 1)]
    seconds: u64,
    /// Rounds; the scenarios of a state alternate within each round.
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// Connections before measuring, per run.
    #[arg(long, default_value_t = 200)]
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
    ensure!(
        args.rounds > 0 && args.seconds > 0,
        "--rounds and --seconds must be > 0"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    // Declared so that they drop in reverse: pins, server, cgroups, namespaces.
    let net = NetSandbox::new(&[]);
    let mut cgroup = TestCgroup::new();
    // Siblings: the programs are attached to one only, so the baseline and
    // DNAT clients run with no program in their path at all.
    let ebpf_cgroup = cgroup.child("ebpf");
    let plain_cgroup = cgroup.child("plain");
    let _server = OneByteServer::start(&net)?;
    let pins = PinDir(unique_name("yurthub-bench"));
    net.add_address(Side::Node, IpAddr::V4(HUB));

    let hub = SocketAddr::from((HUB, HUB_PORT));
    let vip: SocketAddr = VIP.parse()?;
    let mut cfg = Config::new(IpAddr::V4(HUB), HUB_PORT, vec![vip]);
    cfg.cgroup = Some(ebpf_cgroup.clone());
    cfg.bpffs = PathBuf::from(BPFFS);
    cfg.pin_dir_name = pins.0.clone();
    let redirect = Arc::new(install(&net, &runtime, cfg)?);
    let beat = Heartbeat::start(&redirect)?;

    println!(
        "bench-redirect: sequential connect()+first byte from the pod namespace, {} round(s) of {} s per scenario \
         (scenarios interleaved per round, figures pooled), {} warm-up connections per run, kernel {}, load average {}",
        args.rounds,
        args.seconds,
        args.warmup,
        read_trimmed("/proc/sys/kernel/osrelease"),
        read_trimmed("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let bench = Bench {
        net: &net,
        args: &args,
    };
    let direct = Scenario {
        name: "(a) direct to hub address",
        cgroup: &plain_cgroup,
        to: hub,
    };
    let ebpf = Scenario {
        name: "(b) VIP via eBPF redirect",
        cgroup: &ebpf_cgroup,
        to: vip,
    };
    let dnat = Scenario {
        name: "(c) VIP via iptables DNAT",
        cgroup: &plain_cgroup,
        to: vip,
    };

    // No nat table at all (no conntrack) — only (a) and (b) can run.
    let none = bench.state(&[&direct, &ebpf])?;
    iptables_restore(&net, &dnat_rules(0, false))?;
    let one = bench.state(&[&direct, &ebpf, &dnat])?;
    iptables_restore(&net, &dnat_rules(args.rules, false))?;
    let many = bench.state(&[&direct, &ebpf, &dnat])?;
    // The same rules reached only by service-range destinations: the
    // redirected connection (to the hub address) no longer walks them.
    iptables_restore(&net, &dnat_rules(args.rules, true))?;
    let scoped = bench.state(&[&direct, &ebpf, &dnat])?;

    let redirected = redirect
        .status()
        .vips
        .iter()
        .find(|v| v.vip == vip)
        .map_or(0, |v| v.redirected);
    drop(beat);
    let redirect =
        Arc::try_unwrap(redirect).map_err(|_| anyhow::anyhow!("redirect still shared"))?;
    runtime
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(10), redirect.shutdown()).await
        })
        .context("redirect shutdown within 10 s")?
        .context("redirect shutdown")?;

    print(&[&none, &one, &many, &scoped], redirected, args.rules);
    Ok(())
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_owned()
}

struct Bench<'a> {
    net: &'a NetSandbox,
    args: &'a Args,
}

/// Who connects where: a client in `cgroup` (and the pod namespace) to `to`.
struct Scenario<'a> {
    name: &'static str,
    cgroup: &'a Path,
    to: SocketAddr,
}

/// One scenario's figures, pooled over rounds.
#[derive(Default)]
struct Figures {
    latencies_ns: Vec<u64>,
    elapsed: Duration,
}

impl Figures {
    fn pct_us(&self, p: f64) -> f64 {
        let v = &self.latencies_ns;
        if v.is_empty() {
            return f64::NAN;
        }
        let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
        v[i] as f64 / 1e3
    }
    fn p50(&self) -> f64 {
        self.pct_us(0.5)
    }
    fn rate(&self) -> f64 {
        self.latencies_ns.len() as f64 / self.elapsed.as_secs_f64()
    }
}

impl Bench<'_> {
    /// Runs every scenario once per round, interleaved, so that noise from
    /// the rest of the machine lands on all of them alike.
    fn state(&self, scenarios: &[&Scenario<'_>]) -> Result<Vec<(&'static str, Figures)>> {
        let mut figures: Vec<(&'static str, Figures)> = scenarios
            .iter()
            .map(|s| (s.name, Figures::default()))
            .collect();
        for _ in 0..self.args.rounds {
            for (s, (_, f)) in scenarios.iter().zip(figures.iter_mut()) {
                let (latencies, elapsed) = self.measure(s)?;
                f.latencies_ns.extend(latencies);
                f.elapsed += elapsed;
            }
        }
        for (_, f) in &mut figures {
            f.latencies_ns.sort_unstable();
        }
        Ok(figures)
    }

    /// Runs the client loop in a forked process in the scenario's cgroup and
    /// the pod namespace (cgroup membership is per process).
    fn measure(&self, s: &Scenario<'_>) -> Result<(Vec<u64>, Duration)> {
        let (warmup, seconds, max, to) = (
            self.args.warmup,
            self.args.seconds,
            self.args.max_connections,
            s.to,
        );
        let out = run_in_child(
            Some(s.cgroup),
            Some(&self.net.path(Side::Pod)),
            Duration::from_secs(seconds + 60),
            move || match client_loop(to, warmup, Duration::from_secs(seconds), max) {
                Ok(text) => text,
                Err(e) => format!("ERR {e:#}"),
            },
        );
        if let Some(err) = out.strip_prefix("ERR ") {
            bail!("{}: {err}", s.name);
        }
        let mut lines = out.lines();
        let elapsed_ns: u64 = lines.next().context("child output")?.parse()?;
        let latencies = lines.map(str::parse).collect::<Result<Vec<u64>, _>>()?;
        ensure!(!latencies.is_empty(), "{}: no connection measured", s.name);
        Ok((latencies, Duration::from_nanos(elapsed_ns)))
    }
}

/// In the child: warm-up, then connect + read one byte until the time or
/// count bound; returns "elapsed_ns\n" and one latency (ns) per line.
fn client_loop(to: SocketAddr, warmup: usize, measure: Duration, max: usize) -> Result<String> {
    let once = || -> Result<Duration> {
        let t0 = Instant::now();
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))
            .with_context(|| format!("connect {to}"))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte)
            .with_context(|| format!("first byte from {to}"))?;
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
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    rt.block_on(async {
                        // Any address of the node: the hub address comes and goes.
                        let listener = tokio::net::TcpListener::bind(("0.0.0.0", HUB_PORT)).await?;
                        let _ = ready_tx.send(Ok(()));
                        while !stop.load(Ordering::Relaxed) {
                            let Ok(Ok((mut s, _))) =
                                tokio::time::timeout(Duration::from_millis(100), listener.accept())
                                    .await
                            else {
                                continue;
                            };
                            tokio::spawn(async move {
                                use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                                let _ = s.set_nodelay(true);
                                if s.write_all(b"h").await.is_ok() {
                                    let mut sink = [0u8; 16];
                                    let _ = tokio::time::timeout(
                                        Duration::from_secs(5),
                                        s.read(&mut sink),
                                    )
                                    .await;
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
            Ok(Ok(())) => Ok(OneByteServer {
                stop,
                thread: Some(thread),
            }),
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
        handle.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), Redirect::install(cfg)).await
        })
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
        redirect
            .heartbeat()
            .map_err(|e| anyhow::anyhow!("heartbeat: {}", chain(&e)))?;
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
        Ok(Heartbeat {
            stop,
            thread: Some(thread),
        })
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
/// holding `unrelated` DNAT rules for other ClusterIPs (10.97.x.y:443 to
/// documentation addresses), then the VIP's, jumped to from OUTPUT for every
/// connection or, with `scoped`, only for the service range 10.96.0.0/12.
fn dnat_rules(unrelated: usize, scoped: bool) -> String {
    let mut r = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:BENCH-SERVICES - [0:0]\n",
    );
    r.push_str(if scoped {
        "-A OUTPUT -d 10.96.0.0/12 -j BENCH-SERVICES\n"
    } else {
        "-A OUTPUT -j BENCH-SERVICES\n"
    });
    for i in 0..unrelated {
        let _ = writeln!(
            r,
            "-A BENCH-SERVICES -d 10.97.{}.{}/32 -p tcp -m tcp --dport 443 -j DNAT --to-destination 192.0.2.{}:8443",
            i / 250,
            i % 250 + 1,
            i % 200 + 10
        );
    }
    let _ = writeln!(
        r,
        "-A BENCH-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j DNAT --to-destination {HUB}:{HUB_PORT}"
    );
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
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "iptables-restore in {} failed: {}",
        net.name(Side::Pod),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

type State = Vec<(&'static str, Figures)>;

/// Prints the four states (none, one rule, many rules, many rules scoped).
fn print<'a>(states: &[&'a State; 4], redirected: u64, rules: usize) {
    let [none, one, many, scoped] = *states;
    println!();
    println!(
        "{:<30} {:<34} {:>9} {:>9} {:>10} {:>8}",
        "pod nat table", "scenario", "p50 µs", "p99 µs", "conns/s", "count"
    );
    let labels = [
        "none (no conntrack)".to_owned(),
        "VIP DNAT rule only".to_owned(),
        format!("{rules} other rules + VIP"),
        format!("{rules} rules, jump for 10.96/12"),
    ];
    for (state, rows) in labels.iter().zip(states) {
        for (name, f) in rows.iter() {
            println!(
                "{:<30} {:<34} {:>9.1} {:>9.1} {:>10.0} {:>8}",
                state,
                name,
                f.p50(),
                f.pct_us(0.99),
                f.rate(),
                f.latencies_ns.len()
            );
        }
    }
    println!("eBPF redirect counter for {VIP}: {redirected} connections");
    let pick = |rows: &'a State, prefix: &str| -> Option<&'a Figures> {
        rows.iter()
            .find(|(n, _)| n.starts_with(prefix))
            .map(|(_, f)| f)
    };
    let (
        Some(a0),
        Some(b0),
        Some(a1),
        Some(b1),
        Some(c1),
        Some(an),
        Some(bn),
        Some(cn),
        Some(bs),
        Some(cs),
    ) = (
        pick(none, "(a)"),
        pick(none, "(b)"),
        pick(one, "(a)"),
        pick(one, "(b)"),
        pick(one, "(c)"),
        pick(many, "(a)"),
        pick(many, "(b)"),
        pick(many, "(c)"),
        pick(scoped, "(b)"),
        pick(scoped, "(c)"),
    )
    else {
        return;
    };
    let lat = |x: &Figures, y: &Figures| x.p50() / y.p50();
    let rate = |x: &Figures, y: &Figures| x.rate() / y.rate();
    println!();
    println!("{:<52} {:>10} {:>10}", "ratios", "p50", "conns/s");
    let line = |what: String, x: &Figures, y: &Figures| {
        println!(
            "  {what:<50} {:>10} {:>10}",
            format!("x{:.3}", lat(x, y)),
            format!("x{:.3}", rate(x, y))
        );
    };
    line("(b) eBPF / (a) direct, no nat table".into(), b0, a0);
    line(
        "(b) eBPF / (a) direct, VIP DNAT rule present".into(),
        b1,
        a1,
    );
    line("(b) eBPF / (c) DNAT, 1 rule".into(), b1, c1);
    line(format!("(b) eBPF / (c) DNAT, {rules} other rules"), bn, cn);
    line(format!("(c) DNAT: {rules} other rules / 1 rule"), cn, c1);
    line(format!("(b) eBPF: {rules} other rules / 1 rule"), bn, b1);
    line(format!("(a) direct: {rules} other rules / 1 rule"), an, a1);
    line(
        format!("(c) DNAT: {rules} rules for 10.96/12 only / 1 rule"),
        cs,
        c1,
    );
    line(
        format!("(b) eBPF: {rules} rules for 10.96/12 only / 1 rule"),
        bs,
        b1,
    );
    println!();
    println!("targets (issue 4):");
    let verdict =
        |ok: bool, what: String| println!("  {} {what}", if ok { "met   " } else { "MISSED" });
    verdict(
        lat(b0, a0) <= TARGET_B_VS_A,
        format!("(b) p50 within 5% of (a): x{:.3}", lat(b0, a0)),
    );
    verdict(
        rate(b0, a0) >= 1.0 / TARGET_B_VS_A,
        format!("(b) conns/s within 5% of (a): x{:.3}", rate(b0, a0)),
    );
    verdict(
        lat(b1, c1) < 1.0,
        format!("(b) p50 below (c): x{:.3}", lat(b1, c1)),
    );
    verdict(
        rate(b1, c1) > 1.0,
        format!("(b) conns/s above (c): x{:.3}", rate(b1, c1)),
    );
    verdict(
        lat(bn, cn) < 1.0,
        format!(
            "(b) p50 below (c) with {rules} other rules: x{:.3}",
            lat(bn, cn)
        ),
    );
    verdict(
        lat(bn, b1) < lat(cn, c1),
        format!(
            "(b) flatter than (c) as rules grow, rules on every connection's path (p50): eBPF x{:.3} vs DNAT x{:.3}",
            lat(bn, b1),
            lat(cn, c1)
        ),
    );
    verdict(
        lat(bs, b1) < lat(cs, c1),
        format!(
            "(b) flatter than (c) as rules grow, rules only for the service range (p50): eBPF x{:.3} vs DNAT x{:.3}",
            lat(bs, b1),
            lat(cs, c1)
        ),
    );
    println!(
        "note: the rules sit in the pod namespace's nat OUTPUT path, which every new connection traverses \
         (redirected or not, as with kube-proxy's KUBE-SERVICES jump) unless the jump is scoped to the service range; \
         the (a) rows show what the rules cost any connection."
    );
}
