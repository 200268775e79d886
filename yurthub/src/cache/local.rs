//! Offline answers (§5.7): what the hub says when no apiserver is reachable,
//! from the cache only.
//!
//! * get/list from the cache, in the format the request's Accept asks for
//!   (converted when the stored format differs; PartialObjectMetadata served
//!   from its own space or derived from full objects); list selectors are
//!   applied; list RV = max item RV; a kubelet pod list over an existing
//!   empty set is 404 (kubelet must not kill its pods); a `metadata.name`
//!   miss is an empty list;
//! * watch: 200, no events, ends at `timeoutSeconds` (else
//!   min-request-timeout × [1, 2)), or within about a second of a backend
//!   turning healthy so the client relists online;
//! * delete → 403; create → 201 echo (events are also stored); update and
//!   patch are applied to the cached copy and say so in a Warning header;
//!   ServiceAccount token requests get a locally minted short-lived token;
//! * `/version` and discovery documents from the cache; other non-resource
//!   paths, and components that are not cache agents, get 400.

use std::cell::OnceCell;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::keys::{self, Selectors};
use super::manager::{CacheManager, document_key, is_cached_document};
use super::policy::{self, not_cacheable};
use super::{endpoints, patch, token};
use crate::codec::{self, Format, HubRestrictions, ListMeta};
use crate::identity::Authenticator;
use crate::remote::LoadBalancer;
use crate::request::status;
use crate::request::{RequestInfo, Verb};
use crate::storage::{ObjectKey, ResourceKey, Space, StoredObject};
use crate::{Body, full_body};

/// The Warning header on an update or patch applied only locally.
pub const LOCAL_CHANGE_WARNING: &str = "299 - \"yurthub: the cloud is unreachable; the change was applied to this node's cache only and was not sent to the apiserver\"";

/// A request as the local proxy sees it (the body already read).
pub struct LocalRequest<'a> {
    pub info: &'a RequestInfo,
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub body: Bytes,
}

#[derive(Clone)]
pub struct Local {
    cache: CacheManager,
    lb: Arc<LoadBalancer>,
    min_request_timeout: Duration,
    shutdown: CancellationToken,
    authn: Option<Authenticator>,
}

impl Local {
    pub fn new(
        cache: CacheManager,
        lb: Arc<LoadBalancer>,
        min_request_timeout: Duration,
        shutdown: CancellationToken,
    ) -> Local {
        Local {
            cache,
            lb,
            min_request_timeout,
            shutdown,
            authn: None,
        }
    }

    /// The issuer of offline service-account tokens (kubelet's TokenRequest).
    pub fn with_authn(mut self, authn: Authenticator) -> Local {
        self.authn = Some(authn);
        self
    }

    pub fn cache(&self) -> &CacheManager {
        &self.cache
    }

    pub async fn serve(&self, req: LocalRequest<'_>) -> Response<Body> {
        let info = req.info;
        if info.verb == Verb::Create && policy::is_review(info) {
            // A review is a question only the cloud can answer.
            return status::service_unavailable(format!(
                "the cloud is unreachable: {} cannot be answered offline",
                info.resource
            ));
        }
        if !info.is_resource {
            return self.document(&req);
        }
        let node = info.caller.is_node();
        match info.verb {
            Verb::Delete | Verb::DeleteCollection => {
                return status::status(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    "delete request is not supported in local cache",
                );
            }
            Verb::Create | Verb::Update | Verb::Patch if !node => {
                return status::service_unavailable(
                    "the cloud is unreachable: only the node's own components' changes are \
                     applied locally; retry when the cloud is back",
                );
            }
            Verb::Create => return self.create(&req).await,
            Verb::Watch if !node && !self.covered(info) => {
                return status::forbidden_offline(info);
            }
            Verb::Watch => return self.watch(&req),
            _ => {}
        }
        if let Some(why) = not_cacheable(self.cache.agents(), info) {
            return status::bad_request(format!("can not cache for {}: {why}", describe(info)));
        }
        match info.verb {
            Verb::Get => self.get(&req),
            // Reading and encoding thousands of objects: a heavy step.
            Verb::List => crate::runtime::heavy(|| self.list(&req)),
            Verb::Update | Verb::Patch => self.update(&req).await,
            other => status::bad_request(format!("local proxy does not support verb {other}")),
        }
    }

