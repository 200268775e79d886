//! The composition root: builds every module in dependency order, binds the
//! listeners (reporting the real bound addresses, so tests can use port 0),
//! and owns shutdown.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::{CacheManager, Local, policy::CacheAgents};
use crate::certificates::Certificates;
use crate::config::{Bootstrap, Config, RedirectMode, WorkingMode};
use crate::filters::{ClusterView, FilterRegistry, FilterSettings, PoolSource};
use crate::hub::HubServer;
use crate::metrics::Metrics;
use crate::proxy::{Listener, Proxy, ProxyParts, server};
use crate::remote::health::HealthChecker;
use crate::remote::transport::Transports;
use crate::remote::{Backend, LoadBalancer};
use crate::request::Readiness;
use crate::{redirect, redirector};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding the {what} listener on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("certificates: {0}")]
    Certificates(#[from] crate::certificates::client::Error),
    #[error("--bootstrap-mode=token needs --bootstrap-file or --join-token")]
    NoBootstrap,
}

/// A running hub.
pub struct App {
    pub proxy_addr: SocketAddr,
    pub proxy_secure_addr: SocketAddr,
    pub hub_server_addr: Option<SocketAddr>,
    /// The pool's multiplexer listener, when it could bind.
    pub multiplexer_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    grace: Duration,
    redirect: redirector::Handle,
    cache: Option<CacheManager>,
}

impl App {
    /// Builds and starts the hub; returns once every listener is bound.
    pub async fn start(cfg: Config) -> Result<App, Error> {
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);

        // The hub's own upstream sockets are exempt from the kernel redirect
        // (no loop when an upstream server is the VIP itself).
        let hook: crate::remote::transport::SocketHook =
            Arc::new(|s: &socket2::Socket| redirect::prepare_upstream_socket(s));
        // The apiserver VIPs: fixed by flag, or learned (and persisted) from
        // default/kubernetes; the redirect and the serving certificate follow them.
        let (vips_tx, vips_rx) = tokio::sync::watch::channel(if cfg.apiserver_vips.is_empty() {
            redirector::stored_vips(&cfg.root_dir)
        } else {
            cfg.apiserver_vips.clone()
        });
        // The hub issues its own serving certificate (readiness then waits
        // for it to carry the learned VIPs).
        let serving_managed =
            matches!(cfg.bootstrap, Bootstrap::Token { .. }) && cfg.tls_cert_file.is_none();
        // As its help promises: an empty --node-ip is detected (the serving
        // certificate and the multiplexer listener use it).
        let node_ip = cfg.node_ip.or_else(|| {
            let ip = crate::pool::detect_node_ip(&cfg.servers);
            tracing::info!(node_ip = ?ip, "--node-ip is empty; detected");
            ip
        });
        let serving_files = cfg
            .tls_cert_file
            .clone()
            .zip(cfg.tls_private_key_file.clone());

