//! Endpoints that follow the node's pods while the cloud is away.
//!
//! Offline, cached EndpointSlices and Endpoints hold the addresses the cloud
//! last sent. After an offline reboot the node's pods come back with new IPs
//! (OpenYurt #2809, #2810). Kubelet reports those IPs in pod status patches,
//! and the hub applies the patches to its cached pods. So every offline
//! answer of an EndpointSlice or Endpoints object is rewritten on read, from
//! kubelet's cached pods:
//!
//! * an entry whose `targetRef` is a pod of this node (matched by uid, else by
//!   namespace/name) gets the pod's current addresses of the slice's family;
//! * its readiness follows the pod's Ready condition (`conditions` in slices;
//!   `addresses` vs `notReadyAddresses` in Endpoints);
//! * an entry on this node whose pod kubelet no longer has is not ready.
//!
//! Nothing is written, so there is nothing to recover after a crash: the pods
//! are in the crash-safe store already. Online answers (the cloud's copy) are
//! never rewritten, so the cloud's copy wins again as soon as it is back.

use std::collections::HashMap;
use std::net::IpAddr;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::keys;
use crate::storage::{Gvr, ResourceKey, Space, Store, StoredObject};

/// The component whose cached pods say what runs on this node.
const KUBELET: &str = "kubelet";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading kubelet's cached pods: {0}")]
    Store(#[from] crate::storage::Error),
    #[error("{what} is stored in a format the hub cannot read")]
    Format { what: String },
    #[error("{what}: {source}")]
    Codec {
        what: String,
        source: crate::codec::CodecError,
    },
}

/// Whether entries of this resource follow pods.
pub fn follows(group: &str, resource: &str) -> bool {
    matches!(
        (group, resource),
        ("discovery.k8s.io", "endpointslices") | ("", "endpoints")
    )
}

fn follows_kind(api_version: &str, kind: &str) -> bool {
    matches!(
        (api_version, kind),
        ("discovery.k8s.io/v1", "EndpointSlice") | ("v1", "Endpoints")
    )
}

/// What an endpoint entry should say about one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodState {
    ips: Vec<IpAddr>,
    ready: bool,
    terminating: bool,
}

/// Kubelet's view of the pods on this node, from the cache.
#[derive(Debug, Default)]
pub struct NodePods {
    node: String,
    by_uid: HashMap<String, usize>,
    by_name: HashMap<(String, String), usize>,
    pods: Vec<PodState>,
}

impl NodePods {
    /// The pods kubelet cached for `node`; None when kubelet never listed
    /// its pods through the hub: then nothing is known and nothing changes.
    pub fn load(store: &Store, node: &str) -> Result<Option<NodePods>, Error> {
        let resource = ResourceKey::new(KUBELET, Space::Full, Gvr::new("", "v1", "pods"));
        let scope = resource.scope(None, "");
        let listing = store.list(&scope, |m| {
            m.fields.get("spec.nodeName").map(String::as_str) == Some(node)
        })?;
        let Some(listing) = listing else {
            return Ok(None);
        };
        let mut pods = NodePods {
            node: node.to_owned(),
            ..NodePods::default()
        };
        for stored in &listing.items {
            let pod = decode(stored)?;
            pods.insert(&pod);
        }
        Ok(Some(pods))
    }

