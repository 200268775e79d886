//! A kube-apiserver test double: TLS (h2 + http/1.1), x509 and bearer-token
//! authentication, an etcd-like store with one resourceVersion counter, and
//! list/watch/CRUD semantics, content negotiation, discovery and Status
//! errors modelled on k8s.io/apiserver. Every yurthub test runs against it,
//! and yurthub is judged against the real apiserver, so fidelity matters
//! more than convenience here.
//!
//! This module owns the server lifecycle (start, abrupt shutdown, restart on
//! the same port), connection handling, authentication, the request log and
//! routing; the submodules own one concern each.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::{Duration, SystemTime};
//! use yurthub_e2e::apiserver::{ApiServer, Fault, FaultKind, User};
//!
//! let api = ApiServer::builder()
//!     .token("t0ken", User::new("admin", &["system:masters"]))
//!     .bookmark_interval(Duration::from_secs(1))
//!     .start()
//!     .await?;
//! api.create(serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
//!     "metadata": {"name": "c", "namespace": "default"}}))?;
//! api.inject(Fault::new("/api/v1/pods", FaultKind::Status(503)).times(1));
//! let kubeconfig = api.kubeconfig_for("admin")?; // token auth, CA embedded
//! api.shutdown().await; // RST every connection: the cloud vanished
//! api.restart().await?; // same port, same objects
//! # let _ = kubeconfig; Ok(()) }
//! ```
//!
//! Service-account tokens and issuer discovery work as in a cluster with
//! `--service-account-issuer` (builder: [`ApiServerBuilder::service_account_issuer`],
//! default `https://kubernetes.default.svc.cluster.local`), `--api-audiences`
//! ([`ApiServerBuilder::api_audiences`], default the issuer) and
//! `--service-account-jwks-uri` ([`ApiServerBuilder::service_account_jwks_uri`]):
//! tokens are ES256 JWTs (`kid` = base64url SHA-256 of the PKIX public key)
//! with `iss, sub, aud, exp, iat, nbf, jti, kubernetes.io{namespace,
//! serviceaccount{name,uid}, pod?, node?, secret?, warnafter?}`. They come
//! from `POST .../serviceaccounts/<sa>/token` (expirationSeconds default
//! 3600, < 600 is 422, boundObjectRef Pod/Secret/Node, a pod-bound 3607 s is
//! extended to a year) or from [`ApiServer::service_account_token`],
//! [`ApiServer::service_account_token_at`] (e.g. already expired) and
//! [`ApiServer::forged_service_account_token`] (same claims and `kid`,
//! another key). They authenticate as `system:serviceaccount:<ns>:<sa>` in
//! `system:serviceaccounts`, `system:serviceaccounts:<ns>` and
//! `system:authenticated` when the signature, issuer, an API audience and
//! exp/nbf/iat (one minute of skew) check out and the ServiceAccount (and
//! the bound pod/secret/node) still exists with the claimed uid; otherwise
//! 401. TokenReview applies the same checks for its spec.audiences.
//! `GET /.well-known/openid-configuration` and `GET /openid/v1/jwks`
//! (`application/jwk-set+json`, see also [`ApiServer::service_account_jwks`])
//! are allowed, as by the default system:service-account-issuer-discovery
//! binding, only to the group `system:serviceaccounts`, system:masters and
//! subjects given [`ApiServer::grant_issuer_discovery`]; others get 403.
//!
//! Authorization: identities are allowed everything unless restricted with
//! [`ApiServer::restrict`] / [`ApiServerBuilder::restrict`] (by user name or
//! group) to a list of [`Rule`]s (verbs, apiGroups, resources incl.
//! `pods/status`, resourceNames, namespaces = RoleBindings, or none =
//! ClusterRoleBinding, nonResourceURLs), on top of what every authenticated
//! user may do (discovery, health, version, self reviews). A restricted
//! identity gets the apiserver's 403 Status for anything else
//! (`secrets is forbidden: User "…" cannot list resource "secrets" in API
//! group "" in the namespace "x"`); SubjectAccessReviews answer from the
//! same rules. system:masters always may.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use yurthub_e2e::apiserver::{ApiServer, Rule};
//!
//! let api = ApiServer::builder()
//!     .restrict("system:serviceaccount:team:app",
//!         vec![Rule::new(&["get", "list", "watch"], &[""], &["configmaps"]).in_namespaces(&["team"])])
//!     .start()
//!     .await?;
//! let token = api.service_account_token("team", "app", Duration::from_secs(3600));
//! api.grant_issuer_discovery("system:nodes"); // let nodes fetch /openid/v1/jwks
//! # let _ = token; Ok(()) }
//! ```
//!
//! Known differences from kube-apiserver (deliberate scope limits, not
//! bent semantics): no OpenAPI documents (`/openapi/*` is 404, so
//! `kubectl apply/create -f` needs `--validate=false`); no managedFields
//! or server-side-apply field ownership (apply patches merge like a JSON
//! merge patch and create missing objects); core/v1 and events.k8s.io/v1
//! events are stored separately; no validation of spec immutability; no
//! garbage collector (propagationPolicy is ignored); SPDY exec/attach/
//! port-forward only complete the 101 handshake (WebSocket exec v4/v5 and
//! WebSocket port-forward with an echoing pod are served, but not the
//! SPDY-over-WebSocket tunnel kubectl port-forward uses); `pods/log` is empty; unrestricted
//! authenticated users may do everything (like system:masters) except
//! issuer discovery; no Node authorizer; legacy Secret-based
//! service-account tokens and the user `extra` (credential-id, pod-name)
//! are not modelled.

