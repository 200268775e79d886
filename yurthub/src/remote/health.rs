//! Lease-based health checking (§7.1 of the reference): a backend is healthy
//! when the hub can renew this node's Lease in `kube-node-lease` through it,
//! with the hub's own identity. That proves the apiserver is up, reachable,
//! authenticates the node and can write to etcd — a bare /healthz proves none
//! of the last three. Because kubelet's lease requests are answered locally
//! in edge mode, this renewal IS the node's heartbeat in the cloud; it stops
//! when kubelet itself stops touching its lease (the grace period), so a dead
//! kubelet is never hidden (upstream #420).
//!
//! The probing rules (multiply every periodic request by a fleet):
//! - **Healthy, current** (the first healthy backend in `--server-addr`
//!   order): one lease renewal per `--heartbeat-interval`. That is the only
//!   renewal per interval per node, whatever the number of backends.
//! - **Healthy, not current**: `GET /readyz` every [`CHEAP_EVERY`]th
//!   interval: no etcd write, a few bytes. It proves reachability and
//!   authentication; the renewal proves the rest once it becomes current.
//! - **Unhealthy or unknown**: probed with jittered exponential backoff from
//!   [`BACKOFF_FIRST`] (the first probe within 1 s), doubling. When the
//!   probe never reached an apiserver (refused, reset, timed out), the cap
//!   is min(`--heartbeat-interval`, [`UNREACHABLE_CAP`]): such a probe costs
//!   the apiserver nothing, and the hub must notice the return within
//!   seconds. When an apiserver answered with an error (5xx, 429, 403) the
//!   cap is the heartbeat interval: an overloaded control plane is not
//!   probed harder than it is heartbeated. The jitter (50–100 %) keeps a
//!   fleet that lost the cloud together from returning in lockstep. The
//!   probe is the lease renewal while no backend is healthy (it is then the
//!   heartbeat), `/readyz` otherwise.
//! - After a success while not yet healthy the next probe follows at once
//!   ([`CONFIRM_AFTER`]), so `--heartbeat-healthy-threshold` successes take
//!   a fraction of a second, not thresholds × intervals.
//! - **Unknown** (at start, or when the client certificate changes): probe at
//!   once. A transport error or a stalled stream on a proxied request
//!   triggers an immediate probe of that backend.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use rand::Rng;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::transport::Transports;
use super::{Backend, CallError, LoadBalancer};
use crate::config::Heartbeat;

const LEASE_NAMESPACE: &str = "kube-node-lease";
const DELEGATE_ANNOTATION: &str = "openyurt.io/delegate-heartbeat";
/// What a compact renewal asks back: the lease's metadata only, in protobuf
/// where the apiserver offers it (the spec is what the hub just sent).
const COMPACT_ACCEPT: &str = "application/vnd.kubernetes.protobuf;as=PartialObjectMetadata;g=meta.k8s.io;v=v1, application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1, application/json";

/// Non-current healthy backends are probed every this many intervals.
pub const CHEAP_EVERY: u32 = 3;
/// The first retry of a failed backend (before jitter).
pub const BACKOFF_FIRST: Duration = Duration::from_millis(500);
/// The backoff cap while the apiserver is unreachable.
pub const UNREACHABLE_CAP: Duration = Duration::from_secs(2);
/// The wait before confirming a success while not yet healthy.
pub const CONFIRM_AFTER: Duration = Duration::from_millis(100);

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("{what} returned {code}: {message}")]
    Answered {
        what: &'static str,
        code: StatusCode,
        message: String,
    },
    #[error("lease changed concurrently")]
    Conflict,
    #[error("kubelet has not renewed its lease within the grace period; not renewing it for it")]
    KubeletGone,
    #[error("no client certificate yet")]
    NoCredentials,
}

impl ProbeError {
    /// The probe never reached an apiserver.
    fn unreachable(&self) -> bool {
        matches!(self, ProbeError::Call(c) if c.is_unreachable())
    }
}

