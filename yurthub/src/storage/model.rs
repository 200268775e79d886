//! The vocabulary of the store: keys (who cached what, where), the values
//! the caller hands in (bytes plus metadata it already extracted) and the
//! answers reads and writes give back.
//!
//! Nothing here parses a Kubernetes body: the caller extracts name,
//! namespace, resourceVersion, labels and the selectable fields it cares
//! about, so offline lists can filter without decoding.

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use bytes::Bytes;

/// An API resource: group ("" for core), version and plural resource name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Gvr {
    pub group: String,
    pub version: String,
    pub resource: String,
}

impl Gvr {
    pub fn new(
        group: impl Into<String>,
        version: impl Into<String>,
        resource: impl Into<String>,
    ) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            resource: resource.into(),
        }
    }
}

impl fmt::Display for Gvr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            write!(f, "{}/{}", self.version, self.resource)
        } else {
            write!(f, "{}/{}/{}", self.group, self.version, self.resource)
        }
    }
}

/// Which representation of a resource a component cached. Metadata-only
/// (`as=PartialObjectMetadata[List]`) answers live apart from full objects
/// so that one never stands in for the other (upstream issue #2121).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Space {
    Full,
    PartialObjectMetadata,
}

/// One component's view of one resource: the unit of isolation. Objects
/// cached for one component are never visible through another's key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    pub component: String,
    pub space: Space,
    pub gvr: Gvr,
}

impl ResourceKey {
    pub fn new(component: impl Into<String>, space: Space, gvr: Gvr) -> Self {
        Self {
            component: component.into(),
            space,
            gvr,
        }
    }

    /// The key of one object of this resource (`namespace` None = cluster-scoped).
    pub fn object(&self, namespace: Option<&str>, name: impl Into<String>) -> ObjectKey {
        ObjectKey {
            resource: self.clone(),
            namespace: namespace.map(str::to_owned),
            name: name.into(),
        }
    }

    /// A list scope of this resource (`namespace` None = all namespaces).
    pub fn scope(&self, namespace: Option<&str>, selector: impl Into<String>) -> ScopeKey {
        ScopeKey {
            resource: self.clone(),
            namespace: namespace.map(str::to_owned),
            selector: selector.into(),
        }
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let space = match self.space {
            Space::Full => "",
            Space::PartialObjectMetadata => " (metadata)",
        };
        write!(f, "{}:{}{}", self.component, self.gvr, space)
    }
}

/// One cached object: `namespace` None means cluster-scoped.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub resource: ResourceKey,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.resource, ns, self.name),
            None => write!(f, "{} {}", self.resource, self.name),
        }
    }
}

/// A list or watch scope: a resource, one namespace or all (`None`), and the
/// caller's canonical selector string (`""` = everything). The store never
/// interprets the selector; it only keys markers and watch progress by it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScopeKey {
    pub resource: ResourceKey,
    pub namespace: Option<String>,
    pub selector: String,
}

impl fmt::Display for ScopeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.namespace.as_deref().unwrap_or("*");
        write!(
            f,
            "{} ns={} selector={:?}",
            self.resource, ns, self.selector
        )
    }
}

/// A resourceVersion as the apiserver sent it. RVs are opaque strings in the
/// API, but etcd-backed ones are decimal u64s, which is what ordering uses.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct ResourceVersion(String);

impl ResourceVersion {
    pub fn new(raw: impl Into<String>) -> Self {
        Self(raw.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The etcd revision, when the RV is one.
    pub fn parsed(&self) -> Option<u64> {
        self.0.parse().ok()
    }

    /// Whether `self` may replace `cached` under the ADDED/MODIFIED rule
    /// (write only if RV >= cached RV). RVs that are not u64s cannot be
    /// ordered, so arrival order wins for them.
    pub fn is_not_older_than(&self, cached: &ResourceVersion) -> bool {
        match (self.parsed(), cached.parsed()) {
            (Some(new), Some(old)) => new >= old,
            _ => true,
        }
    }
}

impl fmt::Display for ResourceVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for ResourceVersion {
    fn from(raw: &str) -> Self {
        Self(raw.to_owned())
    }
}

impl From<String> for ResourceVersion {
    fn from(raw: String) -> Self {
        Self(raw)
    }
}

impl From<u64> for ResourceVersion {
    fn from(rv: u64) -> Self {
        Self(rv.to_string())
    }
}

/// The wire format the body bytes are in (kept so offline answers can be
/// served as-is when the client asks for the same format).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    Json,
    Protobuf,
    Yaml,
    Cbor,
}

impl Format {
    pub(crate) fn to_byte(self) -> u8 {
        match self {
            Format::Json => 1,
            Format::Protobuf => 2,
            Format::Yaml => 3,
            Format::Cbor => 4,
        }
    }

