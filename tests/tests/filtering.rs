//! Response filters through the hub: what clients receive, and that the
//! filtered form is what the cache serves offline.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use yurthub_e2e::apiserver::ApiServer;
use yurthub_e2e::hub::{Hub, HubFiles, NODE, eventually, plain_client, send};
use yurthub_e2e::pki::TestPki;

const KUBE_PROXY: &str = "kube-proxy/v1.34.0 (linux/amd64) kubernetes/abcdef";
const KUBELET: &str = "kubelet/v1.34.0 (linux/amd64) kubernetes/abcdef";

async fn setup(extra: &[&str]) -> (ApiServer, HubFiles, Hub) {
    let pki = Arc::new(TestPki::new().expect("pki"));
    let api = ApiServer::builder()
        .pki(pki.clone())
        .bookmark_interval(Duration::from_secs(1))
        .start()
        .await
        .expect("double");
    api.create(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}))
        .expect("node");
    let files = HubFiles::new(&pki);
    let hub = Hub::start(&files.args(&[api.url()], extra)).await;
    (api, files, hub)
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["metadata"]["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

async fn get_json(hub: &Hub, path: &str, ua: &str) -> (StatusCode, Value) {
    let r = send(
        &plain_client(),
        Method::GET,
        &format!("{}{path}", hub.proxy_url()),
        &[("user-agent", ua), ("accept", "application/json")],
        Bytes::new(),
    )
    .await;
    (
        r.status,
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discarded_cloud_services_are_hidden_from_kube_proxy_online_and_offline() {
    let (api, _files, hub) = setup(&[]).await;
    api.create(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "lb-cloud", "namespace": "default",
        "annotations": {"svc.openyurt.io/discard": "true"}},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}))
    .expect("svc");
    api.create(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
        "spec": {"ports": [{"port": 80}]}}))
    .expect("svc");

    // kube-proxy's list comes from the multiplexer's shared watch, which
    // sees the two creations a moment later, in order: once "web" (created
    // second) is there, "lb-cloud" would be too, were it not filtered.
    eventually(
        Duration::from_secs(5),
        "the multiplexer to see both services",
        || async {
            let (code, list) = get_json(&hub, "/api/v1/services", KUBE_PROXY).await;
            code == StatusCode::OK && names(&list).contains(&"web".to_string())
        },
    )
    .await;
    let (code, list) = get_json(&hub, "/api/v1/services", KUBE_PROXY).await;
    assert_eq!(code, StatusCode::OK);
    let n = names(&list);
    assert!(
        n.contains(&"web".to_string()) && !n.contains(&"lb-cloud".to_string()),
        "{n:?}"
    );
    // Other components see everything.
    let (_, list) = get_json(&hub, "/api/v1/services", "curl/8").await;
    assert!(names(&list).contains(&"lb-cloud".to_string()));

    // The cache holds the filtered form: offline, kube-proxy still does not see it.
    api.shutdown().await;
    eventually(
        Duration::from_secs(8),
        "offline list from the cache",
        || async {
            let (code, list) = get_json(&hub, "/api/v1/services", KUBE_PROXY).await;
            code == StatusCode::OK && names(&list).contains(&"web".to_string())
        },
    )
    .await;
    let (_, list) = get_json(&hub, "/api/v1/services", KUBE_PROXY).await;
    assert!(
        !names(&list).contains(&"lb-cloud".to_string()),
        "offline: {list}"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_proxy_configmap_uses_in_cluster_config_for_kubelet() {
    let (api, _files, hub) = setup(&[]).await;
    api.create(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kube-proxy", "namespace": "kube-system"},
        "data": {"config.conf": "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nclientConnection:\n  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf\nmode: iptables\n"}}))
    .expect("cm");
    let (code, cm) = get_json(
        &hub,
        "/api/v1/namespaces/kube-system/configmaps/kube-proxy",
        KUBELET,
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    let conf = cm["data"]["config.conf"].as_str().unwrap();
    assert!(
        conf.contains("#kubeconfig: /var/lib/kube-proxy/kubeconfig.conf")
            || conf.contains("# kubeconfig:"),
        "{conf}"
    );
    assert!(conf.contains("mode: iptables"));
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_kernel_redirect_kubelet_sees_the_hub_as_the_kubernetes_service() {
    // --redirect-mode=none (the test default): masterservice rewrites default/kubernetes for kubelet.
    // (A fixed secure port: the rewrite names the configured one.)
    let secure_port = format!("--proxy-secure-port={}", yurthub_e2e::hub::free_port());
    let (_api, _files, hub) = setup(&[&secure_port]).await;
    let (_, list) = get_json(&hub, "/api/v1/services", KUBELET).await;
    let k = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["metadata"]["name"] == "kubernetes")
        .unwrap()
        .clone();
    assert_eq!(k["spec"]["clusterIP"], hub.secure.ip().to_string(), "{k}");
    let https = k["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "https")
        .unwrap();
    assert_eq!(https["port"], hub.secure.port());
    hub.stop().await;
    // With --redirect-mode=ebpf nothing is rewritten: see tests/vip.rs, where
    // the redirect can really be installed in a sandbox.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_topology_keeps_only_this_nodes_endpoints() {
    let (api, _files, hub) = setup(&[]).await;
    api.create(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "local", "namespace": "default",
        "annotations": {"openyurt.io/topologyKeys": "kubernetes.io/hostname"}}, "spec": {"ports": [{"port": 80}]}}))
    .expect("svc");
    api.create(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "local-abc", "namespace": "default", "labels": {"kubernetes.io/service-name": "local"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.1"], "nodeName": NODE}, {"addresses": ["10.0.0.2"], "nodeName": "other-node"}],
        "ports": [{"port": 80}]}))
    .expect("slice");
    // The filter learns Services from the cloud in the background.
    eventually(
        Duration::from_secs(10),
        "only this node's endpoint",
        || async {
            let (_, slice) = get_json(
                &hub,
                "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
                KUBE_PROXY,
            )
            .await;
            let eps = slice["items"]
                .as_array()
                .and_then(|a| a.iter().find(|s| s["metadata"]["name"] == "local-abc"))
                .map(|s| s["endpoints"].clone());
            eps.is_some_and(|e| {
                e.as_array()
                    .is_some_and(|a| a.len() == 1 && a[0]["nodeName"] == NODE)
            })
        },
    )
    .await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_lists_from_the_cloud_are_decoded_filtered_and_cached() {
    let (api, _files, hub) = setup(&[]).await;
    // Big enough that the apiserver compresses it (> 128 KiB).
    for i in 0..80 {
        api.create(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("big-{i}"), "namespace": "default",
            "annotations": {"padding": "x".repeat(3000)}},
            "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "busybox"}]}}))
        .expect("pod");
    }
    let path = format!("{}/api/v1/namespaces/default/pods", hub.proxy_url());
    let c = plain_client();
    let r = send(
        &c,
        Method::GET,
        &path,
        &[
            ("user-agent", KUBELET),
            ("accept", "application/json"),
            ("accept-encoding", "gzip"),
        ],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.headers.get("content-encoding").is_none(),
        "decoded on the hub"
    );
    let list: Value = serde_json::from_slice(&r.body).expect("plain JSON");
    assert_eq!(names(&list).len(), 80);
    assert!(
        api.requests()
            .iter()
            .any(|q| q.path == "/api/v1/namespaces/default/pods"),
        "went upstream"
    );

    api.shutdown().await;
    eventually(
        Duration::from_secs(8),
        "the gzip list was cached",
        || async {
            let r = send(
                &c,
                Method::GET,
                &path,
                &[("user-agent", KUBELET), ("accept", "application/json")],
                Bytes::new(),
            )
            .await;
            r.status == StatusCode::OK
                && serde_json::from_slice::<Value>(&r.body).is_ok_and(|l| names(&l).len() == 80)
        },
    )
    .await;
    hub.stop().await;
}
