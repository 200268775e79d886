//! The `yurt-hub-cfg` ConfigMap (§5.1): `cache_agents` extends the default
//! cache agents live. Only a ConfigMap carrying the label
//! `openyurt.io/configmap-name=yurt-hub-cfg` counts, as upstream. The last
//! setting seen is kept in the store, so a hub restarted offline caches and
//! answers for the same components; a deleted ConfigMap reverts to the
//! defaults.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use tokio_util::sync::CancellationToken;

use super::manager::CacheManager;
use crate::remote::transport::Transports;
use crate::remote::{LoadBalancer, call_json};

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

/// Polls the ConfigMap through a healthy backend every `interval`.
pub fn spawn(
    cache: CacheManager,
    lb: Arc<LoadBalancer>,
    transports: Transports,
    namespace: String,
    interval: Duration,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let path = format!(
            "/api/v1/namespaces/{namespace}/configmaps?labelSelector=openyurt.io%2Fconfigmap-name%3D{NAME}&fieldSelector=metadata.name%3D{NAME}"
        );
        let mut last: Option<String> = None;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(backend) = lb.pick() else { continue };
            let list = match call_json(
                &transports,
                &backend,
                Method::GET,
                &path,
                None,
                Duration::from_secs(10),
            )
            .await
            {
                Ok((StatusCode::OK, v)) => v,
                Ok((code, _)) => {
                    tracing::debug!(%code, "reading {NAME} failed");
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "reading {NAME} failed");
                    continue;
                }
            };
            let agents = list["items"]
                .as_array()
                .and_then(|items| items.first())
                .and_then(|cm| cm["data"]["cache_agents"].as_str())
                .unwrap_or("")
                .to_owned();
            if last.as_deref() == Some(agents.as_str()) {
                continue;
            }
            tracing::info!(%agents, "cache agents configured by {NAME}");
            cache.agents().set_configured(&agents);
            match cache
                .store()
                .put_document(DOCUMENT, "text/plain", Bytes::from(agents.clone()))
                .await
            {
                Ok(()) => last = Some(agents),
                Err(e) => tracing::warn!(error = %e, "persisting the cache agents failed"),
            }
        }
    });
}
