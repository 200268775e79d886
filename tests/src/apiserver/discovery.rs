//! Discovery: the legacy documents (APIVersions, APIGroupList, APIGroup,
//! APIResourceList) and aggregated discovery (APIGroupDiscoveryList,
//! apidiscovery.k8s.io v2 and v2beta1) chosen by content negotiation, as a
//! current kube-apiserver serves them on /api and /apis.

use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};

use super::Shared;
use super::negotiate::{self, DiscoveryEndpoint, Format, PlainEndpoint};
use super::registry::{Registry, ResourceType};
use super::response::{self, Body};
use super::route::ApiRequest;
use super::status::ApiError;

fn group_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    }
}

/// `GET /`: the list of served paths.
pub fn root_paths(registry: &Registry) -> Value {
    let mut paths = vec!["/api".to_owned(), "/api/v1".to_owned(), "/apis".to_owned()];
    for (group, versions) in registry.groups() {
        if group.is_empty() {
            continue;
        }
        paths.push(format!("/apis/{group}"));
        for v in versions {
            paths.push(format!("/apis/{group}/{v}"));
        }
    }
    paths.extend(["/healthz", "/livez", "/readyz", "/version"].map(str::to_owned));
    json!({"paths": paths})
}

fn resource_list(registry: &Registry, group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for t in registry.in_group_version(group, version) {
        let mut entry = json!({
            "name": t.resource,
            "singularName": t.singular,
            "namespaced": t.namespaced,
            "kind": t.kind,
            "verbs": t.verbs,
        });
        if !t.short_names.is_empty() {
            entry["shortNames"] = json!(t.short_names);
        }
        if !t.categories.is_empty() {
            entry["categories"] = json!(t.categories);
        }
        resources.push(entry);
        for s in &t.subresources {
            let mut sub = json!({
                "name": format!("{}/{}", t.resource, s.name),
                "singularName": "",
                "namespaced": t.namespaced,
                "kind": s.kind,
                "verbs": s.verbs,
            });
            if s.group != t.group || s.version != t.version {
                sub["group"] = json!(s.group);
                sub["version"] = json!(s.version);
            }
            resources.push(sub);
        }
    }
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version(group, version),
        "resources": resources,
    })
}

fn api_group(group: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": group_version(group, v), "version": v}))
        .collect();
    json!({"name": group, "versions": vs, "preferredVersion": vs.first().cloned().unwrap_or(Value::Null)})
}

fn aggregated_resource(t: &ResourceType) -> Value {
    let mut r = json!({
        "resource": t.resource,
        "responseKind": {"group": t.group, "version": t.version, "kind": t.kind},
        "scope": if t.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": t.singular,
        "verbs": t.verbs,
    });
    if !t.short_names.is_empty() {
        r["shortNames"] = json!(t.short_names);
    }
    if !t.categories.is_empty() {
        r["categories"] = json!(t.categories);
    }
    if !t.subresources.is_empty() {
        r["subresources"] = json!(
            t.subresources
                .iter()
                .map(|s| json!({
                    "subresource": s.name,
                    "responseKind": {"group": s.group, "version": s.version, "kind": s.kind},
                    "verbs": s.verbs,
                }))
                .collect::<Vec<_>>()
        );
    }
    r
}

/// APIGroupDiscoveryList for the core group (`legacy`) or all named groups.
fn aggregated(registry: &Registry, legacy: bool, version: &str) -> Value {
    let items: Vec<Value> = registry
        .groups()
        .into_iter()
        .filter(|(g, _)| g.is_empty() == legacy)
        .map(|(g, versions)| {
            let vs: Vec<Value> = versions
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = registry
                        .in_group_version(&g, v)
                        .iter()
                        .map(|t| aggregated_resource(t))
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            let metadata = if g.is_empty() {
                json!({"creationTimestamp": null})
            } else {
                json!({"name": g, "creationTimestamp": null})
            };
            json!({"metadata": metadata, "versions": vs})
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{version}"),
        "metadata": {},
        "items": items,
    })
}

/// Serves /api, /api/v1, /apis, /apis/<g>, /apis/<g>/<v>.
pub fn serve(
    shared: &Shared,
    req: &ApiRequest,
    group: Option<&str>,
    version: Option<&str>,
    legacy: bool,
) -> Response<Body> {
    let formats = vec![Format::Json, Format::Yaml];
    let accept = req.header(header::ACCEPT);
    let registry = &shared.registry;
    let (neg, body) = match (group, version) {
        (None, _) => {
            let neg = match negotiate::negotiate(accept, &DiscoveryEndpoint(formats), false) {
                Ok(n) => n,
                Err(e) => {
                    return response::error(&ApiError::not_acceptable(e.message()), None, None);
                }
            };
            let body = match &neg.conversion {
                Some(c) => aggregated(registry, legacy, &c.version),
                None if legacy => {
                    let port = shared.port.load(std::sync::atomic::Ordering::SeqCst);
                    json!({
                        "kind": "APIVersions",
                        "versions": ["v1"],
                        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": format!("127.0.0.1:{port}")}],
                    })
                }
                None => {
                    let groups: Vec<Value> = registry
                        .groups()
                        .into_iter()
                        .filter(|(g, _)| !g.is_empty())
                        .map(|(g, vs)| api_group(&g, &vs))
                        .collect();
                    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
                }
            };
            (neg, body)
        }
        (Some(g), v) => {
            let neg = match negotiate::negotiate(accept, &PlainEndpoint(formats), false) {
                Ok(n) => n,
                Err(e) => {
                    return response::error(&ApiError::not_acceptable(e.message()), None, None);
                }
            };
            let Some((_, versions)) = registry.groups().into_iter().find(|(name, _)| name == g)
            else {
                return response::error(&ApiError::no_route(), None, None);
            };
            let body = match v {
                None => {
                    let mut doc = api_group(g, &versions);
                    doc["kind"] = json!("APIGroup");
                    doc["apiVersion"] = json!("v1");
                    doc
                }
                Some(v) if versions.iter().any(|x| x == v) => resource_list(registry, g, v),
                Some(_) => return response::error(&ApiError::no_route(), None, None),
            };
            (neg, body)
        }
    };
    let mut resp = response::object(StatusCode::OK, &neg, None, &body, &req.headers);
    if neg.conversion.is_some() {
        // Aggregated discovery is cacheable by ETag like the real handler.
        let etag = format!("\"{:016X}\"", fnv(&body.to_string()));
        if let Ok(v) = HeaderValue::from_str(&etag) {
            resp.headers_mut().insert(header::ETAG, v);
        }
    }
    resp
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_resource_list_has_subresources() {
        let r = Registry::with_builtins();
        let list = resource_list(&r, "", "v1");
        let names: Vec<&str> = list["resources"]
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|x| x["name"].as_str())
            .collect();
        assert!(
            names.contains(&"pods")
                && names.contains(&"pods/status")
                && names.contains(&"serviceaccounts/token")
        );
        let token = list["resources"]
            .as_array()
            .expect("array")
            .iter()
            .find(|x| x["name"] == "serviceaccounts/token")
            .expect("token");
        assert_eq!(token["group"], "authentication.k8s.io");
    }

    #[test]
    fn aggregated_splits_core_and_groups() {
        let r = Registry::with_builtins();
        let core = aggregated(&r, true, "v2");
        assert_eq!(core["items"].as_array().map(Vec::len), Some(1));
        let groups = aggregated(&r, false, "v2");
        assert!(
            groups["items"]
                .as_array()
                .expect("items")
                .iter()
                .any(|g| g["metadata"]["name"] == "coordination.k8s.io")
        );
    }
}
