//! The cache manager: decides which proxied responses are kept, consumes the
//! teed copies and writes them to the store as the apiserver sent them (JSON
//! or protobuf, metadata extracted by `codec::object_info`, no re-encode):
//!
//! * get/create/update/patch → `put_if_not_older`;
//! * list → replaces exactly its scope (namespace + selectors), atomically;
//!   paginated lists are staged page by page and committed with the last;
//! * watch → per event (ADDED/MODIFIED by the RV rule, DELETED removes,
//!   BOOKMARK advances the scope's progress); a watch whose copy is lost
//!   withdraws its progress so a reconnect relists;
//! * `/version` and discovery documents → documents;
//! * CRD kinds → recorded (forgotten when the apiserver answers a list 404).
//!
//! It also keeps the health figures the metrics and status document show:
//! the keys whose last write failed, and whether the store was recovered
//! empty.

mod list_copy;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, header};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use super::keys::{self, Selectors};
use super::policy::{CacheAgents, IdentityComponents, not_cacheable};
use super::tee::{Chunk, CopyBudget, Gather, Gathered, Reservation, Tee};
use crate::Body;
use crate::codec::{self, EventType, WatchDecoder};
use crate::request::{Principal, RequestInfo, Verb};
use crate::storage::{
    self, Gvr, Object, ResourceKey, ScopeKey, Space, StagedList, Store, WatchEvent, Write,
};

/// Largest body the cache accumulates for one object or list page.
const MAX_CACHED_BODY: usize = 128 << 20;
/// The share of the store other identities' scopes may fill.
pub const IDENTITY_SHARE: f64 = 0.75;
/// What all teed copies may hold in memory at once (collected bodies and,
/// for lists, the items split from them until the store has them). Past it
/// a response is not cached and the skip is counted; one copy alone may be
/// larger (up to [`MAX_CACHED_BODY`]) while nothing else is held.
const COPY_BUDGET_BYTES: usize = 24 << 20;
/// A copy at least this large gives its freed heap back to the OS once no
/// other copy is held (see `crate::alloc`).
const TRIM_AFTER_BYTES: usize = 1 << 20;
/// A paginated list whose next page does not come within this is dropped.
const STAGING_TTL: Duration = Duration::from_secs(300);
/// Paginated lists being staged at once. A node's reflectors paginate a
/// few; scopes carry the User-Agent's component, so without a bound a pod
/// could open one per User-Agent and hold each for [`STAGING_TTL`]. Past it
/// a new paginated list is not cached.
const STAGINGS_MAX: usize = 256;
/// Non-resource paths worth keeping for offline clients (coredns, kubectl).
pub fn is_cached_document(path: &str) -> bool {
    let p = path.trim_end_matches('/');
    if p == "/version" || p == "/api" || p == "/apis" {
        return true;
    }
    let parts: Vec<&str> = p.trim_start_matches('/').split('/').collect();
    matches!(parts.as_slice(), ["api", _] | ["apis", _] | ["apis", _, _])
}

/// The document key of a response: the path, plus the `as=` variant for
/// aggregated discovery (which differs from the plain document).
pub fn document_key(path: &str, content_type: &str) -> String {
    let variant = content_type.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k.trim() == "as").then(|| v.trim().to_owned())
    });
    let path = path.trim_end_matches('/');
    let path = if path.is_empty() { "/" } else { path };
    match variant {
        Some(v) => format!("{path}#as={v}"),
        None => path.to_owned(),
    }
}

/// What to do with one proxied response, decided before it arrives.
#[derive(Debug, Clone)]
pub enum Plan {
    Object {
        resource: ResourceKey,
    },
    List {
        resource: ResourceKey,
        namespace: Option<String>,
        selectors: Selectors,
        limit: Option<u64>,
        continue_token: Option<String>,
    },
    Watch {
        resource: ResourceKey,
        namespace: Option<String>,
        selectors: Selectors,
    },
    Document {
        path: String,
    },
}

