//! Metadata extraction, list splitting/building and PartialObjectMetadata, in both
//! formats.

use std::borrow::Cow;

use prost::Message;
use serde_json::{Value, json};

use super::fixtures;
use crate::codec::{
    CodecError, Format, ListMeta, build_list, envelope, item_info, json_with_type_meta,
    list_frames, object_head, object_info, partial_object_metadata, split_list, to_json,
    to_protobuf,
};

fn pod_json() -> Value {
    fixtures::all()
        .into_iter()
        .find(|f| f.kind == "Pod")
        .expect("pod fixture")
        .json
}

fn pod_named(name: &str, rv: &str) -> Value {
    let mut pod = pod_json();
    pod["metadata"]["name"] = json!(name);
    pod["metadata"]["resourceVersion"] = json!(rv);
    pod
}

fn body(format: Format, value: &Value) -> Vec<u8> {
    let kind = value["kind"].as_str().expect("kind");
    let api_version = value["apiVersion"].as_str().expect("apiVersion");
    format
        .encode_object(api_version, kind, value)
        .expect("encodes")
}

#[test]
fn object_info_reads_the_same_metadata_from_both_formats() {
    let pod = pod_json();
    for format in [Format::Json, Format::Protobuf] {
        let bytes = body(format, &pod);
        let info = object_info(format, &bytes).unwrap_or_else(|e| panic!("{format:?}: {e}"));
        assert_eq!(info.api_version, "v1", "{format:?}");
        assert_eq!(info.kind, "Pod");
        assert_eq!(info.name, "agent-x7k2p");
        assert_eq!(info.namespace, "kube-system");
        assert_eq!(info.uid, "5f6c8a1e-3b4d-4c2a-9e7f-0a1b2c3d4e5f");
        assert_eq!(info.resource_version_u64(), Some(184_467));
        assert_eq!(info.node_name, "edge-node-1");
        assert!(info.deleting);
        assert!(!info.is_status());
        assert_eq!(info.label("tier"), Some("edge"));
        assert_eq!(info.label("app.kubernetes.io/name"), Some("agent-x7k2p"));
        assert_eq!(info.labels.len(), 2);
        // strings borrow from the body
        assert!(
            matches!(info.name, Cow::Borrowed(_)),
            "{format:?} name was copied"
        );
    }
}

#[test]
fn object_head_reads_type_and_metadata_and_stops_there() {
    let pod = pod_json();
    for format in [Format::Json, Format::Protobuf] {
        let bytes = body(format, &pod);
        let head = object_head(format, &bytes).unwrap_or_else(|e| panic!("{format:?}: {e}"));
        let full = object_info(format, &bytes).expect("parses");
        assert_eq!(
            (&head.api_version, &head.kind, &head.name, &head.namespace),
            (&full.api_version, &full.kind, &full.name, &full.namespace),
            "{format:?}"
        );
        assert_eq!(head.resource_version, full.resource_version, "{format:?}");
        assert_eq!(head.labels, full.labels, "{format:?}");
    }
    // JSON: what follows `metadata` is not read (so not checked either).
    let head = object_head(
        Format::Json,
        br#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"a","namespace":"n","resourceVersion":"7"},"spec":{"nodeName":"x"} !!"#,
    )
    .expect("head");
    assert_eq!(
        (&*head.name, &*head.namespace, &*head.resource_version),
        ("a", "n", "7")
    );
    assert_eq!(head.node_name, "", "spec is after metadata: not read");
    // Metadata itself is read strictly.
    assert!(object_head(Format::Json, br#"{"metadata":{"name":"a""#).is_err());
    // No metadata: nothing identifies the object.
    let head = object_head(Format::Json, br#"{"kind":"Status","status":"Failure"}"#).expect("head");
    assert!(head.is_status() && head.name.is_empty());
}

#[test]
fn object_info_handles_escapes_nulls_statuses_and_cluster_objects() {
    let json = br#"{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"a\u0062c","namespace":null,
        "labels":{"k\"q":"v\\w"},"annotations":{"spec":{"nodeName":"decoy"}}},"data":{"spec":"x"},"spec":null}"#;
    let info = object_info(Format::Json, json).expect("parses");
    assert_eq!(info.name, "abc");
    assert!(matches!(info.name, Cow::Owned(_)));
    assert_eq!(info.namespace, "");
    assert_eq!(info.label("k\"q"), Some("v\\w"));
    assert_eq!(info.node_name, "", "only top-level spec.nodeName counts");

    let status = json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "reason": "NotFound", "code": 404});
    for format in [Format::Json, Format::Protobuf] {
        let bytes = body(format, &status);
        let info = object_info(format, &bytes).expect("status");
        assert!(info.is_status(), "{format:?}");
        assert_eq!(info.name, "");
    }
    let node = fixtures::all()
        .into_iter()
        .find(|f| f.kind == "Node")
        .expect("node")
        .json;
    let bytes = body(Format::Protobuf, &node);
    let info = object_info(Format::Protobuf, &bytes).expect("node");
    assert_eq!(
        (
            info.name.as_ref(),
            info.namespace.as_ref(),
            info.node_name.as_ref()
        ),
        ("edge-node-1", "", "")
    );

    assert!(object_info(Format::Json, b"{\"metadata\":").is_err());
    assert!(object_info(Format::Json, b"[]").is_err());
    assert!(matches!(
        object_info(Format::Protobuf, b"{}"),
        Err(CodecError::MissingMagic)
    ));
    let info = object_info(Format::Json, b" {} ").expect("empty object");
    assert_eq!(info, Default::default());
}

