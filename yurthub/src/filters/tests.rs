//! The chain on real bodies, in both wire formats: get, list and watch,
//! including the DELETED conversion, incremental watch decoding and the
//! pass-through of what does not decode.

use std::sync::Arc;

use bytes::Bytes;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Serialize;

use super::test_support::*;
use super::{FilterChain, FilterName, Filtered};
use crate::codec::{self, EventType, Format, ListMeta};

const FORMATS: [Format; 2] = [Format::Json, Format::Protobuf];

fn chain(filters: &[FilterName], inputs: TestInputs) -> FilterChain {
    FilterChain::new(filters.to_vec(), Arc::new(inputs))
}

fn encode<T: k8s_openapi::Resource + Serialize>(format: Format, value: &T) -> Vec<u8> {
    codec::encode_resource(format, value).expect("encode object")
}

/// A list body as the apiserver sends it (JSON items without type meta).
fn list<T: k8s_openapi::Resource + Serialize>(format: Format, items: &[T]) -> Vec<u8> {
    let encoded: Vec<Vec<u8>> = items
        .iter()
        .map(|i| match format {
            Format::Json => {
                let mut v = serde_json::to_value(i).expect("item json");
                let map = v.as_object_mut().expect("object");
                map.remove("apiVersion");
                map.remove("kind");
                serde_json::to_vec(&v).expect("item bytes")
            }
            Format::Protobuf => encode(format, i),
        })
        .collect();
    let refs: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
    let meta = ListMeta {
        resource_version: "555".into(),
        ..ListMeta::default()
    };
    codec::build_list(
        format,
        T::API_VERSION,
        &format!("{}List", T::KIND),
        &meta,
        &refs,
    )
    .expect("build list")
}

fn decode_list<T: serde::de::DeserializeOwned>(format: Format, body: &[u8]) -> Vec<T> {
    let parts = codec::split_list(format, body).expect("split list");
    assert_eq!(parts.meta.resource_version, "555", "list metadata kept");
    parts
        .items
        .iter()
        .map(|r| {
            let item = &body[r.clone()];
            let json = match format {
                Format::Json => serde_json::from_slice(item).expect("json item"),
                Format::Protobuf => {
                    codec::message_to_json(&parts.api_version, parts.item_kind(), item)
                        .expect("pb item")
                }
            };
            serde_json::from_value(json).expect("typed item")
        })
        .collect()
}

fn name_of(svc: &Service) -> String {
    svc.metadata.name.clone().unwrap_or_default()
}

fn services() -> Vec<Service> {
    vec![
        service("default", "kubernetes", "10.96.0.1", &[("https", 443)]),
        service("default", "web", "10.96.0.20", &[("http", 80)]),
        annotate(
            with_type(
                service("default", "lb", "10.96.0.21", &[("http", 80)]),
                "LoadBalancer",
            ),
            "svc.openyurt.io/discard",
            "true",
        ),
    ]
}

#[test]
fn lists_are_filtered_item_by_item_in_both_formats() {
    for format in FORMATS {
        let c = chain(
            &[FilterName::MasterService, FilterName::DiscardCloudService],
            TestInputs::default(),
        );
        let body = list(format, &services());
        let out = c.filter_list_body(format, Bytes::from(body.clone()));
        let items: Vec<Service> = decode_list(format, &out);
        assert_eq!(
            items.iter().map(name_of).collect::<Vec<_>>(),
            vec!["kubernetes", "web"],
            "{format:?}"
        );
        let spec = items[0].spec.as_ref().expect("spec");
        assert_eq!(
            spec.cluster_ip.as_deref(),
            Some("169.254.2.1"),
            "{format:?}"
        );
        assert_eq!(spec.ports.as_ref().expect("ports")[0].port, 10268);
        assert_eq!(
            items[1],
            services()[1],
            "untouched item is unchanged ({format:?})"
        );
        if format == Format::Json {
            let web = &out[codec::split_list(format, &out).expect("split").items[1].clone()];
            let original = &body[codec::split_list(format, &body).expect("split").items[1].clone()];
            assert_eq!(web, original, "untouched items keep their bytes");
        }
    }
}

