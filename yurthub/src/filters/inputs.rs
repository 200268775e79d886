//! What the filters read besides the object itself: this node's identity and
//! pool, the address pods should reach the hub on, the Services (for the
//! topology annotation) and pool membership. [`FilterInputs`] is the seam;
//! [`ClusterView`] is the in-memory implementation the proxy keeps current
//! from its own list/watches (services, NodePools or NodeBuckets, this Node).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use k8s_openapi::api::core::v1::Service;
use serde_json::Value;

/// The node label that names a node's pool (upstream `projectinfo.GetNodePoolLabel`).
pub const NODE_POOL_LABEL: &str = "apps.openyurt.io/nodepool";

/// The NodeBucket label that names the pool a bucket belongs to.
pub const NODE_BUCKET_POOL_LABEL: &str = "openyurt.io/pool-name";

/// Everything filters read besides the object they filter.
pub trait FilterInputs: Send + Sync {
    /// This node's name.
    fn node_name(&self) -> &str;
    /// This node's pool: `--nodepool-name`, else the node's
    /// `apps.openyurt.io/nodepool` label once known; `None` while unknown.
    fn pool_name(&self) -> Option<String>;
    /// The address and port the pod-steering filters write: the hub address
    /// and `--proxy-secure-port`.
    fn hub_endpoint(&self) -> SocketAddr;
    /// A Service by namespace and name, `None` when not (yet) known.
    fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>>;
    /// The nodes of a pool; `None` when the pool's membership is unknown (no
    /// such NodePool, or no NodeBucket of that pool), in which case the
    /// topology filter leaves objects alone, as upstream.
    fn nodes_in_pool(&self, pool: &str) -> Option<Vec<String>>;
}

/// Where pool membership comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolSource {
    /// `apps.openyurt.io` NodePool objects, `status.nodes` (the default).
    NodePool,
    /// `apps.openyurt.io/v1alpha1` NodeBucket objects labelled with their pool
    /// (`--enable-pool-service-topology`).
    NodeBucket,
}

impl PoolSource {
    /// The source `--enable-pool-service-topology` selects.
    pub fn from_flag(enable_pool_service_topology: bool) -> PoolSource {
        if enable_pool_service_topology {
            PoolSource::NodeBucket
        } else {
            PoolSource::NodePool
        }
    }

    /// The group/version/resource to list and watch to feed a [`ClusterView`].
    pub fn api_path(self) -> &'static str {
        match self {
            PoolSource::NodePool => "/apis/apps.openyurt.io/v1beta2/nodepools",
            PoolSource::NodeBucket => "/apis/apps.openyurt.io/v1alpha1/nodebuckets",
        }
    }
}

/// A pool object the view could not use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InputError {
    #[error("{kind} object has no metadata.name")]
    Unnamed { kind: &'static str },
    #[error("{kind} {name} has a malformed {field}")]
    Malformed {
        kind: &'static str,
        name: String,
        field: &'static str,
    },
}

/// Membership read from one NodePool or NodeBucket.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PoolRecord {
    pool: String,
    nodes: Vec<String>,
}

#[derive(Debug, Default)]
struct ViewState {
    learned_pool: Option<String>,
    services: HashMap<(String, String), Arc<Service>>,
    services_synced: bool,
    /// Keyed by object name (the pool name for NodePools, the bucket name for
    /// NodeBuckets).
    pool_objects: HashMap<String, PoolRecord>,
    pools_synced: bool,
}

/// [`FilterInputs`] kept in memory and fed by the proxy.
#[derive(Debug)]
pub struct ClusterView {
    node_name: String,
    configured_pool: Option<String>,
    hub: SocketAddr,
    source: PoolSource,
    state: RwLock<ViewState>,
}

impl ClusterView {
    /// `configured_pool` is `--nodepool-name` (empty means unknown until the
    /// node's label is seen); `hub` is the hub address with
    /// `--proxy-secure-port`.
    pub fn new(
        node_name: &str,
        configured_pool: &str,
        hub: SocketAddr,
        source: PoolSource,
    ) -> Self {
        ClusterView {
            node_name: node_name.to_owned(),
            configured_pool: (!configured_pool.is_empty()).then(|| configured_pool.to_owned()),
            hub,
            source,
            state: RwLock::new(ViewState::default()),
        }
    }

    pub fn pool_source(&self) -> PoolSource {
        self.source
    }

