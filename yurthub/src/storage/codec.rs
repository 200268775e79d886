//! Byte layouts of keys and values inside the engine's tables.
//!
//! Keys are NUL-separated so that every "all objects of X" question is one
//! ordered range scan: component, then space, group, version, resource,
//! namespace, name. NUL cannot appear in Kubernetes names, labels or paths,
//! and the encoders refuse it, so separators are unambiguous and a prefix
//! ending in NUL never matches a longer sibling (`pods` vs `podsx`).
//!
//! Values start with a layout version byte; metadata comes before the body so
//! list filters decode the metadata without touching the body bytes.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::error::Error;
use super::model::{
    Format, Gvr, ObjectKey, ObjectMeta, ResourceKey, ResourceVersion, ScopeKey, Space,
};

const SEP: u8 = 0;
const VALUE_LAYOUT: u8 = 1;

// === keys ===

fn check(part: &str, what: &str, allow_empty: bool) -> Result<(), Error> {
    if part.as_bytes().contains(&SEP) {
        return Err(Error::InvalidKey(format!(
            "{what} {part:?} contains a NUL byte"
        )));
    }
    if !allow_empty && part.is_empty() {
        return Err(Error::InvalidKey(format!("{what} is empty")));
    }
    Ok(())
}

fn space_byte(space: Space) -> u8 {
    match space {
        Space::Full => b'f',
        Space::PartialObjectMetadata => b'm',
    }
}

/// `component \0 space \0 group \0 version \0 resource \0`
pub(crate) fn resource_prefix(r: &ResourceKey) -> Result<Vec<u8>, Error> {
    check(&r.component, "component", false)?;
    check(&r.gvr.group, "group", true)?;
    check(&r.gvr.version, "version", false)?;
    check(&r.gvr.resource, "resource", false)?;
    let mut k = Vec::with_capacity(
        r.component.len() + r.gvr.group.len() + r.gvr.version.len() + r.gvr.resource.len() + 8,
    );
    k.extend_from_slice(r.component.as_bytes());
    k.push(SEP);
    k.push(space_byte(r.space));
    k.push(SEP);
    k.extend_from_slice(r.gvr.group.as_bytes());
    k.push(SEP);
    k.extend_from_slice(r.gvr.version.as_bytes());
    k.push(SEP);
    k.extend_from_slice(r.gvr.resource.as_bytes());
    k.push(SEP);
    Ok(k)
}

/// `component \0`: everything one component cached.
pub(crate) fn component_prefix(component: &str) -> Result<Vec<u8>, Error> {
    check(component, "component", false)?;
    let mut k = component.as_bytes().to_vec();
    k.push(SEP);
    Ok(k)
}

/// The object-table prefix that holds every candidate of a scope.
pub(crate) fn scope_object_prefix(s: &ScopeKey) -> Result<Vec<u8>, Error> {
    let mut k = resource_prefix(&s.resource)?;
    if let Some(ns) = &s.namespace {
        check(ns, "namespace", false)?;
        k.extend_from_slice(ns.as_bytes());
        k.push(SEP);
    }
    Ok(k)
}

pub(crate) fn object_key(key: &ObjectKey) -> Result<Vec<u8>, Error> {
    object_key_parts(&key.resource, key.namespace.as_deref(), &key.name)
}

pub(crate) fn object_key_parts(
    r: &ResourceKey,
    namespace: Option<&str>,
    name: &str,
) -> Result<Vec<u8>, Error> {
    let mut k = resource_prefix(r)?;
    if let Some(ns) = namespace {
        check(ns, "namespace", false)?;
        k.extend_from_slice(ns.as_bytes());
    }
    k.push(SEP);
    check(name, "name", false)?;
    k.extend_from_slice(name.as_bytes());
    Ok(k)
}

