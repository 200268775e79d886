//! Prometheus metrics. Names and labels follow OpenYurt's `node_yurthub_*`
//! series so existing dashboards and alerts keep working; each module keeps a
//! handle to the series it updates, and `/metrics` encodes the one registry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::request::RequestInfo;

/// A label value of the per-request series: shared, so that the labels
/// of a request are copied by reference count, not by allocation (they are
/// taken on every request; see [`Metrics::request_labels`]).
pub type LabelValue = Arc<str>;

/// Labels of the per-request series (upstream: verb, resource, subresources, client).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: &'static str,
    pub resource: LabelValue,
    pub subresources: LabelValue,
    pub client: LabelValue,
}

/// Labels of requests the multiplexer sends to a server.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub verb: &'static str,
    pub resource: LabelValue,
    pub subresources: LabelValue,
    pub client: LabelValue,
    pub server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    pub server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    pub verb: &'static str,
    pub resource: LabelValue,
    pub client: LabelValue,
    /// "2xx", "4xx", "5xx", or "error" when no response was produced.
    pub code: &'static str,
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
    /// What the per-request series may hold (see [`LabelBudget`]).
    labels: Arc<Budgets>,
}

/// Label sets of the per-request series that may be created for one class
/// of caller. Their values come from what clients claim (the User-Agent,
/// the URL path), so without a bound a pod cycling either would grow the
/// hub's memory, and every scrape, one histogram at a time. A node's own
/// components need a few dozen.
const LABEL_SETS: usize = 256;

/// The longest label value taken as sent; longer ones read `other`.
const LABEL_VALUE_MAX: usize = 63;

/// What a label reads in place of a value past the budget or too odd to keep.
const FOLDED: &str = "other";

struct Budgets {
    /// The node's own components (loopback, no credentials).
    node: LabelBudget,
    /// Everyone else: pods and other tokens.
    others: LabelBudget,
    folded: Counter,
}

/// Admits label sets until [`LABEL_SETS`] are known; a new set past that
/// keeps its verb (a closed vocabulary) and reads [`FOLDED`] for the rest,
/// so each class adds at most one series per verb beyond its budget.
///
/// The admitted sets are kept, and a request whose set is known gets a
/// copy of the kept one, found by its borrowed values: no allocation.
struct LabelBudget {
    seen: Mutex<hashbrown::HashSet<RequestLabels>>,
    folded: LabelValue,
}

impl Default for LabelBudget {
    fn default() -> Self {
        LabelBudget {
            seen: Mutex::default(),
            folded: FOLDED.into(),
        }
    }
}

/// A label set by its borrowed values. Its derived `Hash` feeds the same
/// values in the same order as [`RequestLabels`]'s, so it finds the kept set.
#[derive(Hash)]
struct LabelsRef<'a> {
    verb: &'a str,
    resource: &'a str,
    subresources: &'a str,
    client: &'a str,
}

impl hashbrown::Equivalent<RequestLabels> for LabelsRef<'_> {
    fn equivalent(&self, key: &RequestLabels) -> bool {
        self.verb == key.verb
            && self.resource == &*key.resource
            && self.subresources == &*key.subresources
            && self.client == &*key.client
    }
}

impl LabelBudget {
    /// `Err` with the folded set when the budget is spent. `resource`,
    /// `subresources` and `client` are label values already
    /// ([`label_value`]).
    fn admit(
        &self,
        verb: &'static str,
        resource: &str,
        subresources: &str,
        client: &str,
    ) -> Result<RequestLabels, RequestLabels> {
        let key = LabelsRef {
            verb,
            resource,
            subresources,
            client,
        };
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(kept) = seen.get(&key) {
            return Ok(kept.clone());
        }
        let value = |v: &str| -> LabelValue {
            if v == FOLDED {
                self.folded.clone()
            } else {
                v.into()
            }
        };
        if seen.len() < LABEL_SETS {
            let labels = RequestLabels {
                verb,
                resource: value(resource),
                subresources: value(subresources),
                client: value(client),
            };
            seen.insert(labels.clone());
            return Ok(labels);
        }
        Err(RequestLabels {
            verb,
            resource: self.folded.clone(),
            subresources: self.folded.clone(),
            client: self.folded.clone(),
        })
    }
}

/// A value kept as a label as sent: short, printable ASCII.
fn label_value(v: &str) -> &str {
    if v.len() <= LABEL_VALUE_MAX && v.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        v
    } else {
        FOLDED
    }
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
            labels: Arc::new(Budgets {
                node: LabelBudget::default(),
                others: LabelBudget::default(),
                folded: Counter::default(),
            }),
        };
        registry.register(
            "node_yurthub_metric_label_sets_folded",
            "requests counted under client, resource and subresources \"other\" because their class of caller (node components, or everyone else) had created as many label sets of the per-request series as it may",
            m.labels.folded.clone(),
        );
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

    /// The labels of a request's per-request series (in flight, traffic,
    /// duration), within the budget of its class of caller.
    pub fn request_labels(&self, info: &RequestInfo) -> RequestLabels {
        let node = info.caller.is_node();
        let budget = if node {
            &self.labels.node
        } else {
            &self.labels.others
        };
        let admitted = budget.admit(
            info.verb.as_str(),
            label_value(&info.resource),
            label_value(&info.subresource),
            label_value(&info.component),
        );
        admitted.unwrap_or_else(|folded| {
            if self.labels.folded.inc() == 0 {
                tracing::warn!(
                    node_components = node,
                    budget = LABEL_SETS,
                    "per-request metric label sets are spent; new ones are counted as \"other\""
                );
            }
            folded
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Principal;

    #[test]
    fn label_sets_past_the_budget_fold_per_class_of_caller() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        let request = |caller: Principal, resource: &str, ua: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(http::header::USER_AGENT, ua.parse().unwrap());
            let uri = format!("/api/v1/namespaces/a/{resource}/x")
                .parse()
                .unwrap();
            let mut info = RequestInfo::resolve(&http::Method::GET, &uri, &h).unwrap();
            info.caller = caller;
            info
        };
        let pod = |i: usize| {
            m.request_labels(&request(Principal::Anonymous, "pods", &format!("ua-{i}/1")))
        };
        let mut distinct = std::collections::HashSet::new();
        for i in 0..LABEL_SETS + 50 {
            distinct.insert(pod(i));
        }
        // The budget, plus one folded set for the verb.
        assert_eq!(distinct.len(), LABEL_SETS + 1);
        assert_eq!(&*pod(0).client, "ua-0", "a known set stays as it is");
        let folded = pod(LABEL_SETS + 7);
        assert_eq!(
            (folded.verb, &*folded.resource, &*folded.client),
            ("get", FOLDED, FOLDED)
        );
        // The node's components keep a budget of their own.
        let kubelet = request(Principal::Node, "pods", "kubelet/v1.34");
        assert_eq!(&*m.request_labels(&kubelet).client, "kubelet");
        // A known set is the kept one, shared, not a new copy.
        let (a, b) = (m.request_labels(&kubelet), m.request_labels(&kubelet));
        assert!(Arc::ptr_eq(&a.client, &b.client) && Arc::ptr_eq(&a.resource, &b.resource));
        // Odd or long values never become labels.
        let odd = m.request_labels(&request(Principal::Node, &"x".repeat(64), "a\tb/1"));
        assert_eq!((&*odd.resource, &*odd.client), (FOLDED, FOLDED));
        let text = encode(&registry);
        assert!(
            text.contains("node_yurthub_metric_label_sets_folded_total 51"),
            "{text}"
        );
    }
}
