//! WATCH semantics of the watch cache: synthetic ADDED events for the
//! current state (resourceVersion ""/"0"), replay from a resourceVersion
//! through the event history (an ERROR event with a 410 Expired Status when
//! it is too old), `sendInitialEvents` with the `k8s.io/initial-events-end`
//! bookmark, periodic BOOKMARKs, `timeoutSeconds`, selector transitions
//! (ADDED/DELETED when an object starts/stops matching) and per-event
//! flushing in JSON, protobuf (via the codec) or Table form.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body::{Body as HttpBody, Frame};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::list::{Selectors, wait_for_rv};
use super::negotiate::{Format, Negotiated};
use super::registry::ResourceType;
use super::response::{Body, BoxError};
use super::route::ApiRequest;
use super::status::ApiError;
use super::store::{EventType, ReadError, StoredEvent, set_resource_version};
use super::table::{self, IncludeObject};
use super::{Shared, lock};

/// Validated watch parameters.
struct WatchParams {
    selectors: Selectors,
    resource_version: Option<String>,
    bookmarks: bool,
    send_initial_events: Option<bool>,
    timeout: Duration,
    include: IncludeObject,
}

fn parse_params(req: &ApiRequest, rt: &ResourceType) -> Result<WatchParams, ApiError> {
    let selectors = Selectors::parse(rt, req.param("labelSelector"), req.param("fieldSelector"))?;
    let bool_param = |k: &str| req.param(k).map(|v| v == "true" || v == "1");
    let send_initial_events = bool_param("sendInitialEvents");
    let bookmarks = bool_param("allowWatchBookmarks").unwrap_or(false);
    let rv_match = req.param("resourceVersionMatch").filter(|v| !v.is_empty());
    let invalid = |field: &str, detail: &str| {
        ApiError::invalid(
            "ListOptions",
            "meta.k8s.io",
            "",
            field,
            "FieldValueForbidden",
            detail,
        )
    };
    match send_initial_events {
        Some(_) => {
            if rv_match != Some("NotOlderThan") {
                return Err(invalid(
                    "resourceVersionMatch",
                    "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                ));
            }
            if !bookmarks {
                return Err(invalid(
                    "allowWatchBookmarks",
                    "sendInitialEvents requires setting allowWatchBookmarks to true",
                ));
            }
        }
        None if rv_match.is_some() => {
            return Err(invalid(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            ));
        }
        None => {}
    }
    let seconds: u64 = match req.param("timeoutSeconds") {
        Some(t) => t
            .parse()
            .map_err(|_| ApiError::bad_request(format!("timeoutSeconds: invalid value {t:?}")))?,
        None => 0,
    };
    // Unset or 0 means the apiserver's default: a random value in
    // [minRequestTimeout, 2*minRequestTimeout).
    let timeout = match seconds {
        0 => Duration::from_secs(1800 + rand::random_range(0..1800)),
        s => Duration::from_secs(s),
    };
    Ok(WatchParams {
        selectors,
        resource_version: req
            .param("resourceVersion")
            .filter(|v| !v.is_empty())
            .map(str::to_owned),
        bookmarks,
        send_initial_events,
        timeout,
        include: IncludeObject::parse(req.param("includeObject"))?,
    })
}

/// Where the stream starts.
enum Start {
    /// Send the state at this revision as ADDED, then follow from it.
    State { rv: u64, end_bookmark: bool },
    /// Follow events after this revision.
    From(u64),
    /// Send one ERROR event with this Status and close.
    Error(ApiError),
}

/// What a watch covers: a namespace (or all) and, for the legacy
/// single-object watch (`.../pods/NAME?watch=true`), one name.
pub struct Scope {
    pub namespace: Option<String>,
    pub name: Option<String>,
}

pub async fn serve(
    shared: Arc<Shared>,
    req: ApiRequest,
    rt: Arc<ResourceType>,
    scope: Scope,
    neg: Negotiated,
) -> Result<Response<Body>, ApiError> {
    shared.watch_requests.fetch_add(1, Ordering::SeqCst);
    if neg
        .conversion
        .as_ref()
        .is_some_and(|c| c.kind == "PartialObjectMetadataList")
    {
        return Err(ApiError::not_acceptable(format!(
            "you requested PartialObjectMetadataList, but the requested object is not a list (*{})",
            rt.kind
        )));
    }
    let params = parse_params(&req, &rt)?;
    let parse_rv = |rv: &str| {
        rv.parse::<u64>()
            .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))
    };
    let current = shared.store.current_rv();
    let start = match (
        params.send_initial_events,
        params.resource_version.as_deref(),
    ) {
        (Some(true), None | Some("0")) => Start::State {
            rv: current,
            end_bookmark: true,
        },
        (Some(true), Some(rv)) => {
            let rv = parse_rv(rv)?;
            match wait_for_rv(&shared, rv).await {
                Ok(()) => Start::State {
                    rv: shared.store.current_rv(),
                    end_bookmark: true,
                },
                Err(e) => Start::Error(e),
            }
        }
        (Some(false), None | Some("0")) => Start::From(current),
        (None, None | Some("0")) => Start::State {
            rv: current,
            end_bookmark: false,
        },
        (_, Some(rv)) => {
            let rv = parse_rv(rv)?;
            match wait_for_rv(&shared, rv).await {
                Ok(()) => Start::From(rv),
                Err(e) => Start::Error(e),
            }
        }
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let content_type = neg.format.watch_content_type();
    let guard = WatchGuard::new(shared.clone(), rt.storage_key());
    let stream = Stream {
        shared,
        rt,
        scope,
        params,
        neg,
        tx,
        headers_sent: false,
    };
    tokio::spawn(async move {
        let _guard = guard;
        stream.run(start).await;
    });
    let mut resp = Response::new(http_body_util::BodyExt::boxed_unsync(ChannelBody { rx }));
    *resp.status_mut() = StatusCode::OK;
    if let Ok(v) = HeaderValue::from_str(&content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    Ok(resp)
}

/// Counts open watches per resource for the test's assertions.
struct WatchGuard {
    shared: Arc<Shared>,
    resource: String,
}

impl WatchGuard {
    fn new(shared: Arc<Shared>, resource: String) -> Self {
        *lock(&shared.open_watches)
            .entry(resource.clone())
            .or_insert(0) += 1;
        Self { shared, resource }
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        if let Some(n) = lock(&self.shared.open_watches).get_mut(&self.resource) {
            *n = n.saturating_sub(1);
        }
    }
}

/// The response body: frames from the watch task; ends when it ends.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

struct Stream {
    shared: Arc<Shared>,
    rt: Arc<ResourceType>,
    scope: Scope,
    params: WatchParams,
    neg: Negotiated,
    tx: mpsc::Sender<Bytes>,
    headers_sent: bool,
}

/// The watch ended (client gone, timeout, or fell out of the window).
struct Closed;

impl Stream {
    async fn run(mut self, start: Start) {
        let deadline = tokio::time::Instant::now() + self.params.timeout;
        let _ = tokio::time::timeout_at(deadline, self.stream(start)).await;
    }

    async fn stream(&mut self, start: Start) -> Result<(), Closed> {
        let mut rx = self.shared.store.subscribe();
        let mut last_rv = match start {
            Start::Error(e) => return self.error(&e).await,
            Start::From(rv) => rv,
            Start::State { rv, end_bookmark } => {
                let items = match self.shared.store.list_at(
                    &self.rt.storage_key(),
                    self.scope.namespace.as_deref(),
                    rv,
                    None,
                ) {
                    Ok(items) => items,
                    Err(ReadError::TooOld { requested, oldest }) => {
                        return self.error(&too_old(requested, oldest)).await;
                    }
                };
                for (key, obj) in items {
                    if self.in_scope(&key.name) && self.params.selectors.matches(&obj) {
                        self.send("ADDED", &obj).await?;
                    }
                }
                if end_bookmark {
                    self.bookmark(rv, true).await?;
                }
                rv
            }
        };
        let mut ticker = tokio::time::interval(self.shared.bookmark_interval);
        ticker.reset();
        loop {
            let (events, current) = match self.shared.store.events_since(last_rv) {
                Ok(x) => x,
                Err(ReadError::TooOld { requested, oldest }) => {
                    // Either the client asked for a compacted revision, or
                    // this watcher fell behind the window: both end in 410.
                    return self.error(&too_old(requested, oldest)).await;
                }
            };
            for event in &events {
                if let Some((kind, obj)) = self.filter(event) {
                    self.send(kind, &obj).await?;
                }
            }
            last_rv = last_rv.max(current);
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return Err(Closed);
                    }
                }
                _ = ticker.tick() => {
                    if self.params.bookmarks {
                        // Deliver what happened meanwhile first: a bookmark
                        // promises nothing older is still to come.
                        let (events, current) = self
                            .shared
                            .store
                            .events_since(last_rv)
                            .map_err(|_| Closed)?;
                        for event in &events {
                            if let Some((kind, obj)) = self.filter(event) {
                                self.send(kind, &obj).await?;
                            }
                        }
                        last_rv = last_rv.max(current);
                        self.bookmark(last_rv, false).await?;
                    }
                }
                _ = self.tx.closed() => return Err(Closed),
            }
        }
    }

    fn in_scope(&self, name: &str) -> bool {
        self.scope.name.as_deref().is_none_or(|n| n == name)
    }

    /// The event this watcher sees for a stored event, if any.
    fn filter(&self, event: &StoredEvent) -> Option<(&'static str, Value)> {
        if event.key.gr != self.rt.storage_key() {
            return None;
        }
        if let Some(ns) = &self.scope.namespace
            && &event.key.namespace != ns
        {
            return None;
        }
        if !self.in_scope(&event.key.name) {
            return None;
        }
        let sel = &self.params.selectors;
        let cur_passes = event.kind != EventType::Deleted && sel.matches(&event.object);
        let old_passes = event.prev.as_ref().is_some_and(|p| sel.matches(p));
        match (cur_passes, old_passes) {
            (true, false) => Some(("ADDED", (*event.object).clone())),
            (true, true) => Some((event.kind.as_str(), (*event.object).clone())),
            (false, true) => {
                let mut old = event.prev.as_deref().cloned().unwrap_or_default();
                set_resource_version(&mut old, event.rv);
                Some(("DELETED", old))
            }
            (false, false) => None,
        }
    }

    async fn bookmark(&mut self, rv: u64, initial_events_end: bool) -> Result<(), Closed> {
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj = json!({"kind": self.rt.kind, "apiVersion": self.rt.api_version(), "metadata": metadata});
        self.send("BOOKMARK", &obj).await
    }

    async fn error(&mut self, err: &ApiError) -> Result<(), Closed> {
        let frame = self.frame("ERROR", &err.to_status(), true);
        if let Some(frame) = frame {
            self.tx.send(frame).await.map_err(|_| Closed)?;
        }
        Err(Closed)
    }

    async fn send(&mut self, event_type: &str, obj: &Value) -> Result<(), Closed> {
        let embedded = match &self.neg.conversion {
            Some(c) if c.kind == "Table" => {
                let rv = obj
                    .pointer("/metadata/resourceVersion")
                    .cloned()
                    .unwrap_or(Value::Null);
                let headers = !self.headers_sent;
                self.headers_sent = true;
                table::to_table(
                    &self.rt,
                    &[obj],
                    json!({"resourceVersion": rv}),
                    self.params.include,
                    headers,
                    &c.version,
                )
            }
            Some(c) if c.kind == "PartialObjectMetadata" => {
                table::partial_object_metadata(obj, &c.version)
            }
            _ => obj.clone(),
        };
        match self.frame(event_type, &embedded, false) {
            Some(frame) => self.tx.send(frame).await.map_err(|_| Closed),
            None => Err(Closed),
        }
    }

    /// Encodes one event in the stream's framing.
    fn frame(&self, event_type: &str, obj: &Value, is_status: bool) -> Option<Bytes> {
        match self.neg.format {
            Format::Protobuf => {
                let codec = self.shared.codec()?;
                let (api_version, kind) = if is_status {
                    ("v1".to_owned(), "Status".to_owned())
                } else {
                    (
                        obj.get("apiVersion")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        obj.get("kind")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                    )
                };
                match codec.encode_watch_frame(event_type, &api_version, &kind, obj) {
                    Ok(f) => Some(Bytes::from(f)),
                    Err(e) => {
                        tracing::warn!(error = %e, kind, "protobuf watch frame encoding failed");
                        None
                    }
                }
            }
            _ => {
                let mut line =
                    serde_json::to_vec(&json!({"type": event_type, "object": obj})).ok()?;
                line.push(b'\n');
                Some(Bytes::from(line))
            }
        }
    }
}

fn too_old(requested: u64, oldest: u64) -> ApiError {
    ApiError::expired(format!("too old resource version: {requested} ({oldest})"))
}
