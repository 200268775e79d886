//! The approver: which filters are enabled, and which of them run for a
//! request's `(component, verb, resource)`.
//!
//! Enabled filters (in registration order): every filter unless
//! `--enable-resource-filter=false`, `--disabled-resource-filters` names it (a
//! `*` entry disables all), the working mode is cloud and it is one of
//! [`FilterName::DISABLED_IN_CLOUD_MODE`], or the redirect mode is ebpf and it
//! is one of [`FilterName::POD_STEERING`] not explicitly re-enabled.
//!
//! Per request: a filter runs when it covers the verb and resource and the
//! component is one of its defaults or one the `yurt-hub-cfg` ConfigMap adds
//! under the filter's name (applied live; cleared when the ConfigMap goes).
//! The hub's own requests and the multiplexer's upstream requests are never
//! filtered.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use super::{FilterChain, FilterInputs, FilterName, HUB_COMPONENT, MULTIPLEXER_COMPONENT_PREFIX};
use crate::config::{Config, RedirectMode, WorkingMode};

/// The settings that decide which filters are enabled.
#[derive(Debug, Clone)]
pub struct FilterSettings {
    /// `--enable-resource-filter`.
    pub enable_resource_filter: bool,
    /// `--disabled-resource-filters`.
    pub disabled_resource_filters: Vec<String>,
    /// Pod-steering filters to keep although `--redirect-mode=ebpf` turns them
    /// off by default (compatibility, e.g. for pods the redirect cannot reach).
    /// A name in `disabled_resource_filters` still wins (`--enabled-resource-filters`).
    pub enabled_resource_filters: Vec<String>,
    pub working_mode: WorkingMode,
    pub redirect_mode: RedirectMode,
    /// This node's name (to recognise `multiplexer-proxy-<node>`).
    pub node_name: String,
}

impl FilterSettings {
    pub fn from_config(config: &Config) -> FilterSettings {
        FilterSettings {
            enable_resource_filter: config.enable_resource_filter,
            disabled_resource_filters: config.disabled_resource_filters.clone(),
            enabled_resource_filters: config.enabled_resource_filters.clone(),
            working_mode: config.working_mode,
            redirect_mode: config.redirect_mode,
            node_name: config.node_name.clone(),
        }
    }

    /// The enabled filters in registration order.
    pub fn enabled_filters(&self) -> Vec<FilterName> {
        if !self.enable_resource_filter {
            return Vec::new();
        }
        let named = |list: &[String], f: FilterName| list.iter().any(|n| n.trim() == f.as_str());
        // Upstream honours `*` only as the sole entry and loses it in cloud
        // mode (where it appends to the list); any `*` entry disables all here.
        if self
            .disabled_resource_filters
            .iter()
            .any(|n| n.trim() == "*")
        {
            return Vec::new();
        }
        FilterName::ALL
            .into_iter()
            .filter(|f| !named(&self.disabled_resource_filters, *f))
            .filter(|f| {
                !(self.working_mode == WorkingMode::Cloud
                    && FilterName::DISABLED_IN_CLOUD_MODE.contains(f))
            })
            .filter(|f| {
                !(self.redirect_mode == RedirectMode::Ebpf
                    && FilterName::POD_STEERING.contains(f)
                    && !named(&self.enabled_resource_filters, *f))
            })
            .collect()
    }

    /// Names in the filter lists that are no filter (worth a warning).
    pub fn unknown_names(&self) -> Vec<String> {
        self.disabled_resource_filters
            .iter()
            .chain(&self.enabled_resource_filters)
            .map(|n| n.trim())
            .filter(|n| !n.is_empty() && *n != "*" && FilterName::parse(n).is_none())
            .map(str::to_owned)
            .collect()
    }
}

/// Finds the filter chain for a request.
pub struct FilterRegistry {
    enabled: Vec<FilterName>,
    multiplexer_component: String,
    /// Components added per filter by `yurt-hub-cfg`.
    additions: RwLock<BTreeMap<FilterName, Vec<String>>>,
    inputs: Arc<dyn FilterInputs>,
}

impl std::fmt::Debug for FilterRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilterRegistry")
            .field("enabled", &self.enabled)
            .field("additions", &self.additions())
            .finish_non_exhaustive()
    }
}

impl FilterRegistry {
    pub fn new(settings: &FilterSettings, inputs: Arc<dyn FilterInputs>) -> FilterRegistry {
        for name in settings.unknown_names() {
            tracing::warn!(filter = name, "unknown resource filter name ignored");
        }
        let enabled = settings.enabled_filters();
        tracing::info!(filters = ?enabled, "resource filters enabled");
        FilterRegistry {
            enabled,
            multiplexer_component: format!("{MULTIPLEXER_COMPONENT_PREFIX}{}", settings.node_name),
            additions: RwLock::new(BTreeMap::new()),
            inputs,
        }
    }

