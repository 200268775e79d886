//! Response filters: the seven OpenYurt YurtHub filters that rewrite what
//! selected node components read from the apiserver (reference §6).
//!
//! This module owns:
//! * the filter catalogue ([`FilterName`]): names, registration order, and the
//!   default components, resources and verbs each filter applies to (§6.2);
//! * the approver ([`FilterRegistry`]): which filters are enabled
//!   (`--enable-resource-filter`, `--disabled-resource-filters`, working mode,
//!   redirect mode) and, per request `(component, verb, resource)`, the chain to
//!   run, including the live component additions of the `yurt-hub-cfg`
//!   ConfigMap;
//! * the application of a chain to response bodies in both wire formats
//!   ([`FilterChain`]): whole get/list bodies, and watch streams incrementally
//!   ([`WatchFilter`], [`FilteredWatchBody`]);
//! * what the filters read from the node and the cluster ([`FilterInputs`]),
//!   with an in-memory implementation the proxy feeds ([`ClusterView`]).
//!
//! The filters never break a client: a body that cannot be decoded is passed
//! through unchanged (and logged), and a body no filter of the chain is
//! interested in is passed through without being decoded at all. Unchanged
//! objects keep their exact bytes.

mod chain;
mod inputs;
mod object;
mod registry;

mod discardcloudservice;
mod forwardkubesvctraffic;
mod inclusterconfig;
mod masterservice;
mod nodeportisolation;
mod serviceenvupdater;
mod servicetopology;

pub use chain::{FilterChain, Filtered, FilteredWatchBody, WatchFilter};
pub use inputs::{ClusterView, FilterInputs, InputError, NODE_POOL_LABEL, PoolSource};
pub use object::{Object, ObjectKind, Verdict};
pub use registry::{FilterRegistry, FilterSettings};

/// The User-Agent component of the hub's own requests: never filtered.
pub const HUB_COMPONENT: &str = "yurthub";

/// The prefix of the multiplexer's upstream User-Agent (`multiplexer-proxy-<node>`):
/// that component is never filtered, its clients are.
pub const MULTIPLEXER_COMPONENT_PREFIX: &str = "multiplexer-proxy-";

/// The key of `yurt-hub-cfg` that lists extra cache agents; every other key
/// that names a filter adds components to that filter.
pub const CACHE_AGENTS_KEY: &str = "cache_agents";

/// One of the upstream response filters, in registration order (the order a
/// chain runs them in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FilterName {
    ServiceTopology,
    MasterService,
    DiscardCloudService,
    InClusterConfig,
    NodePortIsolation,
    ForwardKubeSvcTraffic,
    ServiceEnvUpdater,
}

/// The default scope of a filter: the components it applies to and, per
/// resource, the verbs (reference §6.2, upstream `options/filters.go`).
#[derive(Debug, Clone, Copy)]
pub struct FilterScope {
    pub components: &'static [&'static str],
    pub resource_verbs: &'static [(&'static str, &'static [&'static str])],
}

impl FilterScope {
    /// Whether the filter applies to this verb on this resource.
    pub fn covers(&self, verb: &str, resource: &str) -> bool {
        self.resource_verbs
            .iter()
            .any(|(r, verbs)| *r == resource && verbs.contains(&verb))
    }
}

const LIST_WATCH: &[&str] = &["list", "watch"];

impl FilterName {
    /// Every filter, in registration order.
    pub const ALL: [FilterName; 7] = [
        FilterName::ServiceTopology,
        FilterName::MasterService,
        FilterName::DiscardCloudService,
        FilterName::InClusterConfig,
        FilterName::NodePortIsolation,
        FilterName::ForwardKubeSvcTraffic,
        FilterName::ServiceEnvUpdater,
    ];

    /// Filters that upstream removes in cloud mode.
    pub const DISABLED_IN_CLOUD_MODE: [FilterName; 3] = [
        FilterName::DiscardCloudService,
        FilterName::ForwardKubeSvcTraffic,
        FilterName::ServiceEnvUpdater,
    ];

    /// Filters that exist only to steer pods to the hub; the kernel redirect
    /// (`--redirect-mode=ebpf`) does that job, so they are off by default there.
    pub const POD_STEERING: [FilterName; 3] = [
        FilterName::MasterService,
        FilterName::ForwardKubeSvcTraffic,
        FilterName::ServiceEnvUpdater,
    ];

