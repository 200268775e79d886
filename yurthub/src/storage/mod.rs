//! The embedded crash-safe store behind yurthub's cache: how cached bytes
//! survive kill -9, power loss, full disks and corrupt files.
//!
//! This module owns durability only. The cache policy (what to cache, how
//! requests map to keys, how answers are served) lives elsewhere and hands
//! the store bytes plus metadata it already extracted; the store never parses
//! a Kubernetes body (except in the one-off OpenYurt import).
//!
//! # Engine
//! One redb file (`<dir>/cache.redb`): copy-on-write B-trees with checksums,
//! ACID transactions and MVCC readers. redb's page cache is bounded by
//! [`Options::cache_bytes`] (4 MiB by default; redb's own default is 1 GiB).
//!
//! # Guarantees
//! * **Atomicity.** Every write operation — one object, one watch event
//!   together with the scope's watch progress, one whole list replace with
//!   its marker, one paginated list commit — is applied in a single
//!   transaction. After kill -9 or power loss at any instant the next open
//!   sees each operation entirely or not at all.
//! * **Durability.** A write's future resolves only after the transaction
//!   holding it committed with fsync. Writes from all callers are grouped:
//!   one writer thread commits whatever is queued (lingering at most
//!   [`Options::batch_window`]), so a burst costs one fsync per batch.
//!   [`Store::submit`] queues a write in order and hands back a [`Receipt`]
//!   that may be awaited or dropped (fire-and-forget; failures still show in
//!   [`Stats`]).
//! * **Reads never wait for writes**: each read is its own MVCC snapshot.
//!   Reads are synchronous and cheap (a 1,000-object list takes a few ms in
//!   release builds); callers on an async runtime may run very large lists
//!   in `spawn_blocking`.
//! * **Damage found while running** (an engine I/O error, a checksum
//!   report, a panic inside the engine) reopens the file, which re-verifies
//!   it and moves it aside if it is bad; the failed read is retried once.
//! * **Corrupt or unreadable file**: never fatal. Open verifies every page
//!   checksum; a bad file is renamed `cache.redb.corrupt-<UTC time>` (the
//!   newest [`Options::keep_corrupt_files`] are kept), an error is logged,
//!   the store starts empty and [`Opened::recovery`] and
//!   [`Stats::corrupted_recovered`] say so.
//! * **Full disk**: before each batch the writer checks free space (statvfs,
//!   the space available to unprivileged users) against the batch's size
//!   plus [`Options::disk_reserve`]; growing writes are refused with
//!   [`Error::DiskFull`] before anything is touched, while removals still
//!   run (they are how space comes back). Should the disk fill anyway, the
//!   failed commit leaves the last durable state on disk, the store reopens
//!   the file and keeps serving. [`Stats::disk_full`] stays set until a
//!   commit that grew the store finds the free space the refused batch
//!   needed (small writes that still fit do not clear it).
//! * **Bounded growth** ([`Options::max_bytes`], over keys + values): a
//!   write that would cross the cap first evicts cached events (core and
//!   events.k8s.io), oldest first, down to 90% of the cap; if that is not
//!   enough the write is refused with [`Error::CapacityExceeded`]. Writes
//!   that do not grow the store are always accepted. Evictions and refusals
//!   are counted in [`Stats`] and logged; nothing is evicted silently.
//!
//! # Semantics worth knowing
//! * Components are isolated: every key starts with the component.
//! * ADDED/MODIFIED (and [`Store::put_if_not_older`]) write only when the new
//!   RV is ≥ the cached one (u64 comparison; non-numeric RVs cannot be
//!   ordered and are applied in arrival order). A DELETED event older than
//!   the cached object is ignored too: it cannot remove a newer incarnation.
//! * A list replace also records the scope's list marker (so an empty list
//!   differs from "never listed") and sets the scope's watch progress to the
//!   list RV, in the same transaction.
//! * A watch event that cannot be cached (disk full, size cap, failed
//!   batch) makes its scope stale: the scope's watch progress is withdrawn
//!   and not advanced by later events, so a reconnect relists instead of
//!   resuming past the lost event. A list replace or an explicit
//!   `set_watch_progress`/`clear_watch_progress` ends it
//!   ([`Stats::stale_watch_scopes`]).
//! * Paginated lists are staged on disk ([`Store::begin_staged`]) and replace
//!   the scope only when committed; stagings left over by a previous process
//!   are dropped at open.