mod conn;
mod controllers;
mod discovery;
mod exec;
mod faults;
mod list;
mod negotiate;
mod objects;
mod patch;
mod protobuf;
mod rbac;
mod registry;
mod response;
mod rest;
mod route;
mod satoken;
mod selectors;
mod status;
mod store;
mod table;
mod watch;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::pki::{PkiError, TestPki};

pub use faults::{Fault, FaultKind};
pub use protobuf::{KubeProtobuf, ProtobufCodec};
pub use rbac::Rule;
pub use registry::{ResourceType, Subresource};
pub use status::{ApiError, GroupResource};

/// An authenticated identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    pub fn new(name: &str, groups: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }
}

/// How a request presented itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// An `Authorization: Bearer` header (whether or not the token is known).
    Bearer(String),
    /// A client certificate verified against the cluster CA (and no bearer token).
    ClientCert {
        cn: String,
        orgs: Vec<String>,
    },
    Anonymous,
}

/// One request as the double received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub user_agent: Option<String>,
    pub auth: Auth,
    /// The verified client certificate, if one was presented, even when a
    /// bearer token was sent too.
    pub client_cert: Option<(String, Vec<String>)>,
    /// Serial number (hex) of that certificate.
    pub client_cert_serial: Option<String>,
    /// "HTTP/1.1" or "HTTP/2.0".
    pub http_version: String,
    pub accept: Option<String>,
    pub content_type: Option<String>,
}

/// How a kubeconfig authenticates.
#[derive(Clone, Debug)]
pub enum Credential {
    Token(String),
    ClientCert { cn: String, orgs: Vec<String> },
}