    /// Builds the view from pod objects (JSON form).
    pub fn from_pods<'a>(node: &str, pods: impl IntoIterator<Item = &'a Value>) -> NodePods {
        let mut out = NodePods {
            node: node.to_owned(),
            ..NodePods::default()
        };
        for p in pods {
            out.insert(p);
        }
        out
    }

    fn insert(&mut self, pod: &Value) {
        let meta = &pod["metadata"];
        let status = &pod["status"];
        let mut ips: Vec<IpAddr> = status["podIPs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["ip"].as_str()?.parse().ok())
            .collect();
        if ips.is_empty()
            && let Some(ip) = status["podIP"].as_str().and_then(|s| s.parse().ok())
        {
            ips.push(ip);
        }
        let condition_ready = status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        let finished = matches!(status["phase"].as_str(), Some("Succeeded" | "Failed"));
        let state = PodState {
            ips,
            ready: condition_ready && !finished,
            terminating: !meta["deletionTimestamp"].is_null(),
        };
        let i = self.pods.len();
        self.pods.push(state);
        if let Some(uid) = meta["uid"].as_str().filter(|u| !u.is_empty()) {
            self.by_uid.insert(uid.to_owned(), i);
        }
        let ns = meta["namespace"].as_str().unwrap_or_default().to_owned();
        let name = meta["name"].as_str().unwrap_or_default().to_owned();
        self.by_name.insert((ns, name), i);
    }

    /// The pod an entry points at: by uid when both carry one, else by
    /// namespace/name. None for entries that are not pods.
    fn target(&self, target_ref: &Value, object_ns: &str) -> Target<'_> {
        if target_ref.get("kind").and_then(Value::as_str) != Some("Pod") {
            return Target::NotAPod;
        }
        let uid = target_ref["uid"].as_str().filter(|u| !u.is_empty());
        let ns = target_ref["namespace"]
            .as_str()
            .filter(|n| !n.is_empty())
            .unwrap_or(object_ns);
        let name = target_ref["name"].as_str().unwrap_or_default();
        let by_name = self.by_name.get(&(ns.to_owned(), name.to_owned()));
        let found = match uid {
            // A pod recreated under the same name is another pod.
            Some(uid) => self.by_uid.get(uid),
            None => by_name,
        };
        match found {
            Some(i) => Target::Pod(&self.pods[*i]),
            None => Target::Gone,
        }
    }

    /// Entries on this node: their pod must be among kubelet's.
    fn on_this_node(&self, entry: &Value) -> bool {
        entry["nodeName"].as_str() == Some(self.node.as_str())
    }

    /// Rewrites one EndpointSlice or Endpoints object (JSON form) in place;
    /// true when anything changed.
    pub fn apply(&self, kind: &str, object: &mut Value) -> bool {
        let before = object.clone();
        match kind {
            "EndpointSlice" => self.slice(object),
            "Endpoints" => self.endpoints(object),
            _ => return false,
        }
        *object != before
    }

    /// [`NodePods::apply`] to a JSON body carrying its kind; the new body
    /// when anything changed.
    pub fn apply_json(&self, json: &[u8]) -> Option<Vec<u8>> {
        let mut value: Value = serde_json::from_slice(json).ok()?;
        let kind = value["kind"].as_str().unwrap_or_default().to_owned();
        if !self.apply(&kind, &mut value) {
            return None;
        }
        serde_json::to_vec(&value).ok()
    }

    fn slice(&self, slice: &mut Value) {
        let ns = slice["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let family = match slice["addressType"].as_str() {
            Some("IPv4") => Family::V4,
            Some("IPv6") => Family::V6,
            _ => return, // FQDN slices name no pod addresses
        };
        let Some(endpoints) = slice.get_mut("endpoints").and_then(Value::as_array_mut) else {
            return;
        };
        for ep in endpoints {
            let (ready, serving, terminating) = match self.target(&ep["targetRef"], &ns) {
                Target::NotAPod => continue,
                Target::Gone if !self.on_this_node(ep) => continue,
                Target::Gone => (false, false, None),
                Target::Pod(pod) => {
                    let ips: Vec<Value> = pod
                        .ips
                        .iter()
                        .filter(|ip| family.has(ip))
                        .map(|ip| Value::String(ip.to_string()))
                        .collect();
                    if !ips.is_empty() {
                        ep["addresses"] = Value::Array(ips);
                    }
                    (
                        pod.ready && !pod.terminating,
                        pod.ready,
                        Some(pod.terminating),
                    )
                }
            };
            let conditions = ep
                .as_object_mut()
                .map(|m| m.entry("conditions").or_insert_with(|| Map::new().into()));
            if let Some(Value::Object(c)) = conditions {
                c.insert("ready".into(), ready.into());
                c.insert("serving".into(), serving.into());
                if let Some(t) = terminating {
                    c.insert("terminating".into(), t.into());
                }
            }
        }
    }

    fn endpoints(&self, endpoints: &mut Value) {
        let ns = endpoints["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let Some(subsets) = endpoints.get_mut("subsets").and_then(Value::as_array_mut) else {
            return;
        };
        for subset in subsets {
            let Some(s) = subset.as_object_mut() else {
                continue;
            };
            let mut ready = Vec::new();
            let mut not_ready = Vec::new();
            let take = |s: &mut Map<String, Value>, key: &str| match s.remove(key) {
                Some(Value::Array(a)) => a,
                _ => Vec::new(),
            };
            let entries = take(s, "addresses")
                .into_iter()
                .map(|a| (true, a))
                .chain(take(s, "notReadyAddresses").into_iter().map(|a| (false, a)));
            for (was_ready, mut address) in entries {
                let now_ready = match self.target(&address["targetRef"], &ns) {
                    Target::NotAPod => was_ready,
                    Target::Gone if !self.on_this_node(&address) => was_ready,
                    Target::Gone => false,
                    Target::Pod(pod) => {
                        // Endpoints carry one address per entry: keep its family.
                        let family = address["ip"]
                            .as_str()
                            .and_then(|ip| ip.parse::<IpAddr>().ok())
                            .map(|ip| Family::of(&ip));
                        if let Some(ip) = pod.ips.iter().find(|ip| family.is_none_or(|f| f.has(ip)))
                        {
                            address["ip"] = Value::String(ip.to_string());
                        }
                        pod.ready && !pod.terminating
                    }
                };
                if now_ready {
                    ready.push(address);
                } else {
                    not_ready.push(address);
                }
            }
            if !ready.is_empty() {
                s.insert("addresses".into(), Value::Array(ready));
            }
            if !not_ready.is_empty() {
                s.insert("notReadyAddresses".into(), Value::Array(not_ready));
            }
        }
    }
}

