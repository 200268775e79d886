//! `cargo xtask bench pool`: pool-scoped sharing through a leader hub.
//!
//! One leader hub (the release `yurthub-under-test` process) and 20
//! follower hubs (in-process), each on its own 127.0.9.x node IP and root
//! dir, in front of the apiserver double through a byte-counting TCP relay
//! (what the apiserver sends, TLS included). Each follower has a kube-proxy
//! watcher of endpointslices. A burst of 1,000 Services and 1,000
//! EndpointSlices × 50 endpoints is created; then the leader is killed
//! (SIGKILL) and one more slice is created.
//!
//! Reported, against a baseline measured in the same run (the same leader
//! alone, same burst, fresh relay): upstream watches of services and
//! endpointslices at the double (target: 1 each per pool), bytes the
//! apiserver sent during the burst (target: about one hub's, ≤ ×1.5 of the
//! baseline), delivery delays (below), and the time from the kill until
//! every follower's watcher got the next slice (target ≤ 5 s). Each target
//! is printed as met or MISSED.
//!
//! Delays are measured per EndpointSlice between instants this process
//! takes when a chunk arrives: the double's commit (its in-process create
//! returned), a watch on the double itself, a watch on the leader's
//! multiplexer listener (a pool member's certificate and a follower
//! cacher's user agent: what the leader sends its followers), and each
//! follower's kube-proxy watcher. The target (p99 ≤ 50 ms "over the local
//! hop") is judged on the leader tap → follower watcher segment; commit →
//! follower watcher is reported beside it as end to end. CPU time of the
//! leader process, of this process (the double, the 20 in-process
//! followers, the watchers) and of the machine over the burst says whether
//! the cores were saturated.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use yurthub_e2e::apiserver::ApiServer;
use yurthub_e2e::hub::{Hub, for_each_line, free_port, get_request, plain_client, tls_stream};
use yurthub_e2e::pki::TestPki;
use yurthub_e2e::pool::{NodeFiles, create_node, leader_configmap};

const KUBE_PROXY: &str = "kube-proxy/v1.34.0 (linux/amd64) kubernetes/abcdef";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const POOL: &str = "bench";
/// The User-Agent of the bench's watch on the double.
const TAP_AGENT: &str = "bench-tap";

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 20)]
    followers: usize,
    /// Services, and as many EndpointSlices.
    #[arg(long, default_value_t = 1000)]
    services: usize,
    #[arg(long, default_value_t = 50)]
    endpoints: usize,
    /// Objects created per second.
    #[arg(long, default_value_t = 400)]
    rate: u64,
}

/// The leader's process, killed with the bench.
struct Leader(std::process::Child);

impl Drop for Leader {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TCP relay counting the bytes the server sends.
async fn relay(target: SocketAddr) -> Result<(SocketAddr, Arc<AtomicU64>)> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let down = Arc::new(AtomicU64::new(0));
    let d = down.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = l.accept().await {
            let d = d.clone();
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(target).await else {
                    return;
                };
                // As the hub and the double do: the relay is not to add
                // Nagle's wait for a delayed ACK (40 ms) to a small write.
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (mut cr, mut cw) = client.split();
                let (mut sr, mut sw) = server.split();
                let up = tokio::io::copy(&mut cr, &mut sw);
                let down = async {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        d.fetch_add(n as u64, Ordering::Relaxed);
                        if cw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                tokio::select! { _ = up => {}, _ = down => {} }
            });
        }
    });
    Ok((addr, down))
}

fn service(i: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{i:05}"), "namespace": "default"},
        "spec": {"ports": [{"port": 80}]}})
}