#[test]
fn unchanged_bodies_keep_their_exact_bytes() {
    for format in FORMATS {
        let c = chain(&[FilterName::MasterService], TestInputs::default());
        let body = Bytes::from(list(format, &services()[1..]));
        let out = c.filter_list_body(format, body.clone());
        assert_eq!(out, body, "{format:?}");
        // A kind no filter of the chain handles is not even decoded.
        let cm = Bytes::from(encode(
            format,
            &config_map(
                "kube-system",
                "kube-proxy",
                &[("config.conf", "kubeconfig: x")],
            ),
        ));
        assert_eq!(c.filter_object_body(format, cm.clone()), cm);
    }
}

#[test]
fn get_responses_are_filtered_and_drops_keep_the_object() {
    for format in FORMATS {
        let c = chain(&[FilterName::InClusterConfig], TestInputs::default());
        let cm = config_map(
            "kube-system",
            "kube-proxy",
            &[("config.conf", "clientConnection:\n  kubeconfig: /k.conf\n")],
        );
        let out = c.filter_object_body(format, Bytes::from(encode(format, &cm)));
        let got: ConfigMap = codec::decode_as(format, &out).expect("decode");
        assert_eq!(
            got.data.expect("data")["config.conf"],
            "clientConnection:\n  #kubeconfig: /k.conf\n",
            "{format:?}"
        );

        let c = chain(&[FilterName::DiscardCloudService], TestInputs::default());
        let lb = encode(format, &services()[2]);
        assert_eq!(
            c.filter_object(format, &lb).expect("filter"),
            Filtered::Dropped
        );
        assert_eq!(
            c.filter_object_body(format, Bytes::from(lb.clone())),
            lb,
            "a single object is never emptied"
        );
    }
}

fn watch_body(format: Format, events: &[(EventType, Vec<u8>)]) -> Vec<u8> {
    events
        .iter()
        .flat_map(|(t, obj)| codec::encode_watch_event(format, *t, obj).expect("encode event"))
        .collect()
}

fn decode_events(format: Format, body: &[u8]) -> Vec<(EventType, Vec<u8>)> {
    codec::decode_watch_body(format, body)
        .expect("filtered watch decodes")
        .into_iter()
        .map(|e| (e.event_type, e.object().to_vec()))
        .collect()
}

#[test]
fn watch_events_are_filtered_and_drops_become_deleted() {
    for format in FORMATS {
        let c = chain(
            &[FilterName::MasterService, FilterName::DiscardCloudService],
            TestInputs::default(),
        );
        let svcs = services();
        let bookmark = encode(format, &service("", "", "", &[]));
        let input = watch_body(
            format,
            &[
                (EventType::Added, encode(format, &svcs[0])),
                (EventType::Added, encode(format, &svcs[1])),
                (EventType::Added, encode(format, &svcs[2])),
                (EventType::Modified, encode(format, &svcs[2])),
                (EventType::Deleted, encode(format, &svcs[2])),
                (EventType::Bookmark, bookmark.clone()),
            ],
        );
        // Byte by byte: frames split across every possible boundary.
        let mut filter = c.watch(format);
        let mut out = Vec::new();
        for b in &input {
            out.extend_from_slice(&filter.push(std::slice::from_ref(b)));
        }
        out.extend_from_slice(&filter.finish());
        let events = decode_events(format, &out);
        let types: Vec<EventType> = events.iter().map(|e| e.0).collect();
        use EventType::*;
        assert_eq!(
            types,
            vec![Added, Added, Deleted, Deleted, Deleted, Bookmark],
            "{format:?}"
        );
        let kube: Service = codec::decode_as(format, &events[0].1).expect("kubernetes svc");
        assert_eq!(
            kube.spec.expect("spec").cluster_ip.as_deref(),
            Some("169.254.2.1")
        );
        assert_eq!(
            events[1].1,
            encode(format, &svcs[1]),
            "untouched object bytes kept"
        );
        for dropped in &events[2..5] {
            assert_eq!(
                dropped.1,
                encode(format, &svcs[2]),
                "DELETED carries the original object"
            );
        }
        assert_eq!(events[5].1, bookmark, "bookmarks pass through");
    }
}

