//! The incremental list splitter agrees with [`split_list`] however the body
//! is cut into chunks, and rebuilds JSON lists from its pieces.

use std::borrow::Cow;

use serde_json::{Value, json};

use super::fixtures;
use crate::codec::{CodecError, Format, ListMeta, ListPiece, ListStream, build_list, split_list};

fn pods(n: usize) -> Vec<Value> {
    let pod = fixtures::all()
        .into_iter()
        .find(|f| f.kind == "Pod")
        .expect("pod fixture")
        .json;
    (0..n)
        .map(|i| {
            let mut p = pod.clone();
            p["metadata"]["name"] = json!(format!("pod-{i}"));
            // Escapes and brackets inside strings must not end an item.
            p["metadata"]["annotations"] = json!({"note": format!("a \"quoted\" }}] {{[ \\ {i}")});
            p
        })
        .collect()
}

fn list(format: Format, n: usize) -> (Vec<u8>, ListMeta<'static>) {
    let meta = ListMeta {
        resource_version: Cow::Borrowed("4711"),
        continue_token: Cow::Borrowed("eyJ2IjoibWV0YS5rOHMuaW8vdjEifQ"),
        remaining_item_count: Some(3),
    };
    let items: Vec<Vec<u8>> = pods(n)
        .iter()
        .map(|p| format.encode_object("v1", "Pod", p).expect("encodes"))
        .collect();
    let refs: Vec<&[u8]> = items.iter().map(Vec::as_slice).collect();
    (
        build_list(format, "v1", "PodList", &meta, &refs).expect("builds"),
        meta,
    )
}

/// The splitter after a whole body, its items, and its verbatim bytes.
type Split = (ListStream, Vec<Vec<u8>>, Vec<u8>);

/// Feeds `body` in chunks of `size`; returns items and verbatim bytes.
fn run(format: Format, body: &[u8], size: usize) -> Result<Split, CodecError> {
    let mut s = ListStream::new(format, 1 << 20);
    let (mut items, mut verbatim) = (Vec::new(), Vec::new());
    for chunk in body.chunks(size) {
        s.push(chunk);
        while let Some(p) = s.next_piece()? {
            match p {
                ListPiece::Item(b) => items.push(b.to_vec()),
                ListPiece::Verbatim(b) => verbatim.extend_from_slice(&b),
            }
        }
    }
    if let Some(rest) = s.finish()? {
        verbatim.extend_from_slice(&rest);
    }
    Ok((s, items, verbatim))
}

#[test]
fn items_and_meta_match_split_list_for_every_chunking() {
    for format in [Format::Json, Format::Protobuf] {
        for n in [0, 1, 7] {
            let (body, meta) = list(format, n);
            let parts = split_list(format, &body).expect("splits");
            let want: Vec<&[u8]> = parts.items.iter().map(|r| &body[r.clone()]).collect();
            for size in [1, 2, 3, 7, 64, 1000, body.len()] {
                let (s, items, _) = run(format, &body, size)
                    .unwrap_or_else(|e| panic!("{format:?} n={n} size={size}: {e}"));
                assert_eq!(items.len(), want.len(), "{format:?} n={n} size={size}");
                for (got, want) in items.iter().zip(&want) {
                    assert_eq!(got.as_slice(), *want, "{format:?} n={n} size={size}");
                }
                assert_eq!(s.meta(), &meta, "{format:?} n={n} size={size}");
                assert_eq!(
                    (s.api_version(), s.kind(), s.item_kind()),
                    ("v1", "PodList", "Pod")
                );
                assert!(s.type_known());
                assert_eq!(s.items(), n);
            }
        }
    }
}