    pub(crate) fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            1 => Format::Json,
            2 => Format::Protobuf,
            3 => Format::Yaml,
            4 => Format::Cbor,
            _ => return None,
        })
    }
}

/// What offline lists filter on, extracted by the caller from the body.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ObjectMeta {
    /// None for cluster-scoped objects.
    pub namespace: Option<String>,
    pub name: String,
    pub resource_version: ResourceVersion,
    pub kind: String,
    pub api_version: String,
    pub labels: BTreeMap<String, String>,
    /// Selectable fields by path, e.g. `spec.nodeName` → `node-a`. The
    /// caller decides which ones are worth keeping.
    pub fields: BTreeMap<String, String>,
}

/// An object as the caller hands it to the store: the exact bytes the
/// apiserver sent plus the metadata extracted from them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    pub meta: ObjectMeta,
    pub format: Format,
    pub body: Bytes,
}

/// An object as read back, with the time it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredObject {
    pub key: ObjectKey,
    pub object: Object,
    pub stored_at: SystemTime,
}

/// A record that a scope was listed: an empty list is not "never listed".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListMarker {
    /// The scope the marker was recorded for; it may be wider than the one
    /// asked about (a cluster-wide list covers one namespace).
    pub scope: ScopeKey,
    pub resource_version: ResourceVersion,
    pub listed_at: SystemTime,
    /// Recorded by [`crate::storage::import_openyurt`] from an upstream
    /// directory rather than by a list this hub saw.
    pub imported: bool,
}

/// The answer to an offline list: the stored objects, or what
/// [`super::Store::list_with`] made of each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listing<T = StoredObject> {
    pub items: Vec<T>,
    /// The marker that covers the scope, if any.
    pub marker: Option<ListMarker>,
    /// The largest u64 RV among the returned items.
    pub max_resource_version: Option<u64>,
}

/// Last resourceVersion a watch of a scope saw, bookmarks included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchProgress {
    pub resource_version: ResourceVersion,
    pub updated_at: SystemTime,
}

/// A decoded watch event as the cache policy hands it over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    Added(Object),
    Modified(Object),
    /// The object in its final state; its RV orders the deletion.
    Deleted(Object),
    Bookmark(ResourceVersion),
}

impl WatchEvent {
    pub(crate) fn resource_version(&self) -> &ResourceVersion {
        match self {
            WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => {
                &o.meta.resource_version
            }
            WatchEvent::Bookmark(rv) => rv,
        }
    }
}

/// What a per-object write did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The object was written (created or replaced).
    Stored,
    /// The cached copy is newer; nothing was written but watch progress.
    IgnoredOlder { cached: ResourceVersion },
    /// The object was removed.
    Deleted,
    /// A delete found nothing to remove.
    NotFound,
    /// A bookmark: only the watch progress moved.
    ProgressOnly,
}

/// A non-resource document such as `/version` or a discovery document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    pub content_type: String,
    pub body: Bytes,
    pub stored_at: SystemTime,
}

/// Result of [`crate::storage::Store::bind_cluster`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterBinding {
    /// The store had no identity: it now has this one.
    Fresh,
    /// The store already belonged to this cluster.
    Same,
    /// The store belonged to another cluster; everything was wiped.
    Replaced { previous: String },
}

/// A point-in-time view of the store's health and activity, for readiness
/// and metrics.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Stats {
    /// Blocks the store file really occupies (sparse regions excluded).
    pub bytes_on_disk: u64,
    /// The store file's length.
    pub file_len: u64,
    /// Keys plus values of everything stored: what `max_bytes` caps.
    pub payload_bytes: u64,
    pub max_bytes: Option<u64>,
    pub objects: u64,
    /// Write operations completed (applied and durable).
    pub writes: u64,
    /// Write operations that failed, whatever the reason.
    pub write_errors: u64,
    pub last_write_error: Option<String>,
    /// The last write attempt ran out of disk; clears on the next success.
    pub disk_full: bool,
    /// Write transactions attempted (one per batch).
    pub batches: u64,
    /// Write transactions that committed durably.
    pub commits: u64,
    /// Store files found corrupt and moved aside since open.
    pub corrupted_recovered: u64,
    /// Events evicted to stay under `max_bytes`.
    pub evicted_events: u64,
    /// Writes refused because `max_bytes` would be exceeded.
    pub capacity_refusals: u64,
    /// Times the engine was reopened after an I/O failure or damage.
    pub reopens: u64,
    /// Watch scopes that lost an event (refused or failed write): their
    /// progress is withdrawn until they are relisted.
    pub stale_watch_scopes: u64,
    /// The store is currently unable to serve (reopen after an I/O error failed).
    pub unavailable: bool,
}