    /// Whether a list this identity made online covers the request: its
    /// exact scope, or everything in the namespace or cluster.
    fn covered(&self, info: &RequestInfo) -> bool {
        let Ok(selectors) = Selectors::from_query(&info.query) else {
            return false;
        };
        let resource = keys::resource_key(info, Space::Full);
        let ns = (!info.namespace.is_empty()).then_some(info.namespace.as_str());
        let mut scopes = vec![selectors.scope(&resource, ns), resource.scope(None, "")];
        if ns.is_some() {
            scopes.push(resource.scope(ns, ""));
        }
        scopes
            .iter()
            .any(|scope| matches!(self.cache.store().list(scope, |_| false), Ok(Some(_))))
    }

    /// Nothing cached: the node's components get the apiserver's 404;
    /// another identity a 403 unless a list it made covers the object.
    fn miss(&self, info: &RequestInfo) -> Response<Body> {
        if info.caller.is_node() || self.covered(info) {
            not_found(info)
        } else {
            status::forbidden_offline(info)
        }
    }

    /// A cached object for `get`, or None when it is not cached (the
    /// autonomy path for kubelet's node then goes to the cloud).
    pub fn cached_get(&self, info: &RequestInfo, headers: &HeaderMap) -> Option<Response<Body>> {
        let key = keys::resource_key(info, Space::Full)
            .object(keys::object_namespace(info), info.name.as_str());
        let stored = self.cache.store().get(&key).ok()??;
        Some(answer_object(headers, &stored, StatusCode::OK))
    }

