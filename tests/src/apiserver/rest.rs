//! The REST handlers of a resource: verb routing, request body decoding,
//! response transforms (Table, PartialObjectMetadata[List]) and the
//! subresources (status, serviceaccount token, pod exec/attach/portforward/log).

use std::sync::Arc;

use http::{Method, Response, StatusCode, header};
use serde_json::{Value, json};

use super::list::{self, ListParams};
use super::negotiate::{self, Format, Negotiated, ResourceEndpoint};
use super::objects::{self, DeleteOptions, Deleted, UpdateScope};
use super::patch::{self, PatchType};
use super::registry::ResourceType;
use super::response::{self, Body};
use super::route::{ApiRequest, ResourcePath};
use super::status::{self, ApiError};
use super::store::ObjectKey;
use super::table::{self, IncludeObject};
use super::{Shared, controllers, satoken, watch};

/// Formats a resource endpoint offers and serves without a conversion.
pub fn endpoint_for(shared: &Shared, rt: &ResourceType) -> ResourceEndpoint {
    let mut formats = vec![Format::Json, Format::Yaml];
    if shared.protobuf.is_some() {
        formats.push(Format::Protobuf);
    }
    let standard = if rt.builtin {
        formats.clone()
    } else {
        vec![Format::Json, Format::Yaml]
    };
    ResourceEndpoint { formats, standard }
}

/// Formats accepted for request bodies.
fn input_formats(shared: &Shared, rt: &ResourceType) -> Vec<Format> {
    let mut formats = vec![Format::Json, Format::Yaml];
    if shared.protobuf.is_some() && rt.builtin {
        formats.push(Format::Protobuf);
    }
    formats
}

pub async fn serve(
    shared: &Arc<Shared>,
    req: ApiRequest,
    rp: ResourcePath,
    verb: &'static str,
) -> Response<Body> {
    let Some(rt) = shared.registry.lookup(&rp.group, &rp.version, &rp.resource) else {
        return response::error(&ApiError::no_route(), None, None);
    };
    // Namespaced resources are only addressable by name inside a namespace;
    // cluster-scoped ones never inside one.
    let misplaced = (rt.namespaced && rp.namespace.is_none() && rp.name.is_some())
        || (!rt.namespaced && rp.namespace.is_some());
    if misplaced {
        return response::error(&ApiError::no_route(), None, None);
    }
    let endpoint = endpoint_for(shared, &rt);
    let watching = verb == "watch";
    let neg = match negotiate::negotiate(req.header(header::ACCEPT), &endpoint, watching) {
        Ok(n) => n,
        Err(e) => return response::error(&ApiError::not_acceptable(e.message()), None, None),
    };
    let codec = shared.codec();
    match handle(shared, req, &rt, &rp, verb, &neg).await {
        Ok(resp) => resp,
        Err(e) => response::error(&e, Some(&neg), codec),
    }
}

