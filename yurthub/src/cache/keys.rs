//! How a request maps onto the store: the component's resource key, the
//! representation space (full objects or PartialObjectMetadata), list scopes
//! with their selectors, and the metadata kept with each object so offline
//! lists can filter without decoding bodies.

use std::collections::BTreeMap;

use http::{HeaderMap, header};

use super::selectors::{FieldSelector, LabelSelector};
use crate::codec::{self, ObjectInfo};
use crate::request::Query;
use crate::request::RequestInfo;
use crate::storage::{self, Gvr, ObjectMeta, ResourceKey, ScopeKey, Space};

/// Field paths extracted from every cached object: enough for the field
/// selectors node components use (kubelet's `spec.nodeName` and
/// `metadata.name`). A list whose selector reads another field is not
/// cached: it could not be answered faithfully offline.
pub const KEPT_FIELDS: [&str; 3] = ["metadata.name", "metadata.namespace", "spec.nodeName"];

pub fn gvr(info: &RequestInfo) -> Gvr {
    Gvr::new(
        info.group.as_str(),
        info.version.as_str(),
        info.resource.as_str(),
    )
}

pub fn resource_key(info: &RequestInfo, space: Space) -> ResourceKey {
    ResourceKey::new(info.cache_owner(), space, gvr(info))
}

/// The namespace an object request names (`namespaces/x` itself is cluster-scoped).
pub fn object_namespace(info: &RequestInfo) -> Option<&str> {
    if info.namespace.is_empty() || (info.resource == "namespaces" && info.api_prefix == "api") {
        None
    } else {
        Some(&info.namespace)
    }
}

pub fn to_store_format(f: codec::Format) -> storage::Format {
    match f {
        codec::Format::Json => storage::Format::Json,
        codec::Format::Protobuf => storage::Format::Protobuf,
    }
}

pub fn from_store_format(f: storage::Format) -> Option<codec::Format> {
    match f {
        storage::Format::Json => Some(codec::Format::Json),
        storage::Format::Protobuf => Some(codec::Format::Protobuf),
        _ => None,
    }
}

/// The store metadata of an object: identity, labels and [`KEPT_FIELDS`].
pub fn object_meta(info: &ObjectInfo<'_>, api_version: &str, kind: &str) -> ObjectMeta {
    let namespace = (!info.namespace.is_empty()).then(|| info.namespace.to_string());
    let mut fields = BTreeMap::new();
    fields.insert("metadata.name".to_owned(), info.name.to_string());
    fields.insert("metadata.namespace".to_owned(), info.namespace.to_string());
    if !info.node_name.is_empty() {
        fields.insert("spec.nodeName".to_owned(), info.node_name.to_string());
    }
    ObjectMeta {
        namespace,
        name: info.name.to_string(),
        resource_version: info.resource_version.to_string().into(),
        kind: if info.kind.is_empty() {
            kind
        } else {
            &info.kind
        }
        .to_owned(),
        api_version: if info.api_version.is_empty() {
            api_version
        } else {
            &info.api_version
        }
        .to_owned(),
        labels: info
            .labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        fields,
    }
}

/// Label plus field selector of a list or watch, parsed once.
#[derive(Debug, Clone, Default)]
pub struct Selectors {
    pub label: LabelSelector,
    pub field: FieldSelector,
    /// Canonical text keying the scope in the store ("" = everything).
    pub canonical: String,
}

impl Selectors {
    pub fn from_query(q: &Query) -> Result<Selectors, String> {
        let l = q.label_selector.as_deref().unwrap_or("").trim();
        let f = q.field_selector.as_deref().unwrap_or("").trim();
        let label = LabelSelector::parse(l).map_err(|e| e.to_string())?;
        let field = FieldSelector::parse(f).map_err(|e| e.to_string())?;
        let canonical = match (l.is_empty(), f.is_empty()) {
            (true, true) => String::new(),
            _ => format!("l={l};f={f}"),
        };
        Ok(Selectors {
            label,
            field,
            canonical,
        })
    }

    /// Whether every field the selector reads is kept with cached objects.
    pub fn answerable(&self) -> bool {
        self.field.fields().all(|f| KEPT_FIELDS.contains(&f))
    }

    pub fn matches(&self, m: &ObjectMeta) -> bool {
        self.label.matches(&m.labels) && self.field.matches(&m.fields)
    }

