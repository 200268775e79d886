//! Server-side printing (`as=Table;g=meta.k8s.io;v=v1`) and
//! metadata-only responses (`as=PartialObjectMetadata[List]`). Custom
//! resources get the CRD convertor's Name/Age columns; built-ins with a
//! printer here get kube-apiserver's columns for that kind; the rest get
//! the generic registry's default convertor (Name, Created At).

use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::objects::meta;
use super::registry::ResourceType;
use super::status::ApiError;

const NAME_DESCRIPTION: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const CREATED_DESCRIPTION: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

/// What each row carries in `object` (TableOptions.includeObject).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(v: Option<&str>) -> Result<Self, ApiError> {
        match v.unwrap_or("") {
            "" | "Metadata" => Ok(Self::Metadata),
            "Object" => Ok(Self::Object),
            "None" => Ok(Self::None),
            other => Err(ApiError::bad_request(format!(
                "Unable to convert to Table as requested: includeObject: Unsupported value: {other:?}: supported values: \"Metadata\", \"None\", \"Object\""
            ))),
        }
    }
}

fn column(name: &str, typ: &str, format: &str, description: &str, priority: i64) -> Value {
    json!({"name": name, "type": typ, "format": format, "description": description, "priority": priority})
}

/// kubectl's duration.HumanDuration.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

fn age(obj: &Value) -> String {
    meta(obj)
        .get("creationTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
        .map(|t| human_duration((OffsetDateTime::now_utc() - t).whole_seconds()))
        .unwrap_or_else(|| "<unknown>".into())
}

fn name(obj: &Value) -> Value {
    json!(meta(obj).get("name").and_then(Value::as_str).unwrap_or(""))
}

fn created_at(obj: &Value) -> Value {
    match meta(obj).get("creationTimestamp").and_then(Value::as_str) {
        Some(t) => json!(t),
        None => json!("0001-01-01T00:00:00Z"),
    }
}

fn str_at<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn or_none(s: &str) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s.to_owned()
    }
}

fn len_at(obj: &Value, pointer: &str) -> usize {
    match obj.pointer(pointer) {
        Some(Value::Object(m)) => m.len(),
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    }
}

type Printer = (Vec<Value>, fn(&Value) -> Vec<Value>);

