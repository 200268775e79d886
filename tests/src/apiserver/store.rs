//! The double's "etcd": a multi-version key/value store with one global
//! resourceVersion counter, an in-memory event history for watches (the
//! watch cache's window) and compaction. Objects are JSON values keyed by
//! (group-resource, namespace, name); reads at an older revision see the
//! snapshot of that revision, which is what makes paginated lists consistent.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use tokio::sync::watch;

/// Identity of a stored object. `gr` is the qualified resource
/// ("pods", "leases.coordination.k8s.io"); `namespace` is empty for
/// cluster-scoped objects. Keys order like etcd keys: by resource, then by
/// the relative key "ns/name" as a string (which is what continue tokens
/// and paging rely on).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub gr: String,
    rel: String,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(gr: &str, namespace: &str, name: &str) -> Self {
        let rel = if namespace.is_empty() {
            name.to_owned()
        } else {
            format!("{namespace}/{name}")
        };
        Self {
            gr: gr.to_owned(),
            rel,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    /// The key relative to the resource prefix, as etcd3 continue tokens
    /// carry it ("ns/name" or "name").
    pub fn relative(&self) -> &str {
        &self.rel
    }

    /// The smallest key of `gr` whose relative key is >= `rel`.
    fn lower_bound(gr: &str, rel: &str) -> Self {
        Self {
            gr: gr.to_owned(),
            rel: rel.to_owned(),
            namespace: String::new(),
            name: String::new(),
        }
    }
}

/// Watch event types as they appear on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change recorded in the history. For `Deleted` the object is the last
/// state stamped with the deletion revision; `prev` is the state before the
/// change (needed to turn updates into ADDED/DELETED for selector watches).
#[derive(Debug)]
pub struct StoredEvent {
    pub rv: u64,
    pub key: ObjectKey,
    pub kind: EventType,
    pub object: Arc<Value>,
    pub prev: Option<Arc<Value>>,
}

/// Reasons a read at a revision cannot be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// The revision was compacted away; `oldest` is the oldest still served.
    TooOld { requested: u64, oldest: u64 },
}

/// What a read-modify-write decided.
pub enum Write {
    Put(Value),
    Delete,
    /// Nothing changes (a no-op update): no new revision, no event.
    Keep,
}

#[derive(Debug)]
struct Version {
    rv: u64,
    obj: Option<Arc<Value>>,
}

#[derive(Debug)]
struct Inner {
    rv: u64,
    objects: BTreeMap<ObjectKey, Vec<Version>>,
    history: VecDeque<Arc<StoredEvent>>,
    window: usize,
    /// Reads and watches from a revision below this fail with 410.
    oldest: u64,
    evictions_since_prune: usize,
}

/// Shared handle to the store.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Mutex<Inner>>,
    rv_tx: Arc<watch::Sender<u64>>,
}

/// Evicting one event per write would make pruning O(keys) per write; prune
/// the version chains only every so many evictions.
const PRUNE_EVERY: usize = 1024;

