//! Object semantics of the generic registry: what create, update, delete
//! and deletecollection do to metadata (uid, creationTimestamp,
//! resourceVersion, generation, deletionTimestamp, finalizers), the
//! spec/status split of the status subresource, optimistic concurrency,
//! graceful pod deletion, per-kind create defaults (pod phase, service
//! clusterIP, namespace phase) and the few controllers a real cluster runs
//! that tests notice (namespace bootstrap and cascade deletion).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::Shared;
use super::registry::ResourceType;
use super::status::{ApiError, GroupResource};
use super::store::{ObjectKey, Write};

/// The store's first revision (a fresh etcd is never at 0).
pub const INITIAL_RESOURCE_VERSION: u64 = 100;
/// ClusterIP of `default/kubernetes`, in the default service CIDR.
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);

/// Namespaces every cluster starts with.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// Now as metav1.Time (RFC 3339, second precision, UTC).
pub fn now_rfc3339() -> String {
    rfc3339(OffsetDateTime::now_utc())
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// A random UUID (v4), as metadata.uid and Audit-Id use.
pub fn new_uid() -> String {
    let b: [u8; 16] = rand::random();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
        u16::from_be_bytes([b[6], b[7]]) & 0x0fff,
        (u16::from_be_bytes([b[8], b[9]]) & 0x3fff) | 0x8000,
        u64::from_be_bytes([0, 0, b[10], b[11], b[12], b[13], b[14], b[15]])
    )
}

/// `generateName` suffix alphabet of apiserver's name generator.
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

pub fn meta(obj: &Value) -> &Value {
    obj.get("metadata").unwrap_or(&Value::Null)
}

pub fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    meta(obj).get(field).and_then(Value::as_str).unwrap_or("")
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object)
        && let Some(map) = obj.as_object_mut()
    {
        map.insert("metadata".into(), Value::Object(Map::new()));
    }
    match obj.get_mut("metadata").and_then(Value::as_object_mut) {
        Some(m) => m,
        None => unreachable!("metadata was just made an object"),
    }
}

pub fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    meta(obj)
        .get("labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// The value of a selectable field as the field selector compares it.
pub fn field_value(obj: &Value, field: &str) -> String {
    let path: &[&str] = match field {
        "metadata.name" => &["metadata", "name"],
        "metadata.namespace" => &["metadata", "namespace"],
        "source" => &["source", "component"],
        _ => &[],
    };
    let owned: Vec<&str>;
    let path = if path.is_empty() {
        owned = field.split('.').collect();
        &owned[..]
    } else {
        path
    };
    let mut cur = obj;
    for p in path {
        match cur.get(p) {
            Some(v) => cur = v,
            None => {
                return match field {
                    "spec.hostNetwork" | "spec.unschedulable" => "false".into(),
                    _ => String::new(),
                };
            }
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn validate_name(rt: &ResourceType, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| {
            c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || c == '-'
                || c == '.'
                || (c == ':' && rt.resource == "nodes")
        });
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            &rt.kind,
            &rt.group,
            name,
            "metadata.name",
            "FieldValueInvalid",
            &format!(
                "{name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            ),
        ))
    }
}

/// Checks the body's apiVersion/kind against the endpoint and fills them in.
fn check_type(rt: &ResourceType, obj: &mut Value) -> Result<(), ApiError> {
    let Some(map) = obj.as_object_mut() else {
        return Err(ApiError::bad_request(
            "the body of the request is not a JSON object",
        ));
    };
    let api_version = rt.api_version();
    match map.get("kind").and_then(Value::as_str) {
        Some(k) if !k.is_empty() && k != rt.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind of the object in the body ({k}) does not match the expected kind ({})",
                rt.kind
            )));
        }
        _ => {}
    }
    match map.get("apiVersion").and_then(Value::as_str) {
        Some(v) if !v.is_empty() && v != api_version => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )));
        }
        _ => {}
    }
    map.insert("apiVersion".into(), json!(api_version));
    map.insert("kind".into(), json!(rt.kind));
    Ok(())
}

