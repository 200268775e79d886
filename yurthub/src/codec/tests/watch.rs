//! Watch streams in both formats: framing, partial chunks, limits and errors.

use prost::Message;
use serde_json::{Value, json};

use super::fixtures;
use crate::codec::{
    CodecError, EventType, Format, WatchDecoder, decode_watch_body, encode_watch_event, object_info,
};

fn objects() -> Vec<Value> {
    let pod = fixtures::all()
        .into_iter()
        .find(|f| f.kind == "Pod")
        .expect("pod")
        .json;
    let mut modified = pod.clone();
    modified["metadata"]["resourceVersion"] = json!("184468");
    let bookmark = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"resourceVersion": "184470",
        "annotations": {"k8s.io/initial-events-end": "true"}}});
    let expired = json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
        "message": "too old resource version: 1 (184467)", "reason": "Expired", "code": 410});
    vec![pod, modified.clone(), modified, bookmark, expired]
}

const TYPES: [EventType; 5] = [
    EventType::Added,
    EventType::Modified,
    EventType::Deleted,
    EventType::Bookmark,
    EventType::Error,
];

fn stream(format: Format) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut body = Vec::new();
    let mut encoded_objects = Vec::new();
    for (event_type, object) in TYPES.iter().zip(objects()) {
        let obj = format
            .encode_object(
                object["apiVersion"].as_str().expect("av"),
                object["kind"].as_str().expect("kind"),
                &object,
            )
            .expect("encodes");
        body.extend(encode_watch_event(format, *event_type, &obj).expect("frame"));
        encoded_objects.push(obj);
    }
    (body, encoded_objects)
}

#[test]
fn events_decode_from_any_chunking() {
    for format in [Format::Json, Format::Protobuf] {
        let (body, objects) = stream(format);
        for chunk in [1usize, 2, 3, 4, 5, 7, 64, 1000, body.len()] {
            let mut decoder = WatchDecoder::new(format);
            let mut events = Vec::new();
            for piece in body.chunks(chunk) {
                decoder.push(piece);
                while let Some(event) = decoder
                    .next_event()
                    .unwrap_or_else(|e| panic!("{format:?}/{chunk}: {e}"))
                {
                    events.push(event);
                }
            }
            decoder.finish().expect("ends on a frame boundary");
            assert_eq!(decoder.buffered(), 0, "{format:?}/{chunk}");
            let types: Vec<EventType> = events.iter().map(|e| e.event_type).collect();
            assert_eq!(types, TYPES, "{format:?}/{chunk}");
            for (event, object) in events.iter().zip(&objects) {
                assert_eq!(
                    event.object(),
                    object.as_slice(),
                    "{format:?}/{chunk}: object bytes"
                );
                assert_eq!(event.object_bytes(), object.as_slice());
            }
            let info = object_info(format, events[1].object()).expect("info");
            assert_eq!(
                (info.name.as_ref(), info.resource_version_u64()),
                ("agent-x7k2p", Some(184_468))
            );
            assert!(
                object_info(format, events[4].object())
                    .expect("status")
                    .is_status()
            );
        }
    }
}

#[test]
fn protobuf_frames_match_apimachinery() {
    let (body, objects) = stream(Format::Protobuf);
    // first frame: 4-byte big-endian length, then a bare metav1.WatchEvent (no magic)
    let len = u32::from_be_bytes(body[..4].try_into().expect("4 bytes")) as usize;
    let frame = &body[4..4 + len];
    assert!(
        !crate::codec::is_enveloped(frame),
        "the event itself carries no envelope"
    );
    let event = k8s_pb::apimachinery::pkg::apis::meta::v1::WatchEvent::decode(frame)
        .expect("k8s-pb WatchEvent");
    assert_eq!(event.r#type.as_deref(), Some("ADDED"));
    let raw = event.object.and_then(|o| o.raw).expect("object.raw");
    assert!(
        crate::codec::is_enveloped(&raw),
        "the embedded object is enveloped"
    );
    assert_eq!(raw, objects[0]);
    assert_eq!(
        Format::Protobuf.watch_media_type(),
        "application/vnd.kubernetes.protobuf;stream=watch"
    );
}

#[test]
fn json_frames_are_newline_delimited_and_whitespace_tolerant() {
    let (body, _) = stream(Format::Json);
    assert_eq!(
        body.iter().filter(|b| **b == b'\n').count(),
        5,
        "one newline per event"
    );
    let first: Value =
        serde_json::from_slice(body.split(|b| *b == b'\n').next().expect("line")).expect("json");
    assert_eq!(first["type"], "ADDED");
    assert_eq!(first["object"]["metadata"]["name"], "agent-x7k2p");
    // other producers separate events differently
    let spaced = b"  {\"type\":\"DELETED\",\"object\":{\"kind\":\"Pod\",\"metadata\":{\"name\":\"}\"}}}\r\n\t{\"object\":{},\"type\":\"ADDED\"}";
    let events = decode_watch_body(Format::Json, spaced).expect("decodes");
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].event_type, EventType::Deleted);
    assert_eq!(
        object_info(Format::Json, events[0].object())
            .expect("info")
            .name,
        "}"
    );
    assert_eq!(events[1].object(), b"{}");
}

#[test]
fn bad_streams_fail_cleanly() {
    // truncated
    for format in [Format::Json, Format::Protobuf] {
        let (body, _) = stream(format);
        let err = decode_watch_body(format, &body[..body.len() - 3]).expect_err("truncated");
        assert!(
            matches!(err, CodecError::TruncatedStream { .. }),
            "{format:?}: {err}"
        );
    }
    // oversized frame
    let (body, _) = stream(Format::Protobuf);
    let mut decoder = WatchDecoder::with_max_frame(Format::Protobuf, 100);
    decoder.push(&body);
    assert!(matches!(
        decoder.next_event(),
        Err(CodecError::FrameTooLarge { .. })
    ));
    let (body, _) = stream(Format::Json);
    let mut decoder = WatchDecoder::with_max_frame(Format::Json, 100);
    decoder.push(&body[..150]);
    assert!(matches!(
        decoder.next_event(),
        Err(CodecError::FrameTooLarge { .. })
    ));
    // unknown type, missing object, not an object
    assert!(matches!(
        decode_watch_body(Format::Json, br#"{"type":"RENAMED","object":{}}"#),
        Err(CodecError::UnknownEventType(_))
    ));
    assert!(decode_watch_body(Format::Json, br#"{"type":"ADDED"}"#).is_err());
    assert!(decode_watch_body(Format::Json, b"[1]").is_err());
    // objects of the wrong format are refused when encoding
    assert!(matches!(
        encode_watch_event(Format::Protobuf, EventType::Added, b"{}"),
        Err(CodecError::MissingMagic)
    ));
    assert!(encode_watch_event(Format::Json, EventType::Added, b"[]").is_err());
}

#[test]
fn whitespace_between_json_events_does_not_accumulate() {
    let mut decoder = WatchDecoder::new(Format::Json);
    for _ in 0..1000 {
        decoder.push(b"\n");
        assert!(decoder.next_event().expect("whitespace is fine").is_none());
    }
    assert_eq!(decoder.buffered(), 0);
    decoder.finish().expect("idle");
}