mod codec;
mod engine;
mod error;
mod held;
mod import;
mod model;
mod staging;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use redb::{ReadableTable, ReadableTableMetadata};
use tokio::sync::{Semaphore, oneshot};

pub use engine::Recovery;
pub use error::Error;
pub use import::{ImportReport, SkippedEntry, import_openyurt, import_openyurt_with};
pub use model::{
    Applied, ClusterBinding, Document, Format, Gvr, ListMarker, Listing, Object, ObjectKey,
    ObjectMeta, ResourceKey, ResourceVersion, ScopeKey, Space, Stats, StoredObject, WatchEvent,
    WatchProgress,
};
pub use staging::StagedList;

use engine::{Engine, EngineOptions};
use writer::{Msg, Op, Outcome, WriterConfig};

/// Queue accounting unit (bytes per permit).
const QUEUE_UNIT: usize = 1024;

/// How the store is opened.
#[derive(Clone, Debug)]
pub struct Options {
    /// Cap on stored keys + values (see the module docs for the policy).
    /// `None` disables the cap.
    pub max_bytes: Option<u64>,
    /// How long the writer lingers after the first queued write for more to
    /// join the batch. Zero still batches whatever queued up meanwhile.
    pub batch_window: Duration,
    /// Upper bound of operations per transaction.
    pub max_batch_ops: usize,
    /// Upper bound of queued body bytes per transaction.
    pub max_batch_bytes: usize,
    /// Body bytes that may wait in the write queue before submitters are
    /// slowed down: bounds the memory a slow disk can make the queue hold.
    pub queue_bytes: usize,
    /// redb page cache size.
    pub cache_bytes: usize,
    /// Free space to leave on the filesystem; growing writes that would eat
    /// into it are refused as disk full. `None` skips the free-space check
    /// (the engine then finds out from ENOSPC).
    pub disk_reserve: Option<u64>,
    /// How many moved-aside corrupt files to keep.
    pub keep_corrupt_files: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_bytes: Some(256 << 20),
            batch_window: Duration::from_millis(2),
            max_batch_ops: 2048,
            max_batch_bytes: 16 << 20,
            queue_bytes: 8 << 20,
            cache_bytes: 4 << 20,
            disk_reserve: Some(16 << 20),
            keep_corrupt_files: 2,
        }
    }
}

/// A freshly opened store, and whether its file had to be moved aside.
pub struct Opened {
    pub store: Store,
    pub recovery: Option<Recovery>,
}

/// The cache store. Cheap to clone; the last clone dropped drains the
/// queue, stops the writer and closes the file.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Arc<Engine>,
    tx: Option<mpsc::Sender<Msg>>,
    /// One permit per KiB of queued body bytes (at least one per operation).
    queue: Arc<Semaphore>,
    queue_permits: u32,
    writer: Option<JoinHandle<()>>,
    next_staging: AtomicU64,
    max_bytes: Option<u64>,
    held: held::Held,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel lets the writer finish what is queued and exit.
        self.tx.take();
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!(path = %self.engine.path.display(), "cache store writer thread panicked");
        }
    }
}

/// A write for [`Store::submit`]: the per-object writes that come in bursts.
#[derive(Clone, Debug)]
pub enum Write {
    /// ADDED/MODIFIED rule outside a watch.
    Put {
        resource: ResourceKey,
        object: Object,
    },
    Delete(ObjectKey),
    /// A watch event and the scope's progress, in one transaction.
    WatchEvent {
        scope: ScopeKey,
        event: WatchEvent,
    },
}