        let (certs, client_identity) = match &cfg.bootstrap {
            Bootstrap::KubeletCertificate {
                client_certificate,
                ca_file,
            } => (
                {
                    if serving_files.is_none() {
                        tracing::warn!(
                            "--bootstrap-mode=kubeletcertificate requests no serving certificate: \
                             pass --tls-cert-file/--tls-private-key-file (until then /v1/readyz \
                             reports certificates are not ready), or use --bootstrap-mode=token"
                        );
                    }
                    Certificates::from_files(
                        ca_file.clone(),
                        (client_certificate.clone(), client_certificate.clone()),
                        serving_files,
                    )
                },
                None,
            ),
            Bootstrap::Token {
                bootstrap_file,
                join_token,
                ca_cert_hashes,
            } => {
                use crate::certificates::{client, serving, store};
                let store = store::Store::new(cfg.root_dir.clone());
                let manage_serving = serving_files.is_none();
                let certs = Certificates::managed(store.ca_file(), serving_files);
                let bootstrap = match (bootstrap_file, join_token) {
                    (Some(f), _) => client::BootstrapSource::File(f.clone()),
                    (None, Some(t)) => client::BootstrapSource::JoinToken {
                        token: t.clone(),
                        pins: ca_cert_hashes.clone(),
                    },
                    (None, None) => return Err(Error::NoBootstrap),
                };
                let settings = client::Settings {
                    node: cfg.node_name.clone(),
                    extra_organizations: cfg.hub_cert_organizations.clone(),
                    servers: cfg.servers.clone(),
                    store,
                    bootstrap,
                    hook: Some(hook.clone()),
                    cache_dirs: vec![cfg.disk_cache_path.clone()],
                };
                let identity =
                    client::ClientIdentity::start(settings, certs.clone(), shutdown.clone())
                        .await?;
                if manage_serving {
                    serving::spawn(
                        &identity,
                        serving::ServingSettings {
                            cluster_domain: cfg.cluster_domain.clone(),
                            hub_address: cfg.hub_address,
                            node_ip,
                            vips: vips_rx.clone(),
                        },
                    );
                }
                (certs, Some(identity))
            }
        };
        certs.spawn_reloader(Duration::from_secs(10), shutdown.clone());
        let transports = Transports::new(&certs, metrics.closable_conns.clone(), Some(hook));
        // Cloud mode has no health checker: every backend counts as healthy.
        let initially_healthy = cfg.working_mode == WorkingMode::Cloud;
        let backends = cfg
            .servers
            .iter()
            .map(|u| Arc::new(Backend::new(u.clone(), initially_healthy, &metrics)))
            .collect();
        let lb = Arc::new(LoadBalancer::new(backends, cfg.lb_mode));
        let health = (cfg.working_mode == WorkingMode::Edge).then(|| {
            HealthChecker::new(
                lb.clone(),
                transports.clone(),
                cfg.node_name.clone(),
                cfg.heartbeat.clone(),
            )
        });
        if let Some(h) = &health {
            h.watch_credentials(certs.client_slot());
        }
        // The hub's own list+watches (see crate::informer).
        let informer_upstream = crate::informer::Upstream {
            lb: lb.clone(),
            transports: transports.clone(),
            idle_timeout: cfg.watch_idle_timeout,
            on_stall: health.clone().map(|h| {
                let f: Arc<dyn Fn(&Backend) + Send + Sync> =
                    Arc::new(move |b: &Backend| h.report_transport_error(b));
                f
            }),
        };

