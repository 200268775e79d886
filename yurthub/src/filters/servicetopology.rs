//! `servicetopology`: for Services annotated `openyurt.io/topologyKeys`,
//! trims the EndpointSlices kube-proxy, coredns and ingress controllers read
//! to the endpoints on this node (`kubernetes.io/hostname`) or in this node's
//! pool (`openyurt.io/nodepool`, `kubernetes.io/zone`).
//!
//! As upstream: the Service is found through the slice's
//! `kubernetes.io/service-name` label; a slice whose Service is unknown, or
//! whose Service has no or another topology value, is left alone; pool
//! topology falls back to node topology while this node's pool is unknown,
//! and leaves the slice alone while the pool's membership is unknown;
//! endpoints without a node name are dropped (v1); an empty result is still
//! returned. `discovery.k8s.io/v1beta1` slices are matched by their
//! `topology["kubernetes.io/hostname"]`.

use serde_json::Value;

use super::{FilterInputs, Object, Verdict};

pub(super) const TOPOLOGY_ANNOTATION: &str = "openyurt.io/topologyKeys";
pub(super) const TOPOLOGY_NODE: &str = "kubernetes.io/hostname";
pub(super) const TOPOLOGY_ZONE: &str = "kubernetes.io/zone";
pub(super) const TOPOLOGY_POOL: &str = "openyurt.io/nodepool";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const HOSTNAME_TOPOLOGY_KEY: &str = "kubernetes.io/hostname";

/// Which endpoints a slice keeps.
enum Keep {
    Node(String),
    Nodes(Vec<String>),
}

impl Keep {
    fn keeps(&self, node: Option<&str>) -> bool {
        match (self, node) {
            (_, None) => false,
            (Keep::Node(this), Some(node)) => this == node,
            (Keep::Nodes(nodes), Some(node)) => nodes.iter().any(|n| n == node),
        }
    }
}