/// A queued write. Await [`Receipt::durable`] for its outcome once it is on
/// disk, or drop it to not wait (the write still happens, in order).
#[must_use = "dropping a receipt does not cancel the write; await durable() to learn its outcome"]
pub struct Receipt {
    rx: oneshot::Receiver<Result<Outcome, Error>>,
    path: PathBuf,
}

impl Receipt {
    pub async fn durable(self) -> Result<Applied, Error> {
        match self.rx.await {
            Ok(Ok(Outcome::Applied(a))) => Ok(a),
            Ok(Ok(_)) => Ok(Applied::Stored),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::WriterStopped { path: self.path }),
        }
    }
}

impl Store {
    /// Opens or creates the store in `dir` (file `dir/cache.redb`).
    ///
    /// Fails only when the file cannot be judged or used at all (locked by
    /// another process, permission denied, disk full while recovering); a
    /// corrupt file is moved aside instead.
    pub fn open(dir: &Path, options: Options) -> Result<Opened, Error> {
        let (engine, recovery) = Engine::open(
            dir,
            EngineOptions {
                cache_bytes: options.cache_bytes,
                keep_corrupt_files: options.keep_corrupt_files,
            },
        )?;
        let engine = Arc::new(engine);
        let (tx, rx) = mpsc::channel();
        let config = WriterConfig {
            batch_window: options.batch_window,
            max_batch_ops: options.max_batch_ops.max(1),
            max_batch_bytes: options.max_batch_bytes.max(1),
            max_bytes: options.max_bytes,
            disk_reserve: options.disk_reserve,
        };
        let writer =
            writer::spawn(engine.clone(), config, rx).map_err(|e| Error::io(&engine.path, e))?;
        let queue_permits =
            u32::try_from((options.queue_bytes / QUEUE_UNIT).max(1)).unwrap_or(u32::MAX >> 3);
        let (bytes, _) = engine.file_usage();
        tracing::info!(path = %engine.path.display(), bytes_on_disk = bytes, recovered = recovery.is_some(), "cache store open");
        Ok(Opened {
            store: Store {
                inner: Arc::new(Inner {
                    engine,
                    tx: Some(tx),
                    queue: Arc::new(Semaphore::new(queue_permits as usize)),
                    queue_permits,
                    writer: Some(writer),
                    next_staging: AtomicU64::new(1),
                    max_bytes: options.max_bytes,
                    held: held::Held::default(),
                }),
            },
            recovery,
        })
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.inner.engine.path
    }

    // === reads ===

    pub fn get(&self, key: &ObjectKey) -> Result<Option<StoredObject>, Error> {
        let k = codec::object_key(key)?;
        let path = self.path();
        self.inner.engine.read(|txn| {
            let objects = txn.open_table(engine::OBJECTS)?;
            let Some(v) = objects.get(k.as_slice())? else {
                return Ok(None);
            };
            let raw = v.value();
            let d = codec::decode_object(raw).ok_or_else(|| Error::Decode {
                path: path.to_path_buf(),
                what: format!("object {key}"),
            })?;
            Ok(Some(stored(key.clone(), d)))
        })
    }

    /// The objects of `scope` (its resource and namespace) that pass
    /// `filter`, with the list marker covering the scope: the exact one, or
    /// one of a wider scope (all namespaces and/or no selector). `None` when
    /// no marker covers the scope and no object passes: never listed and
    /// nothing cached.
    pub fn list(
        &self,
        scope: &ScopeKey,
        filter: impl Fn(&ObjectMeta) -> bool,
    ) -> Result<Option<Listing>, Error> {
        self.list_with(scope, filter, |s| s)
    }

