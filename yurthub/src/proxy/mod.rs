//! The proxy: the life of one request through the hub, in named phases.
//!
//! 1. **resolve** the [`RequestInfo`] (verb, resource, namespace, name,
//!    component, list options), refusing what the apiserver refuses before
//!    routing: malformed paths and escapes (400);
//! 2. **admit**: a source address past its share of requests in flight on
//!    the pod-facing listener (429, `crate::conns`); bodies over the limit
//!    (413); the caller's identity, decided
//!    once from the listener and the credentials (`request::Principal`:
//!    the node's components on loopback without credentials, a bearer
//!    token's identity, or anonymous — never the User-Agent); the readiness
//!    gate (503 until ready, except for the hub's own clients);
//! 3. **serve locally** what never needs the cloud: the node's own Lease
//!    and Node (edge mode, the node's identity only), lists and watches of
//!    pool-scoped resources from the multiplexer's shared cache
//!    (`crate::multiplexer`), and — with no healthy backend in edge mode —
//!    the offline answers of `cache::Local`, after offline authentication
//!    (`crate::identity`) for token callers;
//! 4. **upstream**: pick a healthy backend and forward with the right
//!    identity: the client's bearer token as-is, the hub's client
//!    certificate only for the node's own components, anonymous otherwise;
//! 5. **upstream error**: where the error came from decides whether the
//!    cache answers: a transport error on a cacheable read falls back to
//!    the cache (with the same identity rules), anything else is 502;
//! 6. **response**: stream it back as it arrives (watches included); a 2xx
//!    vouches for the caller's token (remembered by keyed hash for offline
//!    use), a 403 is remembered as a 403; gzip from the cloud is decoded
//!    when the body must be read, the response filters (`crate::filters`)
//!    rewrite it, and a copy of cacheable 2xx responses is teed into the
//!    cache without ever slowing the client (`cache::tee`) — so the filtered
//!    form is what is cached; a client that takes nothing of a large
//!    response for 10 s has its upstream stream cut (`stall`), so it cannot
//!    hold the shared upstream connection's credit; or splice the two
//!    connections for exec/attach/port-forward upgrades.

mod body;
pub mod server;
mod stall;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Either};
use hyper::body::Incoming;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::cache::{Local, LocalRequest};
use crate::config::WorkingMode;
use crate::filters::FilterRegistry;
use crate::identity::Authenticator;
use crate::metrics::{DurationLabels, Metrics, RequestLabels};
use crate::remote::LoadBalancer;
use crate::remote::health::{HealthChecker, error_chain};
use crate::remote::transport::{Identity, StreamSlot, Transports};
pub use crate::request::Listener;
use crate::request::{Principal, Readiness, RequestInfo, TokenId, Verb, status};
use crate::{Body, full_body};

/// How long the cloud's 2xx to an identity's list of a pool-scoped
/// resource lets the multiplexer answer that identity's later lists and
/// watches of it (its token rotates within this for bound tokens).
const SHARED_GRANT_TTL: Duration = Duration::from_secs(3600);

/// At most this many shared grants are kept. The key holds the
/// User-Agent's component, which a pod picks freely, so without a bound one
/// token could grow the map by a list per User-Agent.
const SHARED_GRANTS: usize = 4096;

/// Records the cloud's 2xx to `key`'s list. When the map is full, expired
/// grants go first, then the oldest eighth (so a pod cycling User-Agents
/// costs a scan per 512 grants, not per grant): a grant lost only sends that
/// caller's lists to the cloud again, never shows it more.
fn grant(grants: &mut HashMap<(String, String), Instant>, key: (String, String)) {
    if grants.len() >= SHARED_GRANTS && !grants.contains_key(&key) {
        grants.retain(|_, t| t.elapsed() < SHARED_GRANT_TTL);
        if grants.len() >= SHARED_GRANTS {
            let mut ages: Vec<Instant> = grants.values().copied().collect();
            let cut = SHARED_GRANTS / 8;
            let (_, &mut newest_dropped, _) = ages.select_nth_unstable(cut - 1);
            grants.retain(|_, t| *t > newest_dropped);
        }
    }
    grants.insert(key, Instant::now());
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
    authn: Option<Authenticator>,
    pool: Option<Arc<crate::pool::Router>>,
    node_refresh: std::sync::atomic::AtomicBool,
    watch_idle_timeout: std::time::Duration,
    /// (owner, resource) → when the cloud last answered that identity's
    /// list or watch of a pool-scoped resource 2xx.
    shared_grants: Mutex<HashMap<(String, String), Instant>>,
    /// Responses whose clients may stop reading (`stall`).
    stalls: Arc<stall::Stalls>,
    pod_requests: Option<crate::conns::Bounds>,
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
    /// Offline authentication of bearer tokens (edge mode).
    pub authn: Option<Authenticator>,
    /// `--watch-idle-timeout` (see `body::IdleBounds`).
    pub watch_idle_timeout: std::time::Duration,
    /// Requests in flight per source address on the pod-facing listener.
    pub pod_requests: Option<crate::conns::Bounds>,
    /// Follower routing of pool-scoped requests to the pool's leader hubs.
    pub pool: Option<Arc<crate::pool::Router>>,
}

