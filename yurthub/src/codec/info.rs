//! Cheap metadata extraction and list splitting/building, for both formats, without
//! decoding whole objects: protobuf is walked field by field, JSON key by key, and the
//! results borrow from the body.

use std::borrow::Cow;
use std::ops::Range;

use super::json_scan::Scanner;
use super::wire::{self, Fields, put_len_field};
use super::{CodecError, Format};

/// Protobuf field numbers of the parts of ObjectMeta and ListMeta read here
/// (apimachinery `pkg/apis/meta/v1/generated.proto`; checked against the schema table
/// by the tests).
pub(crate) mod tags {
    pub const OBJECT_META: u32 = 1;
    pub const META_NAME: u32 = 1;
    pub const META_GENERATE_NAME: u32 = 2;
    pub const META_NAMESPACE: u32 = 3;
    pub const META_UID: u32 = 5;
    pub const META_RESOURCE_VERSION: u32 = 6;
    pub const META_DELETION_TIMESTAMP: u32 = 9;
    pub const META_LABELS: u32 = 11;
    pub const LIST_META: u32 = 1;
    pub const LIST_ITEMS: u32 = 2;
    pub const LIST_RESOURCE_VERSION: u32 = 2;
    pub const LIST_CONTINUE: u32 = 3;
    pub const LIST_REMAINING: u32 = 4;
    pub const POD_SPEC: u32 = 2;
    pub const POD_SPEC_NODE_NAME: u32 = 10;
}

/// The identifying metadata of one object. Strings borrow from the body unless JSON
/// escapes forced a copy; absent fields are empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectInfo<'a> {
    pub api_version: Cow<'a, str>,
    pub kind: Cow<'a, str>,
    pub name: Cow<'a, str>,
    pub generate_name: Cow<'a, str>,
    pub namespace: Cow<'a, str>,
    pub uid: Cow<'a, str>,
    pub resource_version: Cow<'a, str>,
    pub labels: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// Whether `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// `spec.nodeName` (read for Pods in protobuf, for any object in JSON).
    pub node_name: Cow<'a, str>,
}

impl ObjectInfo<'_> {
    /// The resource version as the number the cache compares (§5.5: parsed as uint64).
    pub fn resource_version_u64(&self) -> Option<u64> {
        self.resource_version.parse().ok()
    }

    /// A `metav1.Status`, which the cache never stores.
    pub fn is_status(&self) -> bool {
        self.kind == "Status"
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    }

    /// Detaches the strings from the body.
    pub fn into_owned(self) -> ObjectInfo<'static> {
        let own = |c: Cow<'_, str>| Cow::Owned(c.into_owned());
        ObjectInfo {
            api_version: own(self.api_version),
            kind: own(self.kind),
            name: own(self.name),
            generate_name: own(self.generate_name),
            namespace: own(self.namespace),
            uid: own(self.uid),
            resource_version: own(self.resource_version),
            labels: self
                .labels
                .into_iter()
                .map(|(k, v)| (own(k), own(v)))
                .collect(),
            deleting: self.deleting,
            node_name: own(self.node_name),
        }
    }
}

/// Reads the metadata of one object body: JSON, or an enveloped protobuf object.
pub fn object_info(format: Format, body: &[u8]) -> Result<ObjectInfo<'_>, CodecError> {
    match format {
        Format::Json => json_object_info(body),
        Format::Protobuf => {
            let env = wire::parse_envelope(body)?;
            let mut info = pb_message_info(env.raw, env.raw_offset, env.kind)?;
            info.api_version = Cow::Borrowed(env.api_version);
            info.kind = Cow::Borrowed(env.kind);
            Ok(info)
        }
    }
}

/// Reads an object's type and `metadata` only: enough to know which object
/// at which resourceVersion a body holds, without walking the rest of a JSON
/// body (whose other fields, `spec.nodeName` included, are left empty here
/// and unchecked). Protobuf is read whole by [`object_info`]: its metadata
/// is one length-delimited field.
pub fn object_head(format: Format, body: &[u8]) -> Result<ObjectInfo<'_>, CodecError> {
    if format == Format::Protobuf {
        return object_info(format, body);
    }
    let mut info = ObjectInfo::default();
    let mut s = Scanner::new(body);
    s.object_until(|s, key| {
        match key.as_ref() {
            "apiVersion" => info.api_version = s.opt_string()?.unwrap_or_default(),
            "kind" => info.kind = s.opt_string()?.unwrap_or_default(),
            "metadata" => {
                json_object_meta(s, &mut info)?;
                return Ok(false);
            }
            _ => {
                s.value()?;
            }
        }
        Ok(true)
    })?;
    Ok(info)
}