    /// The enabled filters in registration order.
    pub fn enabled(&self) -> &[FilterName] {
        &self.enabled
    }

    /// Whether readiness should wait for the [`super::ClusterView`] to have
    /// listed services and pools once (upstream: the servicetopology filter
    /// is a resource syncer, and only when it is enabled).
    pub fn needs_cluster_view_sync(&self) -> bool {
        self.enabled.contains(&FilterName::ServiceTopology)
    }

    /// The filters for a request, in registration order (empty: no filtering).
    /// `component` is the truncated, lower-cased User-Agent; `verb` the
    /// Kubernetes verb; `resource` the resource without subresource.
    pub fn filters_for(&self, component: &str, verb: &str, resource: &str) -> Vec<FilterName> {
        let component = component.trim();
        if component.is_empty()
            || component == HUB_COMPONENT
            || component == self.multiplexer_component
            || self.enabled.is_empty()
        {
            return Vec::new();
        }
        let additions = self.additions.read().unwrap_or_else(|e| e.into_inner());
        self.enabled
            .iter()
            .copied()
            .filter(|f| {
                let scope = f.scope();
                scope.covers(verb, resource)
                    && (scope.components.contains(&component)
                        || additions
                            .get(f)
                            .is_some_and(|c| c.iter().any(|c| c == component)))
            })
            .collect()
    }

    /// The chain for a request, `None` when no filter applies.
    pub fn chain_for(&self, component: &str, verb: &str, resource: &str) -> Option<FilterChain> {
        let filters = self.filters_for(component, verb, resource);
        (!filters.is_empty()).then(|| FilterChain::new(filters, self.inputs.clone()))
    }

    /// Applies the data of the `yurt-hub-cfg` ConfigMap: every key naming a
    /// filter adds its comma-separated components to that filter (other keys,
    /// such as `cache_agents`, are ignored here). Replaces earlier additions;
    /// returns whether they changed.
    pub fn set_config_map_data(&self, data: &BTreeMap<String, String>) -> bool {
        let mut new = BTreeMap::new();
        for (key, value) in data {
            let Some(filter) = FilterName::parse(key) else {
                continue;
            };
            let components: Vec<String> = value
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect();
            if !components.is_empty() {
                new.insert(filter, components);
            }
        }
        let mut additions = self.additions.write().unwrap_or_else(|e| e.into_inner());
        if *additions == new {
            return false;
        }
        tracing::info!(additions = ?new, "filter component additions from yurt-hub-cfg");
        *additions = new;
        true
    }

    /// The ConfigMap was deleted: back to the defaults.
    pub fn clear_config_map(&self) -> bool {
        self.set_config_map_data(&BTreeMap::new())
    }