    fn document(&self, req: &LocalRequest<'_>) -> Response<Body> {
        let path = &req.info.path;
        if *req.method != Method::GET || !is_cached_document(path) {
            return status::bad_request(format!(
                "local proxy does not support request({} {path})",
                req.method
            ));
        }
        let accept = header_str(req.headers, header::ACCEPT);
        // Aggregated discovery first when asked for, then the plain document.
        let mut candidates = Vec::new();
        for clause in codec::parse_accept(accept) {
            if let Some(as_) = clause.param("as") {
                candidates.push(document_key(path, &format!("x;as={as_}")));
            } else {
                candidates.push(document_key(path, ""));
            }
        }
        if candidates.is_empty() {
            candidates.push(document_key(path, ""));
        }
        for key in candidates {
            match self.cache.store().document(&key) {
                Ok(Some(doc)) => return document_response(doc),
                Ok(None) => {}
                Err(e) => return internal(format!("reading cached {path}: {e}")),
            }
        }
        status::status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{path} is not in the local cache"),
        )
    }

    fn get(&self, req: &LocalRequest<'_>) -> Response<Body> {
        let info = req.info;
        let ns = keys::object_namespace(info);
        let wants_meta = keys::accept_wants_metadata(req.headers);
        let spaces: &[Space] = if wants_meta {
            &[Space::PartialObjectMetadata, Space::Full]
        } else {
            &[Space::Full]
        };
        for space in spaces {
            let key = keys::resource_key(info, *space).object(ns, info.name.as_str());
            match self.cache.store().get(&key) {
                Ok(Some(stored)) => {
                    let mut items = vec![stored];
                    items = endpoints::offline(
                        &self.cache,
                        &info.group,
                        &info.resource,
                        &info.component,
                        items,
                    );
                    return answer_object(req.headers, &items[0], StatusCode::OK);
                }
                Ok(None) => {}
                Err(e) => return internal(format!("reading {key}: {e}")),
            }
        }
        self.miss(info)
    }

    fn list(&self, req: &LocalRequest<'_>) -> Response<Body> {
        let info = req.info;
        let q = &info.query;
        let selectors = match Selectors::from_query(q) {
            Ok(s) => s,
            Err(e) => return status::bad_request(e),
        };
        let ns = (!info.namespace.is_empty()).then_some(info.namespace.as_str());
        if let Some(table) = self.cached_table(req, &selectors, ns) {
            return table;
        }
        let wants_meta = keys::accept_wants_metadata(req.headers);
        let spaces: &[Space] = if wants_meta {
            &[Space::PartialObjectMetadata, Space::Full]
        } else {
            &[Space::Full]
        };
        // Each object is rendered as it is read, so a list of thousands
        // never holds all its stored objects at once; unless endpoints that
        // follow the node's pods may still change them (rendered after).
        let follows = endpoints::changes_offline(&info.group, &info.resource, &info.component);
        let first: OnceCell<FirstItem> = OnceCell::new();
        let each = |s: StoredObject| {
            if follows {
                return Listed::Stored(Box::new(s));
            }
            Listed::Rendered(
                first
                    .get_or_init(|| FirstItem::of(req.headers, &s))
                    .render(&s),
            )
        };
        let mut found = None;
        for space in spaces {
            let resource = keys::resource_key(info, *space);
            let scope = selectors.scope(&resource, ns);
            let sel = selectors.clone();
            match self
                .cache
                .store()
                .list_with(&scope, move |m| sel.matches(m), each)
            {
                Ok(Some(listing)) => {
                    found = Some((resource, listing));
                    break;
                }
                Ok(None) => {}
                Err(e) => return internal(format!("listing {scope}: {e}")),
            }
        }
        let by_name = selectors.field.required("metadata.name").is_some();
        let gvr = keys::gvr(info);
        if !wants_meta
            && !keys::is_builtin(&gvr)
            && matches!(self.cache.store().kind_for(&gvr), Ok(None))
        {
            // Unknown kind, or the apiserver said the resource is gone (404).
            return not_found(info);
        }
        let Some((resource, listing)) = found else {
            if !info.caller.is_node() && !self.covered(info) {
                return status::forbidden_offline(info);
            }
            if by_name {
                return self.empty_list(req, &keys::resource_key(info, Space::Full));
            }
            return not_found(info);
        };
        if listing.items.is_empty()
            && info.component == "kubelet"
            && info.resource == "pods"
            && info.group.is_empty()
            && !by_name
        {
            // Kubelet would otherwise conclude every pod is gone and kill them.
            return not_found(info);
        }
        let first_type = match listing.items.first() {
            Some(Listed::Stored(o)) => Some((
                o.object.meta.api_version.clone(),
                o.object.meta.kind.clone(),
            )),
            Some(Listed::Rendered(_)) => {
                first.get().map(|f| (f.api_version.clone(), f.kind.clone()))
            }
            None => None,
        };
        let Some((api_version, kind)) =
            first_type.or_else(|| keys::kind_of(self.cache.store(), &resource.gvr))
        else {
            return not_found(info);
        };
        let rv = listing
            .max_resource_version
            .map(|v| v.to_string())
            .or_else(|| {
                listing
                    .marker
                    .as_ref()
                    .map(|m| m.resource_version.to_string())
            })
            .unwrap_or_default();
        let Some(first) = first.into_inner() else {
            // Nothing rendered yet: empty, or kept for the endpoints.
            let stored = listing
                .items
                .into_iter()
                .filter_map(|l| match l {
                    Listed::Stored(o) => Some(*o),
                    Listed::Rendered(_) => None,
                })
                .collect();
            let items = endpoints::offline(
                &self.cache,
                &info.group,
                &info.resource,
                &info.component,
                stored,
            );
            return answer_list(req.headers, &api_version, &kind, &rv, items);
        };
        let Some((format, meta_av)) = first.repr else {
            return not_acceptable();
        };
        let rendered = listing
            .items
            .into_iter()
            .map(|l| match l {
                Listed::Rendered(r) => r,
                Listed::Stored(_) => Err("an object was not rendered".to_owned()),
            })
            .collect::<Result<Vec<_>, _>>();
        match rendered {
            Ok(items) => list_response(format, meta_av, &api_version, &kind, &rv, items),
            Err(e) => internal(e),
        }
    }

    /// The Table the cloud answered to this scope's same first-page request
    /// (the owner in the scope makes it this identity's), for an Accept
    /// that prefers a Table. Otherwise the list is answered as objects,
    /// which kubectl prints itself.
    fn cached_table(
        &self,
        req: &LocalRequest<'_>,
        selectors: &Selectors,
        ns: Option<&str>,
    ) -> Option<Response<Body>> {
        let q = &req.info.query;
        if q.continue_token.as_deref().is_some_and(|c| !c.is_empty()) {
            return None;
        }
        let scope = selectors.scope(&keys::resource_key(req.info, Space::Full), ns);
        let accept = header_str(req.headers, header::ACCEPT);
        for clause in accept.split(',') {
            let variant = keys::table_variant(clause)?;
            let key = keys::table_document_key(&scope, q.limit.filter(|l| *l > 0), &variant);
            if let Ok(Some(doc)) = self.cache.store().document(&key) {
                return Some(document_response(doc));
            }
        }
        None
    }

    fn empty_list(&self, req: &LocalRequest<'_>, resource: &ResourceKey) -> Response<Body> {
        match keys::kind_of(self.cache.store(), &resource.gvr) {
            Some((api_version, kind)) => {
                answer_list(req.headers, &api_version, &kind, "", Vec::new())
            }
            None => not_found(req.info),
        }
    }

    fn watch(&self, req: &LocalRequest<'_>) -> Response<Body> {
        let info = req.info;
        let q = &info.query;
        let offered = keys::kind_of(self.cache.store(), &keys::gvr(info))
            .map(|(av, k)| Format::offered_for(&av, &k))
            .unwrap_or(Format::BUILTIN);
        let format = match codec::negotiate_stream(
            Some(header_str(req.headers, header::ACCEPT)).filter(|a| !a.is_empty()),
            offered,
            &HubRestrictions,
        ) {
            Some(n) => n.format,
            None => return not_acceptable(),
        };
        let timeout = match q.timeout_seconds {
            Some(s) => Duration::from_secs(s),
            None => self
                .min_request_timeout
                .mul_f64(1.0 + rand::random::<f64>()),
        };
        let lb = self.lb.clone();
        let shutdown = self.shutdown.clone();
        let ends = async move {
            if timeout.is_zero() {
                return;
            }
            let cloud_back = async {
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if lb.any_healthy() {
                        return;
                    }
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(timeout) => {}
                _ = cloud_back => {}
                _ = shutdown.cancelled() => {}
            }
        };
        let stream = futures_util::stream::once(ends);
        let body = http_body_util::StreamBody::new(futures_util::StreamExt::filter_map(
            stream,
            |_| async { None::<Result<http_body::Frame<Bytes>, crate::BoxError>> },
        ));
        let mut r = Response::new(body.boxed_unsync());
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(format.watch_media_type()),
        );
        r
    }

    async fn create(&self, req: &LocalRequest<'_>) -> Response<Body> {
        let info = req.info;
        if info.resource == "serviceaccounts"
            && info.subresource == "token"
            && info.group.is_empty()
        {
            return self.token(req);
        }
        let ct = header_str(req.headers, header::CONTENT_TYPE);
        if info.resource == "events"
            && info.subresource.is_empty()
            && (info.group.is_empty() || info.group == "events.k8s.io")
            && not_cacheable(self.cache.agents(), info).is_none()
            && let Some(format) = codec::format_for_content_type(ct)
        {
            let resource = keys::resource_key(info, Space::Full);
            if !self
                .cache
                .store_local(&resource, format, req.body.clone())
                .await
            {
                tracing::debug!(path = %info.path, "offline event not stored");
            }
        }
        let mut r = Response::new(full_body(req.body.clone()));
        *r.status_mut() = StatusCode::CREATED;
        if let Some(v) = req.headers.get(header::CONTENT_TYPE) {
            r.headers_mut().insert(header::CONTENT_TYPE, v.clone());
        }
        r
    }

    fn token(&self, req: &LocalRequest<'_>) -> Response<Body> {
        let info = req.info;
        let format = codec::format_for_content_type(header_str(req.headers, header::CONTENT_TYPE))
            .unwrap_or(Format::Json);
        let request = match format.decode_object(&req.body) {
            Ok(v) => v,
            Err(_) => {
                // As upstream: an undecodable request is echoed.
                let mut r = Response::new(full_body(req.body.clone()));
                *r.status_mut() = StatusCode::CREATED;
                return r;
            }
        };
        let Some(authn) = &self.authn else {
            return status::service_unavailable(
                "the cloud is unreachable: no offline token issuer",
            );
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let exp = now + token::LIFETIME_SECS;
        let minted = authn.mint_offline(&info.namespace, &info.name, now, token::LIFETIME_SECS);
        let value = token::token_request(&request, &info.namespace, &info.name, &minted, exp);
        let out = negotiate_for(req.headers, "authentication.k8s.io/v1", "TokenRequest")
            .unwrap_or(Format::Json);
        match out.encode_object("authentication.k8s.io/v1", "TokenRequest", &value) {
            Ok(bytes) => typed(StatusCode::CREATED, out.media_type(), bytes),
            Err(e) => internal(format!("encoding the token request: {e}")),
        }
    }

    async fn update(&self, req: &LocalRequest<'_>) -> Response<Body> {
        let info = req.info;
        let resource = keys::resource_key(info, Space::Full);
        let key: ObjectKey = resource.object(keys::object_namespace(info), info.name.as_str());
        let stored = match self.cache.store().get(&key) {
            Ok(Some(s)) => s,
            Ok(None) => return not_found(info),
            Err(e) => return internal(format!("reading {key}: {e}")),
        };
        let meta = &stored.object.meta;
        let Some(stored_format) = keys::from_store_format(stored.object.format) else {
            return internal(format!("{key} is stored in a format the hub cannot edit"));
        };
        let current = match stored_format.decode_object(&stored.object.body) {
            Ok(v) => v,
            Err(e) => return internal(format!("decoding cached {key}: {e}")),
        };
        let ct = header_str(req.headers, header::CONTENT_TYPE);
        let mut next = if info.verb == Verb::Patch {
            match patch::apply(ct, &current, &req.body) {
                Ok(v) => v,
                Err(e @ patch::Error::UnsupportedType(_)) => {
                    return status::status(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "UnsupportedMediaType",
                        e.to_string(),
                    );
                }
                Err(e) => {
                    return status::status(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Invalid",
                        e.to_string(),
                    );
                }
            }
        } else {
            let format = codec::format_for_content_type(ct).unwrap_or(Format::Json);
            let body = match format.decode_object(&req.body) {
                Ok(v) => v,
                Err(e) => return status::bad_request(format!("decoding the request body: {e}")),
            };
            if info.subresource == "status" {
                let mut v = current.clone();
                v["status"] = body.get("status").cloned().unwrap_or(Value::Null);
                v
            } else {
                body
            }
        };
        // Identity and version stay the cached ones: this is not the cloud.
        if let Some(m) = next.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("name".into(), json!(meta.name));
            if let Some(ns) = &meta.namespace {
                m.insert("namespace".into(), json!(ns));
            }
            m.insert(
                "resourceVersion".into(),
                json!(meta.resource_version.as_str()),
            );
        }
        let bytes = match stored_format.encode_object(&meta.api_version, &meta.kind, &next) {
            Ok(b) => Bytes::from(b),
            Err(e) => return internal(format!("encoding the updated {key}: {e}")),
        };
        if !self
            .cache
            .store_local(&resource, stored_format, bytes.clone())
            .await
        {
            return internal(format!("storing the updated {key} failed"));
        }
        let updated = StoredObject {
            object: crate::storage::Object {
                body: bytes,
                ..stored.object.clone()
            },
            ..stored
        };
        let mut r = answer_object(req.headers, &updated, StatusCode::OK);
        r.headers_mut().insert(
            header::WARNING,
            HeaderValue::from_static(LOCAL_CHANGE_WARNING),
        );
        r
    }
}