fn slice(i: usize, endpoints: usize) -> Value {
    let eps: Vec<Value> = (0..endpoints)
        .map(|e| {
            json!({"addresses": [format!("10.{}.{}.{}", i / 250, i % 250, e + 1)],
            "conditions": {"ready": true}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("svc-{i:05}-abc"), "namespace": "default",
            "labels": {"kubernetes.io/service-name": format!("svc-{i:05}")}},
        "addressType": "IPv4", "endpoints": eps,
        "ports": [{"port": 80, "protocol": "TCP"}]})
}

async fn leader_ready(hub_server: &str) -> bool {
    let req = get_request(&format!("{hub_server}/v1/pool"), "bench", &[]);
    let Ok(Ok(resp)) =
        tokio::time::timeout(Duration::from_secs(2), plain_client().request(req)).await
    else {
        return false;
    };
    let Ok(b) = resp.into_body().collect().await else {
        return false;
    };
    serde_json::from_slice::<Value>(&b.to_bytes()).is_ok_and(|v| v["role"] == "leader")
}

/// Where a delivery was observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Tap {
    /// A watch on the double itself: the apiserver's own delivery.
    Double,
    /// A watch on the leader's multiplexer listener, as a follower's cacher
    /// opens it: when the leader sends an event to its followers.
    Leader,
    /// Follower `i`'s kube-proxy watcher.
    Follower(usize),
}

type Deliveries = tokio::sync::mpsc::UnboundedSender<(Tap, String, Instant)>;

/// Just what the bench reads of a watch event (the rest is skipped, not
/// built into a tree, so the observer costs little).
#[derive(serde::Deserialize)]
struct EventHead<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    object: ObjectHead<'a>,
}

#[derive(serde::Deserialize)]
struct ObjectHead<'a> {
    #[serde(borrow)]
    metadata: MetaHead<'a>,
}

#[derive(serde::Deserialize)]
struct MetaHead<'a> {
    #[serde(borrow, default)]
    name: Option<std::borrow::Cow<'a, str>>,
}

/// Reads a JSON watch stream, reporting each ADDED object's name with the
/// instant its last byte arrived.
fn read_events(
    resp: http::Response<hyper::body::Incoming>,
    tap: Tap,
    tx: Deliveries,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(for_each_line(resp.into_body(), move |line, at| {
        if let Ok(ev) = serde_json::from_slice::<EventHead>(line)
            && ev.kind == "ADDED"
            && let Some(n) = ev.object.metadata.name
        {
            let _ = tx.send((tap, n.into_owned(), at));
        }
    }))
}

/// A kube-proxy watcher of endpointslices through a follower.
async fn watcher(hub: &Hub, id: usize, tx: Deliveries) -> Result<tokio::task::JoinHandle<()>> {
    let url = format!("{}{SLICES}?watch=true", hub.proxy_url());
    let client = plain_client();
    for _ in 0..100 {
        let resp = tokio::time::timeout(
            Duration::from_secs(10),
            client.request(get_request(&url, KUBE_PROXY, &[])),
        )
        .await
        .context("watch answered")??;
        if !resp.status().is_success() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        return Ok(read_events(resp, Tap::Follower(id), tx));
    }
    bail!("follower {id} never served the watch")
}

/// A watch of endpointslices over TLS with a node's client certificate:
/// on the double (`Tap::Double`) or on the leader's multiplexer listener
/// (`Tap::Leader`, with the user agent a follower's cacher sends).
async fn tls_tap(
    addr: SocketAddr,
    ca: &str,
    node: &NodeFiles,
    user_agent: &str,
    tap: Tap,
    tx: Deliveries,
) -> Result<tokio::task::JoinHandle<()>> {
    let url = format!("https://{addr}{SLICES}?watch=true");
    for _ in 0..100 {
        let resp = tls_stream(
            addr,
            "kubernetes",
            ca,
            Some((&node.client_cert, &node.client_key)),
            get_request(&url, user_agent, &[]),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{tap:?} tap: {e}"))?;
        if !resp.status().is_success() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        return Ok(read_events(resp, tap, tx));
    }
    bail!("the {tap:?} tap was never served")
}

/// CPU time (user + system) of a process so far ("self": this one).
fn cpu_time(pid: &str) -> Duration {
    let pid = if pid == "self" {
        std::process::id()
    } else {
        // Never 0: the clock of pid 0 is this process's own.
        match pid.parse() {
            Ok(p) if p > 0 => p,
            _ => return Duration::ZERO,
        }
    };
    yurthub_e2e::cpu::process_cpu(pid).unwrap_or_default()
}

/// Busy and total CPU time of the whole machine so far (all cores).
fn machine_time() -> (Duration, Duration) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    // idle and iowait.
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let d = |t: u64| Duration::from_secs_f64(t as f64 / hz);
    (d(total - idle), d(total))
}