async fn handle(
    shared: &Arc<Shared>,
    mut req: ApiRequest,
    rt: &Arc<ResourceType>,
    rp: &ResourcePath,
    verb: &'static str,
    neg: &Negotiated,
) -> Result<Response<Body>, ApiError> {
    let ns = rp.namespace.as_deref();
    let gr = rt.group_resource();
    if let Some(sub) = rp.subresource.as_deref() {
        let name = rp.name.as_deref().unwrap_or("");
        return match (sub, rt.subresource(sub)) {
            (_, None) => Err(ApiError::no_route()),
            ("status" | "approval", Some(_)) => {
                status_subresource(shared, req, rt, ns, name, verb, neg).await
            }
            ("token", Some(_)) if req.method == Method::POST => {
                token_request(shared, req, rt, ns, name).await
            }
            ("exec" | "attach" | "portforward", Some(_)) => {
                let pod = get_object(shared, rt, ns, name)?;
                super::exec::serve(req, sub, &pod).await
            }
            ("log", Some(_)) if req.method == Method::GET => {
                get_object(shared, rt, ns, name)?;
                Ok(response::plain(StatusCode::OK, "text/plain", ""))
            }
            (_, Some(_)) => Err(ApiError::method_not_supported(&gr, verb)),
        };
    }
    if !rt.has_verb(verb) {
        return Err(ApiError::method_not_supported(&gr, verb));
    }
    let dry_run = req.param("dryRun").is_some_and(|v| v == "All");
    match verb {
        "get" => {
            let name = rp.name.as_deref().unwrap_or("");
            if let Some(rv) = req
                .param("resourceVersion")
                .filter(|v| !v.is_empty() && *v != "0")
            {
                let rv: u64 = rv.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid resource version: {rv:?}"))
                })?;
                list::wait_for_rv(shared, rv).await?;
            }
            let obj = get_object(shared, rt, ns, name)?;
            respond(shared, &req, rt, neg, StatusCode::OK, &obj)
        }
        "list" => {
            let params = ListParams::parse(rt, |k| req.param(k).map(str::to_owned))?;
            let result = list::list(shared, rt, ns, &params).await?;
            let body = transform_list(rt, neg, &req, &result)?;
            Ok(response::object(
                StatusCode::OK,
                neg,
                shared.codec(),
                &body,
                &req.headers,
            ))
        }
        "watch" => {
            let scope = watch::Scope {
                namespace: rp.namespace.clone(),
                name: rp.name.clone(),
            };
            watch::serve(shared.clone(), req, rt.clone(), scope, neg.clone()).await
        }
        "create" => {
            let mut body = decode_body(shared, &mut req, rt).await?;
            if rt.group == "certificates.k8s.io" {
                stamp_requester(&mut body, req.user.as_ref());
            }
            if rt.virtual_create {
                let answered = controllers::review(shared, rt, body, req.user.as_ref())?;
                return Ok(response::object(
                    StatusCode::CREATED,
                    neg,
                    shared.codec(),
                    &answered,
                    &req.headers,
                ));
            }
            let created = objects::create(shared, rt, ns, body, dry_run)?;
            if !dry_run {
                controllers::after_write(shared, rt, &created);
            }
            respond(shared, &req, rt, neg, StatusCode::CREATED, &created)
        }
        "update" => {
            let name = rp.name.as_deref().unwrap_or("");
            let body = decode_body(shared, &mut req, rt).await?;
            let (obj, created) =
                objects::update(shared, rt, ns, name, body, UpdateScope::Main, dry_run)?;
            if !dry_run {
                controllers::after_write(shared, rt, &obj);
            }
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            respond(shared, &req, rt, neg, code, &obj)
        }
        "patch" => {
            let name = rp.name.as_deref().unwrap_or("");
            let (obj, created) =
                patch_object(shared, &mut req, rt, ns, name, UpdateScope::Main, dry_run).await?;
            if !dry_run {
                controllers::after_write(shared, rt, &obj);
            }
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            respond(shared, &req, rt, neg, code, &obj)
        }
        "delete" => {
            let name = rp.name.as_deref().unwrap_or("");
            let opts = delete_options(&mut req).await?;
            match objects::delete(shared, rt, ns, name, &opts)? {
                Deleted::Pending(obj) => respond(shared, &req, rt, neg, StatusCode::OK, &obj),
                Deleted::Now(obj) if rt.returns_deleted_object => {
                    respond(shared, &req, rt, neg, StatusCode::OK, &obj)
                }
                Deleted::Now(obj) => {
                    let body = status::success_status(&gr, name, objects::meta_str(&obj, "uid"));
                    Ok(response::object(
                        StatusCode::OK,
                        neg,
                        shared.codec(),
                        &body,
                        &req.headers,
                    ))
                }
            }
        }
        "deletecollection" => {
            let opts = delete_options(&mut req).await?;
            let params = ListParams::parse(rt, |k| req.param(k).map(str::to_owned))?;
            let current = list::list(shared, rt, ns, &params).await?;
            let mut deleted = Vec::new();
            for item in &current.items {
                let item_ns = objects::meta_str(item, "namespace");
                let item_ns = (!item_ns.is_empty()).then_some(item_ns);
                match objects::delete(shared, rt, item_ns, objects::meta_str(item, "name"), &opts) {
                    Ok(Deleted::Now(v) | Deleted::Pending(v)) => deleted.push(Arc::new(v)),
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
            let result = list::ListResult {
                items: deleted,
                resource_version: shared.store.current_rv(),
                continue_token: None,
                remaining_item_count: None,
            };
            let body = list::list_object(rt, &result);
            Ok(response::object(
                StatusCode::OK,
                neg,
                shared.codec(),
                &body,
                &req.headers,
            ))
        }
        _ => Err(ApiError::method_not_supported(&gr, verb)),
    }
}