impl Store {
    /// `window` is the number of events kept for watches (the event history).
    /// `start_rv` is the revision the empty store starts at (etcd never
    /// starts at 0 in a real cluster; neither should clients assume it).
    pub fn new(window: usize, start_rv: u64) -> Self {
        let (rv_tx, _) = watch::channel(start_rv);
        Self {
            inner: Arc::new(Mutex::new(Inner {
                rv: start_rv,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                window: window.max(1),
                oldest: start_rv,
                evictions_since_prune: 0,
            })),
            rv_tx: Arc::new(rv_tx),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every
        // mutation is applied at once), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current (latest) revision.
    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    /// The oldest revision reads and watches can still start from.
    pub fn oldest_rv(&self) -> u64 {
        self.lock().oldest
    }

    /// Receiver that changes whenever a new revision is written.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.rv_tx.subscribe()
    }

    /// Latest state of one object.
    pub fn get(&self, key: &ObjectKey) -> Option<Arc<Value>> {
        let inner = self.lock();
        inner
            .objects
            .get(key)
            .and_then(|versions| versions.last())
            .and_then(|v| v.obj.clone())
    }

    /// Objects of `gr` (optionally one namespace) at revision `rv`, in key
    /// order, strictly after `start_after` (a relative key) when given.
    pub fn list_at(
        &self,
        gr: &str,
        namespace: Option<&str>,
        rv: u64,
        start_after: Option<&str>,
    ) -> Result<Vec<(ObjectKey, Arc<Value>)>, ReadError> {
        let inner = self.lock();
        inner.check_readable(rv)?;
        let prefix = namespace.map(|ns| format!("{ns}/")).unwrap_or_default();
        let lower = match start_after {
            Some(start) if start >= prefix.as_str() => ObjectKey::lower_bound(gr, start),
            _ => ObjectKey::lower_bound(gr, &prefix),
        };
        let mut out = Vec::new();
        for (key, versions) in inner.objects.range(lower..) {
            if key.gr != gr || !key.rel.starts_with(&prefix) {
                break;
            }
            if start_after.is_some_and(|start| key.rel.as_str() <= start) {
                continue;
            }
            if let Some(obj) = version_at(versions, rv) {
                out.push((key.clone(), obj));
            }
        }
        Ok(out)
    }

    /// Atomic read-modify-write of one key. `decide` sees the current state
    /// and the revision a write would get. On `Put` the object is stamped
    /// with that revision (`metadata.resourceVersion`). Returns the stored
    /// object (for `Delete`: the last state stamped with the deletion
    /// revision; for `Keep`: the current state).
    pub fn write<E>(
        &self,
        key: &ObjectKey,
        decide: impl FnOnce(Option<&Arc<Value>>, u64) -> Result<Write, E>,
    ) -> Result<Option<Arc<Value>>, E> {
        let mut inner = self.lock();
        let current = inner
            .objects
            .get(key)
            .and_then(|vs| vs.last())
            .and_then(|v| v.obj.clone());
        let next_rv = inner.rv + 1;
        let result = match decide(current.as_ref(), next_rv)? {
            Write::Keep => return Ok(current),
            Write::Put(mut obj) => {
                set_resource_version(&mut obj, next_rv);
                let obj = Arc::new(obj);
                let kind = if current.is_some() {
                    EventType::Modified
                } else {
                    EventType::Added
                };
                inner.commit(key, Some(obj.clone()), kind, obj.clone(), current);
                Some(obj)
            }
            Write::Delete => {
                let Some(prev) = current else {
                    return Ok(None);
                };
                let mut last = (*prev).clone();
                set_resource_version(&mut last, next_rv);
                let last = Arc::new(last);
                inner.commit(key, None, EventType::Deleted, last.clone(), Some(prev));
                Some(last)
            }
        };
        let rv = inner.rv;
        drop(inner);
        self.rv_tx.send_replace(rv);
        Ok(result)
    }

    /// Events with revision greater than `since`, oldest first, and the
    /// current revision they lead up to (read atomically). Fails when
    /// `since` is older than the history window.
    pub fn events_since(&self, since: u64) -> Result<(Vec<Arc<StoredEvent>>, u64), ReadError> {
        let inner = self.lock();
        inner.check_readable(since)?;
        let start = inner.history.partition_point(|e| e.rv <= since);
        Ok((
            inner.history.iter().skip(start).cloned().collect(),
            inner.rv,
        ))
    }

    /// Drops the whole event history and every old version: afterwards only
    /// the current revision can be read or watched from (like an etcd
    /// compaction plus a watch cache that lost its window).
    pub fn compact(&self) {
        let mut inner = self.lock();
        inner.history.clear();
        inner.oldest = inner.rv;
        inner.prune();
    }
}

impl Inner {
    fn check_readable(&self, rv: u64) -> Result<(), ReadError> {
        if rv < self.oldest {
            Err(ReadError::TooOld {
                requested: rv,
                oldest: self.oldest,
            })
        } else {
            Ok(())
        }
    }

