//! Prometheus metrics. Names and labels follow OpenYurt's `node_yurthub_*`
//! series so existing dashboards and alerts keep working; each module keeps a
//! handle to the series it updates, and `/metrics` encodes the one registry.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// Labels of the per-request series (upstream: verb, resource, subresources, client).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: String,
    pub resource: String,
    pub subresources: String,
    pub client: String,
}

/// Labels of requests the multiplexer sends to a server.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub verb: String,
    pub resource: String,
    pub subresources: String,
    pub client: String,
    pub server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    pub server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    pub verb: String,
    pub resource: String,
    pub client: String,
    /// "2xx", "4xx", "5xx", or "error" when no response was produced.
    pub code: String,
}

/// Why the pod-facing listener refused a connection: "address" (its
/// source address holds its share already) or "total".
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    component_name: String,
    git_version: String,
    git_commit: String,
    build_date: String,
    go_version: String,
    compiler: String,
    platform: String,
    nodepoollabelkey: String,
}

/// A monotonically increasing value exposed under its exact name. OpenMetrics
/// counters get a `_total` suffix appended by the encoder, which would rename
/// upstream's `node_yurthub_proxy_traffic_collector`; exposing it untyped keeps
/// the name (and `rate()` works on untyped series all the same).
#[derive(Debug, Default, Clone)]
pub struct UntypedCounter(Arc<AtomicU64>);

impl UntypedCounter {
    pub fn inc_by(&self, v: u64) {
        self.0.fetch_add(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl TypedMetric for UntypedCounter {
    const TYPE: MetricType = MetricType::Unknown;
}

impl EncodeMetric for UntypedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&(self.get() as i64))
    }
    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// The proxy- and health-related series.
#[derive(Clone)]
pub struct Metrics {
    pub server_healthy_status: Family<ServerLabels, Gauge>,
    pub in_flight_requests: Family<RequestLabels, Gauge>,
    pub in_flight_requests_total: Gauge,
    pub proxy_traffic: Family<RequestLabels, UntypedCounter>,
    pub closable_conns: Family<ServerLabels, Gauge>,
    pub request_duration: Family<DurationLabels, Histogram>,
    /// Requests served by the multiplexer (shared watches).
    pub aggregated_in_flight_requests: Family<RequestLabels, Gauge>,
    pub aggregated_in_flight_requests_total: Gauge,
    /// The multiplexer's own upstream requests, by the server they went to.
    pub target_for_multiplexer_requests: Family<TargetLabels, UntypedCounter>,
    /// Upstream streams cut because their client stopped reading.
    pub stalled_clients_cut: Counter,
    /// Pod-facing connections refused past their bounds, by reason.
    pub refused_connections: Family<RefusedLabels, Counter>,
    /// Requests answered 429: "address" (its source address holds its
    /// share of requests in flight) or "upstream_streams" (every upstream
    /// connection holds its most streams).
    pub refused_requests: Family<RefusedLabels, Counter>,
}

impl Metrics {
    /// Creates the series and registers them (plus `openyurt_version_info`).
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            server_healthy_status: Family::default(),
            in_flight_requests: Family::default(),
            in_flight_requests_total: Gauge::default(),
            proxy_traffic: Family::default(),
            closable_conns: Family::default(),
            request_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            aggregated_in_flight_requests: Family::default(),
            aggregated_in_flight_requests_total: Gauge::default(),
            target_for_multiplexer_requests: Family::default(),
            stalled_clients_cut: Counter::default(),
            refused_connections: Family::default(),
            refused_requests: Family::default(),
        };
        // A series of its own (upstream has none): a typed counter, exposed
        // with the `_total` suffix.
        registry.register(
            "node_yurthub_proxy_stalled_clients_cut",
            "upstream streams cut because their client took nothing of the response for 10s",
            m.stalled_clients_cut.clone(),
        );
        registry.register(
            "node_yurthub_proxy_refused_connections",
            "connections refused on the listeners pods reach (pod-facing, multiplexer) because their source address or the listeners held their bound",
            m.refused_connections.clone(),
        );
        registry.register(
            "node_yurthub_proxy_refused_requests",
            "requests answered 429 because their source address held its share of requests in flight on the pod-facing listener, or every upstream connection held its most streams",
            m.refused_requests.clone(),
        );
        registry.register(
            "node_yurthub_aggregated_in_flight_requests_collector",
            "collector of in flight requests handled by multiplexer manager",
            m.aggregated_in_flight_requests.clone(),
        );
        registry.register(
            "node_yurthub_aggregated_in_flight_requests_total",
            "total of in flight requests handled by multiplexer manager",
            m.aggregated_in_flight_requests_total.clone(),
        );
        registry.register(
            "node_yurthub_target_for_multiplexer_requests_collector",
            "collector of requests forwarded for the multiplexer, by target server",
            m.target_for_multiplexer_requests.clone(),
        );
        registry.register(
            "node_yurthub_server_healthy_status",
            "healthy status of remote servers. 1: healthy, 0: unhealthy",
            m.server_healthy_status.clone(),
        );
        registry.register(
            "node_yurthub_in_flight_requests_collector",
            "collector of in flight requests handled by yurthub",
            m.in_flight_requests.clone(),
        );
        registry.register(
            "node_yurthub_in_flight_requests_total",
            "total of in flight requests handled by yurthub",
            m.in_flight_requests_total.clone(),
        );
        registry.register(
            "node_yurthub_proxy_traffic_collector",
            "collector of proxy response traffic by hub agent(unit: byte)",
            m.proxy_traffic.clone(),
        );
        registry.register(
            "node_yurthub_closable_conns_collector",
            "collector of underlay tcp connection from hub agent to remote server",
            m.closable_conns.clone(),
        );
        registry.register(
            "node_yurthub_proxy_request_duration_seconds",
            "time from receiving a proxied request to sending its response headers",
            m.request_duration.clone(),
        );
        let version: Family<VersionLabels, Gauge> = Family::default();
        version
            .get_or_create(&VersionLabels {
                component_name: "yurthub".into(),
                git_version: crate::VERSION.into(),
                git_commit: option_env!("YURTHUB_GIT_COMMIT")
                    .unwrap_or("unknown")
                    .into(),
                build_date: option_env!("YURTHUB_BUILD_DATE")
                    .unwrap_or("unknown")
                    .into(),
                go_version: String::new(),
                compiler: "rustc".into(),
                platform: format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
                nodepoollabelkey: "apps.openyurt.io/nodepool".into(),
            })
            .set(1);
        registry.register(
            "openyurt_version_info",
            "A metric with a constant '1' value labeled by version info",
            version,
        );
        m
    }
}

/// Encodes the registry in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Encoding into a String cannot fail except on a formatter bug.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(error = %e, "encoding metrics failed");
    }
    out
}

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
