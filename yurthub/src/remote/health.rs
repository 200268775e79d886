//! Lease-based health checking (§7.1 of the reference): a backend is healthy
//! when the hub can renew this node's Lease in `kube-node-lease` through it,
//! with the hub's own identity. That proves the apiserver is up, reachable,
//! authenticates the node and can write to etcd — a bare /healthz proves none
//! of the last three. Because kubelet's lease requests are answered locally
//! in edge mode, this renewal IS the node's heartbeat in the cloud; it stops
//! when kubelet itself stops touching its lease (the grace period), so a dead
//! kubelet is never hidden (upstream #420).
//!
//! Better than upstream: every backend is probed every interval (upstream
//! probes one per tick), and a transport error on a proxied request triggers
//! an immediate out-of-band probe, so a dead server is noticed in well under
//! one interval.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::transport::Transports;
use super::{Backend, LoadBalancer};
use crate::config::Heartbeat;

const LEASE_NAMESPACE: &str = "kube-node-lease";
const DELEGATE_ANNOTATION: &str = "openyurt.io/delegate-heartbeat";

/// Per-backend consecutive-success counters and the shared lease state.
pub struct HealthChecker {
    lb: Arc<LoadBalancer>,
    transports: Transports,
    node: String,
    cfg: Heartbeat,
    successes: Mutex<Vec<u32>>,
    /// The Lease as the cloud last returned it: the base of the next renewal,
    /// and what kubelet's local lease reads are answered with.
    lease: Mutex<Option<Value>>,
    node_uid: Mutex<Option<String>>,
    kubelet_seen: Mutex<Option<Instant>>,
    probe_now: Notify,
}

impl HealthChecker {
    pub fn new(
        lb: Arc<LoadBalancer>,
        transports: Transports,
        node: String,
        cfg: Heartbeat,
    ) -> Arc<HealthChecker> {
        let n = lb.backends().len();
        Arc::new(HealthChecker {
            lb,
            transports,
            node,
            cfg,
            successes: Mutex::new(vec![0; n]),
            lease: Mutex::new(None),
            node_uid: Mutex::new(None),
            kubelet_seen: Mutex::new(None),
            probe_now: Notify::new(),
        })
    }

    /// The init phase: one probe of every backend, concurrently; success makes
    /// a backend healthy at once, failure unhealthy.
    pub async fn initial_probe(&self) {
        for (i, b) in self.lb.backends().iter().enumerate() {
            let ok = self
                .probe(b)
                .await
                .map_err(|e| tracing::warn!(server = b.name(), error = %e, "initial probe failed"))
                .is_ok();
            b.set_healthy(ok);
            self.successes.lock().unwrap_or_else(|p| p.into_inner())[i] = u32::from(ok);
        }
    }