/// Reads the metadata of a list item returned by [`split_list`]: JSON, or a bare
/// protobuf message (no envelope) of kind `item_kind`.
pub fn item_info<'a>(
    format: Format,
    item: &'a [u8],
    item_kind: &str,
) -> Result<ObjectInfo<'a>, CodecError> {
    match format {
        Format::Json => json_object_info(item),
        Format::Protobuf if wire::is_enveloped(item) => object_info(Format::Protobuf, item),
        Format::Protobuf => pb_message_info(item, 0, item_kind),
    }
}

fn pb_message_info<'a>(
    raw: &'a [u8],
    base: usize,
    kind: &str,
) -> Result<ObjectInfo<'a>, CodecError> {
    let mut info = ObjectInfo::default();
    let is_pod = kind == "Pod";
    // Status and lists carry ListMeta at field 1, not ObjectMeta.
    let has_object_meta = kind != "Status" && !kind.ends_with("List");
    for field in Fields::at(raw, base) {
        let field = field?;
        match field.tag {
            tags::OBJECT_META if has_object_meta => read_pb_object_meta(&field, &mut info)?,
            tags::POD_SPEC if is_pod => {
                for f in field.message()? {
                    let f = f?;
                    if f.tag == tags::POD_SPEC_NODE_NAME {
                        info.node_name = Cow::Borrowed(f.str()?);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(info)
}

fn read_pb_object_meta<'a>(
    field: &wire::WireField<'a>,
    info: &mut ObjectInfo<'a>,
) -> Result<(), CodecError> {
    for f in field.message()? {
        let f = f?;
        match f.tag {
            tags::META_NAME => info.name = Cow::Borrowed(f.str()?),
            tags::META_GENERATE_NAME => info.generate_name = Cow::Borrowed(f.str()?),
            tags::META_NAMESPACE => info.namespace = Cow::Borrowed(f.str()?),
            tags::META_UID => info.uid = Cow::Borrowed(f.str()?),
            tags::META_RESOURCE_VERSION => info.resource_version = Cow::Borrowed(f.str()?),
            tags::META_DELETION_TIMESTAMP => info.deleting = !f.bytes()?.is_empty(),
            tags::META_LABELS => {
                let mut key = "";
                let mut value = "";
                for e in f.message()? {
                    let e = e?;
                    match e.tag {
                        1 => key = e.str()?,
                        2 => value = e.str()?,
                        _ => {}
                    }
                }
                info.labels.push((Cow::Borrowed(key), Cow::Borrowed(value)));
            }
            _ => {}
        }
    }
    Ok(())
}

fn json_object_info(body: &[u8]) -> Result<ObjectInfo<'_>, CodecError> {
    let mut info = ObjectInfo::default();
    let mut s = Scanner::new(body);
    s.object(|s, key| {
        match key.as_ref() {
            "apiVersion" => info.api_version = s.opt_string()?.unwrap_or_default(),
            "kind" => info.kind = s.opt_string()?.unwrap_or_default(),
            "metadata" => json_object_meta(s, &mut info)?,
            "spec" if s.peek() == Some(b'{') => s.object(|s, key| {
                if key == "nodeName" {
                    info.node_name = s.opt_string()?.unwrap_or_default();
                } else {
                    s.value()?;
                }
                Ok(())
            })?,
            _ => {
                s.value()?;
            }
        }
        Ok(())
    })?;
    s.end()?;
    Ok(info)
}

/// Reads a JSON `metadata` object into `info`.
fn json_object_meta<'a>(s: &mut Scanner<'a>, info: &mut ObjectInfo<'a>) -> Result<(), CodecError> {
    s.object(|s, key| {
        match key.as_ref() {
            "name" => info.name = s.opt_string()?.unwrap_or_default(),
            "generateName" => info.generate_name = s.opt_string()?.unwrap_or_default(),
            "namespace" => info.namespace = s.opt_string()?.unwrap_or_default(),
            "uid" => info.uid = s.opt_string()?.unwrap_or_default(),
            "resourceVersion" => info.resource_version = s.opt_string()?.unwrap_or_default(),
            "deletionTimestamp" => info.deleting = s.opt_string()?.is_some(),
            "labels" => s.object(|s, key| {
                let value = s.opt_string()?.unwrap_or_default();
                info.labels.push((key, value));
                Ok(())
            })?,
            _ => {
                s.value()?;
            }
        }
        Ok(())
    })
}

/// ListMeta values that lists carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListMeta<'a> {
    pub resource_version: Cow<'a, str>,
    pub continue_token: Cow<'a, str>,
    pub remaining_item_count: Option<i64>,
}

