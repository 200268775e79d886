//! What the hub learns from the cloud about its own configuration, through
//! informers (one list, then a watch: see [`crate::informer`]) with the
//! hub's identity — nothing here polls:
//! - the labelled `yurt-hub-cfg` ConfigMap (§5.1), watched by name:
//!   `cache_agents` for the cache, per-filter component additions for the
//!   filter registry; a deleted ConfigMap reverts both to the defaults;
//! - the inputs of the pool-aware filters, into the filters' `ClusterView`:
//!   this Node (watched with `fieldSelector=metadata.name=<node>`), the
//!   NodePools (or NodeBuckets), and the Services — read from the
//!   multiplexer's shared services watch when it has one, so the hub opens
//!   no second stream for them.
//!
//! Readiness waits for the first sync only while the cloud is reachable: a
//! hub restarted offline must become ready from its cache (upstream stays
//! NotReady forever in that case).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::cache::CacheManager;
use crate::filters::{ClusterView, FilterRegistry};
use crate::informer::{Informer, Snapshot, Spec, Upstream};
use crate::remote::LoadBalancer;

const CONFIG_MAP: &str = "yurt-hub-cfg";

/// The consumers of what is learned.
pub struct Sync {
    pub upstream: Upstream,
    pub namespace: String,
    pub node: String,
    pub cache: Option<CacheManager>,
    pub filters: Option<Arc<FilterRegistry>>,
    pub view: Option<Arc<ClusterView>>,
    /// Services come from its shared watch when it watches them.
    pub multiplexer: Option<crate::multiplexer::Multiplexer>,
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

impl Synced {
    fn mark_first_round(&self) {
        if !self.first_round_done.swap(true, Ordering::AcqRel) {
            self.first_round.notify_waiters();
        }
    }
}

impl Sync {
    /// Starts the informers; they run until shutdown.
    pub fn spawn(self, state: Arc<Synced>, shutdown: CancellationToken) {
        let cm = Informer::spawn(
            Spec::new(
                format!("configmap/{CONFIG_MAP}"),
                format!("/api/v1/namespaces/{}/configmaps", self.namespace),
            )
            .named(CONFIG_MAP)
            .labels(&format!("openyurt.io/configmap-name={CONFIG_MAP}")),
            self.upstream.clone(),
            shutdown.clone(),
        );
        let me = Arc::new(self);
        let view_synced = me.spawn_view(&shutdown);
        let mut rx = cm.subscribe();
        tokio::spawn(async move {
            let mut last_data: Option<Option<BTreeMap<String, String>>> = None;
            loop {
                let snap = rx.borrow_and_update().clone();
                if snap.synced {
                    let data = config_map_data(&snap);
                    if last_data.as_ref() != Some(&data) {
                        me.apply_config_map(data.as_ref()).await;
                        last_data = Some(data);
                    }
                    state.config_map.store(true, Ordering::Release);
                    if let Some(v) = &view_synced {
                        // The view's own informers are listed too.
                        v.wait_synced(Duration::from_secs(10)).await;
                    }
                    state.mark_first_round();
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = rx.changed() => if r.is_err() { return },
                }
            }
        });
    }

    /// Feeds the `ClusterView` when a filter needs it; returns the pool
    /// informer (its first list is part of the first round).
    fn spawn_view(self: &Arc<Self>, shutdown: &CancellationToken) -> Option<Informer> {
        let (Some(view), Some(filters)) = (&self.view, &self.filters) else {
            return None;
        };
        if !filters.needs_cluster_view_sync() {
            return None;
        }
        let up = &self.upstream;
        let node = Informer::spawn(
            Spec::new(format!("node/{}", self.node), "/api/v1/nodes").named(&self.node),
            up.clone(),
            shutdown.clone(),
        );
        follow(node, shutdown.clone(), {
            let view = view.clone();
            move |snap| {
                if let Some(node) = snap.single() {
                    let labels: BTreeMap<String, String> =
                        serde_json::from_value(node["metadata"]["labels"].clone())
                            .unwrap_or_default();
                    view.observe_node_labels(&labels);
                }
            }
        });
        let pools = Informer::spawn(
            Spec::new("pools", view.pool_source().api_path()),
            up.clone(),
            shutdown.clone(),
        );
        follow(pools.clone(), shutdown.clone(), {
            let view = view.clone();
            move |snap| {
                for e in view.replace_pool_objects(snap.objects.values().map(|v| &**v)) {
                    tracing::warn!(error = %e, "pool object ignored");
                }
            }
        });
        let services = crate::storage::Gvr::new("", "v1", "services");
        match &self.multiplexer {
            Some(m) if m.watches(&services) => {
                tokio::spawn(services_from_multiplexer(
                    m.clone(),
                    services,
                    view.clone(),
                    shutdown.clone(),
                ));
            }
            _ => {
                let inf = Informer::spawn(
                    Spec::new("services", "/api/v1/services"),
                    up.clone(),
                    shutdown.clone(),
                );
                follow(inf, shutdown.clone(), {
                    let view = view.clone();
                    move |snap| {
                        view.replace_services(
                            snap.objects
                                .values()
                                .filter_map(|s| serde_json::from_value((**s).clone()).ok()),
                        )
                    }
                });
            }
        }
        Some(pools)
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
}

/// The ConfigMap's data: None when there is none.
fn config_map_data(snap: &Snapshot) -> Option<BTreeMap<String, String>> {
    snap.single().map(|cm| {
        cm["data"]
            .as_object()
            .map(|d| {
                d.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// Calls `f` with every synced state of `inf`.
fn follow(inf: Informer, shutdown: CancellationToken, f: impl Fn(&Snapshot) + Send + 'static) {
    let mut rx = inf.subscribe();
    tokio::spawn(async move {
        loop {
            let snap = rx.borrow_and_update().clone();
            if snap.synced {
                f(&snap);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = rx.changed() => if r.is_err() { return },
            }
        }
    });
}

/// Keeps the view's Services equal to the multiplexer's shared services
/// state: a snapshot, then its live events; a lag re-reads the snapshot.
async fn services_from_multiplexer(
    mux: crate::multiplexer::Multiplexer,
    gvr: crate::storage::Gvr,
    view: Arc<ClusterView>,
    shutdown: CancellationToken,
) {
    use tokio::sync::broadcast::error::RecvError;
    let parse =
        |json: &[u8]| serde_json::from_slice::<k8s_openapi::api::core::v1::Service>(json).ok();
    let cacher = loop {
        // The multiplexer starts its cachers once the proxy listens (at
        // start, milliseconds after this): a local wait, no upstream traffic.
        if let Some(c) = mux.shared(&gvr) {
            break c;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = cacher.wait_ready(Duration::from_secs(3600)) => {}
        }
        if !cacher.is_ready() {
            continue;
        }
        let mut events = {
            let state = cacher.read();
            let rx = cacher.subscribe();
            view.replace_services(state.objects.values().filter_map(|o| parse(&o.json)));
            rx
        };
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => return,
                e = events.recv() => e,
            };
            match ev {
                Ok(ev) => match (ev.kind, &ev.object) {
                    (crate::codec::EventType::Deleted, Some(o)) => {
                        view.remove_service(&o.namespace, &o.name)
                    }
                    (_, Some(o)) => {
                        if let Some(s) = parse(&o.json) {
                            view.upsert_service(s);
                        }
                    }
                    _ => {}
                },
                Err(RecvError::Lagged(_)) => break,
                Err(RecvError::Closed) => return,
            }
        }
    }
}
