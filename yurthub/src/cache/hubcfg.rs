//! The `yurt-hub-cfg` ConfigMap (§5.1): `cache_agents` extends the default
//! cache agents live. Only a ConfigMap carrying the label
//! `openyurt.io/configmap-name=yurt-hub-cfg` counts, as upstream. The last
//! setting seen is kept in the store, so a hub restarted offline caches and
//! answers for the same components; a deleted ConfigMap reverts to the
//! defaults.

use bytes::Bytes;

use super::manager::CacheManager;

const NAME: &str = "yurt-hub-cfg";
/// Where the last `cache_agents` value is kept in the store.
const DOCUMENT: &str = "_internal/cache_agents";

/// Restores the persisted `cache_agents` (call before serving).
pub fn restore(cache: &CacheManager) {
    if let Ok(Some(doc)) = cache.store().document(DOCUMENT) {
        let agents = String::from_utf8_lossy(&doc.body).into_owned();
        tracing::info!(%agents, "cache agents restored from the store");
        cache.agents().set_configured(&agents);
    }
}

/// Applies a `cache_agents` value (empty: the defaults only) and keeps it
/// in the store for offline restarts. The ConfigMap itself is polled by
/// `cloudsync`, which also feeds the filters from it.
pub async fn apply(cache: &CacheManager, agents: &str) {
    tracing::info!(%agents, "cache agents configured by {NAME}");
    cache.agents().set_configured(agents);
    if let Err(e) = cache
        .store()
        .put_document(DOCUMENT, "text/plain", Bytes::from(agents.to_owned()))
        .await
    {
        tracing::warn!(error = %e, "persisting the cache agents failed");
    }
}