    pub fn scope(&self, resource: &ResourceKey, namespace: Option<&str>) -> ScopeKey {
        resource.scope(namespace, self.canonical.clone())
    }
}

/// What a response's Content-Type says about its representation: a plain
/// object (`Full`), PartialObjectMetadata, or something never cached (Table).
pub fn response_space(headers: &HeaderMap) -> Option<Space> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    space_of_media(ct)
}

fn space_of_media(media: &str) -> Option<Space> {
    let as_ = media.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k.trim() == "as").then(|| v.trim().to_owned())
    });
    match as_.as_deref() {
        None => Some(Space::Full),
        Some("PartialObjectMetadata" | "PartialObjectMetadataList") => {
            Some(Space::PartialObjectMetadata)
        }
        Some(_) => None,
    }
}

/// The Table representation a media type names (kubectl's default output),
/// normalized as `application/json;as=Table;v=v1;g=meta.k8s.io`; None for
/// anything else. A Table holds rows, not objects, so it is kept whole.
pub fn table_variant(media: &str) -> Option<String> {
    let mut parts = media.split(';').map(str::trim);
    let mime = parts.next()?.to_ascii_lowercase();
    let (mut as_, mut v, mut g) = ("", "", "");
    for (k, val) in parts.filter_map(|p| p.split_once('=')) {
        match k.trim() {
            "as" => as_ = val.trim(),
            "v" => v = val.trim(),
            "g" => g = val.trim(),
            _ => {}
        }
    }
    (as_ == "Table").then(|| format!("{mime};as=Table;v={v};g={g}"))
}

/// Where the Table answer to one list request is kept: the scope (so the
/// identity and component that asked), the page size and the
/// representation. Only first pages are kept.
pub fn table_document_key(scope: &ScopeKey, limit: Option<u64>, variant: &str) -> String {
    format!("table:{scope} limit={} {variant}", limit.unwrap_or(0))
}

/// The request's first Accept clause asks for PartialObjectMetadata(List).
pub fn accept_wants_metadata(headers: &HeaderMap) -> bool {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    codec::parse_accept(accept).first().is_some_and(|c| {
        matches!(
            c.param("as"),
            Some("PartialObjectMetadata" | "PartialObjectMetadataList")
        )
    })
}

/// The kind of a resource's objects: built-in from the schema table, else
/// what the store recorded for a CRD.
pub fn kind_of(store: &storage::Store, gvr: &Gvr) -> Option<(String, String)> {
    if let Some(k) = codec::kind_for_resource(&gvr.group, &gvr.version, &gvr.resource) {
        return Some((k.api_version.to_owned(), k.kind.to_owned()));
    }
    let kind = store.kind_for(gvr).ok().flatten()?;
    let api_version = if gvr.group.is_empty() {
        gvr.version.clone()
    } else {
        format!("{}/{}", gvr.group, gvr.version)
    };
    Some((api_version, kind))
}

pub fn is_builtin(gvr: &Gvr) -> bool {
    codec::kind_for_resource(&gvr.group, &gvr.version, &gvr.resource).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_variants_are_normalized_and_nothing_else_is_one() {
        assert_eq!(
            table_variant("application/json; as=Table; g=meta.k8s.io; v=v1").as_deref(),
            Some("application/json;as=Table;v=v1;g=meta.k8s.io")
        );
        assert_eq!(table_variant("application/json"), None);
        assert_eq!(
            table_variant("application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"),
            None
        );
    }

    #[test]
    fn spaces_from_media_types() {
        assert_eq!(space_of_media("application/json"), Some(Space::Full));
        assert_eq!(
            space_of_media("application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"),
            Some(Space::PartialObjectMetadata)
        );
        assert_eq!(
            space_of_media("application/json;as=Table;g=meta.k8s.io;v=v1"),
            None
        );
    }

    #[test]
    fn selectors_canonical_and_answerable() {
        let q = Query::parse(Some("fieldSelector=spec.nodeName%3Dn1&labelSelector=a%3Db"));
        let s = Selectors::from_query(&q).unwrap();
        assert_eq!(s.canonical, "l=a=b;f=spec.nodeName=n1");
        assert!(s.answerable());
        let q = Query::parse(Some("fieldSelector=status.phase%21%3DFailed"));
        assert!(!Selectors::from_query(&q).unwrap().answerable());
        assert_eq!(
            Selectors::from_query(&Query::default()).unwrap().canonical,
            ""
        );
    }
}
