//! The proxy: the life of one request through the hub.
//!
//! 1. resolve the [`RequestInfo`] (verb, resource, namespace, name, component);
//! 2. refuse what the apiserver would refuse before routing: malformed paths
//!    (400), bodies over the limit (413);
//! 3. readiness gate: 503 until the hub is ready, except for the hub's own
//!    clients;
//! 4. route: lists and watches of pool-scoped resources are served by the
//!    multiplexer's shared in-memory cache (`crate::multiplexer`);
//!    kubelet's own Lease is answered locally in edge mode (the hub
//!    renews it in the cloud, see `remote::health`; the cache stands in
//!    until the first renewal); kubelet's GET of a cached node is answered
//!    from the cache at once in edge mode and refreshed in the background;
//!    everything else goes to a healthy backend picked by the load
//!    balancer, or — in edge mode, when there is none — to the offline
//!    answers of `cache::Local`;
//! 5. forward with the right identity: the client's bearer token as-is, the
//!    hub's client certificate only for credential-less requests on the
//!    loopback listener, anonymous otherwise — pod traffic never borrows the
//!    node's identity; when the upstream connection fails, a cacheable
//!    get/list is answered from the cache, anything else gets 502;
//! 6. stream the response back as it arrives (watches included): gzip from
//!    the cloud is decoded when the body must be read, the response filters
//!    (`crate::filters`) rewrite it, and a copy of cacheable 2xx responses is
//!    teed into the cache without ever slowing the client (`cache::tee`) —
//!    so the filtered form is what is cached; or splice the two connections
//!    for exec/attach/port-forward upgrades.

mod body;
pub mod request_info;
pub mod server;
pub mod status;

use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use request_info::RequestInfo;

use crate::cache::{Local, LocalRequest};
use crate::config::WorkingMode;
use crate::filters::FilterRegistry;
use crate::hub::Readiness;
use crate::metrics::{DurationLabels, Metrics, RequestLabels};
use crate::remote::LoadBalancer;
use crate::remote::health::{HealthChecker, error_chain};
use crate::remote::transport::{Identity, Transports};
use crate::{Body, full_body};

/// Which listener a request arrived on; it decides whether the hub may lend
/// its own identity to a credential-less request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// Plain HTTP on loopback: kubelet and host-network node components.
    Loopback,
    /// HTTPS on the hub address: pods, via the kernel redirect.
    PodFacing,
}

#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    mode: WorkingMode,
    lb: Arc<LoadBalancer>,
    health: Option<Arc<HealthChecker>>,
    transports: Transports,
    metrics: Metrics,
    readiness: Readiness,
    max_body: u64,
    shutdown: CancellationToken,
    local: Option<Local>,
    filters: Option<Arc<FilterRegistry>>,
    multiplexer: Option<crate::multiplexer::Multiplexer>,
    pool: Option<Arc<crate::pool::Router>>,
    node_refresh: std::sync::atomic::AtomicBool,
}

pub struct ProxyParts {
    pub mode: WorkingMode,
    pub lb: Arc<LoadBalancer>,
    pub health: Option<Arc<HealthChecker>>,
    pub transports: Transports,
    pub metrics: Metrics,
    pub readiness: Readiness,
    pub max_body: u64,
    /// Cancelled at shutdown: open streams end so clients reconnect.
    pub shutdown: CancellationToken,
    /// The cache and its offline answers (edge mode).
    pub local: Option<Local>,
    /// Response filters (None when --enable-resource-filter=false).
    pub filters: Option<Arc<FilterRegistry>>,
    /// Shared watches of pool-scoped resources (None: all go upstream).
    pub multiplexer: Option<crate::multiplexer::Multiplexer>,
    /// Follower routing of pool-scoped requests to the pool's leader hubs.
    pub pool: Option<Arc<crate::pool::Router>>,
}