#[test]
fn watch_body_adapter_streams_filtered_events() {
    use http_body_util::{BodyExt, StreamBody};
    let format = Format::Protobuf;
    let c = chain(&[FilterName::MasterService], TestInputs::default());
    let input = watch_body(
        format,
        &[(EventType::Added, encode(format, &services()[0]))],
    );
    let (a, b) = input.split_at(7);
    let chunks = vec![
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::copy_from_slice(a))),
        Ok(http_body::Frame::data(Bytes::copy_from_slice(b))),
    ];
    let body = c.watch_body(format, StreamBody::new(futures_util::stream::iter(chunks)));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let out = rt
        .block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(5), body.collect()).await
        })
        .expect("collect within 5s")
        .expect("infallible")
        .to_bytes();
    let events = decode_events(format, &out);
    assert_eq!(events.len(), 1);
    let svc: Service = codec::decode_as(format, &events[0].1).expect("svc");
    assert_eq!(svc.spec.expect("spec").ports.expect("ports")[0].port, 10268);
}

#[test]
fn undecodable_bodies_pass_through() {
    let c = chain(&FilterName::ALL, TestInputs::default());
    for format in FORMATS {
        let junk = Bytes::from_static(b"k8s\0\x0a\x02garbage");
        assert_eq!(c.filter_object_body(format, junk.clone()), junk);
        assert_eq!(c.filter_list_body(format, junk.clone()), junk);
    }
    let text = Bytes::from_static(b"2026-01-01 log line\n");
    assert_eq!(c.filter_body("get", Format::Json, text.clone()), text);
    let status =
        Bytes::from_static(br#"{"kind":"Status","apiVersion":"v1","status":"Failure","code":404}"#);
    assert_eq!(c.filter_body("list", Format::Json, status.clone()), status);

    // A watch that stops decoding: what was filtered stays filtered, the rest
    // passes through as received.
    let format = Format::Json;
    let good = watch_body(
        format,
        &[(EventType::Added, encode(format, &services()[0]))],
    );
    let mut filter = c.watch(format);
    let first = filter.push(&good);
    let bad = b"{\"type\":\"WHATEVER\",\"object\":{}}\n{\"type\":\"ADDED\"";
    let second = filter.push(bad);
    let third = filter.push(b",\"object\":{}}\n");
    assert!(!first.is_empty());
    assert_ne!(first.as_ref(), good.as_slice(), "first event was filtered");
    assert_eq!(second.as_ref(), &bad[..]);
    assert_eq!(third.as_ref(), b",\"object\":{}}\n");
}

#[test]
fn topology_trims_endpointslices_in_lists() {
    for format in FORMATS {
        let inputs = TestInputs {
            services: vec![annotate(
                service("default", "web", "10.96.0.20", &[("http", 80)]),
                "openyurt.io/topologyKeys",
                "kubernetes.io/hostname",
            )],
            ..TestInputs::default()
        };
        let c = chain(&[FilterName::ServiceTopology], inputs);
        let slices = vec![
            endpoint_slice(
                "default",
                "web-1",
                "web",
                vec![
                    endpoint("10.0.0.1", Some("node-1")),
                    endpoint("10.0.0.2", Some("node-2")),
                ],
                &[("http", 80)],
            ),
            endpoint_slice(
                "default",
                "db-1",
                "db",
                vec![endpoint("10.0.0.3", Some("node-2"))],
                &[("tcp", 5432)],
            ),
        ];
        let out = c.filter_list_body(format, Bytes::from(list(format, &slices)));
        let got: Vec<EndpointSlice> = decode_list(format, &out);
        let nodes: Vec<Vec<Option<String>>> = got
            .iter()
            .map(|s| {
                s.endpoints
                    .iter()
                    .flatten()
                    .map(|e| e.node_name.clone())
                    .collect()
            })
            .collect();
        assert_eq!(
            nodes,
            vec![
                vec![Some("node-1".to_owned())],
                vec![Some("node-2".to_owned())]
            ],
            "{format:?}"
        );
    }
}

/// Each filter through the wire: filtering the encoded object gives exactly
/// what filtering the typed object gives, in both formats, and the typed
/// result differs from the input where the filter acts.
#[test]
fn every_filter_works_on_the_wire_in_both_formats() {
    use super::{Object, ObjectKind, Verdict};
    use k8s_openapi::api::core::v1::Pod;

    let topology_inputs = TestInputs {
        pool: Some("pool-a".into()),
        services: vec![annotate(
            service("default", "web", "10.96.0.20", &[("http", 80)]),
            "openyurt.io/topologyKeys",
            "openyurt.io/nodepool",
        )],
        pools: [(
            "pool-a".to_owned(),
            vec!["node-1".to_owned(), "node-3".to_owned()],
        )]
        .into(),
        ..TestInputs::default()
    };
    let web_slice = endpoint_slice(
        "default",
        "web-1",
        "web",
        vec![
            endpoint("10.0.0.1", Some("node-1")),
            endpoint("10.0.0.2", Some("node-2")),
            endpoint("10.0.0.3", Some("node-3")),
        ],
        &[("http", 80)],
    );
    let kube_slice = endpoint_slice(
        "default",
        "kubernetes",
        "kubernetes",
        vec![endpoint("10.0.0.9", Some("m"))],
        &[("https", 6443)],
    );
    let node_port = annotate(
        with_type(
            service("default", "np", "10.96.0.40", &[("http", 80)]),
            "NodePort",
        ),
        "nodeport.openyurt.io/listen",
        "pool-b",
    );
    let env_pod = pod(
        "default",
        "p",
        &[&[
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
        ]],
        &[],
    );
    let cases: Vec<(FilterName, TestInputs, Object, Verdict)> = vec![
        (
            FilterName::ServiceTopology,
            topology_inputs,
            Object::EndpointSlice(Box::new(web_slice)),
            Verdict::Mutated,
        ),
        (
            FilterName::MasterService,
            TestInputs::default(),
            Object::Service(Box::new(services()[0].clone())),
            Verdict::Mutated,
        ),
        (
            FilterName::DiscardCloudService,
            TestInputs::default(),
            Object::Service(Box::new(services()[2].clone())),
            Verdict::Drop,
        ),
        (
            FilterName::InClusterConfig,
            TestInputs::default(),
            Object::ConfigMap(Box::new(config_map(
                "kube-system",
                "kube-proxy",
                &[("config.conf", "kubeconfig: /k\n")],
            ))),
            Verdict::Mutated,
        ),
        (
            FilterName::NodePortIsolation,
            TestInputs {
                pool: Some("pool-a".into()),
                ..TestInputs::default()
            },
            Object::Service(Box::new(node_port)),
            Verdict::Drop,
        ),
        (
            FilterName::ForwardKubeSvcTraffic,
            TestInputs::default(),
            Object::EndpointSlice(Box::new(kube_slice)),
            Verdict::Mutated,
        ),
        (
            FilterName::ServiceEnvUpdater,
            TestInputs::default(),
            Object::Pod(Box::new(env_pod)),
            Verdict::Mutated,
        ),
    ];
    for (filter, inputs, object, want) in cases {
        let mut typed = object.clone();
        assert_eq!(
            filter.apply(&mut typed, &inputs),
            want,
            "{filter} on the typed object"
        );
        let c = chain(&[filter], inputs);
        for format in FORMATS {
            let encoded = match &object {
                Object::Service(o) => encode(format, o.as_ref()),
                Object::EndpointSlice(o) => encode(format, o.as_ref()),
                Object::ConfigMap(o) => encode(format, o.as_ref()),
                Object::Pod(o) => encode(format, o.as_ref()),
                Object::EndpointSliceV1beta1(_) => unreachable!("typed cases only"),
            };
            let outcome = c
                .filter_object(format, &encoded)
                .unwrap_or_else(|e| panic!("{filter} {format:?}: {e}"));
            match (want, outcome) {
                (Verdict::Drop, Filtered::Dropped) => {}
                (Verdict::Mutated, Filtered::Mutated(bytes)) => {
                    let got = match object.kind() {
                        ObjectKind::Service => Object::Service(Box::new(
                            codec::decode_as::<Service>(format, &bytes).expect("service"),
                        )),
                        ObjectKind::EndpointSlice => Object::EndpointSlice(Box::new(
                            codec::decode_as::<EndpointSlice>(format, &bytes).expect("slice"),
                        )),
                        ObjectKind::ConfigMap => Object::ConfigMap(Box::new(
                            codec::decode_as::<ConfigMap>(format, &bytes).expect("cm"),
                        )),
                        ObjectKind::Pod => Object::Pod(Box::new(
                            codec::decode_as::<Pod>(format, &bytes).expect("pod"),
                        )),
                        ObjectKind::EndpointSliceV1beta1 => unreachable!("typed cases only"),
                    };
                    assert_eq!(
                        got, typed,
                        "{filter} {format:?}: wire result equals typed result"
                    );
                    assert_ne!(got, object, "{filter} {format:?}: the filter acted");
                }
                (want, got) => panic!("{filter} {format:?}: want {want:?}, got {got:?}"),
            }
        }
    }
}

#[test]
fn v1beta1_endpointslices_are_filtered_in_both_formats() {
    let inputs = TestInputs {
        services: vec![annotate(
            service("default", "web", "10.96.0.20", &[("http", 80)]),
            "openyurt.io/topologyKeys",
            "kubernetes.io/hostname",
        )],
        ..TestInputs::default()
    };
    let c = chain(&[FilterName::ServiceTopology], inputs);
    let item = serde_json::json!({
        "metadata": {"namespace": "default", "name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": ["10.0.0.1"], "topology": {"kubernetes.io/hostname": "node-1"}},
            {"addresses": ["10.0.0.2"], "topology": {"kubernetes.io/hostname": "node-2"}}
        ]
    });
    let api_version = "discovery.k8s.io/v1beta1";
    for format in FORMATS {
        let encoded = match format {
            Format::Json => serde_json::to_vec(&item).expect("json item"),
            Format::Protobuf => {
                codec::json_to_message(api_version, "EndpointSlice", &item).expect("pb item")
            }
        };
        let body = codec::build_list(
            format,
            api_version,
            "EndpointSliceList",
            &ListMeta::default(),
            &[&encoded],
        )
        .expect("list");
        let out = c.filter_list_body(format, Bytes::from(body));
        let parts = codec::split_list(format, &out).expect("split");
        let got = match format {
            Format::Json => {
                serde_json::from_slice::<serde_json::Value>(&out[parts.items[0].clone()])
                    .expect("json")
            }
            Format::Protobuf => {
                codec::message_to_json(api_version, "EndpointSlice", &out[parts.items[0].clone()])
                    .expect("pb")
            }
        };
        let hosts: Vec<&str> = got["endpoints"]
            .as_array()
            .expect("endpoints")
            .iter()
            .map(|e| {
                e["topology"]["kubernetes.io/hostname"]
                    .as_str()
                    .expect("hostname")
            })
            .collect();
        assert_eq!(hosts, vec!["node-1"], "{format:?}");
    }
}

