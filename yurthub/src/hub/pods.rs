//! `GET /pods` on the hub server: the pods of this node as a v1 `PodList` in
//! JSON. In edge mode it is built from kubelet's cached pods (what the node
//! would run offline); in cloud mode there is no cache, so the pods bound to
//! this node are listed from a healthy apiserver with the hub's identity.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::cache::CacheManager;
use crate::cache::keys::from_store_format;
use crate::remote::LoadBalancer;
use crate::remote::transport::Transports;
use crate::storage::{Gvr, ResourceKey, Space};

/// Where the node's pods come from.
#[derive(Clone)]
pub enum PodSource {
    /// Edge mode: kubelet's pods in the cache store.
    Cache(CacheManager),
    /// Cloud mode: a list with `fieldSelector=spec.nodeName=<node>`.
    Cloud(Box<CloudPods>),
}

/// What a cloud-mode `/pods` lists with.
#[derive(Clone)]
pub struct CloudPods {
    pub lb: Arc<LoadBalancer>,
    pub transports: Transports,
    pub node: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading kubelet's cached pods from {path}: {reason}")]
    Cache { path: String, reason: String },
    #[error("no healthy apiserver to list the pods of node {0} from")]
    NoBackend(String),
    #[error("listing the pods of node {node}: {reason}")]
    Remote { node: String, reason: String },
}

impl PodSource {
    /// The PodList, or why it could not be built.
    pub async fn pod_list(&self) -> Result<Value, Error> {
        match self {
            PodSource::Cache(cache) => cached_pods(cache),
            PodSource::Cloud(c) => cloud_pods(&c.lb, &c.transports, &c.node).await,
        }
    }
}

fn cached_pods(cache: &CacheManager) -> Result<Value, Error> {
    let store = cache.store();
    let fail = |reason: String| Error::Cache {
        path: store.path().display().to_string(),
        reason,
    };
    let resource = ResourceKey::new("kubelet", Space::Full, Gvr::new("", "v1", "pods"));
    let listing = store
        .list(&resource.scope(None, ""), |_| true)
        .map_err(|e| fail(e.to_string()))?;
    let mut items = Vec::new();
    let mut resource_version = String::new();
    if let Some(listing) = listing {
        if let Some(m) = &listing.marker {
            resource_version = m.resource_version.as_str().to_owned();
        }
        for stored in listing.items {
            let Some(format) = from_store_format(stored.object.format) else {
                tracing::debug!(key = %stored.key, "skipping a cached pod in an unreadable format");
                continue;
            };
            match format.decode_object(&stored.object.body) {
                Ok(pod) => items.push(pod),
                Err(e) => {
                    tracing::warn!(key = %stored.key, error = %e, "skipping a cached pod that does not decode")
                }
            }
        }
    }
    Ok(pod_list(items, &resource_version))
}

async fn cloud_pods(
    lb: &LoadBalancer,
    transports: &Transports,
    node: &str,
) -> Result<Value, Error> {
    let backend = lb.pick().ok_or_else(|| Error::NoBackend(node.to_owned()))?;
    let selector: String =
        form_urlencoded::byte_serialize(format!("spec.nodeName={node}").as_bytes()).collect();
    let path = format!("/api/v1/pods?fieldSelector={selector}");
    let remote = |reason: String| Error::Remote {
        node: node.to_owned(),
        reason,
    };
    let (code, mut list) = crate::remote::call_json(
        transports,
        &backend,
        http::Method::GET,
        &path,
        None,
        Duration::from_secs(30),
    )
    .await
    .map_err(|e| remote(e.to_string()))?;
    if !code.is_success() {
        let message = list["message"].as_str().unwrap_or_default().to_owned();
        return Err(remote(format!("{code}: {message}")));
    }
    list["apiVersion"] = json!("v1");
    list["kind"] = json!("PodList");
    Ok(list)
}

fn pod_list(items: Vec<Value>, resource_version: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "PodList",
        "metadata": {"resourceVersion": resource_version},
        "items": items,
    })
}