/// Per-backend probe schedule.
#[derive(Debug, Clone)]
struct Schedule {
    successes: u32,
    due: Instant,
    backoff: Duration,
    rounds: u32,
}

/// Per-backend probe schedules and the shared lease state.
pub struct HealthChecker {
    lb: Arc<LoadBalancer>,
    transports: Transports,
    node: String,
    cfg: Heartbeat,
    schedule: Mutex<Vec<Schedule>>,
    /// The Lease as the cloud last returned it: the base of the next renewal,
    /// and what kubelet's local lease reads are answered with.
    lease: Mutex<Option<Value>>,
    node_uid: Mutex<Option<String>>,
    kubelet_seen: Mutex<Option<Instant>>,
    probe_now: Notify,
    credentials: OnceLock<crate::certificates::Slot>,
}

impl HealthChecker {
    pub fn new(
        lb: Arc<LoadBalancer>,
        transports: Transports,
        node: String,
        cfg: Heartbeat,
    ) -> Arc<HealthChecker> {
        let n = lb.backends().len();
        let now = Instant::now();
        Arc::new(HealthChecker {
            lb,
            transports,
            node,
            cfg,
            schedule: Mutex::new(vec![
                Schedule {
                    successes: 0,
                    due: now,
                    backoff: BACKOFF_FIRST,
                    rounds: 0,
                };
                n
            ]),
            lease: Mutex::new(None),
            node_uid: Mutex::new(None),
            kubelet_seen: Mutex::new(None),
            probe_now: Notify::new(),
            credentials: OnceLock::new(),
        })
    }

    /// The hub's client certificate: no probe runs without one (it could
    /// only fail), and every change of it makes health unknown again, so
    /// every backend is probed at once.
    pub fn watch_credentials(&self, slot: crate::certificates::Slot) {
        let _ = self.credentials.set(slot);
    }

    fn has_credentials(&self) -> bool {
        self.credentials.get().is_none_or(|s| s.is_set())
    }

    /// The init phase: one probe of every backend; success makes a backend
    /// healthy at once, failure unhealthy. Without credentials yet, health
    /// stays unknown and the backends are probed when they arrive.
    pub async fn initial_probe(&self) {
        if !self.has_credentials() {
            tracing::info!("no client certificate yet; probing once it is installed");
            return;
        }
        for (i, b) in self.lb.backends().iter().enumerate() {
            let ok = self
                .probe(b, true)
                .await
                .map_err(|e| tracing::warn!(server = b.name(), error = %e, "initial probe failed"))
                .is_ok();
            b.set_healthy(ok);
            let mut s = self.schedule.lock().unwrap_or_else(|p| p.into_inner());
            s[i].successes = u32::from(ok);
            s[i].due = Instant::now()
                + if ok {
                    self.cfg.interval
                } else {
                    jitter(BACKOFF_FIRST)
                };
        }
    }