#[test]
fn json_pieces_rebuild_the_list_with_items_dropped() {
    let (body, _) = list(Format::Json, 5);
    let mut s = ListStream::new(Format::Json, 1 << 20);
    s.push(&body);
    let mut out = Vec::new();
    let mut kept = 0;
    let mut index = 0;
    while let Some(p) = s.next_piece().expect("piece") {
        match p {
            ListPiece::Verbatim(b) => out.extend_from_slice(&b),
            ListPiece::Item(b) => {
                // Keep the odd ones, as a filter that drops items would.
                if index % 2 == 1 {
                    if kept > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(&b);
                    kept += 1;
                }
                index += 1;
            }
        }
    }
    out.extend_from_slice(&s.finish().expect("complete").unwrap_or_default());
    let v: Value = serde_json::from_slice(&out).expect("the rebuilt list is json");
    let names: Vec<&str> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["pod-1", "pod-3"]);
    assert_eq!(v["metadata"]["resourceVersion"], "4711");
    assert_eq!(v["kind"], "PodList");
}

#[test]
fn metadata_after_the_items_and_null_items_are_read() {
    let body = br#" { "items" : [ {"a":1} , {"b":[2,{"c":"]"}]} ] , "kind":"PodList", "apiVersion":"v1", "metadata":{"resourceVersion":"9","x":[1,2]} } "#;
    let (s, items, verbatim) = run(Format::Json, body, 1).expect("splits");
    assert_eq!(
        items,
        [br#"{"a":1}"#.to_vec(), br#"{"b":[2,{"c":"]"}]}"#.to_vec()]
    );
    assert_eq!(s.meta().resource_version, "9");
    assert!(s.type_known());
    let mut rebuilt = verbatim.clone();
    rebuilt.retain(|b| !b.is_ascii_whitespace());
    assert!(
        rebuilt.starts_with(b"{\"items\":[]"),
        "{}",
        String::from_utf8_lossy(&verbatim)
    );

    let (s, items, _) = run(
        Format::Json,
        br#"{"kind":"PodList","apiVersion":"v1","metadata":{},"items":null}"#,
        5,
    )
    .expect("null items");
    assert!(items.is_empty());
    assert_eq!(s.kind(), "PodList");
}

#[test]
fn truncated_and_malformed_lists_are_errors() {
    for format in [Format::Json, Format::Protobuf] {
        let (body, _) = list(format, 3);
        for cut in [1, body.len() / 2, body.len() - 1] {
            assert!(
                run(format, &body[..cut], 16).is_err(),
                "{format:?} cut at {cut}"
            );
        }
    }
    for bad in [
        &b"[1,2]"[..],
        br#"{"items":[1]}"#,
        br#"{"items":{}}"#,
        br#"{"kind":"x"} x"#,
    ] {
        assert!(
            run(Format::Json, bad, 3).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    assert!(matches!(
        run(Format::Protobuf, b"nope....", 3),
        Err(CodecError::MissingMagic)
    ));
}

#[test]
fn an_item_over_the_bound_is_refused_while_it_arrives() {
    for format in [Format::Json, Format::Protobuf] {
        let (body, _) = list(format, 2);
        let mut s = ListStream::new(format, 200);
        let mut refused = false;
        for chunk in body.chunks(64) {
            s.push(chunk);
            match s.next_piece() {
                Err(CodecError::FrameTooLarge { .. }) => {
                    refused = true;
                    break;
                }
                Err(e) => panic!("{format:?}: {e}"),
                // The bound, one chunk, and the list's head held until
                // its first item is complete.
                Ok(_) => assert!(
                    s.buffered() < 200 + 64 + 256,
                    "{format:?} held {}",
                    s.buffered()
                ),
            }
        }
        assert!(refused, "{format:?}");
    }
}

#[test]
fn a_status_is_no_list_but_splits_cleanly() {
    let status =
        br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","code":410}"#;
    let (s, items, verbatim) = run(Format::Json, status, 4).expect("splits");
    assert!(items.is_empty());
    assert_eq!(s.kind(), "Status");
    assert_eq!(verbatim, status.to_vec());
}