/// Errors starting or controlling the double.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("pki: {0}")]
    Pki(#[from] PkiError),
    #[error("tls configuration: {0}")]
    Tls(String),
    #[error("api error: {0}")]
    Api(#[from] ApiError),
    #[error("service-account issuer: {0}")]
    Issuer(#[from] satoken::SaTokenError),
}

/// Builder for [`ApiServer`].
pub struct ApiServerBuilder {
    listen: SocketAddr,
    pki: Option<Arc<TestPki>>,
    bookmark_interval: Duration,
    history_window: usize,
    allow_anonymous: bool,
    tokens: HashMap<String, User>,
    protobuf: Option<Arc<dyn ProtobufCodec>>,
    extra_dns: Vec<String>,
    extra_ips: Vec<IpAddr>,
    custom: Vec<ResourceType>,
    csr_auto_approve: bool,
    signing: controllers::Signing,
    issuer: String,
    api_audiences: Option<Vec<String>>,
    jwks_uri: Option<String>,
    policy: rbac::Policy,
    http2_max_streams: u32,
}

/// kube-apiserver's `--http2-max-streams-per-connection` default.
const HTTP2_MAX_STREAMS: u32 = 1000;

impl Default for ApiServerBuilder {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            pki: None,
            bookmark_interval: Duration::from_secs(60),
            history_window: 10_000,
            allow_anonymous: false,
            tokens: HashMap::new(),
            protobuf: None,
            extra_dns: Vec::new(),
            extra_ips: Vec::new(),
            custom: Vec::new(),
            csr_auto_approve: true,
            signing: controllers::Signing::default(),
            issuer: satoken::DEFAULT_ISSUER.to_owned(),
            api_audiences: None,
            jwks_uri: None,
            policy: rbac::Policy::default(),
            http2_max_streams: HTTP2_MAX_STREAMS,
        }
    }
}