pub(crate) fn decode_object_key(raw: &[u8]) -> Option<ObjectKey> {
    let mut parts = raw.split(|b| *b == SEP);
    let mut next = || parts.next().and_then(|p| std::str::from_utf8(p).ok());
    let component = next()?.to_owned();
    let space = match next()? {
        "f" => Space::Full,
        "m" => Space::PartialObjectMetadata,
        _ => return None,
    };
    let group = next()?.to_owned();
    let version = next()?.to_owned();
    let resource = next()?.to_owned();
    let namespace = next()?;
    let name = next()?.to_owned();
    if next().is_some() {
        return None;
    }
    Some(ObjectKey {
        resource: ResourceKey {
            component,
            space,
            gvr: Gvr {
                group,
                version,
                resource,
            },
        },
        namespace: (!namespace.is_empty()).then(|| namespace.to_owned()),
        name,
    })
}

/// Whether an encoded object key belongs to core or events.k8s.io events.
pub(crate) fn key_is_event(raw: &[u8]) -> bool {
    let mut parts = raw.split(|b| *b == SEP).skip(2);
    let group = parts.next();
    let _version = parts.next();
    let resource = parts.next();
    resource == Some(b"events".as_slice())
        && matches!(group, Some(g) if g.is_empty() || g == b"events.k8s.io")
}

/// Marker and watch-progress key: the resource prefix, `*` (all namespaces)
/// or `=namespace`, NUL, selector.
pub(crate) fn scope_key(s: &ScopeKey) -> Result<Vec<u8>, Error> {
    let mut k = resource_prefix(&s.resource)?;
    match &s.namespace {
        None => k.push(b'*'),
        Some(ns) => {
            check(ns, "namespace", false)?;
            k.push(b'=');
            k.extend_from_slice(ns.as_bytes());
        }
    }
    k.push(SEP);
    check(&s.selector, "selector", true)?;
    k.extend_from_slice(s.selector.as_bytes());
    Ok(k)
}

pub(crate) fn gvr_key(gvr: &Gvr) -> Result<Vec<u8>, Error> {
    check(&gvr.group, "group", true)?;
    check(&gvr.version, "version", false)?;
    check(&gvr.resource, "resource", false)?;
    Ok(format!("{}\0{}\0{}", gvr.group, gvr.version, gvr.resource).into_bytes())
}

pub(crate) fn decode_gvr_key(raw: &[u8]) -> Option<Gvr> {
    let s = std::str::from_utf8(raw).ok()?;
    let mut it = s.split('\0');
    let gvr = Gvr::new(it.next()?, it.next()?, it.next()?);
    it.next().is_none().then_some(gvr)
}

/// A key under a u64 prefix (staging id, event age), big-endian so the
/// table orders by it.
pub(crate) fn u64_prefixed(prefix: u64, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + rest.len());
    k.extend_from_slice(&prefix.to_be_bytes());
    k.extend_from_slice(rest);
    k
}

/// The exclusive upper bound of all keys starting with `prefix`, or None
/// when the prefix is all 0xff (no bound: scan to the end).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

// === values ===

pub(crate) fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(crate) fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

struct Writer(Vec<u8>);

impl Writer {
    fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        // Kubernetes strings are far below 4 GiB; the store refuses bigger ones.
        let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&len.to_le_bytes());
        self.0.extend_from_slice(&s.as_bytes()[..len as usize]);
    }
    fn map(&mut self, m: &BTreeMap<String, String>) {
        let len = u32::try_from(m.len()).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&len.to_le_bytes());
        for (k, v) in m.iter().take(len as usize) {
            self.str(k);
            self.str(v);
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    }
    fn str(&mut self) -> Option<&'a str> {
        let len = self.u32()? as usize;
        std::str::from_utf8(self.take(len)?).ok()
    }
    fn map(&mut self) -> Option<BTreeMap<String, String>> {
        let n = self.u32()?;
        let mut m = BTreeMap::new();
        for _ in 0..n {
            let k = self.str()?.to_owned();
            let v = self.str()?.to_owned();
            m.insert(k, v);
        }
        Some(m)
    }
    fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }
}

/// Encodes an object value (metadata first, then the body as-is).
pub(crate) fn encode_object(
    meta: &ObjectMeta,
    format: Format,
    body: &[u8],
    stored_at: SystemTime,
) -> Vec<u8> {
    let mut w = Writer::with_capacity(body.len() + 128 + meta.name.len());
    w.u8(VALUE_LAYOUT);
    w.u8(format.to_byte());
    w.u64(millis(stored_at));
    w.str(meta.resource_version.as_str());
    w.str(&meta.kind);
    w.str(&meta.api_version);
    match &meta.namespace {
        Some(ns) => {
            w.u8(1);
            w.str(ns);
        }
        None => w.u8(0),
    }
    w.str(&meta.name);
    w.map(&meta.labels);
    w.map(&meta.fields);
    w.0.extend_from_slice(body);
    w.0
}

