//! Shared watches (the multiplexer) through the hub: pool-scoped resources
//! are served to every local client from one upstream list + watch, with
//! per-client selectors and filters, and 429 until the first list completes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use yurthub_e2e::apiserver::{ApiServer, Fault, FaultKind};
use yurthub_e2e::hub::{
    self, Hub, HubFiles, NODE, eventually, get, metric_value, plain_client, send,
};
use yurthub_e2e::pki::TestPki;

const KUBE_PROXY: &str = "kube-proxy/v1.34.0 (linux/amd64) kubernetes/abcdef";
const COREDNS: &str = "coredns/1.12.0 (linux/amd64)";

async fn double() -> (Arc<TestPki>, ApiServer) {
    let pki = Arc::new(TestPki::new().expect("pki"));
    let api = ApiServer::builder()
        .pki(pki.clone())
        .bookmark_interval(Duration::from_secs(1))
        .start()
        .await
        .expect("double starts");
    api.create(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}))
        .expect("node");
    (pki, api)
}

fn service(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"ports": [{"port": 80}]}})
}

fn names(list: &Value) -> Vec<String> {
    let mut n: Vec<String> = list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("a list: {list}"))
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str().map(String::from))
        .collect();
    n.sort();
    n
}

type Chunks = tokio::sync::mpsc::Receiver<Option<Bytes>>;

/// Opens a watch through the hub, retrying while it is answered 429.
async fn open_watch(url: &str, ua: &str) -> Chunks {
    let c = plain_client();
    for _ in 0..50 {
        let req = hub::get_request(url, ua, &[]);
        let resp = tokio::time::timeout(Duration::from_secs(10), c.request(req))
            .await
            .expect("watch answered within 10 s")
            .expect("watch");
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        assert_eq!(resp.status(), StatusCode::OK, "watch {url} as {ua}");
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let mut body = resp.into_body();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(d) = frame.into_data()
                    && tx.send(Some(d)).await.is_err()
                {
                    return;
                }
            }
            let _ = tx.send(None).await;
        });
        return rx;
    }
    panic!("watch {url} kept answering 429");
}

/// Reads until the text seen contains `needle`; returns everything seen.
async fn wait_for(rx: &mut Chunks, needle: &str, within: Duration) -> String {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = String::new();
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => panic!("timed out waiting for {needle:?}; saw: {seen}"),
            Ok(None) | Ok(Some(None)) => panic!("stream ended before {needle:?}; saw: {seen}"),
            Ok(Some(Some(chunk))) => {
                seen.push_str(&String::from_utf8_lossy(&chunk));
                if seen.contains(needle) {
                    return seen;
                }
            }
        }
    }
}

async fn list(hub: &Hub, path: &str, ua: &str) -> Value {
    for _ in 0..50 {
        let r = get(&plain_client(), &format!("{}{path}", hub.proxy_url()), ua).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        assert_eq!(r.status, StatusCode::OK, "{path} as {ua}: {}", r.text());
        return r.json();
    }
    panic!("{path} kept answering 429");
}