#[test]
fn a_whole_watch_body_can_be_filtered_at_once() {
    let c = chain(&[FilterName::DiscardCloudService], TestInputs::default());
    for format in FORMATS {
        let lb = encode(format, &services()[2]);
        let body = watch_body(format, &[(EventType::Modified, lb.clone())]);
        let out = c.filter_body("watch", format, Bytes::from(body));
        assert_eq!(
            decode_events(format, &out),
            vec![(EventType::Deleted, lb)],
            "{format:?}"
        );
    }
}

/// Runs the streaming JSON list filter over `body` cut into `size`-byte chunks.
fn stream_list(c: &FilterChain, body: &[u8], size: usize) -> Vec<u8> {
    let mut f = c.json_list();
    let mut out = Vec::new();
    for chunk in body.chunks(size.max(1)) {
        out.extend_from_slice(&f.push(chunk));
    }
    out.extend_from_slice(&f.finish());
    out
}

#[test]
fn a_streamed_json_list_comes_out_as_the_whole_list_filter_gives_it() {
    let c = chain(
        &[FilterName::MasterService, FilterName::DiscardCloudService],
        TestInputs::default(),
    );
    let mut svcs = services();
    svcs.extend(services().into_iter().map(|mut s| {
        s.metadata.name = s.metadata.name.map(|n| format!("{n}-2"));
        s
    }));
    let bodies = [
        list(Format::Json, &svcs),
        // The discarded one first: no comma may lead the items.
        list(Format::Json, &[svcs[2].clone(), svcs[1].clone()]),
        list::<Service>(Format::Json, &[]),
        // Untouched items only: the same bytes.
        list(Format::Json, &svcs[1..2]),
    ];
    for body in &bodies {
        let whole = c.filter_list_body(Format::Json, Bytes::from(body.clone()));
        for size in [1, 5, 64, 1000, body.len()] {
            let streamed = stream_list(&c, body, size);
            assert_eq!(
                String::from_utf8_lossy(&streamed),
                String::from_utf8_lossy(&whole),
                "chunks of {size}"
            );
        }
    }
    let unchanged = &bodies[3];
    assert_eq!(
        stream_list(&c, unchanged, 7),
        *unchanged,
        "exact bytes kept"
    );
}

