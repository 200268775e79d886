//! Autonomy across an offline restart: the node's pods come back with new
//! IPs and kubelet reports them in status patches the hub applies to its
//! cache; every component that reads EndpointSlices or Endpoints offline
//! (kube-proxy and coredns, through the multiplexer and through the cache)
//! sees the new addresses and readiness, in JSON and in protobuf, and the
//! cloud's copy wins again when the cloud is back.

mod cache_support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cache_support::*;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use yurthub_e2e::apiserver::ApiServer;
use yurthub_e2e::hub::{Hub, HubFiles, NODE, PlainClient, eventually, get, plain_client, send};
use yurthub_e2e::pki::TestPki;

const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const ENDPOINTS: &str = "/api/v1/endpoints";

fn running_pod(name: &str, ip: &str) -> Value {
    let mut p = pod("default", name, NODE, "web");
    p["status"]["podIP"] = json!(ip);
    p["status"]["podIPs"] = json!([{"ip": ip}]);
    p
}

fn target(name: &str, uid: Option<&str>) -> Value {
    let mut t = json!({"kind": "Pod", "namespace": "default", "name": name});
    if let Some(uid) = uid {
        t["uid"] = json!(uid);
    }
    t
}

/// The cloud's objects: pods web-0 and web-1 on this node, the `web`
/// Service's slice and Endpoints naming them (web-0 by uid, web-1 by name),
/// a pod gone from the node (`ghost`) and one on another node.
fn populate(api: &ApiServer) -> (String, String) {
    for (name, ip) in [("web-0", "10.244.0.5"), ("web-1", "10.244.0.6")] {
        // The apiserver resets the status of a created pod: kubelet sets it.
        let created = api.create(running_pod(name, ip)).expect("pod");
        let mut running = running_pod(name, ip);
        running["metadata"] = created["metadata"].clone();
        api.update_status(running).expect("pod status");
    }
    let uid = |name: &str| {
        api.get("v1", "Pod", "default", name).expect("pod")["metadata"]["uid"]
            .as_str()
            .expect("uid")
            .to_owned()
    };
    let (uid0, uid1) = (uid("web-0"), uid("web-1"));
    let entry = |ip: &str, node: &str, t: Value| {
        json!({"addresses": [ip], "conditions": {"ready": true, "serving": true, "terminating": false},
            "nodeName": node, "targetRef": t})
    };
    api.create(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-x", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [
            entry("10.244.0.5", NODE, target("web-0", Some(&uid0))),
            entry("10.244.0.6", NODE, target("web-1", None)),
            entry("10.244.0.7", NODE, target("ghost", Some("0b7e3c1a-0000-4000-8000-000000000000"))),
            entry("10.244.1.3", "node2", target("remote", Some("0b7e3c1a-0000-4000-8000-000000000001"))),
        ],
        "ports": [{"port": 80, "protocol": "TCP", "name": "http"}]
    }))
    .expect("slice");
    let addr = |ip: &str, node: &str, t: Value| json!({"ip": ip, "nodeName": node, "targetRef": t});
    api.create(json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "web", "namespace": "default"},
        "subsets": [{
            "addresses": [
                addr("10.244.0.5", NODE, target("web-0", Some(&uid0))),
                addr("10.244.0.6", NODE, target("web-1", None)),
                addr("10.244.0.7", NODE, target("ghost", None)),
            ],
            "ports": [{"port": 80, "protocol": "TCP", "name": "http"}]
        }]
    }))
    .expect("endpoints");
    (uid0, uid1)
}

/// What kubelet's status manager sends when a pod's IP changes (a two-way
/// strategic merge patch of the old and new status), optionally with a
/// new Ready condition.
async fn kubelet_status_patch(
    c: &PlainClient,
    hub: &str,
    name: &str,
    old: &str,
    new: &str,
    ready: bool,
) {
    let mut status = json!({
        "$setElementOrder/podIPs": [{"ip": new}],
        "podIPs": [{"ip": new}, {"$patch": "delete", "ip": old}],
        "podIP": new,
    });
    if old == new {
        status = json!({});
    }
    status["$setElementOrder/conditions"] = json!([{"type": "Ready"}]);
    status["conditions"] =
        json!([{"type": "Ready", "status": if ready { "True" } else { "False" }}]);
    let r = send(
        c,
        Method::PATCH,
        &format!("{hub}/api/v1/namespaces/default/pods/{name}/status"),
        &[
            ("user-agent", KUBELET),
            ("content-type", "application/strategic-merge-patch+json"),
            ("accept", "application/json"),
        ],
        Bytes::from(json!({"status": status}).to_string()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["status"]["podIP"], new, "{}", r.text());
}

async fn read(c: &PlainClient, url: &str, ua: &str, protobuf: bool) -> Value {
    let r = if protobuf {
        get_as(c, url, ua, PROTOBUF_ACCEPT).await
    } else {
        get(c, url, ua).await
    };
    assert_eq!(r.status, StatusCode::OK, "{url} as {ua}: {}", r.text());
    let ct = r.headers["content-type"]
        .to_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        ct.starts_with(PROTOBUF),
        protobuf,
        "{url} answered in the format asked for: {ct}"
    );
    decode(&r)
}