/// The CSR strategy records who asked: spec.username, spec.groups (and
/// spec.uid), overwriting whatever the client sent.
fn stamp_requester(body: &mut Value, user: Option<&super::User>) {
    let (name, groups) = match user {
        Some(u) => {
            let mut groups = u.groups.clone();
            if !groups.iter().any(|g| g == "system:authenticated") {
                groups.push("system:authenticated".into());
            }
            (u.name.clone(), groups)
        }
        None => (
            "system:anonymous".to_owned(),
            vec!["system:unauthenticated".to_owned()],
        ),
    };
    if let Some(spec) = body.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert("username".into(), json!(name));
        spec.insert("groups".into(), json!(groups));
        spec.remove("uid");
    }
}

fn get_object(
    shared: &Shared,
    rt: &ResourceType,
    ns: Option<&str>,
    name: &str,
) -> Result<Value, ApiError> {
    let key = ObjectKey::new(
        &rt.storage_key(),
        ns.filter(|_| rt.namespaced).unwrap_or(""),
        name,
    );
    shared
        .store
        .get(&key)
        .map(|v| (*v).clone())
        .ok_or_else(|| ApiError::not_found(&rt.group_resource(), name))
}

/// Applies the negotiated conversion to one object and writes it.
fn respond(
    shared: &Shared,
    req: &ApiRequest,
    rt: &ResourceType,
    neg: &Negotiated,
    code: StatusCode,
    obj: &Value,
) -> Result<Response<Body>, ApiError> {
    let body = match &neg.conversion {
        None => obj.clone(),
        Some(c) => match c.kind.as_str() {
            "Table" => {
                let include = IncludeObject::parse(req.param("includeObject"))?;
                let rv = objects::meta_str(obj, "resourceVersion");
                table::to_table(
                    rt,
                    &[obj],
                    json!({"resourceVersion": rv}),
                    include,
                    true,
                    &c.version,
                )
            }
            "PartialObjectMetadata" => table::partial_object_metadata(obj, &c.version),
            _ => {
                return Err(ApiError::not_acceptable(format!(
                    "you requested PartialObjectMetadataList, but the requested object is not a list (*{})",
                    rt.kind
                )));
            }
        },
    };
    Ok(response::object(
        code,
        neg,
        shared.codec(),
        &body,
        &req.headers,
    ))
}

fn transform_list(
    rt: &ResourceType,
    neg: &Negotiated,
    req: &ApiRequest,
    result: &list::ListResult,
) -> Result<Value, ApiError> {
    let items: Vec<&Value> = result.items.iter().map(|v| &**v).collect();
    match &neg.conversion {
        None => Ok(list::list_object(rt, result)),
        Some(c) => match c.kind.as_str() {
            "Table" => {
                let include = IncludeObject::parse(req.param("includeObject"))?;
                Ok(table::to_table(
                    rt,
                    &items,
                    list::list_meta(result),
                    include,
                    true,
                    &c.version,
                ))
            }
            "PartialObjectMetadataList" => Ok(table::partial_object_metadata_list(
                &items,
                list::list_meta(result),
                &c.version,
            )),
            _ => Err(ApiError::not_acceptable(format!(
                "you requested PartialObjectMetadata, but the requested object is a list (*{})",
                rt.list_kind()
            ))),
        },
    }
}