/// Applies the request's namespace to the object, rejecting a mismatch.
fn check_namespace(
    rt: &ResourceType,
    obj: &mut Value,
    namespace: Option<&str>,
) -> Result<(), ApiError> {
    let body_ns = meta_str(obj, "namespace").to_owned();
    if rt.namespaced {
        let ns = namespace.unwrap_or("");
        if !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        meta_mut(obj).insert("namespace".into(), json!(ns));
    } else {
        meta_mut(obj).remove("namespace");
    }
    Ok(())
}

fn namespace_must_exist(
    shared: &Shared,
    rt: &ResourceType,
    namespace: Option<&str>,
) -> Result<(), ApiError> {
    if !rt.namespaced {
        return Ok(());
    }
    let ns = namespace.unwrap_or("");
    let Some(obj) = shared.store.get(&ObjectKey::new("namespaces", "", ns)) else {
        return Err(ApiError::not_found(
            &GroupResource::new("", "namespaces"),
            ns,
        ));
    };
    if obj.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating") {
        return Err(ApiError::forbidden(
            &rt.group_resource(),
            "",
            &format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            ),
        ));
    }
    Ok(())
}

/// Everything but metadata and status: what a spec change means for generation.
fn spec_part(obj: &Value) -> Value {
    match obj.as_object() {
        Some(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        None => Value::Null,
    }
}

/// Create-time defaults the real registry strategies apply.
fn apply_create_defaults(shared: &Shared, rt: &ResourceType, obj: &mut Value) {
    if !rt.builtin {
        // A CRD with a status subresource ignores status on create.
        if rt.has_status()
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        return;
    }
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    match (rt.group.as_str(), rt.resource.as_str()) {
        ("", "pods") => {
            if let Some(spec) = map.get_mut("spec") {
                default_pod_spec(spec);
            }
            let qos = pod_qos_class(map.get("spec"));
            map.insert(
                "status".into(),
                json!({"phase": "Pending", "qosClass": qos}),
            );
        }
        ("certificates.k8s.io", "certificatesigningrequests") => {
            map.remove("status");
        }
        ("", "namespaces") => {
            map.insert("spec".into(), json!({"finalizers": ["kubernetes"]}));
            map.insert("status".into(), json!({"phase": "Active"}));
        }
        ("", "services") => {
            let spec = map.entry("spec").or_insert_with(|| json!({}));
            if let Some(spec) = spec.as_object_mut() {
                spec.entry("type").or_insert_with(|| json!("ClusterIP"));
                for port in spec
                    .get_mut("ports")
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    if let Some(p) = port.as_object_mut() {
                        p.entry("protocol").or_insert_with(|| json!("TCP"));
                        let number = p.get("port").cloned().unwrap_or(Value::Null);
                        p.entry("targetPort").or_insert(number);
                    }
                }
                spec.entry("sessionAffinity")
                    .or_insert_with(|| json!("None"));
                let is_external = spec.get("type").and_then(Value::as_str) == Some("ExternalName");
                if !is_external {
                    if spec
                        .get("clusterIP")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                    {
                        let ip = allocate_cluster_ip(shared);
                        spec.insert("clusterIP".into(), json!(ip));
                    }
                    let ip = spec.get("clusterIP").cloned().unwrap_or(Value::Null);
                    spec.entry("clusterIPs").or_insert_with(|| json!([ip]));
                    spec.entry("ipFamilies").or_insert_with(|| json!(["IPv4"]));
                    spec.entry("ipFamilyPolicy")
                        .or_insert_with(|| json!("SingleStack"));
                    spec.entry("internalTrafficPolicy")
                        .or_insert_with(|| json!("Cluster"));
                }
            }
            map.insert("status".into(), json!({"loadBalancer": {}}));
        }
        _ => {}
    }
}