/// CPU used while the burst was delivered.
struct CpuUse {
    wall: Duration,
    leader: Duration,
    /// This process: the double, the followers (in-process), the watchers.
    bench: Duration,
    machine_busy: Duration,
    machine_total: Duration,
}

/// Delay segments of one run, each sorted.
#[derive(Default)]
struct Segments {
    /// The double's commit (its create returned) to the double tap.
    apiserver: Vec<Duration>,
    /// Commit to the leader tap: relay, the leader's proxy and cacher, its
    /// multiplexer listener.
    to_leader: Vec<Duration>,
    /// The local hop: the leader tap to each follower's watcher (the
    /// follower's proxy and cacher, its multiplexer, its proxy again).
    local_hop: Vec<Duration>,
    /// Deliveries the follower had before the leader tap did (the two
    /// streams leave the leader independently); counted as 0 in `local_hop`.
    hop_negative: usize,
    /// Commit to each follower's watcher.
    end_to_end: Vec<Duration>,
}

struct Outcome {
    burst_bytes: u64,
    service_watches: usize,
    slice_watches: usize,
    segments: Segments,
    cpu: CpuUse,
    failover: Option<Duration>,
}

/// Watches the hubs opened at the double (the bench's own tap is not one).
fn watches(api: &ApiServer, path: &str) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.path == path && r.query.contains("watch=true"))
        .filter(|r| r.user_agent.as_deref() != Some(TAP_AGENT))
        .count()
}