/// Decodes a JSON/YAML/protobuf request body.
async fn decode_body(
    shared: &Shared,
    req: &mut ApiRequest,
    rt: &ResourceType,
) -> Result<Value, ApiError> {
    let format =
        negotiate::input_format(req.header(header::CONTENT_TYPE), &input_formats(shared, rt))
            .map_err(ApiError::unsupported_media_type)?;
    let bytes = req.read_body().await?;
    decode_bytes(shared, format, &bytes)
}

fn decode_bytes(shared: &Shared, format: Format, bytes: &[u8]) -> Result<Value, ApiError> {
    let value: Value = match format {
        Format::Json => serde_json::from_slice(bytes).map_err(|e| {
            ApiError::bad_request(format!("the object provided is unrecognized: {e}"))
        })?,
        Format::Yaml => serde_yaml::from_slice(bytes).map_err(|e| {
            ApiError::bad_request(format!("the object provided is unrecognized: {e}"))
        })?,
        Format::Protobuf => shared
            .codec()
            .ok_or_else(|| ApiError::unsupported_media_type("protobuf is not supported"))?
            .decode_object(bytes)
            .map_err(|e| {
                ApiError::bad_request(format!("the object provided is unrecognized: {e}"))
            })?,
    };
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the object provided is unrecognized: not an object",
        ));
    }
    Ok(value)
}

async fn patch_object(
    shared: &Shared,
    req: &mut ApiRequest,
    rt: &Arc<ResourceType>,
    ns: Option<&str>,
    name: &str,
    scope: UpdateScope,
    dry_run: bool,
) -> Result<(Value, bool), ApiError> {
    let supported = if rt.builtin {
        "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml"
    } else {
        "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
    };
    let unsupported = || {
        ApiError::unsupported_media_type(format!(
            "the body of the request was in an unknown format - accepted media types include: {supported}"
        ))
    };
    let patch_type = req
        .header(header::CONTENT_TYPE)
        .and_then(PatchType::from_content_type)
        .ok_or_else(unsupported)?;
    if patch_type == PatchType::Strategic && !rt.builtin {
        return Err(unsupported());
    }
    let bytes = req.read_body().await?;
    let patch: Value = match patch_type {
        PatchType::Apply => {
            serde_yaml::from_slice(&bytes).map_err(|e| ApiError::bad_request(e.to_string()))?
        }
        _ => serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(e.to_string()))?,
    };
    let current = match get_object(shared, rt, ns, name) {
        Ok(c) => c,
        // Server-side apply creates missing objects.
        Err(e) if e.code == 404 && patch_type == PatchType::Apply && scope == UpdateScope::Main => {
            let created = objects::create(shared, rt, ns, patch, dry_run)?;
            return Ok((created, true));
        }
        Err(e) => return Err(e),
    };
    let mut target = current.clone();
    match patch_type {
        PatchType::Json => {
            patch::json_patch(&mut target, &patch).map_err(|e| ApiError::new(422, "Invalid", e))?
        }
        PatchType::Merge | PatchType::Apply => patch::merge_patch(&mut target, &patch),
        PatchType::Strategic => patch::strategic_merge(&mut target, &patch),
    }
    // A resourceVersion in the patch is a precondition; otherwise the patch
    // applies to whatever is current.
    let patched_rv = objects::meta_str(&target, "resourceVersion").to_owned();
    let current_rv = objects::meta_str(&current, "resourceVersion").to_owned();
    if patched_rv != current_rv && !patched_rv.is_empty() {
        return Err(ApiError::stale(&rt.group_resource(), name));
    }
    objects::update(shared, rt, ns, name, target, scope, dry_run)
}

