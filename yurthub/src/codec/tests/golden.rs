//! Conformance against the Go encoders: kubernetes/api keeps, for every kind, the JSON
//! and protobuf encodings of one fuzzed object (`testdata/<version>/<group>.<version>.<Kind>.{json,pb}`,
//! written by its round-trip tests). Every field is set there, so this checks every
//! field number, JSON name and special form of every kind against Go.
//!
//! The fixtures are vendored in `yurthub/testdata/k8s.io-api/` (Apache-2.0, see the
//! LICENSE and README there): the pairs for the kinds this codec's schema knows, from
//! the kubernetes/api release matching k8s-pb's Kubernetes version. Every vendored pair
//! must be checked: a fixture the codec cannot read fails the test.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

use crate::codec::{Format, to_json, to_protobuf};

/// Differences between two JSON values, as `path: ours vs go` lines.
pub(crate) fn json_diff(path: &str, ours: &Value, go: &Value, out: &mut Vec<String>) {
    match (ours, go) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                match b.get(k) {
                    Some(vb) => json_diff(&format!("{path}.{k}"), va, vb, out),
                    None => out.push(format!("{path}.{k}: only ours ({})", short(va))),
                }
            }
            for (k, vb) in b {
                if !a.contains_key(k) {
                    out.push(format!("{path}.{k}: only go ({})", short(vb)));
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (va, vb)) in a.iter().zip(b).enumerate() {
                json_diff(&format!("{path}[{i}]"), va, vb, out);
            }
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        _ if ours == go => {}
        _ => out.push(format!("{path}: {} vs {}", short(ours), short(go))),
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 80 {
        format!("{}...", &s[..80])
    } else {
        s
    }
}

/// Fields newer than the k8s-pb release the schema comes from: Go fills them in the
/// fixtures, the schema cannot name them (the generator lists them as `json-only`).
const KNOWN_GAPS: &[(&str, &str)] = &[
    ("storage.k8s.io.v1.CSINode.after_roundtrip", ".status"),
    ("storage.k8s.io.v1beta1.CSINode.after_roundtrip", ".status"),
];

/// The vendored fixtures.
fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/k8s.io-api")
}

#[test]
fn go_fixtures_convert_both_ways() {
    let dir = fixtures_dir();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "pb") && p.with_extension("json").exists())
        .collect();
    entries.sort();
    assert!(
        entries.len() > 100,
        "only {} fixtures in {}",
        entries.len(),
        dir.display()
    );

    let mut unknown = Vec::new();
    let mut untyped = Vec::new();
    let mut json_mismatch: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut pb_mismatch = Vec::new();
    let mut checked = 0;
    for pb_path in &entries {
        let name = pb_path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("name")
            .to_owned();
        let pb = std::fs::read(pb_path).expect("read pb");
        let go_json: Value = serde_json::from_slice(
            &std::fs::read(pb_path.with_extension("json")).expect("read json"),
        )
        .expect("json");
        if crate::codec::parse_envelope(&pb)
            .expect("envelope")
            .kind
            .is_empty()
        {
            // Go's test encoded this one without a kind (core.v1.WatchEvent); nothing
            // on the wire looks like that.
            untyped.push(name);
            continue;
        }
        let ours = match to_json(&pb) {
            Ok(v) => v,
            Err(crate::codec::CodecError::UnknownKind { .. }) => {
                unknown.push(name);
                continue;
            }
            Err(e) => panic!("{name}: protobuf → json failed: {e}"),
        };
        checked += 1;
        let mut diffs = Vec::new();
        json_diff("", &ours, &go_json, &mut diffs);
        diffs.retain(|d| {
            !KNOWN_GAPS
                .iter()
                .any(|(fixture, path)| name == *fixture && d.starts_with(path))
        });
        if !diffs.is_empty() {
            json_mismatch.insert(name.clone(), diffs);
        }
        let api_version = go_json["apiVersion"].as_str().expect("apiVersion");
        let kind = go_json["kind"].as_str().expect("kind");
        let ours_pb = to_protobuf(api_version, kind, &go_json)
            .unwrap_or_else(|e| panic!("{name}: json → protobuf failed: {e}"));
        if ours_pb != pb && !KNOWN_GAPS.iter().any(|(fixture, _)| name == *fixture) {
            // Equal after a round trip through our decoder means only encoding choices
            // differ (e.g. Go writing an empty message for a zero time).
            let back = Format::Protobuf
                .decode_object(&ours_pb)
                .expect("decode ours");
            let mut d = Vec::new();
            json_diff("", &back, &ours, &mut d);
            pb_mismatch.push(format!(
                "{name}: {} vs {} bytes; semantic diffs: {d:?}",
                ours_pb.len(),
                pb.len()
            ));
        }
    }
    let report = format!(
        "checked {checked}, no schema for {unknown:?}, no kind in envelope {untyped:?}\njson mismatches:\n{}\nprotobuf byte mismatches:\n{}",
        json_mismatch
            .iter()
            .map(|(k, v)| format!("  {k}: {v:?}"))
            .collect::<Vec<_>>()
            .join("\n"),
        pb_mismatch.join("\n"),
    );
    println!("{report}");
    assert!(
        json_mismatch.is_empty() && pb_mismatch.is_empty() && unknown.is_empty(),
        "{report}"
    );
    assert_eq!(
        checked,
        entries.len(),
        "every vendored fixture is checked: {report}"
    );
}