#[derive(Clone)]
pub struct CacheManager {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    agents: CacheAgents,
    node: String,
    /// Paginated lists in progress: the continue token the next page will
    /// carry, and the staging (locked while a page is written, so pages
    /// whose copies are consumed concurrently still apply in order).
    stagings: Mutex<HashMap<ScopeKey, (String, SharedStaging)>>,
    kinds_seen: Mutex<HashSet<Gvr>>,
    /// Keys whose last write failed → the error (a later success clears).
    error_keys: Mutex<BTreeMap<String, String>>,
    recovered: Option<String>,
    budget: CopyBudget,
    /// Object writes skipped because the store already holds that
    /// resourceVersion in that format.
    unchanged: std::sync::atomic::AtomicU64,
    /// Watch events submitted per object (error key → format and
    /// resourceVersion), so the same event arriving on several watches of
    /// one scope (clients sharing a token, a component's parallel
    /// watchers) is written once. Bounded: cleared when full.
    submitted: Mutex<HashMap<String, String>>,
    /// Unpaginated lists being written, per scope → resourceVersion, so a
    /// second copy of the same list is not written too.
    listing: Mutex<HashMap<ScopeKey, String>>,
    /// The components each identity other than the node's caches for.
    identity_components: IdentityComponents,
}

/// Failed writes remembered for status output; later ones are only logged.
const ERROR_KEYS_MAX: usize = 1024;

/// Objects whose last submitted watch event is remembered.
const SUBMITTED_MAX: usize = 8192;

type SharedStaging = Arc<tokio::sync::Mutex<Staging>>;

struct Staging {
    list: Option<StagedList>,
    list_rv: String,
    started: Instant,
}

/// How long a page waits for the previous page's copy to be registered.
const PAGE_WAIT: Duration = Duration::from_secs(10);

