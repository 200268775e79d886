//! The cloud side: apiserver backends, the load balancer that picks one, the
//! lease-based health checker that decides which are usable, and the
//! transports that reach them.

pub mod health;
pub mod transport;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http::Uri;
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;

use crate::config::LbMode;
use crate::metrics::{Metrics, ServerLabels};

/// One kube-apiserver from `--server-addr`.
#[derive(Debug)]
pub struct Backend {
    uri: Uri,
    name: String,
    healthy: AtomicBool,
    /// False until the first probe answered (either way): requests wait
    /// briefly for it instead of being served from an empty cache.
    known: AtomicBool,
    /// Publishes (known, healthy) so waiters wake on a change instead of polling.
    state: tokio::sync::watch::Sender<(bool, bool)>,
    /// Cancelled when the backend turns unhealthy: streams opened through it
    /// (watches above all) end promptly so clients re-list elsewhere.
    epoch: std::sync::Mutex<CancellationToken>,
    epoch_id: std::sync::atomic::AtomicU64,
    gauge: Gauge,
}

impl Backend {
    pub fn new(uri: Uri, healthy: bool, metrics: &Metrics) -> Backend {
        let name = uri
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_else(|| uri.to_string());
        let gauge = metrics
            .server_healthy_status
            .get_or_create(&ServerLabels {
                server: uri.to_string(),
            })
            .clone();
        gauge.set(i64::from(healthy));
        Backend {
            uri,
            name,
            healthy: AtomicBool::new(healthy),
            // Cloud mode has no checker: its backends start known-healthy.
            known: AtomicBool::new(healthy),
            state: tokio::sync::watch::Sender::new((healthy, healthy)),
            epoch: std::sync::Mutex::new(CancellationToken::new()),
            epoch_id: std::sync::atomic::AtomicU64::new(0),
            gauge,
        }
    }

    /// host:port, for logs and labels.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Counts the backend's turns to unhealthy; a stream remembers the
    /// count it started in and asks [`Backend::epoch_since`] later.
    pub fn epoch_id(&self) -> u64 {
        self.epoch_id.load(Ordering::Acquire)
    }

    /// A token cancelled when this backend next turns unhealthy, or one
    /// already cancelled if it turned unhealthy since `epoch_id`.
    pub fn epoch_since(&self, epoch_id: u64) -> CancellationToken {
        let epoch = self.epoch.lock().unwrap_or_else(|p| p.into_inner());
        if self.epoch_id.load(Ordering::Acquire) == epoch_id {
            return epoch.child_token();
        }
        let ended = CancellationToken::new();
        ended.cancel();
        ended
    }

    /// Whether a probe has answered since start.
    pub fn is_known(&self) -> bool {
        self.known.load(Ordering::Acquire)
    }

    /// (known, healthy), updated on every change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<(bool, bool)> {
        self.state.subscribe()
    }

    /// Records a health transition; returns whether it changed.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        let was_known = self.known.swap(true, Ordering::AcqRel);
        let was = self.healthy.swap(healthy, Ordering::AcqRel);
        if was == healthy {
            if !was_known {
                self.state.send_replace((true, healthy));
            }
            return false;
        }
        self.state.send_replace((true, healthy));
        self.gauge.set(i64::from(healthy));
        if !healthy {
            let mut epoch = self.epoch.lock().unwrap_or_else(|p| p.into_inner());
            epoch.cancel();
            *epoch = CancellationToken::new();
            self.epoch_id.fetch_add(1, Ordering::AcqRel);
        }
        tracing::warn!(server = %self.name, healthy, "backend health changed");
        true
    }

    /// The backend's scheme and authority with the given path and query
    /// (no re-parse: the parts share their bytes).
    pub fn uri_with(&self, path_and_query: http::uri::PathAndQuery) -> Uri {
        let mut parts = self.uri.clone().into_parts();
        parts.path_and_query = Some(path_and_query);
        Uri::from_parts(parts).unwrap_or_else(|_| self.uri.clone())
    }

    /// The upstream URI for a request path and query.
    pub fn url_for(&self, path_and_query: &str) -> Uri {
        match path_and_query.parse() {
            Ok(pq) => self.uri_with(pq),
            Err(_) => self.uri.clone(),
        }
    }
}

/// Picks a healthy backend per `--lb-mode`.
#[derive(Debug)]
pub struct LoadBalancer {
    backends: Vec<Arc<Backend>>,
    mode: LbMode,
    next: AtomicUsize,
}