/// Defaulting of the v1 Pod spec (SetDefaults_PodSpec, SetDefaults_Container)
/// plus the DefaultTolerationSeconds admission plugin.
fn default_pod_spec(spec: &mut Value) {
    let Some(s) = spec.as_object_mut() else {
        return;
    };
    let defaults = [
        ("restartPolicy", json!("Always")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("dnsPolicy", json!("ClusterFirst")),
        ("securityContext", json!({})),
        ("schedulerName", json!("default-scheduler")),
        ("enableServiceLinks", json!(true)),
        ("preemptionPolicy", json!("PreemptLowerPriority")),
        ("priority", json!(0)),
        ("serviceAccountName", json!("default")),
        ("serviceAccount", json!("default")),
    ];
    for (k, v) in defaults {
        s.entry(k).or_insert(v);
    }
    for list in ["containers", "initContainers"] {
        for c in s
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let Some(c) = c.as_object_mut() else { continue };
            let image = c.get("image").and_then(Value::as_str).unwrap_or("");
            let tag = image
                .rsplit('/')
                .next()
                .and_then(|last| last.split_once(':'))
                .map(|(_, t)| t);
            let pull = if image.contains('@') || tag.is_some_and(|t| t != "latest") {
                "IfNotPresent"
            } else {
                "Always"
            };
            c.entry("imagePullPolicy").or_insert(json!(pull));
            c.entry("terminationMessagePath")
                .or_insert(json!("/dev/termination-log"));
            c.entry("terminationMessagePolicy").or_insert(json!("File"));
            c.entry("resources").or_insert(json!({}));
        }
    }
    let tolerations = s.entry("tolerations").or_insert_with(|| json!([]));
    if let Some(list) = tolerations.as_array_mut() {
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            if !list.iter().any(|t| t["key"] == key) {
                list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
            }
        }
    }
}

