//! Follower routing: while leader election is on and this hub is not one of
//! the pool's leaders, lists and watches of pool-scoped resources (above
//! all the multiplexer's own) go to a healthy leader's multiplexer
//! listener, round robin over `leaders`; with no healthy leader they go to
//! the cloud. Leaders are probed (`/v1/healthz` on their listener, inside
//! the pool, never the apiserver) and a transport error marks one
//! unhealthy at once, which also ends the streams opened through it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::leaders::{Leader, LeaderConfig};
use crate::metrics::Metrics;
use crate::multiplexer::Multiplexer;
use crate::remote::Backend;
use crate::remote::transport::{Identity, Transports};
use crate::request::RequestInfo;

/// How often followers probe their leaders, and how long a probe may take.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LeaderLabels {
    pub leader: String,
}

/// The pool series (`node_yurthub_pool_*`).
#[derive(Clone, Default)]
pub struct PoolMetrics {
    /// Bytes of pool-scoped responses received by the multiplexer, by
    /// source (`leader` or `cloud`).
    pub received_bytes: Family<SourceLabels, Counter>,
    /// 1 for the leader serving this follower now.
    pub serving_leader: Family<LeaderLabels, Gauge>,
    /// 1 when this hub is one of its pool's leaders.
    pub is_leader: Gauge,
}

impl PoolMetrics {
    pub fn register(registry: &mut Registry) -> PoolMetrics {
        let m = PoolMetrics::default();
        registry.register(
            "node_yurthub_pool_received_bytes",
            "bytes of pool-scoped list/watch responses received by the multiplexer, by source (leader or cloud)",
            m.received_bytes.clone(),
        );
        registry.register(
            "node_yurthub_pool_serving_leader",
            "1 for the pool leader hub serving this follower's pool-scoped requests",
            m.serving_leader.clone(),
        );
        registry.register(
            "node_yurthub_pool_is_leader",
            "1 when this hub is a leader of its node pool",
            m.is_leader.clone(),
        );
        m
    }
}

struct Route {
    config: LeaderConfig,
    /// This hub is one of `leaders`.
    leader_self: bool,
    backends: Vec<(Leader, Arc<Backend>)>,
}

pub struct Router {
    node: String,
    port: u16,
    metrics: Metrics,
    pool_metrics: PoolMetrics,
    transports: Transports,
    mux: Multiplexer,
    route: RwLock<Route>,
    next: AtomicUsize,
    /// The leader the last pool-scoped request went to ("cloud": none).
    serving: Mutex<String>,
    bytes_leader: AtomicU64,
    bytes_cloud: AtomicU64,
}

impl Router {
    pub fn new(
        node: String,
        port: u16,
        metrics: Metrics,
        pool_metrics: PoolMetrics,
        transports: Transports,
        mux: Multiplexer,
    ) -> Arc<Router> {
        Arc::new(Router {
            node,
            port,
            metrics,
            pool_metrics,
            transports,
            mux,
            route: RwLock::new(Route {
                config: LeaderConfig::default(),
                leader_self: false,
                backends: Vec::new(),
            }),
            next: AtomicUsize::new(0),
            serving: Mutex::new("cloud".into()),
            bytes_leader: AtomicU64::new(0),
            bytes_cloud: AtomicU64::new(0),
        })
    }

    /// Counts the multiplexer's upstream bytes by source.
    pub fn count(&self, leader: Option<&str>, bytes: u64) {
        let source = if leader.is_some() { "leader" } else { "cloud" };
        let total = if leader.is_some() {
            &self.bytes_leader
        } else {
            &self.bytes_cloud
        };
        total.fetch_add(bytes, Ordering::Relaxed);
        self.pool_metrics
            .received_bytes
            .get_or_create(&SourceLabels {
                source: source.into(),
            })
            .inc_by(bytes);
    }

    /// Applies a new leader-hub ConfigMap; returns true when the routing
    /// changed (the multiplexer then re-watches).
    pub async fn apply(&self, config: LeaderConfig) -> bool {
        let new_backends: Vec<(Leader, Arc<Backend>)> = {
            let route = self.route.read().unwrap_or_else(|p| p.into_inner());
            if route.config == config {
                return false;
            }
            config
                .leaders
                .iter()
                .filter(|l| l.node != self.node)
                .map(|l| {
                    let existing = route.backends.iter().find(|(o, _)| o == l);
                    let backend = match existing {
                        Some((_, b)) => b.clone(),
                        None => {
                            let uri = format!(
                                "https://{}/",
                                std::net::SocketAddr::new(l.address, self.port)
                            );
                            Arc::new(Backend::new(
                                uri.parse().expect("an IP and a port form a URI"),
                                false,
                                &self.metrics,
                            ))
                        }
                    };
                    (l.clone(), backend)
                })
                .collect()
        };
        // New leaders are probed before they are routed to.
        for (_, b) in &new_backends {
            if !b.is_healthy() {
                self.probe(b).await;
            }
        }
        let leader_self = config.is_leader(&self.node);
        tracing::info!(
            leaders = ?config.leaders.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
            election = config.election, leader = leader_self,
            "pool leaders changed"
        );
        self.pool_metrics.is_leader.set(i64::from(leader_self));
        if let Some(r) = &config.pool_scoped {
            self.mux.set_resources(r.clone());
        }
        let mut route = self.route.write().unwrap_or_else(|p| p.into_inner());
        for (old, b) in &route.backends {
            if !new_backends.iter().any(|(l, _)| l == old) {
                // Streams through a leader that left the list end now.
                b.set_healthy(false);
            }
        }
        *route = Route {
            config,
            leader_self,
            backends: new_backends,
        };
        true
    }