    fn read(&self) -> RwLockReadGuard<'_, ViewState> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, ViewState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Learns the pool from this node's labels (used only when
    /// `--nodepool-name` is empty, as upstream).
    pub fn observe_node_labels(&self, labels: &BTreeMap<String, String>) {
        let pool = labels
            .get(NODE_POOL_LABEL)
            .filter(|p| !p.is_empty())
            .cloned();
        self.write().learned_pool = pool;
    }

    /// Adds or replaces a Service.
    pub fn upsert_service(&self, service: Service) {
        let key = service_key(&service);
        self.write().services.insert(key, Arc::new(service));
    }

    pub fn remove_service(&self, namespace: &str, name: &str) {
        self.write()
            .services
            .remove(&(namespace.to_owned(), name.to_owned()));
    }

    /// Replaces every Service (a relist) and marks services as synced.
    pub fn replace_services(&self, services: impl IntoIterator<Item = Service>) {
        let services = services
            .into_iter()
            .map(|s| (service_key(&s), Arc::new(s)))
            .collect();
        let mut state = self.write();
        state.services = services;
        state.services_synced = true;
    }

    /// Adds or replaces a NodePool or NodeBucket (per [`PoolSource`]) from its
    /// JSON form (these are custom resources: JSON only).
    pub fn upsert_pool_object(&self, object: &Value) -> Result<(), InputError> {
        let (name, record) = self.parse_pool_object(object)?;
        self.write().pool_objects.insert(name, record);
        Ok(())
    }

    /// Removes a NodePool or NodeBucket by name.
    pub fn remove_pool_object(&self, name: &str) {
        self.write().pool_objects.remove(name);
    }

    /// Replaces every pool object (a relist) and marks pools as synced.
    /// Objects that cannot be read are skipped and their errors returned.
    pub fn replace_pool_objects<'a>(
        &self,
        objects: impl IntoIterator<Item = &'a Value>,
    ) -> Vec<InputError> {
        let mut errors = Vec::new();
        let mut records = HashMap::new();
        for object in objects {
            match self.parse_pool_object(object) {
                Ok((name, record)) => {
                    records.insert(name, record);
                }
                Err(e) => errors.push(e),
            }
        }
        let mut state = self.write();
        state.pool_objects = records;
        state.pools_synced = true;
        errors
    }

    /// Whether services and pool objects have been listed once: upstream's
    /// servicetopology `HasSynced`, which gates readiness.
    pub fn has_synced(&self) -> bool {
        let state = self.read();
        state.services_synced && state.pools_synced
    }

    fn parse_pool_object(&self, object: &Value) -> Result<(String, PoolRecord), InputError> {
        let kind = match self.source {
            PoolSource::NodePool => "NodePool",
            PoolSource::NodeBucket => "NodeBucket",
        };
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or(InputError::Unnamed { kind })?
            .to_owned();
        let malformed = |field| InputError::Malformed {
            kind,
            name: name.clone(),
            field,
        };
        let record = match self.source {
            PoolSource::NodePool => {
                let nodes = match object.pointer("/status/nodes") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Array(nodes)) => nodes
                        .iter()
                        .map(|n| {
                            n.as_str()
                                .map(str::to_owned)
                                .ok_or_else(|| malformed("status.nodes"))
                        })
                        .collect::<Result<_, _>>()?,
                    Some(_) => return Err(malformed("status.nodes")),
                };
                PoolRecord {
                    pool: name.clone(),
                    nodes,
                }
            }
            PoolSource::NodeBucket => {
                let pool = object
                    .pointer("/metadata/labels")
                    .and_then(|l| l.get(NODE_BUCKET_POOL_LABEL))
                    .and_then(Value::as_str)
                    .ok_or_else(|| malformed("openyurt.io/pool-name label"))?
                    .to_owned();
                let nodes = match object.get("nodes") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Array(nodes)) => nodes
                        .iter()
                        .filter_map(|n| n.get("name").and_then(Value::as_str))
                        .map(str::to_owned)
                        .collect(),
                    Some(_) => return Err(malformed("nodes")),
                };
                PoolRecord { pool, nodes }
            }
        };
        Ok((name, record))
    }
}

fn service_key(service: &Service) -> (String, String) {
    (
        service.metadata.namespace.clone().unwrap_or_default(),
        service.metadata.name.clone().unwrap_or_default(),
    )
}