    /// [`Store::list`], with each object that passes `filter` turned into
    /// what `each` makes of it while the list is read: a list of thousands
    /// never holds all its stored objects at once.
    pub fn list_with<T>(
        &self,
        scope: &ScopeKey,
        filter: impl Fn(&ObjectMeta) -> bool,
        each: impl Fn(StoredObject) -> T,
    ) -> Result<Option<Listing<T>>, Error> {
        let prefix = codec::scope_object_prefix(scope)?;
        let end = codec::prefix_end(&prefix);
        let candidates = covering_scopes(scope)
            .into_iter()
            .map(|s| codec::scope_key(&s).map(|k| (s, k)))
            .collect::<Result<Vec<_>, _>>()?;
        let path = self.path();
        self.inner.engine.read(|txn| {
            let markers = txn.open_table(engine::MARKERS)?;
            let mut marker = None;
            for (s, k) in &candidates {
                if let Some(v) = markers.get(k.as_slice())? {
                    let (rv, at, imported) =
                        codec::decode_marker(v.value()).ok_or_else(|| Error::Decode {
                            path: path.to_path_buf(),
                            what: format!("list marker of {s}"),
                        })?;
                    marker = Some(ListMarker {
                        scope: s.clone(),
                        resource_version: rv,
                        listed_at: at,
                        imported,
                    });
                    break;
                }
            }
            let objects = txn.open_table(engine::OBJECTS)?;
            let range = match &end {
                Some(end) => objects.range::<&[u8]>(prefix.as_slice()..end.as_slice())?,
                None => objects.range::<&[u8]>(prefix.as_slice()..)?,
            };
            let mut items = Vec::new();
            let mut max_rv = None;
            for entry in range {
                let (k, v) = entry?;
                let d = codec::decode_object(v.value()).ok_or_else(|| Error::Decode {
                    path: path.to_path_buf(),
                    what: format!("object under {scope}"),
                })?;
                if !filter(&d.meta) {
                    continue;
                }
                let key = codec::decode_object_key(k.value()).ok_or_else(|| Error::Decode {
                    path: path.to_path_buf(),
                    what: format!("object key under {scope}"),
                })?;
                if let Some(rv) = d.meta.resource_version.parsed() {
                    max_rv = Some(max_rv.map_or(rv, |m: u64| m.max(rv)));
                }
                items.push(each(stored(key, d)));
            }
            if marker.is_none() && items.is_empty() {
                return Ok(None);
            }
            Ok(Some(Listing {
                items,
                marker,
                max_resource_version: max_rv,
            }))
        })
    }

    /// Whether `object` is stored under `resource` already at the same
    /// resourceVersion and in the same format, i.e. writing it would change
    /// nothing. One read snapshot, nothing decoded but the value's header.
    pub fn holds_version(&self, resource: &ResourceKey, object: &Object) -> Result<bool, Error> {
        self.holds(
            resource,
            object.meta.namespace.as_deref(),
            &object.meta.name,
            object.format,
            object.meta.resource_version.as_str(),
        )
    }

    /// Whether the store holds the named object at `rv` in `format` (an
    /// empty `rv` is never held).
    pub fn holds(
        &self,
        resource: &ResourceKey,
        namespace: Option<&str>,
        name: &str,
        format: Format,
        rv: &str,
    ) -> Result<bool, Error> {
        if rv.is_empty() {
            return Ok(false);
        }
        let k = codec::object_key_parts(resource, namespace, name)?;
        // Read before the transaction begins: see `held`.
        let at = self.inner.engine.changes();
        if let Some(answer) = self.inner.held.lookup(at, &k, format, rv) {
            return Ok(answer);
        }
        let (answer, stored) = self.inner.engine.read(|txn| {
            let objects = txn.open_table(engine::OBJECTS)?;
            let Some(v) = objects.get(k.as_slice())? else {
                return Ok((false, None));
            };
            let stored = codec::peek_format_rv(v.value());
            let answer = stored.is_some_and(|(held, cached)| held == format && cached == rv);
            Ok((answer, stored.map(|(f, v)| (f, v.to_owned()))))
        })?;
        self.inner
            .held
            .remember(at, k, stored.as_ref().map(|(f, v)| (*f, v.as_str())));
        Ok(answer)
    }

