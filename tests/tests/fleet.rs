//! Fleet-quiet upstream, through the public surface and counted at the
//! apiserver double's request log: an idle hub watches and never lists
//! after start; cloud changes arrive through its watches; health is known
//! within a second of the client certificate and the cloud's return is
//! noticed in seconds; every upstream wait is bounded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use yurthub_e2e::apiserver::{ApiServer, Fault, FaultKind, RecordedRequest};
use yurthub_e2e::hub::{
    Hub, HubFiles, NODE, eventually, free_port, get, metric_value, plain_client, send,
};
use yurthub_e2e::pki::TestPki;

const KUBELET: &str = "kubelet/v1.34.0 (linux/amd64) kubernetes/abcdef";
const KUBE_PROXY: &str = "kube-proxy/v1.34.0 (linux/amd64) kubernetes/abcdef";

async fn double() -> (Arc<TestPki>, ApiServer) {
    let pki = Arc::new(TestPki::new().expect("pki"));
    let api = ApiServer::builder()
        .pki(pki.clone())
        .bookmark_interval(Duration::from_secs(1))
        .start()
        .await
        .expect("double");
    api.create(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}))
        .expect("node");
    (pki, api)
}

/// The hub's own requests (not the multiplexer's, not the test's).
fn from_hub(r: &RecordedRequest) -> bool {
    r.user_agent
        .as_deref()
        .is_some_and(|ua| ua.starts_with("yurthub"))
}

fn is_watch(r: &RecordedRequest) -> bool {
    r.query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1")
}

async fn healthy(hub: &Hub, api: &ApiServer) -> bool {
    let m = get(
        &plain_client(),
        &format!("{}/metrics", hub.hub_url()),
        "curl",
    )
    .await;
    metric_value(
        &m.text(),
        &format!(
            "node_yurthub_server_healthy_status{{server=\"{}/\"}}",
            api.url()
        ),
    )
    .or_else(|| {
        metric_value(
            &m.text(),
            &format!(
                "node_yurthub_server_healthy_status{{server=\"{}\"}}",
                api.url()
            ),
        )
    }) == Some(1.0)
}