fn web_x(list: &Value) -> &Value {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|s| s["metadata"]["name"] == "web-x")
        .unwrap_or_else(|| panic!("web-x listed: {list}"))
}

/// (addresses, ready) of each entry of the `web-x` slice, by target name.
fn slice_view(list: &Value) -> Vec<(String, Vec<String>, bool)> {
    web_x(list)["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| {
            (
                e["targetRef"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                e["addresses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| a.as_str().unwrap_or_default().to_owned())
                    .collect(),
                e["conditions"]["ready"] == true,
            )
        })
        .collect()
}

/// (ready, not ready) addresses of the `web` Endpoints as `name=ip`.
fn endpoints_view(ep: &Value) -> (Vec<String>, Vec<String>) {
    let subset = &ep["subsets"][0];
    let side = |key: &str| {
        let mut v: Vec<String> = subset[key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                format!(
                    "{}={}",
                    a["targetRef"]["name"].as_str().unwrap_or_default(),
                    a["ip"].as_str().unwrap_or_default()
                )
            })
            .collect();
        v.sort();
        v
    };
    (side("addresses"), side("notReadyAddresses"))
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// Online traffic: kubelet's pods (protobuf), kube-proxy's and coredns'
/// slices, coredns' Endpoints (list and get).
async fn fill(c: &PlainClient, hub: &str) {
    let r = get_as(
        c,
        &format!("{hub}/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE}"),
        KUBELET,
        PROTOBUF_ACCEPT,
    )
    .await;
    assert_eq!(names(&decode(&r)), ["web-0", "web-1"]);
    read(c, &format!("{hub}{SLICES}"), KUBE_PROXY, false).await;
    read(c, &format!("{hub}{SLICES}"), COREDNS, true).await;
    read(c, &format!("{hub}{ENDPOINTS}"), COREDNS, false).await;
    read(
        c,
        &format!("{hub}/api/v1/namespaces/default/endpoints/web"),
        COREDNS,
        true,
    )
    .await;
}

async fn start(pki: &Arc<TestPki>, extra: &[&str]) -> (ApiServer, HubFiles, Hub, PlainClient) {
    let api = double(pki).await;
    let files = HubFiles::new(pki);
    let hub = Hub::start(&files.args(&[api.url()], extra)).await;
    (api, files, hub, plain_client())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_offline_restart_and_a_status_patch_every_component_sees_the_new_ip() {
    let pki = Arc::new(TestPki::new().expect("pki"));
    let (api, files, hub, c) = start(&pki, &[]).await;
    populate(&api);
    let p = hub.proxy_url();
    fill(&c, &p).await;
    // 2 pods, the multiplexer's slice, coredns' Endpoints.
    wait_objects(&c, &hub.hub_url(), 4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.shutdown().await;
    wait_offline(&c, &hub.hub_url(), &api.url()).await;

    // Offline, before any restart: web-0 comes back with a new IP. The
    // multiplexer (ready since it listed online) serves the new address.
    kubelet_status_patch(&c, &p, "web-0", "10.244.0.5", "10.244.0.9", true).await;
    let list = read(&c, &format!("{p}{SLICES}"), KUBE_PROXY, false).await;
    assert_eq!(
        slice_view(&list)[0],
        ("web-0".into(), s(&["10.244.0.9"]), true),
        "{list}"
    );

    // Restart the hub offline; then web-1 restarts too, with a new IP, and
    // is not ready yet.
    let args = files.args(&[api.url()], &[]);
    hub.stop().await;
    let hub = Hub::start(&args).await;
    let p = hub.proxy_url();
    kubelet_status_patch(&c, &p, "web-1", "10.244.0.6", "10.244.0.10", false).await;

    let want = vec![
        ("web-0".to_owned(), s(&["10.244.0.9"]), true),
        ("web-1".to_owned(), s(&["10.244.0.10"]), false),
        ("ghost".to_owned(), s(&["10.244.0.7"]), false),
        ("remote".to_owned(), s(&["10.244.1.3"]), true),
    ];
    eventually(
        Duration::from_secs(10),
        "kube-proxy's slices are served after the offline restart",
        || async { get(&c, &format!("{p}{SLICES}"), KUBE_PROXY).await.status == StatusCode::OK },
    )
    .await;
    for (ua, protobuf) in [
        (KUBE_PROXY, false),
        (KUBE_PROXY, true),
        (COREDNS, true),
        (COREDNS, false),
    ] {
        let list = read(&c, &format!("{p}{SLICES}"), ua, protobuf).await;
        assert_eq!(slice_view(&list), want, "{ua} protobuf={protobuf}: {list}");
        let text = list.to_string();
        for old in ["10.244.0.5", "10.244.0.6"] {
            assert!(!text.contains(old), "{ua} still sees {old}: {text}");
        }
    }
    // Endpoints (served from coredns' own cache), list and get, both formats.
    let want_ep = (
        s(&["web-0=10.244.0.9"]),
        s(&["ghost=10.244.0.7", "web-1=10.244.0.10"]),
    );
    for protobuf in [false, true] {
        let list = read(&c, &format!("{p}{ENDPOINTS}"), COREDNS, protobuf).await;
        let web = list["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|e| e["metadata"]["name"] == "web")
            .cloned()
            .expect("web listed");
        assert_eq!(endpoints_view(&web), want_ep, "list protobuf={protobuf}");
        let one = read(
            &c,
            &format!("{p}/api/v1/namespaces/default/endpoints/web"),
            COREDNS,
            protobuf,
        )
        .await;
        assert_eq!(endpoints_view(&one), want_ep, "get protobuf={protobuf}");
        assert_eq!(one["subsets"][0]["ports"][0]["port"], 80);
    }

    // The cloud comes back with its own view (its controller moved web-0
    // elsewhere meanwhile): the cloud's copy replaces the local one.
    let mut slice = api
        .get("discovery.k8s.io/v1", "EndpointSlice", "default", "web-x")
        .expect("slice");
    slice["endpoints"][0]["addresses"] = json!(["10.244.0.42"]);
    api.update(slice).expect("cloud updates its slice");
    api.restart().await.expect("double restarts");
    let cloud = vec![
        ("web-0".to_owned(), s(&["10.244.0.42"]), true),
        ("web-1".to_owned(), s(&["10.244.0.6"]), true),
        ("ghost".to_owned(), s(&["10.244.0.7"]), true),
        ("remote".to_owned(), s(&["10.244.1.3"]), true),
    ];
    eventually(
        Duration::from_secs(20),
        "the cloud's slices replace the local view",
        || async {
            let r = get(&c, &format!("{p}{SLICES}"), KUBE_PROXY).await;
            r.status == StatusCode::OK && slice_view(&r.json()) == cloud
        },
    )
    .await;
    let list = read(&c, &format!("{p}{SLICES}"), COREDNS, true).await;
    assert_eq!(slice_view(&list), cloud, "coredns, protobuf, online");
    let one = read(
        &c,
        &format!("{p}/api/v1/namespaces/default/endpoints/web"),
        COREDNS,
        false,
    )
    .await;
    assert_eq!(
        endpoints_view(&one),
        (
            s(&["ghost=10.244.0.7", "web-0=10.244.0.5", "web-1=10.244.0.6"]),
            s(&[])
        ),
        "online Endpoints are the cloud's"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_whose_ready_turns_false_offline_is_not_ready_in_its_slice() {
    // Without the multiplexer, kube-proxy's slices come from its own cache.
    let pki = Arc::new(TestPki::new().expect("pki"));
    let (api, _files, hub, c) = start(&pki, &["--pool-scope-resources="]).await;
    populate(&api);
    let p = hub.proxy_url();
    fill(&c, &p).await;
    // 2 pods, kube-proxy's and coredns' slices, coredns' Endpoints.
    wait_objects(&c, &hub.hub_url(), 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.shutdown().await;
    wait_offline(&c, &hub.hub_url(), &api.url()).await;

    // Before any change, the offline view is the cloud's last one, except
    // for the entry whose pod is gone from the node.
    let list = read(&c, &format!("{p}{SLICES}"), KUBE_PROXY, false).await;
    assert_eq!(
        slice_view(&list)[..3],
        [
            ("web-0".to_owned(), s(&["10.244.0.5"]), true),
            ("web-1".to_owned(), s(&["10.244.0.6"]), true),
            ("ghost".to_owned(), s(&["10.244.0.7"]), false),
        ]
    );
    // web-0's readiness probe fails; its IP stays.
    kubelet_status_patch(&c, &p, "web-0", "10.244.0.5", "10.244.0.5", false).await;
    for (ua, protobuf) in [(KUBE_PROXY, false), (KUBE_PROXY, true), (COREDNS, true)] {
        let list = read(&c, &format!("{p}{SLICES}"), ua, protobuf).await;
        let view = slice_view(&list);
        assert_eq!(
            view[0],
            ("web-0".into(), s(&["10.244.0.5"]), false),
            "{ua} protobuf={protobuf}"
        );
        assert_eq!(view[1], ("web-1".into(), s(&["10.244.0.6"]), true));
        assert_eq!(web_x(&list)["endpoints"][0]["conditions"]["serving"], false);
    }
    let ep = read(
        &c,
        &format!("{p}/api/v1/namespaces/default/endpoints/web"),
        COREDNS,
        true,
    )
    .await;
    assert_eq!(
        endpoints_view(&ep),
        (
            s(&["web-1=10.244.0.6"]),
            s(&["ghost=10.244.0.7", "web-0=10.244.0.5"])
        )
    );
    // Ready again: back in the ready set.
    kubelet_status_patch(&c, &p, "web-0", "10.244.0.5", "10.244.0.5", true).await;
    let list = read(&c, &format!("{p}{SLICES}"), KUBE_PROXY, false).await;
    assert_eq!(
        slice_view(&list)[0],
        ("web-0".into(), s(&["10.244.0.5"]), true)
    );
    hub.stop().await;
}