/// A decoded object value; `body` borrows from the stored bytes.
pub(crate) struct DecodedObject<'a> {
    pub meta: ObjectMeta,
    pub format: Format,
    pub stored_at_ms: u64,
    pub body: &'a [u8],
}

pub(crate) fn decode_object(raw: &[u8]) -> Option<DecodedObject<'_>> {
    let mut r = Reader::new(raw);
    if r.u8()? != VALUE_LAYOUT {
        return None;
    }
    let format = Format::from_byte(r.u8()?)?;
    let stored_at_ms = r.u64()?;
    let rv = r.str()?;
    let kind = r.str()?;
    let api_version = r.str()?;
    let namespace = match r.u8()? {
        0 => None,
        1 => Some(r.str()?.to_owned()),
        _ => return None,
    };
    let name = r.str()?.to_owned();
    let labels = r.map()?;
    let fields = r.map()?;
    Some(DecodedObject {
        meta: ObjectMeta {
            namespace,
            name,
            resource_version: ResourceVersion::new(rv),
            kind: kind.to_owned(),
            api_version: api_version.to_owned(),
            labels,
            fields,
        },
        format,
        stored_at_ms,
        body: r.rest(),
    })
}

/// Just the stored-at time and RV of an object value, without allocating
/// the rest (used on the hot write path).
pub(crate) fn peek_object(raw: &[u8]) -> Option<(u64, ResourceVersion)> {
    let mut r = Reader::new(raw);
    if r.u8()? != VALUE_LAYOUT {
        return None;
    }
    Format::from_byte(r.u8()?)?;
    let stored_at_ms = r.u64()?;
    let rv = r.str()?;
    Some((stored_at_ms, ResourceVersion::new(rv)))
}

/// The format and RV of an object value, borrowed (no allocation).
pub(crate) fn peek_format_rv(raw: &[u8]) -> Option<(Format, &str)> {
    let mut r = Reader::new(raw);
    if r.u8()? != VALUE_LAYOUT {
        return None;
    }
    let format = Format::from_byte(r.u8()?)?;
    r.u64()?;
    Some((format, r.str()?))
}

/// Marker: layout, listed-at, imported flag, RV.
pub(crate) fn encode_marker(rv: &ResourceVersion, at: SystemTime, imported: bool) -> Vec<u8> {
    let mut w = Writer::with_capacity(24 + rv.as_str().len());
    w.u8(VALUE_LAYOUT);
    w.u64(millis(at));
    w.u8(u8::from(imported));
    w.str(rv.as_str());
    w.0
}

pub(crate) fn decode_marker(raw: &[u8]) -> Option<(ResourceVersion, SystemTime, bool)> {
    let mut r = Reader::new(raw);
    if r.u8()? != VALUE_LAYOUT {
        return None;
    }
    let at = from_millis(r.u64()?);
    let imported = r.u8()? != 0;
    let rv = ResourceVersion::new(r.str()?);
    Some((rv, at, imported))
}

/// Watch progress: layout, updated-at, RV.
pub(crate) fn encode_progress(rv: &ResourceVersion, at: SystemTime) -> Vec<u8> {
    let mut w = Writer::with_capacity(16 + rv.as_str().len());
    w.u8(VALUE_LAYOUT);
    w.u64(millis(at));
    w.str(rv.as_str());
    w.0
}

pub(crate) fn decode_progress(raw: &[u8]) -> Option<(ResourceVersion, SystemTime)> {
    let mut r = Reader::new(raw);
    if r.u8()? != VALUE_LAYOUT {
        return None;
    }
    let at = from_millis(r.u64()?);
    Some((ResourceVersion::new(r.str()?), at))
}