fn printer(rt: &ResourceType) -> Printer {
    let age_col = || column("Age", "string", "", CREATED_DESCRIPTION, 0);
    let name_col = || column("Name", "string", "name", NAME_DESCRIPTION, 0);
    if !rt.builtin {
        return (
            vec![
                name_col(),
                column("Age", "date", "", CREATED_DESCRIPTION, 0),
            ],
            |o| vec![name(o), created_at(o)],
        );
    }
    match (rt.group.as_str(), rt.resource.as_str()) {
        ("", "pods") => (
            vec![
                name_col(),
                column(
                    "Ready",
                    "string",
                    "",
                    "The aggregate readiness state of this pod for accepting traffic.",
                    0,
                ),
                column(
                    "Status",
                    "string",
                    "",
                    "The aggregate status of the containers in this pod.",
                    0,
                ),
                column(
                    "Restarts",
                    "string",
                    "",
                    "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
                    0,
                ),
                age_col(),
                column(
                    "IP",
                    "string",
                    "",
                    "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.",
                    1,
                ),
                column(
                    "Node",
                    "string",
                    "",
                    "NodeName is a request to schedule this pod onto a specific node.",
                    1,
                ),
                column(
                    "Nominated Node",
                    "string",
                    "",
                    "nominatedNodeName is set only when this pod preempts other pods on the node.",
                    1,
                ),
                column(
                    "Readiness Gates",
                    "string",
                    "",
                    "If specified, all readiness gates will be evaluated for pod readiness.",
                    1,
                ),
            ],
            print_pod,
        ),
        ("", "nodes") => (
            vec![
                name_col(),
                column("Status", "string", "", "The status of the node", 0),
                column("Roles", "string", "", "The roles of the node", 0),
                age_col(),
                column(
                    "Version",
                    "string",
                    "",
                    "Kubelet Version reported by the node.",
                    0,
                ),
                column(
                    "Internal-IP",
                    "string",
                    "",
                    "List of addresses reachable to the node.",
                    1,
                ),
                column(
                    "External-IP",
                    "string",
                    "",
                    "List of addresses reachable to the node.",
                    1,
                ),
                column(
                    "OS-Image",
                    "string",
                    "",
                    "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
                    1,
                ),
                column(
                    "Kernel-Version",
                    "string",
                    "",
                    "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
                    1,
                ),
                column(
                    "Container-Runtime",
                    "string",
                    "",
                    "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
                    1,
                ),
            ],
            print_node,
        ),
        ("", "namespaces") => (
            vec![
                name_col(),
                column("Status", "string", "", "The status of the namespace", 0),
                age_col(),
            ],
            |o| vec![name(o), json!(str_at(o, "/status/phase")), json!(age(o))],
        ),
        ("", "configmaps") => (
            vec![
                name_col(),
                column(
                    "Data",
                    "string",
                    "",
                    "Data contains the configuration data.",
                    0,
                ),
                age_col(),
            ],
            |o| {
                vec![
                    name(o),
                    json!(len_at(o, "/data") + len_at(o, "/binaryData")),
                    json!(age(o)),
                ]
            },
        ),
        ("", "secrets") => (
            vec![
                name_col(),
                column(
                    "Type",
                    "string",
                    "",
                    "Used to facilitate programmatic handling of secret data.",
                    0,
                ),
                column("Data", "string", "", "Data contains the secret data.", 0),
                age_col(),
            ],
            |o| {
                vec![
                    name(o),
                    json!(str_at(o, "/type")),
                    json!(len_at(o, "/data")),
                    json!(age(o)),
                ]
            },
        ),
        ("", "serviceaccounts") => (vec![name_col(), age_col()], |o| {
            vec![name(o), json!(age(o))]
        }),
        ("", "services") => (
            vec![
                name_col(),
                column(
                    "Type",
                    "string",
                    "",
                    "type determines how the Service is exposed.",
                    0,
                ),
                column(
                    "Cluster-IP",
                    "string",
                    "",
                    "clusterIP is the IP address of the service.",
                    0,
                ),
                column(
                    "External-IP",
                    "string",
                    "",
                    "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.",
                    0,
                ),
                column(
                    "Port(s)",
                    "string",
                    "",
                    "The ports that are exposed by this service.",
                    0,
                ),
                age_col(),
                column(
                    "Selector",
                    "string",
                    "",
                    "Route service traffic to pods with label keys and values matching this selector.",
                    1,
                ),
            ],
            print_service,
        ),
        ("coordination.k8s.io", "leases") => (
            vec![
                name_col(),
                column(
                    "Holder",
                    "string",
                    "",
                    "holderIdentity contains the identity of the holder of a current lease.",
                    0,
                ),
                age_col(),
            ],
            |o| {
                vec![
                    name(o),
                    json!(str_at(o, "/spec/holderIdentity")),
                    json!(age(o)),
                ]
            },
        ),
        _ => (
            vec![
                name_col(),
                column("Created At", "date", "", CREATED_DESCRIPTION, 0),
            ],
            |o| vec![name(o), created_at(o)],
        ),
    }
}

fn print_pod(o: &Value) -> Vec<Value> {
    let statuses = o
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array);
    let total = o
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let ready = statuses.map_or(0, |s| {
        s.iter()
            .filter(|c| c.get("ready") == Some(&json!(true)))
            .count()
    });
    let restarts: i64 = statuses.map_or(0, |s| {
        s.iter()
            .filter_map(|c| c.get("restartCount").and_then(Value::as_i64))
            .sum()
    });
    let mut reason = str_at(o, "/status/reason").to_owned();
    if reason.is_empty() {
        reason = str_at(o, "/status/phase").to_owned();
    }
    if let Some(waiting) = statuses
        .into_iter()
        .flatten()
        .find_map(|c| c.pointer("/state/waiting/reason").and_then(Value::as_str))
    {
        reason = waiting.to_owned();
    }
    if meta(o).get("deletionTimestamp").is_some() {
        reason = "Terminating".into();
    }
    vec![
        name(o),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts.to_string()),
        json!(age(o)),
        json!(or_none(str_at(o, "/status/podIP"))),
        json!(or_none(str_at(o, "/spec/nodeName"))),
        json!(or_none(str_at(o, "/status/nominatedNodeName"))),
        json!("<none>"),
    ]
}