impl Proxy {
    pub fn new(p: ProxyParts) -> Proxy {
        Proxy {
            inner: Arc::new(Inner {
                mode: p.mode,
                lb: p.lb,
                health: p.health,
                transports: p.transports,
                metrics: p.metrics,
                readiness: p.readiness,
                max_body: p.max_body,
                shutdown: p.shutdown,
                local: p.local,
                filters: p.filters,
                multiplexer: p.multiplexer,
                pool: p.pool,
                node_refresh: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    pub async fn handle(&self, req: Request<Incoming>, listener: Listener) -> Response<Body> {
        let start = Instant::now();
        let info = match RequestInfo::resolve(req.method(), req.uri(), req.headers()) {
            Ok(i) => i,
            Err(e) => return status::bad_request(e.to_string()),
        };
        let labels = RequestLabels {
            verb: info.verb.clone(),
            resource: info.resource.clone(),
            subresources: info.subresource.clone(),
            client: info.component.clone(),
        };
        let resp = self.route(req, &info, listener, &labels).await;
        let class = match resp.status().as_u16() / 100 {
            1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            _ => "5xx",
        }
        .to_owned();
        self.inner
            .metrics
            .request_duration
            .get_or_create(&DurationLabels {
                verb: labels.verb,
                resource: labels.resource,
                client: labels.client,
                code: class,
            })
            .observe(start.elapsed().as_secs_f64());
        tracing::debug!(
            verb = %info.verb, path = %info.path, component = %info.component,
            status = resp.status().as_u16(), elapsed_ms = start.elapsed().as_millis() as u64,
            "request"
        );
        resp
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        info: &RequestInfo,
        listener: Listener,
        labels: &RequestLabels,
    ) -> Response<Body> {
        if let Some(len) = content_length(req.headers())
            && len > self.inner.max_body
        {
            return status::too_large(self.inner.max_body);
        }
        if !info.component.starts_with("yurthub")
            && let Some(reason) = self.inner.readiness.not_ready_reason()
        {
            return status::service_unavailable(format!("yurthub is not ready: {reason}"));
        }
        if let Some(mux) = &self.inner.multiplexer
            && mux.handles(info)
            && let Some(resp) = mux.serve(info, req.uri(), req.headers()).await
        {
            return resp;
        }
        if self.inner.mode == WorkingMode::Edge
            && info.is_resource
            && info.component == "kubelet"
            && info.resource == "leases"
            && let Some(health) = &self.inner.health
            && let Some(resp) =
                kubelet_lease(health, self.inner.local.as_ref(), info, req.headers()).await
        {
            return resp;
        }
        if self.inner.mode == WorkingMode::Edge
            && info.is_resource
            && info.component == "kubelet"
            && info.resource == "nodes"
            && info.verb == "get"
            && info.subresource.is_empty()
            && let Some(local) = &self.inner.local
            && let Some(resp) = local.cached_get(info, req.headers())
        {
            // Autonomy: kubelet's node never waits on the cloud.
            self.refresh_node(local, &info.name);
            return resp;
        }
        self.forward(req, info, listener, labels).await
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        info: &RequestInfo,
        listener: Listener,
        labels: &RequestLabels,
    ) -> Response<Body> {
        // A follower's pool-scoped list/watch goes to a leader hub.
        let leader = self.inner.pool.as_ref().and_then(|p| p.pick(info));
        let via_leader = leader.is_some();
        let Some(backend) = leader.or_else(|| self.inner.lb.pick()) else {
            if self.inner.mode == WorkingMode::Edge
                && let Some(local) = &self.inner.local
            {
                return self.offline(local, req, info).await;
            }
            return status::bad_gateway("no healthy backends available");
        };
        let plan = self
            .inner
            .local
            .as_ref()
            .and_then(|l| l.cache().plan(info, req.method(), req.uri()));
        if info.component.starts_with("multiplexer-proxy") {
            self.inner
                .metrics
                .target_for_multiplexer_requests
                .get_or_create(&crate::metrics::TargetLabels {
                    verb: labels.verb.clone(),
                    resource: labels.resource.clone(),
                    subresources: labels.subresources.clone(),
                    client: labels.client.clone(),
                    server: backend.name().to_owned(),
                })
                .inc_by(1);
        }
        let has_credentials = req.headers().contains_key(header::AUTHORIZATION);
        let identity = if !has_credentials && listener == Listener::Loopback {
            Identity::Hub
        } else {
            Identity::None
        };
        let upgrade = is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

        let (parts, body) = req.into_parts();
        let (body, exceeded) = body::Capped::new(body, self.inner.max_body);
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        let mut up = Request::builder()
            .method(parts.method.clone())
            .uri(backend.uri_with(path))
            .version(Version::HTTP_11)
            .body(body.boxed_unsync())
            .expect("request parts are valid");
        *up.headers_mut() = forwarded_headers(&parts.headers, upgrade);

        let client = self.inner.transports.client(identity, upgrade);
        let mut resp = match client.request(up).await {
            Ok(r) => r,
            Err(e) => {
                if exceeded.load(std::sync::atomic::Ordering::Acquire) {
                    return status::too_large(self.inner.max_body);
                }
                let chain = error_chain(&e);
                tracing::warn!(server = backend.name(), verb = %info.verb, path = %info.path, error = %chain, "upstream request failed");
                if let (true, Some(pool)) = (via_leader, &self.inner.pool) {
                    // The caller retries; the next pick is another leader or the cloud.
                    pool.report_transport_error(&backend);
                    return status::bad_gateway(format!("pool leader {}: {chain}", backend.name()));
                }
                if let Some(h) = &self.inner.health {
                    h.report_transport_error(&backend);
                }
                if (info.verb == "get" || info.verb == "list")
                    && let Some(local) = &self.inner.local
                    && crate::cache::policy::not_cacheable(local.cache().agents(), info).is_none()
                {
                    return local
                        .serve(LocalRequest {
                            info,
                            method: &parts.method,
                            uri: &parts.uri,
                            headers: &parts.headers,
                            body: bytes::Bytes::new(),
                        })
                        .await;
                }
                return status::bad_gateway(format!(
                    "error trying to reach the apiserver {}: {chain}",
                    backend.name()
                ));
            }
        };

        if upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let server_upgrade = hyper::upgrade::on(&mut resp);
            if let Some(client_upgrade) = client_upgrade {
                tokio::spawn(splice(client_upgrade, server_upgrade, info.path.clone()));
            }
            let (parts, _) = resp.into_parts();
            return Response::from_parts(parts, crate::empty_body());
        }

        if let (Some(plan), Some(local)) = (&plan, &self.inner.local) {
            local.cache().on_status(plan, resp.status());
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        let m = &self.inner.metrics;
        let in_flight = body::InFlight::new(
            m.in_flight_requests.get_or_create(labels).clone(),
            m.in_flight_requests_total.clone(),
        );
        let traffic = m.proxy_traffic.get_or_create(labels).clone();
        // Taken only if the stream waits (watches, large bodies); a backend
        // that turned unhealthy in between ends it at once.
        let stops = {
            let (backend, shutdown) = (backend.clone(), self.inner.clone());
            let epoch_id = backend.epoch_id();
            move || vec![backend.epoch_since(epoch_id), shutdown.shutdown.clone()]
        };
        let mut body = body::Proxied::new(body, stops, traffic, in_flight).boxed_unsync();
        if !parts.status.is_success() {
            return Response::from_parts(parts, body);
        }
        // Filters and the cache need plain bytes: gzip from the cloud is
        // decoded here (the hop to the client is node-local).
        let chain = self.filter_chain(info);
        if (chain.is_some() || plan.is_some()) && is_gzip(&parts.headers) {
            body = body::gunzip(body);
            parts.headers.remove(header::CONTENT_ENCODING);
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        if parts.headers.contains_key(header::CONTENT_ENCODING) {
            // An encoding we cannot read: pass it through, untouched and uncached.
            return Response::from_parts(parts, body);
        }
        let format = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::codec::format_for_content_type);
        if let (Some(chain), Some(format)) = (chain, format) {
            // The filtered form is what clients and the cache see (§6.1).
            body = if info.verb == "watch" {
                chain.watch_body(format, body).boxed_unsync()
            } else {
                let verb = info.verb.clone();
                body::map_whole(body, move |b| chain.filter_body(&verb, format, b))
            };
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        if let (Some(plan), Some(local)) = (plan, &self.inner.local) {
            body = local.cache().tee(plan, &parts.headers, body);
        }
        Response::from_parts(parts, body)
    }

    /// The filters that apply to this response, if any (only whole objects
    /// and their status are filtered, as upstream).
    fn filter_chain(&self, info: &RequestInfo) -> Option<crate::filters::FilterChain> {
        let registry = self.inner.filters.as_ref()?;
        if !info.is_resource || !(info.subresource.is_empty() || info.subresource == "status") {
            return None;
        }
        registry.chain_for(&info.component, &info.verb, &info.resource)
    }

    /// No healthy backend: the request is answered from the cache.
    async fn offline(
        &self,
        local: &Local,
        req: Request<Incoming>,
        info: &RequestInfo,
    ) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let (body, exceeded) = body::Capped::new(body, self.inner.max_body);
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                if exceeded.load(std::sync::atomic::Ordering::Acquire) {
                    return status::too_large(self.inner.max_body);
                }
                return status::bad_request(format!("reading the request body: {e}"));
            }
        };
        local
            .serve(LocalRequest {
                info,
                method: &parts.method,
                uri: &parts.uri,
                headers: &parts.headers,
                body,
            })
            .await
    }

    /// Refreshes kubelet's cached node from the cloud in the background (one
    /// refresh at a time; none while offline).
    fn refresh_node(&self, local: &Local, name: &str) {
        use std::sync::atomic::Ordering;
        let Some(backend) = self.inner.lb.pick() else {
            return;
        };
        if self.inner.node_refresh.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        let local = local.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            let path = format!("/api/v1/nodes/{name}");
            match crate::remote::call_json(
                &me.inner.transports,
                &backend,
                http::Method::GET,
                &path,
                None,
                std::time::Duration::from_secs(10),
            )
            .await
            {
                Ok((code, node)) if code.is_success() => {
                    let resource = crate::storage::ResourceKey::new(
                        "kubelet",
                        crate::storage::Space::Full,
                        crate::storage::Gvr::new("", "v1", "nodes"),
                    );
                    let body = bytes::Bytes::from(node.to_string());
                    local
                        .cache()
                        .store_local(&resource, crate::codec::Format::Json, body)
                        .await;
                }
                Ok((code, _)) => tracing::debug!(%path, %code, "node refresh answered"),
                Err(e) => tracing::debug!(%path, error = %e, "node refresh failed"),
            }
            me.inner.node_refresh.store(false, Ordering::Release);
        });
    }
}