        let mut readiness = Readiness::default();
        {
            let certs = certs.clone();
            readiness.add(move || certs.not_ready_reason().map(String::from));
        }
        // Ready only once every listener accepts connections.
        let listening = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let listening = listening.clone();
            readiness.add(move || {
                (!listening.load(std::sync::atomic::Ordering::Acquire))
                    .then(|| "the proxy listeners are not accepting connections yet".to_owned())
            });
        }

        let cache = match cfg.working_mode {
            WorkingMode::Edge => open_cache(&cfg).await,
            WorkingMode::Cloud => None,
        };
        // Offline authentication: the tokens the cloud vouched for and the
        // issuer keys, kept in the cache's crash-safe store.
        let authn = match &cache {
            Some(c) => {
                match crate::identity::Authenticator::open(c.store().clone(), &cfg.node_name).await
                {
                    Ok(a) => {
                        a.spawn(lb.clone(), transports.clone(), shutdown.clone());
                        Some(a)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "offline authentication is unavailable: offline, only the node's own components are answered");
                        None
                    }
                }
            }
            None => None,
        };
        let local = cache.as_ref().map(|c| {
            let local = Local::new(
                c.clone(),
                lb.clone(),
                cfg.min_request_timeout,
                shutdown.clone(),
            );
            match &authn {
                Some(a) => local.with_authn(a.clone()),
                None => local,
            }
        });

        // Response filters and the cloud-side state they and the cache read.
        let view = Arc::new(ClusterView::new(
            &cfg.node_name,
            &cfg.nodepool_name,
            cfg.proxy_secure_addr,
            PoolSource::from_flag(cfg.enable_pool_service_topology),
        ));
        let filters = cfg.enable_resource_filter.then(|| {
            Arc::new(FilterRegistry::new(
                &FilterSettings::from_config(&cfg),
                view.clone(),
            ))
        });
        let synced = Arc::new(crate::cloudsync::Synced::default());
        let mut sync = crate::cloudsync::Sync {
            upstream: informer_upstream.clone(),
            multiplexer: None,
            namespace: cfg.namespace.clone(),
            node: cfg.node_name.clone(),
            cache: cache.clone(),
            filters: filters.clone(),
            view: Some(view.clone()),
        };
        {
            let (synced, lb, filters, view) =
                (synced.clone(), lb.clone(), filters.clone(), view.clone());
            readiness.add(move || synced.not_ready_reason(&lb, filters.as_deref(), Some(&view)));
        }

        let multiplexer = (!cfg.pool_scope_resources.is_empty()).then(|| {
            crate::multiplexer::Multiplexer::new(crate::multiplexer::MultiplexerParts {
                resources: cfg.pool_scope_resources.clone(),
                node: cfg.node_name.clone(),
                lb: lb.clone(),
                filters: filters.clone(),
                metrics: metrics.clone(),
                shutdown: shutdown.clone(),
                pods: cache.as_ref().map(crate::cache::endpoints::Source::new),
            })
        });
        sync.multiplexer = multiplexer.clone();
        let vips_learned = redirector::VipsLearned::default();
        if cfg.apiserver_vips.is_empty() && serving_managed {
            let (lb, learned, vips, serving) = (
                lb.clone(),
                vips_learned.clone(),
                vips_rx.clone(),
                serving_managed.then(|| certs.serving_slot()),
            );
            readiness.add(move || {
                redirector::vips_not_ready_reason(&lb, &learned, &vips, serving.as_ref())
            });
        }
        // Pool sharing through leader hubs (edge hubs with a multiplexer).
        let pool_router = match (&multiplexer, cfg.working_mode) {
            (Some(m), WorkingMode::Edge) => {
                let pm = crate::pool::PoolMetrics::register(&mut registry);
                let r = crate::pool::Router::new(
                    cfg.node_name.clone(),
                    cfg.multiplexer_port,
                    metrics.clone(),
                    pm,
                    transports.clone(),
                    m.clone(),
                );
                // Weak: the router holds the multiplexer, so a strong
                // reference back would keep both (and the cache store they
                // reach) alive after shutdown.
                let sink = Arc::downgrade(&r);
                m.set_byte_sink(Arc::new(move |leader, n| {
                    if let Some(r) = sink.upgrade() {
                        r.count(leader, n);
                    }
                }));
                Some(r)
            }
            _ => None,
        };
        let pod_bounds = crate::conns::Bounds::connections(
            cfg.pod_connections_per_address,
            cfg.max_pod_connections
                .unwrap_or_else(crate::conns::half_the_open_file_limit),
            cfg.pod_connections_per_second,
            metrics.refused_connections.clone(),
        );
        let pod_requests = crate::conns::Bounds::requests(
            cfg.pod_requests_per_address,
            metrics.refused_requests.clone(),
        );
        let proxy = Proxy::new(ProxyParts {
            mode: cfg.working_mode,
            lb: lb.clone(),
            health: health.clone(),
            transports: transports.clone(),
            metrics,
            readiness: readiness.clone(),
            max_body: cfg.max_request_body_bytes,
            shutdown: shutdown.clone(),
            local,
            filters,
            multiplexer: multiplexer.clone(),
            authn,
            watch_idle_timeout: cfg.watch_idle_timeout,
            pod_requests: Some(pod_requests),
            pool: pool_router.clone(),
        });

        let (redirect, redirect_reason) = match cfg.redirect_mode {
            RedirectMode::Ebpf => redirector::install(&cfg).await,
            RedirectMode::None => (
                redirector::Handle::default(),
                "--redirect-mode=none".to_string(),
            ),
        };
        registry.register_collector(Box::new(redirector::Collector(redirect.clone())));
        let mut docs: BTreeMap<String, crate::hub::StatusDoc> = BTreeMap::new();
        if let Some(c) = &cache {
            registry.register_collector(Box::new(crate::cache::status::Collector(c.clone())));
            let c = c.clone();
            docs.insert(
                "/v1/cache".into(),
                Arc::new(move || crate::cache::status::document(&c)),
            );
        }
        {
            let r = redirect.clone();
            docs.insert(
                "/v1/redirect".into(),
                Arc::new(move || r.status_json(&redirect_reason)),
            );
            let c = certs.clone();
            docs.insert("/v1/certificates".into(), Arc::new(move || c.status_json()));
        }
        let pool_slot: Arc<std::sync::OnceLock<crate::pool::Pool>> = Arc::default();
        {
            let slot = pool_slot.clone();
            let off = if pool_router.is_some() {
                "starting"
            } else {
                "no multiplexer (--pool-scope-resources is empty) or cloud mode"
            };
            docs.insert(
                "/v1/pool".into(),
                Arc::new(move || match slot.get() {
                    Some(p) => p.status_json(),
                    None => crate::pool::off_status(off),
                }),
            );
        }
        let token_handler: Option<crate::hub::TokenHandler> = client_identity.map(|id| {
            let handler: crate::hub::TokenHandler = Arc::new(move |token: String| {
                let id = id.clone();
                Box::pin(async move {
                    use crate::certificates::client::TokenError;
                    id.update_token(&token).await.map_err(|e| match e {
                        TokenError::Invalid(w) => crate::hub::TokenRejection::Invalid(w),
                        TokenError::Failed(w) => crate::hub::TokenRejection::Failed(w),
                    })
                })
            });
            handler
        });

        // The hub server first: healthz answers while everything else starts.
        let hub_server_addr = match cfg.hub_server_addr {
            Some(addr) => {
                let l = server::bind(addr, false).map_err(|source| Error::Bind {
                    what: "hub server",
                    addr,
                    source,
                })?;
                let bound = l.local_addr().unwrap_or(addr);
                let pods = match (&cfg.working_mode, &cache) {
                    (WorkingMode::Edge, Some(c)) => {
                        Some(crate::hub::pods::PodSource::Cache(c.clone()))
                    }
                    (WorkingMode::Edge, None) => None,
                    (WorkingMode::Cloud, _) => Some(crate::hub::pods::PodSource::Cloud(Box::new(
                        crate::hub::pods::CloudPods {
                            lb: lb.clone(),
                            transports: transports.clone(),
                            node: cfg.node_name.clone(),
                        },
                    ))),
                };
                let hub = HubServer::new(readiness.clone(), Arc::new(registry), docs)
                    .with_token_handler(token_handler)
                    .with_pods(pods)
                    .with_profiling(cfg.profiling);
                server::serve(
                    l,
                    None,
                    None,
                    move |req, _| {
                        let hub = hub.clone();
                        async move { hub.handle(req).await }
                    },
                    shutdown.clone(),
                    tracker.clone(),
                );
                Some(bound)
            }
            None => None,
        };

        if let Some(h) = &health {
            h.initial_probe().await;
            h.spawn(shutdown.clone());
        }
        // After the initial probe, so the first lists can reach the cloud.
        sync.spawn(synced.clone(), shutdown.clone());
        // The first round can only finish with the cloud reachable; offline
        // (a reboot with the cloud gone) the cache answers at once instead.
        if lb.any_healthy() {
            synced.first_round(cfg.heartbeat.timeout * 3).await;
        }
        if let Some(c) = &cache {
            crate::cache::gc::Gc {
                cache: c.clone(),
                lb: lb.clone(),
                transports: transports.clone(),
                frequency: cfg.gc_frequency,
            }
            .spawn(Duration::from_secs(600), shutdown.clone());
            if let Some(h) = &health {
                spawn_lease_keeper(
                    c.clone(),
                    h.clone(),
                    cfg.node_name.clone(),
                    cfg.heartbeat.interval,
                    shutdown.clone(),
                );
            }
        }
        if cfg.apiserver_vips.is_empty() {
            redirector::spawn_vip_learner(
                redirect.clone(),
                informer_upstream.clone(),
                multiplexer.clone(),
                cfg.root_dir.clone(),
                vips_tx,
                vips_learned,
                shutdown.clone(),
            );
        }

        let plain = server::bind(cfg.proxy_addr, false).map_err(|source| Error::Bind {
            what: "proxy",
            addr: cfg.proxy_addr,
            source,
        })?;
        let proxy_addr = plain.local_addr().unwrap_or(cfg.proxy_addr);
        let mut multiplexer_addr = None;
        if let Some(m) = &multiplexer {
            // The cachers list and watch through this listener, so the
            // proxy's balancing, identity and cache apply to them.
            match &pool_router {
                Some(router) => {
                    let listener = bind_multiplexer(&cfg, node_ip);
                    multiplexer_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
                    let pool = crate::pool::Pool::start(
                        crate::pool::PoolParts {
                            node: cfg.node_name.clone(),
                            pool_flag: cfg.nodepool_name.clone(),
                            mux: m.clone(),
                            router: router.clone(),
                            certs: certs.clone(),
                            listener,
                            bounds: pod_bounds.clone(),
                            shutdown: shutdown.clone(),
                            tracker: tracker.clone(),
                        },
                        proxy_addr,
                    );
                    let _ = pool_slot.set(pool);
                }
                None => m.set_upstream(proxy_addr),
            }
        }
        let p = proxy.clone();
        // Host processes only (it is bound on loopback): kubelet's share
        // is never capped.
        server::serve(
            plain,
            None,
            None,
            move |req, via: server::Via| {
                let p = p.clone();
                async move { p.handle(req, Listener::Loopback, via).await }
            },
            shutdown.clone(),
            tracker.clone(),
        );

        let secure = server::bind(cfg.proxy_secure_addr, true).map_err(|source| Error::Bind {
            what: "secure proxy",
            addr: cfg.proxy_secure_addr,
            source,
        })?;
        let proxy_secure_addr = secure.local_addr().unwrap_or(cfg.proxy_secure_addr);
        let acceptor = server::tls_acceptor(certs.serving_slot());
        if cfg.redirect_mode == RedirectMode::Ebpf {
            redirector::spawn_heartbeat(
                redirect.clone(),
                certs.clone(),
                proxy_secure_addr,
                shutdown.clone(),
            );
        }
        let p = proxy;
        server::serve(
            secure,
            Some(acceptor),
            Some(pod_bounds),
            move |req, via: server::Via| {
                let p = p.clone();
                async move { p.handle(req, Listener::PodFacing, via).await }
            },
            shutdown.clone(),
            tracker.clone(),
        );

        listening.store(true, std::sync::atomic::Ordering::Release);
        // fleet: a hub that reaches the cloud returns ready: its informers
        // and the multiplexer (which lists through the proxy just bound)
        // finish their first lists within moments. A local wait, bounded.
        let ready_by = std::time::Instant::now() + cfg.heartbeat.timeout * 3;
        while lb.any_healthy()
            && readiness.not_ready_reason().is_some()
            && std::time::Instant::now() < ready_by
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(
            proxy = %proxy_addr, secure_proxy = %proxy_secure_addr, hub_server = ?hub_server_addr,
            mode = ?cfg.working_mode, servers = cfg.servers.len(), "yurthub started"
        );
        Ok(App {
            proxy_addr,
            proxy_secure_addr,
            hub_server_addr,
            multiplexer_addr,
            shutdown,
            tracker,
            grace: cfg.shutdown_grace_period,
            redirect,
            cache,
        })
    }

    /// Stops accepting, ends open streams, lets in-flight requests finish
    /// for up to the grace period.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(self.grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?self.grace, "in-flight requests did not finish within the grace period");
        }
        if let Some(c) = &self.cache
            && let Err(e) = c.store().flush().await
        {
            tracing::warn!(error = %e, "flushing the cache store failed");
        }
        // After the pod-facing listener stopped: the redirect already fails
        // open (no heartbeat); now remove it unless the next hub adopts it.
        self.redirect.shutdown().await;
        tracing::info!("yurthub stopped");
    }
}