    /// Probes per the rules above until shutdown.
    pub fn spawn(self: &Arc<Self>, shutdown: CancellationToken) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut creds = me.credentials.get().map(|s| s.subscribe());
            loop {
                let due = me
                    .schedule
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .map(|s| s.due)
                    .min()
                    .unwrap_or_else(|| Instant::now() + me.cfg.interval);
                let creds_changed = async {
                    match &mut creds {
                        Some(rx) => {
                            if rx.changed().await.is_err() {
                                std::future::pending::<()>().await
                            }
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep_until(due.into()) => {}
                    _ = me.probe_now.notified() => {}
                    _ = creds_changed => {
                        tracing::info!("client certificate changed; probing every backend now");
                        me.all_due_now();
                    }
                }
                me.round().await;
            }
        });
    }

    fn all_due_now(&self) {
        let now = Instant::now();
        for s in self
            .schedule
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter_mut()
        {
            s.due = now;
        }
    }

    /// A proxied request to `backend` failed at the transport level, or a
    /// stream through it went silent: probe it now rather than later.
    pub fn report_transport_error(&self, backend: &Backend) {
        tracing::debug!(server = backend.name(), "transport error, probing now");
        if let Some(i) = self
            .lb
            .backends()
            .iter()
            .position(|b| std::ptr::eq(&**b, backend))
        {
            self.schedule.lock().unwrap_or_else(|p| p.into_inner())[i].due = Instant::now();
        }
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

    /// Probes the backends that are due.
    async fn round(&self) {
        if !self.has_credentials() {
            // Nothing can succeed yet; the credentials' arrival wakes us.
            let far = Instant::now() + self.cfg.interval;
            for s in self
                .schedule
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter_mut()
            {
                s.due = far;
            }
            return;
        }
        let kubelet_gone = self
            .kubelet_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t.elapsed() > self.cfg.kubelet_grace_period);
        let now = Instant::now();
        let current = self.lb.current();
        for (i, b) in self.lb.backends().iter().enumerate() {
            let sched = self.schedule.lock().unwrap_or_else(|p| p.into_inner())[i].clone();
            if sched.due > now {
                continue;
            }
            let is_current = current.as_ref().is_some_and(|c| Arc::ptr_eq(c, b));
            let healthy = b.is_healthy();
            // Healthy but not current: only every CHEAP_EVERY-th interval.
            if healthy && !is_current && !(sched.rounds + 1).is_multiple_of(CHEAP_EVERY) {
                let mut s = self.schedule.lock().unwrap_or_else(|p| p.into_inner());
                s[i].rounds = s[i].rounds.wrapping_add(1);
                s[i].due = now + self.cfg.interval;
                continue;
            }
            let renew = is_current || !self.lb.any_healthy();
            let result = if renew && kubelet_gone {
                Err(ProbeError::KubeletGone)
            } else {
                self.probe(b, renew).await
            };
            let mut s = self.schedule.lock().unwrap_or_else(|p| p.into_inner());
            let s = &mut s[i];
            s.rounds = s.rounds.wrapping_add(1);
            match result {
                Ok(()) => {
                    s.successes = s.successes.saturating_add(1);
                    s.backoff = BACKOFF_FIRST;
                    if !b.is_healthy() && s.successes >= self.cfg.healthy_threshold {
                        b.set_healthy(true);
                    }
                    s.due = Instant::now()
                        + if b.is_healthy() {
                            self.cfg.interval
                        } else {
                            CONFIRM_AFTER
                        };
                }
                Err(e) => {
                    tracing::debug!(server = b.name(), error = %e, "probe failed");
                    let cap = if e.unreachable() {
                        self.cfg.interval.min(UNREACHABLE_CAP)
                    } else {
                        self.cfg.interval
                    };
                    let was_healthy = b.is_healthy();
                    s.successes = 0;
                    b.set_healthy(false);
                    // A backend that just failed is retried at once-ish; a
                    // failing one backs off.
                    let wait = if was_healthy {
                        BACKOFF_FIRST
                    } else {
                        s.backoff.min(cap)
                    };
                    s.due = Instant::now() + jitter(wait);
                    s.backoff = (s.backoff * 2).min(cap);
                }
            }
        }
    }

    /// `renew`: renew the lease (the heartbeat); else the cheap `/readyz`.
    async fn probe(&self, backend: &Backend, renew: bool) -> Result<(), ProbeError> {
        if !renew {
            return match self.call(backend, Method::GET, "/readyz", None).await? {
                (StatusCode::OK, _) => Ok(()),
                (code, _) => Err(ProbeError::Answered {
                    what: "readyz",
                    code,
                    message: String::new(),
                }),
            };
        }
        self.renew(backend).await
    }

    /// Renews the node Lease through `backend`, retrying conflicts.
    ///
    /// The renewal is the one request every node sends every interval, so
    /// it is made as small as the API allows: once the lease is as the hub
    /// wants it (holder, owner, no delegate marker), a merge patch of
    /// `renewTime` alone, with the resourceVersion as its precondition, is
    /// answered as PartialObjectMetadata in protobuf where offered. The
    /// lease kept for kubelet's local reads is the last whole one with that
    /// metadata and renewTime: the precondition guarantees nobody else
    /// changed it in between. A lease that needs more than a new renewTime
    /// is written whole (PUT), as upstream does every time.
    async fn renew(&self, backend: &Backend) -> Result<(), ProbeError> {
        let mut last_err = ProbeError::Conflict;
        for _ in 0..self.cfg.failed_retry.max(1) {
            let base = self.lease.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let base = match base {
                Some(l) => l,
                None => self.ensure_lease(backend).await?,
            };
            let now = micro_time_now();
            let wanted = self.renewed(base.clone(), &now, backend).await;
            let mut just_renewed = base;
            just_renewed["spec"]["renewTime"] = json!(now);
            let compact = wanted == just_renewed;
            let answer = if compact {
                self.renew_compact(backend, &wanted, &now).await
            } else {
                self.renew_whole(backend, &wanted).await
            };
            match answer {
                Ok((StatusCode::OK, body)) => {
                    let lease = if compact {
                        let mut lease = wanted;
                        lease["metadata"] = body["metadata"].clone();
                        lease
                    } else {
                        body
                    };
                    *self.lease.lock().unwrap_or_else(|p| p.into_inner()) = Some(lease);
                    return Ok(());
                }
                Ok((StatusCode::CONFLICT | StatusCode::NOT_FOUND, _)) => {
                    // Someone else wrote it (or it was deleted): re-read and retry.
                    *self.lease.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    last_err = ProbeError::Conflict;
                }
                Ok((code, body)) => {
                    last_err = ProbeError::Answered {
                        what: "lease update",
                        code,
                        message: message(&body).to_owned(),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(last_err)
    }

    fn lease_path(&self) -> String {
        format!(
            "/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{}",
            self.node
        )
    }

    async fn renew_whole(
        &self,
        backend: &Backend,
        lease: &Value,
    ) -> Result<(StatusCode, Value), CallError> {
        self.call(backend, Method::PUT, &self.lease_path(), Some(lease))
            .await
    }

    async fn renew_compact(
        &self,
        backend: &Backend,
        lease: &Value,
        now: &str,
    ) -> Result<(StatusCode, Value), CallError> {
        let patch = json!({
            "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
            "spec": {"renewTime": now},
        });
        let path = self.lease_path();
        let call = super::ApiCall {
            method: Method::PATCH,
            path: &path,
            body: Some((
                "application/merge-patch+json",
                bytes::Bytes::from(patch.to_string()),
            )),
            accept: COMPACT_ACCEPT,
        };
        super::call_api(&self.transports, backend, call, self.cfg.timeout).await
    }

    async fn ensure_lease(&self, backend: &Backend) -> Result<Value, ProbeError> {
        match self
            .call(backend, Method::GET, &self.lease_path(), None)
            .await?
        {
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
                    (code, body) => Err(ProbeError::Answered {
                        what: "lease create",
                        code,
                        message: message(&body).to_owned(),
                    }),
                }
            }
            (code, body) => Err(ProbeError::Answered {
                what: "lease get",
                code,
                message: message(&body).to_owned(),
            }),
        }
    }

    /// The base lease with a fresh renewTime, the delegate marker removed and
    /// the Node as owner (so the lease is collected with the node).
    async fn renewed(&self, mut lease: Value, now: &str, backend: &Backend) -> Value {
        if let Some(a) = lease
            .pointer_mut("/metadata/annotations")
            .and_then(Value::as_object_mut)
        {
            a.remove(DELEGATE_ANNOTATION);
        }
        lease["spec"]["renewTime"] = json!(now);
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
    ) -> Result<(StatusCode, Value), CallError> {
        super::call_json(
            &self.transports,
            backend,
            method,
            path,
            body,
            self.cfg.timeout,
        )
        .await
    }
}

/// 50–100 % of `d`.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.5..1.0))
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
