//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and a
//! strategic merge patch that knows the merge keys of the built-in lists
//! node agents patch (containers, conditions, addresses, taints, ...) and
//! the `$patch`, `$retainKeys`, `$setElementOrder` and
//! `$deleteFromPrimitiveList` directives.

use serde_json::{Map, Value};

/// Supported patch types by Content-Type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct.split(';').next().map(str::trim) {
            Some("application/json-patch+json") => Some(PatchType::Json),
            Some("application/merge-patch+json") => Some(PatchType::Merge),
            Some("application/strategic-merge-patch+json") => Some(PatchType::Strategic),
            Some("application/apply-patch+yaml") | Some("application/apply-patch+cbor") => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}

/// RFC 7386.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// RFC 6902. Errors carry the apiserver's wording where it matters.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), String> {
    let ops = patch
        .as_array()
        .ok_or("json patch must be an array of operations")?;
    for op in ops {
        let kind = op
            .get("op")
            .and_then(Value::as_str)
            .ok_or("operation missing 'op'")?;
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or("operation missing 'path'")?;
        match kind {
            "add" => add(target, path, value_of(op)?)?,
            "remove" => {
                remove(target, path)?;
            }
            "replace" => {
                remove(target, path)?;
                add(target, path, value_of(op)?)?;
            }
            "move" => {
                let from = op
                    .get("from")
                    .and_then(Value::as_str)
                    .ok_or("move without 'from'")?;
                let v = remove(target, from)?;
                add(target, path, v)?;
            }
            "copy" => {
                let from = op
                    .get("from")
                    .and_then(Value::as_str)
                    .ok_or("copy without 'from'")?;
                let v = target
                    .pointer(from)
                    .cloned()
                    .ok_or_else(|| format!("copy from missing path {from}"))?;
                add(target, path, v)?;
            }
            "test" => {
                let want = value_of(op)?;
                if target.pointer(path) != Some(&want) {
                    return Err(format!("testing value {path} failed"));
                }
            }
            other => return Err(format!("Unexpected kind: {other}")),
        }
    }
    Ok(())
}

fn value_of(op: &Value) -> Result<Value, String> {
    op.get("value")
        .cloned()
        .ok_or_else(|| "operation missing 'value'".to_owned())
}

fn split_pointer(path: &str) -> Result<(String, String), String> {
    let idx = path
        .rfind('/')
        .ok_or_else(|| format!("invalid path {path:?}"))?;
    let last = path[idx + 1..].replace("~1", "/").replace("~0", "~");
    Ok((path[..idx].to_owned(), last))
}

fn add(target: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *target = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    let parent = target
        .pointer_mut(&parent)
        .ok_or_else(|| format!("add operation does not apply: doc is missing path: {path:?}"))?;
    match parent {
        Value::Object(m) => {
            m.insert(last, value);
            Ok(())
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(value);
                return Ok(());
            }
            let i: usize = last
                .parse()
                .map_err(|_| format!("invalid array index {last:?}"))?;
            if i > a.len() {
                return Err(format!(
                    "add operation does not apply: index out of bounds: {i}"
                ));
            }
            a.insert(i, value);
            Ok(())
        }
        _ => Err(format!(
            "add operation does not apply: doc is missing path: {path:?}"
        )),
    }
}

fn remove(target: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split_pointer(path)?;
    let missing = || format!("remove operation does not apply: doc is missing path: {path:?}");
    match target.pointer_mut(&parent).ok_or_else(missing)? {
        Value::Object(m) => m.remove(&last).ok_or_else(missing),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| missing())?;
            if i < a.len() {
                Ok(a.remove(i))
            } else {
                Err(missing())
            }
        }
        _ => Err(missing()),
    }
}

/// The merge key of a list field in built-in types (patchMergeKey), or
/// None for lists that are replaced atomically.
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "volumeMounts"
        | "imagePullSecrets"
        | "containerStatuses"
        | "initContainerStatuses"
        | "ephemeralContainerStatuses"
        | "resourceClaims" => "name",
        "volumeDevices" => "devicePath",
        "conditions" => "type",
        "addresses" => "type",
        "taints" | "tolerations" => "key",
        "ownerReferences" => "uid",
        "ports" => "containerPort",
        "podIPs" | "hostIPs" => "ip",
        "images" => "names",
        _ => return None,
    })
}