/// A list body split into its parts. `items` are byte ranges into the body: JSON
/// objects, or bare protobuf messages (no envelope; wrap them with
/// [`super::envelope`] and the item kind to get self-describing objects).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListParts<'a> {
    pub api_version: Cow<'a, str>,
    pub kind: Cow<'a, str>,
    pub meta: ListMeta<'a>,
    pub items: Vec<Range<usize>>,
}

impl ListParts<'_> {
    /// The kind of the items: the list kind without its `List` suffix.
    pub fn item_kind(&self) -> &str {
        self.kind.strip_suffix("List").unwrap_or(&self.kind)
    }
}

/// Splits a list body into its metadata and items. A `Status` (or any non-list kind)
/// is an error the caller can match on: [`CodecError::NotAList`].
pub fn split_list(format: Format, body: &[u8]) -> Result<ListParts<'_>, CodecError> {
    let parts = match format {
        Format::Json => split_json_list(body)?,
        Format::Protobuf => split_pb_list(body)?,
    };
    // `List` (v1) holds RawExtensions, which this does not unwrap; the apiserver never
    // answers a list request with it.
    if parts.kind.len() <= "List".len() || !parts.kind.ends_with("List") {
        return Err(CodecError::NotAList {
            kind: parts.kind.into_owned(),
        });
    }
    Ok(parts)
}

fn split_pb_list(body: &[u8]) -> Result<ListParts<'_>, CodecError> {
    let env = wire::parse_envelope(body)?;
    let mut parts = ListParts {
        api_version: Cow::Borrowed(env.api_version),
        kind: Cow::Borrowed(env.kind),
        meta: ListMeta::default(),
        items: Vec::new(),
    };
    if !env.kind.ends_with("List") {
        return Ok(parts);
    }
    for field in Fields::at(env.raw, env.raw_offset) {
        let field = field?;
        match field.tag {
            tags::LIST_META => {
                for f in field.message()? {
                    let f = f?;
                    match f.tag {
                        tags::LIST_RESOURCE_VERSION => {
                            parts.meta.resource_version = Cow::Borrowed(f.str()?)
                        }
                        tags::LIST_CONTINUE => parts.meta.continue_token = Cow::Borrowed(f.str()?),
                        tags::LIST_REMAINING => {
                            parts.meta.remaining_item_count = Some(f.varint()? as i64)
                        }
                        _ => {}
                    }
                }
            }
            tags::LIST_ITEMS => {
                let item = field.bytes()?;
                parts.items.push(field.offset..field.offset + item.len());
            }
            _ => {}
        }
    }
    Ok(parts)
}

fn split_json_list(body: &[u8]) -> Result<ListParts<'_>, CodecError> {
    let mut parts = ListParts {
        api_version: Cow::Borrowed(""),
        kind: Cow::Borrowed(""),
        meta: ListMeta::default(),
        items: Vec::new(),
    };
    let mut s = Scanner::new(body);
    s.object(|s, key| {
        match key.as_ref() {
            "apiVersion" => parts.api_version = s.opt_string()?.unwrap_or_default(),
            "kind" => parts.kind = s.opt_string()?.unwrap_or_default(),
            "metadata" => s.object(|s, key| {
                match key.as_ref() {
                    "resourceVersion" => {
                        parts.meta.resource_version = s.opt_string()?.unwrap_or_default()
                    }
                    "continue" => parts.meta.continue_token = s.opt_string()?.unwrap_or_default(),
                    "remainingItemCount" => parts.meta.remaining_item_count = s.opt_i64()?,
                    _ => {
                        s.value()?;
                    }
                }
                Ok(())
            })?,
            "items" => s.array(|s| {
                if s.peek() != Some(b'{') {
                    return Err(CodecError::json(s.pos(), "list item is not an object"));
                }
                parts.items.push(s.value()?);
                Ok(())
            })?,
            _ => {
                s.value()?;
            }
        }
        Ok(())
    })?;
    s.end()?;
    Ok(parts)
}

