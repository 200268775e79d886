//! One pool-scoped resource kept in memory: a single upstream list + watch
//! (through the hub's own loopback proxy, as `multiplexer-proxy-<node>`, so
//! the proxy's load balancer, identity and cache tee apply to it), the
//! current objects as JSON bytes with the metadata selectors need, a bounded
//! event history for watches resuming from a resourceVersion, and a
//! broadcast of every change to the local watchers.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use serde_json::Value;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::codec::{EventType, Format, WatchDecoder};
use crate::storage::Gvr;

/// Events kept for watches that resume from a resourceVersion.
const HISTORY: usize = 10_000;
/// Live events a slow local watcher may fall behind before its watch ends
/// (it then resumes from its last resourceVersion, as with an apiserver).
const BROADCAST: usize = 4_096;

/// One object as the cacher keeps it.
#[derive(Debug)]
pub struct Obj {
    pub namespace: String,
    pub name: String,
    pub rv: u64,
    pub labels: BTreeMap<String, String>,
    /// Selectable fields: metadata.name/namespace, plus spec.clusterIP and
    /// spec.type for services.
    pub fields: BTreeMap<String, String>,
    /// The object in JSON, with apiVersion and kind set.
    pub json: Bytes,
}

/// A change, with the object's previous state so a watcher whose selector
/// the object leaves sees it DELETED.
#[derive(Debug)]
pub struct Event {
    pub kind: EventType,
    pub rv: u64,
    pub object: Option<Arc<Obj>>,
    pub previous: Option<Arc<Obj>>,
}

#[derive(Debug, Default)]
pub struct State {
    pub ready: bool,
    pub rv: u64,
    /// Events with rv > `floor` are all in `history`.
    pub floor: u64,
    pub api_version: String,
    pub kind: String,
    pub objects: BTreeMap<(String, String), Arc<Obj>>,
    pub history: VecDeque<Arc<Event>>,
}

/// Told the bytes of every upstream response body, with the pool leader
/// that served it (from the leader's [`super::LEADER_HEADER`]) or None for
/// the cloud.
pub type ByteSink = Arc<dyn Fn(Option<&str>, u64) + Send + Sync>;

pub struct Cacher {
    pub gvr: Gvr,
    state: RwLock<State>,
    events: broadcast::Sender<Arc<Event>>,
    ready: AtomicBool,
    ready_tx: tokio::sync::watch::Sender<bool>,
    /// Ends the current upstream watch (it resumes from the same
    /// resourceVersion): the route to the pool's leader changed.
    rewatch: tokio::sync::Notify,
    sink: Option<ByteSink>,
}

#[derive(Debug, thiserror::Error)]
enum UpstreamError {
    #[error("{path}: {reason}")]
    Request { path: String, reason: String },
    #[error("{path} answered {code}")]
    Status { path: String, code: StatusCode },
    #[error("{path}: the body does not decode: {reason}")]
    Decode { path: String, reason: String },
    #[error("{path}: resourceVersion too old")]
    Expired { path: String },
}

impl Cacher {
    pub fn new(gvr: Gvr, sink: Option<ByteSink>) -> Arc<Cacher> {
        let (events, _) = broadcast::channel(BROADCAST);
        Arc::new(Cacher {
            gvr,
            state: RwLock::new(State::default()),
            events,
            ready: AtomicBool::new(false),
            ready_tx: tokio::sync::watch::Sender::new(false),
            rewatch: tokio::sync::Notify::new(),
            sink,
        })
    }

    /// Ends the open upstream watch so the next one is routed afresh.
    pub fn rewatch(&self) {
        self.rewatch.notify_waiters();
    }

    fn count(&self, leader: Option<&str>, bytes: usize) {
        if let Some(sink) = &self.sink {
            sink(leader, bytes as u64);
        }
    }

