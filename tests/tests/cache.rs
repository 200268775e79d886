//! Cache semantics through the public surface: what gets stored while
//! online (checked by answering offline), list scopes and pagination,
//! PartialObjectMetadata and CRD kinds, what is never cached, pod GC, the
//! transport-error fallback, `import-cache`, and the store's failure modes
//! (kill -9 mid-write, corruption, a full disk).

mod cache_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cache_support::*;
use http::{Method, StatusCode};
use serde_json::json;
use yurthub_e2e::apiserver::{ApiServer, Fault, FaultKind, ResourceType};
use yurthub_e2e::hub::{
    Hub, HubFiles, HubProcess, NODE, PlainClient, eventually, free_port, get, metric_value,
    plain_client, send,
};
use yurthub_e2e::pki::TestPki;

struct Env {
    _pki: Arc<TestPki>,
    api: ApiServer,
    files: HubFiles,
    c: PlainClient,
}

/// These tests count and inspect what the cache holds for the components
/// they drive; the multiplexer's own cached services and endpointslices
/// (pool-scoped, under `multiplexer-proxy-<node>`) would be counted too.
const NO_MUX: &[&str] = &["--pool-scope-resources="];

async fn env() -> Env {
    let pki = Arc::new(TestPki::new().expect("pki"));
    let api = double(&pki).await;
    let files = HubFiles::new(&pki);
    Env {
        _pki: pki,
        api,
        files,
        c: plain_client(),
    }
}

