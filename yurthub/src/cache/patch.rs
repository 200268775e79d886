//! Offline updates applied to cached objects: JSON merge patch (RFC 7386),
//! JSON patch (RFC 6902), and the strategic merge patch cases kubelet sends
//! for status (lists of objects merged by their `type`/`name` key,
//! `$setElementOrder`/`$retainKeys` directives, `$patch: delete|replace`).

use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("unsupported patch type {0:?}")]
    UnsupportedType(String),
    #[error("invalid patch: {0}")]
    Invalid(String),
    #[error("json patch test failed at {0}")]
    TestFailed(String),
}

/// Applies a patch body of the given Content-Type to `target`.
pub fn apply(content_type: &str, target: &Value, patch: &[u8]) -> Result<Value, Error> {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let patch: Value = serde_json::from_slice(patch).map_err(|e| Error::Invalid(e.to_string()))?;
    match media.as_str() {
        "application/merge-patch+json" => Ok(merge(target, &patch)),
        "application/strategic-merge-patch+json" => Ok(strategic(target, &patch)),
        "application/json-patch+json" => json_patch(target, &patch),
        other => Err(Error::UnsupportedType(other.to_owned())),
    }
}

/// RFC 7386.
pub fn merge(target: &Value, patch: &Value) -> Value {
    let Value::Object(p) = patch else {
        return patch.clone();
    };
    let mut out = match target {
        Value::Object(t) => t.clone(),
        _ => Map::new(),
    };
    for (k, v) in p {
        if v.is_null() {
            out.remove(k);
        } else {
            let merged = merge(out.get(k).unwrap_or(&Value::Null), v);
            out.insert(k.clone(), merged);
        }
    }
    Value::Object(out)
}

/// Keys lists of objects are merged by, as the built-in types declare them
/// (`patchMergeKey`) for what node components patch.
const MERGE_KEYS: [&str; 5] = ["type", "name", "containerPort", "devicePath", "ip"];

/// A strategic merge patch without schema: maps merge recursively, lists
/// of objects merge by the first merge key all their elements carry, other
/// lists are replaced.
pub fn strategic(target: &Value, patch: &Value) -> Value {
    let Value::Object(p) = patch else {
        return patch.clone();
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut p = p.clone();
        p.remove("$patch");
        return Value::Object(p);
    }
    let mut out = match target {
        Value::Object(t) => t.clone(),
        _ => Map::new(),
    };
    for (k, v) in p {
        if k.starts_with('$') {
            continue; // $setElementOrder/..., $retainKeys, $deleteFromPrimitiveList/...
        }
        if v.is_null() {
            out.remove(k);
            continue;
        }
        let merged = match (out.get(k), v) {
            (Some(Value::Array(cur)), Value::Array(new)) => merge_list(cur, new),
            // Into nothing: `$patch: delete` entries delete nothing and must
            // not land in the object (kubelet sends them for old podIPs).
            (None | Some(Value::Null), Value::Array(new)) => merge_list(&[], new),
            (Some(cur), Value::Object(_)) => strategic(cur, v),
            (None, Value::Object(_)) => strategic(&Value::Null, v),
            _ => v.clone(),
        };
        out.insert(k.clone(), merged);
    }
    Value::Object(out)
}

fn merge_list(cur: &[Value], new: &[Value]) -> Value {
    let key = MERGE_KEYS.iter().find(|key| {
        !new.is_empty()
            && new
                .iter()
                .all(|e| e.get(**key).is_some() || e.get("$patch").is_some())
            && cur.iter().all(|e| e.get(**key).is_some())
    });
    let Some(key) = key else {
        return Value::Array(new.to_vec());
    };
    let mut out: Vec<Value> = cur.to_vec();
    for e in new {
        let id = e.get(*key);
        let pos = out.iter().position(|c| c.get(*key) == id);
        let delete = e.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                out.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => out[i] = strategic(&out[i], e),
            (None, false) => out.push(strategic(&Value::Null, e)),
        }
    }
    Value::Array(out)
}

/// RFC 6902.
pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, Error> {
    let Value::Array(ops) = patch else {
        return Err(Error::Invalid(
            "a json patch is an array of operations".into(),
        ));
    };
    let mut doc = target.clone();
    for op in ops {
        let name = op.get("op").and_then(Value::as_str).unwrap_or_default();
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Invalid("operation without path".into()))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| Error::Invalid(format!("{name} at {path} without value")))
        };
        let from = || {
            op.get("from")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::Invalid(format!("{name} at {path} without from")))
        };
        match name {
            "add" => add(&mut doc, path, value()?)?,
            "remove" => {
                remove(&mut doc, path)?;
            }
            "replace" => {
                remove(&mut doc, path)?;
                add(&mut doc, path, value()?)?;
            }
            "move" => {
                let v = remove(&mut doc, from()?)?;
                add(&mut doc, path, v)?;
            }
            "copy" => {
                let v = doc
                    .pointer(from()?)
                    .cloned()
                    .ok_or_else(|| Error::Invalid(format!("copy from missing {path}")))?;
                add(&mut doc, path, v)?;
            }
            "test" => {
                if doc.pointer(path) != Some(&value()?) {
                    return Err(Error::TestFailed(path.to_owned()));
                }
            }
            other => return Err(Error::Invalid(format!("unknown operation {other:?}"))),
        }
    }
    Ok(doc)
}