async fn delete_options(req: &mut ApiRequest) -> Result<DeleteOptions, ApiError> {
    let bytes = req.read_body().await?;
    let body: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("unable to decode DeleteOptions: {e}")))?
    };
    let grace = req
        .param("gracePeriodSeconds")
        .and_then(|v| v.parse().ok())
        .or_else(|| body.get("gracePeriodSeconds").and_then(Value::as_i64));
    Ok(DeleteOptions {
        grace_period_seconds: grace,
        precondition_uid: body
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_owned),
        precondition_rv: body
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_owned),
        dry_run: req.param("dryRun").is_some_and(|v| v == "All")
            || body
                .get("dryRun")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|v| v == "All")),
    })
}

async fn status_subresource(
    shared: &Shared,
    mut req: ApiRequest,
    rt: &Arc<ResourceType>,
    ns: Option<&str>,
    name: &str,
    verb: &str,
    neg: &Negotiated,
) -> Result<Response<Body>, ApiError> {
    let dry_run = req.param("dryRun").is_some_and(|v| v == "All");
    match verb {
        "get" => {
            let obj = get_object(shared, rt, ns, name)?;
            respond(shared, &req, rt, neg, StatusCode::OK, &obj)
        }
        "update" => {
            let body = decode_body(shared, &mut req, rt).await?;
            let (obj, _) =
                objects::update(shared, rt, ns, name, body, UpdateScope::Status, dry_run)?;
            if !dry_run {
                controllers::after_write(shared, rt, &obj);
            }
            respond(shared, &req, rt, neg, StatusCode::OK, &obj)
        }
        "patch" => {
            let (obj, _) =
                patch_object(shared, &mut req, rt, ns, name, UpdateScope::Status, dry_run).await?;
            if !dry_run {
                controllers::after_write(shared, rt, &obj);
            }
            respond(shared, &req, rt, neg, StatusCode::OK, &obj)
        }
        _ => Err(ApiError::method_not_supported(&rt.group_resource(), verb)),
    }
}

/// `POST serviceaccounts/<name>/token`: issues a bound service-account
/// JWT, answering with the TokenRequest (registry/core/serviceaccount/storage/token.go).
async fn token_request(
    shared: &Shared,
    mut req: ApiRequest,
    rt: &Arc<ResourceType>,
    ns: Option<&str>,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    let sa = get_object(shared, rt, ns, name)?;
    let bytes = req.read_body().await?;
    let mut tr: Value = if bytes.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::bad_request(format!("the object provided is unrecognized: {e}"))
        })?
    };
    let ns = ns.unwrap_or("default");
    // SetDefaults_TokenRequestSpec, then ValidateTokenRequest.
    let expiration = tr
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(3600);
    let invalid = |detail: String| {
        ApiError::invalid(
            "TokenRequest",
            "authentication.k8s.io",
            name,
            "spec.expirationSeconds",
            "FieldValueInvalid",
            &detail,
        )
    };
    if expiration < 600 {
        return Err(invalid(format!(
            "{expiration}: may not specify a duration less than 10 minutes"
        )));
    }
    if expiration > 1 << 32 {
        return Err(invalid(format!(
            "{expiration}: may not specify a duration larger than 2^32 seconds"
        )));
    }
    let audiences: Vec<String> = tr
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .filter(|a: &Vec<String>| !a.is_empty())
        .unwrap_or_else(|| shared.issuer.api_audiences.clone());
    let bound = tr
        .pointer("/spec/boundObjectRef")
        .cloned()
        .filter(|b| !b.is_null());
    let (pod, node, secret) = match &bound {
        Some(b) => bound_object(shared, ns, b)?,
        None => (None, None, None),
    };
    let now = std::time::SystemTime::now();
    let iat = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
    let (lifetime, warn_after) = satoken::extended_lifetime(expiration, pod.is_some(), iat);
    let token = shared.issuer.sign(
        &satoken::Mint {
            namespace: ns.to_owned(),
            name: name.to_owned(),
            sa_uid: objects::meta_str(&sa, "uid").to_owned(),
            audiences: audiences.clone(),
            issued_at: now,
            lifetime: std::time::Duration::from_secs(lifetime.unsigned_abs()),
            pod,
            node,
            secret,
            warn_after,
        },
        false,
    );
    let expires = time::OffsetDateTime::now_utc() + time::Duration::seconds(expiration);
    if let Some(m) = tr.as_object_mut() {
        m.insert("kind".into(), json!("TokenRequest"));
        m.insert("apiVersion".into(), json!("authentication.k8s.io/v1"));
        let meta = m.entry("metadata").or_insert_with(|| json!({}));
        if let Some(meta) = meta.as_object_mut() {
            meta.insert("name".into(), json!(name));
            meta.insert("namespace".into(), json!(ns));
            meta.insert("creationTimestamp".into(), Value::Null);
        }
        let spec = m.entry("spec").or_insert_with(|| json!({}));
        if let Some(spec) = spec.as_object_mut() {
            spec.insert("audiences".into(), json!(audiences));
            spec.insert("expirationSeconds".into(), json!(expiration));
            spec.insert("boundObjectRef".into(), bound.unwrap_or(Value::Null));
        }
        m.insert(
            "status".into(),
            json!({"token": token, "expirationTimestamp": objects::rfc3339(expires)}),
        );
    }
    Ok(response::json_response(StatusCode::CREATED, &tr))
}

