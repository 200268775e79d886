//! `bench-cache`: the cache benchmark (`cargo xtask bench cache`), one run,
//! results printed as text. Build it in release:
//! `cargo build --release -p yurthub-e2e --bin bench-cache`.
//!
//! Measures, against the apiserver double:
//! 1. an offline LIST of 5,000 cached pods vs the same LIST served online by
//!    the double through the hub (latency p50/p99, bytes/s);
//! 2. watch events persisted per second (group commit, fsync per batch);
//! 3. store size on disk per 1,000 pods;
//! 4. RSS of a hub process with 10,000 cached objects;
//! 5. cold start offline to the first answered request.
//!
//! The hub processes are this binary re-executed as the daemon
//! (`BENCH_CACHE_AS_HUB=1`), so the figures are for the release build.

#[path = "../../tests/cache_support/mod.rs"]
mod cache_support;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cache_support::{KUBELET, PROTOBUF_ACCEPT, cache_doc, double, wait_offline};
use serde_json::{Value, json};
use yurthub_e2e::hub::{Hub, HubFiles, NODE, PlainClient, free_port, get, plain_client, send};
use yurthub_e2e::pki::TestPki;

const AS_HUB: &str = "BENCH_CACHE_AS_HUB";
const LIST_PODS: usize = 5_000;
const RSS_OBJECTS: usize = 10_000;
const WATCH_EVENTS: usize = 20_000;
const ROUNDS: usize = 25;

fn main() -> std::process::ExitCode {
    if std::env::var_os(AS_HUB).is_some() {
        return yurthub::entry::main();
    }
    // Quiet: the in-process hubs and the double log at debug otherwise.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("error"))
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let started = Instant::now();
        println!("bench-cache (release build: {})", !cfg!(debug_assertions));
        list_online_vs_offline().await;
        watch_events_per_second().await;
        rss_and_cold_start().await;
        println!("total {:.1} s", started.elapsed().as_secs_f64());
    });
    std::process::ExitCode::SUCCESS
}