    /// Keys of every object cached for one component's resource (for GC).
    pub fn keys(&self, resource: &ResourceKey) -> Result<Vec<ObjectKey>, Error> {
        let prefix = codec::resource_prefix(resource)?;
        let end = codec::prefix_end(&prefix);
        let path = self.path();
        self.inner.engine.read(|txn| {
            let objects = txn.open_table(engine::OBJECTS)?;
            let range = match &end {
                Some(end) => objects.range::<&[u8]>(prefix.as_slice()..end.as_slice())?,
                None => objects.range::<&[u8]>(prefix.as_slice()..)?,
            };
            let mut keys = Vec::new();
            for entry in range {
                let (k, _) = entry?;
                keys.push(
                    codec::decode_object_key(k.value()).ok_or_else(|| Error::Decode {
                        path: path.to_path_buf(),
                        what: format!("object key under {resource}"),
                    })?,
                );
            }
            Ok(keys)
        })
    }

    /// Components that have objects cached.
    pub fn components(&self) -> Result<Vec<String>, Error> {
        self.inner.engine.read(|txn| {
            let objects = txn.open_table(engine::OBJECTS)?;
            let mut out: Vec<String> = Vec::new();
            let mut from: Vec<u8> = Vec::new();
            // Skip from one component to the next instead of reading every key.
            loop {
                let next = objects
                    .range::<&[u8]>(from.as_slice()..)?
                    .next()
                    .transpose()?
                    .map(|(k, _)| k.value().to_vec());
                let Some(k) = next else { break };
                let component = k.split(|b| *b == 0).next().unwrap_or_default();
                out.push(String::from_utf8_lossy(component).into_owned());
                let mut prefix = component.to_vec();
                prefix.push(0);
                match codec::prefix_end(&prefix) {
                    Some(end) => from = end,
                    None => break,
                }
            }
            Ok(out)
        })
    }

    /// The list marker recorded for exactly `scope` (not a covering one).
    pub fn list_marker(&self, scope: &ScopeKey) -> Result<Option<ListMarker>, Error> {
        self.scope_value(engine::MARKERS, scope, "list marker", |v| {
            let (rv, at, imported) = codec::decode_marker(v)?;
            Some(ListMarker {
                scope: scope.clone(),
                resource_version: rv,
                listed_at: at,
                imported,
            })
        })
    }

    pub fn watch_progress(&self, scope: &ScopeKey) -> Result<Option<WatchProgress>, Error> {
        self.scope_value(engine::PROGRESS, scope, "watch progress", |v| {
            let (rv, at) = codec::decode_progress(v)?;
            Some(WatchProgress {
                resource_version: rv,
                updated_at: at,
            })
        })
    }

    /// One scope's row of `table`, decoded; a row that does not decode is
    /// an [`Error::Decode`] naming `what`.
    fn scope_value<T>(
        &self,
        table: engine::Bytes2Bytes,
        scope: &ScopeKey,
        what: &str,
        decode: impl Fn(&[u8]) -> Option<T>,
    ) -> Result<Option<T>, Error> {
        let k = codec::scope_key(scope)?;
        let path = self.path();
        self.inner.engine.read(|txn| {
            let t = txn.open_table(table)?;
            let Some(v) = t.get(k.as_slice())? else {
                return Ok(None);
            };
            let value = decode(v.value()).ok_or_else(|| Error::Decode {
                path: path.to_path_buf(),
                what: format!("{what} of {scope}"),
            })?;
            Ok(Some(value))
        })
    }

    /// A non-resource document such as `/version`.
    pub fn document(&self, path: &str) -> Result<Option<Document>, Error> {
        let store_path = self.path();
        self.inner.engine.read(|txn| {
            let t = txn.open_table(engine::DOCUMENTS)?;
            let Some(v) = t.get(path.as_bytes())? else {
                return Ok(None);
            };
            let (content_type, body, at) =
                codec::decode_document(v.value()).ok_or_else(|| Error::Decode {
                    path: store_path.to_path_buf(),
                    what: format!("document {path}"),
                })?;
            Ok(Some(Document {
                content_type,
                body: Bytes::copy_from_slice(body),
                stored_at: at,
            }))
        })
    }

