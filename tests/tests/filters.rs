//! Checklist items 39–45 (reference §11 "Filters") against the filter library
//! through its public API: the registry decides the chain from the request's
//! component, verb and resource, the chain filters real JSON and protobuf
//! bodies, and `ClusterView` supplies what the filters read. Wiring the chain
//! into the proxy (before the cache write) is the proxy's job; item 44 is
//! checked here as far as the library goes: the filtered form is what the
//! cache's codec reads, and serving it again through the chain is stable.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde::de::DeserializeOwned;
use yurthub::codec::{self, EventType, Format, ListMeta};
use yurthub::config::{RedirectMode, WorkingMode};
use yurthub::filters::{
    ClusterView, FilterChain, FilterName, FilterRegistry, FilterSettings, PoolSource,
};

const FORMATS: [Format; 2] = [Format::Json, Format::Protobuf];
const NODE: &str = "edge-1";
const HUB: &str = "169.254.2.1:10268";

// === fixtures ===

fn meta(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(namespace.into()),
        name: Some(name.into()),
        resource_version: Some("7".into()),
        ..ObjectMeta::default()
    }
}

fn service(
    namespace: &str,
    name: &str,
    type_: &str,
    ip: &str,
    annotations: &[(&str, &str)],
) -> Service {
    let mut metadata = meta(namespace, name);
    if !annotations.is_empty() {
        metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        );
    }
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(type_.into()),
            cluster_ip: Some(ip.into()),
            cluster_ips: Some(vec![ip.into()]),
            ports: Some(vec![ServicePort {
                name: Some(
                    if name == "kubernetes" {
                        "https"
                    } else {
                        "http"
                    }
                    .into(),
                ),
                port: if name == "kubernetes" { 443 } else { 80 },
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn endpoint(address: &str, node: &str) -> Endpoint {
    Endpoint {
        addresses: vec![address.into()],
        conditions: Some(EndpointConditions {
            ready: Some(true),
            ..EndpointConditions::default()
        }),
        node_name: Some(node.into()),
        ..Endpoint::default()
    }
}

fn slice(name: &str, service: &str, endpoints: Vec<Endpoint>, port: (&str, i32)) -> EndpointSlice {
    let mut metadata = meta("default", name);
    metadata.labels = Some(BTreeMap::from([(
        "kubernetes.io/service-name".to_owned(),
        service.to_owned(),
    )]));
    EndpointSlice {
        metadata,
        address_type: "IPv4".into(),
        endpoints: Some(endpoints),
        ports: Some(vec![EndpointPort {
            name: Some(port.0.into()),
            port: Some(port.1),
            protocol: Some("TCP".into()),
            ..EndpointPort::default()
        }]),
    }
}

fn encode<T: k8s_openapi::Resource + Serialize>(format: Format, value: &T) -> Vec<u8> {
    codec::encode_resource(format, value).expect("encode object")
}

fn list_body<T: k8s_openapi::Resource + Serialize>(format: Format, items: &[T]) -> Bytes {
    let encoded: Vec<Vec<u8>> = items.iter().map(|i| encode(format, i)).collect();
    let refs: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
    let meta = ListMeta {
        resource_version: "99".into(),
        ..ListMeta::default()
    };
    Bytes::from(
        codec::build_list(
            format,
            T::API_VERSION,
            &format!("{}List", T::KIND),
            &meta,
            &refs,
        )
        .expect("list"),
    )
}

fn list_items<T: DeserializeOwned>(format: Format, body: &[u8]) -> Vec<T> {
    let parts = codec::split_list(format, body).expect("filtered list splits");
    parts
        .items
        .iter()
        .map(|r| {
            let item = &body[r.clone()];
            let json = match format {
                Format::Json => serde_json::from_slice(item).expect("json item"),
                Format::Protobuf => {
                    codec::message_to_json(&parts.api_version, parts.item_kind(), item)
                        .expect("protobuf item")
                }
            };
            serde_json::from_value(json).expect("typed item")
        })
        .collect()
}

fn watch_body(format: Format, events: &[(EventType, Vec<u8>)]) -> Vec<u8> {
    events
        .iter()
        .flat_map(|(t, o)| codec::encode_watch_event(format, *t, o).expect("event"))
        .collect()
}

/// Runs a watch body through the chain in uneven chunks.
fn filter_watch(chain: &FilterChain, format: Format, body: &[u8]) -> Vec<(EventType, Vec<u8>)> {
    let mut filter = chain.watch(format);
    let mut out = Vec::new();
    for chunk in body.chunks(13) {
        out.extend_from_slice(&filter.push(chunk));
    }
    out.extend_from_slice(&filter.finish());
    codec::decode_watch_body(format, &out)
        .expect("filtered watch decodes")
        .into_iter()
        .map(|e| (e.event_type, e.object().to_vec()))
        .collect()
}

fn settings(mode: WorkingMode, redirect: RedirectMode, disabled: &[&str]) -> FilterSettings {
    FilterSettings {
        enable_resource_filter: true,
        disabled_resource_filters: disabled.iter().map(|s| s.to_string()).collect(),
        enabled_resource_filters: Vec::new(),
        working_mode: mode,
        redirect_mode: redirect,
        node_name: NODE.into(),
    }
}

fn view() -> Arc<ClusterView> {
    let hub: SocketAddr = HUB.parse().expect("hub address");
    Arc::new(ClusterView::new(NODE, "pool-a", hub, PoolSource::NodePool))
}

fn registry(s: &FilterSettings) -> FilterRegistry {
    FilterRegistry::new(s, view())
}

/// Edge mode without the kernel redirect: every filter on, as upstream.
fn upstream_like() -> FilterRegistry {
    registry(&settings(WorkingMode::Edge, RedirectMode::None, &[]))
}

fn services() -> Vec<Service> {
    vec![
        service("default", "kubernetes", "ClusterIP", "10.96.0.1", &[]),
        service("default", "web", "ClusterIP", "10.96.0.50", &[]),
        service(
            "default",
            "cloud-lb",
            "LoadBalancer",
            "10.96.0.51",
            &[("svc.openyurt.io/discard", "true")],
        ),
    ]
}

// === 39 ===

#[test]
fn item_39_kubelet_sees_the_kubernetes_service_at_the_hub() {
    let r = upstream_like();
    for format in FORMATS {
        let list_chain = r
            .chain_for("kubelet", "list", "services")
            .expect("kubelet list services is filtered");
        let out = list_chain.filter_list_body(format, list_body(format, &services()));
        let items: Vec<Service> = list_items(format, &out);
        let kube = items
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some("kubernetes"))
            .expect("kubernetes");
        let spec = kube.spec.as_ref().expect("spec");
        assert_eq!(
            spec.cluster_ip.as_deref(),
            Some("169.254.2.1"),
            "{format:?}"
        );
        assert_eq!(
            spec.ports.as_ref().expect("ports")[0].port,
            10268,
            "{format:?}"
        );
        for (got, want) in items.iter().zip(services()).skip(1) {
            assert_eq!(got, &want, "other services untouched ({format:?})");
        }

        let watch_chain = r
            .chain_for("kubelet", "watch", "services")
            .expect("kubelet watch services is filtered");
        let events = filter_watch(
            &watch_chain,
            format,
            &watch_body(
                format,
                &[(EventType::Modified, encode(format, &services()[0]))],
            ),
        );
        let kube: Service = codec::decode_as(format, &events[0].1).expect("event object");
        assert_eq!(events[0].0, EventType::Modified);
        assert_eq!(
            kube.spec.expect("spec").cluster_ip.as_deref(),
            Some("169.254.2.1")
        );
    }
}

// === 40 ===

fn kubernetes_slice() -> EndpointSlice {
    slice(
        "kubernetes",
        "kubernetes",
        vec![
            endpoint("10.0.0.1", "master-1"),
            endpoint("10.0.0.2", "master-2"),
        ],
        ("https", 6443),
    )
}

#[test]
fn item_40_kube_proxy_sees_one_ready_hub_endpoint_in_edge_mode_only() {
    let r = upstream_like();
    for format in FORMATS {
        let chain = r
            .chain_for("kube-proxy", "list", "endpointslices")
            .expect("kube-proxy endpointslices");
        let out = chain.filter_list_body(format, list_body(format, &[kubernetes_slice()]));
        let got: Vec<EndpointSlice> = list_items(format, &out);
        let endpoints = got[0].endpoints.as_ref().expect("endpoints");
        assert_eq!(endpoints.len(), 1, "{format:?}");
        assert_eq!(endpoints[0].addresses, vec!["169.254.2.1".to_owned()]);
        assert_eq!(
            endpoints[0].conditions.as_ref().and_then(|c| c.ready),
            Some(true)
        );
        assert_eq!(got[0].ports.as_ref().expect("ports")[0].port, Some(10268));
    }
    // Off in cloud mode, when disabled, and with the eBPF redirect.
    for (what, s) in [
        (
            "cloud mode",
            settings(WorkingMode::Cloud, RedirectMode::None, &[]),
        ),
        (
            "disabled",
            settings(
                WorkingMode::Edge,
                RedirectMode::None,
                &["forwardkubesvctraffic"],
            ),
        ),
        (
            "ebpf redirect",
            settings(WorkingMode::Edge, RedirectMode::Ebpf, &[]),
        ),
    ] {
        let r = registry(&s);
        let filters = r
            .chain_for("kube-proxy", "list", "endpointslices")
            .map(|c| c.filters().to_vec());
        assert!(
            !filters
                .iter()
                .flatten()
                .any(|f| *f == FilterName::ForwardKubeSvcTraffic),
            "{what}: {filters:?}"
        );
        for format in FORMATS {
            let body = list_body(format, &[kubernetes_slice()]);
            let out = match r.chain_for("kube-proxy", "list", "endpointslices") {
                Some(chain) => chain.filter_list_body(format, body.clone()),
                None => body.clone(),
            };
            assert_eq!(out, body, "{what} ({format:?}): the slice is untouched");
        }
    }
}

// === 41 ===

#[test]
fn item_41_discarded_cloud_services_vanish_and_watches_get_deleted() {
    let r = upstream_like();
    for format in FORMATS {
        let chain = r
            .chain_for("kube-proxy", "list", "services")
            .expect("kube-proxy services");
        let out = chain.filter_list_body(format, list_body(format, &services()));
        let names: Vec<String> = list_items::<Service>(format, &out)
            .into_iter()
            .map(|s| s.metadata.name.unwrap_or_default())
            .collect();
        assert_eq!(names, vec!["kubernetes", "web"], "{format:?}");

        let chain = r
            .chain_for("kube-proxy", "watch", "services")
            .expect("kube-proxy watch services");
        let lb = encode(format, &services()[2]);
        let events = filter_watch(
            &chain,
            format,
            &watch_body(
                format,
                &[
                    (EventType::Added, encode(format, &services()[1])),
                    (EventType::Added, lb.clone()),
                ],
            ),
        );
        assert_eq!(
            events.iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![EventType::Added, EventType::Deleted]
        );
        assert_eq!(
            events[1].1, lb,
            "DELETED carries the original object ({format:?})"
        );
    }
}

// === 42 ===

#[test]
fn item_42_hostname_topology_keeps_this_nodes_endpoints() {
    let view = view();
    view.replace_services([service(
        "default",
        "web",
        "ClusterIP",
        "10.96.0.50",
        &[("openyurt.io/topologyKeys", "kubernetes.io/hostname")],
    )]);
    view.replace_pool_objects(&[
        serde_json::json!({"metadata": {"name": "pool-a"}, "status": {"nodes": [NODE, "edge-2"]}}),
    ]);
    assert!(view.has_synced());
    let r = FilterRegistry::new(&settings(WorkingMode::Edge, RedirectMode::Ebpf, &[]), view);
    let web = slice(
        "web-x",
        "web",
        vec![
            endpoint("10.1.0.1", NODE),
            endpoint("10.1.0.2", "edge-2"),
            endpoint("10.1.0.3", "cloud-1"),
        ],
        ("http", 80),
    );
    for format in FORMATS {
        let chain = r
            .chain_for("kube-proxy", "list", "endpointslices")
            .expect("topology applies");
        let out = chain.filter_list_body(format, list_body(format, std::slice::from_ref(&web)));
        let got: Vec<EndpointSlice> = list_items(format, &out);
        let nodes: Vec<String> = got[0]
            .endpoints
            .iter()
            .flatten()
            .filter_map(|e| e.node_name.clone())
            .collect();
        assert_eq!(nodes, vec![NODE.to_owned()], "{format:?}");
    }
}

// === 43 ===

fn kube_proxy_config_map() -> ConfigMap {
    ConfigMap {
        metadata: meta("kube-system", "kube-proxy"),
        data: Some(BTreeMap::from([(
            "config.conf".to_owned(),
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nclientConnection:\n  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf\nmode: iptables\n".to_owned(),
        )])),
        ..ConfigMap::default()
    }
}

#[test]
fn item_43_kubelet_gets_kube_proxy_config_without_kubeconfig() {
    // inclusterconfig is not a pod-steering filter: on with the redirect too.
    let r = registry(&settings(WorkingMode::Edge, RedirectMode::Ebpf, &[]));
    for format in FORMATS {
        let chain = r
            .chain_for("kubelet", "get", "configmaps")
            .expect("kubelet get configmaps");
        let out = chain.filter_body(
            "get",
            format,
            Bytes::from(encode(format, &kube_proxy_config_map())),
        );
        let got: ConfigMap = codec::decode_as(format, &out).expect("config map");
        let conf = &got.data.expect("data")["config.conf"];
        assert!(
            conf.contains("\n  #kubeconfig: /var/lib/kube-proxy/kubeconfig.conf\n"),
            "{format:?}: {conf}"
        );
        assert!(!conf.contains("\n  kubeconfig:"), "{format:?}: {conf}");
    }
}

// === 44 ===

#[test]
fn item_44_the_filtered_form_is_cacheable_and_stable() {
    let r = upstream_like();
    for format in FORMATS {
        let chain = r
            .chain_for("kube-proxy", "list", "services")
            .expect("kube-proxy services");
        let filtered = chain.filter_list_body(format, list_body(format, &services()));
        // What the cache reads of a list response: its parts and each item's metadata.
        let parts = codec::split_list(format, &filtered).expect("cache splits the filtered list");
        assert_eq!(parts.meta.resource_version, "99");
        let names: Vec<String> = parts
            .items
            .iter()
            .map(|r| {
                codec::item_info(format, &filtered[r.clone()], parts.item_kind())
                    .expect("item metadata")
                    .name
                    .into_owned()
            })
            .collect();
        assert_eq!(names, vec!["kubernetes", "web"]);
        // Serving the cached (filtered) form again changes nothing.
        assert_eq!(
            chain.filter_list_body(format, filtered.clone()),
            filtered,
            "{format:?}"
        );
    }
}

// === 45 ===

#[test]
fn item_45_disabling_all_filters_disables_every_mutation() {
    for mode in [WorkingMode::Edge, WorkingMode::Cloud] {
        for redirect in [RedirectMode::None, RedirectMode::Ebpf] {
            let r = registry(&settings(mode, redirect, &["*"]));
            assert!(r.enabled().is_empty(), "{mode:?} {redirect:?}");
            r.set_config_map_data(&BTreeMap::from([(
                "masterservice".to_owned(),
                "foo".to_owned(),
            )]));
            for filter in FilterName::ALL {
                let scope = filter.scope();
                for component in scope.components.iter().copied().chain(["foo"]) {
                    for (resource, verbs) in scope.resource_verbs {
                        for verb in *verbs {
                            assert!(
                                r.chain_for(component, verb, resource).is_none(),
                                "{component} {verb} {resource} filtered with *"
                            );
                        }
                    }
                }
            }
        }
    }
}