fn print_node(o: &Value) -> Vec<Value> {
    let conditions = o.pointer("/status/conditions").and_then(Value::as_array);
    let ready = conditions
        .into_iter()
        .flatten()
        .find(|c| c.get("type") == Some(&json!("Ready")));
    let mut status = match ready.and_then(|c| c.get("status")).and_then(Value::as_str) {
        Some("True") => "Ready".to_owned(),
        Some(_) => "NotReady".to_owned(),
        None => "Unknown".to_owned(),
    };
    if o.pointer("/spec/unschedulable") == Some(&json!(true)) {
        status.push_str(",SchedulingDisabled");
    }
    let mut roles: Vec<String> = meta(o)
        .get("labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| {
            k.strip_prefix("node-role.kubernetes.io/")
                .map(str::to_owned)
        })
        .filter(|r| !r.is_empty())
        .collect();
    roles.sort();
    let addr = |t: &str| {
        o.pointer("/status/addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|a| a.get("type") == Some(&json!(t)))
            .and_then(|a| a.get("address"))
            .and_then(Value::as_str)
            .unwrap_or("<none>")
            .to_owned()
    };
    vec![
        name(o),
        json!(status),
        json!(if roles.is_empty() {
            "<none>".to_owned()
        } else {
            roles.join(",")
        }),
        json!(age(o)),
        json!(str_at(o, "/status/nodeInfo/kubeletVersion")),
        json!(addr("InternalIP")),
        json!(addr("ExternalIP")),
        json!(or_none(str_at(o, "/status/nodeInfo/osImage"))),
        json!(or_none(str_at(o, "/status/nodeInfo/kernelVersion"))),
        json!(or_none(str_at(
            o,
            "/status/nodeInfo/containerRuntimeVersion"
        ))),
    ]
}

fn print_service(o: &Value) -> Vec<Value> {
    let ports: Vec<String> = o
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(np) => format!("{port}:{np}/{proto}"),
                None => format!("{port}/{proto}"),
            }
        })
        .collect();
    let selector: Vec<String> = o
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    vec![
        name(o),
        json!(str_at(o, "/spec/type")),
        json!(or_none(str_at(o, "/spec/clusterIP"))),
        json!("<none>"),
        json!(if ports.is_empty() {
            "<none>".to_owned()
        } else {
            ports.join(",")
        }),
        json!(age(o)),
        json!(if selector.is_empty() {
            "<none>".to_owned()
        } else {
            selector.join(",")
        }),
    ]
}

/// `meta.AsPartialObjectMetadata` in the requested meta.k8s.io version.
pub fn partial_object_metadata(obj: &Value, version: &str) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": format!("meta.k8s.io/{version}"),
        "metadata": meta(obj).clone(),
    })
}

/// A PartialObjectMetadataList with the list's metadata.
pub fn partial_object_metadata_list(items: &[&Value], list_meta: Value, version: &str) -> Value {
    json!({
        "kind": "PartialObjectMetadataList",
        "apiVersion": format!("meta.k8s.io/{version}"),
        "metadata": list_meta,
        "items": items.iter().map(|o| partial_object_metadata(o, version)).collect::<Vec<_>>(),
    })
}

/// Converts objects to a Table. `full_object` renders an item for
/// includeObject=Object (with apiVersion/kind).
pub fn to_table(
    rt: &ResourceType,
    items: &[&Value],
    table_meta: Value,
    include: IncludeObject,
    headers: bool,
    version: &str,
) -> Value {
    let (columns, print) = printer(rt);
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let initial_events_end = meta(o)
                .pointer("/annotations/k8s.io~1initial-events-end")
                .is_some_and(|v| v == "true");
            let object = match include {
                _ if initial_events_end => partial_object_metadata(o, version),
                IncludeObject::Object => {
                    let mut full = (*o).clone();
                    if let Some(m) = full.as_object_mut() {
                        m.insert("apiVersion".into(), json!(rt.api_version()));
                        m.insert("kind".into(), json!(rt.kind));
                    }
                    full
                }
                IncludeObject::Metadata => partial_object_metadata(o, version),
                IncludeObject::None => Value::Null,
            };
            json!({"cells": print(o), "object": object})
        })
        .collect();
    let mut table = Map::new();
    table.insert("kind".into(), json!("Table"));
    table.insert("apiVersion".into(), json!(format!("meta.k8s.io/{version}")));
    table.insert("metadata".into(), table_meta);
    table.insert(
        "columnDefinitions".into(),
        if headers { json!(columns) } else { Value::Null },
    );
    table.insert("rows".into(), json!(rows));
    Value::Object(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_match_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 60), "3h1m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86400), "3d");
    }

    #[test]
    fn crd_table_has_name_and_age_columns() {
        let rt = ResourceType::custom("example.com", "v1", "widgets", "Widget", true);
        let obj = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w1", "creationTimestamp": "2024-01-01T00:00:00Z"}});
        let t = to_table(
            &rt,
            &[&obj],
            json!({"resourceVersion": "7"}),
            IncludeObject::Metadata,
            true,
            "v1",
        );
        assert_eq!(t["columnDefinitions"][1]["name"], "Age");
        assert_eq!(t["columnDefinitions"][1]["type"], "date");
        assert_eq!(t["rows"][0]["cells"], json!(["w1", "2024-01-01T00:00:00Z"]));
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        let t = to_table(&rt, &[&obj], json!({}), IncludeObject::None, false, "v1");
        assert!(t["columnDefinitions"].is_null());
        assert!(t["rows"][0]["object"].is_null());
    }
}