/// Pods a, b, c (RVs 10, 12, 11) and list metadata with every field set.
fn three_pods_and_full_meta() -> ([Value; 3], ListMeta<'static>) {
    let pods = [
        pod_named("a", "10"),
        pod_named("b", "12"),
        pod_named("c", "11"),
    ];
    let meta = ListMeta {
        resource_version: Cow::Borrowed("12"),
        continue_token: Cow::Borrowed("eyJ2IjoibWV0YS5rOHMuaW8vdjEifQ"),
        remaining_item_count: Some(7),
    };
    (pods, meta)
}

#[test]
fn lists_split_and_rebuild_in_both_formats() {
    let (pods, meta) = three_pods_and_full_meta();
    for format in [Format::Json, Format::Protobuf] {
        let items: Vec<Vec<u8>> = pods.iter().map(|p| body(format, p)).collect();
        let refs: Vec<&[u8]> = items.iter().map(Vec::as_slice).collect();
        let list = build_list(format, "v1", "PodList", &meta, &refs).expect("builds");
        let parts = split_list(format, &list).unwrap_or_else(|e| panic!("{format:?}: {e}"));
        assert_eq!(
            (
                parts.api_version.as_ref(),
                parts.kind.as_ref(),
                parts.item_kind()
            ),
            ("v1", "PodList", "Pod")
        );
        assert_eq!(parts.meta, meta, "{format:?}");
        assert_eq!(parts.items.len(), 3);
        let names: Vec<String> = parts
            .items
            .iter()
            .map(|r| {
                item_info(format, &list[r.clone()], parts.item_kind())
                    .expect("item info")
                    .name
                    .into_owned()
            })
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        let rvs: Vec<u64> = parts
            .items
            .iter()
            .filter_map(|r| {
                item_info(format, &list[r.clone()], "Pod")
                    .ok()?
                    .resource_version_u64()
            })
            .collect();
        assert_eq!(rvs, [10, 12, 11]);
        // items come back byte-identical (protobuf: the envelope's raw message)
        for (range, item) in parts.items.iter().zip(&items) {
            let expected = match format {
                Format::Json => item.as_slice(),
                Format::Protobuf => crate::codec::parse_envelope(item).expect("env").raw,
            };
            assert_eq!(&list[range.clone()], expected);
        }
        // a rebuilt list from the split items is identical
        let again: Vec<&[u8]> = parts.items.iter().map(|r| &list[r.clone()]).collect();
        assert_eq!(
            build_list(format, "v1", "PodList", &parts.meta, &again).expect("rebuilds"),
            list
        );
    }
}

#[test]
fn list_frames_are_the_built_list_in_pieces_for_any_frame_size() {
    let (pods, meta) = three_pods_and_full_meta();
    for format in [Format::Json, Format::Protobuf] {
        let mut items: Vec<Vec<u8>> = pods.iter().map(|p| body(format, p)).collect();
        match format {
            // whitespace around an object is not part of the list
            Format::Json => items[1] = [b"\n ", items[1].as_slice(), b" \n"].concat(),
            // bare messages and enveloped ones, mixed
            Format::Protobuf => {
                items[2] = crate::codec::parse_envelope(&items[2])
                    .expect("env")
                    .raw
                    .to_vec();
            }
        }
        let refs: Vec<&[u8]> = items.iter().map(Vec::as_slice).collect();
        let whole = build_list(format, "v1", "PodList", &meta, &refs).expect("builds");
        let largest = items.iter().map(Vec::len).max().unwrap_or(0) + 8;
        for frame in [1, 7, 100, largest, 4096, 1 << 20] {
            let frames =
                list_frames(format, "v1", "PodList", &meta, items.clone(), frame).expect("frames");
            assert_eq!(frames.encoded_len(), whole.len(), "{format:?} {frame}");
            let sent: Vec<bytes::Bytes> = frames.collect();
            assert_eq!(sent.concat(), whole, "{format:?} in frames of {frame}");
            assert!(sent.iter().all(|f| !f.is_empty()), "{format:?} {frame}");
            // a frame is over its size only when it holds a single item
            // (with the head or tail that shares it)
            let bound = frame.max(largest + 128);
            assert!(sent.iter().all(|f| f.len() <= bound), "{format:?} {frame}");
            if frame < whole.len() {
                assert!(sent.len() > 1, "{format:?} {frame}: one frame");
            }
        }
        let empty = list_frames::<Vec<u8>>(format, "v1", "PodList", &meta, vec![], 7)
            .expect("empty")
            .collect::<Vec<_>>()
            .concat();
        assert_eq!(
            empty,
            build_list(format, "v1", "PodList", &meta, &[]).expect("empty")
        );
    }
    // a bad item is refused before a byte is sent
    assert!(
        list_frames(
            Format::Json,
            "v1",
            "PodList",
            &meta_rv("1"),
            vec![b"[1]".to_vec()],
            64
        )
        .is_err()
    );
}