fn pod_qos_class(spec: Option<&Value>) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|k| spec.and_then(|s| s.get(*k)).and_then(Value::as_array))
        .flatten()
        .collect();
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for c in &containers {
        let requests = c.pointer("/resources/requests").and_then(Value::as_object);
        let limits = c.pointer("/resources/limits").and_then(Value::as_object);
        if requests.is_some_and(|r| !r.is_empty()) || limits.is_some_and(|l| !l.is_empty()) {
            any = true;
        }
        for res in ["cpu", "memory"] {
            let limit = limits.and_then(|l| l.get(res));
            let request = requests.and_then(|r| r.get(res)).or(limit);
            if limit.is_none() || request != limit {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

fn allocate_cluster_ip(shared: &Shared) -> String {
    // A set, as the apiserver's bitmap allocator: a scan of a list per
    // candidate made the 1,000th Service cost a million string compares.
    let used: std::collections::HashSet<Ipv4Addr> = shared
        .store
        .list_at("services", None, shared.store.current_rv(), None)
        .unwrap_or_default()
        .iter()
        .filter_map(|(_, s)| {
            s.pointer("/spec/clusterIP")
                .and_then(Value::as_str)?
                .parse()
                .ok()
        })
        .collect();
    // 10.96.0.0/12 minus the first ten addresses (reserved like kubeadm's DNS IP).
    for n in 11u32..(1 << 20) {
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + n);
        if !used.contains(&ip) {
            return ip.to_string();
        }
    }
    String::new()
}

/// A create request (POST) for `rt` in `namespace`.
pub fn create(
    shared: &Shared,
    rt: &Arc<ResourceType>,
    namespace: Option<&str>,
    mut obj: Value,
    dry_run: bool,
) -> Result<Value, ApiError> {
    check_type(rt, &mut obj)?;
    check_namespace(rt, &mut obj, namespace)?;
    if !meta_str(&obj, "resourceVersion").is_empty() {
        return Err(ApiError::bad_request(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    let mut name = meta_str(&obj, "name").to_owned();
    if name.is_empty() {
        let prefix = meta_str(&obj, "generateName").to_owned();
        if prefix.is_empty() {
            return Err(ApiError::invalid(
                &rt.kind,
                &rt.group,
                "",
                "metadata.name",
                "FieldValueRequired",
                "name or generateName is required",
            ));
        }
        name = format!("{prefix}{}", random_suffix());
    }
    validate_name(rt, &name)?;
    namespace_must_exist(shared, rt, namespace)?;
    {
        let m = meta_mut(&mut obj);
        m.insert("name".into(), json!(name));
        m.insert("uid".into(), json!(new_uid()));
        m.insert("creationTimestamp".into(), json!(now_rfc3339()));
        m.remove("deletionTimestamp");
        m.remove("deletionGracePeriodSeconds");
        if rt.tracks_generation {
            m.insert("generation".into(), json!(1));
        } else {
            m.remove("generation");
        }
    }
    apply_create_defaults(shared, rt, &mut obj);
    let key = ObjectKey::new(
        &rt.storage_key(),
        namespace.filter(|_| rt.namespaced).unwrap_or(""),
        &name,
    );
    let gr = rt.group_resource();
    if dry_run {
        return match shared.store.get(&key) {
            Some(_) => Err(ApiError::already_exists(&gr, &name)),
            None => Ok(obj),
        };
    }
    let stored = shared
        .store
        .write(&key, |current, _| match current {
            Some(_) => Err(ApiError::already_exists(&gr, &name)),
            None => Ok(Write::Put(obj)),
        })?
        .ok_or_else(|| ApiError::internal("create stored nothing"))?;
    if rt.group.is_empty() && rt.resource == "namespaces" {
        namespace_created(shared, &name);
    }
    Ok((*stored).clone())
}

/// Which part of an object an update may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateScope {
    /// The main resource: status changes are ignored if there is a status subresource.
    Main,
    /// The status subresource: only status changes (and, for built-ins, metadata).
    Status,
}

/// Merges an update into the current object according to the strategy.
fn prepare_update(rt: &ResourceType, old: &Value, mut new: Value, scope: UpdateScope) -> Value {
    match scope {
        UpdateScope::Main if rt.has_status() => {
            if let Some(m) = new.as_object_mut() {
                match old.get("status") {
                    Some(s) => m.insert("status".into(), s.clone()),
                    None => m.remove("status"),
                };
            }
        }
        UpdateScope::Main => {}
        UpdateScope::Status => {
            let status = new.get("status").cloned();
            let new_meta = new.get("metadata").cloned();
            new = old.clone();
            if let Some(m) = new.as_object_mut() {
                match status {
                    Some(s) => m.insert("status".into(), s),
                    None => m.remove("status"),
                };
                // Built-in status strategies keep metadata edits (labels,
                // annotations); custom resources take only status.
                if rt.builtin
                    && let Some(nm) = new_meta
                {
                    m.insert("metadata".into(), nm);
                }
            }
        }
    }
    // Fields the server owns.
    let old_meta = meta(old).clone();
    let generation = old_meta.get("generation").and_then(Value::as_i64);
    let spec_changed = spec_part(old) != spec_part(&new);
    let m = meta_mut(&mut new);
    for field in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "namespace",
        "name",
    ] {
        match old_meta.get(field) {
            Some(v) => m.insert(field.into(), v.clone()),
            None => m.remove(field),
        };
    }
    match generation {
        Some(g) if rt.tracks_generation => {
            let g = if spec_changed && scope == UpdateScope::Main {
                g + 1
            } else {
                g
            };
            m.insert("generation".into(), json!(g));
        }
        _ => {
            m.remove("generation");
        }
    }
    new
}

/// True when an object may finally go away: marked for deletion, no
/// finalizers left and no grace period pending.
fn should_delete_during_update(obj: &Value) -> bool {
    let m = meta(obj);
    m.get("deletionTimestamp").is_some()
        && m.get("finalizers")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        && m.get("deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            == 0
}

/// Compares ignoring the fields a client cannot meaningfully change, so
/// that a no-op update does not produce a new revision.
fn same_content(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        let m = meta_mut(&mut v);
        m.remove("resourceVersion");
        m.remove("managedFields");
        v
    };
    strip(a) == strip(b)
}

/// An update (PUT) or the write half of a patch. `new` is the full desired
/// object; a non-empty metadata.resourceVersion is a precondition.
pub fn update(
    shared: &Shared,
    rt: &Arc<ResourceType>,
    namespace: Option<&str>,
    name: &str,
    mut new: Value,
    scope: UpdateScope,
    dry_run: bool,
) -> Result<(Value, bool), ApiError> {
    check_type(rt, &mut new)?;
    check_namespace(rt, &mut new, namespace)?;
    // Defaulting runs on every decode, updates included.
    if rt.builtin
        && rt.group.is_empty()
        && rt.resource == "pods"
        && let Some(spec) = new.get_mut("spec")
    {
        default_pod_spec(spec);
    }
    let body_name = meta_str(&new, "name");
    if body_name.is_empty() {
        meta_mut(&mut new).insert("name".into(), json!(name));
    } else if body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    let precondition = meta_str(&new, "resourceVersion").to_owned();
    if !precondition.is_empty() && precondition.parse::<u64>().is_err() {
        return Err(ApiError::bad_request(format!(
            "invalid resource version: {precondition:?}"
        )));
    }
    let key = ObjectKey::new(
        &rt.storage_key(),
        namespace.filter(|_| rt.namespaced).unwrap_or(""),
        name,
    );
    let gr = rt.group_resource();
    let current = shared.store.get(&key);
    let Some(current) = current else {
        if rt.allow_create_on_update && scope == UpdateScope::Main {
            meta_mut(&mut new).remove("resourceVersion");
            return create(shared, rt, namespace, new, dry_run).map(|o| (o, true));
        }
        return Err(ApiError::not_found(&gr, name));
    };
    let decide = |cur: Option<&Arc<Value>>| -> Result<(Write, Value), ApiError> {
        let Some(cur) = cur else {
            return Err(ApiError::not_found(&gr, name));
        };
        if !precondition.is_empty() && precondition != meta_str(cur, "resourceVersion") {
            return Err(ApiError::stale(&gr, name));
        }
        let merged = prepare_update(rt, cur, new.clone(), scope);
        if should_delete_during_update(&merged) {
            return Ok((Write::Delete, merged));
        }
        if same_content(cur, &merged) {
            return Ok((Write::Keep, (**cur).clone()));
        }
        Ok((Write::Put(merged.clone()), merged))
    };
    if dry_run {
        let (_, result) = decide(Some(&current))?;
        return Ok((result, false));
    }
    let stored = shared
        .store
        .write(&key, |cur, _| decide(cur).map(|(w, _)| w))?
        .ok_or_else(|| ApiError::not_found(&gr, name))?;
    Ok(((*stored).clone(), false))
}

/// Options of a DELETE.
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub dry_run: bool,
}

/// What a delete did.
pub enum Deleted {
    /// Gone; the last state (stamped with the deletion revision).
    Now(Value),
    /// Marked for deletion (graceful or finalizers); the updated object.
    Pending(Value),
}

fn pod_grace_period(obj: &Value, requested: Option<i64>) -> i64 {
    let on_node = obj
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    let terminal = matches!(
        obj.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    );
    if !on_node || terminal {
        return 0;
    }
    requested
        .or_else(|| {
            obj.pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
        })
        .unwrap_or(30)
        .max(0)
}

/// A DELETE of one object.
pub fn delete(
    shared: &Shared,
    rt: &Arc<ResourceType>,
    namespace: Option<&str>,
    name: &str,
    opts: &DeleteOptions,
) -> Result<Deleted, ApiError> {
    let key = ObjectKey::new(
        &rt.storage_key(),
        namespace.filter(|_| rt.namespaced).unwrap_or(""),
        name,
    );
    let gr = rt.group_resource();
    if rt.group.is_empty() && rt.resource == "namespaces" {
        return delete_namespace(shared, rt, name, opts);
    }
    let is_pod = rt.group.is_empty() && rt.resource == "pods";
    let mut pending = false;
    let decide = |cur: Option<&Arc<Value>>, pending: &mut bool| -> Result<Write, ApiError> {
        let Some(cur) = cur else {
            return Err(ApiError::not_found(&gr, name));
        };
        if let Some(uid) = &opts.precondition_uid
            && uid != meta_str(cur, "uid")
        {
            return Err(ApiError::conflict(
                &gr,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(cur, "uid")
                ),
            ));
        }
        if let Some(rv) = &opts.precondition_rv
            && rv != meta_str(cur, "resourceVersion")
        {
            return Err(ApiError::conflict(
                &gr,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta_str(cur, "resourceVersion")
                ),
            ));
        }
        let grace = if is_pod {
            pod_grace_period(cur, opts.grace_period_seconds)
        } else {
            0
        };
        let has_finalizers = meta(cur)
            .get("finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if grace == 0 && !has_finalizers {
            return Ok(Write::Delete);
        }
        let mut next = (**cur).clone();
        let existing_grace = meta(cur)
            .get("deletionGracePeriodSeconds")
            .and_then(Value::as_i64);
        let already = meta(cur).get("deletionTimestamp").is_some();
        if already && existing_grace.is_some_and(|g| g <= grace) {
            // Only shortening a pending grace period changes anything.
            *pending = true;
            return Ok(Write::Keep);
        }
        let when = OffsetDateTime::now_utc() + time::Duration::seconds(grace);
        let m = meta_mut(&mut next);
        if !already || grace < existing_grace.unwrap_or(i64::MAX) {
            m.insert("deletionTimestamp".into(), json!(rfc3339(when)));
        }
        m.insert("deletionGracePeriodSeconds".into(), json!(grace));
        if m.get("generation").is_some() {
            let g = m.get("generation").and_then(Value::as_i64).unwrap_or(0);
            m.insert("generation".into(), json!(g + 1));
        }
        *pending = true;
        Ok(Write::Put(next))
    };
    if opts.dry_run {
        let cur = shared.store.get(&key);
        let mut p = false;
        return match decide(cur.as_ref(), &mut p)? {
            Write::Put(v) => Ok(Deleted::Pending(v)),
            _ if p => Ok(Deleted::Pending(
                cur.map(|c| (*c).clone()).unwrap_or_default(),
            )),
            _ => Ok(Deleted::Now(cur.map(|c| (*c).clone()).unwrap_or_default())),
        };
    }
    let result = shared
        .store
        .write(&key, |cur, _| decide(cur, &mut pending))?;
    let obj = result
        .map(|o| (*o).clone())
        .ok_or_else(|| ApiError::not_found(&gr, name))?;
    Ok(if pending {
        Deleted::Pending(obj)
    } else {
        Deleted::Now(obj)
    })
}