impl CacheManager {
    /// `recovered`: why the store started empty (a corrupt file moved aside).
    pub fn new(store: Store, agents: CacheAgents, node: &str, recovered: Option<String>) -> Self {
        let owners = store.components().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading the cached components failed; counting from none");
            Vec::new()
        });
        let identity_components = IdentityComponents::seeded(owners.iter().map(String::as_str));
        CacheManager {
            inner: Arc::new(Inner {
                store,
                agents,
                node: node.to_owned(),
                stagings: Mutex::default(),
                kinds_seen: Mutex::default(),
                error_keys: Mutex::default(),
                recovered,
                budget: CopyBudget::new(COPY_BUDGET_BYTES),
                unchanged: std::sync::atomic::AtomicU64::new(0),
                submitted: Mutex::new(HashMap::new()),
                listing: Mutex::default(),
                identity_components,
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn agents(&self) -> &CacheAgents {
        &self.inner.agents
    }

    pub fn node(&self) -> &str {
        &self.inner.node
    }

    pub fn recovered(&self) -> Option<&str> {
        self.inner.recovered.as_deref()
    }

    /// Responses not cached because their copy did not fit the memory
    /// budget, since start.
    pub fn skipped_copies(&self) -> u64 {
        self.inner.budget.skipped()
    }

    /// Object writes that found the same resourceVersion already stored.
    pub fn unchanged_writes(&self) -> u64 {
        self.inner
            .unchanged
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Number of keys whose last write failed.
    pub fn error_keys(&self) -> BTreeMap<String, String> {
        lock(&self.inner.error_keys).clone()
    }

    pub(crate) fn record_write(&self, key: String, result: Result<(), String>) {
        let mut keys = lock(&self.inner.error_keys);
        match result {
            Ok(()) => {
                keys.remove(&key);
            }
            Err(e) => {
                tracing::warn!(%key, error = %e, "cache write failed");
                // Keys name scopes, whose components pods pick: on a full
                // disk, a pod cycling User-Agents must not grow this.
                if keys.len() < ERROR_KEYS_MAX || keys.contains_key(&key) {
                    keys.insert(key, e);
                }
            }
        }
    }

    /// Whether the response to this request is to be cached, and how.
    pub fn plan(&self, info: &RequestInfo, method: &Method) -> Option<Plan> {
        if !info.is_resource {
            return (*method == Method::GET && is_cached_document(&info.path)).then(|| {
                Plan::Document {
                    path: info.path.clone(),
                }
            });
        }
        if let Some(why) = not_cacheable(&self.inner.agents, info) {
            tracing::trace!(path = %info.path, reason = %why, "not cached");
            return None;
        }
        if !info.caller.is_node() && self.over_identity_budget() {
            tracing::debug!(path = %info.path, "the store is past the share other identities may use; not cached");
            return None;
        }
        if info.query.dry_run {
            return None; // a dry run changes nothing upstream
        }
        // Last of the cheap checks: a request that is not cached anyway
        // takes no place among the identity's components.
        if let Principal::Token(id) = &info.caller
            && !self
                .inner
                .identity_components
                .admit(&id.owner(), &info.component)
        {
            tracing::debug!(path = %info.path, component = %info.component, "the identity caches for as many components as it may; not cached");
            return None;
        }
        let q = &info.query;
        // The space is fixed from the response's Content-Type in `tee`.
        let resource = keys::resource_key(info, Space::Full);
        match info.verb.as_str() {
            "get" | "create" | "update" | "patch" => Some(Plan::Object { resource }),
            "list" | "watch" => {
                let selectors = match Selectors::from_query(q) {
                    Ok(s) if s.answerable() => s,
                    Ok(_) => {
                        tracing::debug!(path = %info.path, "selector reads fields the cache does not keep; not cached");
                        return None;
                    }
                    Err(e) => {
                        tracing::debug!(path = %info.path, error = %e, "bad selector; not cached");
                        return None;
                    }
                };
                let namespace = (!info.namespace.is_empty()).then(|| info.namespace.to_string());
                if info.verb == Verb::Watch {
                    Some(Plan::Watch {
                        resource,
                        namespace,
                        selectors,
                    })
                } else {
                    Some(Plan::List {
                        resource,
                        namespace,
                        selectors,
                        limit: q.limit.filter(|l| *l > 0),
                        continue_token: q.continue_token.clone().filter(|c| !c.is_empty()),
                    })
                }
            }
            _ => None,
        }
    }

    /// Identities other than the node's own components may fill the store
    /// up to [`IDENTITY_SHARE`] of `--cache-max-bytes`, so pods can never
    /// crowd out what kubelet needs to restart offline.
    fn over_identity_budget(&self) -> bool {
        let (used, max) = self.inner.store.usage();
        max.is_some_and(|max| used as f64 > max as f64 * IDENTITY_SHARE)
    }

    /// Called with every response status of a planned request: a 404 on a
    /// list of a custom resource forgets its kind (the CRD is gone).
    pub fn on_status(&self, plan: &Plan, status: StatusCode) {
        if status == StatusCode::NOT_FOUND
            && let Plan::List { resource, .. } = plan
            && !keys::is_builtin(&resource.gvr)
        {
            let store = self.inner.store.clone();
            let gvr = resource.gvr.clone();
            lock(&self.inner.kinds_seen).remove(&gvr);
            tokio::spawn(async move {
                match store.forget_gvr(&gvr).await {
                    Ok(n) if n > 0 => {
                        tracing::info!(%gvr, "the apiserver no longer serves this resource; forgot its kind")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(%gvr, error = %e, "forgetting a resource kind failed"),
                }
            });
        }
    }

    /// Wraps a 2xx response body so a copy reaches the cache; the client's
    /// stream is returned unchanged in content and pace.
    pub fn tee(&self, plan: Plan, headers: &HeaderMap, body: Body) -> Body {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if let Plan::Document { path } = &plan {
            let key = document_key(path, &ct);
            return self.tee_document(key, ct, body);
        }
        let Some(format) = codec::format_for_content_type(&ct) else {
            tracing::debug!(content_type = %ct, "response format not cacheable");
            return body;
        };
        let Some(space) = keys::response_space(headers) else {
            // A Table (kubectl's default output) has rows, not objects: the
            // first page is kept whole for this scope's same request. Other
            // transforms are never cached.
            if let Plan::List {
                resource,
                namespace,
                selectors,
                limit,
                continue_token: None,
            } = &plan
                && let Some(variant) = keys::table_variant(&ct)
            {
                let scope = selectors.scope(resource, namespace.as_deref());
                let key = keys::table_document_key(&scope, *limit, &variant);
                return self.tee_document(key, ct, body);
            }
            return body;
        };
        let plan = with_space(plan, space);
        // Streams (watches, whole lists) are consumed by a task of their
        // own; anything else is gathered whole in the client's poll.
        let stream = match plan {
            Plan::Watch {
                resource,
                namespace,
                selectors,
            } => Stream::Watch(selectors.scope(&resource, namespace.as_deref())),
            Plan::List {
                resource,
                namespace,
                selectors,
                limit: None,
                continue_token: None,
            } => Stream::List(resource, namespace, selectors),
            whole => return self.tee_whole(whole, format, body),
        };
        let (tee, rx) = Tee::new(body);
        let me = self.clone();
        tokio::spawn(async move {
            match stream {
                Stream::Watch(scope) => me.consume_watch(scope, format, rx).await,
                Stream::List(resource, namespace, selectors) => {
                    me.consume_list(resource, namespace, selectors, format, rx)
                        .await
                }
            }
        });
        tee.boxed_unsync()
    }

    /// Tees a response cached whole (an object, a list page).
    fn tee_whole(&self, plan: Plan, format: codec::Format, body: Body) -> Body {
        let me = self.clone();
        self.gather(body, move |bytes, held| {
            // A GET of what is cached already writes nothing, and needs no
            // task to know it.
            if let Plan::Object { resource } = &plan
                && me.holds_already(resource, format, &bytes)
            {
                me.count_unchanged();
                return;
            }
            tokio::spawn(async move { me.write_response(plan, format, bytes, held).await });
        })
    }

    /// Tees a response kept whole under `key` (discovery, a Table).
    fn tee_document(&self, key: String, content_type: String, body: Body) -> Body {
        let me = self.clone();
        self.gather(body, move |bytes, held| {
            tokio::spawn(async move {
                let r = me
                    .inner
                    .store
                    .put_document(&key, &content_type, bytes)
                    .await;
                me.record_write(format!("document {key}"), r.map_err(|e| e.to_string()));
                drop(held);
            });
        })
    }

    /// Wraps `body` so `done` gets a whole copy of it, within the copy
    /// budget; a body that does not fit passes through uncached.
    fn gather(&self, body: Body, done: impl FnOnce(Bytes, Reservation) + Send + 'static) -> Body {
        let hint = http_body::Body::size_hint(&body).exact();
        match Gather::new(&self.inner.budget, hint, MAX_CACHED_BODY) {
            Ok(copy) => Gathered::new(body, copy, done).boxed_unsync(),
            Err(_) => body,
        }
    }

    fn count_unchanged(&self) {
        self.inner
            .unchanged
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    async fn write_response(
        &self,
        plan: Plan,
        format: codec::Format,
        bytes: Bytes,
        mut held: Reservation,
    ) {
        let size = bytes.len();
        match plan {
            Plan::Object { resource } => self.write_object(&resource, format, &bytes).await,
            Plan::List {
                resource,
                namespace,
                selectors,
                limit,
                continue_token,
            } => {
                // The items split from the body are a second copy while the
                // store takes them.
                if !held.grow(size) {
                    self.inner.budget.count_skip();
                    tracing::debug!(bytes = size, "list copy over the memory budget; not cached");
                    return;
                }
                self.write_list(
                    resource,
                    namespace,
                    selectors,
                    limit,
                    continue_token,
                    format,
                    bytes,
                )
                .await
            }
            Plan::Watch { .. } | Plan::Document { .. } => {}
        }
        drop(held);
        if size >= TRIM_AFTER_BYTES && self.inner.budget.in_use() == 0 {
            crate::alloc::release_free_memory();
        }
    }

    /// Builds the store object for one object body; None for what is never
    /// stored (Status, pods without a node, unnamed objects).
    fn object_from(
        &self,
        format: codec::Format,
        body: Bytes,
        api_version: &str,
        kind: &str,
    ) -> Option<Object> {
        let info = match codec::object_info(format, &body) {
            Ok(i) => i,
            Err(e) => {
                tracing::debug!(error = %e, "object metadata unreadable; not cached");
                return None;
            }
        };
        if info.is_status() || info.name.is_empty() {
            return None;
        }
        let kind_now = if info.kind.is_empty() {
            kind
        } else {
            &info.kind
        };
        if kind_now == "Pod" && info.node_name.is_empty() {
            return None; // never cache unscheduled pods
        }
        let meta = keys::object_meta(&info, api_version, kind);
        Some(Object {
            meta,
            format: keys::to_store_format(format),
            body,
        })
    }

    async fn write_object(&self, resource: &ResourceKey, format: codec::Format, bytes: &Bytes) {
        // A GET of what is cached already (same resourceVersion, same
        // format) writes nothing: no queue, no transaction, and only the
        // object's head is read to know it.
        if self.holds_already(resource, format, bytes) {
            self.count_unchanged();
            return;
        }
        let Some(object) = self.object_from(format, bytes.clone(), "", "") else {
            return;
        };
        self.note_kind(resource, &object.meta.kind).await;
        let key = error_key(resource, &object);
        let r = self
            .inner
            .store
            .put_if_not_older(resource, object)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        self.record_write(key, r);
    }

    /// Whether the store holds this body's object at its resourceVersion.
    fn holds_already(&self, resource: &ResourceKey, format: codec::Format, body: &[u8]) -> bool {
        let Ok(head) = codec::object_head(format, body) else {
            return false;
        };
        if head.name.is_empty() || head.is_status() {
            return false;
        }
        let namespace = (!head.namespace.is_empty()).then_some(head.namespace.as_ref());
        matches!(
            self.inner.store.holds(
                resource,
                namespace,
                &head.name,
                keys::to_store_format(format),
                &head.resource_version,
            ),
            Ok(true)
        )
    }

    /// Whether this version of the object was submitted by another watch of
    /// the same scope already, or is in the store (after a restart).
    fn already_written(&self, resource: &ResourceKey, key: &str, o: &Object) -> bool {
        if o.meta.resource_version.as_str().is_empty() {
            return false;
        }
        let stamp = format!("{:?} {}", o.format, o.meta.resource_version);
        {
            let mut submitted = lock(&self.inner.submitted);
            if submitted.get(key) == Some(&stamp) {
                return true;
            }
            if submitted.len() >= SUBMITTED_MAX {
                submitted.clear();
            }
            submitted.insert(key.to_owned(), stamp);
        }
        matches!(self.inner.store.holds_version(resource, o), Ok(true))
    }

    /// Records the kind of a custom resource once per process.
    async fn note_kind(&self, resource: &ResourceKey, kind: &str) {
        if resource.space != Space::Full || kind.is_empty() || keys::is_builtin(&resource.gvr) {
            return;
        }
        if !lock(&self.inner.kinds_seen).insert(resource.gvr.clone()) {
            return;
        }
        if let Err(e) = self.inner.store.put_kind(&resource.gvr, kind).await {
            lock(&self.inner.kinds_seen).remove(&resource.gvr);
            tracing::warn!(gvr = %resource.gvr, error = %e, "recording a resource kind failed");
        }
    }

    /// Splits a list into store objects (items get type meta / an envelope,
    /// so each is a self-describing object as a GET would return it).
    fn list_items(&self, format: codec::Format, bytes: &Bytes) -> Option<ListCopy> {
        let parts = match codec::split_list(format, bytes) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "list unreadable; not cached");
                return None;
            }
        };
        let api_version = parts.api_version.to_string();
        let item_kind = parts.item_kind().to_owned();
        let mut items = Vec::with_capacity(parts.items.len());
        for r in &parts.items {
            let raw = bytes.slice(r.clone());
            if let Some(o) = self.list_item(format, raw, &api_version, &item_kind).ok()? {
                items.push(o);
            }
        }
        Some(ListCopy {
            items,
            item_kind,
            list_rv: parts.meta.resource_version.to_string(),
            next_continue: parts.meta.continue_token.to_string(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn write_list(
        &self,
        resource: ResourceKey,
        namespace: Option<String>,
        selectors: Selectors,
        limit: Option<u64>,
        continue_token: Option<String>,
        format: codec::Format,
        bytes: Bytes,
    ) {
        let Some(ListCopy {
            items,
            item_kind,
            list_rv,
            next_continue: next,
        }) = self.list_items(format, &bytes)
        else {
            return;
        };
        // Protobuf items were re-enveloped: the list body is no longer
        // needed while the store writes (JSON items still share it).
        drop(bytes);
        self.note_kind(&resource, &item_kind).await;
        let scope = selectors.scope(&resource, namespace.as_deref());
        let sel = selectors.clone();
        let in_scope = move |m: &storage::ObjectMeta| sel.matches(m);
        let key = format!("list {scope}");

        let paginated = limit.is_some() || continue_token.is_some();
        if !paginated || (continue_token.is_none() && next.is_empty()) {
            let r = self
                .inner
                .store
                .replace_scope(&scope, in_scope, items, list_rv)
                .await
                .map_err(|e| e.to_string());
            self.record_write(key, r);
            return;
        }
        // Paginated: stage pages; the last page (no continue) commits.
        let (staging, mut guard) = match &continue_token {
            None => {
                {
                    let mut st = lock(&self.inner.stagings);
                    st.retain(|_, (_, s)| {
                        s.try_lock()
                            .map_or(true, |s| s.started.elapsed() < STAGING_TTL)
                    });
                    if st.len() >= STAGINGS_MAX && !st.contains_key(&scope) {
                        tracing::debug!(%scope, "too many paginated lists in progress; not cached");
                        return;
                    }
                }
                let staging = Arc::new(tokio::sync::Mutex::new(Staging {
                    list: Some(self.inner.store.begin_staged(&scope)),
                    list_rv: list_rv.clone(),
                    started: Instant::now(),
                }));
                let guard = staging.clone().lock_owned().await;
                lock(&self.inner.stagings).insert(scope.clone(), (next.clone(), staging.clone()));
                (staging, guard)
            }
            Some(tok) => {
                let deadline = Instant::now() + PAGE_WAIT;
                let staging = loop {
                    let found = lock(&self.inner.stagings)
                        .get(&scope)
                        .filter(|(expected, _)| expected == tok)
                        .map(|(_, s)| s.clone());
                    if let Some(s) = found {
                        break s;
                    }
                    if Instant::now() > deadline {
                        tracing::debug!(%scope, "a page of a list whose previous page was not seen; not cached");
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                };
                let guard = staging.clone().lock_owned().await;
                if let Some((expected, _)) = lock(&self.inner.stagings).get_mut(&scope) {
                    next.clone_into(expected);
                }
                (staging, guard)
            }
        };
        let forget = |me: &Self| {
            let mut st = lock(&me.inner.stagings);
            if st
                .get(&scope)
                .is_some_and(|(_, s)| Arc::ptr_eq(s, &staging))
            {
                st.remove(&scope);
            }
        };
        let Some(list) = guard.list.as_mut() else {
            return; // an earlier page failed
        };
        if let Err(e) = list.stage_page(items).await {
            guard.list = None;
            forget(self);
            self.record_write(key, Err(e.to_string()));
            return;
        }
        if next.is_empty() {
            forget(self);
            let rv = guard.list_rv.clone();
            if let Some(list) = guard.list.take() {
                let r = list.commit(in_scope, rv).await.map_err(|e| e.to_string());
                self.record_write(key, r);
            }
        }
    }

    async fn consume_watch(
        &self,
        scope: ScopeKey,
        format: codec::Format,
        mut rx: mpsc::Receiver<Chunk>,
    ) {
        let mut decoder = WatchDecoder::new(format);
        let mut complete = false;
        'stream: while let Some(chunk) = rx.recv().await {
            let data = match chunk {
                Chunk::Data(d) => d,
                Chunk::End => {
                    complete = true;
                    break;
                }
            };
            decoder.push(&data);
            loop {
                let ev = match decoder.next_event() {
                    Ok(Some(ev)) => ev,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(%scope, error = %e, "watch stream undecodable; caching stops");
                        break 'stream;
                    }
                };
                if !self.apply_event(&scope, format, ev).await {
                    break 'stream;
                }
            }
        }
        if !complete {
            // Events may have been lost: a reconnect must relist.
            tracing::debug!(%scope, "watch copy lost; withdrawing its progress");
            if let Err(e) = self.inner.store.clear_watch_progress(&scope).await {
                tracing::debug!(%scope, error = %e, "withdrawing watch progress failed");
            }
        }
    }

    /// Applies one event; false when the stream's copy must stop.
    async fn apply_event(
        &self,
        scope: &ScopeKey,
        format: codec::Format,
        ev: codec::WatchEvent,
    ) -> bool {
        let event = match ev.event_type {
            EventType::Error => {
                // e.g. 410 Gone: whatever progress we had is void.
                let _ = self.inner.store.clear_watch_progress(scope).await;
                return true;
            }
            EventType::Bookmark => {
                let rv = codec::object_info(format, ev.object())
                    .map(|i| i.resource_version.to_string())
                    .unwrap_or_default();
                if rv.is_empty() {
                    return true;
                }
                WatchEvent::Bookmark(rv.into())
            }
            t => {
                let Some(object) = self.object_from(format, ev.object_bytes(), "", "") else {
                    return true;
                };
                if object.meta.namespace.as_deref() != scope.namespace.as_deref()
                    && scope.namespace.is_some()
                {
                    return true;
                }
                match t {
                    EventType::Added => WatchEvent::Added(object),
                    EventType::Modified => WatchEvent::Modified(object),
                    _ => WatchEvent::Deleted(object),
                }
            }
        };
        let key = match &event {
            WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => {
                error_key(&scope.resource, o)
            }
            WatchEvent::Bookmark(_) => format!("watch {scope}"),
        };
        if let WatchEvent::Added(o) | WatchEvent::Modified(o) = &event
            && self.already_written(&scope.resource, &key, o)
        {
            self.inner
                .unchanged
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return true;
        }
        if let WatchEvent::Deleted(_) = &event {
            lock(&self.inner.submitted).remove(&key);
        }
        match self
            .inner
            .store
            .submit(Write::WatchEvent {
                scope: scope.clone(),
                event,
            })
            .await
        {
            Ok(receipt) => {
                let me = self.clone();
                tokio::spawn(async move {
                    let r = receipt
                        .durable()
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string());
                    if r.is_err() {
                        // Not written after all: the next copy must be.
                        lock(&me.inner.submitted).remove(&key);
                    }
                    me.record_write(key, r);
                });
                true
            }
            Err(e) => {
                // Never submitted: another watch's copy must still be written.
                lock(&self.inner.submitted).remove(&key);
                self.record_write(key, Err(e.to_string()));
                false
            }
        }
    }

    /// Stores a locally created object (an event posted offline).
    pub async fn store_local(
        &self,
        resource: &ResourceKey,
        format: codec::Format,
        body: Bytes,
    ) -> bool {
        let Some(object) = self.object_from(format, body, "", "") else {
            return false;
        };
        let key = error_key(resource, &object);
        let r = self
            .inner
            .store
            .put_if_not_older(resource, object)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        let ok = r.is_ok();
        self.record_write(key, r);
        ok
    }
}

/// A list response split for the store.
struct ListCopy {
    items: Vec<Object>,
    item_kind: String,
    list_rv: String,
    next_continue: String,
}

fn with_space(plan: Plan, space: Space) -> Plan {
    let set = |r: ResourceKey| ResourceKey { space, ..r };
    match plan {
        Plan::Object { resource } => Plan::Object {
            resource: set(resource),
        },
        Plan::List {
            resource,
            namespace,
            selectors,
            limit,
            continue_token,
        } => Plan::List {
            resource: set(resource),
            namespace,
            selectors,
            limit,
            continue_token,
        },
        Plan::Watch {
            resource,
            namespace,
            selectors,
        } => Plan::Watch {
            resource: set(resource),
            namespace,
            selectors,
        },
        d @ Plan::Document { .. } => d,
    }
}

fn error_key(resource: &ResourceKey, o: &Object) -> String {
    match &o.meta.namespace {
        Some(ns) => format!("{resource} {ns}/{}", o.meta.name),
        None => format!("{resource} {}", o.meta.name),
    }
}

/// A teed response consumed as it streams.
enum Stream {
    Watch(ScopeKey),
    List(ResourceKey, Option<String>, Selectors),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_worth_keeping() {
        for p in [
            "/version",
            "/api",
            "/api/v1",
            "/apis",
            "/apis/discovery.k8s.io/v1",
            "/apis/apps",
        ] {
            assert!(is_cached_document(p), "{p}");
        }
        for p in ["/healthz", "/openapi/v2", "/metrics", "/api/v1/pods/x/y"] {
            assert!(!is_cached_document(p), "{p}");
        }
        assert_eq!(
            document_key(
                "/apis",
                "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
            ),
            "/apis#as=APIGroupDiscoveryList"
        );
        assert_eq!(document_key("/version/", "application/json"), "/version");
    }

    #[tokio::test]
    async fn paginated_lists_in_progress_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), crate::storage::Options::default())
            .expect("store")
            .store;
        let m = CacheManager::new(store, CacheAgents::new("n1"), "n1", None);
        let first_page = |i: usize| {
            Bytes::from(format!(
                r#"{{"kind":"PodList","apiVersion":"v1","metadata":{{"resourceVersion":"5","continue":"c{i}"}},"items":[{{"metadata":{{"name":"p{i}","namespace":"a","resourceVersion":"5"}}}}]}}"#
            ))
        };
        for i in 0..STAGINGS_MAX + 5 {
            let resource = ResourceKey::new(
                format!("ua-{i}@sa"),
                storage::Space::Full,
                storage::Gvr::new("", "v1", "pods"),
            );
            m.write_list(
                resource,
                Some("a".into()),
                Selectors::default(),
                Some(1),
                None,
                codec::Format::Json,
                first_page(i),
            )
            .await;
        }
        assert_eq!(lock(&m.inner.stagings).len(), STAGINGS_MAX);
    }

    #[test]
    fn failed_writes_remembered_are_bounded_and_cleared_by_a_success() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), crate::storage::Options::default())
            .expect("store")
            .store;
        let m = CacheManager::new(store, CacheAgents::new("n1"), "n1", None);
        for i in 0..ERROR_KEYS_MAX + 10 {
            m.record_write(format!("ua-{i}@sa:pods"), Err("disk full".into()));
        }
        assert_eq!(m.error_keys().len(), ERROR_KEYS_MAX);
        // A key already known is updated; a success clears and makes room.
        m.record_write("ua-0@sa:pods".into(), Err("still full".into()));
        assert_eq!(m.error_keys()["ua-0@sa:pods"], "still full");
        m.record_write("ua-0@sa:pods".into(), Ok(()));
        m.record_write("late@sa:pods".into(), Err("disk full".into()));
        assert!(m.error_keys().contains_key("late@sa:pods"));
        assert_eq!(m.error_keys().len(), ERROR_KEYS_MAX);
    }
}