/// A pod of a realistic size (~2 KiB of JSON).
fn bench_pod(ns: &str, i: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("pod-{i:05}"), "namespace": ns,
            "labels": {"app": format!("app-{}", i % 50), "pod-template-hash": "5d8f9c7b6d", "tier": "backend"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z", "prometheus.io/scrape": "true"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "app-5d8f9c7b6d",
                "uid": "7d3c2b1a-0000-4000-8000-000000000001", "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "nodeName": NODE, "serviceAccountName": "default", "restartPolicy": "Always",
            "containers": [{
                "name": "main", "image": "registry.example.com/team/app:v1.2.3",
                "args": ["--port=8080", "--log-level=info"],
                "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "MODE", "value": "production"}],
                "ports": [{"containerPort": 8080, "protocol": "TCP", "name": "http"}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 10},
                "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]
            }],
            "volumes": [{"name": "kube-api-access", "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]}}],
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]
        },
        "status": {
            "phase": "Running", "podIP": format!("10.244.{}.{}", i / 250, i % 250), "hostIP": "192.168.0.10",
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [{"name": "main", "ready": true, "restartCount": 0, "image": "registry.example.com/team/app:v1.2.3",
                "imageID": "registry.example.com/team/app@sha256:0123456789abcdef", "containerID": "containerd://abcdef0123456789",
                "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]
        }
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn timed_lists(c: &PlainClient, url: &str, accept: &str) -> (Vec<Duration>, usize) {
    let mut lat = Vec::with_capacity(ROUNDS);
    let mut bytes = 0;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let r = send(
            c,
            http::Method::GET,
            url,
            &[("user-agent", KUBELET), ("accept", accept)],
            Bytes::new(),
        )
        .await;
        lat.push(t.elapsed());
        assert_eq!(r.status, http::StatusCode::OK, "{url}: {}", r.text());
        bytes = r.body.len();
    }
    lat.sort();
    (lat, bytes)
}

fn report(what: &str, lat: &[Duration], bytes: usize) {
    let total: Duration = lat.iter().sum();
    let mb_s = (bytes * lat.len()) as f64 / total.as_secs_f64() / 1e6;
    println!(
        "  {what:<28} p50 {:>7.2} ms  p99 {:>7.2} ms  body {:>6.2} MB  {:>8.1} MB/s",
        percentile(lat, 0.5).as_secs_f64() * 1e3,
        percentile(lat, 0.99).as_secs_f64() * 1e3,
        bytes as f64 / 1e6,
        mb_s
    );
}

async fn list_online_vs_offline() {
    let pki = Arc::new(TestPki::new().expect("pki"));
    let api = double(&pki).await;
    api.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}}))
        .expect("ns");
    for i in 0..LIST_PODS {
        api.create(bench_pod("bench", i)).expect("pod");
    }
    let files = HubFiles::new(&pki);
    let hub = Hub::start(&files.args(&[api.url()], &[])).await;
    let c = plain_client();
    let url = format!(
        "{}/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE}",
        hub.proxy_url()
    );
    // One list into a fresh store: its size per 1,000 pods.
    let r = send(
        &c,
        http::Method::GET,
        &url,
        &[("user-agent", KUBELET), ("accept", PROTOBUF_ACCEPT)],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, http::StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(30);
    while cache_doc(&c, &hub.hub_url()).await["objects"]
        .as_u64()
        .unwrap_or(0)
        < LIST_PODS as u64
    {
        assert!(Instant::now() < deadline, "list not cached");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let doc = cache_doc(&c, &hub.hub_url()).await;
    let per_k = |v: &Value| v.as_u64().unwrap_or(0) as f64 / 1024.0 / (LIST_PODS as f64 / 1000.0);
    println!(
        "store after one LIST of {LIST_PODS} pods (protobuf as sent): {:.0} KiB on disk per 1,000 pods, {:.0} KiB payload per 1,000 pods",
        per_k(&doc["bytesOnDisk"]),
        per_k(&doc["payloadBytes"])
    );
    println!("LIST of {LIST_PODS} pods by kubelet, {ROUNDS} rounds each:");
    let mut online = Vec::new();
    for (name, accept) in [("protobuf", PROTOBUF_ACCEPT), ("json", "application/json")] {
        let (lat, bytes) = timed_lists(&c, &url, accept).await;
        report(&format!("online via hub ({name})"), &lat, bytes);
        online.push((name, accept, percentile(&lat, 0.5)));
    }
    // Let the last teed list land, then record the store size.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let doc = cache_doc(&c, &hub.hub_url()).await;
    let on_disk = doc["bytesOnDisk"].as_u64().unwrap_or(0);
    let objects = doc["objects"].as_u64().unwrap_or(0);
    api.shutdown().await;
    wait_offline(&c, &hub.hub_url(), &api.url()).await;
    for (name, accept, online_p50) in online {
        let (lat, bytes) = timed_lists(&c, &url, accept).await;
        report(&format!("offline from cache ({name})"), &lat, bytes);
        let p50 = percentile(&lat, 0.5);
        println!(
            "    offline p50 / online p50 = {:.2} (target <= 1.00: {})",
            p50.as_secs_f64() / online_p50.as_secs_f64(),
            if p50 <= online_p50 { "met" } else { "missed" }
        );
    }
    println!(
        "store after {} list replaces: {:.0} KiB on disk per 1,000 pods ({on_disk} bytes, {objects} objects; redb keeps freed pages for reuse)",
        2 * ROUNDS + 1,
        on_disk as f64 / 1024.0 / (LIST_PODS as f64 / 1000.0)
    );
    hub.stop().await;
}

fn metric(m: &str, name: &str) -> Option<f64> {
    m.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

async fn watch_events_per_second() {
    let pki = Arc::new(TestPki::new().expect("pki"));
    let api = yurthub_e2e::apiserver::ApiServer::builder()
        .pki(pki.clone())
        .protobuf(Arc::new(cache_support::HubCodec))
        .history_window(WATCH_EVENTS + 1000)
        .start()
        .await
        .expect("double");
    api.create(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}))
        .expect("node");
    api.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}}))
        .expect("ns");
    let files = HubFiles::new(&pki);
    let hub = Hub::start(&files.args(&[api.url()], &[])).await;
    let c = plain_client();
    let start_rv = api.resource_version();
    for i in 0..WATCH_EVENTS {
        api.create(bench_pod("bench", i)).expect("pod");
    }
    let metrics_url = format!("{}/metrics", hub.hub_url());
    let base = metric(
        &get(&c, &metrics_url, "bench").await.text(),
        "node_yurthub_cache_writes",
    )
    .unwrap_or(0.0);
    // kubelet's watch from before the burst: the double replays it at once.
    let url = format!(
        "{}/api/v1/pods?watch=true&resourceVersion={start_rv}&fieldSelector=spec.nodeName%3D{NODE}",
        hub.proxy_url()
    );
    let req = http::Request::get(&url)
        .header("user-agent", KUBELET)
        .header("accept", PROTOBUF_ACCEPT)
        .body(http_body_util::Full::new(Bytes::new()))
        .expect("request");
    let t = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(10), c.request(req))
        .await
        .expect("watch opens")
        .expect("watch");
    let drain = tokio::spawn(async move {
        use http_body_util::BodyExt;
        let mut b = resp.into_body();
        let mut n = 0usize;
        while let Ok(Some(Ok(f))) = tokio::time::timeout(Duration::from_secs(30), b.frame()).await {
            n += f.data_ref().map_or(0, |d| d.len());
        }
        n
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut done = 0.0;
    while Instant::now() < deadline {
        let m = get(&c, &metrics_url, "bench").await.text();
        done = metric(&m, "node_yurthub_cache_writes").unwrap_or(0.0) - base;
        if done >= WATCH_EVENTS as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    let doc = cache_doc(&c, &hub.hub_url()).await;
    println!(
        "watch events persisted: {done:.0} of {WATCH_EVENTS} in {secs:.2} s = {:.0} events/s (target >= 20,000; crash-safe group commit; {} objects stored)",
        done / secs,
        doc["objects"].as_u64().unwrap_or(0),
    );
    drain.abort();
    hub.stop().await;
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_hub(args: &[String]) -> Proc {
    let exe = std::env::current_exe().expect("exe");
    Proc(
        Command::new(exe)
            .env(AS_HUB, "1")
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn hub"),
    )
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| {
                    l.strip_prefix("VmRSS:")
                        .map(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
                })
                .flatten()
        })
        .unwrap_or(0)
}

async fn rss_and_cold_start() {
    let pki = Arc::new(TestPki::new().expect("pki"));
    let api = double(&pki).await;
    api.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}}))
        .expect("ns");
    for i in 0..RSS_OBJECTS {
        api.create(bench_pod("bench", i)).expect("pod");
    }
    let files = HubFiles::new(&pki);
    let port = free_port();
    let mut args = files.args(&[api.url()], &[]);
    for a in args.iter_mut() {
        if a == "--proxy-port=0" {
            *a = format!("--proxy-port={port}");
        }
    }
    let hub_url = args
        .iter()
        .find_map(|a| a.strip_prefix("--serve-port="))
        .map(|p| format!("http://127.0.0.1:{p}"))
        .expect("serve port");
    let proxy = format!("http://127.0.0.1:{port}");
    let c = plain_client();
    let list_url = format!("{proxy}/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE}");
    {
        let hub = spawn_hub(&args);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Ok(r)) = tokio::time::timeout(
                Duration::from_secs(1),
                c.request(
                    http::Request::get(format!("{hub_url}/v1/healthz"))
                        .body(http_body_util::Full::new(Bytes::new()))
                        .expect("req"),
                ),
            )
            .await
                && r.status().is_success()
            {
                break;
            }
            assert!(Instant::now() < deadline, "hub process did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let r = send(
            &c,
            http::Method::GET,
            &list_url,
            &[("user-agent", KUBELET), ("accept", PROTOBUF_ACCEPT)],
            Bytes::new(),
        )
        .await;
        assert_eq!(r.status, http::StatusCode::OK);
        let deadline = Instant::now() + Duration::from_secs(60);
        while cache_doc(&c, &hub_url).await["objects"]
            .as_u64()
            .unwrap_or(0)
            < RSS_OBJECTS as u64
        {
            assert!(Instant::now() < deadline, "cache did not fill");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!(
            "hub process RSS online after caching {RSS_OBJECTS} pods: {:.1} MiB",
            rss_kib(hub.0.id()) as f64 / 1024.0
        );
        drop(hub); // SIGKILL
    }
    api.shutdown().await;
    let t = Instant::now();
    let hub = spawn_hub(&args);
    let one = format!("{proxy}/api/v1/namespaces/bench/pods/pod-00001");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let req = http::Request::get(&one)
            .header("user-agent", KUBELET)
            .body(http_body_util::Full::new(Bytes::new()))
            .expect("req");
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_millis(500), c.request(req)).await
            && r.status() == http::StatusCode::OK
        {
            break;
        }
        assert!(Instant::now() < deadline, "offline hub never answered");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let cold = t.elapsed();
    println!(
        "cold start offline to first answered request: {:.0} ms (target < 300 ms)",
        cold.as_secs_f64() * 1e3
    );
    println!(
        "hub process RSS offline with {RSS_OBJECTS} cached objects, idle: {:.1} MiB",
        rss_kib(hub.0.id()) as f64 / 1024.0
    );
    let r = send(
        &c,
        http::Method::GET,
        &list_url,
        &[("user-agent", KUBELET), ("accept", PROTOBUF_ACCEPT)],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, http::StatusCode::OK, "{}", r.text());
    println!(
        "hub process RSS offline after serving a LIST of all {RSS_OBJECTS}: {:.1} MiB (target < 64 MiB)",
        rss_kib(hub.0.id()) as f64 / 1024.0
    );
    drop(hub);
}