/// Document: layout, stored-at, content type, body.
pub(crate) fn encode_document(content_type: &str, body: &[u8], at: SystemTime) -> Vec<u8> {
    let mut w = Writer::with_capacity(16 + content_type.len() + body.len());
    w.u8(VALUE_LAYOUT);
    w.u64(millis(at));
    w.str(content_type);
    w.0.extend_from_slice(body);
    w.0
}

pub(crate) fn decode_document(raw: &[u8]) -> Option<(String, &[u8], SystemTime)> {
    let mut r = Reader::new(raw);
    if r.u8()? != VALUE_LAYOUT {
        return None;
    }
    let at = from_millis(r.u64()?);
    let ct = r.str()?.to_owned();
    Some((ct, r.rest(), at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res() -> ResourceKey {
        ResourceKey::new("kubelet", Space::Full, Gvr::new("", "v1", "pods"))
    }

    #[test]
    fn object_keys_round_trip_and_nest_under_their_prefixes() {
        let r = res();
        let key = r.object(Some("default"), "web-0");
        let raw = object_key(&key).expect("valid key");
        assert_eq!(decode_object_key(&raw), Some(key));
        assert!(raw.starts_with(&resource_prefix(&r).expect("prefix")));
        let ns_scope = r.scope(Some("default"), "");
        assert!(raw.starts_with(&scope_object_prefix(&ns_scope).expect("prefix")));
        let other_ns = r.scope(Some("def"), "");
        assert!(!raw.starts_with(&scope_object_prefix(&other_ns).expect("prefix")));

        let node = ResourceKey::new("kubelet", Space::Full, Gvr::new("", "v1", "nodes"));
        let cluster = node.object(None, "n1");
        assert_eq!(
            decode_object_key(&object_key(&cluster).expect("key")),
            Some(cluster)
        );
    }

    #[test]
    fn a_resource_prefix_does_not_match_a_longer_resource_name() {
        let pods = resource_prefix(&res()).expect("prefix");
        let podsx = ResourceKey::new("kubelet", Space::Full, Gvr::new("", "v1", "podsx"));
        let raw = object_key(&podsx.object(Some("a"), "b")).expect("key");
        assert!(!raw.starts_with(&pods));
    }

    #[test]
    fn nul_bytes_and_empty_names_are_refused() {
        assert!(object_key(&res().object(Some("a\0b"), "x")).is_err());
        assert!(object_key(&res().object(Some("a"), "")).is_err());
        assert!(scope_key(&res().scope(None, "a\0")).is_err());
    }

    #[test]
    fn event_keys_are_recognised_in_both_groups() {
        for group in ["", "events.k8s.io"] {
            let r = ResourceKey::new("kubelet", Space::Full, Gvr::new(group, "v1", "events"));
            assert!(key_is_event(
                &object_key(&r.object(Some("a"), "e")).expect("key")
            ));
        }
        let r = ResourceKey::new(
            "kubelet",
            Space::Full,
            Gvr::new("example.com", "v1", "events"),
        );
        assert!(!key_is_event(
            &object_key(&r.object(Some("a"), "e")).expect("key")
        ));
        assert!(!key_is_event(
            &object_key(&res().object(Some("a"), "e")).expect("key")
        ));
    }

    #[test]
    fn object_values_round_trip() {
        let meta = ObjectMeta {
            namespace: Some("ns".into()),
            name: "n".into(),
            resource_version: "42".into(),
            kind: "Pod".into(),
            api_version: "v1".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            fields: [("spec.nodeName".to_string(), "a".to_string())].into(),
        };
        let at = from_millis(1_700_000_000_123);
        let raw = encode_object(&meta, Format::Protobuf, b"k8s\0body", at);
        let d = decode_object(&raw).expect("decodes");
        assert_eq!(d.meta, meta);
        assert_eq!(d.format, Format::Protobuf);
        assert_eq!(d.body, b"k8s\0body");
        assert_eq!(d.stored_at_ms, 1_700_000_000_123);
        assert_eq!(peek_object(&raw), Some((1_700_000_000_123, "42".into())));
        // Truncated inside the metadata: refused rather than misread.
        assert!(decode_object(&raw[..12]).is_none());
        assert!(decode_object(&[]).is_none());
    }

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end(b"ab\0"), Some(b"ab\x01".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }
}
