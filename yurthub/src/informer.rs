//! A generic informer for what the hub itself needs from the cloud: one
//! list, then one watch from that resourceVersion with bookmarks; after a
//! disconnect it resumes from the last resourceVersion it saw (an event or
//! a bookmark), and lists again only when the apiserver answers 410 Gone.
//! Nothing polls: while no backend is healthy it waits for a health change.
//!
//! Scope each informer as narrowly as the apiserver allows (a namespace in
//! the path, `fieldSelector=metadata.name=<name>` for one object): every
//! event of a cluster-wide watch is paid by every node of the fleet.
//!
//! The current state is published on a `tokio::sync::watch` channel
//! ([`Informer::subscribe`]): consumers wake on a change and read the whole
//! snapshot, which is what the hub's consumers (a ConfigMap's data, a Node's
//! labels, a Service's ClusterIPs, NodePools) want.
//!
//! A watch that receives no bytes for [`Upstream::idle_timeout`] (derived
//! from the apiserver's bookmark interval, see `proxy::body::IdleBounds`) is
//! ended and resumed, and its backend re-probed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use rand::Rng;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::codec::{EventType, Format, WatchDecoder};
use crate::remote::transport::Transports;
use crate::remote::{Backend, LoadBalancer};

/// What to list and watch.
#[derive(Debug, Clone)]
pub struct Spec {
    /// For logs: e.g. `configmap/yurt-hub-cfg`.
    pub name: String,
    /// The collection path, namespaced when the object is:
    /// `/api/v1/namespaces/kube-system/configmaps`.
    pub path: String,
    /// Raw (unescaped) selectors, e.g. `metadata.name=node-1`.
    pub field_selector: Option<String>,
    pub label_selector: Option<String>,
}

impl Spec {
    pub fn new(name: impl Into<String>, path: impl Into<String>) -> Spec {
        Spec {
            name: name.into(),
            path: path.into(),
            field_selector: None,
            label_selector: None,
        }
    }

    /// One object by name.
    pub fn named(mut self, object: &str) -> Spec {
        self.field_selector = Some(format!("metadata.name={object}"));
        self
    }

    pub fn labels(mut self, selector: &str) -> Spec {
        self.label_selector = Some(selector.to_owned());
        self
    }

    fn query(&self, extra: &[(&str, &str)]) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        if let Some(f) = &self.field_selector {
            q.append_pair("fieldSelector", f);
        }
        if let Some(l) = &self.label_selector {
            q.append_pair("labelSelector", l);
        }
        for (k, v) in extra {
            q.append_pair(k, v);
        }
        format!("{}?{}", self.path, q.finish())
    }
}

/// Called with the backend a watch stalled on.
pub type StallHook = Arc<dyn Fn(&Backend) + Send + Sync>;

/// How informers reach the cloud: through a healthy backend with the hub's
/// identity.
#[derive(Clone)]
pub struct Upstream {
    pub lb: Arc<LoadBalancer>,
    pub transports: Transports,
    /// A watch silent for this long is ended and resumed.
    pub idle_timeout: Duration,
    /// Told when a watch through a backend went silent or failed at the
    /// transport level, so the backend is re-probed at once.
    pub on_stall: Option<StallHook>,
}

/// The objects, keyed by (namespace, name).
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// True once the first list completed.
    pub synced: bool,
    /// The collection does not exist in this cluster (404 on list, e.g. a
    /// CRD that is not installed): synced and empty.
    pub absent: bool,
    pub objects: BTreeMap<(String, String), Arc<Value>>,
}

impl Snapshot {
    /// The only object, for informers scoped to one name.
    pub fn single(&self) -> Option<&Value> {
        self.objects.values().next().map(|v| &**v)
    }
}

/// Handle on a running informer.
#[derive(Clone)]
pub struct Informer {
    rx: watch::Receiver<Arc<Snapshot>>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Call {
        path: String,
        source: crate::remote::CallError,
    },
    #[error("{path} answered {code}")]
    Status { path: String, code: StatusCode },
    #[error("{path}: does not decode: {reason}")]
    Decode { path: String, reason: String },
    #[error("{path}: resourceVersion too old")]
    Expired { path: String },
    #[error("{path}: no bytes for {after:?}")]
    Idle { path: String, after: Duration },
    #[error("{path}: the backend turned unhealthy")]
    BackendLost { path: String },
}