impl LoadBalancer {
    pub fn new(backends: Vec<Arc<Backend>>, mode: LbMode) -> LoadBalancer {
        LoadBalancer {
            backends,
            mode,
            next: AtomicUsize::new(0),
        }
    }

    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// rr: the next healthy backend in rotation; priority: the first healthy
    /// one in `--server-addr` order. None when every backend is unhealthy.
    pub fn pick(&self) -> Option<Arc<Backend>> {
        let n = self.backends.len();
        match self.mode {
            LbMode::Priority => self.backends.iter().find(|b| b.is_healthy()).cloned(),
            LbMode::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|i| &self.backends[(start + i) % n])
                    .find(|b| b.is_healthy())
                    .cloned()
            }
        }
    }

    pub fn any_healthy(&self) -> bool {
        self.backends.iter().any(|b| b.is_healthy())
    }

    /// The backend the hub's own periodic traffic (the lease renewal) goes
    /// through: the first healthy one in `--server-addr` order, whatever the
    /// mode, so one renewal per interval suffices.
    pub fn current(&self) -> Option<Arc<Backend>> {
        self.backends.iter().find(|b| b.is_healthy()).cloned()
    }

    /// True while no backend is healthy and some was never probed: the
    /// cloud's state is not known yet.
    pub fn health_unknown(&self) -> bool {
        !self.any_healthy() && self.backends.iter().any(|b| !b.is_known())
    }

    /// Waits until some backend is healthy (woken by the change, no polling).
    pub async fn wait_healthy(&self) {
        let mut rxs: Vec<_> = self.backends.iter().map(|b| b.subscribe()).collect();
        loop {
            if self.any_healthy() {
                return;
            }
            let changes = rxs.iter_mut().map(|rx| Box::pin(rx.changed()));
            if futures_util::future::select_all(changes).await.0.is_err() {
                // A sender dropped: the backends are going away.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Picks a backend, first waiting up to `within` while the cloud's
    /// health is unknown (at start, before the first probe answered).
    pub async fn pick_when_known(&self, within: Duration) -> Pick {
        if let Some(b) = self.pick() {
            return Pick::Backend(b);
        }
        if !self.health_unknown() {
            return Pick::Down;
        }
        let mut rxs: Vec<_> = self.backends.iter().map(|b| b.subscribe()).collect();
        let wait = async {
            while self.health_unknown() {
                let changes = rxs.iter_mut().map(|rx| Box::pin(rx.changed()));
                if futures_util::future::select_all(changes).await.0.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        let _ = tokio::time::timeout(within, wait).await;
        match self.pick() {
            Some(b) => Pick::Backend(b),
            None if self.health_unknown() => Pick::Unknown,
            None => Pick::Down,
        }
    }
}

/// What [`LoadBalancer::pick_when_known`] found.
#[derive(Debug)]
pub enum Pick {
    Backend(Arc<Backend>),
    /// No probe answered yet: the caller answers a retryable 503.
    Unknown,
    /// Every backend is known to be unhealthy.
    Down,
}

/// How the hub's own upstream calls fail.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("building the request to {server}: {reason}")]
    Build { server: String, reason: String },
    #[error("{server}: {reason}")]
    Transport { server: String, reason: String },
    #[error("{server}: reading the body: {reason}")]
    Body { server: String, reason: String },
    #[error("{server}: timed out after {after:?}")]
    Timeout { server: String, after: Duration },
}

impl CallError {
    /// The apiserver never answered (connection-level): it costs the
    /// apiserver nothing to probe again soon.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            CallError::Transport { .. } | CallError::Timeout { .. }
        )
    }
}

impl From<CallError> for String {
    fn from(e: CallError) -> String {
        e.to_string()
    }
}

/// One JSON request to `backend` with the hub's identity, bounded by
/// `timeout`: the hub's own control-plane calls (lease, Service lookups).
pub async fn call_json(
    transports: &transport::Transports,
    backend: &Backend,
    method: http::Method,
    path: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<(http::StatusCode, serde_json::Value), CallError> {
    let call = ApiCall {
        method,
        path,
        body: body.map(|b| ("application/json", bytes::Bytes::from(b.to_string()))),
        accept: "application/json",
    };
    call_api(transports, backend, call, timeout).await
}

/// A request of the hub's own, in any body type and with any Accept.
pub struct ApiCall<'a> {
    pub method: http::Method,
    pub path: &'a str,
    /// The content type and the bytes.
    pub body: Option<(&'static str, bytes::Bytes)>,
    pub accept: &'static str,
}

/// Sends `call` with the hub's identity on its control connections
/// ([`transport::Transports::control`]), bounded by `timeout`. The answer
/// comes back as JSON whatever was negotiated: a protobuf answer (the
/// compact one, where the apiserver offers it) is decoded here.
pub async fn call_api(
    transports: &transport::Transports,
    backend: &Backend,
    call: ApiCall<'_>,
    timeout: Duration,
) -> Result<(http::StatusCode, serde_json::Value), CallError> {
    use http_body_util::BodyExt;
    let server = || backend.name().to_owned();
    let mut req = http::Request::builder()
        .method(call.method)
        .uri(backend.url_for(call.path))
        .header(http::header::USER_AGENT, crate::user_agent())
        .header(http::header::ACCEPT, call.accept);
    let body = match call.body {
        Some((content_type, bytes)) => {
            req = req.header(http::header::CONTENT_TYPE, content_type);
            bytes
        }
        None => bytes::Bytes::new(),
    };
    let req = req
        .body(crate::full_body(body))
        .map_err(|e| CallError::Build {
            server: server(),
            reason: e.to_string(),
        })?;
    let client = transports.control();
    let fut = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| CallError::Transport {
                server: server(),
                reason: health::error_chain(&e),
            })?;
        let code = resp.status();
        let protobuf = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/vnd.kubernetes.protobuf"));
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| CallError::Body {
                server: server(),
                reason: e.to_string(),
            })?
            .to_bytes();
        let value = if protobuf {
            crate::codec::to_json(&bytes).map_err(|e| CallError::Body {
                server: server(),
                reason: format!("undecodable protobuf answer: {e}"),
            })?
        } else {
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
        };
        Ok((code, value))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| CallError::Timeout {
            server: server(),
            after: timeout,
        })?
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;

    fn lb(mode: LbMode) -> LoadBalancer {
        let m = Metrics::register(&mut Registry::default());
        let b = ["https://a:1", "https://b:1", "https://c:1"]
            .iter()
            .map(|u| Arc::new(Backend::new(u.parse().unwrap(), true, &m)))
            .collect();
        LoadBalancer::new(b, mode)
    }

    #[test]
    fn round_robin_skips_unhealthy() {
        let lb = lb(LbMode::RoundRobin);
        lb.backends()[1].set_healthy(false);
        let picks: Vec<_> = (0..4)
            .map(|_| lb.pick().unwrap().name().to_string())
            .collect();
        assert!(!picks.contains(&"b:1".to_string()), "{picks:?}");
        assert!(
            picks.contains(&"a:1".to_string()) && picks.contains(&"c:1".to_string()),
            "{picks:?}"
        );
    }

    #[test]
    fn priority_prefers_first_healthy_and_returns() {
        let lb = lb(LbMode::Priority);
        assert_eq!(lb.pick().unwrap().name(), "a:1");
        lb.backends()[0].set_healthy(false);
        assert_eq!(lb.pick().unwrap().name(), "b:1");
        lb.backends()[0].set_healthy(true);
        assert_eq!(lb.pick().unwrap().name(), "a:1");
        for b in lb.backends() {
            b.set_healthy(false);
        }
        assert!(lb.pick().is_none());
    }

    #[test]
    fn turning_unhealthy_cancels_open_streams() {
        let lb = lb(LbMode::Priority);
        let b = &lb.backends()[0];
        let token = b.epoch_since(b.epoch_id());
        assert!(!token.is_cancelled());
        b.set_healthy(false);
        assert!(token.is_cancelled());
        b.set_healthy(true);
        assert!(
            !b.epoch_since(b.epoch_id()).is_cancelled(),
            "a new epoch starts after recovery"
        );
    }

    #[test]
    fn a_stream_that_asks_late_still_sees_the_turn_it_missed() {
        let lb = lb(LbMode::Priority);
        let b = &lb.backends()[0];
        let started_in = b.epoch_id();
        assert!(!b.epoch_since(started_in).is_cancelled());
        // Unhealthy and healthy again before the stream first waited.
        b.set_healthy(false);
        b.set_healthy(true);
        assert!(b.epoch_since(started_in).is_cancelled());
        assert!(!b.epoch_since(b.epoch_id()).is_cancelled());
    }

    #[test]
    fn url_for_keeps_scheme_and_authority() {
        let lb = lb(LbMode::Priority);
        assert_eq!(
            lb.backends()[0].url_for("/api/v1/pods?watch=1").to_string(),
            "https://a:1/api/v1/pods?watch=1"
        );
    }
}