async fn go_offline(e: &Env, hub: &Hub) {
    tokio::time::sleep(Duration::from_millis(300)).await; // let teed writes land
    e.api.shutdown().await;
    wait_offline(&e.c, &hub.hub_url(), &e.api.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_replaces_exactly_its_scope_and_pages_commit_together() {
    let e = env().await;
    let hub = Hub::start(&e.files.args(&[e.api.url()], NO_MUX)).await;
    let p = hub.proxy_url();
    for ns in ["a", "b"] {
        e.api
            .create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
            .unwrap();
    }
    for i in 0..5 {
        e.api.create(pod("a", &format!("p{i}"), NODE, "x")).unwrap();
    }
    e.api.create(pod("b", "q0", NODE, "x")).unwrap();
    let list = |url: String| {
        let c = e.c.clone();
        async move {
            let r = get(&c, &url, KUBELET).await;
            assert_eq!(r.status, StatusCode::OK, "{url}: {}", r.text());
            r.json()
        }
    };
    // Namespace a, then b: two scopes.
    list(format!("{p}/api/v1/namespaces/a/pods")).await;
    list(format!("{p}/api/v1/namespaces/b/pods")).await;
    wait_objects(&e.c, &hub.hub_url(), 6).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = cache_doc(&e.c, &hub.hub_url()).await["objects"]
        .as_u64()
        .unwrap();
    // p4 disappears upstream; relisting a removes it from the cache, b intact.
    e.api.delete_now("v1", "Pod", "a", "p4").unwrap();
    list(format!("{p}/api/v1/namespaces/a/pods")).await;
    eventually(Duration::from_secs(5), "p4 gone from the cache", || async {
        cache_doc(&e.c, &hub.hub_url()).await["objects"].as_u64() == Some(before - 1)
    })
    .await;

    // A paginated list of a (limit 2): pages are staged, replaced together.
    e.api.create(pod("a", "p5", NODE, "x")).unwrap();
    let mut url = format!("{p}/api/v1/namespaces/a/pods?limit=2");
    let mut pages = 0;
    loop {
        let page = list(url.clone()).await;
        pages += 1;
        let next = page["metadata"]["continue"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        if next.is_empty() {
            break;
        }
        if pages == 1 {
            // Before the last page arrives the old content stands.
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(
                cache_doc(&e.c, &hub.hub_url()).await["objects"].as_u64(),
                Some(before - 1)
            );
        }
        let next: String = form_urlencoded::byte_serialize(next.as_bytes()).collect();
        url = format!("{p}/api/v1/namespaces/a/pods?limit=2&continue={next}");
        assert!(pages < 10);
    }
    assert_eq!(pages, 3, "5 pods in pages of 2");
    // A first page never followed up leaves the cache as it was.
    e.api.create(pod("a", "p6", NODE, "x")).unwrap();
    list(format!("{p}/api/v1/namespaces/a/pods?limit=2")).await;
    // The cloud has more than was listed.
    e.api
        .create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "c"}}))
        .unwrap();
    e.api.create(pod("c", "r0", NODE, "x")).unwrap();

    go_offline(&e, &hub).await;
    let r = get(&e.c, &format!("{p}/api/v1/namespaces/a/pods"), KUBELET).await;
    assert_eq!(
        names(&r.json()),
        ["p0", "p1", "p2", "p3", "p5"],
        "all pages, not only the last"
    );
    let r = get(&e.c, &format!("{p}/api/v1/namespaces/b/pods"), KUBELET).await;
    assert_eq!(names(&r.json()), ["q0"]);
    // A cluster-wide list that was never made is not invented: it is what
    // the narrower scopes cached (p4 stays deleted, p6 was only on an
    // abandoned page, c/r0 was never listed), nothing the cloud had besides.
    let r = get(
        &e.c,
        &format!("{p}/api/v1/pods?labelSelector=app%3Dx"),
        KUBELET,
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "objects cached under narrower scopes are served"
    );
    let l = r.json();
    assert_eq!(
        names(&l),
        ["p0", "p1", "p2", "p3", "p5", "q0"],
        "exactly what was cached: {l}"
    );
    let max_rv = l["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| {
            i["metadata"]["resourceVersion"]
                .as_str()?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap();
    assert_eq!(
        l["metadata"]["resourceVersion"],
        max_rv.to_string(),
        "its resourceVersion is the newest cached item's, not a made-up one"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_lists_crd_kinds_and_what_is_never_cached() {
    let pki = Arc::new(TestPki::new().expect("pki"));
    let widgets = ResourceType::custom("example.com", "v1", "widgets", "Widget", true);
    let api = ApiServer::builder()
        .pki(pki.clone())
        .protobuf(Arc::new(HubCodec))
        .crd(widgets)
        .start()
        .await
        .unwrap();
    api.create(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}))
        .unwrap();
    let files = HubFiles::new(&pki);
    let c = plain_client();
    let hub = Hub::start(&files.args(&[api.url()], NO_MUX)).await;
    let p = hub.proxy_url();
    api.create(pod("default", "run", NODE, "x")).unwrap();
    api.create(pod("default", "pending", "", "x")).unwrap();
    api.create(json!({"apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "w1", "namespace": "default"}, "spec": {"size": 3}}))
        .unwrap();
    const META: &str = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";
    let r = get_as(
        &c,
        &format!("{p}/api/v1/namespaces/default/configmaps"),
        KUBELET,
        META,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    api.create(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "namespace": "default"}, "data": {"k": "v"}})).unwrap();
    let r = get_as(
        &c,
        &format!("{p}/api/v1/namespaces/default/configmaps"),
        KUBELET,
        META,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["kind"], "PartialObjectMetadataList");
    let r = get(
        &c,
        &format!("{p}/apis/example.com/v1/namespaces/default/widgets"),
        KUBELET,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = get(
        &c,
        &format!("{p}/api/v1/namespaces/default/pods/run"),
        KUBELET,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    wait_objects(&c, &hub.hub_url(), 3).await;

    tokio::time::sleep(Duration::from_millis(300)).await;
    // Never cached: unscheduled pods, logs, reviews. They add nothing to
    // the cache.
    let before = cache_doc(&c, &hub.hub_url()).await;
    let r = get(
        &c,
        &format!("{p}/api/v1/namespaces/default/pods/pending"),
        KUBELET,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = get(
        &c,
        &format!("{p}/api/v1/namespaces/default/pods/run/log"),
        KUBELET,
    )
    .await;
    assert_ne!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    let sar = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": "u", "resourceAttributes": {"verb": "get", "resource": "pods"}}});
    let sar_url = format!("{p}/apis/authorization.k8s.io/v1/subjectaccessreviews");
    let send_sar = || {
        send(
            &c,
            Method::POST,
            &sar_url,
            &[
                ("user-agent", KUBELET),
                ("content-type", "application/json"),
                ("accept", "application/json"),
            ],
            Bytes::from(sar.to_string()),
        )
    };
    let r = send_sar().await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(
        r.json()["status"]["allowed"],
        true,
        "the cloud answered the review: {}",
        r.text()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = cache_doc(&c, &hub.hub_url()).await;
    assert_eq!(
        after["objects"], before["objects"],
        "an unscheduled pod, a log and a review are not stored: {before} -> {after}"
    );
    api.shutdown().await;
    wait_offline(&c, &hub.hub_url(), &api.url()).await;
    // The cloud's review answer was not kept to be replayed offline: the
    // offline answer decides nothing.
    let r = send_sar().await;
    assert!(
        r.json()["status"]["allowed"] != true
            && !r.text().contains("allowed by the apiserver double"),
        "an offline review is never answered with the cloud's decision: {}",
        r.text()
    );
    // Metadata list: served as PartialObjectMetadataList from its own space…
    let r = get_as(
        &c,
        &format!("{p}/api/v1/namespaces/default/configmaps"),
        KUBELET,
        META,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let l = r.json();
    assert_eq!(l["kind"], "PartialObjectMetadataList");
    assert!(names(&l).contains(&"cm".to_string()), "{l}");
    assert!(l["items"][0].get("data").is_none(), "metadata only");
    // …and never stands in for the full list.
    let r = get(
        &c,
        &format!("{p}/api/v1/namespaces/default/configmaps"),
        KUBELET,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    // A metadata GET of a full object is derived from it.
    let r = get_as(
        &c,
        &format!("{p}/api/v1/namespaces/default/pods/run"),
        KUBELET,
        "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["kind"], "PartialObjectMetadata");
    // The CRD list comes back as its kind's list, JSON only.
    let r = get_as(
        &c,
        &format!("{p}/apis/example.com/v1/namespaces/default/widgets"),
        KUBELET,
        PROTOBUF_ACCEPT,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.json()["kind"], "WidgetList");
    assert_eq!(names(&r.json()), ["w1"]);
    // kubectl's Table request falls back to the next acceptable type.
    let r = get_as(
        &c,
        &format!("{p}/api/v1/namespaces/default/pods/run"),
        KUBELET,
        "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["kind"], "Pod");
    // Never cached.
    let r = get(
        &c,
        &format!("{p}/api/v1/namespaces/default/pods/pending"),
        KUBELET,
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "unscheduled pods are never cached"
    );
    let r = get(
        &c,
        &format!("{p}/api/v1/namespaces/default/pods/run/log"),
        KUBELET,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    hub.stop().await;

    // A 404 on the CRD list (CRD removed) forgets its kind: offline 404.
    api.restart().await.unwrap();
    let hub = Hub::start(&files.args(&[api.url()], NO_MUX)).await;
    let p = hub.proxy_url();
    api.inject(
        Fault::new(
            "/apis/example.com/v1/namespaces/default/widgets",
            FaultKind::Status(404),
        )
        .times(1),
    );
    let r = get(
        &c,
        &format!("{p}/apis/example.com/v1/namespaces/default/widgets"),
        KUBELET,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.shutdown().await;
    wait_offline(&c, &hub.hub_url(), &api.url()).await;
    let r = get(
        &c,
        &format!("{p}/apis/example.com/v1/namespaces/default/widgets"),
        KUBELET,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_upstream_connection_falls_back_to_the_cache_for_get_and_list() {
    let e = env().await;
    let hub = Hub::start(&e.files.args(&[e.api.url()], NO_MUX)).await;
    let p = hub.proxy_url();
    e.api.create(pod("default", "x", NODE, "a")).unwrap();
    let r = get(
        &e.c,
        &format!("{p}/api/v1/namespaces/default/pods/x"),
        KUBELET,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    wait_objects(&e.c, &hub.hub_url(), 2).await;
    e.api
        .inject(Fault::new("/api/v1/namespaces/default/pods", FaultKind::Garbage).times(2));
    let r = get(
        &e.c,
        &format!("{p}/api/v1/namespaces/default/pods/x"),
        KUBELET,
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "cacheable get served from the cache: {}",
        r.text()
    );
    assert_eq!(r.json()["metadata"]["name"], "x");
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
    let r = send(
        &e.c,
        Method::POST,
        &format!("{p}/api/v1/namespaces/default/pods"),
        &[
            ("user-agent", KUBELET),
            ("content-type", "application/json"),
        ],
        Bytes::from(cm.to_string()),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "non-cacheable: 502");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_gone_from_the_cloud_are_collected_at_start() {
    let e = env().await;
    let args = e.files.args(&[e.api.url()], NO_MUX);
    let hub = Hub::start(&args).await;
    let p = hub.proxy_url();
    for n in ["keep", "gone"] {
        e.api.create(pod("default", n, NODE, "a")).unwrap();
    }
    let r = get(
        &e.c,
        &format!("{p}/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE}"),
        KUBELET,
    )
    .await;
    assert_eq!(names(&r.json()), ["gone", "keep"]);
    // The two pods and the node lease the hub keeps for kubelet.
    wait_objects(&e.c, &hub.hub_url(), 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = cache_doc(&e.c, &hub.hub_url()).await["objects"]
        .as_u64()
        .unwrap();
    hub.stop().await;
    e.api.delete_now("v1", "Pod", "default", "gone").unwrap();
    let hub = Hub::start(&args).await;
    eventually(
        Duration::from_secs(10),
        "pod GC removed the deleted pod",
        || async { cache_doc(&e.c, &hub.hub_url()).await["objects"].as_u64() == Some(before - 1) },
    )
    .await;
    go_offline(&e, &hub).await;
    let r = get(
        &e.c,
        &format!("{}/api/v1/namespaces/default/pods/gone", hub.proxy_url()),
        KUBELET,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = get(
        &e.c,
        &format!("{}/api/v1/namespaces/default/pods/keep", hub.proxy_url()),
        KUBELET,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    hub.stop().await;
}

fn cache_dir(files: &HubFiles) -> PathBuf {
    files.dir.path().join("root").join("cache")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_store_is_moved_aside_and_the_hub_starts_empty() {
    let e = env().await;
    let args = e.files.args(&[e.api.url()], NO_MUX);
    let hub = Hub::start(&args).await;
    e.api.create(pod("default", "x", NODE, "a")).unwrap();
    get(
        &e.c,
        &format!("{}/api/v1/namespaces/default/pods/x", hub.proxy_url()),
        KUBELET,
    )
    .await;
    wait_objects(&e.c, &hub.hub_url(), 2).await;
    hub.stop().await;
    let file = cache_dir(&e.files).join("cache.redb");
    let len = std::fs::metadata(&file).unwrap().len() as usize;
    let mut bytes = std::fs::read(&file).unwrap();
    for b in bytes.iter_mut().take(len).skip(512) {
        *b ^= 0x5a;
    }
    std::fs::write(&file, &bytes).unwrap();
    // With the cloud away the restarted hub can write nothing new (its
    // lease copy, the Node), so "empty" is exact.
    e.api.shutdown().await;
    let hub = Hub::start(&args).await;
    let doc = cache_doc(&e.c, &hub.hub_url()).await;
    assert!(
        doc["recoveredEmpty"].is_string(),
        "the status says the cache started empty: {doc}"
    );
    assert_eq!(doc["objects"], 0);
    let m = get(&e.c, &format!("{}/metrics", hub.hub_url()), "test")
        .await
        .text();
    assert_eq!(
        metric_value(&m, "node_yurthub_cache_recovered_empty"),
        Some(1.0),
        "{m}"
    );
    let aside = std::fs::read_dir(cache_dir(&e.files))
        .unwrap()
        .filter_map(|d| d.ok())
        .any(|d| {
            d.file_name()
                .to_string_lossy()
                .starts_with("cache.redb.corrupt-")
        });
    assert!(aside, "the corrupt file was kept aside");
    // The hub still works and caches again once the cloud is back.
    e.api.restart().await.expect("the double restarts");
    let url = format!("{}/api/v1/namespaces/default/pods/x", hub.proxy_url());
    eventually(
        Duration::from_secs(10),
        "the pod from the cloud again",
        || async { get(&e.c, &url, KUBELET).await.status == StatusCode::OK },
    )
    .await;
    wait_objects(&e.c, &hub.hub_url(), 1).await;
    hub.stop().await;
}

/// The hub binary on fixed ports, for kill -9.
fn process_args(files: &HubFiles, api: &ApiServer) -> (Vec<String>, String, String) {
    let port = free_port();
    let mut args = files.args(&[api.url()], NO_MUX);
    for a in args.iter_mut() {
        if a == "--proxy-port=0" {
            *a = format!("--proxy-port={port}");
        }
    }
    let hub_url = args
        .iter()
        .find_map(|a| a.strip_prefix("--serve-port="))
        .map(|p| format!("http://127.0.0.1:{p}"))
        .unwrap();
    (args, format!("http://127.0.0.1:{port}"), hub_url)
}

/// The hub server is healthy and the proxy accepts connections (it may
/// bind a moment after the hub server).
async fn wait_up(c: &PlainClient, hub_url: &str, proxy: &str) {
    eventually(Duration::from_secs(20), "hub process up", || async {
        let req = http::Request::get(format!("{hub_url}/v1/healthz"))
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        let healthy = matches!(tokio::time::timeout(Duration::from_secs(1), c.request(req)).await, Ok(Ok(r)) if r.status().is_success());
        let req = http::Request::get(format!("{proxy}/healthz"))
            .header("user-agent", "test")
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        healthy && matches!(tokio::time::timeout(Duration::from_secs(1), c.request(req)).await, Ok(Ok(_)))
    })
    .await;
}

fn kill9(p: &mut HubProcess) {
    let pid = nix::unistd::Pid::from_raw(p.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = p.child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_watch_burst_and_a_list_replace_leaves_a_consistent_cache() {
    let e = env().await;
    let (args, proxy, hub_url) = process_args(&e.files, &e.api);
    let mut hub = HubProcess::spawn(&args);
    wait_up(&e.c, &hub_url, &proxy).await;
    // A kubelet watch while pods are created in a burst; kill -9 mid-burst.
    let url = format!("{proxy}/api/v1/pods?watch=true&fieldSelector=spec.nodeName%3D{NODE}");
    let req = http::Request::get(&url)
        .header("user-agent", KUBELET)
        .header("accept", PROTOBUF_ACCEPT)
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), e.c.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let drain = tokio::spawn(async move {
        use http_body_util::BodyExt;
        let mut b = resp.into_body();
        while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(10), b.frame()).await {
        }
    });
    let api = &e.api;
    api.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "burst"}}))
        .unwrap();
    // Create pods until the hub has demonstrably persisted some of the
    // burst, keep creating (writes in flight), then kill -9.
    let mut created = 0;
    let mut persisted = 0;
    let start = Instant::now();
    while persisted < 200 {
        assert!(
            start.elapsed() < Duration::from_secs(20) && created < 3000,
            "the hub persisted only {persisted} of {created} watched pods"
        );
        for _ in 0..100 {
            api.create(pod("burst", &format!("b{created:05}"), NODE, "burst"))
                .unwrap();
            created += 1;
        }
        persisted = cache_doc(&e.c, &hub_url).await["objects"].as_u64().unwrap();
    }
    for _ in 0..300 {
        api.create(pod("burst", &format!("b{created:05}"), NODE, "burst"))
            .unwrap();
        created += 1;
    }
    kill9(&mut hub);
    drain.abort();
    eprintln!("created {created} pods ({persisted} persisted before), then kill -9");

    // Restart (online): the store opens; every cached object decodes.
    let mut hub = HubProcess::spawn(&args);
    wait_up(&e.c, &hub_url, &proxy).await;
    let doc = cache_doc(&e.c, &hub_url).await;
    assert!(
        doc["recoveredEmpty"].is_null(),
        "kill -9 never corrupts the store: {doc}"
    );
    let after_burst = doc["objects"].as_u64().unwrap();
    eprintln!("{after_burst} objects survived the kill");
    assert!(
        after_burst >= persisted,
        "what was persisted before the kill ({persisted}) survives it ({after_burst})"
    );
    assert!(after_burst as usize <= created);

    // A big list replace, killed while it is being written: as soon as the
    // response starts streaming through the hub (and into its cache),
    // before it has returned.
    let req = http::Request::get(format!("{proxy}/api/v1/namespaces/burst/pods"))
        .header("user-agent", KUBELET)
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), e.c.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    {
        use http_body_util::BodyExt;
        let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the list starts streaming");
        assert!(matches!(first, Some(Ok(_))), "a first frame of the list");
    }
    kill9(&mut hub);
    drop(body);
    let hub = HubProcess::spawn(&args);
    wait_up(&e.c, &hub_url, &proxy).await;
    e.api.shutdown().await;
    wait_offline(&e.c, &hub_url, &e.api.url()).await;
    let r = get_as(
        &e.c,
        &format!("{proxy}/api/v1/namespaces/burst/pods"),
        KUBELET,
        PROTOBUF_ACCEPT,
    )
    .await;
    if r.status == StatusCode::OK {
        let l = decode(&r);
        let n = l["items"].as_array().unwrap().len();
        // Either the old state (what the watch left) or the whole new list.
        // `after_burst` may count the node lease besides the burst pods.
        let old_state = (n as u64) <= after_burst && (n as u64) + 1 >= after_burst;
        assert!(
            n == created || old_state,
            "a torn list replace: {n} of {created} (the watch left {after_burst} objects)"
        );
        for item in l["items"].as_array().unwrap() {
            assert_eq!(item["spec"]["nodeName"], NODE);
        }
        let max = l["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                p["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
            })
            .max();
        if let Some(max) = max {
            assert_eq!(l["metadata"]["resourceVersion"], max.to_string());
        }
    } else {
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
        assert_eq!(
            after_burst, 0,
            "nothing cached before and the replace did not land"
        );
    }
    drop(hub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_cache_reads_an_openyurt_directory() {
    let e = env().await;
    let old = tempfile::tempdir().unwrap();
    let dir = old
        .path()
        .join("kubelet")
        .join("pods.v1.core")
        .join("default");
    std::fs::create_dir_all(&dir).unwrap();
    let mut p = pod("default", "imported", NODE, "a");
    p["metadata"]["resourceVersion"] = json!("42");
    std::fs::write(dir.join("imported"), p.to_string()).unwrap();
    std::fs::write(
        old.path().join("version"),
        br#"{"major":"1","minor":"34","gitVersion":"v1.34.0"}"#,
    )
    .unwrap();
    let out = std::process::Command::new(yurthub_e2e::hub::hub_binary())
        .arg("import-cache")
        .arg(old.path())
        .arg(format!(
            "--disk-cache-path={}",
            cache_dir(&e.files).display()
        ))
        .output()
        .expect("import-cache runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json report");
    assert_eq!(report["objects"], 1, "{report}");
    // The imported cache answers offline.
    e.api.shutdown().await;
    let hub = Hub::start(&e.files.args(&[e.api.url()], NO_MUX)).await;
    let r = get(
        &e.c,
        &format!(
            "{}/api/v1/namespaces/default/pods/imported",
            hub.proxy_url()
        ),
        KUBELET,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["metadata"]["resourceVersion"], "42");
    let r = get(
        &e.c,
        &format!(
            "{}/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE}",
            hub.proxy_url()
        ),
        KUBELET,
    )
    .await;
    assert_eq!(names(&r.json()), ["imported"]);
    hub.stop().await;
}

/// A small tmpfs, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "the full-disk test needs root to mount a tmpfs; run the e2e tests as root"
        );
        std::fs::create_dir_all(at).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("mount runs");
        assert!(st.success(), "mounting a tmpfs at {} failed", at.display());
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_cleanly_and_keeps_serving() {
    let e = env().await;
    let _fs = Tmpfs::mount(&cache_dir(&e.files), "20m");
    let hub = Hub::start(&e.files.args(&[e.api.url()], NO_MUX)).await;
    let p = hub.proxy_url();
    e.api.create(pod("default", "early", NODE, "a")).unwrap();
    let r = get(
        &e.c,
        &format!("{p}/api/v1/namespaces/default/pods/early"),
        KUBELET,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    wait_objects(&e.c, &hub.hub_url(), 2).await;
    // Big configmaps until the store refuses writes (free space < reserve):
    // a 12 MB list needs twice that free on a 20 MB filesystem.
    let blob = "x".repeat(512 * 1024);
    for i in 0..24 {
        e.api
            .create(json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("big{i}"), "namespace": "default"}, "data": {"b": blob}}))
            .unwrap();
    }
    let r = get(
        &e.c,
        &format!("{p}/api/v1/namespaces/default/configmaps"),
        KUBELET,
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the client gets its list whatever the disk"
    );
    assert!(r.json()["items"].as_array().unwrap().len() >= 24);
    eventually(
        Duration::from_secs(10),
        "the failed write is reported",
        || async {
            let m = get(&e.c, &format!("{}/metrics", hub.hub_url()), "test")
                .await
                .text();
            metric_value(&m, "node_yurthub_cache_write_errors").is_some_and(|v| v >= 1.0)
                && metric_value(&m, "node_yurthub_error_keys_count").is_some_and(|v| v >= 1.0)
                && metric_value(&m, "node_yurthub_error_keys_persistency_status") == Some(0.0)
        },
    )
    .await;
    let doc = cache_doc(&e.c, &hub.hub_url()).await;
    assert!(
        doc["lastWriteError"]
            .as_str()
            .unwrap_or("")
            .contains("disk")
            || doc["diskFull"] == true,
        "{doc}"
    );
    // Reads continue.
    go_offline(&e, &hub).await;
    let r = get(
        &e.c,
        &format!("{p}/api/v1/namespaces/default/pods/early"),
        KUBELET,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_size_cap_evicts_events_first_then_refuses_growth() {
    let e = env().await;
    let hub = Hub::start(
        &e.files
            .args(&[e.api.url()], &["--cache-max-bytes=300000", NO_MUX[0]]),
    )
    .await;
    let p = hub.proxy_url();
    for i in 0..20 {
        e.api
            .create(json!({"apiVersion": "v1", "kind": "Event",
                "metadata": {"name": format!("ev{i}"), "namespace": "default"},
                "involvedObject": {"kind": "Pod", "name": "x", "namespace": "default"},
                "reason": "R", "message": "m".repeat(4000)}))
            .unwrap();
    }
    let r = get(
        &e.c,
        &format!("{p}/api/v1/namespaces/default/events"),
        KUBELET,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    wait_objects(&e.c, &hub.hub_url(), 20).await;
    let blob = "x".repeat(100 * 1024);
    for i in 0..4 {
        e.api
            .create(json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("big{i}"), "namespace": "default"}, "data": {"b": blob}}))
            .unwrap();
        let r = get(
            &e.c,
            &format!("{p}/api/v1/namespaces/default/configmaps/big{i}"),
            KUBELET,
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "the client is served whatever the cap"
        );
    }
    eventually(
        Duration::from_secs(10),
        "events evicted and growth refused",
        || async {
            let doc = cache_doc(&e.c, &hub.hub_url()).await;
            doc["evictedEvents"].as_u64().unwrap_or(0) > 0
                && doc["capacityRefusals"].as_u64().unwrap_or(0) > 0
                && doc["payloadBytes"].as_u64().unwrap_or(u64::MAX) <= 300_000
        },
    )
    .await;
    let m = get(&e.c, &format!("{}/metrics", hub.hub_url()), "test")
        .await
        .text();
    assert!(
        metric_value(&m, "node_yurthub_error_keys_count").is_some_and(|v| v >= 1.0),
        "{m}"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_gone_from_the_cloud_are_collected_in_both_groups() {
    let e = env().await;
    let args = e.files.args(&[e.api.url()], NO_MUX);
    let hub = Hub::start(&args).await;
    let p = hub.proxy_url();
    for n in ["keep", "gone"] {
        e.api
            .create(json!({"apiVersion": "v1", "kind": "Event",
                "metadata": {"name": n, "namespace": "default"},
                "involvedObject": {"kind": "Pod", "name": "x", "namespace": "default"},
                "reason": "R", "message": "m"}))
            .unwrap();
        e.api
            .create(json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
                "metadata": {"name": format!("{n}-new"), "namespace": "default"},
                "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "c",
                "reportingInstance": "i", "action": "A", "reason": "R"}))
            .unwrap();
    }
    for (ua, path) in [
        (KUBELET, "/api/v1/namespaces/default/events"),
        (
            KUBE_PROXY,
            "/apis/events.k8s.io/v1/namespaces/default/events",
        ),
    ] {
        let r = get(&e.c, &format!("{p}{path}"), ua).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
        assert_eq!(r.json()["items"].as_array().unwrap().len(), 2, "{path}");
    }
    wait_objects(&e.c, &hub.hub_url(), 4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = cache_doc(&e.c, &hub.hub_url()).await["objects"]
        .as_u64()
        .unwrap();
    hub.stop().await;
    e.api.delete_now("v1", "Event", "default", "gone").unwrap();
    e.api
        .delete_now("events.k8s.io/v1", "Event", "default", "gone-new")
        .unwrap();
    let hub = Hub::start(&args).await;
    eventually(
        Duration::from_secs(10),
        "both deleted events collected",
        || async { cache_doc(&e.c, &hub.hub_url()).await["objects"].as_u64() == Some(before - 2) },
    )
    .await;
    go_offline(&e, &hub).await;
    let p = hub.proxy_url();
    let r = get(
        &e.c,
        &format!("{p}/api/v1/namespaces/default/events"),
        KUBELET,
    )
    .await;
    assert_eq!(names(&r.json()), ["keep"]);
    let r = get(
        &e.c,
        &format!("{p}/apis/events.k8s.io/v1/namespaces/default/events"),
        KUBE_PROXY,
    )
    .await;
    assert_eq!(names(&r.json()), ["keep-new"]);
    hub.stop().await;
}