    fn commit(
        &mut self,
        key: &ObjectKey,
        state: Option<Arc<Value>>,
        kind: EventType,
        object: Arc<Value>,
        prev: Option<Arc<Value>>,
    ) {
        self.rv += 1;
        let rv = self.rv;
        self.objects
            .entry(key.clone())
            .or_default()
            .push(Version { rv, obj: state });
        self.history.push_back(Arc::new(StoredEvent {
            rv,
            key: key.clone(),
            kind,
            object,
            prev,
        }));
        while self.history.len() > self.window {
            if let Some(evicted) = self.history.pop_front() {
                // Watching from `evicted.rv` still works: every later event is kept.
                self.oldest = self.oldest.max(evicted.rv);
                self.evictions_since_prune += 1;
            }
        }
        if self.evictions_since_prune >= PRUNE_EVERY {
            self.prune();
        }
    }

    /// Forgets versions nobody can read any more: per key keep the newest
    /// version at or below `oldest` plus all newer ones; drop keys whose
    /// only remaining version is a tombstone.
    fn prune(&mut self) {
        self.evictions_since_prune = 0;
        let oldest = self.oldest;
        self.objects.retain(|_, versions| {
            let keep_from = versions.iter().rposition(|v| v.rv <= oldest).unwrap_or(0);
            versions.drain(..keep_from);
            !(versions.len() == 1 && versions[0].obj.is_none())
        });
    }
}

fn version_at(versions: &[Version], rv: u64) -> Option<Arc<Value>> {
    versions
        .iter()
        .rev()
        .find(|v| v.rv <= rv)
        .and_then(|v| v.obj.clone())
}

/// Sets `metadata.resourceVersion` (creating `metadata` if needed).
pub fn set_resource_version(obj: &mut Value, rv: u64) {
    if let Some(map) = obj.as_object_mut() {
        let meta = map
            .entry("metadata")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(meta) = meta.as_object_mut() {
            meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn put(store: &Store, name: &str, v: i64) -> u64 {
        let key = ObjectKey::new("configmaps", "default", name);
        let obj = store
            .write::<()>(&key, |_, _| {
                Ok(Write::Put(json!({"metadata": {"name": name}, "v": v})))
            })
            .expect("write")
            .expect("stored");
        obj["metadata"]["resourceVersion"]
            .as_str()
            .expect("rv")
            .parse()
            .expect("number")
    }

    #[test]
    fn snapshot_reads_see_old_revisions() {
        let store = Store::new(100, 10);
        let rv1 = put(&store, "a", 1);
        put(&store, "b", 1);
        put(&store, "a", 2);
        let at_rv1 = store
            .list_at("configmaps", None, rv1, None)
            .expect("readable");
        assert_eq!(at_rv1.len(), 1);
        assert_eq!(at_rv1[0].1["v"], 1);
        let now = store
            .list_at(
                "configmaps",
                Some("default"),
                store.current_rv(),
                Some("default/a"),
            )
            .expect("readable");
        assert_eq!(now.len(), 1, "start_after skips a");
        assert_eq!(now[0].0.name, "b");
    }

    #[test]
    fn window_eviction_and_compaction_make_old_revisions_unreadable() {
        let store = Store::new(2, 0);
        let rv1 = put(&store, "a", 1);
        put(&store, "a", 2);
        let rv3 = put(&store, "a", 3);
        match store.events_since(rv1 - 1) {
            Err(ReadError::TooOld { requested, oldest }) => {
                assert_eq!((requested, oldest), (rv1 - 1, rv1));
            }
            Ok((events, _)) => panic!("expected too old, got {} events", events.len()),
        }
        assert_eq!(store.events_since(rv1).expect("in window").0.len(), 2);
        store.compact();
        assert!(store.events_since(rv3 - 1).is_err());
        assert!(store.events_since(rv3).expect("current").0.is_empty());
    }

    #[test]
    fn delete_stamps_deletion_revision() {
        let store = Store::new(10, 0);
        put(&store, "a", 1);
        let key = ObjectKey::new("configmaps", "default", "a");
        let last = store
            .write::<()>(&key, |_, _| Ok(Write::Delete))
            .expect("delete")
            .expect("existed");
        assert_eq!(last["metadata"]["resourceVersion"], "2");
        assert!(store.get(&key).is_none());
        let (events, _) = store.events_since(0).expect("history");
        assert_eq!(events.last().map(|e| e.kind), Some(EventType::Deleted));
    }
}
