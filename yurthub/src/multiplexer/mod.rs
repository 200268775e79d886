//! The multiplexer (shared watches): list and watch requests for pool-scoped
//! resources (`--pool-scope-resources`) from every local client are served
//! from one in-memory [`cacher::Cacher`] per resource, so ten watchers of
//! services cost one upstream watch. Per request it applies the namespace,
//! label and field selectors, the client's response filters (an object a
//! filter drops is sent as DELETED in a watch), resourceVersion resumption,
//! bookmarks and timeoutSeconds, and answers JSON or protobuf.
//!
//! The cachers start as soon as the hub's proxy listens (upstream creates
//! them on first use; starting early shortens the window below). A request
//! arriving before its resource's first upstream list waits up to
//! [`FIRST_LIST_WAIT`] for it, then gets 429 with `Retry-After: 1`, as
//! upstream; while offline with nothing listed it is left to the proxy's
//! local cache path.

pub mod cacher;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Response, StatusCode, Uri, header};
use http_body_util::BodyExt;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::cache::selectors::{FieldSelector, LabelSelector};
use crate::codec::{EventType, Format};
use crate::filters::{FilterChain, FilterRegistry, Filtered};
use crate::metrics::{Metrics, RequestLabels};
use crate::remote::LoadBalancer;
use crate::request::Query;
use crate::request::RequestInfo;
use crate::request::status;
use crate::storage::Gvr;
use crate::{Body, BoxError, full_body};

pub use cacher::ByteSink;
use cacher::{Cacher, Event, Obj, State};

/// Set by a pool leader's multiplexer listener on what it serves (the
/// leader's node name), so followers can tell leader bytes from cloud bytes.
pub const LEADER_HEADER: &str = "x-yurthub-pool-leader";

/// How long a request waits for its resource's first upstream list before
/// it is answered 429.
pub const FIRST_LIST_WAIT: Duration = Duration::from_secs(1);

/// The User-Agent (and component) of the multiplexer's upstream requests.
pub fn component(node: &str) -> String {
    format!("multiplexer-proxy-{node}")
}

/// Parses `--pool-scope-resources`: comma-separated `group/version/resource`
/// (core group empty: `/v1/services`, or `v1/services`).
pub fn parse_resources(flag: &str) -> Result<Vec<Gvr>, String> {
    flag.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let parts: Vec<&str> = s.split('/').collect();
            match parts.as_slice() {
                [g, v, r] if !v.is_empty() && !r.is_empty() => Ok(Gvr::new(*g, *v, *r)),
                [v, r] if !v.is_empty() && !r.is_empty() => Ok(Gvr::new("", *v, *r)),
                _ => Err(format!("{s:?} is not group/version/resource")),
            }
        })
        .collect()
}

pub struct MultiplexerParts {
    pub resources: Vec<Gvr>,
    pub node: String,
    pub lb: Arc<LoadBalancer>,
    pub filters: Option<Arc<FilterRegistry>>,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
    /// Offline, EndpointSlices and Endpoints follow the node's pods from here.
    pub pods: Option<crate::cache::endpoints::Source>,
}

#[derive(Clone)]
pub struct Multiplexer {
    inner: Arc<Inner>,
}

struct Inner {
    /// The pool-scoped set: `--pool-scope-resources`, or the pool's
    /// `pool-scoped-metadata` once the leader-hub ConfigMap says so.
    resources: RwLock<Vec<Gvr>>,
    component: String,
    lb: Arc<LoadBalancer>,
    filters: Option<Arc<FilterRegistry>>,
    metrics: Metrics,
    shutdown: CancellationToken,
    upstream: OnceLock<SocketAddr>,
    sink: OnceLock<ByteSink>,
    cachers: Mutex<HashMap<Gvr, (Arc<Cacher>, CancellationToken)>>,
    pods: Option<crate::cache::endpoints::Source>,
}

/// Which path a request arrived on: a local client through the proxy, or
/// another hub of the pool through the multiplexer listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Local,
    Pool,
}