impl ApiServerBuilder {
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Uses this cluster CA (default: a fresh one).
    /// `--http2-max-streams-per-connection`: the streams one client
    /// connection may have open (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub fn http2_max_streams_per_connection(mut self, streams: u32) -> Self {
        self.http2_max_streams = streams;
        self
    }

    pub fn pki(mut self, pki: Arc<TestPki>) -> Self {
        self.pki = Some(pki);
        self
    }

    /// How often watches with allowWatchBookmarks get a BOOKMARK (real: ~1 min).
    pub fn bookmark_interval(mut self, interval: Duration) -> Self {
        self.bookmark_interval = interval;
        self
    }

    /// Number of events kept for watches; older resourceVersions get 410.
    pub fn history_window(mut self, events: usize) -> Self {
        self.history_window = events;
        self
    }

    /// Lets anonymous requests do anything (default: 403 except health/version).
    pub fn allow_anonymous(mut self, allow: bool) -> Self {
        self.allow_anonymous = allow;
        self
    }

    /// Accepts `Authorization: Bearer <token>` as `user`.
    pub fn token(mut self, token: &str, user: User) -> Self {
        self.tokens.insert(token.to_owned(), user);
        self
    }

    pub fn tokens(mut self, tokens: HashMap<String, User>) -> Self {
        self.tokens.extend(tokens);
        self
    }

    /// Offers `application/vnd.kubernetes.protobuf` for built-in types.
    pub fn protobuf(mut self, codec: Arc<dyn ProtobufCodec>) -> Self {
        self.protobuf = Some(codec);
        self
    }

    /// Extra subject alternative names for the serving certificate.
    pub fn server_names(mut self, dns: &[&str], ips: &[IpAddr]) -> Self {
        self.extra_dns.extend(dns.iter().map(|d| (*d).to_owned()));
        self.extra_ips.extend_from_slice(ips);
        self
    }

    /// Whether CSRs are approved as soon as they are created (default true,
    /// like a cluster whose approver accepts node CSRs). Approved CSRs of
    /// the kube-apiserver-client(-kubelet) and kubelet-serving signers are
    /// always signed with the cluster CA.
    pub fn csr_auto_approve(mut self, on: bool) -> Self {
        self.csr_auto_approve = on;
        self
    }

    /// kube-controller-manager's `--cluster-signing-duration`: the most a
    /// signed certificate lives (CSR `spec.expirationSeconds` may ask for less).
    pub fn cluster_signing_duration(mut self, d: Duration) -> Self {
        self.signing.max_duration = Some(d);
        self
    }

    /// How far the signer backdates `notBefore` (kube-controller-manager:
    /// 5 min; the default here is 1 h). Short-lived test certificates need
    /// a small one, since rotation is scheduled over `notBefore..notAfter`.
    pub fn signing_backdate(mut self, d: Duration) -> Self {
        self.signing.backdate = Some(d);
        self
    }

    /// `--service-account-issuer` (default
    /// `https://kubernetes.default.svc.cluster.local`).
    pub fn service_account_issuer(mut self, url: &str) -> Self {
        self.issuer = url.to_owned();
        self
    }

    /// `--api-audiences`: a service-account token authenticates only if one
    /// of its audiences is among these (default: the issuer). An empty
    /// list accepts any audience (the authenticator's no-implicit-audience path).
    pub fn api_audiences(mut self, audiences: &[&str]) -> Self {
        self.api_audiences = Some(audiences.iter().map(|a| (*a).to_owned()).collect());
        self
    }

    /// `--service-account-jwks-uri`: the `jwks_uri` of the discovery
    /// document (default: `<apiserver URL>/openid/v1/jwks`).
    pub fn service_account_jwks_uri(mut self, uri: &str) -> Self {
        self.jwks_uri = Some(uri.to_owned());
        self
    }

    /// Restricts a user or group to `rules` (see [`ApiServer::restrict`]).
    pub fn restrict(mut self, subject: &str, rules: Vec<Rule>) -> Self {
        self.policy.restricted.insert(subject.to_owned(), rules);
        self
    }

    /// Binds system:service-account-issuer-discovery to a user or group
    /// (see [`ApiServer::grant_issuer_discovery`]).
    pub fn grant_issuer_discovery(mut self, subject: &str) -> Self {
        self.policy.issuer_discovery.insert(subject.to_owned());
        self
    }

    /// Registers a custom resource type at start.
    pub fn crd(mut self, t: ResourceType) -> Self {
        self.custom.push(t);
        self
    }

    pub async fn start(self) -> Result<ApiServer, ApiServerError> {
        let pki = match self.pki {
            Some(p) => p,
            None => Arc::new(TestPki::new()?),
        };
        let mut dns: Vec<&str> = vec![
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ];
        dns.extend(self.extra_dns.iter().map(String::as_str));
        let mut ips = vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V4(objects::KUBERNETES_SERVICE_IP),
        ];
        ips.extend_from_slice(&self.extra_ips);
        let (cert, key) = pki.issue_server_cert(&dns, &ips)?;
        let tls = conn::server_config(&cert, &key, pki.ca_pem()).map_err(ApiServerError::Tls)?;
        let registry = registry::Registry::with_builtins();
        for t in self.custom {
            registry.register(t);
        }
        let issuer = satoken::Issuer::new(self.issuer, self.api_audiences, self.jwks_uri)?;
        let shared = Arc::new(Shared {
            issuer: Arc::new(issuer),
            policy: Arc::new(Mutex::new(self.policy)),
            registry,
            store: store::Store::new(self.history_window, objects::INITIAL_RESOURCE_VERSION),
            bookmark_interval: self.bookmark_interval,
            allow_anonymous: self.allow_anonymous,
            tokens: Arc::new(Mutex::new(self.tokens)),
            protobuf: self.protobuf,
            log: Mutex::new(Vec::new()),
            open_watches: Mutex::new(HashMap::new()),
            watch_requests: AtomicUsize::new(0),
            faults: faults::FaultSet::default(),
            ready: AtomicBool::new(true),
            pki: pki.clone(),
            port: AtomicU64::new(0),
            csr_auto_approve: self.csr_auto_approve,
            signing: self.signing,
            http2_max_streams: self.http2_max_streams,
        });
        let running = conn::Running::start(self.listen, tls.clone(), shared.clone()).await?;
        let addr = running.addr;
        shared.port.store(u64::from(addr.port()), Ordering::SeqCst);
        objects::bootstrap(&shared)?;
        Ok(ApiServer {
            shared,
            tls,
            addr: Mutex::new(addr),
            running: tokio::sync::Mutex::new(Some(running)),
        })
    }
}