/// Binds the multiplexer listener on `--bind-multiplexer-address` (default
/// the node IP) and `--multiplexer-port`. Not fatal: without it this hub
/// cannot lead, but it still follows.
fn bind_multiplexer(
    cfg: &Config,
    node_ip: Option<std::net::IpAddr>,
) -> Option<tokio::net::TcpListener> {
    let Some(ip) = cfg.bind_multiplexer_address.or(node_ip) else {
        tracing::warn!(
            "no node IP: the multiplexer listener is not started (set --node-ip or --bind-multiplexer-address)"
        );
        return None;
    };
    let addr = SocketAddr::new(ip, cfg.multiplexer_port);
    match server::bind(addr, false) {
        Ok(l) => {
            tracing::info!(%addr, "multiplexer listener");
            Some(l)
        }
        Err(e) => {
            tracing::warn!(%addr, error = %e, "cannot bind the multiplexer listener; this hub cannot serve its pool");
            None
        }
    }
}

/// Opens the cache store under `--disk-cache-path`. A corrupt file is moved
/// aside by the store (the hub starts empty and says so); a store that
/// cannot be opened at all leaves the hub running without a cache.
/// How long start waits for a previous hub (an upgrade's old process, or
/// one just stopped in the same process) to let go of the store.
const STORE_LOCK_WAIT: Duration = Duration::from_secs(5);