type BoundRefs = (
    Option<satoken::ObjRef>,
    Option<satoken::ObjRef>,
    Option<satoken::ObjRef>,
);

/// Resolves spec.boundObjectRef (Pod, Secret or Node) to the claims it
/// adds: a pod also names its node. The object must exist and match the uid.
fn bound_object(shared: &Shared, ns: &str, bound: &Value) -> Result<BoundRefs, ApiError> {
    let field = |k: &str| bound.get(k).and_then(Value::as_str).unwrap_or("");
    let (kind, name, uid) = (field("kind"), field("name"), field("uid"));
    let lookup = |resource: &str, ns: &str, name: &str| {
        shared
            .store
            .get(&ObjectKey::new(resource, ns, name))
            .ok_or_else(|| {
                ApiError::not_found(&super::status::GroupResource::new("", resource), name)
            })
    };
    let reference = |obj: &Value, resource: &str| -> Result<satoken::ObjRef, ApiError> {
        let actual = objects::meta_str(obj, "uid");
        if !uid.is_empty() && uid != actual {
            return Err(ApiError::conflict(
                &super::status::GroupResource::new("", resource),
                name,
                &format!(
                    "the UID in the bound object reference ({uid}) does not match the UID in record. The object might have been deleted and then recreated"
                ),
            ));
        }
        Ok(satoken::ObjRef {
            name: name.to_owned(),
            uid: actual.to_owned(),
        })
    };
    match kind {
        "Pod" => {
            let pod = lookup("pods", ns, name)?;
            let pod_ref = reference(&pod, "pods")?;
            let node_name = pod
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or("");
            let node = (!node_name.is_empty()).then(|| satoken::ObjRef {
                name: node_name.to_owned(),
                uid: shared
                    .store
                    .get(&ObjectKey::new("nodes", "", node_name))
                    .map(|n| objects::meta_str(&n, "uid").to_owned())
                    .unwrap_or_default(),
            });
            Ok((Some(pod_ref), node, None))
        }
        "Secret" => {
            let secret = lookup("secrets", ns, name)?;
            Ok((None, None, Some(reference(&secret, "secrets")?)))
        }
        "Node" => {
            let node = lookup("nodes", "", name)?;
            Ok((None, Some(reference(&node, "nodes")?), None))
        }
        other => Err(ApiError::bad_request(format!(
            "cannot bind token for object of kind {other:?}"
        ))),
    }
}