impl Multiplexer {
    pub fn new(p: MultiplexerParts) -> Multiplexer {
        Multiplexer {
            inner: Arc::new(Inner {
                resources: RwLock::new(p.resources),
                component: component(&p.node),
                lb: p.lb,
                filters: p.filters,
                metrics: p.metrics,
                shutdown: p.shutdown,
                upstream: OnceLock::new(),
                sink: OnceLock::new(),
                cachers: Mutex::new(HashMap::new()),
                pods: p.pods,
            }),
        }
    }

    /// Counts the cachers' upstream bytes by source (set before
    /// [`Multiplexer::set_upstream`]).
    pub fn set_byte_sink(&self, sink: ByteSink) {
        let _ = self.inner.sink.set(sink);
    }

    /// The pool-scoped resources now.
    pub fn resources(&self) -> Vec<Gvr> {
        self.inner
            .resources
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the pool-scoped set: new resources start their cacher,
    /// dropped ones stop theirs (their requests go upstream again).
    pub fn set_resources(&self, resources: Vec<Gvr>) {
        let old = std::mem::replace(
            &mut *self
                .inner
                .resources
                .write()
                .unwrap_or_else(|p| p.into_inner()),
            resources.clone(),
        );
        if old == resources {
            return;
        }
        tracing::info!(?resources, "pool-scoped resources changed");
        {
            let mut cachers = self.inner.cachers.lock().unwrap_or_else(|p| p.into_inner());
            cachers.retain(|gvr, (_, stop)| {
                let keep = resources.contains(gvr);
                if !keep {
                    stop.cancel();
                }
                keep
            });
        }
        if self.inner.upstream.get().is_some() {
            for gvr in &resources {
                self.cacher(gvr);
            }
        }
    }

    /// Ends every cacher's upstream watch; each resumes from its
    /// resourceVersion through whatever route is current (a leader came
    /// back, the leaders changed).
    pub fn rewatch(&self) {
        let cachers = self.inner.cachers.lock().unwrap_or_else(|p| p.into_inner());
        for (c, _) in cachers.values() {
            c.rewatch();
        }
    }

    /// Whether `info` names a pool-scoped resource.
    pub fn is_pool_scoped(&self, info: &RequestInfo) -> bool {
        info.is_resource && info.subresource.is_empty() && self.gvr(info).is_some()
    }

    /// The hub's loopback proxy the cachers list and watch through (known
    /// once it is bound).
    pub fn set_upstream(&self, mut addr: SocketAddr) {
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let _ = self.inner.upstream.set(addr);
        for gvr in &self.resources() {
            self.cacher(gvr);
        }
    }

    /// Read-only access for the hub's own consumers (the filters' inputs):
    /// whether `gvr` is shared here, and its cacher once started, so they
    /// read this state instead of opening a second upstream stream.
    pub fn watches(&self, gvr: &Gvr) -> bool {
        self.inner
            .resources
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(gvr)
    }

    /// The cacher of `gvr` (None before the proxy listens, or not shared).
    pub fn shared(&self, gvr: &Gvr) -> Option<Arc<Cacher>> {
        if !self.watches(gvr) {
            return None;
        }
        self.cacher(gvr)
    }

    /// Whether a request is served here: a list or watch of a pool-scoped
    /// resource from anyone but the multiplexer itself; offline also a GET
    /// of one pool-scoped object (coredns re-reading a Service it listed).
    pub fn handles(&self, info: &RequestInfo) -> bool {
        // A list/watch's name comes from a metadata.name field selector,
        // which the view applies.
        let read = info.is_list_or_watch()
            || (info.verb == "get" && !info.name.is_empty() && !self.inner.lb.any_healthy());
        read && !info.component.starts_with("multiplexer-proxy") && self.is_pool_scoped(info)
    }

    fn gvr(&self, info: &RequestInfo) -> Option<Gvr> {
        self.inner
            .resources
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|g| {
                g.group == info.group && g.version == info.version && g.resource == info.resource
            })
            .cloned()
    }