/// Namespace deletion with an instant namespace controller: the namespace
/// turns Terminating, its contents are removed, then it is removed.
fn delete_namespace(
    shared: &Shared,
    rt: &Arc<ResourceType>,
    name: &str,
    opts: &DeleteOptions,
) -> Result<Deleted, ApiError> {
    let gr = rt.group_resource();
    let key = ObjectKey::new("namespaces", "", name);
    let terminating = shared
        .store
        .write(&key, |cur, _| {
            let Some(cur) = cur else {
                return Err(ApiError::not_found(&gr, name));
            };
            if let Some(uid) = &opts.precondition_uid
                && uid != meta_str(cur, "uid")
            {
                return Err(ApiError::conflict(
                    &gr,
                    name,
                    "Precondition failed: UID mismatch",
                ));
            }
            if opts.dry_run
                || cur.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating")
            {
                return Ok(Write::Keep);
            }
            let mut next = (**cur).clone();
            meta_mut(&mut next).insert("deletionTimestamp".into(), json!(now_rfc3339()));
            meta_mut(&mut next).insert("deletionGracePeriodSeconds".into(), json!(0));
            if let Some(m) = next.as_object_mut() {
                m.insert("status".into(), json!({"phase": "Terminating"}));
            }
            Ok(Write::Put(next))
        })?
        .ok_or_else(|| ApiError::not_found(&gr, name))?;
    if opts.dry_run {
        return Ok(Deleted::Pending((*terminating).clone()));
    }
    let returned = (*terminating).clone();
    let types = shared.registry.all();
    let rv = shared.store.current_rv();
    for t in types.iter().filter(|t| t.namespaced) {
        let Ok(items) = shared.store.list_at(&t.storage_key(), Some(name), rv, None) else {
            continue;
        };
        for (k, _) in items {
            let _ = shared.store.write::<ApiError>(&k, |_, _| Ok(Write::Delete));
        }
    }
    let _ = shared
        .store
        .write::<ApiError>(&key, |_, _| Ok(Write::Delete));
    Ok(Deleted::Pending(returned))
}