/// A list that 404s (CRD not installed) or 403s is retried this rarely:
/// installing a CRD or granting RBAC is rare, and each retry is a LIST.
const ABSENT_RETRY: Duration = Duration::from_secs(600);
/// Backoff after other errors.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A list or a watch's headers must come within this.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl Informer {
    /// Starts the informer; it runs until `shutdown`.
    pub fn spawn(spec: Spec, up: Upstream, shutdown: CancellationToken) -> Informer {
        let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        tokio::spawn(run(spec, up, tx, shutdown));
        Informer { rx }
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.rx.clone()
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.rx.borrow().clone()
    }

    /// Waits up to `within` for the first list; true when it completed.
    pub async fn wait_synced(&self, within: Duration) -> bool {
        let mut rx = self.rx.clone();
        let _ = tokio::time::timeout(within, rx.wait_for(|s| s.synced)).await;
        self.current().synced
    }
}

struct State {
    rv: String,
    objects: BTreeMap<(String, String), Arc<Value>>,
}

async fn run(
    spec: Spec,
    up: Upstream,
    tx: watch::Sender<Arc<Snapshot>>,
    shutdown: CancellationToken,
) {
    let mut state: Option<State> = None;
    let mut backoff = BACKOFF_MIN;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let backend = match up.lb.pick() {
            Some(b) => b,
            None => {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = up.lb.wait_healthy() => continue,
                }
            }
        };
        let result = match &mut state {
            None => list(&spec, &up, &backend).await.map(|listed| {
                tx.send_replace(Arc::new(Snapshot {
                    synced: true,
                    absent: false,
                    objects: listed.objects.clone(),
                }));
                state = Some(listed);
            }),
            Some(st) => watch(&spec, &up, &backend, st, &tx, &shutdown).await,
        };
        let wait = match result {
            Ok(()) => {
                backoff = BACKOFF_MIN;
                continue;
            }
            Err(Error::Expired { .. }) => {
                tracing::info!(informer = %spec.name, "watch expired; listing again");
                state = None;
                continue;
            }
            Err(Error::Status { code, .. })
                if state.is_none()
                    && matches!(code, StatusCode::NOT_FOUND | StatusCode::FORBIDDEN) =>
            {
                tracing::info!(informer = %spec.name, %code, "collection not served; treating it as empty");
                tx.send_replace(Arc::new(Snapshot {
                    synced: true,
                    absent: true,
                    objects: BTreeMap::new(),
                }));
                ABSENT_RETRY
            }
            Err(e @ Error::BackendLost { .. }) => {
                tracing::debug!(informer = %spec.name, error = %e, "resuming elsewhere");
                continue;
            }
            Err(e) => {
                if let (Some(f), Error::Idle { .. }) = (&up.on_stall, &e) {
                    f(&backend);
                }
                if matches!(e, Error::Decode { .. }) {
                    state = None;
                }
                tracing::debug!(informer = %spec.name, error = %e, "informer request failed");
                let w = jitter(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                w
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// 50–100 % of `d`: a fleet that failed together does not retry together.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.5..1.0))
}

fn key_of(obj: &Value) -> (String, String) {
    let m = &obj["metadata"];
    (
        m["namespace"].as_str().unwrap_or_default().to_owned(),
        m["name"].as_str().unwrap_or_default().to_owned(),
    )
}

/// A watch asks for protobuf, which the apiserver offers for built-in kinds
/// (custom resources fall back to JSON): an idle watch's only traffic is its
/// bookmarks, and a protobuf bookmark is less than half the JSON one.
const WATCH_ACCEPT: &str = "application/vnd.kubernetes.protobuf, application/json";

fn watch_request(backend: &Backend, path: &str) -> Result<Request<crate::Body>, Error> {
    Request::builder()
        .method(Method::GET)
        .uri(backend.url_for(path))
        .header(header::USER_AGENT, crate::user_agent())
        .header(header::ACCEPT, WATCH_ACCEPT)
        .body(crate::empty_body())
        .map_err(|e| Error::Decode {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

async fn list(spec: &Spec, up: &Upstream, backend: &Backend) -> Result<State, Error> {
    let path = spec.query(&[]);
    let (code, list) = crate::remote::call_json(
        &up.transports,
        backend,
        Method::GET,
        &path,
        None,
        CALL_TIMEOUT,
    )
    .await
    .map_err(|source| Error::Call {
        path: path.clone(),
        source,
    })?;
    if code == StatusCode::GONE {
        return Err(Error::Expired { path });
    }
    if !code.is_success() {
        return Err(Error::Status { path, code });
    }
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .ok_or_else(|| Error::Decode {
            path: path.clone(),
            reason: "the list has no resourceVersion".into(),
        })?
        .to_owned();
    let objects = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| (key_of(o), Arc::new(o.clone())))
        .collect();
    tracing::debug!(informer = %spec.name, %rv, "listed");
    Ok(State { rv, objects })
}

async fn watch(
    spec: &Spec,
    up: &Upstream,
    backend: &Arc<Backend>,
    st: &mut State,
    tx: &watch::Sender<Arc<Snapshot>>,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    // Spread over 5–10 min, as client-go does, so a fleet's watches do not
    // end together.
    let timeout = rand::rng().random_range(300..600).to_string();
    let path = spec.query(&[
        ("watch", "true"),
        ("allowWatchBookmarks", "true"),
        ("resourceVersion", &st.rv),
        ("timeoutSeconds", &timeout),
    ]);
    let lost = backend.epoch_since(backend.epoch_id());
    // The hub's own watch: on the control connection, outside the proxied
    // streams' lanes.
    let client = up.transports.control();
    let resp = tokio::time::timeout(CALL_TIMEOUT, client.request(watch_request(backend, &path)?))
        .await
        .map_err(|_| Error::Call {
            path: path.clone(),
            source: crate::remote::CallError::Timeout {
                server: backend.name().to_owned(),
                after: CALL_TIMEOUT,
            },
        })?
        .map_err(|e| Error::Call {
            path: path.clone(),
            source: crate::remote::CallError::Transport {
                server: backend.name().to_owned(),
                reason: crate::remote::health::error_chain(&e),
            },
        })?;
    if resp.status() == StatusCode::GONE {
        return Err(Error::Expired { path });
    }
    if !resp.status().is_success() {
        return Err(Error::Status {
            path,
            code: resp.status(),
        });
    }
    let format = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::codec::format_for_content_type)
        .unwrap_or(Format::Json);
    let mut body = resp.into_body();
    let mut decoder = WatchDecoder::new(format);
    let decode = |reason: String| Error::Decode {
        path: path.clone(),
        reason,
    };
    loop {
        let frame = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = lost.cancelled() => return Err(Error::BackendLost { path }),
            f = tokio::time::timeout(up.idle_timeout, body.frame()) => f,
        };
        let frame = match frame {
            Err(_) => {
                return Err(Error::Idle {
                    path,
                    after: up.idle_timeout,
                });
            }
            // The watch's timeoutSeconds passed: resume from st.rv.
            Ok(None) => return Ok(()),
            Ok(Some(f)) => f.map_err(|e| Error::Call {
                path: path.clone(),
                source: crate::remote::CallError::Body {
                    server: backend.name().to_owned(),
                    reason: e.to_string(),
                },
            })?,
        };
        let Ok(data): Result<Bytes, _> = frame.into_data() else {
            continue;
        };
        decoder.push(&data);
        let mut changed = false;
        while let Some(event) = decoder.next_event().map_err(|e| decode(e.to_string()))? {
            let object: Value = match format {
                Format::Protobuf => {
                    crate::codec::to_json(event.object()).map_err(|e| decode(e.to_string()))?
                }
                Format::Json => {
                    serde_json::from_slice(event.object()).map_err(|e| decode(e.to_string()))?
                }
            };
            let rv = object["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            match event.event_type {
                EventType::Error => {
                    return Err(if object["code"].as_u64() == Some(410) {
                        Error::Expired { path }
                    } else {
                        Error::Status {
                            path,
                            code: object["code"]
                                .as_u64()
                                .and_then(|c| StatusCode::from_u16(c as u16).ok())
                                .unwrap_or(StatusCode::BAD_GATEWAY),
                        }
                    });
                }
                EventType::Bookmark => {}
                EventType::Added | EventType::Modified => {
                    st.objects.insert(key_of(&object), Arc::new(object));
                    changed = true;
                }
                EventType::Deleted => {
                    st.objects.remove(&key_of(&object));
                    changed = true;
                }
            }
            if !rv.is_empty() {
                st.rv = rv;
            }
        }
        if changed {
            tx.send_replace(Arc::new(Snapshot {
                synced: true,
                absent: false,
                objects: st.objects.clone(),
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_escapes_selectors_and_keeps_order() {
        let s = Spec::new("cm", "/api/v1/namespaces/kube-system/configmaps")
            .named("yurt-hub-cfg")
            .labels("openyurt.io/configmap-name=yurt-hub-cfg");
        assert_eq!(
            s.query(&[("watch", "true")]),
            "/api/v1/namespaces/kube-system/configmaps?fieldSelector=metadata.name%3Dyurt-hub-cfg\
             &labelSelector=openyurt.io%2Fconfigmap-name%3Dyurt-hub-cfg&watch=true"
        );
    }

    #[test]
    fn jitter_stays_within_half_to_whole() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(2));
            assert!(j >= Duration::from_secs(1) && j < Duration::from_secs(2));
        }
    }
}