    /// The kind recorded for a (CRD) resource.
    pub fn kind_for(&self, gvr: &Gvr) -> Result<Option<String>, Error> {
        let k = codec::gvr_key(gvr)?;
        self.inner.engine.read(|txn| {
            let t = txn.open_table(engine::KINDS)?;
            Ok(t.get(k.as_slice())?
                .map(|v| String::from_utf8_lossy(v.value()).into_owned()))
        })
    }

    /// Every recorded resource → kind mapping.
    pub fn kinds(&self) -> Result<Vec<(Gvr, String)>, Error> {
        self.inner.engine.read(|txn| {
            let t = txn.open_table(engine::KINDS)?;
            let mut out = Vec::new();
            for entry in t.iter()? {
                let (k, v) = entry?;
                if let Some(gvr) = codec::decode_gvr_key(k.value()) {
                    out.push((gvr, String::from_utf8_lossy(v.value()).into_owned()));
                }
            }
            Ok(out)
        })
    }

    /// The cluster identity recorded by [`Store::bind_cluster`].
    pub fn cluster_identity(&self) -> Result<Option<String>, Error> {
        self.inner.engine.read(|txn| {
            let t = txn.open_table(engine::META)?;
            Ok(t.get(engine::META_CLUSTER)?
                .map(|v| String::from_utf8_lossy(v.value()).into_owned()))
        })
    }

    /// Bytes stored (what `max_bytes` caps) and the cap: cheap, no read.
    pub fn usage(&self) -> (u64, Option<u64>) {
        (
            self.inner.engine.counters.payload.load(Ordering::Relaxed),
            self.inner.max_bytes,
        )
    }

    pub fn stats(&self) -> Stats {
        let engine = &self.inner.engine;
        let c = &engine.counters;
        let (bytes_on_disk, file_len) = engine.file_usage();
        let objects = engine
            .read(|txn| Ok(txn.open_table(engine::OBJECTS)?.len()?))
            .unwrap_or(0);
        Stats {
            bytes_on_disk,
            file_len,
            payload_bytes: c.payload.load(Ordering::Relaxed),
            max_bytes: self.inner.max_bytes,
            objects,
            writes: c.writes.load(Ordering::Relaxed),
            write_errors: c.write_errors.load(Ordering::Relaxed),
            last_write_error: c
                .last_write_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            disk_full: c.disk_full.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            commits: c.commits.load(Ordering::Relaxed),
            corrupted_recovered: c.corrupted_recovered.load(Ordering::Relaxed),
            evicted_events: c.evicted_events.load(Ordering::Relaxed),
            capacity_refusals: c.capacity_refusals.load(Ordering::Relaxed),
            reopens: c.reopens.load(Ordering::Relaxed),
            stale_watch_scopes: c.stale_watch_scopes.load(Ordering::Relaxed),
            unavailable: c.unavailable.load(Ordering::Relaxed),
        }
    }

    // === writes ===

    /// Queues a write behind every write queued before it and returns once
    /// it is queued (waiting only when the queue is full).
    pub async fn submit(&self, write: Write) -> Result<Receipt, Error> {
        let op = match write {
            Write::Put { resource, object } => Op::Put { resource, object },
            Write::Delete(key) => Op::Delete { key },
            Write::WatchEvent { scope, event } => Op::WatchEvent { scope, event },
        };
        let rx = self.enqueue(op).await?;
        Ok(Receipt {
            rx,
            path: self.path().to_path_buf(),
        })
    }

    /// Writes `object` unless the cached copy has a newer RV.
    pub async fn put_if_not_older(
        &self,
        resource: &ResourceKey,
        object: Object,
    ) -> Result<Applied, Error> {
        self.applied(Op::Put {
            resource: resource.clone(),
            object,
        })
        .await
    }