#[test]
fn list_frames_let_go_of_the_items_already_sent() {
    use std::cell::Cell;
    use std::rc::Rc;
    struct Counted(Vec<u8>, Rc<Cell<usize>>);
    impl AsRef<[u8]> for Counted {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }
    impl Drop for Counted {
        fn drop(&mut self) {
            self.1.set(self.1.get() + 1);
        }
    }
    let dropped = Rc::new(Cell::new(0));
    let item = body(Format::Json, &pod_named("a", "1"));
    let items: Vec<Counted> = (0..10)
        .map(|_| Counted(item.clone(), dropped.clone()))
        .collect();
    let mut frames = list_frames(
        Format::Json,
        "v1",
        "PodList",
        &meta_rv("1"),
        items,
        item.len() * 2,
    )
    .expect("frames");
    frames.next().expect("first frame");
    let after_one = dropped.get();
    assert!(
        (1..10).contains(&after_one),
        "{after_one} of 10 items dropped after the first frame"
    );
    assert!(frames.count() > 0, "more frames after the first");
    assert_eq!(dropped.get(), 10, "every item is dropped once sent");
}

fn meta_rv(rv: &str) -> ListMeta<'_> {
    ListMeta {
        resource_version: Cow::Borrowed(rv),
        ..Default::default()
    }
}

#[test]
fn built_lists_are_real_lists_for_json_and_k8s_pb() {
    let pods = [pod_named("a", "10"), pod_named("b", "12")];
    let meta = ListMeta {
        resource_version: Cow::Borrowed("12"),
        ..Default::default()
    };
    let json_items: Vec<Vec<u8>> = pods.iter().map(|p| body(Format::Json, p)).collect();
    let json_refs: Vec<&[u8]> = json_items.iter().map(Vec::as_slice).collect();
    let json_list: Value = serde_json::from_slice(
        &build_list(Format::Json, "v1", "PodList", &meta, &json_refs).expect("json"),
    )
    .expect("valid json");
    assert_eq!(json_list["metadata"], json!({"resourceVersion": "12"}));
    assert_eq!(json_list["items"][1]["metadata"]["name"], "b");

    let pb_items: Vec<Vec<u8>> = pods.iter().map(|p| body(Format::Protobuf, p)).collect();
    let pb_refs: Vec<&[u8]> = pb_items.iter().map(Vec::as_slice).collect();
    let pb_list = build_list(Format::Protobuf, "v1", "PodList", &meta, &pb_refs).expect("pb");
    let typed: k8s_pb::api::core::v1::PodList =
        crate::codec::decode_prost(&pb_list).expect("k8s-pb PodList");
    assert_eq!(
        typed
            .metadata
            .as_ref()
            .and_then(|m| m.resource_version.as_deref()),
        Some("12")
    );
    assert_eq!(
        typed.items[1]
            .metadata
            .as_ref()
            .and_then(|m| m.name.as_deref()),
        Some("b")
    );
    // the two list bodies say the same thing (items carry apiVersion/kind only in JSON)
    let mut from_pb = to_json(&pb_list).expect("decodes");
    let mut from_json = json_list.clone();
    for list in [&mut from_pb, &mut from_json] {
        for item in list["items"].as_array_mut().expect("items") {
            let obj = item.as_object_mut().expect("object");
            obj.remove("apiVersion");
            obj.remove("kind");
        }
    }
    let mut diffs = Vec::new();
    super::golden::json_diff("", &from_pb, &from_json, &mut diffs);
    diffs.retain(|d| !d.contains(": only go ([])")); // empty arrays do not survive protobuf
    assert!(diffs.is_empty(), "{diffs:#?}");

    // empty lists
    for format in [Format::Json, Format::Protobuf] {
        let empty = build_list(format, "v1", "PodList", &ListMeta::default(), &[]).expect("empty");
        let parts = split_list(format, &empty).expect("splits");
        assert!(
            parts.items.is_empty() && parts.meta == ListMeta::default(),
            "{format:?}"
        );
    }
}