enum Target<'a> {
    NotAPod,
    Gone,
    Pod(&'a PodState),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    fn has(self, ip: &IpAddr) -> bool {
        Family::of(ip) == self
    }
}

fn decode(stored: &StoredObject) -> Result<Value, Error> {
    let what = stored.key.to_string();
    let format = keys::from_store_format(stored.object.format)
        .ok_or_else(|| Error::Format { what: what.clone() })?;
    format
        .decode_object(&stored.object.body)
        .map_err(|source| Error::Codec { what, source })
}

/// One cached EndpointSlice or Endpoints as this node's pods say it is now:
/// decoded, rewritten and re-encoded in its stored format; None when it
/// needs no change.
fn rewrite(pods: &NodePods, stored: &StoredObject) -> Result<Option<StoredObject>, Error> {
    let meta = &stored.object.meta;
    let mut value = decode(stored)?;
    if !pods.apply(&meta.kind, &mut value) {
        return Ok(None);
    }
    let what = stored.key.to_string();
    let format = keys::from_store_format(stored.object.format)
        .ok_or_else(|| Error::Format { what: what.clone() })?;
    let body = format
        .encode_object(&meta.api_version, &meta.kind, &value)
        .map_err(|source| Error::Codec { what, source })?;
    let mut out = stored.clone();
    out.object.body = Bytes::from(body);
    Ok(Some(out))
}

/// The offline answer's objects with endpoint entries following the node's
/// pods. Anything that cannot be read is served as cached (with a warning):
/// the cloud's last word beats no answer.
pub fn follow(store: &Store, node: &str, items: Vec<StoredObject>) -> Vec<StoredObject> {
    if !items
        .iter()
        .any(|s| follows_kind(&s.object.meta.api_version, &s.object.meta.kind))
    {
        return items;
    }
    let pods = match NodePods::load(store, node) {
        Ok(Some(p)) => p,
        Ok(None) => return items,
        Err(e) => {
            tracing::warn!(error = %e, "endpoints served as cached: kubelet's pods are unreadable");
            return items;
        }
    };
    items
        .into_iter()
        .map(|s| {
            if !follows_kind(&s.object.meta.api_version, &s.object.meta.kind) {
                return s;
            }
            match rewrite(&pods, &s) {
                Ok(Some(new)) => {
                    tracing::debug!(key = %s.key, "endpoints follow the node's pods");
                    new
                }
                Ok(None) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "endpoints served as cached");
                    s
                }
            }
        })
        .collect()
}

/// Where the multiplexer reads the node's pods from when it serves
/// EndpointSlices or Endpoints offline.
#[derive(Clone)]
pub struct Source {
    store: Store,
    node: String,
}

impl Source {
    pub fn new(cache: &super::CacheManager) -> Source {
        Source {
            store: cache.store().clone(),
            node: cache.node().to_owned(),
        }
    }

    /// The node's pods for one offline answer of `group`/`resource`; None
    /// when entries of that resource do not follow pods or nothing is known.
    pub fn for_resource(&self, group: &str, resource: &str) -> Option<NodePods> {
        if !follows(group, resource) {
            return None;
        }
        match NodePods::load(&self.store, &self.node) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "endpoints served as cached");
                None
            }
        }
    }
}

/// The hook of offline answers ([`super::local`]): a get or list of
/// EndpointSlices or Endpoints by any component but the multiplexer, whose
/// cacher must keep the cached copy (it follows the pods itself when it
/// serves offline, and must hold the cloud's copy when the cloud is back).
pub fn offline(
    cache: &super::CacheManager,
    group: &str,
    resource: &str,
    component: &str,
    items: Vec<StoredObject>,
) -> Vec<StoredObject> {
    if !changes_offline(group, resource, component) {
        return items;
    }
    follow(cache.store(), cache.node(), items)
}