    /// The cacher of `gvr`, created (and started) on first use.
    fn cacher(&self, gvr: &Gvr) -> Option<Arc<Cacher>> {
        let upstream = *self.inner.upstream.get()?;
        let mut cachers = self.inner.cachers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((c, _)) = cachers.get(gvr) {
            return Some(c.clone());
        }
        let c = Cacher::new(gvr.clone(), self.inner.sink.get().cloned());
        let stop = self.inner.shutdown.child_token();
        tokio::spawn(
            c.clone()
                .run(upstream, self.inner.component.clone(), stop.clone()),
        );
        cachers.insert(gvr.clone(), (c.clone(), stop));
        Some(c)
    }

    /// Serves a request [`Multiplexer::handles`]; None leaves it to the
    /// proxy (offline before anything was listed, or not started yet).
    pub async fn serve(
        &self,
        info: &RequestInfo,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Option<Response<Body>> {
        self.serve_for(Caller::Local, info, uri, headers).await
    }

    /// Serves a list, watch or get of a pool-scoped resource from the
    /// multiplexer's state; `Caller::Pool` (a follower hub) waits for the
    /// first list even while this hub is offline, and is never left to the
    /// local cache (None only for resources that are not pool-scoped).
    pub async fn serve_for(
        &self,
        caller: Caller,
        info: &RequestInfo,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Option<Response<Body>> {
        let gvr = self.gvr(info)?;
        let online = self.inner.lb.any_healthy() || caller == Caller::Pool;
        let Some(cacher) = self.cacher(&gvr) else {
            // Not started yet (a pool hub learns its leaders first): a
            // client retries rather than opening its own upstream watch.
            return online.then(|| not_ready(&gvr));
        };
        let ready = cacher.is_ready() || (online && cacher.wait_ready(FIRST_LIST_WAIT).await);
        if !ready {
            if !online {
                return None;
            }
            return Some(not_ready(&gvr));
        }
        let query = Query::parse(uri.query());
        let bookmarks = query_flag(uri, "allowWatchBookmarks");
        let initial_events = query_flag(uri, "sendInitialEvents");
        let view = match View::new(self, info, &query, headers, bookmarks) {
            Ok(v) => v,
            Err(resp) => return Some(*resp),
        };
        let labels = self.inner.metrics.request_labels(info);
        let in_flight = InFlight::new(&self.inner.metrics, &labels);
        Some(match info.verb.as_str() {
            "watch" => watch(
                cacher,
                view,
                &query,
                initial_events,
                in_flight,
                self.inner.shutdown.child_token(),
            ),
            "get" => get_one(&cacher, &view, info),
            // Thousands of objects are encoded here: a heavy step.
            _ => crate::runtime::heavy(|| list(&cacher, &view)),
        })
    }
}

/// 429 with `Retry-After: 1`, as upstream answers before its cache is ready.
fn not_ready(gvr: &Gvr) -> Response<Body> {
    let mut r = status::status(
        StatusCode::TOO_MANY_REQUESTS,
        "TooManyRequests",
        format!("the multiplexer is not ready for {gvr} yet, please try again later"),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    r
}

/// A boolean query parameter, parsed as Go's strconv.ParseBool.
fn query_flag(uri: &Uri, name: &str) -> bool {
    form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .any(|(k, v)| k == name && matches!(&*v, "1" | "t" | "T" | "true" | "TRUE" | "True"))
}

/// Counts a request served by the multiplexer while it is in flight.
struct InFlight {
    one: prometheus_client::metrics::gauge::Gauge,
    total: prometheus_client::metrics::gauge::Gauge,
}

impl InFlight {
    fn new(m: &Metrics, labels: &RequestLabels) -> InFlight {
        let one = m
            .aggregated_in_flight_requests
            .get_or_create(labels)
            .clone();
        one.inc();
        m.aggregated_in_flight_requests_total.inc();
        InFlight {
            one,
            total: m.aggregated_in_flight_requests_total.clone(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.one.dec();
        self.total.dec();
    }
}

/// What one client sees: its namespace, selectors, filters and format.
struct View {
    namespace: String,
    labels: LabelSelector,
    fields: FieldSelector,
    chain: Option<FilterChain>,
    format: Format,
    bookmarks: bool,
    /// Offline only: the node's pods that endpoints follow.
    pods: Option<crate::cache::endpoints::NodePods>,
}

impl View {
    fn new(
        mux: &Multiplexer,
        info: &RequestInfo,
        query: &Query,
        headers: &HeaderMap,
        bookmarks: bool,
    ) -> Result<View, Box<Response<Body>>> {
        let labels = LabelSelector::parse(query.label_selector.as_deref().unwrap_or_default())
            .map_err(|e| {
                Box::new(status::bad_request(format!(
                    "unable to parse labelSelector: {e}"
                )))
            })?;
        let fields = FieldSelector::parse(query.field_selector.as_deref().unwrap_or_default())
            .map_err(|e| {
                Box::new(status::bad_request(format!(
                    "unable to parse fieldSelector: {e}"
                )))
            })?;
        let mut supported = vec!["metadata.name", "metadata.namespace"];
        if info.resource == "services" {
            supported.extend(["spec.clusterIP", "spec.type"]);
        }
        if let Some(bad) = fields.fields().find(|f| !supported.contains(f)) {
            return Err(Box::new(status::bad_request(format!(
                "field label not supported: {bad}"
            ))));
        }
        let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
        let format = crate::codec::negotiate(
            accept,
            &[Format::Json, Format::Protobuf],
            &crate::codec::DefaultRestrictions,
        )
        .map(|n| n.format)
        .ok_or_else(|| {
            Box::new(status::status(
                StatusCode::NOT_ACCEPTABLE,
                "NotAcceptable",
                "only application/json and application/vnd.kubernetes.protobuf are served",
            ))
        })?;
        Ok(View {
            namespace: info.namespace.to_string(),
            labels,
            fields,
            chain: mux
                .inner
                .filters
                .as_ref()
                .and_then(|f| f.chain_for(&info.component, info.verb.as_str(), &info.resource)),
            format,
            bookmarks,
            pods: (!mux.inner.lb.any_healthy())
                .then(|| mux.inner.pods.as_ref())
                .flatten()
                .and_then(|p| p.for_resource(&info.group, &info.resource)),
        })
    }

    fn selects(&self, o: &Obj) -> bool {
        (self.namespace.is_empty() || self.namespace == o.namespace)
            && self.labels.matches(&o.labels)
            && self.fields.matches(&o.fields)
    }

    /// The object as this client sees it; None when a filter drops it.
    fn filtered(&self, o: &Obj) -> Option<Bytes> {
        let followed = self.pods.as_ref().and_then(|p| p.apply_json(&o.json));
        let json = followed.map(Bytes::from).unwrap_or_else(|| o.json.clone());
        let Some(chain) = &self.chain else {
            return Some(json);
        };
        match chain.filter_object(Format::Json, &json) {
            Ok(Filtered::Unchanged) => Some(json),
            Ok(Filtered::Mutated(b)) => Some(Bytes::from(b)),
            Ok(Filtered::Dropped) => None,
            Err(e) => {
                tracing::warn!(error = %e, name = %o.name, "object passed unfiltered: it does not decode");
                Some(json)
            }
        }
    }

    /// One watch frame in the client's format.
    fn frame(&self, state_kind: (&str, &str), kind: EventType, json: &[u8]) -> Option<Bytes> {
        let object = match self.format {
            Format::Json => json.to_vec(),
            Format::Protobuf => {
                let value: serde_json::Value = serde_json::from_slice(json).ok()?;
                crate::codec::to_protobuf(state_kind.0, state_kind.1, &value)
                    .map_err(
                        |e| tracing::warn!(error = %e, "cannot encode a watch event as protobuf"),
                    )
                    .ok()?
            }
        };
        crate::codec::encode_watch_event(self.format, kind, &object)
            .map(Bytes::from)
            .ok()
    }

    /// The frame for an event, or None when this client does not see it.
    fn render(&self, state_kind: (&str, &str), e: &Event) -> Option<Bytes> {
        if e.kind == EventType::Bookmark {
            if !self.bookmarks {
                return None;
            }
            let b = serde_json::json!({
                "apiVersion": state_kind.0, "kind": state_kind.1,
                "metadata": {"resourceVersion": e.rv.to_string()},
            });
            return self.frame(state_kind, EventType::Bookmark, b.to_string().as_bytes());
        }
        let obj = e.object.as_ref()?;
        let now = self.selects(obj);
        let before = e.previous.as_ref().is_some_and(|p| self.selects(p));
        let kind = match (e.kind, before, now) {
            (EventType::Deleted, _, true) => EventType::Deleted,
            (EventType::Modified, true, true) => EventType::Modified,
            (EventType::Modified, true, false) => EventType::Deleted,
            (EventType::Added | EventType::Modified, _, true) => EventType::Added,
            _ => return None,
        };
        match self.filtered(obj) {
            Some(json) => self.frame(state_kind, kind, &json),
            // A dropped object: the client's cache must forget it.
            None => self.frame(state_kind, EventType::Deleted, &obj.json),
        }
    }
}

/// One object from the state, as the client's filters and format see it.
fn get_one(cacher: &Cacher, view: &View, info: &RequestInfo) -> Response<Body> {
    let state = cacher.read();
    let key = (info.namespace.to_string(), info.name.to_string());
    let found = state.objects.get(&key).and_then(|o| view.filtered(o));
    let kind = (state.api_version.clone(), state.kind.clone());
    drop(state);
    let Some(json) = found else {
        return status::status_with_details(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} {:?} not found", info.resource, info.name),
            Some(
                serde_json::json!({"name": info.name, "group": info.group, "kind": info.resource}),
            ),
        );
    };
    let body = match view.format {
        Format::Json => json,
        Format::Protobuf => {
            let encoded = serde_json::from_slice::<serde_json::Value>(&json)
                .map_err(|e| e.to_string())
                .and_then(|v| {
                    crate::codec::to_protobuf(&kind.0, &kind.1, &v).map_err(|e| e.to_string())
                });
            match encoded {
                Ok(b) => Bytes::from(b),
                Err(e) => {
                    return status::status(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "InternalError",
                        format!("encoding the object as protobuf: {e}"),
                    );
                }
            }
        }
    };
    let mut r = Response::new(full_body(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(view.format.media_type()),
    );
    r
}

fn list(cacher: &Cacher, view: &View) -> Response<Body> {
    let state = cacher.read();
    let mut body = BytesMut::new();
    body.extend_from_slice(
        format!(
            "{{\"apiVersion\":{},\"kind\":{},\"metadata\":{{\"resourceVersion\":\"{}\"}},\"items\":[",
            serde_json::Value::from(state.api_version.as_str()),
            serde_json::Value::from(format!("{}List", state.kind)),
            state.rv
        )
        .as_bytes(),
    );
    let mut first = true;
    for o in state.objects.values().filter(|o| view.selects(o)) {
        let Some(json) = view.filtered(o) else {
            continue;
        };
        if !first {
            body.extend_from_slice(b",");
        }
        first = false;
        body.extend_from_slice(&json);
    }
    body.extend_from_slice(b"]}");
    drop(state);
    let body = match view.format {
        Format::Json => body.freeze(),
        Format::Protobuf => match crate::codec::convert_body(Format::Json, Format::Protobuf, &body)
        {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                return status::status(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    format!("encoding the list as protobuf: {e}"),
                );
            }
        },
    };
    let mut r = Response::new(full_body(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(view.format.media_type()),
    );
    r
}

/// The frames a new watch starts with, or the 410 it gets.
fn initial_frames(state: &State, view: &View, rv: Option<u64>) -> Result<Vec<Bytes>, u64> {
    let kind = (state.api_version.as_str(), state.kind.as_str());
    match rv {
        None | Some(0) => Ok(state
            .objects
            .values()
            .filter(|o| view.selects(o))
            .filter_map(|o| {
                let json = view.filtered(o)?;
                view.frame(kind, EventType::Added, &json)
            })
            .collect()),
        Some(rv) if rv < state.floor => Err(state.floor),
        Some(rv) => Ok(state
            .history
            .iter()
            .filter(|e| e.rv > rv)
            .filter_map(|e| view.render(kind, e))
            .collect()),
    }
}

fn watch(
    cacher: Arc<Cacher>,
    view: View,
    query: &Query,
    initial_events: bool,
    in_flight: InFlight,
    stop: CancellationToken,
) -> Response<Body> {
    let from = match query.resource_version.as_deref() {
        None | Some("") => None,
        Some(s) => match s.parse::<u64>() {
            Ok(v) => Some(v),
            Err(_) => {
                return status::bad_request(format!("invalid resourceVersion {s:?}"));
            }
        },
    };
    let (initial, mut rx, kind) = {
        let state = cacher.read();
        let kind = (state.api_version.clone(), state.kind.clone());
        let initial = if initial_events {
            // A watch-list (sendInitialEvents=true): the current state, then
            // the bookmark that tells the client it has all of it.
            let mut frames = initial_frames(&state, &view, None).unwrap_or_default();
            let end = serde_json::json!({
                "apiVersion": state.api_version, "kind": state.kind,
                "metadata": {"resourceVersion": state.rv.to_string(),
                    "annotations": {"k8s.io/initial-events-end": "true"}},
            });
            frames.extend(view.frame(
                (&kind.0, &kind.1),
                EventType::Bookmark,
                end.to_string().as_bytes(),
            ));
            Ok(frames)
        } else {
            initial_frames(&state, &view, from)
        };
        (initial, cacher.subscribe(), kind)
    };
    // Live events after a snapshot are all newer than it.
    let from = from.filter(|_| !initial_events);
    let (tx, body_rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let timeout = Duration::from_secs(query.timeout_seconds.unwrap_or(1800).max(1));
    let format = view.format;
    tokio::spawn(async move {
        let _in_flight = in_flight;
        let initial = match initial {
            Ok(frames) => frames,
            Err(floor) => {
                let status = serde_json::json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {},
                    "status": "Failure", "reason": "Expired", "code": 410,
                    "message": format!("too old resource version: {} ({floor})", from.unwrap_or_default()),
                });
                let frame = view.frame(
                    ("v1", "Status"),
                    EventType::Error,
                    status.to_string().as_bytes(),
                );
                if let Some(f) = frame {
                    let _ = tx.send(f).await;
                }
                return;
            }
        };
        for f in initial {
            if tx.send(f).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => return,
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                e = rx.recv() => e,
            };
            match event {
                Ok(e) => {
                    if from.is_some_and(|rv| e.rv <= rv) && e.kind != EventType::Bookmark {
                        continue;
                    }
                    if let Some(f) = view.render((&kind.0, &kind.1), &e)
                        && tx.send(f).await.is_err()
                    {
                        return;
                    }
                }
                // Too slow: end the watch; the client resumes from its
                // last resourceVersion.
                Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => return,
            }
        }
    });
    let stream = futures_util::stream::unfold(body_rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, BoxError>(hyper::body::Frame::data(chunk)), rx))
    });
    let body = http_body_util::StreamBody::new(stream).boxed_unsync();
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(format.media_type()),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_scope_resources_parse_with_an_empty_core_group() {
        let r = parse_resources("/v1/services,discovery.k8s.io/v1/endpointslices").unwrap();
        assert_eq!(
            r,
            vec![
                Gvr::new("", "v1", "services"),
                Gvr::new("discovery.k8s.io", "v1", "endpointslices")
            ]
        );
        assert_eq!(
            parse_resources("v1/services").unwrap(),
            vec![Gvr::new("", "v1", "services")]
        );
        assert!(parse_resources("").unwrap().is_empty());
        assert!(parse_resources("services").is_err());
    }
}