async fn open_cache(cfg: &Config) -> Option<CacheManager> {
    let dir = &cfg.disk_cache_path;
    if let Err(e) = std::fs::create_dir_all(dir) {
        tracing::error!(path = %dir.display(), error = %e, "cannot create the cache directory; running without a cache");
        return None;
    }
    let options = crate::storage::Options {
        max_bytes: cfg.cache_max_bytes,
        ..crate::storage::Options::default()
    };
    let deadline = tokio::time::Instant::now() + STORE_LOCK_WAIT;
    let opened = loop {
        match crate::storage::Store::open(dir, options.clone()) {
            Err(crate::storage::Error::Locked { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => break other,
        }
    };
    match opened {
        Ok(opened) => {
            let recovered = opened.recovery.map(|r| {
                let why = format!("{r:?}");
                tracing::error!(path = %dir.display(), recovery = %why, "the cache store was unreadable; it was moved aside and the cache starts empty");
                why
            });
            let cache = CacheManager::new(
                opened.store,
                CacheAgents::new(&cfg.node_name),
                &cfg.node_name,
                recovered,
            );
            crate::cache::hubcfg::restore(&cache);
            Some(cache)
        }
        Err(e) => {
            tracing::error!(path = %dir.display(), error = %e, "cannot open the cache store; running without a cache");
            None
        }
    }
}

/// Keeps the lease the hub renews in the cloud in kubelet's cache, so a hub
/// restarted offline can answer kubelet's lease requests.
fn spawn_lease_keeper(
    cache: CacheManager,
    health: Arc<HealthChecker>,
    node: String,
    interval: Duration,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let resource = crate::storage::ResourceKey::new(
            "kubelet",
            crate::storage::Space::Full,
            crate::storage::Gvr::new("coordination.k8s.io", "v1", "leases"),
        );
        let mut last_rv = String::new();
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(mut lease) = health.cloud_lease() else {
                continue;
            };
            let rv = lease["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if rv == last_rv || lease["metadata"]["name"] != serde_json::json!(node) {
                continue;
            }
            lease["apiVersion"] = serde_json::json!("coordination.k8s.io/v1");
            lease["kind"] = serde_json::json!("Lease");
            let body = bytes::Bytes::from(lease.to_string());
            if cache
                .store_local(&resource, crate::codec::Format::Json, body)
                .await
            {
                last_rv = rv;
            }
        }
    });
}