async fn readyz(hub: &Hub) -> StatusCode {
    get(
        &plain_client(),
        &format!("{}/v1/readyz", hub.hub_url()),
        "curl",
    )
    .await
    .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_hub_opens_its_watches_and_sends_no_list_after_start() {
    let (pki, api) = double().await;
    let files = HubFiles::new(&pki);
    let hub = Hub::start(&files.args(&[api.url()], &["--watch-idle-timeout=5s"])).await;
    eventually(Duration::from_secs(10), "the hub is ready", || async {
        readyz(&hub).await == StatusCode::OK
    })
    .await;
    // The first lists happened; from here on only watches and renewals.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started: Vec<RecordedRequest> = api.take_requests();
    let window = Duration::from_secs(15);
    tokio::time::sleep(window).await;
    let idle = api.take_requests();

    // What the hub needs is watched, each as narrowly as it can be.
    let all: Vec<&RecordedRequest> = started.iter().chain(idle.iter()).collect();
    let watched = |path: &str, query_part: &str| {
        all.iter()
            .any(|r| is_watch(r) && r.path == path && r.query.contains(query_part))
    };
    assert!(
        watched(
            "/api/v1/namespaces/kube-system/configmaps",
            "fieldSelector=metadata.name%3Dyurt-hub-cfg"
        ),
        "yurt-hub-cfg is watched by name"
    );
    // The VIP (default/kubernetes) comes from the multiplexer's services
    // watch when it runs, otherwise from a watch of that one Service.
    assert!(
        watched(
            "/api/v1/namespaces/default/services",
            "fieldSelector=metadata.name%3Dkubernetes"
        ) || watched("/api/v1/services", ""),
        "default/kubernetes is watched, by name or through the shared services watch"
    );
    assert!(
        all.iter()
            .all(|r| !(is_watch(r) && r.path == "/api/v1/nodes")
                || r.query
                    .contains(&format!("fieldSelector=metadata.name%3D{NODE}"))),
        "the node is watched by name only"
    );
    // Services come from the multiplexer's shared watch, not a second one.
    let service_watches = all
        .iter()
        .filter(|r| is_watch(r) && r.path == "/api/v1/services")
        .count();
    assert!(
        service_watches <= 1,
        "one services watch: {service_watches}"
    );

    // Idle: no LIST or GET of anything; lease renewals at the heartbeat,
    // each a merge patch of renewTime answered with metadata only (the
    // lease was written whole once, at start).
    let mut renewals = 0;
    for r in &idle {
        if r.path.contains("/leases/") && (r.method == "PUT" || r.method == "PATCH") {
            assert!(
                r.method == "PATCH"
                    && r.content_type.as_deref() == Some("application/merge-patch+json")
                    && r.accept
                        .as_deref()
                        .is_some_and(|a| a.contains("as=PartialObjectMetadata")),
                "an idle renewal is compact: {} {:?} accept {:?}",
                r.method,
                r.content_type,
                r.accept
            );
            renewals += 1;
            continue;
        }
        assert!(
            r.method == "GET" && is_watch(r),
            "an idle hub sent {} {}?{} ({:?})",
            r.method,
            r.path,
            r.query,
            r.user_agent
        );
    }
    // --heartbeat-interval-seconds=1: one renewal a second, not more.
    assert!(
        renewals <= window.as_secs() as usize + 2,
        "{renewals} renewals in {window:?}"
    );
    assert!(
        renewals >= window.as_secs() as usize / 2,
        "{renewals} renewals"
    );
    // Bookmarks keep the watches alive: no re-watch storm within the window
    // (each informer re-watches only at its 5–10 min timeout).
    let rewatches = idle.iter().filter(|r| is_watch(r) && from_hub(r)).count();
    assert!(
        rewatches <= 1,
        "the hub's watches were reopened {rewatches} times while idle: {:?}",
        idle.iter()
            .filter(|r| is_watch(r))
            .map(|r| &r.path)
            .collect::<Vec<_>>()
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_changes_to_yurt_hub_cfg_and_services_take_effect_within_a_second() {
    let (pki, api) = double().await;
    let files = HubFiles::new(&pki);
    let hub = Hub::start(&files.args(&[api.url()], &[])).await;
    let c = plain_client();
    eventually(Duration::from_secs(10), "the hub is ready", || async {
        readyz(&hub).await == StatusCode::OK
    })
    .await;

    // yurt-hub-cfg: a new cache agent.
    let agents = || async {
        get(&c, &format!("{}/v1/cache", hub.hub_url()), "curl")
            .await
            .json()["cacheAgents"]
            .clone()
    };
    assert!(!agents().await.to_string().contains("fleet-agent"));
    let t0 = Instant::now();
    api.create(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "yurt-hub-cfg", "namespace": "kube-system",
            "labels": {"openyurt.io/configmap-name": "yurt-hub-cfg"}},
        "data": {"cache_agents": "fleet-agent"}}))
        .expect("configmap");
    eventually(
        Duration::from_secs(1),
        "the cache agent applies",
        || async { agents().await.to_string().contains("fleet-agent") },
    )
    .await;
    tracing::info!(elapsed = ?t0.elapsed(), "yurt-hub-cfg applied");

    // A Service's topology annotation, as the endpointslice filter sees it.
    api.create(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "local", "namespace": "default",
        "annotations": {"openyurt.io/topologyKeys": "kubernetes.io/hostname"}}, "spec": {"ports": [{"port": 80}]}}))
    .expect("svc");
    api.create(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "local-abc", "namespace": "default", "labels": {"kubernetes.io/service-name": "local"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.1"], "nodeName": NODE}, {"addresses": ["10.0.0.2"], "nodeName": "other-node"}],
        "ports": [{"port": 80}]}))
    .expect("slice");
    let endpoints = || async {
        let r = get(
            &c,
            &format!(
                "{}/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
                hub.proxy_url()
            ),
            KUBE_PROXY,
        )
        .await;
        r.json()["items"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["metadata"]["name"] == "local-abc"))
            .and_then(|s| s["endpoints"].as_array().map(Vec::len))
    };
    eventually(
        Duration::from_secs(1),
        "only this node's endpoint",
        || async { endpoints().await == Some(1) },
    )
    .await;
    let mut svc = api.get("v1", "Service", "default", "local").expect("svc");
    svc["metadata"]["annotations"] = json!({});
    api.update(svc).expect("update svc");
    eventually(
        Duration::from_secs(1),
        "both endpoints once the annotation is gone",
        || async { endpoints().await == Some(2) },
    )
    .await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_a_kubelet_list_reflects_a_cloud_change_within_5s() {
    let (pki, api) = double().await;
    let files = HubFiles::new(&pki);
    let hub = Hub::start(&files.args(&[api.url()], &[])).await;
    let c = plain_client();
    let pods = format!(
        "{}/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE}",
        hub.proxy_url()
    );
    eventually(Duration::from_secs(10), "a kubelet list", || async {
        get(&c, &pods, KUBELET).await.status == StatusCode::OK
    })
    .await;
    api.shutdown().await;
    eventually(
        Duration::from_secs(10),
        "the hub notices the outage",
        || async { !healthy(&hub, &api).await },
    )
    .await;
    // Offline for a while: the probe backs off.
    tokio::time::sleep(Duration::from_secs(8)).await;
    api.restart().await.expect("double returns");
    let back = Instant::now();
    api.create(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "after-the-outage", "namespace": "default"},
        "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "busybox"}]}}))
        .expect("pod");
    eventually(
        Duration::from_secs(5),
        "the kubelet list shows the new pod",
        || async {
            get(&c, &pods, KUBELET)
                .await
                .text()
                .contains("after-the-outage")
        },
    )
    .await;
    tracing::info!(elapsed = ?back.elapsed(), "cloud change seen after the return");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_and_stalled_upstreams_end_within_their_bounds_and_others_are_unaffected() {
    let (pki, api) = double().await;
    let files = HubFiles::new(&pki);
    let hub = Hub::start(&files.args(&[api.url()], &["--watch-idle-timeout=4s"])).await;
    let c = plain_client();
    eventually(Duration::from_secs(10), "the hub is ready", || async {
        readyz(&hub).await == StatusCode::OK
    })
    .await;
    api.create(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "one", "namespace": "default"}, "data": {"k": "v"}}))
        .expect("cm");
    api.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "stall"}}))
        .expect("ns");
    api.create(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "big", "namespace": "stall"}, "data": {"k": "v".repeat(200)}}))
        .expect("cm");

    // 1. Accepts, never answers: a non-long-running request ends at its
    //    timeout= with a 504 Status.
    api.inject(Fault::new("/api/v1/namespaces/default/secrets", FaultKind::Hang).times(1));
    let t = Instant::now();
    let r = send(
        &c,
        Method::GET,
        &format!(
            "{}/api/v1/namespaces/default/secrets?timeout=2s",
            hub.proxy_url()
        ),
        &[("user-agent", "curl/8"), ("accept", "application/json")],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{}", r.text());
    assert_eq!(r.json()["kind"], "Status");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());

    // 2. Half a watch frame, then silence: cut at the frame bound.
    api.inject(
        Fault::new(
            "/api/v1/namespaces/stall/configmaps",
            FaultKind::StallMidStream { after_bytes: 40 },
        )
        .times(1),
    );
    let watch = async {
        let t = Instant::now();
        let req = http::Request::builder()
            .uri(format!(
                "{}/api/v1/namespaces/stall/configmaps?watch=true",
                hub.proxy_url()
            ))
            .header("user-agent", "curl/8")
            .header("accept", "application/json")
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        let resp = c.request(req).await.expect("headers");
        assert_eq!(resp.status(), StatusCode::OK);
        let body = http_body_util::BodyExt::collect(resp.into_body()).await;
        (
            t.elapsed(),
            body.map(|b| b.to_bytes().len()).map_err(|e| e.to_string()),
        )
    };
    // 3. A bookmark watch whose upstream sends nothing: a clean end at the
    //    idle bound.
    api.inject(
        Fault::new(
            "/api/v1/namespaces/default/pods",
            FaultKind::StallMidStream { after_bytes: 0 },
        )
        .times(1),
    );
    let silent = async {
        let t = Instant::now();
        let req = http::Request::builder()
            .uri(format!(
                "{}/api/v1/namespaces/default/pods?watch=true&allowWatchBookmarks=true&resourceVersion={}",
                hub.proxy_url(),
                api.resource_version()
            ))
            .header("user-agent", "curl/8")
            .header("accept", "application/json")
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        let resp = c.request(req).await.expect("headers");
        assert_eq!(resp.status(), StatusCode::OK);
        let body = http_body_util::BodyExt::collect(resp.into_body()).await;
        (
            t.elapsed(),
            body.map(|b| b.to_bytes().len()).map_err(|e| e.to_string()),
        )
    };
    // Meanwhile other clients are served at once.
    let others = async {
        for _ in 0..10 {
            let t = Instant::now();
            let r = get(
                &c,
                &format!(
                    "{}/api/v1/namespaces/default/configmaps/one",
                    hub.proxy_url()
                ),
                "curl/8",
            )
            .await;
            assert_eq!(r.status, StatusCode::OK);
            assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let bound = Duration::from_secs(15);
    let (w, s, ()) = tokio::join!(
        tokio::time::timeout(bound, watch),
        tokio::time::timeout(bound, silent),
        others
    );
    let (w_elapsed, w_body) = w.expect("the stalled watch ends");
    let (s_elapsed, s_body) = s.expect("the silent watch ends");
    // --watch-idle-timeout=4s: mid-frame bound 1 s, idle bound 4 s.
    assert!(
        w_body.is_err(),
        "half a frame is not a clean end: {w_body:?}"
    );
    assert!(w_elapsed < Duration::from_secs(4), "{w_elapsed:?}");
    assert_eq!(s_body, Ok(0), "the silent watch ends cleanly");
    assert!(
        s_elapsed >= Duration::from_secs(3) && s_elapsed < Duration::from_secs(7),
        "{s_elapsed:?}"
    );
    hub.stop().await;
}

/// Token bootstrap on a fresh node, CSRs signed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_bootstrap_health_vips_and_readiness_come_fast_and_kubelet_never_sees_404() {
    let api = ApiServer::builder()
        .bookmark_interval(Duration::from_secs(1))
        .start()
        .await
        .expect("double");
    let node = api
        .create(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}))
        .expect("node");
    let mut node = node;
    node["status"] = json!({"addresses": [{"type": "InternalIP", "address": "192.168.0.10"}]});
    api.update_status(node).expect("node status");
    api.create(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "busybox"}]}}))
        .expect("pod");
    let token = api
        .create_bootstrap_token("abcdef", "0123456789abcdef", &[])
        .expect("token");
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("bootstrap.conf");
    std::fs::write(
        &file,
        api.kubeconfig(&yurthub_e2e::apiserver::Credential::Token(token))
            .unwrap(),
    )
    .unwrap();
    let root = dir.path().join("root");
    let (proxy_port, serve_port) = (free_port(), free_port());
    let args: Vec<String> = [
        "yurthub".to_string(),
        format!("--node-name={NODE}"),
        "--nodepool-name=pool".into(),
        format!("--server-addr={}", api.url()),
        "--bootstrap-mode=token".into(),
        format!("--bootstrap-file={}", file.display()),
        "--node-ip=192.168.0.10".into(),
        "--hub-address=127.0.0.1".into(),
        "--redirect-mode=none".into(),
        "--bind-proxy-address=127.0.0.1".into(),
        format!("--proxy-port={proxy_port}"),
        "--proxy-secure-port=0".into(),
        format!("--serve-port={serve_port}"),
        format!("--root-dir={}", root.display()),
        format!("--disk-cache-path={}", root.join("cache").display()),
        // The default heartbeat: health must not wait for its ticks.
        "--shutdown-grace-period=3s".into(),
    ]
    .into();

    // A kubelet that asks from the first moment the proxy listens.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let kubelet = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let c = plain_client();
            let mut seen: Vec<(u16, String)> = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                for path in [
                    format!("/api/v1/nodes/{NODE}"),
                    format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE}"),
                ] {
                    let req = http::Request::builder()
                        .uri(format!("http://127.0.0.1:{proxy_port}{path}"))
                        .header("user-agent", KUBELET)
                        .header("accept", "application/json")
                        .body(http_body_util::Full::new(Bytes::new()))
                        .unwrap();
                    if let Ok(Ok(resp)) =
                        tokio::time::timeout(Duration::from_secs(5), c.request(req)).await
                    {
                        seen.push((resp.status().as_u16(), path));
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            seen
        })
    };
    // Timestamps of what the hub server reports, sampled every 50 ms.
    let sampler = tokio::spawn(async move {
        let c = plain_client();
        let hub = format!("http://127.0.0.1:{serve_port}");
        let (mut client_cert, mut healthy, mut ready) = (None, None, None);
        let mut serving_at_ready = Value::Null;
        let deadline = Instant::now() + Duration::from_secs(40);
        while ready.is_none() && Instant::now() < deadline {
            let now = Instant::now();
            let q = |p: &str| {
                http::Request::builder()
                    .uri(format!("{hub}{p}"))
                    .body(http_body_util::Full::new(Bytes::new()))
                    .unwrap()
            };
            let read = |r: http::Response<hyper::body::Incoming>| async move {
                let code = r.status();
                let b = http_body_util::BodyExt::collect(r.into_body())
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                (code, b)
            };
            if let Ok(r) = c.request(q("/v1/certificates")).await {
                let (_, b) = read(r).await;
                let st: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
                if client_cert.is_none() && st["client"]["present"] == true {
                    client_cert = Some(now);
                }
                if let Ok(r) = c.request(q("/metrics")).await {
                    let (_, b) = read(r).await;
                    if healthy.is_none()
                        && String::from_utf8_lossy(&b).lines().any(|l| {
                            l.starts_with("node_yurthub_server_healthy_status") && l.ends_with(" 1")
                        })
                    {
                        healthy = Some(now);
                    }
                }
                if let Ok(r) = c.request(q("/v1/readyz")).await {
                    let (code, _) = read(r).await;
                    if code == StatusCode::OK {
                        ready = Some(now);
                        serving_at_ready = st["serving"].clone();
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (client_cert, healthy, ready, serving_at_ready)
    });
    let hub = Hub::start(&args).await;
    let (client_cert, healthy, ready, serving) = sampler.await.expect("sampler");
    stop.store(true, std::sync::atomic::Ordering::Release);
    let seen = kubelet.await.expect("kubelet");

    let client_cert = client_cert.expect("a client certificate was installed");
    let healthy = healthy.expect("the cloud was judged healthy");
    let ready = ready.expect("the hub became ready");
    let h = healthy.saturating_duration_since(client_cert);
    assert!(
        h <= Duration::from_millis(1200),
        "healthy {h:?} after the client cert"
    );
    let r = ready.saturating_duration_since(client_cert);
    // The CSRs are signed at once: the client cert marks it.
    assert!(
        r <= Duration::from_millis(2200),
        "ready {r:?} after the CSRs were signed"
    );
    assert!(
        serving["ipAddresses"]
            .as_array()
            .is_some_and(|ips| ips.iter().any(|ip| ip == "10.96.0.1")),
        "the serving certificate carries the VIP when readyz first says 200: {serving}"
    );
    let not_found: Vec<_> = seen.iter().filter(|(c, _)| *c == 404).collect();
    assert!(
        not_found.is_empty(),
        "kubelet got 404 while the cloud was up: {not_found:?}"
    );
    assert!(
        seen.iter().any(|(c, _)| *c == 200),
        "kubelet was served: {seen:?}"
    );
    hub.stop().await;
}
