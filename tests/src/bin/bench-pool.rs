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
//! baseline), create→delivery p99 at the followers' watchers (target ≤ 50
//! ms), and the time from the kill until every follower's watcher got the
//! next slice (target ≤ 5 s). Each target is printed as met or MISSED.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use yurthub_e2e::apiserver::ApiServer;
use yurthub_e2e::hub::{Hub, free_port, get_request, plain_client};
use yurthub_e2e::pki::TestPki;
use yurthub_e2e::pool::{NodeFiles, create_node, leader_configmap};

const KUBE_PROXY: &str = "kube-proxy/v1.34.0 (linux/amd64) kubernetes/abcdef";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const POOL: &str = "bench";

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

fn sibling_binary(name: &str) -> Result<std::path::PathBuf> {
    let exe = std::env::current_exe().context("current exe")?;
    let p = exe.parent().context("exe dir")?.join(name);
    if !p.exists() {
        bail!(
            "{} is missing: run through `cargo xtask bench pool`",
            p.display()
        );
    }
    Ok(p)
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

type Deliveries = tokio::sync::mpsc::UnboundedSender<(usize, String, Instant)>;

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
        return Ok(tokio::spawn(async move {
            let mut body = resp.into_body();
            let mut buf = Vec::new();
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let at = Instant::now();
                buf.extend_from_slice(&data);
                while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=nl).collect();
                    let Ok(ev) = serde_json::from_slice::<Value>(&line) else {
                        continue;
                    };
                    if ev["type"] == "ADDED"
                        && let Some(n) = ev["object"]["metadata"]["name"].as_str()
                    {
                        let _ = tx.send((id, n.to_owned(), at));
                    }
                }
            }
        }));
    }
    bail!("follower {id} never served the watch")
}

struct Outcome {
    burst_bytes: u64,
    service_watches: usize,
    slice_watches: usize,
    latencies: Vec<Duration>,
    failover: Option<Duration>,
}

fn watches(api: &ApiServer, path: &str) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.path == path && r.query.contains("watch=true"))
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
        std::process::Command::new(sibling_binary("yurthub-under-test")?)
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
    drop(tx);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let before = down.load(Ordering::Relaxed);
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
        created.lock().unwrap().insert(name, Instant::now());
        api.create(s)
            .map_err(|e| anyhow::anyhow!("create: {e:?}"))?;
    }
    let want = args.services * followers;
    let mut latencies = Vec::with_capacity(want);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while latencies.len() < want {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((_, name, at))) => {
                if let Some(c) = created.lock().unwrap().get(&name) {
                    latencies.push(at.saturating_duration_since(*c));
                }
            }
            _ => break,
        }
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
                Ok(Some((id, n, _))) if n == name => {
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
        latencies,
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
    let mut pool = run(&args, args.followers).await.context("pool run")?;
    pool.latencies.sort();
    let p50 = percentile(&pool.latencies, 0.5);
    let p99 = percentile(&pool.latencies, 0.99);
    let ratio = pool.burst_bytes as f64 / base.burst_bytes.max(1) as f64;
    println!(
        "pool (1 + {:>2})            apiserver bytes in burst {:>11} (x{ratio:.2} of one hub)  watches services {} endpointslices {}  delivered {}/{}  p50 {:.2} ms  p99 {:.2} ms",
        args.followers,
        pool.burst_bytes,
        pool.service_watches,
        pool.slice_watches,
        pool.latencies.len(),
        args.services * args.followers,
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
    );
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
        "targets: 1 upstream watch per resource: {} ({} services, {} endpointslices); bytes about one hub (<= x1.5): {} (x{ratio:.2}); p99 <= 50 ms: {} ({:.2} ms); failover <= 5 s: {}",
        met(pool.service_watches == 1 && pool.slice_watches == 1),
        pool.service_watches,
        pool.slice_watches,
        met(ratio <= 1.5),
        met(p99 <= Duration::from_millis(50)),
        p99.as_secs_f64() * 1e3,
        met(pool.failover.is_some_and(|d| d <= Duration::from_secs(5))),
    );
    Ok(())
}