/// The `PartialObjectMetadata` form of an object (what `Accept: ...;as=PartialObjectMetadata`
/// asks for), in the same format: only `metadata` is kept. `api_version` is the target
/// group version, `meta.k8s.io/v1` or `meta.k8s.io/v1beta1`. Protobuf input may be
/// enveloped or a bare list item; protobuf output is enveloped.
pub fn partial_object_metadata(
    format: Format,
    body: &[u8],
    api_version: &str,
) -> Result<Vec<u8>, CodecError> {
    match format {
        Format::Protobuf => {
            let raw = if wire::is_enveloped(body) {
                wire::parse_envelope(body)?.raw
            } else {
                body
            };
            let mut meta: &[u8] = &[];
            for f in Fields::new(raw) {
                let f = f?;
                if f.tag == tags::OBJECT_META {
                    meta = f.bytes()?;
                }
            }
            let mut inner = Vec::with_capacity(meta.len() + 8);
            put_len_field(&mut inner, tags::OBJECT_META, meta);
            Ok(wire::envelope(api_version, "PartialObjectMetadata", &inner))
        }
        Format::Json => {
            let mut metadata: Option<Range<usize>> = None;
            let mut s = Scanner::new(body);
            s.object(|s, key| {
                let r = s.value()?;
                if key == "metadata" {
                    metadata = Some(r);
                }
                Ok(())
            })?;
            s.end()?;
            let mut out = Vec::with_capacity(metadata.as_ref().map_or(0, |r| r.len()) + 96);
            out.extend_from_slice(b"{\"kind\":\"PartialObjectMetadata\",\"apiVersion\":");
            serde_json::to_writer(&mut out, api_version)?;
            out.extend_from_slice(b",\"metadata\":");
            match metadata {
                Some(r) => out.extend_from_slice(&body[r]),
                None => out.extend_from_slice(b"{}"),
            }
            out.push(b'}');
            Ok(out)
        }
    }
}

/// A JSON object body with `apiVersion` and `kind` set, as the cache stores objects
/// (§5.4). List items come without them; this splices them in after the opening brace
/// when absent, without re-encoding the object.
pub fn json_with_type_meta(
    item: &[u8],
    api_version: &str,
    kind: &str,
) -> Result<Vec<u8>, CodecError> {
    let mut has_api_version = false;
    let mut has_kind = false;
    let mut s = Scanner::new(item);
    s.object(|s, key| {
        match key.as_ref() {
            "apiVersion" => has_api_version = s.opt_string()?.is_some(),
            "kind" => has_kind = s.opt_string()?.is_some(),
            _ => {
                s.value()?;
            }
        }
        Ok(())
    })?;
    s.end()?;
    if has_api_version && has_kind {
        return Ok(item.to_vec());
    }
    let trimmed = item.trim_ascii();
    let body = trimmed
        .get(1..)
        .ok_or_else(|| CodecError::json(0, "empty object"))?;
    let mut out = Vec::with_capacity(item.len() + api_version.len() + kind.len() + 32);
    out.push(b'{');
    if !has_kind {
        out.extend_from_slice(b"\"kind\":");
        serde_json::to_writer(&mut out, kind)?;
        out.push(b',');
    }
    if !has_api_version {
        out.extend_from_slice(b"\"apiVersion\":");
        serde_json::to_writer(&mut out, api_version)?;
        out.push(b',');
    }
    let rest = body.trim_ascii_start();
    if rest.starts_with(b"}") {
        out.pop(); // no trailing comma before an empty object's brace
    }
    out.extend_from_slice(rest);
    Ok(out)
}