/// Primitive lists whose patch strategy is "merge" (union).
fn merges_primitives(field: &str) -> bool {
    matches!(field, "finalizers")
}

/// Strategic merge patch for built-in types.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    let (Value::Object(t), Value::Object(p)) = (&mut *target, patch) else {
        *target = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replaced = p.clone();
        replaced.remove("$patch");
        *t = replaced;
        return;
    }
    if p.get("$patch").and_then(Value::as_str) == Some("delete") {
        t.clear();
        return;
    }
    if let Some(retain) = p.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        t.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, v) in p {
        if k.starts_with("$setElementOrder/") || k == "$retainKeys" || k == "$patch" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(del)) = (t.get_mut(field), v) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match (t.get_mut(k), v) {
            (Some(Value::Array(existing)), Value::Array(items)) => {
                if let Some(key) = merge_key(k).filter(|_| items.iter().all(Value::is_object)) {
                    merge_keyed_list(existing, items, key);
                } else if merges_primitives(k) {
                    for item in items {
                        if !existing.contains(item) {
                            existing.push(item.clone());
                        }
                    }
                } else {
                    *existing = items.clone();
                }
            }
            (Some(existing @ Value::Object(_)), Value::Object(_)) => strategic_merge(existing, v),
            _ => {
                let mut fresh = v.clone();
                strip_directives(&mut fresh);
                t.insert(k.clone(), fresh);
            }
        }
    }
}

fn merge_keyed_list(existing: &mut Vec<Value>, items: &[Value], key: &str) {
    for item in items {
        let id = item.get(key);
        let directive = item.get("$patch").and_then(Value::as_str);
        let pos = existing
            .iter()
            .position(|e| e.get(key) == id && id.is_some());
        match (pos, directive) {
            (Some(i), Some("delete")) => {
                existing.remove(i);
            }
            (None, Some("delete")) => {}
            (Some(i), Some("replace")) => {
                let mut v = item.clone();
                strip_directives(&mut v);
                existing[i] = v;
            }
            (Some(i), _) => strategic_merge(&mut existing[i], item),
            (None, _) => {
                let mut v = item.clone();
                strip_directives(&mut v);
                existing.push(v);
            }
        }
    }
}

fn strip_directives(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !k.starts_with('$'));
            m.values_mut().for_each(strip_directives);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_directives),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut doc, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}}));
    }

    #[test]
    fn json_patch_ops() {
        let mut doc = json!({"metadata": {"labels": {"a": "1"}}, "list": [1, 2]});
        json_patch(
            &mut doc,
            &json!([
                {"op": "add", "path": "/metadata/labels/b", "value": "2"},
                {"op": "remove", "path": "/metadata/labels/a"},
                {"op": "add", "path": "/list/-", "value": 3},
                {"op": "replace", "path": "/list/0", "value": 0},
                {"op": "test", "path": "/list/2", "value": 3}
            ]),
        )
        .expect("applies");
        assert_eq!(
            doc,
            json!({"metadata": {"labels": {"b": "2"}}, "list": [0, 2, 3]})
        );
        assert!(json_patch(&mut doc, &json!([{"op": "remove", "path": "/nope"}])).is_err());
    }

    #[test]
    fn strategic_merge_by_key() {
        let mut node = json!({"status": {"conditions": [
            {"type": "Ready", "status": "False"},
            {"type": "MemoryPressure", "status": "False"}
        ]}, "metadata": {"finalizers": ["a"]}});
        strategic_merge(
            &mut node,
            &json!({
                "status": {"conditions": [{"type": "Ready", "status": "True"}],
                           "$setElementOrder/conditions": [{"type": "Ready"}]},
                "metadata": {"finalizers": ["b"]}
            }),
        );
        assert_eq!(
            node["status"]["conditions"][0],
            json!({"type": "Ready", "status": "True"})
        );
        assert_eq!(node["status"]["conditions"][1]["type"], "MemoryPressure");
        assert_eq!(node["metadata"]["finalizers"], json!(["a", "b"]));
        strategic_merge(
            &mut node,
            &json!({"status": {"conditions": [{"type": "Ready", "$patch": "delete"}]}}),
        );
        assert_eq!(
            node["status"]["conditions"].as_array().map(Vec::len),
            Some(1)
        );
    }
}