fn split(path: &str) -> Result<(String, String), Error> {
    let i = path
        .rfind('/')
        .ok_or_else(|| Error::Invalid(format!("bad path {path:?}")))?;
    let last = path[i + 1..].replace("~1", "/").replace("~0", "~");
    Ok((path[..i].to_owned(), last))
}

fn add(doc: &mut Value, path: &str, v: Value) -> Result<(), Error> {
    if path.is_empty() {
        *doc = v;
        return Ok(());
    }
    let (parent, last) = split(path)?;
    let missing = || Error::Invalid(format!("no parent for {path:?}"));
    match doc.pointer_mut(&parent).ok_or_else(missing)? {
        Value::Object(m) => {
            m.insert(last, v);
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(v);
            } else {
                let i: usize = last.parse().map_err(|_| missing())?;
                if i > a.len() {
                    return Err(missing());
                }
                a.insert(i, v);
            }
        }
        _ => return Err(missing()),
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, Error> {
    let (parent, last) = split(path)?;
    let missing = || Error::Invalid(format!("nothing at {path:?}"));
    match doc.pointer_mut(&parent).ok_or_else(missing)? {
        Value::Object(m) => m.remove(&last).ok_or_else(missing),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| missing())?;
            if i >= a.len() {
                return Err(missing());
            }
            Ok(a.remove(i))
        }
        _ => Err(missing()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merge_patch_sets_and_removes() {
        let t = json!({"a": 1, "b": {"c": 2, "d": 3}});
        let out = merge(&t, &json!({"b": {"c": null, "e": 4}, "f": [1]}));
        assert_eq!(out, json!({"a": 1, "b": {"d": 3, "e": 4}, "f": [1]}));
    }

    #[test]
    fn strategic_merge_of_pod_status_conditions() {
        let pod = json!({"status": {"phase": "Pending", "conditions": [
            {"type": "Ready", "status": "False"},
            {"type": "PodScheduled", "status": "True"}
        ]}});
        // What kubelet's status manager sends.
        let patch = json!({"metadata": {"uid": "u"}, "status": {
            "$setElementOrder/conditions": [{"type": "Ready"}, {"type": "PodScheduled"}],
            "conditions": [{"type": "Ready", "status": "True"}],
            "phase": "Running"
        }});
        let out = apply(
            "application/strategic-merge-patch+json",
            &pod,
            patch.to_string().as_bytes(),
        )
        .unwrap();
        assert_eq!(out["status"]["phase"], "Running");
        assert_eq!(
            out["status"]["conditions"][0],
            json!({"type": "Ready", "status": "True"})
        );
        assert_eq!(out["status"]["conditions"][1]["type"], "PodScheduled");
        assert!(out["status"].get("$setElementOrder/conditions").is_none());
        let del = json!({"status": {"conditions": [{"type": "Ready", "$patch": "delete"}]}});
        let out = strategic(&out, &del);
        assert_eq!(out["status"]["conditions"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn kubelet_pod_ip_change_replaces_the_address() {
        // kubelet's two-way strategic merge patch when a pod's IP changes.
        let patch = json!({"status": {
            "$setElementOrder/podIPs": [{"ip": "10.0.0.9"}],
            "podIPs": [{"ip": "10.0.0.9"}, {"$patch": "delete", "ip": "10.0.0.5"}],
            "podIP": "10.0.0.9"
        }});
        let pod = json!({"status": {"podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}]}});
        let out = strategic(&pod, &patch);
        assert_eq!(out["status"]["podIPs"], json!([{"ip": "10.0.0.9"}]));
        assert_eq!(out["status"]["podIP"], "10.0.0.9");
        // A pod whose cached status has no podIPs yet.
        let out = strategic(&json!({"status": {"phase": "Pending"}}), &patch);
        assert_eq!(out["status"]["podIPs"], json!([{"ip": "10.0.0.9"}]));
    }

    #[test]
    fn json_patch_operations() {
        let t = json!({"metadata": {"labels": {"a": "1"}}, "l": [1, 2]});
        let p = json!([
            {"op": "add", "path": "/metadata/labels/b", "value": "2"},
            {"op": "replace", "path": "/metadata/labels/a", "value": "x"},
            {"op": "remove", "path": "/l/0"},
            {"op": "add", "path": "/l/-", "value": 3},
            {"op": "test", "path": "/l/0", "value": 2}
        ]);
        let out = json_patch(&t, &p).unwrap();
        assert_eq!(
            out,
            json!({"metadata": {"labels": {"a": "x", "b": "2"}}, "l": [2, 3]})
        );
        let bad = json!([{"op": "test", "path": "/l/0", "value": 9}]);
        assert!(matches!(json_patch(&t, &bad), Err(Error::TestFailed(_))));
        assert!(apply("application/apply-patch+yaml", &t, b"{}").is_err());
    }
}