    /// Removes one object; returns whether it existed.
    pub async fn delete(&self, key: &ObjectKey) -> Result<bool, Error> {
        let a = self.applied(Op::Delete { key: key.clone() }).await?;
        Ok(a == Applied::Deleted)
    }

    /// Removes many objects in one transaction; returns how many existed.
    pub async fn delete_many(&self, keys: Vec<ObjectKey>) -> Result<u64, Error> {
        self.count(Op::DeleteMany { keys }).await
    }

    /// Removes everything cached for a component (objects, markers, progress).
    pub async fn delete_component(&self, component: &str) -> Result<u64, Error> {
        self.count(Op::DeleteComponent {
            component: component.to_owned(),
        })
        .await
    }

    /// Atomically replaces the objects of `scope` — those under its
    /// namespace (or all) for which `in_scope` holds — by exactly `items`,
    /// and records the list marker and watch progress at `list_rv`.
    pub async fn replace_scope(
        &self,
        scope: &ScopeKey,
        in_scope: impl Fn(&ObjectMeta) -> bool + Send + 'static,
        items: Vec<Object>,
        list_rv: impl Into<ResourceVersion>,
    ) -> Result<(), Error> {
        self.call(Op::Replace {
            scope: scope.clone(),
            in_scope: Box::new(in_scope),
            items,
            list_rv: list_rv.into(),
        })
        .await
        .map(|_| ())
    }

    /// Starts a paginated list of `scope`: pages go to disk as they arrive
    /// and replace the scope atomically on [`StagedList::commit`].
    pub fn begin_staged(&self, scope: &ScopeKey) -> StagedList {
        let id = self.inner.next_staging.fetch_add(1, Ordering::Relaxed);
        StagedList::new(self.clone(), id, scope.clone())
    }

    /// Applies a watch event and moves the scope's watch progress to the
    /// event's RV in one transaction.
    pub async fn apply_watch_event(
        &self,
        scope: &ScopeKey,
        event: WatchEvent,
    ) -> Result<Applied, Error> {
        self.applied(Op::WatchEvent {
            scope: scope.clone(),
            event,
        })
        .await
    }

    pub async fn set_watch_progress(
        &self,
        scope: &ScopeKey,
        rv: impl Into<ResourceVersion>,
    ) -> Result<(), Error> {
        self.call(Op::SetProgress {
            scope: scope.clone(),
            rv: Some(rv.into()),
        })
        .await
        .map(|_| ())
    }

    /// Forgets a scope's watch progress (e.g. after 410 Gone).
    pub async fn clear_watch_progress(&self, scope: &ScopeKey) -> Result<(), Error> {
        self.call(Op::SetProgress {
            scope: scope.clone(),
            rv: None,
        })
        .await
        .map(|_| ())
    }

    /// Records that `scope` was listed at `rv` without touching objects.
    /// With `only_if_absent`, an existing marker wins. Returns whether a
    /// marker was written.
    pub async fn mark_listed(
        &self,
        scope: &ScopeKey,
        rv: impl Into<ResourceVersion>,
        only_if_absent: bool,
    ) -> Result<bool, Error> {
        Ok(self
            .count(Op::MarkListed {
                scope: scope.clone(),
                rv: rv.into(),
                imported: false,
                only_if_absent,
            })
            .await?
            > 0)
    }