/// Kubelet's own Lease in edge mode: the hub renews it in the cloud, so
/// kubelet's reads and writes are answered from the lease the cloud last
/// returned. Returns None for verbs that are simply forwarded.
async fn kubelet_lease(
    health: &HealthChecker,
    local: Option<&Local>,
    info: &RequestInfo,
    headers: &HeaderMap,
) -> Option<Response<Body>> {
    health.kubelet_lease_touched();
    if health.cloud_lease().is_none()
        && matches!(info.verb.as_str(), "get" | "update" | "patch")
        && let Some(resp) = local.and_then(|l| {
            let mut get = info.clone();
            get.verb = "get".into();
            l.cached_get(&get, headers)
        })
    {
        // Not renewed in the cloud yet (e.g. started offline): the lease the
        // hub last renewed, from the cache.
        return Some(resp);
    }
    let json = |code: StatusCode, v: &Value| {
        let mut r = Response::new(full_body(v.to_string()));
        *r.status_mut() = code;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    match info.verb.as_str() {
        "get" | "update" | "patch" => Some(match health.cloud_lease() {
            Some(lease) => json(StatusCode::OK, &lease),
            None => status::status_with_details(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("leases.coordination.k8s.io {:?} not found", info.name),
                Some(
                    serde_json::json!({"name": info.name, "group": "coordination.k8s.io", "kind": "leases"}),
                ),
            ),
        }),
        "create" => Some(match health.cloud_lease() {
            Some(lease) => json(StatusCode::CREATED, &lease),
            None => {
                status::service_unavailable("the node lease has not been renewed in the cloud yet")
            }
        }),
        _ => None,
    }
}

/// Joins the client's and the apiserver's upgraded connections.
async fn splice(
    client: hyper::upgrade::OnUpgrade,
    server: hyper::upgrade::OnUpgrade,
    path: String,
) {
    let (client, server) = match tokio::try_join!(client, server) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(%path, error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = hyper_util::rt::TokioIo::new(client);
    let mut server = hyper_util::rt::TokioIo::new(server);
    match tokio::io::copy_bidirectional(&mut client, &mut server).await {
        Ok((up, down)) => tracing::debug!(%path, up, down, "upgraded stream closed"),
        Err(e) => tracing::debug!(%path, error = %e, "upgraded stream ended with an error"),
    }
}

fn is_gzip(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"))
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), keeping Connection/Upgrade
/// for protocol upgrades.
fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: bool) {
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(upgrade && n == header::UPGRADE))
        .collect();
    for name in listed {
        h.remove(name);
    }
    for name in HOP_BY_HOP.iter() {
        if !(upgrade && name == header::CONNECTION) {
            h.remove(name);
        }
    }
    if !upgrade {
        h.remove(header::UPGRADE);
    }
}

fn forwarded_headers(src: &HeaderMap, upgrade: bool) -> HeaderMap {
    let mut h = src.clone();
    strip_hop_by_hop(&mut h, upgrade);
    // The client library sets Host/:authority from the upstream URI.
    h.remove(header::HOST);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed_but_upgrades_survive() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-custom".parse().unwrap());
        h.insert("x-custom", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::AUTHORIZATION, "Bearer t".parse().unwrap());
        h.insert(header::HOST, "127.0.0.1:10261".parse().unwrap());
        let out = forwarded_headers(&h, false);
        assert!(
            out.get("x-custom").is_none()
                && out.get("keep-alive").is_none()
                && out.get(header::CONNECTION).is_none()
        );
        assert!(out.get(header::HOST).is_none());
        assert_eq!(out.get(header::AUTHORIZATION).unwrap(), "Bearer t");

        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "Upgrade".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert!(is_upgrade(&h));
        let out = forwarded_headers(&h, true);
        assert_eq!(out.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(out.get(header::CONNECTION).unwrap(), "Upgrade");
    }
}