#[test]
fn non_lists_are_refused_by_split_list() {
    let status = json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 410, "reason": "Expired"});
    for format in [Format::Json, Format::Protobuf] {
        let err = split_list(format, &body(format, &status)).expect_err("status is not a list");
        assert!(
            matches!(&err, CodecError::NotAList { kind } if kind == "Status"),
            "{format:?}: {err}"
        );
    }
    assert!(
        split_list(Format::Json, br#"{"kind":"PodList","items":[1]}"#).is_err(),
        "items must be objects"
    );
}

#[test]
fn partial_object_metadata_keeps_only_metadata() {
    let pod = pod_json();
    for format in [Format::Json, Format::Protobuf] {
        let partial = partial_object_metadata(format, &body(format, &pod), "meta.k8s.io/v1")
            .expect("converts");
        let value = format.decode_object(&partial).expect("decodes");
        assert_eq!(value["kind"], "PartialObjectMetadata", "{format:?}");
        assert_eq!(value["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(value["metadata"]["name"], "agent-x7k2p");
        assert_eq!(value["metadata"]["labels"]["tier"], "edge");
        assert!(value.get("spec").is_none() && value.get("status").is_none());
    }
    let pb = partial_object_metadata(
        Format::Protobuf,
        &body(Format::Protobuf, &pod),
        "meta.k8s.io/v1",
    )
    .expect("pb");
    let typed: k8s_pb::apimachinery::pkg::apis::meta::v1::PartialObjectMetadata =
        crate::codec::decode_prost(&pb).expect("k8s-pb PartialObjectMetadata");
    assert_eq!(
        typed.metadata.and_then(|m| m.namespace).as_deref(),
        Some("kube-system")
    );
    // a list of them, from bare list items
    let raw = crate::codec::parse_envelope(&pb).expect("env").raw.to_vec();
    let list = build_list(
        Format::Protobuf,
        "meta.k8s.io/v1",
        "PartialObjectMetadataList",
        &ListMeta::default(),
        &[&raw],
    )
    .expect("list");
    let value = to_json(&list).expect("decodes");
    assert_eq!(value["items"][0]["metadata"]["name"], "agent-x7k2p");
}

#[test]
fn type_meta_is_spliced_into_list_items() {
    let item = br#" { "metadata" : {"name":"a"} } "#;
    let out = json_with_type_meta(item, "v1", "Pod").expect("splices");
    let value: Value = serde_json::from_slice(&out).expect("valid");
    assert_eq!(
        value,
        json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "a"}})
    );
    let out = json_with_type_meta(b"{}", "apps/v1", "Deployment").expect("empty object");
    assert_eq!(
        serde_json::from_slice::<Value>(&out).expect("valid"),
        json!({"kind": "Deployment", "apiVersion": "apps/v1"})
    );
    let full = br#"{"apiVersion":"v1","kind":"Pod"}"#;
    assert_eq!(
        json_with_type_meta(full, "x", "y").expect("unchanged"),
        full
    );
    let half = br#"{"kind":"Pod","metadata":{}}"#;
    let value: Value =
        serde_json::from_slice(&json_with_type_meta(half, "v1", "Pod").expect("adds"))
            .expect("valid");
    assert_eq!(
        value,
        json!({"kind": "Pod", "apiVersion": "v1", "metadata": {}})
    );
}

#[test]
fn protobuf_items_can_be_enveloped_for_the_cache() {
    let pods = [pod_named("a", "10")];
    let items: Vec<Vec<u8>> = pods.iter().map(|p| body(Format::Protobuf, p)).collect();
    let list = build_list(
        Format::Protobuf,
        "v1",
        "PodList",
        &ListMeta::default(),
        &[&items[0]],
    )
    .expect("list");
    let parts = split_list(Format::Protobuf, &list).expect("split");
    let item = envelope(
        &parts.api_version,
        parts.item_kind(),
        &list[parts.items[0].clone()],
    );
    assert_eq!(
        item, items[0],
        "re-enveloped item equals the original object body"
    );
    // and an item converts to JSON with its kind
    let value = crate::codec::message_to_json("v1", "Pod", &list[parts.items[0].clone()])
        .expect("converts");
    assert_eq!(value["metadata"]["name"], "a");
    let back = crate::codec::json_to_message("v1", "Pod", &value).expect("encodes");
    assert_eq!(back, &list[parts.items[0].clone()]);
    let _ = to_protobuf("v1", "Pod", &value).expect("enveloped encode");
    let decoded =
        k8s_pb::api::core::v1::Pod::decode(&list[parts.items[0].clone()]).expect("k8s-pb");
    assert_eq!(decoded.metadata.and_then(|m| m.name).as_deref(), Some("a"));
}