    /// True once the first upstream list completed.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Waits up to `within` for the first list; true when it completed.
    pub async fn wait_ready(&self, within: Duration) -> bool {
        let mut rx = self.ready_tx.subscribe();
        let _ = tokio::time::timeout(within, rx.wait_for(|r| *r)).await;
        self.is_ready()
    }

    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver of live events; take it while holding [`Cacher::read`] so
    /// no event falls between the snapshot and the stream.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    fn path(&self) -> String {
        let g = &self.gvr;
        if g.group.is_empty() {
            format!("/api/{}/{}", g.version, g.resource)
        } else {
            format!("/apis/{}/{}/{}", g.group, g.version, g.resource)
        }
    }

    /// Lists and watches through `upstream` until `shutdown`: relists on 410
    /// or an undecodable stream, and backs off on errors.
    pub async fn run(
        self: Arc<Self>,
        upstream: SocketAddr,
        user_agent: String,
        shutdown: CancellationToken,
    ) {
        let client: Client<HttpConnector, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let base = format!("http://{upstream}{}", self.path());
        let mut backoff = Duration::from_millis(100);
        let mut listed = false;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let result = if listed {
                self.watch(&client, &base, &user_agent, &shutdown).await
            } else {
                self.list(&client, &base, &user_agent).await.map(|()| {
                    listed = true;
                })
            };
            match result {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    continue;
                }
                Err(UpstreamError::Expired { path }) => {
                    tracing::info!(%path, "multiplexer watch expired; relisting");
                    listed = false;
                    continue;
                }
                Err(e @ UpstreamError::Decode { .. }) => {
                    tracing::warn!(gvr = %self.gvr, error = %e, "multiplexer upstream failed; relisting");
                    listed = false;
                }
                Err(e) => {
                    tracing::debug!(gvr = %self.gvr, error = %e, "multiplexer upstream failed; retrying");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn list(
        &self,
        client: &Client<HttpConnector, Empty<Bytes>>,
        base: &str,
        user_agent: &str,
    ) -> Result<(), UpstreamError> {
        let (code, leader, body) = get_whole(client, base, user_agent).await?;
        self.count(leader.as_deref(), body.len());
        if !code.is_success() {
            return Err(UpstreamError::Status {
                path: base.to_owned(),
                code,
            });
        }
        let decode = |reason: String| UpstreamError::Decode {
            path: base.to_owned(),
            reason,
        };
        let list: Value = serde_json::from_slice(&body).map_err(|e| decode(e.to_string()))?;
        let api_version = list["apiVersion"].as_str().unwrap_or_default().to_owned();
        let kind = list["kind"]
            .as_str()
            .and_then(|k| k.strip_suffix("List"))
            .ok_or_else(|| decode("not a list".into()))?
            .to_owned();
        let rv = parse_rv(&list["metadata"]["resourceVersion"]);
        let mut fresh = BTreeMap::new();
        for item in list["items"].as_array().into_iter().flatten() {
            let obj =
                make_obj(item.clone(), &api_version, &kind, &self.gvr.resource).map_err(decode)?;
            fresh.insert((obj.namespace.clone(), obj.name.clone()), Arc::new(obj));
        }

        let mut state = self.write();
        state.api_version = api_version;
        state.kind = kind;
        // A relist: watchers see the difference as events.
        let old = std::mem::take(&mut state.objects);
        for (key, obj) in &fresh {
            match old.get(key) {
                None => self.emit(
                    &mut state,
                    EventType::Added,
                    obj.rv,
                    Some(obj.clone()),
                    None,
                ),
                Some(prev) if prev.rv != obj.rv => self.emit(
                    &mut state,
                    EventType::Modified,
                    obj.rv,
                    Some(obj.clone()),
                    Some(prev.clone()),
                ),
                Some(_) => {}
            }
        }
        for (key, prev) in &old {
            if !fresh.contains_key(key) {
                self.emit(&mut state, EventType::Deleted, rv, Some(prev.clone()), None);
            }
        }
        state.objects = fresh;
        state.rv = state.rv.max(rv);
        if !state.ready {
            state.ready = true;
            state.floor = state.rv;
            state.history.clear();
        }
        drop(state);
        self.ready.store(true, Ordering::Release);
        self.ready_tx.send_replace(true);
        tracing::debug!(gvr = %self.gvr, rv, "multiplexer listed");
        Ok(())
    }

    async fn watch(
        &self,
        client: &Client<HttpConnector, Empty<Bytes>>,
        base: &str,
        user_agent: &str,
        shutdown: &CancellationToken,
    ) -> Result<(), UpstreamError> {
        let rv = self.read().rv;
        let timeout = rand::rng().random_range(300..600);
        let url = format!(
            "{base}?watch=true&allowWatchBookmarks=true&resourceVersion={rv}&timeoutSeconds={timeout}"
        );
        let req = request(&url, user_agent)?;
        let resp = client
            .request(req)
            .await
            .map_err(|e| UpstreamError::Request {
                path: url.clone(),
                reason: crate::remote::health::error_chain(&e),
            })?;
        if resp.status() == StatusCode::GONE {
            return Err(UpstreamError::Expired { path: url });
        }
        if !resp.status().is_success() {
            return Err(UpstreamError::Status {
                path: url,
                code: resp.status(),
            });
        }
        let decode = |reason: String| UpstreamError::Decode {
            path: url.clone(),
            reason,
        };
        let leader = leader_of(resp.headers());
        let mut body = resp.into_body();
        let mut decoder = WatchDecoder::new(Format::Json);
        let rewatch = self.rewatch.notified();
        tokio::pin!(rewatch);
        loop {
            let frame = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = &mut rewatch => return Ok(()),
                f = body.frame() => f,
            };
            let Some(frame) = frame else {
                return Ok(());
            };
            let frame = frame.map_err(|e| UpstreamError::Request {
                path: url.clone(),
                reason: e.to_string(),
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            self.count(leader.as_deref(), data.len());
            decoder.push(&data);
            while let Some(event) = decoder.next_event().map_err(|e| decode(e.to_string()))? {
                // A follower applies every event of a burst: read only the
                // metadata and keep the bytes as they came, when they can be.
                if let Some(obj) = scanned_obj(&event, &self.gvr.resource) {
                    self.apply_change(event.event_type, obj);
                    continue;
                }
                let object: Value =
                    serde_json::from_slice(event.object()).map_err(|e| decode(e.to_string()))?;
                self.apply(event.event_type, object)?;
            }
        }
    }

    /// Applies one upstream watch event.
    fn apply(&self, kind: EventType, object: Value) -> Result<(), UpstreamError> {
        let mut state = self.write();
        match kind {
            EventType::Error => {
                let code = object["code"].as_u64().unwrap_or_default();
                drop(state);
                let path = self.path();
                return Err(if code == 410 {
                    UpstreamError::Expired { path }
                } else {
                    UpstreamError::Status {
                        path,
                        code: StatusCode::from_u16(code as u16).unwrap_or(StatusCode::BAD_GATEWAY),
                    }
                });
            }
            EventType::Bookmark => {
                let rv = parse_rv(&object["metadata"]["resourceVersion"]);
                if rv > state.rv {
                    state.rv = rv;
                    self.emit(&mut state, EventType::Bookmark, rv, None, None);
                }
            }
            EventType::Added | EventType::Modified | EventType::Deleted => {
                let (api_version, k) = (state.api_version.clone(), state.kind.clone());
                drop(state);
                let obj =
                    make_obj(object, &api_version, &k, &self.gvr.resource).map_err(|reason| {
                        UpstreamError::Decode {
                            path: self.path(),
                            reason,
                        }
                    })?;
                self.apply_change(kind, obj);
            }
        }
        Ok(())
    }

    /// Applies an added, modified or deleted object.
    fn apply_change(&self, kind: EventType, obj: Obj) {
        let mut state = self.write();
        let obj = Arc::new(obj);
        let key = (obj.namespace.clone(), obj.name.clone());
        let rv = obj.rv;
        let previous = if kind == EventType::Deleted {
            state.objects.remove(&key)
        } else {
            state.objects.insert(key, obj.clone())
        };
        let kind = match (kind, &previous) {
            (EventType::Deleted, _) => EventType::Deleted,
            (_, Some(_)) => EventType::Modified,
            (_, None) => EventType::Added,
        };
        let previous = previous.filter(|_| kind == EventType::Modified);
        state.rv = state.rv.max(rv);
        self.emit(&mut state, kind, rv, Some(obj), previous);
    }

    /// Records an event and sends it to the live watchers, under the write
    /// lock so snapshots and streams never overlap or miss.
    fn emit(
        &self,
        state: &mut State,
        kind: EventType,
        rv: u64,
        object: Option<Arc<Obj>>,
        previous: Option<Arc<Obj>>,
    ) {
        let event = Arc::new(Event {
            kind,
            rv,
            object,
            previous,
        });
        if state.ready {
            state.history.push_back(event.clone());
            while state.history.len() > HISTORY {
                if let Some(old) = state.history.pop_front() {
                    state.floor = state.floor.max(old.rv);
                }
            }
        }
        // No receivers is fine: nobody watches yet.
        let _ = self.events.send(event);
    }
}

fn request(url: &str, user_agent: &str) -> Result<Request<Empty<Bytes>>, UpstreamError> {
    Request::builder()
        .uri(url)
        .header(header::USER_AGENT, user_agent)
        .header(header::ACCEPT, "application/json")
        .body(Empty::new())
        .map_err(|e| UpstreamError::Request {
            path: url.to_owned(),
            reason: e.to_string(),
        })
}

async fn get_whole(
    client: &Client<HttpConnector, Empty<Bytes>>,
    url: &str,
    user_agent: &str,
) -> Result<(StatusCode, Option<String>, Bytes), UpstreamError> {
    let fail = |reason: String| UpstreamError::Request {
        path: url.to_owned(),
        reason,
    };
    let resp = tokio::time::timeout(
        Duration::from_secs(60),
        client.request(request(url, user_agent)?),
    )
    .await
    .map_err(|_| fail("timed out after 60s".into()))?
    .map_err(|e| fail(crate::remote::health::error_chain(&e)))?;
    let code = resp.status();
    let leader = leader_of(resp.headers());
    let body = tokio::time::timeout(Duration::from_secs(60), resp.into_body().collect())
        .await
        .map_err(|_| fail("body timed out after 60s".into()))?
        .map_err(|e| fail(e.to_string()))?
        .to_bytes();
    Ok((code, leader, body))
}

/// The pool leader that answered, if a leader did.
fn leader_of(h: &http::HeaderMap) -> Option<String> {
    h.get(super::LEADER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn parse_rv(v: &Value) -> u64 {
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or_default()
}

/// The cached form of a watch event's object from its metadata alone, its
/// bytes kept as received: None when that is not enough (services carry
/// selectable spec fields; an object without apiVersion/kind needs them
/// added), and the caller decodes it whole.
fn scanned_obj(event: &crate::codec::WatchEvent, resource: &str) -> Option<Obj> {
    if resource == "services"
        || !matches!(
            event.event_type,
            EventType::Added | EventType::Modified | EventType::Deleted
        )
    {
        return None;
    }
    let info = crate::codec::object_info(Format::Json, event.object()).ok()?;
    if info.api_version.is_empty() || info.kind.is_empty() || info.name.is_empty() {
        return None;
    }
    let name = info.name.into_owned();
    let namespace = info.namespace.into_owned();
    let mut fields = BTreeMap::new();
    fields.insert("metadata.name".to_owned(), name.clone());
    fields.insert("metadata.namespace".to_owned(), namespace.clone());
    Some(Obj {
        rv: info.resource_version.parse().unwrap_or_default(),
        labels: info
            .labels
            .into_iter()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
        fields,
        namespace,
        name,
        json: event.object_bytes(),
    })
}

/// Builds the cached form of an object (list items lack apiVersion/kind).
fn make_obj(mut item: Value, api_version: &str, kind: &str, resource: &str) -> Result<Obj, String> {
    if !item.is_object() {
        return Err("an item is not a JSON object".into());
    }
    if item
        .get("apiVersion")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        item["apiVersion"] = Value::from(api_version);
    }
    if item
        .get("kind")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        item["kind"] = Value::from(kind);
    }
    let meta = &item["metadata"];
    let name = meta["name"].as_str().unwrap_or_default().to_owned();
    let namespace = meta["namespace"].as_str().unwrap_or_default().to_owned();
    let rv = parse_rv(&meta["resourceVersion"]);
    let labels = meta["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let mut fields = BTreeMap::new();
    fields.insert("metadata.name".to_owned(), name.clone());
    fields.insert("metadata.namespace".to_owned(), namespace.clone());
    if resource == "services" {
        for (field, key) in [("spec.clusterIP", "clusterIP"), ("spec.type", "type")] {
            let v = item["spec"][key].as_str().unwrap_or_default().to_owned();
            fields.insert(field.to_owned(), v);
        }
    }
    let json = Bytes::from(serde_json::to_vec(&item).map_err(|e| e.to_string())?);
    Ok(Obj {
        namespace,
        name,
        rv,
        labels,
        fields,
        json,
    })
}
