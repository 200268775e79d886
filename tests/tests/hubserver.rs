//! The hub server's node surfaces through HTTP: `GET /pods` (kubelet's cached
//! pods in edge mode, the node's pods from the apiserver in cloud mode) and
//! the `/debug/pprof/` CPU profile behind `--profiling`.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};
use yurthub_e2e::apiserver::ApiServer;
use yurthub_e2e::hub::{Hub, HubFiles, NODE, eventually, get, plain_client};
use yurthub_e2e::pki::TestPki;

const KUBELET: &str = "kubelet/v1.34.0 (linux/amd64) kubernetes/abcdef";

fn pod(ns: &str, name: &str, node: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}
    })
}

async fn setup(extra: &[&str]) -> (ApiServer, HubFiles, Hub) {
    let pki = Arc::new(TestPki::new().expect("pki"));
    let api = ApiServer::builder()
        .pki(pki.clone())
        .bookmark_interval(Duration::from_secs(1))
        .start()
        .await
        .expect("double starts");
    api.create(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}))
        .expect("node");
    let files = HubFiles::new(&pki);
    let hub = Hub::start(&files.args(&[api.url()], extra)).await;
    (api, files, hub)
}

fn names(list: &Value) -> Vec<String> {
    let mut n: Vec<String> = list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("a PodList with items: {list}"))
        .iter()
        .map(|p| {
            format!(
                "{}/{}",
                p["metadata"]["namespace"].as_str().unwrap_or_default(),
                p["metadata"]["name"].as_str().unwrap_or_default()
            )
        })
        .collect();
    n.sort();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_in_edge_mode_are_kubelets_cached_pods_and_survive_an_outage() {
    let (api, _files, hub) = setup(&[]).await;
    api.create(pod("default", "a", NODE)).expect("pod a");
    api.create(pod("kube-system", "b", NODE)).expect("pod b");
    let c = plain_client();
    let pods_url = format!("{}/pods", hub.hub_url());

    let r = get(&c, &pods_url, "curl").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["kind"], "PodList");
    assert!(
        names(&r.json()).is_empty(),
        "nothing cached yet: {}",
        r.text()
    );

    // kubelet lists its pods through the hub: the cache keeps them.
    let selector = format!("spec.nodeName%3D{NODE}");
    let r = get(
        &c,
        &format!("{}/api/v1/pods?fieldSelector={selector}", hub.proxy_url()),
        KUBELET,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    eventually(Duration::from_secs(10), "kubelet's pods in /pods", || {
        let c = c.clone();
        let url = pods_url.clone();
        async move {
            let r = get(&c, &url, "curl").await;
            r.status == StatusCode::OK && names(&r.json()) == ["default/a", "kube-system/b"]
        }
    })
    .await;
    let list = get(&c, &pods_url, "curl").await.json();
    assert_eq!(list["apiVersion"], "v1");
    assert_eq!(list["items"][0]["spec"]["nodeName"], NODE, "{list}");

    // Offline, the cached pods are still served.
    api.shutdown().await;
    let r = get(&c, &pods_url, "curl").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(names(&r.json()), ["default/a", "kube-system/b"]);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_in_cloud_mode_are_the_nodes_pods_from_the_apiserver() {
    let (api, _files, hub) = setup(&["--working-mode=cloud"]).await;
    api.create(pod("default", "mine", NODE)).expect("pod");
    api.create(pod("default", "theirs", "other-node"))
        .expect("pod");
    let c = plain_client();
    let r = get(&c, &format!("{}/pods", hub.hub_url()), "curl").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let list = r.json();
    assert_eq!(
        (list["apiVersion"].as_str(), list["kind"].as_str()),
        (Some("v1"), Some("PodList"))
    );
    assert_eq!(names(&list), ["default/mine"], "{list}");
    let listed = api
        .requests()
        .into_iter()
        .any(|r| r.path == "/api/v1/pods" && r.query.contains("spec.nodeName"));
    assert!(listed, "the hub listed pods with the node's field selector");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pprof_serves_a_cpu_profile_that_decodes() {
    use pprof::protos::Message;
    let (_api, _files, hub) = setup(&[]).await;
    let c = plain_client();
    let r = get(&c, &format!("{}/debug/pprof/", hub.hub_url()), "curl").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text().contains("profile"), "{}", r.text());
    let r = get(&c, &format!("{}/debug/pprof", hub.hub_url()), "curl").await;
    assert_eq!(r.status, StatusCode::FOUND);

    let r = get(
        &c,
        &format!("{}/debug/pprof/profile?seconds=1", hub.hub_url()),
        "go-pprof",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(!r.body.is_empty(), "a non-empty profile");
    let profile = pprof::protos::Profile::parse_from_bytes(&r.body)
        .unwrap_or_else(|e| panic!("the body decodes as a pprof Profile: {e}"));
    assert!(
        !profile.string_table.is_empty() && !profile.sample_type.is_empty(),
        "a profile with sample types and strings: {profile:?}"
    );

    let r = get(
        &c,
        &format!("{}/debug/pprof/profile?seconds=3600", hub.hub_url()),
        "go-pprof",
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "profiles are bounded");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pprof_is_absent_without_profiling() {
    let (_api, _files, hub) = setup(&["--profiling=false"]).await;
    let c = plain_client();
    for path in ["/debug/pprof/", "/debug/pprof/profile?seconds=1"] {
        let r = get(&c, &format!("{}{path}", hub.hub_url()), "curl").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
    }
    hub.stop().await;
}