/// Whether [`offline`] may change what this component gets of this
/// resource (otherwise its objects are answered as stored).
pub fn changes_offline(group: &str, resource: &str, component: &str) -> bool {
    follows(group, resource) && !component.starts_with("multiplexer-proxy")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(name: &str, uid: &str, ips: &[&str], ready: bool) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "uid": uid},
            "spec": {"nodeName": "n1"},
            "status": {
                "phase": "Running",
                "podIP": ips.first(),
                "podIPs": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]
            }
        })
    }

    fn entry(ip: &str, name: &str, uid: Option<&str>, node: &str) -> Value {
        let mut target = json!({"kind": "Pod", "namespace": "default", "name": name});
        if let Some(uid) = uid {
            target["uid"] = json!(uid);
        }
        json!({"addresses": [ip], "conditions": {"ready": true, "serving": true, "terminating": false},
            "nodeName": node, "targetRef": target})
    }

    #[test]
    fn slices_take_the_pods_addresses_and_readiness() {
        let p1 = pod("web-0", "u0", &["10.0.0.9", "fd00::9"], true);
        let p2 = pod("web-1", "u1", &["10.0.0.8"], false);
        let pods = NodePods::from_pods("n1", [&p1, &p2]);
        let mut slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "s", "namespace": "default"},
            "addressType": "IPv4",
            "endpoints": [
                entry("10.0.0.5", "web-0", Some("u0"), "n1"),
                entry("10.0.0.6", "web-1", None, "n1"),
                entry("10.0.0.7", "ghost", Some("u9"), "n1"),
                entry("10.1.0.7", "remote", Some("u8"), "n2"),
                // Same name, another uid: a pod that no longer exists.
                entry("10.0.0.4", "web-0", Some("old"), "n1"),
            ]
        });
        assert!(pods.apply("EndpointSlice", &mut slice));
        let eps = slice["endpoints"].as_array().unwrap();
        assert_eq!(eps[0]["addresses"], json!(["10.0.0.9"]), "IPv4 family only");
        assert_eq!(eps[0]["conditions"]["ready"], true);
        assert_eq!(eps[1]["addresses"], json!(["10.0.0.8"]), "matched by name");
        assert_eq!(eps[1]["conditions"]["ready"], false);
        assert_eq!(eps[1]["conditions"]["serving"], false);
        assert_eq!(eps[2]["conditions"]["ready"], false, "gone from the node");
        assert_eq!(eps[2]["addresses"], json!(["10.0.0.7"]));
        assert_eq!(eps[3]["conditions"]["ready"], true, "another node's entry");
        assert_eq!(eps[4]["conditions"]["ready"], false, "uid mismatch is gone");
        assert!(!pods.apply("EndpointSlice", &mut slice), "idempotent");
    }

    #[test]
    fn endpoints_move_between_ready_and_not_ready() {
        let p1 = pod("web-0", "u0", &["10.0.0.9"], false);
        let p2 = pod("web-1", "u1", &["10.0.0.8"], true);
        let pods = NodePods::from_pods("n1", [&p1, &p2]);
        let addr = |ip: &str, name: &str| {
            json!({"ip": ip, "nodeName": "n1",
                "targetRef": {"kind": "Pod", "namespace": "default", "name": name}})
        };
        let mut ep = json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "svc", "namespace": "default"},
            "subsets": [{
                "addresses": [addr("10.0.0.5", "web-0"), {"ip": "192.168.1.1"}],
                "notReadyAddresses": [addr("10.0.0.6", "web-1")],
                "ports": [{"port": 80}]
            }]
        });
        assert!(pods.apply("Endpoints", &mut ep));
        let s = &ep["subsets"][0];
        assert_eq!(s["addresses"][0]["ip"], "192.168.1.1", "not a pod: kept");
        assert_eq!(s["addresses"][1]["ip"], "10.0.0.8");
        assert_eq!(s["notReadyAddresses"][0]["ip"], "10.0.0.9");
        assert_eq!(s["notReadyAddresses"].as_array().unwrap().len(), 1);
        assert_eq!(s["ports"][0]["port"], 80);
    }

    #[test]
    fn terminating_and_finished_pods_are_not_ready() {
        let mut p = pod("web-0", "u0", &["10.0.0.9"], true);
        p["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        let mut q = pod("web-1", "u1", &["10.0.0.8"], true);
        q["status"]["phase"] = json!("Failed");
        let pods = NodePods::from_pods("n1", [&p, &q]);
        let mut slice = json!({
            "metadata": {"namespace": "default"}, "addressType": "IPv4",
            "endpoints": [entry("10.0.0.9", "web-0", Some("u0"), "n1"),
                          entry("10.0.0.8", "web-1", Some("u1"), "n1")]
        });
        pods.apply("EndpointSlice", &mut slice);
        let c = &slice["endpoints"][0]["conditions"];
        assert_eq!(
            (
                c["ready"].clone(),
                c["serving"].clone(),
                c["terminating"].clone()
            ),
            (json!(false), json!(true), json!(true))
        );
        assert_eq!(slice["endpoints"][1]["conditions"]["ready"], false);
    }
}