    /// Probes every backend each interval until shutdown.
    pub fn spawn(self: &Arc<Self>, shutdown: CancellationToken) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.cfg.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await; // the initial probe already ran
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                    _ = me.probe_now.notified() => {}
                }
                me.round().await;
            }
        });
    }

    /// A proxied request to `backend` failed at the transport level: probe now
    /// rather than at the next tick.
    pub fn report_transport_error(&self, backend: &Backend) {
        tracing::debug!(server = backend.name(), "transport error, probing now");
        self.probe_now.notify_one();
    }

    /// Kubelet touched its lease (any verb): it is alive.
    pub fn kubelet_lease_touched(&self) {
        *self.kubelet_seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// The lease as last renewed in the cloud, for kubelet's local reads.
    pub fn cloud_lease(&self) -> Option<Value> {
        self.lease.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn round(&self) {
        let kubelet_gone = self
            .kubelet_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t.elapsed() > self.cfg.kubelet_grace_period);
        for (i, b) in self.lb.backends().iter().enumerate() {
            let result = if kubelet_gone {
                Err("kubelet has not renewed its lease within the grace period; not renewing it for it".to_string())
            } else {
                self.probe(b).await
            };
            let mut successes = self.successes.lock().unwrap_or_else(|p| p.into_inner());
            match result {
                Ok(()) => {
                    successes[i] = successes[i].saturating_add(1);
                    if !b.is_healthy() && successes[i] >= self.cfg.healthy_threshold {
                        b.set_healthy(true);
                    }
                }
                Err(e) => {
                    tracing::debug!(server = b.name(), error = %e, "probe failed");
                    successes[i] = 0;
                    b.set_healthy(false);
                }
            }
        }
    }

    /// Renews the node Lease through `backend`, retrying conflicts.
    async fn probe(&self, backend: &Backend) -> Result<(), String> {
        let mut last_err = String::new();
        for _ in 0..self.cfg.failed_retry {
            let base = self.lease.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let base = match base {
                Some(l) => l,
                None => self.ensure_lease(backend).await?,
            };
            let lease = self.renewed(base, backend).await;
            let path = format!(
                "/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{}",
                self.node
            );
            match self.call(backend, Method::PUT, &path, Some(&lease)).await {
                Ok((StatusCode::OK, body)) => {
                    *self.lease.lock().unwrap_or_else(|p| p.into_inner()) = Some(body);
                    return Ok(());
                }
                Ok((StatusCode::CONFLICT | StatusCode::NOT_FOUND, _)) => {
                    // Someone else wrote it (or it was deleted): re-read and retry.
                    *self.lease.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    last_err = "lease changed concurrently".into();
                }
                Ok((code, body)) => {
                    last_err = format!("lease update returned {code}: {}", message(&body))
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err)
    }

    async fn ensure_lease(&self, backend: &Backend) -> Result<Value, String> {
        let path = format!(
            "/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{}",
            self.node
        );
        match self.call(backend, Method::GET, &path, None).await? {
            (StatusCode::OK, lease) => Ok(lease),
            (StatusCode::NOT_FOUND, _) => {
                let lease = json!({
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": self.node, "namespace": LEASE_NAMESPACE},
                    "spec": {
                        "holderIdentity": self.node,
                        "leaseDurationSeconds": self.cfg.kubelet_grace_period.as_secs(),
                        "renewTime": micro_time_now(),
                    }
                });
                let create =
                    format!("/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases");
                match self
                    .call(backend, Method::POST, &create, Some(&lease))
                    .await?
                {
                    (StatusCode::CREATED | StatusCode::OK, l) => Ok(l),
                    (code, body) => {
                        Err(format!("lease create returned {code}: {}", message(&body)))
                    }
                }
            }
            (code, body) => Err(format!("lease get returned {code}: {}", message(&body))),
        }
    }

    /// The base lease with a fresh renewTime, the delegate marker removed and
    /// the Node as owner (so the lease is collected with the node).
    async fn renewed(&self, mut lease: Value, backend: &Backend) -> Value {
        if let Some(a) = lease
            .pointer_mut("/metadata/annotations")
            .and_then(Value::as_object_mut)
        {
            a.remove(DELEGATE_ANNOTATION);
        }
        lease["spec"]["renewTime"] = json!(micro_time_now());
        if lease["spec"]["holderIdentity"]
            .as_str()
            .unwrap_or("")
            .is_empty()
        {
            lease["spec"]["holderIdentity"] = json!(self.node);
        }
        let has_owner = lease
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .is_some_and(|o| !o.is_empty());
        if !has_owner && let Some(uid) = self.node_uid(backend).await {
            lease["metadata"]["ownerReferences"] = json!([{
                "apiVersion": "v1", "kind": "Node", "name": self.node, "uid": uid
            }]);
        }
        lease
    }

    async fn node_uid(&self, backend: &Backend) -> Option<String> {
        if let Some(uid) = self
            .node_uid
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Some(uid);
        }
        let (code, node) = self
            .call(
                backend,
                Method::GET,
                &format!("/api/v1/nodes/{}", self.node),
                None,
            )
            .await
            .ok()?;
        let uid = (code == StatusCode::OK)
            .then(|| node.pointer("/metadata/uid")?.as_str().map(String::from))??;
        *self.node_uid.lock().unwrap_or_else(|p| p.into_inner()) = Some(uid.clone());
        Some(uid)
    }

    /// One JSON request with the hub's identity and the heartbeat timeout.
    async fn call(
        &self,
        backend: &Backend,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), String> {
        super::call_json(
            &self.transports,
            backend,
            method,
            path,
            body,
            self.cfg.timeout,
        )
        .await
        .map_err(String::from)
    }
}

fn message(status: &Value) -> &str {
    status["message"].as_str().unwrap_or("")
}

/// An error and its sources, joined: hyper's top-level errors say little.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// metav1.MicroTime in its RFC 3339 form with microseconds.
pub fn micro_time_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    now.format(&fmt).unwrap_or_default()
}