async fn run(args: &Args, followers: usize) -> Result<Outcome> {
    let pki = Arc::new(TestPki::new().context("pki")?);
    let api = ApiServer::builder()
        .pki(pki.clone())
        .bookmark_interval(Duration::from_secs(5))
        .start()
        .await
        .context("double")?;
    let (relay_addr, down) = relay(api.addr()).await?;
    let servers = [format!("https://{relay_addr}")];
    let port = free_port();
    let ip = |i: usize| -> IpAddr { format!("127.0.9.{}", i + 1).parse().unwrap() };
    let lead = NodeFiles::new(&pki, "lead", ip(0));
    create_node(&api, "lead", lead.ip, POOL);
    let files: Vec<NodeFiles> = (1..=followers)
        .map(|i| NodeFiles::new(&pki, &format!("follow{i}"), ip(i)))
        .collect();
    for f in &files {
        create_node(&api, &f.name, f.ip, POOL);
    }
    api.create(leader_configmap(POOL, &[("lead", lead.ip)], true))
        .map_err(|e| anyhow::anyhow!("configmap: {e:?}"))?;

    let lead_args = lead.args(&servers, port, &[]);
    let hub_server = lead_args
        .iter()
        .find_map(|a| a.strip_prefix("--serve-port="))
        .map(|p| format!("http://127.0.0.1:{p}"))
        .context("serve port")?;
    let mut leader = Leader(
        std::process::Command::new(yurthub_e2e::hub::hub_binary())
            .args(&lead_args[1..])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("spawn the leader")?,
    );
    let t = Instant::now();
    while !leader_ready(&hub_server).await {
        if t.elapsed() > Duration::from_secs(30) {
            bail!("the leader did not start");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut hubs = Vec::new();
    for f in &files {
        hubs.push(Hub::start(&f.args(&servers, port, &[])).await);
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for (i, h) in hubs.iter().enumerate() {
        tasks.push(watcher(h, i, tx.clone()).await?);
    }
    // The taps: the double directly (as the leader's node; no relay, so its
    // bytes are not counted), and the leader's listener as a follower's
    // cacher would watch it (a pool member's certificate; one more stream
    // for the leader to serve, like a 21st follower).
    let tap_node = files.first().unwrap_or(&lead);
    tasks.push(
        tls_tap(
            api.addr(),
            pki.ca_pem(),
            &lead,
            TAP_AGENT,
            Tap::Double,
            tx.clone(),
        )
        .await?,
    );
    tasks.push(
        tls_tap(
            SocketAddr::new(lead.ip, port),
            pki.ca_pem(),
            tap_node,
            &format!("multiplexer-proxy-{}", tap_node.name),
            Tap::Leader,
            tx.clone(),
        )
        .await?,
    );
    drop(tx);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut created: HashMap<String, Instant> = HashMap::new();
    let before = down.load(Ordering::Relaxed);
    let leader_pid = leader.0.id().to_string();
    let (cpu_leader0, cpu_bench0) = (cpu_time(&leader_pid), cpu_time("self"));
    let (busy0, total0) = machine_time();
    let burst_start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let mut tick = tokio::time::interval(interval);
    for i in 0..args.services {
        tick.tick().await;
        api.create(service(i))
            .map_err(|e| anyhow::anyhow!("create: {e:?}"))?;
        tick.tick().await;
        let s = slice(i, args.endpoints);
        let name = s["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        api.create(s)
            .map_err(|e| anyhow::anyhow!("create: {e:?}"))?;
        // The commit: the double's watchers are woken from here (they run
        // once this task yields at the next tick).
        created.insert(name, Instant::now());
    }
    let want_followers = args.services * followers;
    let mut seen: HashMap<(Tap, String), Instant> = HashMap::new();
    let (mut at_followers, mut at_double, mut at_leader) = (0, 0, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while at_followers < want_followers || at_double < args.services || at_leader < args.services {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((tap, name, at))) => {
                if created.contains_key(&name) && seen.insert((tap, name), at).is_none() {
                    match tap {
                        Tap::Double => at_double += 1,
                        Tap::Leader => at_leader += 1,
                        Tap::Follower(_) => at_followers += 1,
                    }
                }
            }
            _ => break,
        }
    }
    let (busy1, total1) = machine_time();
    let cpu = CpuUse {
        wall: burst_start.elapsed(),
        leader: cpu_time(&leader_pid).saturating_sub(cpu_leader0),
        bench: cpu_time("self").saturating_sub(cpu_bench0),
        machine_busy: busy1.saturating_sub(busy0),
        machine_total: total1.saturating_sub(total0),
    };
    let mut segments = Segments::default();
    for ((tap, name), at) in &seen {
        let c = created[name];
        match tap {
            Tap::Double => segments.apiserver.push(at.saturating_duration_since(c)),
            Tap::Leader => segments.to_leader.push(at.saturating_duration_since(c)),
            Tap::Follower(_) => {
                segments.end_to_end.push(at.saturating_duration_since(c));
                if let Some(l) = seen.get(&(Tap::Leader, name.clone())) {
                    if at < l {
                        segments.hop_negative += 1;
                    }
                    segments.local_hop.push(at.saturating_duration_since(*l));
                }
            }
        }
    }
    for v in [
        &mut segments.apiserver,
        &mut segments.to_leader,
        &mut segments.local_hop,
        &mut segments.end_to_end,
    ] {
        v.sort();
    }
    // Let the leader's own copy finish arriving before reading the bytes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let burst_bytes = down.load(Ordering::Relaxed) - before;
    let service_watches = watches(&api, "/api/v1/services");
    let slice_watches = watches(&api, SLICES);

    let mut failover = None;
    if followers > 0 {
        let killed = Instant::now();
        let _ = leader.0.kill(); // SIGKILL
        let _ = leader.0.wait();
        api.create(slice(args.services + 1, 1))
            .map_err(|e| anyhow::anyhow!("create: {e:?}"))?;
        let name = format!("svc-{:05}-abc", args.services + 1);
        let mut seen = std::collections::HashSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while seen.len() < followers {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((Tap::Follower(id), n, _))) if n == name => {
                    seen.insert(id);
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        if seen.len() == followers {
            failover = Some(killed.elapsed());
        }
    }
    for t in tasks {
        t.abort();
    }
    for h in hubs {
        h.stop().await;
    }
    drop(leader);
    api.shutdown().await;
    Ok(Outcome {
        burst_bytes,
        service_watches,
        slice_watches,
        segments,
        cpu,
        failover,
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One segment's line: count, p50, p99, max.
fn segment_line(what: &str, v: &[Duration]) -> String {
    format!(
        "  {what:<44} n {:>6}  p50 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.2} ms",
        v.len(),
        ms(percentile(v, 0.5)),
        ms(percentile(v, 0.99)),
        ms(v.last().copied().unwrap_or_default()),
    )
}

fn report(label: &str, o: &Outcome) {
    let s = &o.segments;
    println!("{label}: delays (each from the double's commit unless said)");
    println!(
        "{}",
        segment_line("commit -> watch on the double", &s.apiserver)
    );
    println!(
        "{}",
        segment_line("commit -> watch on the leader's listener", &s.to_leader)
    );
    if !s.end_to_end.is_empty() {
        println!(
            "{}",
            segment_line(
                "local hop: leader's listener -> follower watcher",
                &s.local_hop
            )
        );
        println!(
            "{}",
            segment_line("end to end: commit -> follower watcher", &s.end_to_end)
        );
        println!(
            "  ({} follower deliveries came before the leader tap's copy; counted as 0)",
            s.hop_negative
        );
    }
    let c = &o.cpu;
    let per_s = |d: Duration| d.as_secs_f64() / c.wall.as_secs_f64().max(1e-9);
    println!(
        "  CPU over the {:.2} s from the first create to the last delivery: leader {:.2} s ({:.2} cores), this process (double, followers, watchers) {:.2} s ({:.2} cores), machine busy {:.0} % of {:.2} s",
        c.wall.as_secs_f64(),
        c.leader.as_secs_f64(),
        per_s(c.leader),
        c.bench.as_secs_f64(),
        per_s(c.bench),
        100.0 * c.machine_busy.as_secs_f64() / c.machine_total.as_secs_f64().max(1e-9),
        c.machine_total.as_secs_f64(),
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("error"))
        .try_init();
    println!(
        "pool: 1 leader + {} followers; burst of {} Services and {} EndpointSlices x {} endpoints at {}/s",
        args.followers, args.services, args.services, args.endpoints, args.rate
    );
    let base = run(&args, 0).await.context("baseline: the leader alone")?;
    println!(
        "baseline (leader alone)  apiserver bytes in burst {:>11}  watches services {} endpointslices {}",
        base.burst_bytes, base.service_watches, base.slice_watches
    );
    report("baseline", &base);
    let pool = run(&args, args.followers).await.context("pool run")?;
    let e2e = &pool.segments.end_to_end;
    let hop = &pool.segments.local_hop;
    let (p50, p99) = (percentile(e2e, 0.5), percentile(e2e, 0.99));
    let hop99 = percentile(hop, 0.99);
    let ratio = pool.burst_bytes as f64 / base.burst_bytes.max(1) as f64;
    println!(
        "pool (1 + {:>2})            apiserver bytes in burst {:>11} (x{ratio:.2} of one hub)  watches services {} endpointslices {}  delivered {}/{}  end to end p50 {:.2} ms  p99 {:.2} ms",
        args.followers,
        pool.burst_bytes,
        pool.service_watches,
        pool.slice_watches,
        e2e.len(),
        args.services * args.followers,
        ms(p50),
        ms(p99),
    );
    report("pool", &pool);
    println!(
        "failover after SIGKILL of the leader: {}",
        pool.failover
            .map(|d| format!(
                "{:.2} s until every follower's watcher had the next slice",
                d.as_secs_f64()
            ))
            .unwrap_or_else(|| "NOT within 30 s".into())
    );
    println!(
        "targets: 1 upstream watch per resource: {} ({} services, {} endpointslices); bytes about one hub (<= x1.5): {} (x{ratio:.2}); local hop p99 <= 50 ms: {} ({:.2} ms; end to end {:.2} ms); failover <= 5 s: {}",
        met(pool.service_watches == 1 && pool.slice_watches == 1),
        pool.service_watches,
        pool.slice_watches,
        met(ratio <= 1.5),
        met(hop.len() == args.services * args.followers && hop99 <= Duration::from_millis(50)),
        ms(hop99),
        ms(p99),
        met(pool.failover.is_some_and(|d| d <= Duration::from_secs(5))),
    );
    Ok(())
}