/// Why the admit phase turned a request away.
enum Refused {
    /// The source address holds its share of requests in flight.
    Busy(std::net::IpAddr),
    /// The body is larger than the limit (bytes).
    TooLarge(u64),
    /// The hub is not ready, and why.
    NotReady(String),
}

impl Refused {
    fn into_response(self) -> Response<Body> {
        match self {
            Refused::Busy(address) => status::too_many_requests(format!(
                "{address} holds as many requests in flight through the hub as it may; retry later"
            )),
            Refused::TooLarge(limit) => status::too_large(limit),
            Refused::NotReady(reason) => {
                status::service_unavailable(format!("yurthub is not ready: {reason}"))
            }
        }
    }
}

/// What the admit phase decided about one request.
struct Admitted {
    info: RequestInfo,
    /// The bearer token as sent (kept only for the life of the request).
    bearer: Option<String>,
    labels: RequestLabels,
    /// Ends the client's connection (HTTP/1.x only; `server`).
    close: Option<server::CloseConnection>,
    /// The request's place among its source address's (pod-facing
    /// listener), held until its response ends.
    place: Option<crate::conns::Permit>,
}

impl Proxy {
    pub fn new(p: ProxyParts) -> Proxy {
        let stalls = stall::Stalls::new(stall::STALL_LIMIT, p.metrics.stalled_clients_cut.clone());
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
                authn: p.authn,
                pool: p.pool,
                node_refresh: std::sync::atomic::AtomicBool::new(false),
                shared_grants: Mutex::default(),
                watch_idle_timeout: p.watch_idle_timeout,
                stalls,
                pod_requests: p.pod_requests,
            }),
        }
    }

    /// `via` names the client's address and how to end its connection.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        listener: Listener,
        via: server::Via,
    ) -> Response<Body> {
        let start = Instant::now();
        // Phase 1: resolve.
        let info = match RequestInfo::resolve(req.method(), req.uri(), req.headers()) {
            Ok(i) => i,
            Err(e) => return status::bad_request(e.to_string()),
        };
        // Phase 2: admit.
        let mut adm = match self.admit(&req, info, listener, via) {
            Ok(a) => a,
            Err(refused) => return refused.into_response(),
        };
        let resp = self.route(req, &adm).await;
        self.observe(&adm, &resp, start);
        match adm.place.take() {
            Some(place) => resp.map(|b| body::Holding::new(b, place).boxed_unsync()),
            None => resp,
        }
    }

    fn observe(&self, adm: &Admitted, resp: &Response<Body>, start: Instant) {
        let class = match resp.status().as_u16() / 100 {
            1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            _ => "5xx",
        };
        let labels = &adm.labels;
        self.inner
            .metrics
            .request_duration
            .get_or_create(&DurationLabels {
                verb: labels.verb,
                resource: labels.resource.clone(),
                client: labels.client.clone(),
                code: class,
            })
            .observe(start.elapsed().as_secs_f64());
        let info = &adm.info;
        tracing::debug!(
            verb = %info.verb, path = %info.path, component = %info.component,
            node_identity = info.caller.is_node(),
            status = resp.status().as_u16(), elapsed_ms = start.elapsed().as_millis() as u64,
            "request"
        );
    }

    /// Phase 2: size, identity, readiness.
    fn admit(
        &self,
        req: &Request<Incoming>,
        mut info: RequestInfo,
        listener: Listener,
        via: server::Via,
    ) -> Result<Admitted, Refused> {
        let place = match (&self.inner.pod_requests, listener) {
            (Some(bounds), Listener::PodFacing) => Some(
                bounds
                    .admit(via.peer.ip())
                    .map_err(|_| Refused::Busy(via.peer.ip()))?,
            ),
            _ => None,
        };
        if let Some(len) = content_length(req.headers())
            && len > self.inner.max_body
        {
            return Err(Refused::TooLarge(self.inner.max_body));
        }
        let (principal, bearer) = self.identify(listener, req.headers());
        info.caller = principal;
        // The hub's own clients (its multiplexer feeds the filters' inputs,
        // which readiness waits for) pass the gate.
        if !(info.caller.is_node()
            && (info.component.starts_with("yurthub")
                || info.component.starts_with("multiplexer-proxy")))
            && let Some(reason) = self.inner.readiness.not_ready_reason()
        {
            return Err(Refused::NotReady(reason));
        }
        let labels = self.inner.metrics.request_labels(&info);
        Ok(Admitted {
            info,
            bearer,
            labels,
            close: via.close,
            place,
        })
    }

    /// Who is asking: the listener and the credentials, nothing else.
    fn identify(&self, listener: Listener, headers: &HeaderMap) -> (Principal, Option<String>) {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return match listener {
                Listener::Loopback => (Principal::Node, None),
                Listener::PodFacing => (Principal::Anonymous, None),
            };
        };
        // Present but not text is still a credential, never "none".
        let auth = String::from_utf8_lossy(value.as_bytes());
        // Any other scheme (Basic) is still a credential of its own.
        let token = match auth.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
            _ => &*auth,
        };
        let id = match &self.inner.authn {
            Some(a) => a.token_id(token),
            None => TokenId {
                hash: String::new(),
                subject: None,
            },
        };
        (Principal::Token(id), Some(token.to_owned()))
    }

    async fn route(&self, req: Request<Incoming>, adm: &Admitted) -> Response<Body> {
        let info = &adm.info;
        // Phase 3: serve locally.
        if let Some(mux) = &self.inner.multiplexer
            && mux.handles(info)
            && self.may_share(info)
            && let Some(resp) = mux.serve(info, req.uri(), req.headers()).await
        {
            return resp;
        }
        let edge_node = self.inner.mode == WorkingMode::Edge && info.caller.is_node();
        if edge_node
            && info.is_resource
            && info.component == "kubelet"
            && info.resource == "leases"
            && let Some(health) = &self.inner.health
            && let Some(resp) =
                kubelet_lease(health, self.inner.local.as_ref(), info, req.headers()).await
        {
            return resp;
        }
        if edge_node
            && info.is_resource
            && info.component == "kubelet"
            && info.resource == "nodes"
            && info.verb == Verb::Get
            && info.subresource.is_empty()
            && let Some(local) = &self.inner.local
            && let Some(resp) = local.cached_get(info, req.headers())
        {
            // Autonomy: kubelet's node never waits on the cloud.
            self.refresh_node(local, &info.name);
            return resp;
        }
        self.forward(req, adm).await
    }

    /// Whether the multiplexer may answer this caller: the node's own
    /// components always; another identity once the cloud answered its own
    /// list or watch of the resource (so the shared cache never shows a
    /// pod what the cloud would not).
    fn may_share(&self, info: &RequestInfo) -> bool {
        if info.caller.is_node() {
            return true;
        }
        if !matches!(info.caller, Principal::Token(_)) {
            return false;
        }
        let key = (info.cache_owner(), shared_resource(info));
        lock(&self.inner.shared_grants)
            .get(&key)
            .is_some_and(|t| t.elapsed() < SHARED_GRANT_TTL)
    }

    async fn forward(&self, mut req: Request<Incoming>, adm: &Admitted) -> Response<Body> {
        let info = &adm.info;
        // Phase 4: upstream. A follower's pool-scoped list/watch for the
        // node's components (its multiplexer) goes to a leader hub, which
        // authenticates the node; else the cloud. Until the cloud's health
        // is known, wait briefly, then 503.
        let leader = match &self.inner.pool {
            Some(p) if info.caller.is_node() => p.pick(info),
            _ => None,
        };
        let via_leader = leader.is_some();
        let backend = match leader {
            Some(b) => Some(b),
            None => match self
                .inner
                .lb
                .pick_when_known(body::UNKNOWN_HEALTH_WAIT)
                .await
            {
                crate::remote::Pick::Backend(b) => Some(b),
                crate::remote::Pick::Unknown => return body::health_unknown(),
                crate::remote::Pick::Down => None,
            },
        };
        let Some(backend) = backend else {
            if self.inner.mode == WorkingMode::Edge
                && let Some(local) = &self.inner.local
            {
                return self.offline(local, req, adm).await;
            }
            return status::bad_gateway("no healthy backends available");
        };
        let plan = self
            .inner
            .local
            .as_ref()
            .and_then(|l| l.cache().plan(info, req.method()));
        if info.component.starts_with("multiplexer-proxy") {
            let labels = &adm.labels;
            self.inner
                .metrics
                .target_for_multiplexer_requests
                .get_or_create(&crate::metrics::TargetLabels {
                    verb: labels.verb,
                    resource: labels.resource.clone(),
                    subresources: labels.subresources.clone(),
                    client: labels.client.clone(),
                    server: backend.name().to_owned(),
                })
                .inc_by(1);
        }
        let identity = if info.caller.is_node() {
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

        // An upgrade has an HTTP/1.1 connection of its own; a stream takes
        // a place on a connection with room (`transport::Lanes`).
        let (client, lane) = if upgrade {
            (self.inner.transports.client(identity, true), None)
        } else {
            match self.inner.transports.stream(identity) {
                Some((client, slot)) => (client, Some(slot)),
                None => {
                    tracing::debug!(server = backend.name(), path = %info.path, "every upstream connection holds its most streams");
                    self.inner
                        .metrics
                        .refused_requests
                        .get_or_create(&crate::metrics::RefusedLabels {
                            reason: "upstream_streams".into(),
                        })
                        .inc();
                    return status::too_many_requests(
                        "the hub's upstream connections hold as many streams as they may; retry later",
                    );
                }
            }
        };
        // Response headers within a bound; a timeout is a 504 (or the cache,
        // for what the cache serves), and a re-probe of the backend.
        let bound = body::header_bound(info);
        let Ok(sent) = tokio::time::timeout(bound, client.request(up)).await else {
            self.report_transport_error(&backend, via_leader);
            return match self
                .inner
                .local
                .as_ref()
                .filter(|l| Self::cache_answers(l, info))
            {
                Some(local) => {
                    self.answer_locally(
                        local,
                        adm,
                        &parts.method,
                        &parts.uri,
                        &parts.headers,
                        bytes::Bytes::new(),
                    )
                    .await
                }
                None => body::gateway_timeout(bound),
            };
        };
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) => {
                // Phase 5: the upstream error.
                if exceeded.load(std::sync::atomic::Ordering::Acquire) {
                    return status::too_large(self.inner.max_body);
                }
                let chain = error_chain(&e);
                tracing::warn!(server = backend.name(), verb = %info.verb, path = %info.path, error = %chain, "upstream request failed");
                self.report_transport_error(&backend, via_leader);
                if via_leader {
                    // The caller retries; the next pick is another leader or the cloud.
                    return status::bad_gateway(format!("pool leader {}: {chain}", backend.name()));
                }
                if let Some(local) = &self.inner.local
                    && Self::cache_answers(local, info)
                {
                    return self
                        .answer_locally(
                            local,
                            adm,
                            &parts.method,
                            &parts.uri,
                            &parts.headers,
                            bytes::Bytes::new(),
                        )
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
        // Phase 6: the response.
        self.judged(adm, resp.status());
        if let (Some(plan), Some(local)) = (&plan, &self.inner.local) {
            local.cache().on_status(plan, resp.status());
        }
        self.respond(adm, resp, plan, backend, lane)
    }

    /// A transport failure re-probes the backend: a leader hub through the
    /// pool's checks, a cloud backend through the health checker.
    fn report_transport_error(&self, backend: &Arc<crate::remote::Backend>, via_leader: bool) {
        match (&self.inner.pool, &self.inner.health) {
            (Some(pool), _) if via_leader => pool.report_transport_error(backend),
            (_, Some(h)) => h.report_transport_error(backend),
            _ => {}
        }
    }

    /// Whether the cache stands in when the cloud fails this request: a
    /// cacheable get or list.
    fn cache_answers(local: &Local, info: &RequestInfo) -> bool {
        info.verb.is_read()
            && crate::cache::policy::not_cacheable(local.cache().agents(), info).is_none()
    }

    /// What the cloud's answer says about the caller: a 2xx vouches for its
    /// token (for offline use) and, for a pool-scoped list or watch, lets
    /// the multiplexer serve it; a 403 is remembered as a 403.
    fn judged(&self, adm: &Admitted, code: StatusCode) {
        let info = &adm.info;
        let (Principal::Token(id), Some(token)) = (&info.caller, &adm.bearer) else {
            return;
        };
        if let Some(a) = &self.inner.authn {
            if code.is_success() {
                a.vouched(id, token);
            }
            // A 2xx clears a remembered 403; with none remembered (the
            // usual case) there is nothing to key.
            let denied = code == StatusCode::FORBIDDEN;
            if info.is_resource && (denied || (code.is_success() && a.has_denials())) {
                a.set_denied(denial_key(info), denied);
            }
        }
        if code.is_success()
            && info.is_list_or_watch()
            && info.name.is_empty()
            && info.namespace.is_empty()
            && self
                .inner
                .multiplexer
                .as_ref()
                .is_some_and(|m| m.handles(info))
        {
            grant(
                &mut lock(&self.inner.shared_grants),
                (info.cache_owner(), shared_resource(info)),
            );
        }
    }

    fn respond(
        &self,
        adm: &Admitted,
        resp: Response<Incoming>,
        plan: Option<crate::cache::Plan>,
        backend: Arc<crate::remote::Backend>,
        lane: Option<StreamSlot>,
    ) -> Response<Body> {
        let info = &adm.info;
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        let m = &self.inner.metrics;
        let in_flight = body::InFlight::new(
            m.in_flight_requests.get_or_create(&adm.labels).clone(),
            m.in_flight_requests_total.clone(),
            lane,
        );
        let traffic = m.proxy_traffic.get_or_create(&adm.labels).clone();
        // Taken only if the stream waits (watches, large bodies). A backend
        // that turned unhealthy ends a long-running stream at once, so the
        // client re-lists elsewhere; a list or object still flowing is left
        // to finish (a dead backend trips its stall bound instead), since
        // cutting it would only make the client fetch it all again.
        let stops = {
            let shutdown = self.inner.clone();
            let backend = backend.clone();
            let epoch_id = backend.epoch_id();
            let long_running = body::is_long_running(info);
            move || {
                let mut stops = vec![shutdown.shutdown.clone()];
                if long_running {
                    stops.push(backend.epoch_since(epoch_id));
                }
                stops
            }
        };
        // A stalled stream ends and its backend is re-probed.
        let idle =
            body::IdleBounds::for_response(info, &parts.headers, self.inner.watch_idle_timeout);
        let reprobe = (self.inner.health.clone(), backend);
        // A client that stops reading a large body must not hold the
        // upstream connection's credit (`stall`).
        let (body, guard) = if stall::worth_guarding(&parts.headers) {
            let (up, guard) = self.inner.stalls.guard(body, &info.path, adm.close.clone());
            (Either::Right(up), Some(guard))
        } else {
            (Either::Left(body), None)
        };
        let body = body::Proxied::new(body, stops, traffic, in_flight)
            .with_idle(idle, move || {
                if let Some(h) = &reprobe.0 {
                    h.report_transport_error(&reprobe.1);
                }
            })
            .boxed_unsync();
        let body = self.transform(info, &mut parts, body, plan);
        let body = match guard {
            Some(guard) => guard.watch(body).boxed_unsync(),
            None => body,
        };
        Response::from_parts(parts, body)
    }

    /// Filters, then the cache's copy, of a 2xx body (others as they are).
    fn transform(
        &self,
        info: &RequestInfo,
        parts: &mut http::response::Parts,
        mut body: Body,
        plan: Option<crate::cache::Plan>,
    ) -> Body {
        if !parts.status.is_success() {
            return body;
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
            return body;
        }
        let format = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::codec::format_for_content_type);
        if let (Some(chain), Some(format)) = (chain, format) {
            // The filtered form is what clients and the cache see (§6.1).
            body = if info.verb == Verb::Watch {
                chain.watch_body(format, body).boxed_unsync()
            } else if info.verb == Verb::List && format == crate::codec::Format::Json {
                // Item by item: sixteen large lists must not be sixteen
                // whole copies. (A protobuf list's length prefix covers all
                // its items, so it is filtered whole.)
                chain.json_list_body(body).boxed_unsync()
            } else {
                let verb = info.verb.as_str();
                body::map_whole(body, move |b| chain.filter_body(verb, format, b))
            };
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        if let (Some(plan), Some(local)) = (plan, &self.inner.local) {
            body = local.cache().tee(plan, &parts.headers, body);
        }
        body
    }

    /// The filters that apply to this response, if any (only whole objects
    /// and their status are filtered, as upstream).
    fn filter_chain(&self, info: &RequestInfo) -> Option<crate::filters::FilterChain> {
        let registry = self.inner.filters.as_ref()?;
        if !info.is_resource || !(info.subresource.is_empty() || info.subresource == "status") {
            return None;
        }
        registry.chain_for(&info.component, info.verb.as_str(), &info.resource)
    }

    /// No healthy backend: the request is answered from the cache.
    async fn offline(
        &self,
        local: &Local,
        req: Request<Incoming>,
        adm: &Admitted,
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
        self.answer_locally(local, adm, &parts.method, &parts.uri, &parts.headers, body)
            .await
    }

    /// The cache answers: only for an identity it can authenticate without
    /// the cloud, and only with what the cloud authorized for it.
    async fn answer_locally(
        &self,
        local: &Local,
        adm: &Admitted,
        method: &http::Method,
        uri: &http::Uri,
        headers: &HeaderMap,
        body: bytes::Bytes,
    ) -> Response<Body> {
        let mut info = adm.info.clone();
        match (&info.caller, &adm.bearer, &self.inner.authn) {
            (Principal::Node, ..) => {}
            (Principal::Token(_), Some(token), Some(authn)) => match authn.authenticate(token) {
                Ok(id) => {
                    if authn.is_denied(&denial_key(&info)) {
                        return status::forbidden_offline(&info);
                    }
                    info.caller = Principal::Token(id);
                }
                Err(e) => return status::unauthorized(format!("the cloud is unreachable and {e}")),
            },
            _ => {
                return status::unauthorized(
                    "the cloud is unreachable: credentials the hub can verify offline are required",
                );
            }
        }
        local
            .serve(LocalRequest {
                info: &info,
                method,
                uri,
                headers,
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
        && matches!(info.verb, Verb::Get | Verb::Update | Verb::Patch)
        && let Some(resp) = local.and_then(|l| {
            let mut get = info.clone();
            get.verb = Verb::Get;
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

/// The resource a shared grant covers.
fn shared_resource(info: &RequestInfo) -> String {
    format!("{}/{}/{}", info.group, info.version, info.resource)
}

/// What a remembered 403 is keyed by: who asked which question.
fn denial_key(info: &RequestInfo) -> String {
    format!(
        "{} {} {}/{}/{} ns={} name={} l={} f={}",
        info.cache_owner(),
        info.verb,
        info.group,
        info.version,
        info.resource,
        info.namespace,
        info.name,
        info.query.label_selector.as_deref().unwrap_or(""),
        info.query.field_selector.as_deref().unwrap_or(""),
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
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
    fn shared_grants_are_bounded_expired_and_oldest_first() {
        let key = |i: usize| (format!("ua-{i}@sa"), "services".to_owned());
        let expired = Instant::now() - SHARED_GRANT_TTL - Duration::from_secs(1);
        let mut grants = HashMap::new();
        for i in 0..SHARED_GRANTS {
            grant(&mut grants, key(i));
        }
        // Expired grants go first, and all of them.
        for i in 0..10 {
            grants.insert(key(i), expired);
        }
        grant(&mut grants, key(SHARED_GRANTS));
        assert_eq!(grants.len(), SHARED_GRANTS - 9);
        assert!((0..10).all(|i| !grants.contains_key(&key(i))));
        // Full of live grants: the oldest eighth gives way; a renewal
        // evicts none.
        for i in 0..9 {
            grant(&mut grants, key(SHARED_GRANTS + 1 + i));
        }
        assert_eq!(grants.len(), SHARED_GRANTS);
        grant(&mut grants, key(SHARED_GRANTS + 5));
        assert_eq!(grants.len(), SHARED_GRANTS);
        grant(&mut grants, key(2 * SHARED_GRANTS));
        assert!(grants.len() <= SHARED_GRANTS - SHARED_GRANTS / 8 + 1);
        assert!(
            !grants.contains_key(&key(10)),
            "the oldest live grants went"
        );
        assert!(
            grants.contains_key(&key(SHARED_GRANTS + 5)),
            "a renewed one stays"
        );
        assert!(grants.contains_key(&key(2 * SHARED_GRANTS)));
    }

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