    /// The upstream name (flag values and `yurt-hub-cfg` keys).
    pub const fn as_str(self) -> &'static str {
        match self {
            FilterName::ServiceTopology => "servicetopology",
            FilterName::MasterService => "masterservice",
            FilterName::DiscardCloudService => "discardcloudservice",
            FilterName::InClusterConfig => "inclusterconfig",
            FilterName::NodePortIsolation => "nodeportisolation",
            FilterName::ForwardKubeSvcTraffic => "forwardkubesvctraffic",
            FilterName::ServiceEnvUpdater => "serviceenvupdater",
        }
    }

    /// Parses an upstream name (exact, as upstream compares them).
    pub fn parse(name: &str) -> Option<FilterName> {
        FilterName::ALL.into_iter().find(|f| f.as_str() == name)
    }

    /// The default components, resources and verbs (reference §6.2).
    pub const fn scope(self) -> FilterScope {
        match self {
            FilterName::MasterService => FilterScope {
                components: &["kubelet"],
                resource_verbs: &[("services", LIST_WATCH)],
            },
            FilterName::DiscardCloudService => FilterScope {
                components: &["kube-proxy"],
                resource_verbs: &[("services", LIST_WATCH)],
            },
            FilterName::ServiceTopology => FilterScope {
                components: &["kube-proxy", "coredns", "nginx-ingress-controller"],
                // `endpoints` is in upstream's table but no filter changes
                // Endpoints objects: kept so the approver matches upstream.
                resource_verbs: &[("endpoints", LIST_WATCH), ("endpointslices", LIST_WATCH)],
            },
            FilterName::InClusterConfig => FilterScope {
                components: &["kubelet"],
                resource_verbs: &[("configmaps", &["get", "list", "watch"])],
            },
            FilterName::NodePortIsolation => FilterScope {
                components: &["kube-proxy"],
                resource_verbs: &[("services", LIST_WATCH)],
            },
            FilterName::ForwardKubeSvcTraffic => FilterScope {
                components: &["kube-proxy"],
                resource_verbs: &[("endpointslices", LIST_WATCH)],
            },
            FilterName::ServiceEnvUpdater => FilterScope {
                components: &["kubelet"],
                resource_verbs: &[("pods", &["list", "watch", "get", "patch"])],
            },
        }
    }

    /// Whether this filter looks at objects of this kind at all.
    pub fn handles(self, kind: ObjectKind) -> bool {
        match self {
            FilterName::MasterService
            | FilterName::DiscardCloudService
            | FilterName::NodePortIsolation => kind == ObjectKind::Service,
            FilterName::ServiceTopology => matches!(
                kind,
                ObjectKind::EndpointSlice | ObjectKind::EndpointSliceV1beta1
            ),
            FilterName::ForwardKubeSvcTraffic => kind == ObjectKind::EndpointSlice,
            FilterName::InClusterConfig => kind == ObjectKind::ConfigMap,
            FilterName::ServiceEnvUpdater => kind == ObjectKind::Pod,
        }
    }

    /// Whether this filter could change an object whose encoded bytes
    /// (JSON or protobuf) are `raw`: a cheap byte scan that lets the chain
    /// skip decoding objects no filter would touch. Env var names are
    /// plain strings in both encodings, so a pod that declares neither
    /// variable cannot be rewritten by `serviceenvupdater`.
    pub fn may_change(self, raw: &[u8]) -> bool {
        match self {
            FilterName::ServiceEnvUpdater => serviceenvupdater::mentions_service_env(raw),
            _ => true,
        }
    }

    /// Runs this filter on one object.
    pub fn apply(self, object: &mut Object, inputs: &dyn FilterInputs) -> Verdict {
        match self {
            FilterName::ServiceTopology => servicetopology::filter(object, inputs),
            FilterName::MasterService => masterservice::filter(object, inputs),
            FilterName::DiscardCloudService => discardcloudservice::filter(object, inputs),
            FilterName::InClusterConfig => inclusterconfig::filter(object, inputs),
            FilterName::NodePortIsolation => nodeportisolation::filter(object, inputs),
            FilterName::ForwardKubeSvcTraffic => forwardkubesvctraffic::filter(object, inputs),
            FilterName::ServiceEnvUpdater => serviceenvupdater::filter(object, inputs),
        }
    }
}

impl std::fmt::Display for FilterName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