/// State shared by every connection and the test's handle.
pub(crate) struct Shared {
    /// The service-account token issuer; shared with replicas.
    issuer: Arc<satoken::Issuer>,
    /// Restrictions and grants; shared with replicas.
    policy: Arc<Mutex<rbac::Policy>>,
    registry: registry::Registry,
    store: store::Store,
    bookmark_interval: Duration,
    allow_anonymous: bool,
    /// Shared with replicas, like the authenticator config of an HA pair.
    tokens: Arc<Mutex<HashMap<String, User>>>,
    protobuf: Option<Arc<dyn ProtobufCodec>>,
    log: Mutex<Vec<RecordedRequest>>,
    open_watches: Mutex<HashMap<String, usize>>,
    watch_requests: AtomicUsize,
    faults: faults::FaultSet,
    ready: AtomicBool,
    pki: Arc<TestPki>,
    port: AtomicU64,
    csr_auto_approve: bool,
    signing: controllers::Signing,
    http2_max_streams: u32,
}

impl Shared {
    fn codec(&self) -> Option<&dyn ProtobufCodec> {
        self.protobuf.as_deref()
    }

    /// Static tokens, then bootstrap tokens, then service-account JWTs
    /// (checked against the API audiences).
    fn lookup_token(&self, token: &str) -> Option<User> {
        let known = lock(&self.tokens).get(token).cloned();
        known
            .or_else(|| controllers::bootstrap_token_user(self, token))
            .or_else(|| match satoken::authenticate(self, token, None) {
                Ok((user, _)) => Some(user),
                Err(why) => {
                    tracing::debug!(error = %why, "invalid bearer token");
                    None
                }
            })
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running (or shut down) apiserver double.
pub struct ApiServer {
    shared: Arc<Shared>,
    tls: Arc<rustls::ServerConfig>,
    addr: Mutex<SocketAddr>,
    running: tokio::sync::Mutex<Option<conn::Running>>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("addr", &self.addr())
            .finish_non_exhaustive()
    }
}

impl ApiServer {
    pub fn builder() -> ApiServerBuilder {
        ApiServerBuilder::default()
    }

    /// The address it listens (or last listened) on.
    pub fn addr(&self) -> SocketAddr {
        *lock(&self.addr)
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr())
    }

    pub fn ca_pem(&self) -> &str {
        self.shared.pki.ca_pem()
    }

    pub fn pki(&self) -> &Arc<TestPki> {
        &self.shared.pki
    }

    /// Abruptly stops: closes the listener and resets every open connection
    /// (watches included), as if the cloud vanished. State is kept.
    pub async fn shutdown(&self) {
        if let Some(running) = self.running.lock().await.take() {
            running.abort();
        }
    }

    /// Starts serving again with the same state and certificate on `addr`.
    pub async fn start_on(&self, addr: SocketAddr) -> Result<(), ApiServerError> {
        let mut running = self.running.lock().await;
        if let Some(old) = running.take() {
            old.abort();
        }
        let new = conn::Running::start(addr, self.tls.clone(), self.shared.clone()).await?;
        *lock(&self.addr) = new.addr;
        *running = Some(new);
        Ok(())
    }

    /// Starts serving again on the port it had.
    pub async fn restart(&self) -> Result<(), ApiServerError> {
        self.start_on(self.addr()).await
    }

    pub fn is_running(&self) -> bool {
        self.running.try_lock().map(|r| r.is_some()).unwrap_or(true)
    }

