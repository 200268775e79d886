//! Pool-scoped sharing with leader hubs, as OpenYurt's YurtHub does it.
//!
//! yurt-manager elects leader hubs per node pool and writes them to
//! `kube-system/leader-hub-<pool>` ([`leaders`]). Every hub watches that
//! ConfigMap ([`source`]) and serves its multiplexer's state to the other
//! hubs of its pool on the multiplexer listener ([`listener`]). A follower
//! (election on, not a leader) sends the multiplexer's own list+watch of
//! pool-scoped resources to a healthy leader, and to the cloud when none is
//! ([`router`]); what it receives still goes through its proxy, so its
//! cache and offline answers are unchanged. The pool comes from
//! `--nodepool-name` or the node's `apps.openyurt.io/nodepool` label; the
//! ConfigMap's `pool-scoped-metadata` overrides `--pool-scope-resources`.

pub mod leaders;
pub mod listener;
pub mod router;
pub mod source;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::certificates::Certificates;
use crate::conns::Bounds;
use crate::multiplexer::Multiplexer;

pub use router::{PoolMetrics, Router};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("upstream: {0}")]
    Upstream(String),
    #[error("answered {0}")]
    Status(StatusCode),
    #[error("resourceVersion too old")]
    Expired,
}

/// How long startup waits for the pool and its leaders before the
/// multiplexer starts anyway (then from the cloud, switching later).
const FIRST_SYNC_WAIT: Duration = Duration::from_secs(10);

/// The node's address as the kernel would pick it to reach the first
/// apiserver (a UDP "connect" sends nothing), when `--node-ip` is empty.
pub fn detect_node_ip(servers: &[Uri]) -> Option<IpAddr> {
    let server = servers.first()?;
    let host = server.host()?.trim_start_matches('[').trim_end_matches(']');
    let port = server.port_u16().unwrap_or(443);
    let target: SocketAddr = match host.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port),
        Err(_) => std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
            .ok()?
            .next()?,
    };
    let bind: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let sock = UdpSocket::bind(bind).ok()?;
    sock.connect(target).ok()?;
    let ip = sock.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// GET of one node through the hub's loopback proxy (the hub's identity).
pub(crate) async fn read_node(
    client: &Client<HttpConnector, Empty<Bytes>>,
    proxy: SocketAddr,
    node: &str,
) -> Result<Value, Error> {
    let req = http::Request::builder()
        .uri(format!("http://{proxy}/api/v1/nodes/{node}"))
        .header(header::USER_AGENT, crate::user_agent())
        .header(header::ACCEPT, "application/json")
        .body(Empty::new())
        .map_err(|e| Error::Upstream(e.to_string()))?;
    let fut = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| Error::Upstream(crate::remote::health::error_chain(&e)))?;
        let code = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| Error::Upstream(e.to_string()))?
            .to_bytes();
        if !code.is_success() {
            return Err(Error::Status(code));
        }
        serde_json::from_slice(&body).map_err(|e| Error::Upstream(e.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| Error::Upstream("timed out".into()))?
}

pub struct PoolParts {
    pub node: String,
    /// `--nodepool-name` (empty: the node's label).
    pub pool_flag: String,
    pub mux: Multiplexer,
    pub router: Arc<Router>,
    pub certs: Certificates,
    pub listener: Option<TcpListener>,
    /// Pods reach the listener on the node IP too (`conns`).
    pub bounds: Bounds,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
}