pub(super) fn filter(object: &mut Object, inputs: &dyn FilterInputs) -> Verdict {
    match object {
        Object::EndpointSlice(slice) => {
            let namespace = slice.metadata.namespace.as_deref().unwrap_or_default();
            let service = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .map(String::as_str)
                .unwrap_or_default();
            let Some(keep) = decide(namespace, service, inputs) else {
                return Verdict::Unchanged;
            };
            let Some(endpoints) = slice.endpoints.as_mut() else {
                return Verdict::Unchanged;
            };
            let before = endpoints.len();
            endpoints.retain(|e| keep.keeps(e.node_name.as_deref()));
            verdict(before, endpoints.len())
        }
        Object::EndpointSliceV1beta1(slice) => {
            let namespace = str_at(slice, "/metadata/namespace").to_owned();
            let service = slice
                .pointer("/metadata/labels")
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let Some(keep) = decide(&namespace, &service, inputs) else {
                return Verdict::Unchanged;
            };
            let Some(Value::Array(endpoints)) = slice.get_mut("endpoints") else {
                return Verdict::Unchanged;
            };
            let before = endpoints.len();
            endpoints.retain(|e| {
                let host = e
                    .get("topology")
                    .and_then(|t| t.get(HOSTNAME_TOPOLOGY_KEY))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                keep.keeps(Some(host))
            });
            verdict(before, endpoints.len())
        }
        _ => Verdict::Unchanged,
    }
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn verdict(before: usize, after: usize) -> Verdict {
    if before == after {
        Verdict::Unchanged
    } else {
        Verdict::Mutated
    }
}

/// Which endpoints to keep for a slice of `namespace/service`, or `None` to
/// leave the slice alone.
fn decide(namespace: &str, service: &str, inputs: &dyn FilterInputs) -> Option<Keep> {
    let Some(svc) = inputs.service(namespace, service) else {
        tracing::warn!(
            namespace,
            service,
            "service of an endpointslice is unknown; not filtered by topology"
        );
        return None;
    };
    let topology = svc
        .metadata
        .annotations
        .as_ref()?
        .get(TOPOLOGY_ANNOTATION)?;
    match topology.as_str() {
        TOPOLOGY_NODE => Some(Keep::Node(inputs.node_name().to_owned())),
        TOPOLOGY_POOL | TOPOLOGY_ZONE => match inputs.pool_name().filter(|p| !p.is_empty()) {
            None => {
                tracing::info!(
                    node = inputs.node_name(),
                    "node is in no known pool; falling back to node topology"
                );
                Some(Keep::Node(inputs.node_name().to_owned()))
            }
            Some(pool) => match inputs.nodes_in_pool(&pool) {
                Some(nodes) => Some(Keep::Nodes(nodes)),
                None => {
                    tracing::warn!(
                        pool,
                        "membership of the node pool is unknown; not filtered by topology"
                    );
                    None
                }
            },
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::filters::test_support::{TestInputs, annotate, endpoint, endpoint_slice, service};

    fn inputs_with(
        topology: Option<&str>,
        pool: Option<&str>,
        pools: &[(&str, &[&str])],
    ) -> TestInputs {
        let mut svc = service("default", "web", "10.96.0.30", &[("http", 80)]);
        if let Some(t) = topology {
            svc = annotate(svc, TOPOLOGY_ANNOTATION, t);
        }
        TestInputs {
            pool: pool.map(str::to_owned),
            services: vec![svc],
            pools: pools
                .iter()
                .map(|(p, nodes)| (p.to_string(), nodes.iter().map(|n| n.to_string()).collect()))
                .collect::<BTreeMap<_, _>>(),
            ..TestInputs::default()
        }
    }

    fn nodes_after(inputs: &TestInputs) -> (Verdict, Vec<Option<String>>) {
        let slice = endpoint_slice(
            "default",
            "web-abc",
            "web",
            vec![
                endpoint("10.0.0.1", Some("node-1")),
                endpoint("10.0.0.2", Some("node-2")),
                endpoint("10.0.0.3", Some("node-3")),
                endpoint("10.0.0.4", None),
            ],
            &[("http", 80)],
        );
        let mut obj = Object::EndpointSlice(Box::new(slice));
        let verdict = filter(&mut obj, inputs);
        let Object::EndpointSlice(slice) = obj else {
            unreachable!()
        };
        (
            verdict,
            slice
                .endpoints
                .unwrap_or_default()
                .into_iter()
                .map(|e| e.node_name)
                .collect(),
        )
    }

    #[test]
    fn node_topology_keeps_this_nodes_endpoints() {
        let (v, nodes) = nodes_after(&inputs_with(Some(TOPOLOGY_NODE), Some("pool-a"), &[]));
        assert_eq!(v, Verdict::Mutated);
        assert_eq!(nodes, vec![Some("node-1".to_owned())]);
    }

    #[test]
    fn pool_topology_keeps_the_pools_endpoints() {
        for key in [TOPOLOGY_POOL, TOPOLOGY_ZONE] {
            let inputs = inputs_with(
                Some(key),
                Some("pool-a"),
                &[("pool-a", &["node-1", "node-2"])],
            );
            let (v, nodes) = nodes_after(&inputs);
            assert_eq!(v, Verdict::Mutated);
            assert_eq!(
                nodes,
                vec![Some("node-1".to_owned()), Some("node-2".to_owned())],
                "{key}"
            );
        }
        let empty_pool = inputs_with(Some(TOPOLOGY_POOL), Some("pool-a"), &[("pool-a", &[])]);
        assert_eq!(
            nodes_after(&empty_pool),
            (Verdict::Mutated, vec![]),
            "an empty result is still returned"
        );
    }

    #[test]
    fn unknown_pool_falls_back_and_unknown_membership_leaves_alone() {
        let no_pool = inputs_with(Some(TOPOLOGY_POOL), None, &[("pool-a", &["node-2"])]);
        assert_eq!(
            nodes_after(&no_pool).1,
            vec![Some("node-1".to_owned())],
            "falls back to node topology"
        );
        let unknown_members = inputs_with(
            Some(TOPOLOGY_POOL),
            Some("pool-x"),
            &[("pool-a", &["node-2"])],
        );
        assert_eq!(nodes_after(&unknown_members).0, Verdict::Unchanged);
    }

    #[test]
    fn no_annotation_or_unknown_service_leaves_alone() {
        assert_eq!(
            nodes_after(&inputs_with(None, Some("pool-a"), &[])).0,
            Verdict::Unchanged
        );
        assert_eq!(
            nodes_after(&inputs_with(Some("bogus"), Some("pool-a"), &[])).0,
            Verdict::Unchanged
        );
        let no_service = TestInputs::default();
        assert_eq!(nodes_after(&no_service).0, Verdict::Unchanged);
    }

    #[test]
    fn v1beta1_slices_match_on_topology_hostname() {
        let inputs = inputs_with(Some(TOPOLOGY_NODE), None, &[]);
        let mut obj = Object::EndpointSliceV1beta1(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1beta1",
            "kind": "EndpointSlice",
            "metadata": {"namespace": "default", "name": "web-abc", "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.0.0.1"], "topology": {"kubernetes.io/hostname": "node-1"}},
                {"addresses": ["10.0.0.2"], "topology": {"kubernetes.io/hostname": "node-2"}},
                {"addresses": ["10.0.0.3"]}
            ]
        }));
        assert_eq!(filter(&mut obj, &inputs), Verdict::Mutated);
        let Object::EndpointSliceV1beta1(v) = obj else {
            unreachable!()
        };
        assert_eq!(
            v["endpoints"],
            serde_json::json!([{"addresses": ["10.0.0.1"], "topology": {"kubernetes.io/hostname": "node-1"}}])
        );
    }
}