impl FilterInputs for ClusterView {
    fn node_name(&self) -> &str {
        &self.node_name
    }

    fn pool_name(&self) -> Option<String> {
        self.configured_pool
            .clone()
            .or_else(|| self.read().learned_pool.clone())
    }

    fn hub_endpoint(&self) -> SocketAddr {
        self.hub
    }

    fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
        self.read()
            .services
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    fn nodes_in_pool(&self, pool: &str) -> Option<Vec<String>> {
        let state = self.read();
        match self.source {
            PoolSource::NodePool => state.pool_objects.get(pool).map(|r| r.nodes.clone()),
            PoolSource::NodeBucket => {
                // A pool's nodes are spread over several buckets; no bucket
                // means unknown membership (upstream returns an error).
                let mut buckets = state
                    .pool_objects
                    .values()
                    .filter(|r| r.pool == pool)
                    .peekable();
                buckets.peek()?;
                Some(buckets.flat_map(|r| r.nodes.iter().cloned()).collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hub() -> SocketAddr {
        "169.254.2.1:10268".parse().expect("socket address")
    }

    #[test]
    fn configured_pool_wins_over_the_node_label() {
        let view = ClusterView::new("n1", "pool-a", hub(), PoolSource::NodePool);
        view.observe_node_labels(&BTreeMap::from([(
            NODE_POOL_LABEL.to_owned(),
            "pool-b".to_owned(),
        )]));
        assert_eq!(view.pool_name().as_deref(), Some("pool-a"));

        let view = ClusterView::new("n1", "", hub(), PoolSource::NodePool);
        assert_eq!(view.pool_name(), None, "no flag and no label: unknown");
        view.observe_node_labels(&BTreeMap::from([(
            NODE_POOL_LABEL.to_owned(),
            "pool-b".to_owned(),
        )]));
        assert_eq!(view.pool_name().as_deref(), Some("pool-b"));
    }

    #[test]
    fn node_pools_give_status_nodes() {
        let view = ClusterView::new("n1", "", hub(), PoolSource::NodePool);
        assert!(!view.has_synced());
        let errors = view.replace_pool_objects(&[
            json!({"metadata": {"name": "pool-a"}, "status": {"nodes": ["n1", "n2"]}}),
            json!({"metadata": {"name": "pool-b"}}),
            json!({"metadata": {}}),
        ]);
        assert_eq!(errors, vec![InputError::Unnamed { kind: "NodePool" }]);
        assert_eq!(
            view.nodes_in_pool("pool-a"),
            Some(vec!["n1".into(), "n2".into()])
        );
        assert_eq!(view.nodes_in_pool("pool-b"), Some(vec![]));
        assert_eq!(view.nodes_in_pool("pool-c"), None);
        view.remove_pool_object("pool-a");
        assert_eq!(view.nodes_in_pool("pool-a"), None);
        assert!(!view.has_synced(), "services were never listed");
        view.replace_services([]);
        assert!(view.has_synced());
    }

    #[test]
    fn node_buckets_are_merged_per_pool_label() {
        let view = ClusterView::new("n1", "", hub(), PoolSource::NodeBucket);
        let bucket = |name: &str, pool: &str, nodes: &[&str]| {
            json!({
                "metadata": {"name": name, "labels": {NODE_BUCKET_POOL_LABEL: pool}},
                "numNodes": nodes.len(),
                "nodes": nodes.iter().map(|n| json!({"name": n})).collect::<Vec<_>>(),
            })
        };
        view.upsert_pool_object(&bucket("a-1", "pool-a", &["n1"]))
            .expect("bucket a-1");
        view.upsert_pool_object(&bucket("a-2", "pool-a", &["n2"]))
            .expect("bucket a-2");
        view.upsert_pool_object(&bucket("b-1", "pool-b", &["n3"]))
            .expect("bucket b-1");
        let mut nodes = view.nodes_in_pool("pool-a").expect("pool-a has buckets");
        nodes.sort();
        assert_eq!(nodes, vec!["n1".to_owned(), "n2".to_owned()]);
        assert_eq!(view.nodes_in_pool("pool-x"), None);
        let err = view
            .upsert_pool_object(&json!({"metadata": {"name": "x"}}))
            .expect_err("a bucket without pool label");
        assert!(err.to_string().contains("pool-name"), "{err}");
    }
}