/// What `/v1/pool` reports besides the routing.
#[derive(Default)]
struct Facts {
    pool: OnceLock<(String, &'static str)>,
    listener: OnceLock<SocketAddr>,
}

#[derive(Clone)]
pub struct Pool {
    router: Arc<Router>,
    facts: Arc<Facts>,
}

impl Pool {
    /// Starts pool mode once the proxy listens on `proxy`: resolves the
    /// pool, reads the leader-hub ConfigMap once (bounded), then starts the
    /// multiplexer's cachers, so a follower's first list already goes to a
    /// leader; keeps watching the ConfigMap and probing leaders after.
    pub fn start(p: PoolParts, proxy: SocketAddr) -> Pool {
        let facts = Arc::new(Facts::default());
        if let Some(l) = &p.listener
            && let Ok(a) = l.local_addr()
        {
            let _ = facts.listener.set(a);
        }
        let pool = Pool {
            router: p.router.clone(),
            facts: facts.clone(),
        };
        tokio::spawn(run(p, proxy, facts));
        pool
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// The hub status document `/v1/pool`.
    pub fn status_json(&self) -> Value {
        let mut v = self.router.status();
        let (pool, from) = self
            .facts
            .pool
            .get()
            .map(|(p, f)| (Value::from(p.as_str()), Value::from(*f)))
            .unwrap_or((Value::Null, Value::Null));
        v["pool"] = pool;
        v["poolFrom"] = from;
        v["listener"] = self
            .facts
            .listener
            .get()
            .map(|a| Value::from(a.to_string()))
            .unwrap_or(Value::Null);
        v
    }
}

async fn run(p: PoolParts, proxy: SocketAddr, facts: Arc<Facts>) {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let started = tokio::time::Instant::now();
    let mut mux_started = false;
    let start_mux = |mux: &Multiplexer| mux.set_upstream(proxy);

    let pool = if !p.pool_flag.is_empty() {
        Some((p.pool_flag.clone(), "flag"))
    } else {
        // The node's label; retried with backoff (one GET per try), the
        // multiplexer starting from the cloud if it takes long.
        let mut backoff = Duration::from_millis(200);
        loop {
            match read_node(&client, proxy, &p.node).await {
                Ok(n) => {
                    break n["metadata"]["labels"][listener::NODEPOOL_LABEL]
                        .as_str()
                        .filter(|s| !s.is_empty())
                        .map(|s| (s.to_owned(), "node-label"));
                }
                Err(e) => tracing::debug!(error = %e, "reading this node for its pool failed"),
            }
            if !mux_started && started.elapsed() > FIRST_SYNC_WAIT {
                start_mux(&p.mux);
                mux_started = true;
            }
            tokio::select! {
                _ = p.shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    };
    let Some((pool, from)) = pool else {
        tracing::warn!(
            "no --nodepool-name and no {} label on this node: pool sharing is off",
            listener::NODEPOOL_LABEL
        );
        if !mux_started {
            start_mux(&p.mux);
        }
        return;
    };
    let _ = facts.pool.set((pool.clone(), from));
    tracing::info!(%pool, from, "node pool");

    if let Some(l) = p.listener {
        listener::PoolListener::new(p.node.clone(), pool.clone(), p.mux.clone(), proxy).serve(
            l,
            p.certs.clone(),
            p.bounds.clone(),
            p.shutdown.clone(),
            p.tracker.clone(),
        );
    }

    let (tx, mut rx) = tokio::sync::watch::channel(leaders::LeaderConfig::default());
    let (synced_tx, mut synced_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(source::watch_leader_configmap(
        proxy,
        leaders::configmap_name(&pool),
        tx,
        synced_tx,
        p.shutdown.clone(),
    ));
    if !mux_started {
        let left = FIRST_SYNC_WAIT.saturating_sub(started.elapsed());
        let _ = tokio::time::timeout(left, synced_rx.wait_for(|s| *s)).await;
        let first = rx.borrow_and_update().clone();
        p.router.apply(first).await;
        start_mux(&p.mux);
    }
    p.router.spawn_health(p.shutdown.clone());
    loop {
        tokio::select! {
            _ = p.shutdown.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
        let cfg = rx.borrow_and_update().clone();
        if p.router.apply(cfg).await {
            p.mux.rewatch();
        }
    }
}

/// The hub status document for a hub without pool mode.
pub fn off_status(reason: &str) -> Value {
    json!({"role": "off", "reason": reason})
}
