//! The multiplexer listener (`--bind-multiplexer-address:--multiplexer-port`):
//! HTTPS with the hub's serving certificate, where the other hubs of the
//! pool list, watch and get pool-scoped resources from this hub's
//! multiplexer state. A caller authenticates with its node client
//! certificate (chained to the cluster CA): `system:node:<n>` in group
//! `system:nodes`, and `<n>`'s `apps.openyurt.io/nodepool` label must name
//! this hub's pool. No certificate: 401; another identity or pool: 403.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DistinguishedName, RootCertStore};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::certificates::{self, Certificates, ServerCertResolver, csr::CertInfo};
use crate::conns::{self, Bounds};
use crate::multiplexer::{Caller, LEADER_HEADER, Multiplexer};
use crate::request::{RequestInfo, status};
use crate::{Body, full_body};

/// The NodePool label on Node objects.
pub const NODEPOOL_LABEL: &str = "apps.openyurt.io/nodepool";
/// How long a looked-up node's pool is trusted before it is read again.
const NODE_TTL: Duration = Duration::from_secs(300);

/// Accepts node client certificates chained to the cluster CA as it is now;
/// a connection without one is let through to be answered 401.
#[derive(Debug)]
struct NodeClientVerifier {
    certs: Certificates,
    provider: Arc<rustls::crypto::CryptoProvider>,
    cached: RwLock<Option<CachedVerifier>>,
}

/// The verifier built for one version of the cluster CA.
type CachedVerifier = (Arc<RootCertStore>, Arc<dyn ClientCertVerifier>);

impl NodeClientVerifier {
    fn current(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        let roots = self
            .certs
            .roots()
            .ok_or_else(|| rustls::Error::General("cluster CA is not loaded yet".into()))?;
        if let Some((r, v)) = &*self.cached.read().unwrap_or_else(|p| p.into_inner())
            && Arc::ptr_eq(r, &roots)
        {
            return Ok(v.clone());
        }
        let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            self.provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        *self.cached.write().unwrap_or_else(|p| p.into_inner()) = Some((roots, v.clone()));
        Ok(v)
    }
}

impl ClientCertVerifier for NodeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()?
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

pub struct PoolListener {
    node: String,
    pool: String,
    mux: Multiplexer,
    /// The hub's loopback proxy, for reading other nodes' pool labels.
    proxy: SocketAddr,
    client: Client<HttpConnector, Empty<Bytes>>,
    pools: Mutex<HashMap<String, (Option<String>, Instant)>>,
}

impl PoolListener {
    pub fn new(node: String, pool: String, mux: Multiplexer, proxy: SocketAddr) -> Arc<Self> {
        Arc::new(PoolListener {
            node,
            pool,
            mux,
            proxy,
            client: Client::builder(TokioExecutor::new()).build_http(),
            pools: Mutex::new(HashMap::new()),
        })
    }

    /// Serves `listener` until `shutdown`.
    pub fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        certs: Certificates,
        bounds: Bounds,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) {
        let verifier = Arc::new(NodeClientVerifier {
            certs: certs.clone(),
            provider: certificates::provider(),
            cached: RwLock::new(None),
        });
        let mut cfg = rustls::ServerConfig::builder_with_provider(certificates::provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(ServerCertResolver(certs.serving_slot())));
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let t = tracker.clone();
        tracker.spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    a = listener.accept() => match a {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "multiplexer listener accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let Ok(permit) = bounds.admit(peer.ip()) else {
                    conns::refuse(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (me, acceptor, shutdown) = (self.clone(), acceptor.clone(), shutdown.clone());
                t.spawn(async move {
                    // Held while the connection lives.
                    let _permit = permit;
                    let tls = match tokio::time::timeout(
                        Duration::from_secs(10),
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "multiplexer TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let identity = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| CertInfo::from_der(c).ok());
                    let identity = Arc::new(identity);
                    let service = hyper::service::service_fn(move |req| {
                        let (me, identity) = (me.clone(), identity.clone());
                        async move { Ok::<_, Infallible>(me.handle(req, identity.as_ref()).await) }
                    });
                    let mut builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    builder
                        .http1()
                        .timer(TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(30));
                    builder
                        .http2()
                        .timer(TokioTimer::new())
                        .keep_alive_interval(Duration::from_secs(30));
                    let conn = builder.serve_connection(TokioIo::new(tls), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = shutdown.cancelled() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
                        }
                    }
                });
            }
        });
    }

    async fn handle(&self, req: Request<Incoming>, identity: &Option<CertInfo>) -> Response<Body> {
        let Some(id) = identity else {
            return status::status(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "a node client certificate is required",
            );
        };
        let Some(node) = id.common_name.strip_prefix("system:node:") else {
            return forbidden(format!("{:?} is not a node", id.common_name));
        };
        if node.is_empty() || !id.organizations.iter().any(|o| o == "system:nodes") {
            return forbidden(format!("{:?} is not in group system:nodes", id.common_name));
        }
        if node != self.node {
            match self.pool_of(node).await {
                Some(p) if p == self.pool => {}
                Some(p) => {
                    return forbidden(format!("node {node} is in pool {p:?}, not {:?}", self.pool));
                }
                None => {
                    return forbidden(format!("node {node} has no pool, or it cannot be read"));
                }
            }
        }
        if req.uri().path() == "/v1/healthz" {
            let mut r = Response::new(full_body("OK"));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain"),
            );
            return r;
        }
        let info = match RequestInfo::resolve(req.method(), req.uri(), req.headers()) {
            Ok(i) => i,
            Err(e) => return status::bad_request(e.to_string()),
        };
        let read = matches!(info.verb.as_str(), "list" | "watch" | "get");
        let resp = if read && self.mux.is_pool_scoped(&info) {
            self.mux
                .serve_for(Caller::Pool, &info, req.uri(), req.headers())
                .await
        } else {
            None
        };
        let Some(mut resp) = resp else {
            return forbidden(format!(
                "{} {} is not a read of a pool-scoped resource",
                info.verb, info.path
            ));
        };
        if let Ok(v) = header::HeaderValue::from_str(&self.node) {
            resp.headers_mut().insert(LEADER_HEADER, v);
        }
        resp
    }

    /// The pool label of `node`, read through the hub's proxy and kept for
    /// [`NODE_TTL`]; a stale answer stands in while the cloud is away.
    async fn pool_of(&self, node: &str) -> Option<String> {
        let cached = self
            .pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .cloned();
        if let Some((pool, at)) = &cached
            && at.elapsed() < NODE_TTL
        {
            return pool.clone();
        }
        match super::read_node(&self.client, self.proxy, node).await {
            Ok(n) => {
                let pool = n["metadata"]["labels"][NODEPOOL_LABEL]
                    .as_str()
                    .map(str::to_owned);
                self.pools
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(node.to_owned(), (pool.clone(), Instant::now()));
                pool
            }
            Err(e) => {
                tracing::debug!(node, error = %e, "reading a caller's node failed");
                cached.and_then(|(p, _)| p)
            }
        }
    }
}

fn forbidden(message: String) -> Response<Body> {
    status::status(StatusCode::FORBIDDEN, "Forbidden", message)
}