fn services_watches(api: &ApiServer) -> Vec<Option<String>> {
    api.requests()
        .into_iter()
        .filter(|r| r.path == "/api/v1/services" && r.query.contains("watch=true"))
        .map(|r| r.user_agent)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_local_watchers_share_one_upstream_watch() {
    let (pki, api) = double().await;
    let files = HubFiles::new(&pki);
    let hub = Hub::start(&files.args(&[api.url()], &[])).await;
    let url = format!("{}/api/v1/services?watch=true", hub.proxy_url());
    let mut watchers = Vec::new();
    for i in 0..10 {
        let ua = if i % 2 == 0 { KUBE_PROXY } else { COREDNS };
        watchers.push(open_watch(&url, ua).await);
    }
    api.create(service("fresh", json!({"app": "web"})))
        .expect("service");
    for (i, w) in watchers.iter_mut().enumerate() {
        let seen = wait_for(w, "\"name\":\"fresh\"", Duration::from_secs(10)).await;
        assert!(seen.contains("\"type\":\"ADDED\""), "watcher {i}: {seen}");
    }
    assert!(
        api.wait_for_open_watches("services", 1, Duration::from_secs(5))
            .await,
        "one open upstream watch of services, not {}",
        api.open_watches("services")
    );
    let watches = services_watches(&api);
    assert_eq!(watches.len(), 1, "one upstream watch request: {watches:?}");
    assert_eq!(
        watches[0].as_deref(),
        Some(format!("multiplexer-proxy-{NODE}").as_str())
    );
    let clients_upstream = api.requests().into_iter().any(|r| {
        r.path == "/api/v1/services"
            && r.user_agent
                .as_deref()
                .is_some_and(|ua| ua.starts_with("kube-proxy") || ua.starts_with("coredns"))
    });
    assert!(!clients_upstream, "no client request reached the apiserver");

    let m = get(
        &plain_client(),
        &format!("{}/metrics", hub.hub_url()),
        "prometheus",
    )
    .await
    .text();
    assert_eq!(
        metric_value(&m, "node_yurthub_aggregated_in_flight_requests_total"),
        Some(10.0),
        "{m}"
    );
    assert!(
        m.contains("node_yurthub_target_for_multiplexer_requests_collector{"),
        "{m}"
    );
    drop(watchers);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_and_field_selectors_apply_per_request() {
    let (pki, api) = double().await;
    api.create(service("web-a", json!({"app": "web"})))
        .expect("svc");
    api.create(service("db", json!({"app": "db"})))
        .expect("svc");
    let files = HubFiles::new(&pki);
    let hub = Hub::start(&files.args(&[api.url()], &[])).await;

    let l = list(
        &hub,
        "/api/v1/namespaces/default/services?labelSelector=app%3Dweb",
        COREDNS,
    )
    .await;
    assert_eq!(names(&l), ["web-a"], "{l}");
    assert_eq!(l["kind"], "ServiceList");
    let l = list(
        &hub,
        "/api/v1/services?fieldSelector=metadata.name%3Ddb",
        COREDNS,
    )
    .await;
    assert_eq!(names(&l), ["db"], "{l}");
    let l = list(&hub, "/api/v1/namespaces/other/services", COREDNS).await;
    assert!(names(&l).is_empty(), "{l}");

    let mut w = open_watch(
        &format!(
            "{}/api/v1/services?watch=true&labelSelector=app%3Dweb",
            hub.proxy_url()
        ),
        COREDNS,
    )
    .await;
    api.create(service("db-2", json!({"app": "db"})))
        .expect("svc");
    api.create(service("web-b", json!({"app": "web"})))
        .expect("svc");
    let seen = wait_for(&mut w, "\"name\":\"web-b\"", Duration::from_secs(10)).await;
    assert!(
        seen.contains("\"name\":\"web-a\""),
        "initial state first: {seen}"
    );
    assert!(!seen.contains("\"name\":\"db"), "no db services: {seen}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_get_429_until_the_first_list_completes() {
    let (pki, api) = double().await;
    // Every endpointslices request is slow: the multiplexer's first list
    // too (services are not delayed: the filters' readiness lists them).
    api.inject(Fault::new(
        "/apis/discovery.k8s.io/v1/endpointslices",
        FaultKind::Delay(Duration::from_secs(4)),
    ));
    let files = HubFiles::new(&pki);
    let hub = Hub::start(&files.args(&[api.url()], &[])).await;
    let slices = format!(
        "{}/apis/discovery.k8s.io/v1/endpointslices",
        hub.proxy_url()
    );
    let r = get(&plain_client(), &slices, KUBE_PROXY).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
    assert_eq!(
        r.headers.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert_eq!(r.json()["reason"], "TooManyRequests");
    api.clear_faults();
    eventually(
        Duration::from_secs(15),
        "endpointslices served after the first list",
        || {
            let url = slices.clone();
            async move { get(&plain_client(), &url, KUBE_PROXY).await.status == StatusCode::OK }
        },
    )
    .await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_proxy_gets_its_filtered_view_per_client() {
    let (pki, api) = double().await;
    api.create(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "lb-cloud", "namespace": "default",
        "annotations": {"svc.openyurt.io/discard": "true"}},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}))
    .expect("svc");
    api.create(service("web", json!({}))).expect("svc");
    let files = HubFiles::new(&pki);
    let hub = Hub::start(&files.args(&[api.url()], &[])).await;

    let seen = names(&list(&hub, "/api/v1/services", KUBE_PROXY).await);
    assert!(
        seen.contains(&"web".to_string()) && !seen.contains(&"lb-cloud".to_string()),
        "{seen:?}"
    );
    let all = names(&list(&hub, "/api/v1/services", COREDNS).await);
    assert!(all.contains(&"lb-cloud".to_string()), "{all:?}");

    // A service that becomes discardable disappears from kube-proxy's watch.
    let mut w = open_watch(
        &format!("{}/api/v1/services?watch=true", hub.proxy_url()),
        KUBE_PROXY,
    )
    .await;
    let seen = wait_for(&mut w, "\"name\":\"web\"", Duration::from_secs(10)).await;
    assert!(!seen.contains("lb-cloud"), "{seen}");
    api.create(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "lb-new", "namespace": "default",
        "annotations": {"svc.openyurt.io/discard": "true"}},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}))
    .expect("svc");
    let seen = wait_for(&mut w, "\"name\":\"lb-new\"", Duration::from_secs(10)).await;
    let event: Value = seen
        .lines()
        .filter(|l| l.contains("\"name\":\"lb-new\""))
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("a JSON event line for lb-new: {seen}"));
    assert_eq!(
        event["type"], "DELETED",
        "dropped objects arrive DELETED: {event}"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_pool_scope_turns_the_multiplexer_off() {
    let (pki, api) = double().await;
    let files = HubFiles::new(&pki);
    let hub = Hub::start(&files.args(&[api.url()], &["--pool-scope-resources="])).await;
    let r = send(
        &plain_client(),
        Method::GET,
        &format!("{}/api/v1/services", hub.proxy_url()),
        &[("user-agent", KUBE_PROXY)],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let direct = api
        .requests()
        .into_iter()
        .any(|r| r.path == "/api/v1/services" && r.user_agent.as_deref() == Some(KUBE_PROXY));
    assert!(direct, "kube-proxy's list went upstream itself");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_from_a_listed_resource_version_and_protobuf_is_served() {
    let (pki, api) = double().await;
    api.create(service("old", json!({}))).expect("svc");
    let files = HubFiles::new(&pki);
    let hub = Hub::start(&files.args(&[api.url()], &[])).await;
    let l = list(&hub, "/api/v1/namespaces/default/services", COREDNS).await;
    let rv = l["metadata"]["resourceVersion"]
        .as_str()
        .expect("a list resourceVersion")
        .to_owned();
    api.create(service("new", json!({}))).expect("svc");
    let mut w = open_watch(
        &format!(
            "{}/api/v1/namespaces/default/services?watch=true&resourceVersion={rv}",
            hub.proxy_url()
        ),
        COREDNS,
    )
    .await;
    let seen = wait_for(&mut w, "\"name\":\"new\"", Duration::from_secs(10)).await;
    assert!(
        !seen.contains("\"name\":\"old\""),
        "only what changed after {rv}: {seen}"
    );

    let r = send(
        &plain_client(),
        Method::GET,
        &format!("{}/api/v1/namespaces/default/services", hub.proxy_url()),
        &[
            ("user-agent", COREDNS),
            (
                "accept",
                "application/vnd.kubernetes.protobuf, application/json",
            ),
        ],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/vnd.kubernetes.protobuf")
    );
    let decoded = yurthub::codec::to_json(&r.body).expect("a protobuf list decodes");
    let n = names(&decoded);
    assert!(
        n.contains(&"old".to_string()) && n.contains(&"new".to_string()),
        "{n:?}"
    );
    hub.stop().await;
}