    /// The current additions per filter.
    pub fn additions(&self) -> BTreeMap<FilterName, Vec<String>> {
        self.additions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::test_support::inputs;
    use FilterName::*;

    fn settings(mode: WorkingMode, redirect: RedirectMode, disabled: &[&str]) -> FilterSettings {
        FilterSettings {
            enable_resource_filter: true,
            disabled_resource_filters: disabled.iter().map(|s| s.to_string()).collect(),
            enabled_resource_filters: Vec::new(),
            working_mode: mode,
            redirect_mode: redirect,
            node_name: "node-1".into(),
        }
    }

    fn registry(s: &FilterSettings) -> FilterRegistry {
        FilterRegistry::new(s, Arc::new(inputs()))
    }

    #[test]
    fn enabled_filters_follow_mode_redirect_and_flags() {
        use RedirectMode::{Ebpf, None as NoRedirect};
        use WorkingMode::{Cloud, Edge};
        assert_eq!(
            settings(Edge, NoRedirect, &[]).enabled_filters(),
            FilterName::ALL.to_vec()
        );
        assert_eq!(
            settings(Edge, Ebpf, &[]).enabled_filters(),
            vec![
                ServiceTopology,
                DiscardCloudService,
                InClusterConfig,
                NodePortIsolation
            ]
        );
        assert_eq!(
            settings(Cloud, NoRedirect, &[]).enabled_filters(),
            vec![
                ServiceTopology,
                MasterService,
                InClusterConfig,
                NodePortIsolation
            ]
        );
        assert_eq!(
            settings(Edge, NoRedirect, &["servicetopology", "inclusterconfig"]).enabled_filters(),
            vec![
                MasterService,
                DiscardCloudService,
                NodePortIsolation,
                ForwardKubeSvcTraffic,
                ServiceEnvUpdater
            ]
        );
        assert!(
            settings(Edge, NoRedirect, &["*"])
                .enabled_filters()
                .is_empty()
        );
        assert!(
            settings(Cloud, NoRedirect, &["*"])
                .enabled_filters()
                .is_empty(),
            "* survives cloud mode"
        );
        let mut off = settings(Edge, NoRedirect, &[]);
        off.enable_resource_filter = false;
        assert!(off.enabled_filters().is_empty());

        let mut compat = settings(Edge, Ebpf, &["serviceenvupdater", "bogus"]);
        compat.enabled_resource_filters = vec!["masterservice".into(), "serviceenvupdater".into()];
        assert_eq!(
            compat.enabled_filters(),
            vec![
                ServiceTopology,
                MasterService,
                DiscardCloudService,
                InClusterConfig,
                NodePortIsolation
            ],
            "re-enabled steering filter, disabled still wins"
        );
        assert_eq!(compat.unknown_names(), vec!["bogus".to_owned()]);
    }

    #[test]
    fn default_scopes_match_upstream() {
        let r = registry(&settings(WorkingMode::Edge, RedirectMode::None, &[]));
        assert_eq!(
            r.filters_for("kubelet", "list", "services"),
            vec![MasterService]
        );
        assert_eq!(
            r.filters_for("kubelet", "watch", "services"),
            vec![MasterService]
        );
        assert!(r.filters_for("kubelet", "get", "services").is_empty());
        assert_eq!(
            r.filters_for("kube-proxy", "watch", "services"),
            vec![DiscardCloudService, NodePortIsolation]
        );
        assert_eq!(
            r.filters_for("kube-proxy", "list", "endpointslices"),
            vec![ServiceTopology, ForwardKubeSvcTraffic]
        );
        assert_eq!(
            r.filters_for("coredns", "watch", "endpointslices"),
            vec![ServiceTopology]
        );
        assert_eq!(
            r.filters_for("nginx-ingress-controller", "list", "endpoints"),
            vec![ServiceTopology]
        );
        for verb in ["get", "list", "watch"] {
            assert_eq!(
                r.filters_for("kubelet", verb, "configmaps"),
                vec![InClusterConfig],
                "{verb}"
            );
        }
        for verb in ["get", "list", "watch", "patch"] {
            assert_eq!(
                r.filters_for("kubelet", verb, "pods"),
                vec![ServiceEnvUpdater],
                "{verb}"
            );
        }
        assert!(r.filters_for("kubelet", "update", "pods").is_empty());
        assert!(r.filters_for("kubectl", "list", "services").is_empty());
    }

    #[test]
    fn hub_and_multiplexer_requests_are_never_filtered() {
        let r = registry(&settings(WorkingMode::Edge, RedirectMode::None, &[]));
        r.set_config_map_data(&BTreeMap::from([(
            "masterservice".to_owned(),
            "yurthub,multiplexer-proxy-node-1,multiplexer-proxy-node-2".to_owned(),
        )]));
        assert!(r.chain_for("yurthub", "list", "services").is_none());
        assert!(
            r.chain_for("multiplexer-proxy-node-1", "list", "services")
                .is_none()
        );
        assert!(r.chain_for("", "list", "services").is_none());
        assert!(
            r.chain_for("multiplexer-proxy-node-2", "list", "services")
                .is_some(),
            "another node's multiplexer is an ordinary client"
        );
    }

    #[test]
    fn config_map_additions_apply_live_and_revert() {
        let r = registry(&settings(WorkingMode::Edge, RedirectMode::None, &[]));
        assert!(
            r.filters_for("my-proxy", "list", "endpointslices")
                .is_empty()
        );
        let data = BTreeMap::from([
            (
                "servicetopology".to_owned(),
                " my-proxy, other ,".to_owned(),
            ),
            ("cache_agents".to_owned(), "foo".to_owned()),
            ("notafilter".to_owned(), "my-proxy".to_owned()),
        ]);
        assert!(r.set_config_map_data(&data));
        assert!(!r.set_config_map_data(&data), "same data: no change");
        assert_eq!(
            r.filters_for("my-proxy", "list", "endpointslices"),
            vec![ServiceTopology]
        );
        assert_eq!(
            r.filters_for("other", "watch", "endpoints"),
            vec![ServiceTopology]
        );
        assert!(r.filters_for("foo", "list", "endpointslices").is_empty());
        assert!(
            r.filters_for("My-Proxy", "list", "endpointslices")
                .is_empty(),
            "matched as given"
        );
        assert_eq!(
            r.filters_for("kube-proxy", "list", "endpointslices"),
            vec![ServiceTopology, ForwardKubeSvcTraffic],
            "defaults stay"
        );
        assert!(r.clear_config_map());
        assert!(
            r.filters_for("my-proxy", "list", "endpointslices")
                .is_empty()
        );
    }

    #[test]
    fn additions_to_disabled_filters_do_nothing() {
        let r = registry(&settings(WorkingMode::Edge, RedirectMode::Ebpf, &[]));
        r.set_config_map_data(&BTreeMap::from([(
            "masterservice".to_owned(),
            "foo".to_owned(),
        )]));
        assert!(r.chain_for("foo", "list", "services").is_none());
        assert!(
            r.chain_for("kubelet", "list", "services").is_none(),
            "masterservice is off with ebpf"
        );
    }
}