fn describe(info: &RequestInfo) -> String {
    format!(
        "{} {} by {:?}",
        info.verb,
        if info.resource.is_empty() {
            info.path.as_str()
        } else {
            info.resource.as_str()
        },
        info.component
    )
}

fn document_response(doc: crate::storage::Document) -> Response<Body> {
    let mut r = Response::new(full_body(doc.body));
    if let Ok(v) = HeaderValue::from_str(&doc.content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

fn header_str(h: &HeaderMap, name: header::HeaderName) -> &str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

fn negotiate_for(headers: &HeaderMap, api_version: &str, kind: &str) -> Option<Format> {
    let accept = header_str(headers, header::ACCEPT);
    codec::negotiate(
        Some(accept).filter(|a| !a.is_empty()),
        Format::offered_for(api_version, kind),
        &HubRestrictions,
    )
    .map(|n| n.format)
}

/// The negotiated representation: format, and the PartialObjectMetadata
/// api version when asked for.
fn negotiate_repr(
    headers: &HeaderMap,
    api_version: &str,
    kind: &str,
) -> Option<(Format, Option<String>)> {
    let accept = header_str(headers, header::ACCEPT);
    let n = codec::negotiate(
        Some(accept).filter(|a| !a.is_empty()),
        Format::offered_for(api_version, kind),
        &HubRestrictions,
    )?;
    let meta = n.options.convert.map(|gvk| gvk.api_version());
    Some((n.format, meta))
}

/// One stored object in the requested representation.
fn render(stored: &StoredObject, format: Format, meta_av: Option<&str>) -> Result<Bytes, String> {
    let from = keys::from_store_format(stored.object.format)
        .ok_or_else(|| "stored in an unsupported format".to_string())?;
    // As stored, the body is shared rather than copied.
    let body = if from == format {
        stored.object.body.clone()
    } else {
        codec::convert_body(from, format, &stored.object.body)
            .map(Bytes::from)
            .map_err(|e| e.to_string())?
    };
    match meta_av {
        Some(av) if stored.object.meta.kind != "PartialObjectMetadata" => {
            codec::partial_object_metadata(format, &body, av)
                .map(Bytes::from)
                .map_err(|e| e.to_string())
        }
        _ => Ok(body),
    }
}

fn answer_object(headers: &HeaderMap, stored: &StoredObject, code: StatusCode) -> Response<Body> {
    let m = &stored.object.meta;
    let (av, kind) = real_type(m);
    let Some((format, meta_av)) = negotiate_repr(headers, &av, &kind) else {
        return not_acceptable();
    };
    match render(stored, format, meta_av.as_deref()) {
        Ok(bytes) => typed(
            code,
            &content_type(format, meta_av.as_deref(), "PartialObjectMetadata"),
            bytes,
        ),
        Err(e) => internal(format!("converting cached {}: {e}", stored.key)),
    }
}

/// The object's own type; for PartialObjectMetadata, a stand-in built-in
/// type so both formats are offered.
fn real_type(m: &crate::storage::ObjectMeta) -> (String, String) {
    if m.kind == "PartialObjectMetadata" {
        ("v1".into(), "Pod".into())
    } else {
        (m.api_version.clone(), m.kind.clone())
    }
}

/// Frames of an offline list body: large enough that a frame is one pass
/// through the connection's write path, small enough that a list of
/// thousands of objects never sits in memory twice.
const LIST_FRAME: usize = 64 << 10;

fn answer_list(
    headers: &HeaderMap,
    api_version: &str,
    kind: &str,
    rv: &str,
    items: Vec<StoredObject>,
) -> Response<Body> {
    let Some((format, meta_av)) = list_repr(headers, api_version, kind) else {
        return not_acceptable();
    };
    let mut rendered = Vec::with_capacity(items.len());
    for s in items {
        // Each stored object goes as soon as it is rendered (as stored, its
        // body is shared rather than copied).
        match render(&s, format, meta_av.as_deref()) {
            Ok(b) => rendered.push(b),
            Err(e) => return internal(format!("converting cached {}: {e}", s.key)),
        }
    }
    list_response(format, meta_av, api_version, kind, rv, rendered)
}

/// An object of an offline list: rendered as it was read, or kept whole for
/// the endpoints that follow the node's pods.
enum Listed {
    Stored(Box<StoredObject>),
    Rendered(Result<Bytes, String>),
}

/// The type of a list's first object, which decides how all are rendered.
struct FirstItem {
    api_version: String,
    kind: String,
    /// None: the client accepts nothing the list can be rendered in.
    repr: Option<(Format, Option<String>)>,
}

impl FirstItem {
    fn of(headers: &HeaderMap, s: &StoredObject) -> FirstItem {
        let m = &s.object.meta;
        FirstItem {
            api_version: m.api_version.clone(),
            kind: m.kind.clone(),
            repr: list_repr(headers, &m.api_version, &m.kind),
        }
    }

    fn render(&self, s: &StoredObject) -> Result<Bytes, String> {
        let Some((format, meta_av)) = &self.repr else {
            return Ok(Bytes::new()); // not answered: see `repr`
        };
        render(s, *format, meta_av.as_deref())
            .map_err(|e| format!("converting cached {}: {e}", s.key))
    }
}

/// The format (and PartialObjectMetadata version) a list of `kind` is
/// answered in.
fn list_repr(
    headers: &HeaderMap,
    api_version: &str,
    kind: &str,
) -> Option<(Format, Option<String>)> {
    if kind == "PartialObjectMetadata" {
        negotiate_repr(headers, "v1", "Pod")
    } else {
        negotiate_repr(headers, api_version, kind)
    }
}

/// The list response of `rendered` objects, sent in frames.
fn list_response(
    format: Format,
    meta_av: Option<String>,
    api_version: &str,
    kind: &str,
    rv: &str,
    rendered: Vec<Bytes>,
) -> Response<Body> {
    let (list_av, list_kind) = match (&meta_av, kind) {
        (Some(av), _) => (av.clone(), "PartialObjectMetadataList".to_owned()),
        (None, "PartialObjectMetadata") => (
            api_version.to_owned(),
            "PartialObjectMetadataList".to_owned(),
        ),
        (None, k) => (api_version.to_owned(), format!("{k}List")),
    };
    let meta = ListMeta {
        resource_version: rv.into(),
        ..ListMeta::default()
    };
    let large = rendered.iter().map(Bytes::len).sum::<usize>() >= LARGE_LIST;
    let frames = match codec::list_frames(format, &list_av, &list_kind, &meta, rendered, LIST_FRAME)
    {
        Ok(frames) => frames,
        Err(e) => return internal(format!("building the list: {e}")),
    };
    let len = frames.encoded_len();
    // After a large list the freed objects are many small allocations: give
    // them back to the OS once the body is gone (sent, or dropped by a
    // client that left).
    let release = large.then_some(ReleaseOnDrop);
    let stream = futures_util::stream::iter(frames.map(move |b| {
        let _held_until_the_body_is_dropped = &release;
        Ok::<_, crate::BoxError>(http_body::Frame::data(b))
    }));
    let mut r = Response::new(http_body_util::StreamBody::new(stream).boxed_unsync());
    let ct = content_type(format, meta_av.as_deref(), "PartialObjectMetadataList");
    if let Ok(v) = HeaderValue::from_str(&ct) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    r
}

/// Lists at least this large release free memory once sent.
const LARGE_LIST: usize = 1 << 20;

/// Returns free heap memory to the OS when dropped.
struct ReleaseOnDrop;

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        crate::alloc::release_free_memory();
    }
}