    pub async fn put_document(
        &self,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<(), Error> {
        self.call(Op::PutDocument {
            path: path.to_owned(),
            content_type: content_type.to_owned(),
            body,
        })
        .await
        .map(|_| ())
    }

    /// Records the kind of a resource name (call it for the plural and the
    /// singular name).
    pub async fn put_kind(&self, gvr: &Gvr, kind: &str) -> Result<(), Error> {
        self.call(Op::PutKind {
            gvr: gvr.clone(),
            kind: kind.to_owned(),
        })
        .await
        .map(|_| ())
    }

    /// Forgets the kind of `gvr` and of its sibling names of the same kind
    /// (e.g. after the apiserver answered 404). Returns entries removed.
    pub async fn forget_gvr(&self, gvr: &Gvr) -> Result<u64, Error> {
        self.count(Op::ForgetGvr { gvr: gvr.clone() }).await
    }

    /// Binds the cache to a cluster identity (e.g. the apiserver CA hash).
    /// A store holding another cluster's data is wiped in the same
    /// transaction, so it never serves a foreign cluster's objects.
    pub async fn bind_cluster(&self, identity: &str) -> Result<ClusterBinding, Error> {
        match self
            .call(Op::BindCluster {
                identity: identity.to_owned(),
            })
            .await?
        {
            Outcome::Binding(b) => Ok(b),
            _ => Ok(ClusterBinding::Same),
        }
    }

    /// Resolves once everything queued before it is durable.
    pub async fn flush(&self) -> Result<(), Error> {
        self.call(Op::Flush).await.map(|_| ())
    }

    // === plumbing ===

    fn stopped(&self) -> Error {
        Error::WriterStopped {
            path: self.path().to_path_buf(),
        }
    }

    async fn enqueue(&self, op: Op) -> Result<oneshot::Receiver<Result<Outcome, Error>>, Error> {
        // An operation bigger than the whole queue takes all of it.
        let cost = u32::try_from(1 + op.queued_bytes() / QUEUE_UNIT)
            .unwrap_or(u32::MAX)
            .min(self.inner.queue_permits);
        let permit = self
            .inner
            .queue
            .clone()
            .acquire_many_owned(cost)
            .await
            .map_err(|_| self.stopped())?;
        let (reply, rx) = oneshot::channel();
        let tx = self.inner.tx.as_ref().ok_or_else(|| self.stopped())?;
        tx.send(Msg {
            op,
            reply: Some(reply),
            permit: Some(permit),
        })
        .map_err(|_| self.stopped())?;
        Ok(rx)
    }

    /// Queues an operation nobody waits for, without a queue slot (used
    /// from `Drop`, which cannot wait; only for tiny operations).
    fn enqueue_detached(&self, op: Op) {
        if let Some(tx) = &self.inner.tx {
            let _ = tx.send(Msg {
                op,
                reply: None,
                permit: None,
            });
        }
    }

    async fn call(&self, op: Op) -> Result<Outcome, Error> {
        let rx = self.enqueue(op).await?;
        rx.await.map_err(|_| self.stopped())?
    }

    async fn applied(&self, op: Op) -> Result<Applied, Error> {
        match self.call(op).await? {
            Outcome::Applied(a) => Ok(a),
            _ => Ok(Applied::Stored),
        }
    }

    async fn count(&self, op: Op) -> Result<u64, Error> {
        match self.call(op).await? {
            Outcome::Count(n) => Ok(n),
            _ => Ok(0),
        }
    }
}

fn stored(key: ObjectKey, d: codec::DecodedObject<'_>) -> StoredObject {
    StoredObject {
        key,
        object: Object {
            meta: d.meta,
            format: d.format,
            body: Bytes::copy_from_slice(d.body),
        },
        stored_at: codec::from_millis(d.stored_at_ms),
    }
}

/// Scopes whose marker proves `scope` was listed, most specific first: a
/// list of all namespaces covers one namespace, and a list without
/// selector covers any selector (the caller's filter narrows it).
fn covering_scopes(scope: &ScopeKey) -> Vec<ScopeKey> {
    let mut out = vec![scope.clone()];
    let mut push = |namespace: Option<String>, selector: &str| {
        let s = ScopeKey {
            resource: scope.resource.clone(),
            namespace,
            selector: selector.to_owned(),
        };
        if !out.contains(&s) {
            out.push(s);
        }
    };
    push(None, &scope.selector);
    push(scope.namespace.clone(), "");
    push(None, "");
    out
}
