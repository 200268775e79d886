//! Shared by the cache and offline tests (and the bench-cache binary): an
//! apiserver double speaking protobuf through yurthub's codec, typical node
//! component traffic, and helpers to watch the hub's cache fill.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use yurthub_e2e::apiserver::{ApiServer, ProtobufCodec};
use yurthub_e2e::hub::{NODE, PlainClient, Reply, eventually, get, send};
use yurthub_e2e::pki::TestPki;

pub const KUBELET: &str = "kubelet/v1.34.0 (linux/amd64) kubernetes/abcdef";
pub const KUBE_PROXY: &str = "kube-proxy/v1.34.0 (linux/amd64) kubernetes/abcdef";
pub const COREDNS: &str = "coredns/1.11.3 (linux/amd64)";
pub const PROTOBUF_ACCEPT: &str = "application/vnd.kubernetes.protobuf,application/json";
pub const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

/// The double's protobuf, through yurthub's own codec.
pub struct HubCodec;

impl ProtobufCodec for HubCodec {
    fn encode_object(&self, api_version: &str, kind: &str, obj: &Value) -> Result<Vec<u8>, String> {
        yurthub::codec::to_protobuf(api_version, kind, obj).map_err(|e| e.to_string())
    }
    fn decode_object(&self, bytes: &[u8]) -> Result<Value, String> {
        yurthub::codec::to_json(bytes).map_err(|e| e.to_string())
    }
}

pub async fn double(pki: &Arc<TestPki>) -> ApiServer {
    let s = ApiServer::builder()
        .pki(pki.clone())
        .protobuf(Arc::new(HubCodec))
        .bookmark_interval(Duration::from_secs(1))
        .start()
        .await
        .expect("double starts");
    s.create(json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}}}))
        .expect("node");
    s
}

pub fn pod(ns: &str, name: &str, node: &str, app: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

pub fn service(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 53, "protocol": "UDP"}]}
    })
}

pub fn endpointslice(ns: &str, name: &str, svc: &str) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.0.5"], "conditions": {"ready": true}, "nodeName": NODE}],
        "ports": [{"port": 53, "protocol": "UDP"}]
    })
}

/// GET with an Accept header.
pub async fn get_as(c: &PlainClient, url: &str, ua: &str, accept: &str) -> Reply {
    send(
        c,
        http::Method::GET,
        url,
        &[("user-agent", ua), ("accept", accept)],
        bytes::Bytes::new(),
    )
    .await
}

/// The hub's `/v1/cache` document.
pub async fn cache_doc(c: &PlainClient, hub_url: &str) -> Value {
    get(c, &format!("{hub_url}/v1/cache"), "test").await.json()
}

/// Waits until the cache holds at least `n` objects and its writes settled.
pub async fn wait_objects(c: &PlainClient, hub_url: &str, n: u64) {
    eventually(
        Duration::from_secs(15),
        &format!("{n} objects cached"),
        || async { cache_doc(c, hub_url).await["objects"].as_u64().unwrap_or(0) >= n },
    )
    .await;
}

/// Waits until a request is answered from the cache (the hub noticed the
/// cloud is gone or the fallback answers).
pub async fn wait_offline(c: &PlainClient, hub_url: &str, server: &str) {
    eventually(
        Duration::from_secs(15),
        "hub sees the cloud down",
        || async {
            let m = get(c, &format!("{hub_url}/metrics"), "test").await.text();
            m.lines().any(|l| {
                l.starts_with("node_yurthub_server_healthy_status")
                    && l.contains(server)
                    && l.trim_end().ends_with(" 0")
            })
        },
    )
    .await;
}

/// A body decoded from JSON or protobuf by its Content-Type.
pub fn decode(r: &Reply) -> Value {
    let ct = r
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct.starts_with(PROTOBUF) {
        yurthub::codec::to_json(&r.body)
            .unwrap_or_else(|e| panic!("protobuf body does not decode: {e}"))
    } else {
        r.json()
    }
}

pub fn names(list: &Value) -> Vec<String> {
    let mut v: Vec<String> = list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|i| {
            i["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    v.sort();
    v
}