fn content_type(format: Format, meta_av: Option<&str>, as_kind: &str) -> String {
    match meta_av {
        None => format.media_type().to_owned(),
        Some(av) => {
            let (g, v) = av.split_once('/').unwrap_or(("", av));
            format!("{};as={as_kind};g={g};v={v}", format.media_type())
        }
    }
}

fn typed(code: StatusCode, content_type: &str, bytes: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full_body(bytes.into()));
    *r.status_mut() = code;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

fn not_found(info: &RequestInfo) -> Response<Body> {
    let what = if info.group.is_empty() {
        info.resource.to_string()
    } else {
        format!("{}.{}", info.resource, info.group)
    };
    let message = if info.name.is_empty() {
        format!("{what} is not in the local cache")
    } else {
        format!("{what} {:?} not found", info.name)
    };
    status::status_with_details(
        StatusCode::NOT_FOUND,
        "NotFound",
        message,
        Some(json!({"name": info.name, "group": info.group, "kind": info.resource})),
    )
}

fn not_acceptable() -> Response<Body> {
    status::status(
        StatusCode::NOT_ACCEPTABLE,
        "NotAcceptable",
        "only the following media types are accepted: application/json, application/vnd.kubernetes.protobuf",
    )
}

fn internal(message: String) -> Response<Body> {
    tracing::warn!(%message, "offline answer failed");
    status::status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
}