    /// Another apiserver of the same cluster (an HA replica): it serves the
    /// same store (one resourceVersion sequence, shared watch history),
    /// types, tokens and CA, but has its own listener, request log, faults,
    /// readiness and shutdown.
    pub async fn replica(&self, listen: SocketAddr) -> Result<ApiServer, ApiServerError> {
        let s = &self.shared;
        let shared = Arc::new(Shared {
            issuer: s.issuer.clone(),
            policy: s.policy.clone(),
            registry: s.registry.clone(),
            store: s.store.clone(),
            bookmark_interval: s.bookmark_interval,
            allow_anonymous: s.allow_anonymous,
            tokens: s.tokens.clone(),
            protobuf: s.protobuf.clone(),
            log: Mutex::new(Vec::new()),
            open_watches: Mutex::new(HashMap::new()),
            watch_requests: AtomicUsize::new(0),
            faults: faults::FaultSet::default(),
            ready: AtomicBool::new(true),
            pki: s.pki.clone(),
            port: AtomicU64::new(0),
            csr_auto_approve: s.csr_auto_approve,
            signing: s.signing,
            http2_max_streams: s.http2_max_streams,
        });
        let running = conn::Running::start(listen, self.tls.clone(), shared.clone()).await?;
        let addr = running.addr;
        shared.port.store(u64::from(addr.port()), Ordering::SeqCst);
        Ok(ApiServer {
            shared,
            tls: self.tls.clone(),
            addr: Mutex::new(addr),
            running: tokio::sync::Mutex::new(Some(running)),
        })
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.log).clone()
    }

    /// Returns the requests logged so far and empties the log (for long
    /// runs that stream the log instead of keeping it).
    pub fn take_requests(&self) -> Vec<RecordedRequest> {
        std::mem::take(&mut *lock(&self.shared.log))
    }

    pub fn clear_requests(&self) {
        lock(&self.shared.log).clear();
    }

    /// Watches currently streaming for a resource ("pods", "leases.coordination.k8s.io").
    pub fn open_watches(&self, resource: &str) -> usize {
        lock(&self.shared.open_watches)
            .get(resource)
            .copied()
            .unwrap_or(0)
    }

    /// Waits until `n` watches on `resource` are open; false on timeout.
    pub async fn wait_for_open_watches(&self, resource: &str, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.open_watches(resource) != n {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Watch requests received in total (including rejected ones).
    pub fn watch_requests(&self) -> usize {
        self.shared.watch_requests.load(Ordering::SeqCst)
    }

    /// Adds a fault for matching requests.
    pub fn inject(&self, fault: Fault) {
        self.shared.faults.add(fault);
    }

    pub fn clear_faults(&self) {
        self.shared.faults.clear();
    }

    /// Drops the event history: watches and lists from any older
    /// resourceVersion now get 410 Expired.
    pub fn compact(&self) {
        self.shared.store.compact();
    }

    /// The store's current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store.current_rv()
    }

    /// Makes /readyz fail (or pass again).
    pub fn set_ready(&self, ready: bool) {
        self.shared.ready.store(ready, Ordering::SeqCst);
    }

    pub fn add_token(&self, token: &str, user: User) {
        lock(&self.shared.tokens).insert(token.to_owned(), user);
    }

    /// The service-account issuer URL (the tokens' `iss`).
    pub fn service_account_issuer(&self) -> &str {
        &self.shared.issuer.url
    }

    /// The `kid` of the service-account signing key.
    pub fn service_account_key_id(&self) -> &str {
        self.shared.issuer.kid()
    }

    /// The key set `/openid/v1/jwks` serves.
    pub fn service_account_jwks(&self) -> Value {
        self.shared.issuer.jwks()
    }

    /// A service-account token as a TokenRequest without a bound object
    /// would issue it now: ES256, signed by the cluster key, `aud` = the
    /// API audiences. The ServiceAccount (and its namespace) is created if
    /// missing, since the authenticator rejects tokens of deleted ones.
    pub fn service_account_token(&self, namespace: &str, name: &str, lifetime: Duration) -> String {
        self.service_account_token_at(namespace, name, SystemTime::now(), lifetime)
    }

    /// Like [`Self::service_account_token`] but issued at `issued_at`
    /// (`iat` = `nbf`), e.g. two hours ago with a one-hour lifetime for an
    /// expired token. The apiserver allows one minute of clock skew.
    pub fn service_account_token_at(
        &self,
        namespace: &str,
        name: &str,
        issued_at: SystemTime,
        lifetime: Duration,
    ) -> String {
        self.mint(namespace, name, issued_at, lifetime, false)
    }

    /// A token with the same claims and `kid` signed by a different key:
    /// every verifier must reject it (401 here).
    pub fn forged_service_account_token(
        &self,
        namespace: &str,
        name: &str,
        lifetime: Duration,
    ) -> String {
        self.mint(namespace, name, SystemTime::now(), lifetime, true)
    }

    fn mint(
        &self,
        namespace: &str,
        name: &str,
        issued_at: SystemTime,
        lifetime: Duration,
        forged: bool,
    ) -> String {
        let sa_uid = self.ensure_service_account(namespace, name);
        self.shared.issuer.sign(
            &satoken::Mint {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                sa_uid,
                audiences: Vec::new(),
                issued_at,
                lifetime,
                pod: None,
                node: None,
                secret: None,
                warn_after: None,
            },
            forged,
        )
    }

    /// The uid of `namespace/name`, creating the ServiceAccount (and the
    /// namespace) first if needed.
    fn ensure_service_account(&self, namespace: &str, name: &str) -> String {
        if self.get("v1", "Namespace", "", namespace).is_none() {
            let _ = self.create(serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": namespace}}));
        }
        let sa = self
            .get("v1", "ServiceAccount", namespace, name)
            .or_else(|| {
                self.create(
                    serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": name, "namespace": namespace}}),
                )
                .ok()
            });
        sa.map(|o| objects::meta_str(&o, "uid").to_owned())
            .unwrap_or_default()
    }

    /// Restricts every identity whose user name or one of whose groups is
    /// `subject` to `rules` (replacing earlier rules for that subject), on
    /// top of what every authenticated user may do (discovery, health,
    /// self reviews). Anything else gets the apiserver's 403 Forbidden
    /// Status. Identities never restricted may do everything, as before;
    /// system:masters always may.
    pub fn restrict(&self, subject: &str, rules: Vec<Rule>) {
        lock(&self.shared.policy)
            .restricted
            .insert(subject.to_owned(), rules);
    }

    /// Lifts a restriction set by [`Self::restrict`].
    pub fn unrestrict(&self, subject: &str) {
        lock(&self.shared.policy).restricted.remove(subject);
    }

    /// Binds the system:service-account-issuer-discovery ClusterRole to a
    /// user or group (by default only system:serviceaccounts has it), as an
    /// operator does to let nodes read `/.well-known/openid-configuration`
    /// and `/openid/v1/jwks`.
    pub fn grant_issuer_discovery(&self, subject: &str) {
        lock(&self.shared.policy)
            .issuer_discovery
            .insert(subject.to_owned());
    }

    /// Removes a binding made by [`Self::grant_issuer_discovery`].
    pub fn revoke_issuer_discovery(&self, subject: &str) {
        lock(&self.shared.policy).issuer_discovery.remove(subject);
    }

    /// Approves a pending CSR (it is then signed), like `kubectl certificate approve`.
    pub fn approve_csr(&self, name: &str) -> Result<(), ApiError> {
        controllers::approve_csr(&self.shared, name)?;
        controllers::reconcile_csr(&self.shared, name);
        Ok(())
    }

    /// Creates a bootstrap token Secret (authentication and signing usages,
    /// like `kubeadm token create`) and returns the token `<id>.<secret>`.
    pub fn create_bootstrap_token(
        &self,
        id: &str,
        secret: &str,
        extra_groups: &[&str],
    ) -> Result<String, ApiError> {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let mut data = serde_json::Map::new();
        data.insert("token-id".into(), b64(id).into());
        data.insert("token-secret".into(), b64(secret).into());
        data.insert("usage-bootstrap-authentication".into(), b64("true").into());
        data.insert("usage-bootstrap-signing".into(), b64("true").into());
        if !extra_groups.is_empty() {
            data.insert(
                "auth-extra-groups".into(),
                b64(&extra_groups.join(",")).into(),
            );
        }
        self.create(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "bootstrap.kubernetes.io/token",
            "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system"},
            "data": data,
        }))?;
        Ok(format!("{id}.{secret}"))
    }

    /// Serves a custom resource type (like creating a CRD).
    pub fn register_crd(&self, t: ResourceType) {
        self.shared.registry.register(t);
    }

    /// Creates an object through the same path as a POST (namespace from
    /// metadata.namespace, default "default"). Returns the stored object.
    pub fn create(&self, obj: Value) -> Result<Value, ApiError> {
        objects::direct_create(&self.shared, obj)
    }

    /// Replaces an object like a PUT (honouring metadata.resourceVersion).
    pub fn update(&self, obj: Value) -> Result<Value, ApiError> {
        objects::direct_update(&self.shared, obj, false)
    }

    /// Replaces an object's status like a PUT to the status subresource.
    pub fn update_status(&self, obj: Value) -> Result<Value, ApiError> {
        objects::direct_update(&self.shared, obj, true)
    }

    /// Deletes like a DELETE with default options (pods on a node are
    /// deleted gracefully, objects with finalizers only get marked).
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        objects::direct_delete(&self.shared, api_version, kind, namespace, name, None)
    }

    /// Deletes immediately (gracePeriodSeconds=0).
    pub fn delete_now(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        objects::direct_delete(&self.shared, api_version, kind, namespace, name, Some(0))
    }

    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        objects::direct_get(&self.shared, api_version, kind, namespace, name)
    }

    /// Current objects of a kind (all namespaces when `namespace` is None).
    pub fn list(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Vec<Value> {
        objects::direct_list(&self.shared, api_version, kind, namespace)
    }

    /// Typed create through k8s-openapi types.
    pub fn create_typed<K>(&self, obj: &K) -> Result<K, ApiError>
    where
        K: k8s_openapi::Resource + serde::Serialize + serde::de::DeserializeOwned,
    {
        let mut value = serde_json::to_value(obj).map_err(ApiError::internal)?;
        if let Some(map) = value.as_object_mut() {
            map.insert(
                "apiVersion".into(),
                Value::String(K::API_VERSION.to_owned()),
            );
            map.insert("kind".into(), Value::String(K::KIND.to_owned()));
        }
        let created = self.create(value)?;
        serde_json::from_value(created).map_err(ApiError::internal)
    }

    /// Typed get through k8s-openapi types.
    pub fn get_typed<K>(&self, namespace: &str, name: &str) -> Option<K>
    where
        K: k8s_openapi::Resource + serde::de::DeserializeOwned,
    {
        self.get(K::API_VERSION, K::KIND, namespace, name)
            .and_then(|v| serde_json::from_value(v).ok())
    }

    /// A kubeconfig for `user`: its bearer token if one is registered for
    /// that user name, else a client certificate with CN=`user`.
    pub fn kubeconfig_for(&self, user: &str) -> Result<String, ApiServerError> {
        let token = lock(&self.shared.tokens)
            .iter()
            .find(|(_, u)| u.name == user)
            .map(|(t, _)| t.clone());
        let cred = match token {
            Some(t) => Credential::Token(t),
            None => Credential::ClientCert {
                cn: user.to_owned(),
                orgs: Vec::new(),
            },
        };
        self.kubeconfig(&cred)
    }

    /// A kubeconfig (YAML) for the given credential, with the CA embedded.
    pub fn kubeconfig(&self, cred: &Credential) -> Result<String, ApiServerError> {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let user = match cred {
            Credential::Token(t) => format!("    token: {t}\n"),
            Credential::ClientCert { cn, orgs } => {
                let orgs: Vec<&str> = orgs.iter().map(String::as_str).collect();
                let (cert, key) = self.shared.pki.issue_client_cert(cn, &orgs)?;
                format!(
                    "    client-certificate-data: {}\n    client-key-data: {}\n",
                    b64(&cert),
                    b64(&key)
                )
            }
        };
        Ok(format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster:\n    server: {}\n    certificate-authority-data: {}\ncontexts:\n- name: double\n  context:\n    cluster: double\n    user: double\n    namespace: default\ncurrent-context: double\nusers:\n- name: double\n  user:\n{}",
            self.url(),
            b64(self.ca_pem()),
            user
        ))
    }
}
