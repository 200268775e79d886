//! What the hub learns from the cloud about its own configuration, polled
//! through a healthy backend with the hub's identity:
//! - the labelled `yurt-hub-cfg` ConfigMap (§5.1): `cache_agents` for the
//!   cache, per-filter component additions for the filter registry; a deleted
//!   ConfigMap reverts both to the defaults;
//! - the inputs of the pool-aware filters: Services, NodePools (or
//!   NodeBuckets) and this node's labels, into the filters' `ClusterView`.
//!
//! Readiness waits for the first sync only while the cloud is reachable: a
//! hub restarted offline must become ready from its cache (upstream stays
//! NotReady forever in that case).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::cache::CacheManager;
use crate::filters::{ClusterView, FilterRegistry};
use crate::remote::transport::Transports;
use crate::remote::{LoadBalancer, call_json};

const CONFIG_MAP: &str = "yurt-hub-cfg";
const TIMEOUT: Duration = Duration::from_secs(10);

/// The consumers of what is learned.
pub struct Sync {
    pub lb: Arc<LoadBalancer>,
    pub transports: Transports,
    pub namespace: String,
    pub node: String,
    pub cache: Option<CacheManager>,
    pub filters: Option<Arc<FilterRegistry>>,
    pub view: Option<Arc<ClusterView>>,
}

/// Whether the first syncs happened.
#[derive(Debug, Default)]
pub struct Synced {
    config_map: AtomicBool,
    first_round: tokio::sync::Notify,
    first_round_done: AtomicBool,
}

impl Synced {
    /// Waits (at most `within`) for the first round, so a hub that can reach
    /// the cloud starts ready instead of flapping through "not synced".
    pub async fn first_round(&self, within: Duration) {
        let notified = self.first_round.notified();
        if self.first_round_done.load(Ordering::Acquire) {
            return;
        }
        let _ = tokio::time::timeout(within, notified).await;
    }

    /// Upstream's readiness reasons, only while a backend is healthy.
    pub fn not_ready_reason(
        &self,
        lb: &LoadBalancer,
        filters: Option<&FilterRegistry>,
        view: Option<&ClusterView>,
    ) -> Option<String> {
        if !lb.any_healthy() {
            return None;
        }
        if !self.config_map.load(Ordering::Acquire) {
            return Some(format!("{CONFIG_MAP} configmap is not synced"));
        }
        let needs_view = filters.is_some_and(FilterRegistry::needs_cluster_view_sync);
        if needs_view && view.is_some_and(|v| !v.has_synced()) {
            return Some("resources needed by filters are not synced".into());
        }
        None
    }
}

impl Sync {
    /// Polls every `interval` until shutdown; the first round runs at once.
    pub fn spawn(self, state: Arc<Synced>, interval: Duration, shutdown: CancellationToken) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_data: Option<Option<BTreeMap<String, String>>> = None;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if let Some(data) = self.config_map().await {
                    if last_data.as_ref() != Some(&data) {
                        self.apply_config_map(data.as_ref()).await;
                        last_data = Some(data);
                    }
                    state.config_map.store(true, Ordering::Release);
                }
                if let (Some(view), Some(filters)) = (&self.view, &self.filters)
                    && filters.needs_cluster_view_sync()
                {
                    self.sync_view(view).await;
                }
                if !state.first_round_done.swap(true, Ordering::AcqRel) {
                    state.first_round.notify_waiters();
                }
            }
        });
    }

    async fn get(&self, path: &str) -> Option<(StatusCode, Value)> {
        let backend = self.lb.pick()?;
        match call_json(&self.transports, &backend, Method::GET, path, None, TIMEOUT).await {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::debug!(%path, error = %e, "cloud sync request failed");
                None
            }
        }
    }

    /// The labelled ConfigMap's data: Some(None) when there is none.
    async fn config_map(&self) -> Option<Option<BTreeMap<String, String>>> {
        let path = format!(
            "/api/v1/namespaces/{}/configmaps?labelSelector=openyurt.io%2Fconfigmap-name%3D{CONFIG_MAP}&fieldSelector=metadata.name%3D{CONFIG_MAP}",
            self.namespace
        );
        match self.get(&path).await? {
            (StatusCode::OK, list) => Some(
                list["items"]
                    .as_array()
                    .and_then(|items| items.first())
                    .map(|cm| {
                        cm["data"]
                            .as_object()
                            .map(|d| {
                                d.iter()
                                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                                    .collect()
                            })
                            .unwrap_or_default()
                    }),
            ),
            (code, _) => {
                tracing::debug!(%code, "reading {CONFIG_MAP} failed");
                None
            }
        }
    }

    async fn apply_config_map(&self, data: Option<&BTreeMap<String, String>>) {
        tracing::info!(present = data.is_some(), "{CONFIG_MAP} changed");
        if let Some(filters) = &self.filters {
            match data {
                Some(d) => filters.set_config_map_data(d),
                None => filters.clear_config_map(),
            };
        }
        if let Some(cache) = &self.cache {
            let agents = data
                .and_then(|d| d.get(crate::filters::CACHE_AGENTS_KEY))
                .map(String::as_str)
                .unwrap_or("");
            crate::cache::hubcfg::apply(cache, agents).await;
        }
    }

    async fn sync_view(&self, view: &ClusterView) {
        if let Some((StatusCode::OK, node)) =
            self.get(&format!("/api/v1/nodes/{}", self.node)).await
        {
            let labels: BTreeMap<String, String> =
                serde_json::from_value(node["metadata"]["labels"].clone()).unwrap_or_default();
            view.observe_node_labels(&labels);
        }
        if let Some((StatusCode::OK, list)) = self.get("/api/v1/services").await {
            let services = list["items"]
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|s| serde_json::from_value(s.clone()).ok())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            view.replace_services(services);
        }
        match self.get(view.pool_source().api_path()).await {
            Some((StatusCode::OK, list)) => {
                let items = list["items"].as_array().cloned().unwrap_or_default();
                for e in view.replace_pool_objects(items.iter()) {
                    tracing::warn!(error = %e, "pool object ignored");
                }
            }
            // No NodePool CRD in this cluster: there are no pools to know.
            Some((StatusCode::NOT_FOUND, _)) => {
                view.replace_pool_objects(std::iter::empty());
            }
            _ => {}
        }
    }
}