    /// Whether requests are to use the leaders at all.
    fn follower(route: &Route) -> bool {
        route.config.election && !route.leader_self && !route.backends.is_empty()
    }

    /// The leader a request goes to, or None for the cloud (not a pool-scoped
    /// list/watch, this hub is a leader, election is off, or no leader is
    /// healthy).
    pub fn pick(&self, info: &RequestInfo) -> Option<Arc<Backend>> {
        if !(info.is_list_or_watch() && self.mux.is_pool_scoped(info)) {
            return None;
        }
        let route = self.route.read().unwrap_or_else(|p| p.into_inner());
        if !Self::follower(&route) {
            return None;
        }
        let n = route.backends.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let picked = (0..n)
            .map(|i| &route.backends[(start + i) % n])
            .find(|(_, b)| b.is_healthy());
        let name = picked
            .map(|(l, _)| l.to_string())
            .unwrap_or_else(|| "cloud".into());
        self.set_serving(name);
        picked.map(|(_, b)| b.clone())
    }

    fn set_serving(&self, name: String) {
        let mut serving = self.serving.lock().unwrap_or_else(|p| p.into_inner());
        if *serving != name {
            tracing::info!(from = %serving, to = %name, "pool-scoped requests now served by");
            if *serving != "cloud" {
                self.pool_metrics
                    .serving_leader
                    .get_or_create(&LeaderLabels {
                        leader: serving.clone(),
                    })
                    .set(0);
            }
            if name != "cloud" {
                self.pool_metrics
                    .serving_leader
                    .get_or_create(&LeaderLabels {
                        leader: name.clone(),
                    })
                    .set(1);
            }
            *serving = name;
        }
    }

    /// True when `backend` is one of the leaders (not a cloud apiserver).
    pub fn is_leader_backend(&self, backend: &Arc<Backend>) -> bool {
        let route = self.route.read().unwrap_or_else(|p| p.into_inner());
        route.backends.iter().any(|(_, b)| Arc::ptr_eq(b, backend))
    }

    /// A request to a leader failed in transport: it is unhealthy until a
    /// probe says otherwise.
    pub fn report_transport_error(&self, backend: &Arc<Backend>) {
        if self.is_leader_backend(backend) {
            backend.set_healthy(false);
        }
    }

    async fn probe(&self, b: &Arc<Backend>) -> bool {
        let req = http::Request::builder()
            .uri(b.url_for("/v1/healthz"))
            .header(http::header::USER_AGENT, crate::user_agent())
            .body(crate::empty_body())
            .expect("a GET is valid");
        let client = self.transports.client(Identity::Hub, false);
        let ok = matches!(
            tokio::time::timeout(PROBE_TIMEOUT, client.request(req)).await,
            Ok(Ok(r)) if r.status().is_success()
        );
        b.set_healthy(ok);
        ok
    }

    /// Probes the leaders until `shutdown`; when one turns healthy while
    /// this follower is served by the cloud (or another leader is gone),
    /// the multiplexer re-watches so it moves back to the pool.
    pub fn spawn_health(self: &Arc<Self>, shutdown: CancellationToken) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROBE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let backends: Vec<Arc<Backend>> = {
                    let route = me.route.read().unwrap_or_else(|p| p.into_inner());
                    if !Self::follower(&route) {
                        continue;
                    }
                    route.backends.iter().map(|(_, b)| b.clone()).collect()
                };
                let mut came_back = false;
                for b in &backends {
                    let was = b.is_healthy();
                    if me.probe(b).await && !was {
                        came_back = true;
                    }
                }
                let on_cloud = *me.serving.lock().unwrap_or_else(|p| p.into_inner()) == "cloud";
                if came_back && on_cloud {
                    tracing::info!(
                        "a pool leader is healthy again; moving pool-scoped watches to it"
                    );
                    me.mux.rewatch();
                }
            }
        });
    }

    /// The routing part of the hub status document.
    pub fn status(&self) -> Value {
        let route = self.route.read().unwrap_or_else(|p| p.into_inner());
        let role = if route.leader_self {
            "leader"
        } else if Self::follower(&route) {
            "follower"
        } else {
            "cloud"
        };
        let serving = if Self::follower(&route) {
            self.serving
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        } else {
            "cloud".into()
        };
        json!({
            "role": role,
            "leaderElection": route.config.election,
            "leaders": route.config.leaders.iter().map(|l| {
                let healthy = if l.node == self.node {
                    Value::Null
                } else {
                    route.backends.iter().find(|(o, _)| o == l).map(|(_, b)| Value::from(b.is_healthy())).unwrap_or(Value::Null)
                };
                json!({"node": l.node, "address": l.address.to_string(), "healthy": healthy})
            }).collect::<Vec<_>>(),
            "poolScopedMetadata": route.config.pool_scoped.as_ref().map(|r| r.iter().map(|g| g.to_string()).collect::<Vec<_>>()),
            "serving": serving,
            "bytes": {
                "leader": self.bytes_leader.load(Ordering::Relaxed),
                "cloud": self.bytes_cloud.load(Ordering::Relaxed),
            },
        })
    }
}