/// What the namespace controllers do for a new namespace: the `default`
/// service account and the `kube-root-ca.crt` config map.
fn namespace_created(shared: &Shared, ns: &str) {
    let Some(sa) = shared.registry.lookup("", "v1", "serviceaccounts") else {
        return;
    };
    let Some(cm) = shared.registry.lookup("", "v1", "configmaps") else {
        return;
    };
    let _ = create(
        shared,
        &sa,
        Some(ns),
        json!({"metadata": {"name": "default"}}),
        false,
    );
    let _ = create(
        shared,
        &cm,
        Some(ns),
        json!({
            "metadata": {"name": "kube-root-ca.crt", "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
            "data": {"ca.crt": shared.pki.ca_pem()}
        }),
        false,
    );
}

/// The objects a fresh cluster has: system namespaces, the `kubernetes`
/// service with its endpoints pointing at this double.
pub fn bootstrap(shared: &Shared) -> Result<(), ApiError> {
    let lookup = |resource: &str, group: &str| {
        shared
            .registry
            .lookup(group, "v1", resource)
            .ok_or_else(|| ApiError::internal(format!("built-in {resource} missing")))
    };
    let namespaces = lookup("namespaces", "")?;
    for ns in SYSTEM_NAMESPACES {
        create(
            shared,
            &namespaces,
            None,
            json!({"metadata": {"name": ns}}),
            false,
        )?;
    }
    let port = shared.port.load(std::sync::atomic::Ordering::SeqCst);
    create(
        shared,
        &lookup("services", "")?,
        Some("default"),
        json!({
            "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {
                "clusterIP": KUBERNETES_SERVICE_IP.to_string(),
                "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]
            }
        }),
        false,
    )?;
    create(
        shared,
        &lookup("endpoints", "")?,
        Some("default"),
        json!({
            "metadata": {"name": "kubernetes", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
            "subsets": [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]
        }),
        false,
    )?;
    create(
        shared,
        &lookup("endpointslices", "discovery.k8s.io")?,
        Some("default"),
        json!({
            "metadata": {"name": "kubernetes", "labels": {"kubernetes.io/service-name": "kubernetes", "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}]
        }),
        false,
    )?;
    super::controllers::create_cluster_info(shared)?;
    Ok(())
}

fn type_of(shared: &Shared, obj: &Value) -> Result<Arc<ResourceType>, ApiError> {
    let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    shared.registry.by_kind(api_version, kind).ok_or_else(|| {
        ApiError::bad_request(format!(
            "no resource registered for {api_version}, Kind={kind}"
        ))
    })
}

fn namespace_for(rt: &ResourceType, obj: &Value) -> Option<String> {
    rt.namespaced.then(|| {
        let ns = meta_str(obj, "namespace");
        if ns.is_empty() {
            "default".to_owned()
        } else {
            ns.to_owned()
        }
    })
}

pub fn direct_create(shared: &Shared, obj: Value) -> Result<Value, ApiError> {
    let rt = type_of(shared, &obj)?;
    let ns = namespace_for(&rt, &obj);
    let created = create(shared, &rt, ns.as_deref(), obj, false)?;
    super::controllers::after_write(shared, &rt, &created);
    Ok(created)
}

pub fn direct_update(shared: &Shared, obj: Value, status: bool) -> Result<Value, ApiError> {
    let rt = type_of(shared, &obj)?;
    let ns = namespace_for(&rt, &obj);
    let name = meta_str(&obj, "name").to_owned();
    let scope = if status {
        UpdateScope::Status
    } else {
        UpdateScope::Main
    };
    let (updated, _) = update(shared, &rt, ns.as_deref(), &name, obj, scope, false)?;
    super::controllers::after_write(shared, &rt, &updated);
    Ok(updated)
}

pub fn direct_delete(
    shared: &Shared,
    api_version: &str,
    kind: &str,
    namespace: &str,
    name: &str,
    grace: Option<i64>,
) -> Result<Value, ApiError> {
    let rt = shared.registry.by_kind(api_version, kind).ok_or_else(|| {
        ApiError::bad_request(format!(
            "no resource registered for {api_version}, Kind={kind}"
        ))
    })?;
    let opts = DeleteOptions {
        grace_period_seconds: grace,
        ..Default::default()
    };
    match delete(shared, &rt, Some(namespace), name, &opts)? {
        Deleted::Now(v) | Deleted::Pending(v) => Ok(v),
    }
}

pub fn direct_get(
    shared: &Shared,
    api_version: &str,
    kind: &str,
    namespace: &str,
    name: &str,
) -> Option<Value> {
    let rt = shared.registry.by_kind(api_version, kind)?;
    let ns = if rt.namespaced { namespace } else { "" };
    shared
        .store
        .get(&ObjectKey::new(&rt.storage_key(), ns, name))
        .map(|v| (*v).clone())
}

pub fn direct_list(
    shared: &Shared,
    api_version: &str,
    kind: &str,
    namespace: Option<&str>,
) -> Vec<Value> {
    let Some(rt) = shared.registry.by_kind(api_version, kind) else {
        return Vec::new();
    };
    let ns = namespace.filter(|_| rt.namespaced);
    shared
        .store
        .list_at(&rt.storage_key(), ns, shared.store.current_rv(), None)
        .unwrap_or_default()
        .into_iter()
        .map(|(_, v)| (*v).clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_looks_like_uuid_v4() {
        let uid = new_uid();
        assert_eq!(uid.len(), 36);
        assert_eq!(&uid[14..15], "4");
    }

    #[test]
    fn qos_classes() {
        assert_eq!(
            pod_qos_class(Some(&json!({"containers": [{"name": "a"}]}))),
            "BestEffort"
        );
        assert_eq!(
            pod_qos_class(Some(
                &json!({"containers": [{"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]})
            )),
            "Guaranteed"
        );
        assert_eq!(
            pod_qos_class(Some(
                &json!({"containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}]})
            )),
            "Burstable"
        );
    }

    #[test]
    fn field_values() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}});
        assert_eq!(field_value(&pod, "spec.nodeName"), "n1");
        assert_eq!(field_value(&pod, "spec.hostNetwork"), "false");
        assert_eq!(field_value(&pod, "status.phase"), "");
        let ev = json!({"source": {"component": "kubelet"}});
        assert_eq!(field_value(&ev, "source"), "kubelet");
    }
}
