//! Garbage collection of cached objects the cloud no longer has (§9.1),
//! fixing upstream's two misses:
//!
//! * pods: once at start, when a backend is healthy, the kubelet pods
//!   cached for this node that the apiserver no longer lists are removed
//!   (upstream builds its comparison keys wrongly and never matches);
//! * events: at start and every `--gc-frequency` (jittered ×1–×3), the cached events of
//!   every component, in both `events.v1.core` and
//!   `events.v1.events.k8s.io` (upstream only looks at the latter), are
//!   checked against the cloud and removed when it answers 404.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use tokio_util::sync::CancellationToken;

use super::manager::CacheManager;
use crate::remote::transport::Transports;
use crate::remote::{LoadBalancer, call_json};
use crate::storage::{Gvr, ObjectKey, ResourceKey, Space};

/// Events checked per GC round, so one round stays short.
const MAX_EVENTS_PER_ROUND: usize = 2000;
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Gc {
    pub cache: CacheManager,
    pub lb: Arc<LoadBalancer>,
    pub transports: Transports,
    pub frequency: Duration,
}

impl Gc {
    /// Pod GC once a backend is healthy (waiting up to `wait`), then the
    /// periodic events GC until shutdown.
    pub fn spawn(self, wait: Duration, shutdown: CancellationToken) {
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + wait;
            while self.lb.pick().is_none() && tokio::time::Instant::now() < deadline {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            match self.pods().await {
                Ok(n) => tracing::info!(removed = n, "pod GC done"),
                Err(e) => tracing::info!(reason = %e, "pod GC skipped"),
            }
            // Events too, once at start: a hub restarted after a long time
            // away does not wait a whole period to shed stale events.
            match self.events().await {
                Ok(n) => tracing::info!(removed = n, "events GC done"),
                Err(e) => tracing::info!(reason = %e, "events GC stopped"),
            }
            loop {
                let jitter = 1.0 + 2.0 * rand::random::<f64>();
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(self.frequency.mul_f64(jitter)) => {}
                }
                match self.events().await {
                    Ok(n) => tracing::info!(removed = n, "events GC done"),
                    Err(e) => tracing::info!(reason = %e, "events GC stopped"),
                }
            }
        });
    }

    /// Removes kubelet's cached pods of this node that the cloud no longer
    /// has. Returns how many were removed.
    pub async fn pods(&self) -> Result<u64, String> {
        let backend = self.lb.pick().ok_or("no healthy backend")?;
        let resource = ResourceKey::new("kubelet", Space::Full, Gvr::new("", "v1", "pods"));
        let cached = self
            .cache
            .store()
            .keys(&resource)
            .map_err(|e| e.to_string())?;
        if cached.is_empty() {
            return Ok(0);
        }
        let path = format!(
            "/api/v1/pods?fieldSelector=spec.nodeName%3D{}",
            self.cache.node()
        );
        let (code, list) = call_json(
            &self.transports,
            &backend,
            Method::GET,
            &path,
            None,
            CALL_TIMEOUT,
        )
        .await?;
        if code != StatusCode::OK {
            return Err(format!("listing this node's pods answered {code}"));
        }
        let live: HashSet<(String, String)> = list["items"]
            .as_array()
            .ok_or("pod list without items")?
            .iter()
            .map(|p| {
                let m = &p["metadata"];
                (
                    m["namespace"].as_str().unwrap_or_default().to_owned(),
                    m["name"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        let gone: Vec<ObjectKey> = cached
            .into_iter()
            .filter(|k| !live.contains(&(k.namespace.clone().unwrap_or_default(), k.name.clone())))
            .collect();
        if gone.is_empty() {
            return Ok(0);
        }
        if live.is_empty() {
            // An empty answer is more likely a cloud mishap than a node that
            // lost every pod; kubelet's own list will settle it.
            return Err("the cloud lists no pods for this node; keeping the cache".into());
        }
        tracing::info!(pods = ?gone.iter().map(|k| k.to_string()).collect::<Vec<_>>(), "removing cached pods the cloud no longer has");
        self.cache
            .store()
            .delete_many(gone)
            .await
            .map_err(|e| e.to_string())
    }

    /// Removes cached events the cloud answers 404 for.
    pub async fn events(&self) -> Result<u64, String> {
        let backend = self.lb.pick().ok_or("no healthy backend")?;
        let components = self.cache.store().components().map_err(|e| e.to_string())?;
        let mut gone = Vec::new();
        let mut checked = 0;
        'all: for component in components {
            for (group, prefix) in [("", "/api/v1"), ("events.k8s.io", "/apis/events.k8s.io/v1")] {
                let resource =
                    ResourceKey::new(&component, Space::Full, Gvr::new(group, "v1", "events"));
                let keys = self
                    .cache
                    .store()
                    .keys(&resource)
                    .map_err(|e| e.to_string())?;
                for key in keys {
                    if checked >= MAX_EVENTS_PER_ROUND {
                        break 'all;
                    }
                    checked += 1;
                    let ns = key.namespace.as_deref().unwrap_or("default");
                    let path = format!("{prefix}/namespaces/{ns}/events/{}", key.name);
                    let (code, _) = call_json(
                        &self.transports,
                        &backend,
                        Method::GET,
                        &path,
                        None,
                        CALL_TIMEOUT,
                    )
                    .await?;
                    match code {
                        StatusCode::NOT_FOUND => gone.push(key),
                        c if c.is_success() => {}
                        c => {
                            // Stop at the first real error, as upstream.
                            if !gone.is_empty() {
                                break 'all;
                            }
                            return Err(format!("{path} answered {c}"));
                        }
                    }
                }
            }
        }
        if gone.is_empty() {
            return Ok(0);
        }
        self.cache
            .store()
            .delete_many(gone)
            .await
            .map_err(|e| e.to_string())
    }
}