#[test]
fn a_streamed_list_the_chain_cannot_read_passes_through() {
    let c = chain(&FilterName::ALL, TestInputs::default());
    // A kind no filter handles, a Status, a Table, junk, a cut body.
    let cms = list(
        Format::Json,
        &[config_map("kube-system", "a", &[("k", "v")])],
    );
    let status = br#"{"kind":"Status","apiVersion":"v1","status":"Failure","code":404}"#.to_vec();
    let table = br#"{"kind":"Table","apiVersion":"meta.k8s.io/v1","columnDefinitions":[],"rows":[{"cells":["a"]}]}"#.to_vec();
    let junk = b"2026-01-01 log line\n".to_vec();
    let svcs = list(Format::Json, &services());
    let cut = svcs[..svcs.len() - 20].to_vec();
    for body in [cms, status, table, junk] {
        for size in [1, 9, body.len()] {
            assert_eq!(
                stream_list(&c, &body, size),
                body,
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
    }
    // Cut short: what was filtered went out; the client sees a cut list.
    let out = stream_list(&c, &cut, 50);
    assert!(serde_json::from_slice::<serde_json::Value>(&out).is_err());
    // Kind after the items: filtered whole at the end, still right.
    let mut late: serde_json::Value = serde_json::from_slice(&svcs).expect("json");
    let items = late["items"].take();
    let reordered = serde_json::to_vec(&serde_json::json!({
        "items": items, "kind": "ServiceList", "apiVersion": "v1", "metadata": {"resourceVersion": "555"}
    }))
    .expect("json");
    let _ = late;
    let streamed = stream_list(&c, &reordered, 13);
    let names: Vec<Service> = decode_list(Format::Json, &streamed);
    assert_eq!(
        names.iter().map(name_of).collect::<Vec<_>>(),
        vec!["kubernetes", "web"]
    );
}
