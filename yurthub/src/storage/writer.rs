//! The single writer: group commit of every write into one redb transaction
//! per batch.
//!
//! Callers enqueue operations (in order) on a channel; one OS thread takes
//! the first, lingers up to the batch window for more (bounded by count and
//! bytes), applies them all in one write transaction and commits it with
//! `Durability::Immediate` (fsync). Replies go out only after the commit, so
//! an acknowledged write survives kill -9 and power loss, and a burst of
//! watch events costs one fsync per batch instead of one per event.
//!
//! Each operation is planned before it mutates anything (old values read,
//! size growth computed, cap and scope checked), so a refused operation
//! leaves no trace while the rest of its batch commits. An engine error in
//! the middle of a batch fails the whole batch: nothing of it is committed.

use std::collections::HashSet;
use std::ops::Bound;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use redb::{Durability, ReadableTable, Table, WriteTransaction};
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use super::codec;
use super::engine::{self, Engine};
use super::error::Error;
use super::model::{
    Applied, ClusterBinding, Gvr, Object, ObjectKey, ObjectMeta, ResourceKey, ResourceVersion,
    ScopeKey, WatchEvent,
};

/// A caller's test of whether a stored object belongs to a list scope.
pub(crate) type Predicate = Box<dyn Fn(&ObjectMeta) -> bool + Send>;

pub(crate) enum Op {
    Put {
        resource: ResourceKey,
        object: Object,
    },
    Delete {
        key: ObjectKey,
    },
    DeleteMany {
        keys: Vec<ObjectKey>,
    },
    DeleteComponent {
        component: String,
    },
    Replace {
        scope: ScopeKey,
        in_scope: Predicate,
        items: Vec<Object>,
        list_rv: ResourceVersion,
    },
    StagePage {
        id: u64,
        scope: ScopeKey,
        items: Vec<Object>,
    },
    CommitStaged {
        id: u64,
        scope: ScopeKey,
        in_scope: Predicate,
        list_rv: ResourceVersion,
        expected_rows: u64,
        staged_bytes: u64,
    },
    AbortStaged {
        id: u64,
    },
    WatchEvent {
        scope: ScopeKey,
        event: WatchEvent,
    },
    SetProgress {
        scope: ScopeKey,
        rv: Option<ResourceVersion>,
    },
    MarkListed {
        scope: ScopeKey,
        rv: ResourceVersion,
        imported: bool,
        only_if_absent: bool,
    },
    PutDocument {
        path: String,
        content_type: String,
        body: Bytes,
    },
    PutKind {
        gvr: Gvr,
        kind: String,
    },
    ForgetGvr {
        gvr: Gvr,
    },
    BindCluster {
        identity: String,
    },
    Flush,
}

impl Op {
    /// Bytes the operation may add to the file: what the disk-space
    /// preflight reserves. Zero for operations that only remove.
    fn growth_estimate(&self) -> u64 {
        fn obj(o: &Object) -> u64 {
            (o.body.len() + o.meta.name.len() + 256) as u64
        }
        match self {
            Op::Put { object, .. } => obj(object),
            Op::Replace { items, .. } | Op::StagePage { items, .. } => items.iter().map(obj).sum(),
            Op::CommitStaged { staged_bytes, .. } => *staged_bytes,
            Op::WatchEvent { event, .. } => match event {
                WatchEvent::Added(o) | WatchEvent::Modified(o) => obj(o),
                WatchEvent::Deleted(_) | WatchEvent::Bookmark(_) => 256,
            },
            Op::SetProgress { .. } | Op::MarkListed { .. } | Op::PutKind { .. } => 256,
            Op::PutDocument { body, .. } => body.len() as u64 + 256,
            Op::BindCluster { .. } => 256,
            Op::Delete { .. }
            | Op::DeleteMany { .. }
            | Op::DeleteComponent { .. }
            | Op::AbortStaged { .. }
            | Op::ForgetGvr { .. }
            | Op::Flush => 0,
        }
    }

    /// The watch scope whose progress this operation moves, encoded.
    fn watch_scope_key(&self) -> Option<Vec<u8>> {
        match self {
            Op::WatchEvent { scope, .. } => codec::scope_key(scope).ok(),
            _ => None,
        }
    }

    /// A stream's write, whose acknowledgement nobody waits on in a
    /// request's path (a watch event teed into the cache): a batch of only
    /// these may wait for more (see `Writer::run`).
    fn streams(&self) -> bool {
        matches!(self, Op::WatchEvent { .. })
    }

    /// Bytes held in memory while queued, for the batch byte bound.
    pub(crate) fn queued_bytes(&self) -> usize {
        match self {
            Op::Put { object, .. } => object.body.len(),
            Op::Replace { items, .. } | Op::StagePage { items, .. } => {
                items.iter().map(|o| o.body.len()).sum()
            }
            Op::WatchEvent { event, .. } => match event {
                WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => {
                    o.body.len()
                }
                WatchEvent::Bookmark(_) => 0,
            },
            Op::PutDocument { body, .. } => body.len(),
            _ => 0,
        }
    }
}

pub(crate) enum Outcome {
    Applied(Applied),
    Count(u64),
    Done,
    Binding(ClusterBinding),
}

pub(crate) struct Msg {
    pub op: Op,
    pub reply: Option<oneshot::Sender<Result<Outcome, Error>>>,
    /// Queue slot, released once the operation is answered.
    pub permit: Option<OwnedSemaphorePermit>,
}

/// Batching and space policy.
#[derive(Clone, Debug)]
pub(crate) struct WriterConfig {
    pub batch_window: Duration,
    pub max_batch_ops: usize,
    pub max_batch_bytes: usize,
    pub max_bytes: Option<u64>,
    pub disk_reserve: Option<u64>,
}

/// Slack the preflight adds to every growing batch: B-tree paths copied on
/// write, the commit header and allocator bookkeeping.
const COMMIT_SLACK: u64 = 1 << 20;
/// The least time between two commits while stream writes keep coming (see
/// `Writer::run`): it bounds a store under a watch burst at 25 fsyncs a
/// second, and such a write's acknowledgement waits at most that long more.
const COMMIT_SPACING: Duration = Duration::from_millis(100);
/// A lingering batch this large commits without waiting out the spacing,
/// so a fast burst is bounded by the disk, not by the spacing: well under
/// the queue's capacity, whose writers would otherwise wait for the linger.
const LINGER_MAX_OPS: usize = 256;
const LINGER_MAX_BYTES: usize = 1 << 20;
/// After an eviction the store aims this far below the cap (per mille), so
/// that a store sitting at its cap does not evict on every write.
const LOW_WATER_PER_MILLE: u64 = 900;

pub(crate) fn spawn(
    engine: Arc<Engine>,
    config: WriterConfig,
    rx: Receiver<Msg>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("yurthub-store-writer".into())
        .spawn(move || {
            Writer {
                engine,
                config,
                stale: HashSet::new(),
                refused_needed: None,
            }
            .run(rx)
        })
}

struct Writer {
    engine: Arc<Engine>,
    config: WriterConfig,
    /// Watch scopes that lost an event (refused or failed). Their progress
    /// is withdrawn and no longer advanced, so a reconnect cannot resume past
    /// the hole; a relist (replace) or an explicit progress reset clears it.
    stale: HashSet<Vec<u8>>,
    /// Free bytes the last batch refused for space needed. Until that much
    /// is free again the store reports itself full, however many small
    /// writes still fit.
    refused_needed: Option<u64>,
}

/// What a single operation's application can end in.
enum OpError {
    /// The operation is refused; the rest of the batch goes on.
    Soft(Error),
    /// The engine failed; the whole batch is abandoned.
    Hard(redb::Error),
}

impl From<redb::Error> for OpError {
    fn from(e: redb::Error) -> Self {
        OpError::Hard(e)
    }
}

impl From<redb::StorageError> for OpError {
    fn from(e: redb::StorageError) -> Self {
        OpError::Hard(e.into())
    }
}

impl From<Error> for OpError {
    fn from(e: Error) -> Self {
        OpError::Soft(e)
    }
}

type OpResult = Result<Outcome, OpError>;

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        let mut batch = Vec::with_capacity(self.config.max_batch_ops);
        // When the last commit ended. A batch of stream writes (watch
        // events) that follows a commit closely lingers until
        // COMMIT_SPACING after it, so a burst on twenty watches costs at
        // most one fsync per spacing instead of one per event; any other
        // write cuts the linger back to the batch window, so a caller
        // awaiting its write is never held for the stream's sake.
        let mut last_commit: Option<Instant> = None;
        while let Ok(first) = rx.recv() {
            let mut bytes = first.op.queued_bytes();
            let window = Instant::now() + self.config.batch_window;
            let spaced = last_commit
                .map(|t| t + COMMIT_SPACING)
                .filter(|spaced| *spaced > window && first.op.streams());
            let mut deadline = spaced.unwrap_or(window);
            batch.push(first);
            let mut closed = false;
            while batch.len() < self.config.max_batch_ops && bytes < self.config.max_batch_bytes {
                let next = match rx.try_recv() {
                    Ok(m) => m,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                    Err(TryRecvError::Empty) => {
                        let now = Instant::now();
                        // A lingering batch that grew large stops waiting:
                        // its writers may be blocked on the full queue.
                        let large = batch.len() >= LINGER_MAX_OPS || bytes >= LINGER_MAX_BYTES;
                        if now >= deadline || (large && now >= window) {
                            break;
                        }
                        match rx.recv_timeout(deadline - now) {
                            Ok(m) => m,
                            Err(RecvTimeoutError::Timeout) => break,
                            Err(RecvTimeoutError::Disconnected) => {
                                closed = true;
                                break;
                            }
                        }
                    }
                };
                bytes += next.op.queued_bytes();
                if !next.op.streams() {
                    deadline = deadline.min(Instant::now() + self.config.batch_window);
                }
                batch.push(next);
            }
            self.process(std::mem::take(&mut batch));
            last_commit = Some(Instant::now());
            if closed {
                break;
            }
        }
        self.engine.close();
    }

    /// Counters are updated before replies go out, so a caller that saw
    /// its write complete also sees its effect in `Store::stats`.
    fn process(&mut self, batch: Vec<Msg>) {
        let engine = self.engine.clone();
        let counters = &engine.counters;
        counters.batches.fetch_add(1, Ordering::Relaxed);

        if !engine.is_open() && !self.try_reopen() {
            let err = Error::Unavailable {
                path: self.engine.path.clone(),
                reason: "the store could not be reopened after an i/o error".into(),
            };
            self.fail_all(batch, &err);
            return;
        }

        let (batch, refused) = self.preflight(batch);
        if let Some((refused, err, needed)) = refused {
            counters.disk_full.store(true, Ordering::Relaxed);
            self.refused_needed = Some(needed);
            tracing::warn!(path = %self.engine.path.display(), refused = refused.len(), error = %err, "cache store writes refused: not enough free disk space");
            self.fail_all(refused, &err);
        }
        if batch.is_empty() {
            return;
        }

        let mut ops = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        let mut watch_scopes = Vec::new();
        for m in batch {
            watch_scopes.extend(m.op.watch_scope_key());
            ops.push(m.op);
            replies.push((m.reply, m.permit));
        }

        // Only a commit that grew the store can show there is room again
        // (one of removals, an aborted staging, frees pages inside the
        // file, not on the disk), and only once what was refused would fit.
        let grew = ops.iter().any(|op| op.growth_estimate() > 0);
        let generation = engine.generation();
        let outcome = self.apply_batch(ops, self.stale.clone());
        match outcome {
            Ok((results, committed, stale)) => {
                self.stale = stale;
                self.publish_stale();
                if committed {
                    counters.commits.fetch_add(1, Ordering::Relaxed);
                    if grew && self.room_again() {
                        self.refused_needed = None;
                        counters.disk_full.store(false, Ordering::Relaxed);
                    }
                }
                let mut failed = 0u64;
                let mut first_error = None;
                for ((reply, _permit), result) in replies.into_iter().zip(results) {
                    match &result {
                        Ok(_) => {
                            counters.writes.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            failed += 1;
                            if matches!(e, Error::CapacityExceeded { .. }) {
                                counters.capacity_refusals.fetch_add(1, Ordering::Relaxed);
                            }
                            counters.record_error(1, e);
                            first_error.get_or_insert_with(|| e.to_string());
                        }
                    }
                    if let Some(reply) = reply {
                        let _ = reply.send(result);
                    }
                }
                if let Some(first) = first_error {
                    tracing::warn!(path = %self.engine.path.display(), failed, first_error = %first, "cache store refused some writes of a batch");
                }
            }
            Err(e) => {
                let reopen = e.needs_reopen();
                let err = e.into_error(&self.engine.path);
                let reason = err.to_string();
                self.stale.extend(watch_scopes);
                self.publish_stale();
                if err.is_disk_full() {
                    counters.disk_full.store(true, Ordering::Relaxed);
                }
                tracing::error!(path = %self.engine.path.display(), ops = replies.len(), error = %err, "cache store batch failed; nothing of it was written");
                counters.record_error(replies.len() as u64, &err);
                for (reply, _permit) in replies {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(err.clone()));
                    }
                }
                if reopen {
                    let _ = self.engine.reopen_if(generation, &reason);
                }
            }
        }
    }

    fn publish_stale(&self) {
        self.engine
            .counters
            .stale_watch_scopes
            .store(self.stale.len() as u64, Ordering::Relaxed);
    }

    fn try_reopen(&self) -> bool {
        let generation = self.engine.generation();
        self.engine
            .reopen_if(generation, "the store is closed after a failed reopen")
            .is_ok()
    }

    /// Whether the free space the last refused batch needed is there now.
    fn room_again(&self) -> bool {
        let Some(needed) = self.refused_needed else {
            return true;
        };
        nix::sys::statvfs::statvfs(&self.engine.dir)
            .map_or(true, |s| s.blocks_available() * s.fragment_size() >= needed)
    }

    /// Splits off the operations that would grow the file when the
    /// filesystem lacks room for them plus the configured reserve (with the
    /// free bytes they needed). Removals may dip into the reserve: they are
    /// how space comes back.
    #[allow(clippy::type_complexity)]
    fn preflight(&self, batch: Vec<Msg>) -> (Vec<Msg>, Option<(Vec<Msg>, Error, u64)>) {
        let Some(reserve) = self.config.disk_reserve else {
            return (batch, None);
        };
        let growth: u64 = batch.iter().map(|m| m.op.growth_estimate()).sum();
        if growth == 0 {
            return (batch, None);
        }
        let available = match nix::sys::statvfs::statvfs(&self.engine.dir) {
            Ok(s) => s.blocks_available() * s.fragment_size(),
            // Cannot tell: let the engine find out.
            Err(_) => return (batch, None),
        };
        let needed = growth.saturating_mul(2) + COMMIT_SLACK + reserve;
        if available >= needed {
            return (batch, None);
        }
        let err = Error::DiskFull {
            path: self.engine.path.clone(),
            detail: format!(
                "{available} bytes free, a batch needs about {} plus a reserve of {reserve}",
                needed - reserve
            ),
        };
        let (refused, kept): (Vec<Msg>, Vec<Msg>) =
            batch.into_iter().partition(|m| m.op.growth_estimate() > 0);
        (kept, Some((refused, err, needed)))
    }

    fn fail_all(&mut self, batch: Vec<Msg>, err: &Error) {
        self.engine.counters.record_error(batch.len() as u64, err);
        self.stale
            .extend(batch.iter().filter_map(|m| m.op.watch_scope_key()));
        self.publish_stale();
        for m in batch {
            if let Some(reply) = m.reply {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }

    /// Applies the operations in one write transaction and commits it when
    /// anything changed. Returns each operation's result and whether a
    /// commit happened.
    #[expect(
        clippy::type_complexity,
        reason = "private plumbing between two functions"
    )]
    fn apply_batch(
        &self,
        ops: Vec<Op>,
        stale: HashSet<Vec<u8>>,
    ) -> Result<(Vec<Result<Outcome, Error>>, bool, HashSet<Vec<u8>>), BatchError> {
        let engine = &self.engine;
        engine.with_db(|db| {
            let Some(db) = db else {
                return Err(BatchError::Engine(redb::Error::DatabaseClosed));
            };
            let mut txn = db.begin_write().map_err(|e| BatchError::Engine(e.into()))?;
            txn.set_durability(Durability::Immediate)
                .map_err(|e| BatchError::Engine(e.into()))?;
            let start_payload = engine.counters.payload.load(Ordering::Relaxed);
            let (results, state) = {
                let mut cx = Cx::open(&txn, start_payload, &self.config, engine, stale)
                    .map_err(BatchError::Engine)?;
                let mut results = Vec::with_capacity(ops.len());
                for op in ops {
                    let applied = panic::catch_unwind(AssertUnwindSafe(|| cx.apply(op)));
                    match applied {
                        Ok(Ok(outcome)) => results.push(Ok(outcome)),
                        Ok(Err(OpError::Soft(e))) => results.push(Err(e)),
                        Ok(Err(OpError::Hard(e))) => return Err(BatchError::Engine(e)),
                        Err(_) => return Err(BatchError::Panicked),
                    }
                }
                (results, cx.into_state())
            };
            if !state.dirty {
                txn.abort().map_err(|e| BatchError::Engine(e.into()))?;
                return Ok((results, false, state.stale));
            }
            txn.commit().map_err(|e| BatchError::Engine(e.into()))?;
            engine.changed();
            engine.counters.payload.store(state.payload, Ordering::Relaxed);
            if state.evicted > 0 {
                engine
                    .counters
                    .evicted_events
                    .fetch_add(state.evicted, Ordering::Relaxed);
                tracing::warn!(path = %engine.path.display(), evicted = state.evicted, cap = ?self.config.max_bytes, "cache store at its size cap: evicted the oldest cached events");
            }
            Ok((results, true, state.stale))
        })
    }
}

/// Why a whole batch failed.
enum BatchError {
    Engine(redb::Error),
    Panicked,
}

impl BatchError {
    /// Engine failures and engine panics reopen the file (verifying it);
    /// caller predicates get here only when not deterministic (see
    /// `Cx::replace`, `Cx::merge_staged`).
    fn needs_reopen(&self) -> bool {
        match self {
            BatchError::Engine(e) => engine::needs_reopen(e),
            BatchError::Panicked => true,
        }
    }

    fn into_error(self, path: &std::path::Path) -> Error {
        match self {
            BatchError::Engine(e) => engine::runtime_error(path, e),
            BatchError::Panicked => Error::Engine {
                path: path.to_path_buf(),
                detail: "the engine panicked while applying a batch; the file is being verified"
                    .into(),
            },
        }
    }
}

type BytesTable<'t> = Table<'t, &'static [u8], &'static [u8]>;

/// An encoded object: key and value as stored.
type Entry = (Vec<u8>, Vec<u8>);

/// What a batch leaves behind once applied.
struct BatchState {
    payload: u64,
    evicted: u64,
    dirty: bool,
    stale: HashSet<Vec<u8>>,
}

/// The tables of one write transaction plus the batch's bookkeeping.
struct Cx<'t, 'e> {
    objects: BytesTable<'t>,
    markers: BytesTable<'t>,
    progress: BytesTable<'t>,
    documents: BytesTable<'t>,
    kinds: BytesTable<'t>,
    staging: BytesTable<'t>,
    event_age: BytesTable<'t>,
    meta: BytesTable<'t>,
    payload: u64,
    evicted: u64,
    dirty: bool,
    now: SystemTime,
    cap: Option<u64>,
    engine: &'e Engine,
    /// See `Writer::stale`; this batch's working copy.
    stale: HashSet<Vec<u8>>,
}

fn entry_len(k: &[u8], v: &[u8]) -> u64 {
    (k.len() + v.len()) as u64
}

/// Inserts into a table that needs no side index, keeping the payload sum.
fn put_plain(
    t: &mut BytesTable<'_>,
    payload: &mut u64,
    k: &[u8],
    v: &[u8],
) -> Result<(), redb::Error> {
    let old = t.insert(k, v)?.map(|g| g.value().len() as u64);
    if let Some(old) = old {
        *payload = payload.saturating_sub(k.len() as u64 + old);
    }
    *payload += entry_len(k, v);
    Ok(())
}

fn remove_plain(t: &mut BytesTable<'_>, payload: &mut u64, k: &[u8]) -> Result<bool, redb::Error> {
    let old = t.remove(k)?.map(|g| g.value().len() as u64);
    if let Some(old) = old {
        *payload = payload.saturating_sub(k.len() as u64 + old);
        return Ok(true);
    }
    Ok(false)
}

/// Removes every entry whose key starts with `prefix`; returns how many.
fn remove_prefix(
    t: &mut BytesTable<'_>,
    payload: &mut u64,
    prefix: &[u8],
) -> Result<u64, redb::Error> {
    let mut removed = 0u64;
    let mut freed = 0u64;
    let end = codec::prefix_end(prefix);
    let mut filter = |k: &[u8], v: &[u8]| {
        removed += 1;
        freed += entry_len(k, v);
        true
    };
    match &end {
        Some(end) => t.retain_in(prefix..end.as_slice(), |k, v| !filter(k, v))?,
        None => t.retain_in(prefix.., |k, v| !filter(k, v))?,
    }
    *payload = payload.saturating_sub(freed);
    Ok(removed)
}

/// Whether two encoded object values hold the same object, ignoring when
/// they were stored: rewriting it would only cost I/O.
fn same_content(old: &[u8], new: &[u8]) -> bool {
    // Layout: version (1), format (1), stored-at (8), then the rest.
    old.len() == new.len() && old.len() > 10 && old[..2] == new[..2] && old[10..] == new[10..]
}

/// What the apply pass of a staged commit holds at most at a time (see
/// `Cx::merge_staged`), whatever the list's size.
const MERGE_WINDOW_ENTRIES: usize = 256;
const MERGE_WINDOW_BYTES: usize = 1 << 20;

/// One key of the merge of a staged list with its scope's objects: in the
/// list (`new`), stored (`old`), or both.
struct Merged<'a> {
    key: &'a [u8],
    new: Option<&'a [u8]>,
    old: Option<&'a [u8]>,
}

/// Walks staged list `id` and the objects under `prefix` together in key
/// order, starting after `after`: staging keys are `id ++ object key`, so
/// both ranges are sorted by object key and one pass joins them without
/// holding either (every staged key lies under `prefix`: `stage_page`
/// checks the scope). Stops when `visit` says so and returns the last key
/// visited (to resume after it), or None at the end of both ranges.
fn merge_walk(
    staging: &BytesTable<'_>,
    objects: &BytesTable<'_>,
    id: u64,
    prefix: &[u8],
    after: Option<&[u8]>,
    mut visit: impl FnMut(Merged<'_>) -> bool,
) -> Result<Option<Vec<u8>>, redb::StorageError> {
    let id_prefix = id.to_be_bytes();
    let (staged_end, scope_end) = (codec::prefix_end(&id_prefix), codec::prefix_end(prefix));
    let staged_after = after.map(|k| codec::u64_prefixed(id, k));
    let mut staged = staging.range::<&[u8]>(bounds(
        &id_prefix,
        staged_after.as_deref(),
        staged_end.as_deref(),
    ))?;
    let mut stored = objects.range::<&[u8]>(bounds(prefix, after, scope_end.as_deref()))?;
    let (mut s, mut o) = (staged.next().transpose()?, stored.next().transpose()?);
    loop {
        let (stop, next_s, next_o) = {
            let sk = s.as_ref().map(|(k, v)| (&k.value()[8..], v.value()));
            let ok = o.as_ref().map(|(k, v)| (k.value(), v.value()));
            let (key, new, old) = match (sk, ok) {
                (None, None) => return Ok(None),
                (Some((k, v)), None) => (k, Some(v), None),
                (None, Some((k, v))) => (k, None, Some(v)),
                (Some((a, x)), Some((b, y))) => match a.cmp(b) {
                    std::cmp::Ordering::Less => (a, Some(x), None),
                    std::cmp::Ordering::Equal => (a, Some(x), Some(y)),
                    std::cmp::Ordering::Greater => (b, None, Some(y)),
                },
            };
            let go_on = visit(Merged { key, new, old });
            ((!go_on).then(|| key.to_vec()), new.is_some(), old.is_some())
        };
        if next_s {
            s = staged.next().transpose()?;
        }
        if next_o {
            o = stored.next().transpose()?;
        }
        if stop.is_some() {
            return Ok(stop);
        }
    }
}

/// The range from `start` (or just after `after`) to before `end` (or to
/// the end of the table).
fn bounds<'a>(
    start: &'a [u8],
    after: Option<&'a [u8]>,
    end: Option<&'a [u8]>,
) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    (
        after.map_or(Bound::Included(start), Bound::Excluded),
        end.map_or(Bound::Unbounded, Bound::Excluded),
    )
}

/// Whether a stored object not in a new list of its scope goes: it does
/// when the scope holds it, or when it cannot be decoded (it cannot be
/// shown to anyone).
fn leaves(in_scope: &Predicate, value: &[u8]) -> bool {
    codec::decode_object(value).is_none_or(|d| in_scope(&d.meta))
}

impl<'t, 'e> Cx<'t, 'e> {
    fn open(
        txn: &'t WriteTransaction,
        payload: u64,
        config: &WriterConfig,
        engine: &'e Engine,
        stale: HashSet<Vec<u8>>,
    ) -> Result<Self, redb::Error> {
        let mut cx = Self {
            objects: txn.open_table(engine::OBJECTS)?,
            markers: txn.open_table(engine::MARKERS)?,
            progress: txn.open_table(engine::PROGRESS)?,
            documents: txn.open_table(engine::DOCUMENTS)?,
            kinds: txn.open_table(engine::KINDS)?,
            staging: txn.open_table(engine::STAGING)?,
            event_age: txn.open_table(engine::EVENT_AGE)?,
            meta: txn.open_table(engine::META)?,
            payload,
            evicted: 0,
            dirty: false,
            now: SystemTime::now(),
            cap: config.max_bytes,
            engine,
            stale,
        };
        // Withdraw the progress of scopes that lost an event. Normally empty.
        for k in &cx.stale {
            if remove_plain(&mut cx.progress, &mut cx.payload, k)? {
                cx.dirty = true;
            }
        }
        Ok(cx)
    }

    fn into_state(self) -> BatchState {
        BatchState {
            payload: self.payload,
            evicted: self.evicted,
            dirty: self.dirty,
            stale: self.stale,
        }
    }

    fn apply(&mut self, op: Op) -> OpResult {
        match op {
            Op::Put { resource, object } => self.put_if_not_older(&resource, None, &object),
            Op::Delete { key } => {
                let k = codec::object_key(&key)?;
                let removed = self.remove_object(&k)?;
                Ok(Outcome::Applied(if removed {
                    Applied::Deleted
                } else {
                    Applied::NotFound
                }))
            }
            Op::DeleteMany { keys } => {
                let mut n = 0;
                for key in &keys {
                    let k = codec::object_key(key)?;
                    if self.remove_object(&k)? {
                        n += 1;
                    }
                }
                Ok(Outcome::Count(n))
            }
            Op::DeleteComponent { component } => self.delete_component(&component),
            Op::Replace {
                scope,
                in_scope,
                items,
                list_rv,
            } => {
                if !self.superseded(&scope, &list_rv)? {
                    let encoded = self.encode_items(&scope, items)?;
                    self.replace(&scope, &in_scope, encoded, &list_rv)?;
                }
                Ok(Outcome::Done)
            }
            Op::StagePage { id, scope, items } => self.stage_page(id, &scope, items),
            Op::CommitStaged {
                id,
                scope,
                in_scope,
                list_rv,
                expected_rows,
                staged_bytes: _,
            } => self.commit_staged(id, &scope, &in_scope, &list_rv, expected_rows),
            Op::AbortStaged { id } => {
                let n = remove_prefix(&mut self.staging, &mut self.payload, &id.to_be_bytes())?;
                self.dirty |= n > 0;
                Ok(Outcome::Count(n))
            }
            Op::WatchEvent { scope, event } => self.watch_event(&scope, &event),
            Op::SetProgress { scope, rv } => {
                let k = codec::scope_key(&scope)?;
                self.stale.remove(&k);
                match rv {
                    Some(rv) => {
                        let v = codec::encode_progress(&rv, self.now);
                        put_plain(&mut self.progress, &mut self.payload, &k, &v)?;
                    }
                    None => {
                        remove_plain(&mut self.progress, &mut self.payload, &k)?;
                    }
                }
                self.dirty = true;
                Ok(Outcome::Done)
            }
            Op::MarkListed {
                scope,
                rv,
                imported,
                only_if_absent,
            } => {
                let k = codec::scope_key(&scope)?;
                if only_if_absent && self.markers.get(k.as_slice())?.is_some() {
                    return Ok(Outcome::Count(0));
                }
                let v = codec::encode_marker(&rv, self.now, imported);
                put_plain(&mut self.markers, &mut self.payload, &k, &v)?;
                self.dirty = true;
                Ok(Outcome::Count(1))
            }
            Op::PutDocument {
                path,
                content_type,
                body,
            } => {
                if path.as_bytes().contains(&0) || path.is_empty() {
                    return Err(Error::InvalidKey(format!("document path {path:?}")).into());
                }
                let v = codec::encode_document(&content_type, &body, self.now);
                let old = self
                    .documents
                    .get(path.as_bytes())?
                    .map(|g| g.value().len() as u64)
                    .unwrap_or(0);
                self.make_room((path.len() as u64 + v.len() as u64).saturating_sub(old))?;
                put_plain(&mut self.documents, &mut self.payload, path.as_bytes(), &v)?;
                self.dirty = true;
                Ok(Outcome::Done)
            }
            Op::PutKind { gvr, kind } => {
                let k = codec::gvr_key(&gvr)?;
                put_plain(&mut self.kinds, &mut self.payload, &k, kind.as_bytes())?;
                self.dirty = true;
                Ok(Outcome::Done)
            }
            Op::ForgetGvr { gvr } => self.forget_gvr(&gvr),
            Op::BindCluster { identity } => self.bind_cluster(&identity),
            Op::Flush => Ok(Outcome::Done),
        }
    }

    // === objects and the event index ===

    /// Writes an object value, keeping the payload sum and the event-age
    /// index right whatever was there before.
    fn put_object(&mut self, k: &[u8], v: &[u8]) -> Result<(), redb::Error> {
        let is_event = codec::key_is_event(k);
        let old = self.objects.insert(k, v)?.map(|g| {
            let raw = g.value();
            (raw.len() as u64, codec::peek_object(raw).map(|(at, _)| at))
        });
        if let Some((old_len, old_at)) = old {
            self.payload = self.payload.saturating_sub(k.len() as u64 + old_len);
            if is_event && let Some(at) = old_at {
                remove_plain(
                    &mut self.event_age,
                    &mut self.payload,
                    &codec::u64_prefixed(at, k),
                )?;
            }
        }
        self.payload += entry_len(k, v);
        if is_event && let Some((at, _)) = codec::peek_object(v) {
            put_plain(
                &mut self.event_age,
                &mut self.payload,
                &codec::u64_prefixed(at, k),
                &[],
            )?;
        }
        self.dirty = true;
        Ok(())
    }

    fn remove_object(&mut self, k: &[u8]) -> Result<bool, redb::Error> {
        let old = self.objects.remove(k)?.map(|g| {
            let raw = g.value();
            (raw.len() as u64, codec::peek_object(raw).map(|(at, _)| at))
        });
        let Some((old_len, old_at)) = old else {
            return Ok(false);
        };
        self.payload = self.payload.saturating_sub(k.len() as u64 + old_len);
        if codec::key_is_event(k)
            && let Some(at) = old_at
        {
            remove_plain(
                &mut self.event_age,
                &mut self.payload,
                &codec::u64_prefixed(at, k),
            )?;
        }
        self.dirty = true;
        Ok(true)
    }

    /// The size cap. Growth that would cross `max_bytes` first evicts
    /// cached events, oldest first, down to the low-water mark; if that is
    /// not enough the operation is refused (nothing of it applied).
    fn make_room(&mut self, growth: u64) -> Result<(), OpError> {
        let Some(cap) = self.cap else {
            return Ok(());
        };
        if growth == 0 || self.payload + growth <= cap {
            return Ok(());
        }
        let low_water = cap / 1000 * LOW_WATER_PER_MILLE;
        while self.payload + growth > low_water {
            let Some(index_key) = self.event_age.pop_first()?.map(|(k, _)| k.value().to_vec())
            else {
                break;
            };
            self.payload = self.payload.saturating_sub(index_key.len() as u64);
            let object_key = &index_key[8..];
            if let Some(len) = self
                .objects
                .remove(object_key)?
                .map(|g| g.value().len() as u64)
            {
                self.payload = self.payload.saturating_sub(object_key.len() as u64 + len);
                self.evicted += 1;
            }
            self.dirty = true;
        }
        if self.payload + growth <= cap {
            return Ok(());
        }
        Err(OpError::Soft(Error::CapacityExceeded {
            path: self.engine.path.clone(),
            payload: self.payload,
            growth,
            cap,
        }))
    }

    /// ADDED/MODIFIED: write only if the RV is not older than the cached one.
    /// `scope` (for watch events) must contain the object.
    fn put_if_not_older(
        &mut self,
        resource: &ResourceKey,
        scope: Option<&ScopeKey>,
        object: &Object,
    ) -> OpResult {
        if let Some(scope) = scope {
            check_in_scope(scope, &object.meta)?;
        }
        let k = codec::object_key_parts(
            resource,
            object.meta.namespace.as_deref(),
            &object.meta.name,
        )?;
        let v = codec::encode_object(&object.meta, object.format, &object.body, self.now);
        let mut old_len = 0u64;
        if let Some(old) = self.objects.get(k.as_slice())? {
            let raw = old.value();
            if let Some((_, cached)) = codec::peek_object(raw)
                && !object.meta.resource_version.is_not_older_than(&cached)
            {
                return Ok(Outcome::Applied(Applied::IgnoredOlder { cached }));
            }
            if same_content(raw, &v) {
                return Ok(Outcome::Applied(Applied::Stored));
            }
            old_len = raw.len() as u64;
        }
        self.make_room(
            (v.len() as u64).saturating_sub(old_len)
                + if old_len == 0 { k.len() as u64 } else { 0 },
        )?;
        self.put_object(&k, &v)?;
        Ok(Outcome::Applied(Applied::Stored))
    }

    /// Applies a watch event and moves the scope's progress with it. An
    /// event that cannot be applied makes the scope stale (see
    /// `Writer::stale`) instead of leaving a hole behind later progress.
    fn watch_event(&mut self, scope: &ScopeKey, event: &WatchEvent) -> OpResult {
        let pk = codec::scope_key(scope)?;
        let applied = match self.watch_event_object(scope, event) {
            Ok(applied) => applied,
            Err(e) => {
                if self.stale.insert(pk.clone()) {
                    tracing::warn!(path = %self.engine.path.display(), scope = %scope, "a watch event could not be cached; the scope's watch progress is withdrawn until it is relisted");
                }
                remove_plain(&mut self.progress, &mut self.payload, &pk)?;
                self.dirty = true;
                return Err(e);
            }
        };
        if self.stale.contains(&pk) {
            remove_plain(&mut self.progress, &mut self.payload, &pk)?;
        } else {
            let pv = codec::encode_progress(event.resource_version(), self.now);
            put_plain(&mut self.progress, &mut self.payload, &pk, &pv)?;
        }
        self.dirty = true;
        Ok(Outcome::Applied(applied))
    }

    fn watch_event_object(
        &mut self,
        scope: &ScopeKey,
        event: &WatchEvent,
    ) -> Result<Applied, OpError> {
        Ok(match event {
            WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                match self.put_if_not_older(&scope.resource, Some(scope), o)? {
                    Outcome::Applied(a) => a,
                    _ => Applied::Stored,
                }
            }
            WatchEvent::Deleted(o) => {
                check_in_scope(scope, &o.meta)?;
                let k = codec::object_key_parts(
                    &scope.resource,
                    o.meta.namespace.as_deref(),
                    &o.meta.name,
                )?;
                let cached = self
                    .objects
                    .get(k.as_slice())?
                    .and_then(|g| codec::peek_object(g.value()).map(|(_, rv)| rv));
                match cached {
                    None => Applied::NotFound,
                    // A stale deletion (e.g. from a watch older than a
                    // relist that saw the object recreated) must not remove
                    // the newer object.
                    Some(cached) if !o.meta.resource_version.is_not_older_than(&cached) => {
                        Applied::IgnoredOlder { cached }
                    }
                    Some(_) => {
                        self.remove_object(&k)?;
                        Applied::Deleted
                    }
                }
            }
            WatchEvent::Bookmark(_) => Applied::ProgressOnly,
        })
    }

    // === lists ===

    /// Encodes a list's items, consuming them so that each body can be
    /// freed as soon as its stored copy exists.
    fn encode_items(&self, scope: &ScopeKey, items: Vec<Object>) -> Result<Vec<Entry>, OpError> {
        items
            .into_iter()
            .map(|o| {
                check_in_scope(scope, &o.meta)?;
                let k = codec::object_key_parts(
                    &scope.resource,
                    o.meta.namespace.as_deref(),
                    &o.meta.name,
                )?;
                let v = codec::encode_object(&o.meta, o.format, &o.body, self.now);
                Ok((k, v))
            })
            .collect()
    }

    /// The scope's current objects are replaced by exactly `items`; the
    /// list marker and the scope's watch progress move to `list_rv`.
    fn replace(
        &mut self,
        scope: &ScopeKey,
        in_scope: &Predicate,
        items: Vec<Entry>,
        list_rv: &ResourceVersion,
    ) -> Result<(), OpError> {
        let prefix = codec::scope_object_prefix(scope)?;
        let end = codec::prefix_end(&prefix);
        let new_keys: HashSet<&[u8]> = items.iter().map(|(k, _)| k.as_slice()).collect();

        // Plan: what goes, and by how much the scope grows.
        let mut removed: Vec<Vec<u8>> = Vec::new();
        let mut unchanged: HashSet<Vec<u8>> = HashSet::new();
        let mut old_bytes = 0u64;
        {
            let range = match &end {
                Some(end) => self
                    .objects
                    .range::<&[u8]>(prefix.as_slice()..end.as_slice())?,
                None => self.objects.range::<&[u8]>(prefix.as_slice()..)?,
            };
            let by_key: std::collections::HashMap<&[u8], &[u8]> = items
                .iter()
                .map(|(k, v)| (k.as_slice(), v.as_slice()))
                .collect();
            for entry in range {
                let (k, v) = entry?;
                let (k, v) = (k.value(), v.value());
                if let Some(new_v) = by_key.get(k) {
                    old_bytes += entry_len(k, v);
                    if same_content(v, new_v) {
                        unchanged.insert(k.to_vec());
                    }
                    continue;
                }
                let Some(decoded) = codec::decode_object(v) else {
                    // Undecodable: it cannot be shown to anyone, so it goes.
                    old_bytes += entry_len(k, v);
                    removed.push(k.to_vec());
                    continue;
                };
                let belongs = panic::catch_unwind(AssertUnwindSafe(|| in_scope(&decoded.meta)))
                    .map_err(|_| {
                        OpError::Soft(Error::PredicatePanicked {
                            path: self.engine.path.clone(),
                        })
                    })?;
                if belongs {
                    old_bytes += entry_len(k, v);
                    removed.push(k.to_vec());
                }
            }
        }
        let new_bytes: u64 = items.iter().map(|(k, v)| entry_len(k, v)).sum();
        let evicted_before = self.evicted;
        self.make_room(new_bytes.saturating_sub(old_bytes))?;
        if self.evicted != evicted_before {
            // Eviction may have taken objects planned as unchanged.
            unchanged.clear();
        }

        for k in &removed {
            if !new_keys.contains(k.as_slice()) {
                self.remove_object(k)?;
            }
        }
        for (k, v) in &items {
            if !unchanged.contains(k) {
                self.put_object(k, v)?;
            }
        }
        self.mark_relisted(scope, list_rv)
    }

    /// Whether the scope holds a newer list than one at `list_rv` already.
    /// Two lists of one scope can reach the writer out of order (their
    /// copies are consumed concurrently); the older must not roll the
    /// scope back. Unordered (non-numeric) versions never supersede.
    fn superseded(&self, scope: &ScopeKey, list_rv: &ResourceVersion) -> Result<bool, OpError> {
        let sk = codec::scope_key(scope)?;
        let Some(v) = self.markers.get(sk.as_slice())? else {
            return Ok(false);
        };
        Ok(codec::decode_marker(v.value())
            .is_some_and(|(rv, _, imported)| !imported && !list_rv.is_not_older_than(&rv)))
    }

    /// The end of a relist: the list marker and the scope's watch progress
    /// move to `list_rv`.
    fn mark_relisted(
        &mut self,
        scope: &ScopeKey,
        list_rv: &ResourceVersion,
    ) -> Result<(), OpError> {
        let sk = codec::scope_key(scope)?;
        let marker = codec::encode_marker(list_rv, self.now, false);
        put_plain(&mut self.markers, &mut self.payload, &sk, &marker)?;
        let progress = codec::encode_progress(list_rv, self.now);
        put_plain(&mut self.progress, &mut self.payload, &sk, &progress)?;
        // A relist closes any hole a lost watch event left.
        self.stale.remove(&sk);
        self.dirty = true;
        Ok(())
    }

    fn stage_page(&mut self, id: u64, scope: &ScopeKey, items: Vec<Object>) -> OpResult {
        let encoded = self.encode_items(scope, items)?;
        let growth: u64 = encoded.iter().map(|(k, v)| entry_len(k, v) + 8).sum();
        self.make_room(growth)?;
        let mut added = 0u64;
        for (k, v) in encoded {
            let sk = codec::u64_prefixed(id, &k);
            let existed = self.staging.get(sk.as_slice())?.is_some();
            put_plain(&mut self.staging, &mut self.payload, &sk, &v)?;
            if !existed {
                added += 1;
            }
        }
        self.dirty = true;
        Ok(Outcome::Count(added))
    }

    /// Replaces the scope's objects by staged list `id`, like `replace`,
    /// but never holds the list in memory: two merge walks over the staged
    /// rows and the scope's objects (see `merge_walk`), the first only
    /// measuring, the second writing window by window.
    fn commit_staged(
        &mut self,
        id: u64,
        scope: &ScopeKey,
        in_scope: &Predicate,
        list_rv: &ResourceVersion,
        expected_rows: u64,
    ) -> OpResult {
        let outcome = match self.superseded(scope, list_rv) {
            Ok(true) => Ok(()),
            Ok(false) => self.merge_staged(id, scope, in_scope, list_rv, expected_rows),
            Err(e) => Err(e),
        };
        // The pages leave staging whether or not the list could be committed.
        remove_prefix(&mut self.staging, &mut self.payload, &id.to_be_bytes())?;
        self.dirty = true;
        outcome.map(|()| Outcome::Done)
    }

    fn merge_staged(
        &mut self,
        id: u64,
        scope: &ScopeKey,
        in_scope: &Predicate,
        list_rv: &ResourceVersion,
        expected_rows: u64,
    ) -> Result<(), OpError> {
        let prefix = codec::scope_object_prefix(scope)?;

        // Plan, copying nothing: the row count, what the staged rows hold
        // and by how much the scope grows.
        let (mut rows, mut staged_bytes, mut new_bytes, mut old_bytes) = (0u64, 0u64, 0u64, 0u64);
        let mut panicked = false;
        merge_walk(&self.staging, &self.objects, id, &prefix, None, |m| {
            if let Some(new) = m.new {
                rows += 1;
                staged_bytes += 8 + entry_len(m.key, new);
                new_bytes += entry_len(m.key, new);
                old_bytes += m.old.map_or(0, |old| entry_len(m.key, old));
            } else if let Some(old) = m.old
                // The first panic decides; the walk goes on only to count.
                && !panicked
            {
                match panic::catch_unwind(AssertUnwindSafe(|| leaves(in_scope, old))) {
                    Ok(true) => old_bytes += entry_len(m.key, old),
                    Ok(false) => {}
                    Err(_) => panicked = true,
                }
            }
            true
        })?;
        if rows != expected_rows {
            return Err(Error::StagingIncomplete {
                scope: scope.to_string(),
                detail: format!(
                    "{rows} objects staged, {expected_rows} expected (the staging was dropped or a page is missing)"
                ),
            }
            .into());
        }
        if panicked {
            return Err(Error::PredicatePanicked {
                path: self.engine.path.clone(),
            }
            .into());
        }
        // The staged rows leave once the commit is done (`commit_staged`):
        // the cap is checked as if they were gone already.
        let credit = staged_bytes.min(self.payload);
        self.payload -= credit;
        let room = self.make_room(new_bytes.saturating_sub(old_bytes));
        self.payload += credit;
        room?;

        // Apply, one window at a time. The walk is redone, so an object
        // make_room evicted is simply absent now, and an unchanged one is
        // seen as such again.
        let mut after: Option<Vec<u8>> = None;
        loop {
            let mut puts: Vec<Entry> = Vec::new();
            let mut removes: Vec<Vec<u8>> = Vec::new();
            let mut held = 0;
            let stop = merge_walk(
                &self.staging,
                &self.objects,
                id,
                &prefix,
                after.as_deref(),
                |m| {
                    if let Some(new) = m.new {
                        if !m.old.is_some_and(|old| same_content(old, new)) {
                            held += m.key.len() + new.len();
                            puts.push((m.key.to_vec(), new.to_vec()));
                        }
                    } else if let Some(old) = m.old
                        // The predicate did not panic on this object in the
                        // plan; if it does now (it is not deterministic),
                        // the panic fails the whole batch: nothing half
                        // done is committed.
                        && leaves(in_scope, old)
                    {
                        held += m.key.len();
                        removes.push(m.key.to_vec());
                    }
                    puts.len() + removes.len() < MERGE_WINDOW_ENTRIES && held < MERGE_WINDOW_BYTES
                },
            )?;
            for k in &removes {
                self.remove_object(k)?;
            }
            for (k, v) in &puts {
                self.put_object(k, v)?;
            }
            match stop {
                Some(last) => after = Some(last),
                None => break,
            }
        }
        self.mark_relisted(scope, list_rv)
    }

    // === housekeeping ===

    fn delete_component(&mut self, component: &str) -> OpResult {
        let prefix = codec::component_prefix(component)?;
        let end = codec::prefix_end(&prefix);
        let keys: Vec<Vec<u8>> = {
            let range = match &end {
                Some(end) => self
                    .objects
                    .range::<&[u8]>(prefix.as_slice()..end.as_slice())?,
                None => self.objects.range::<&[u8]>(prefix.as_slice()..)?,
            };
            range
                .map(|e| e.map(|(k, _)| k.value().to_vec()))
                .collect::<Result<_, _>>()?
        };
        let mut n = 0;
        for k in &keys {
            if self.remove_object(k)? {
                n += 1;
            }
        }
        remove_prefix(&mut self.markers, &mut self.payload, &prefix)?;
        remove_prefix(&mut self.progress, &mut self.payload, &prefix)?;
        self.dirty = true;
        Ok(Outcome::Count(n))
    }

    /// Removes the mapping of `gvr` and of every other resource name of the
    /// same group/version that maps to the same kind (singular and plural).
    fn forget_gvr(&mut self, gvr: &Gvr) -> OpResult {
        let k = codec::gvr_key(gvr)?;
        let Some(kind) = self.kinds.get(k.as_slice())?.map(|g| g.value().to_vec()) else {
            return Ok(Outcome::Count(0));
        };
        let siblings: Vec<Vec<u8>> = {
            let mut out = Vec::new();
            for entry in self.kinds.iter()? {
                let (key, value) = entry?;
                if value.value() == kind.as_slice()
                    && let Some(other) = codec::decode_gvr_key(key.value())
                    && other.group == gvr.group
                    && other.version == gvr.version
                {
                    out.push(key.value().to_vec());
                }
            }
            out
        };
        for key in &siblings {
            remove_plain(&mut self.kinds, &mut self.payload, key)?;
        }
        self.dirty = true;
        Ok(Outcome::Count(siblings.len() as u64))
    }

    /// Binds the store to a cluster identity; a different identity wipes
    /// every cached byte of the previous cluster in the same transaction.
    fn bind_cluster(&mut self, identity: &str) -> OpResult {
        let previous = self
            .meta
            .get(engine::META_CLUSTER)?
            .map(|g| String::from_utf8_lossy(g.value()).into_owned());
        let binding = match previous {
            Some(p) if p == identity => return Ok(Outcome::Binding(ClusterBinding::Same)),
            Some(previous) => {
                for t in [
                    &mut self.objects,
                    &mut self.markers,
                    &mut self.progress,
                    &mut self.documents,
                    &mut self.kinds,
                    &mut self.staging,
                    &mut self.event_age,
                ] {
                    t.retain(|_, _| false)?;
                }
                let mut meta_bytes = 0;
                for entry in self.meta.iter()? {
                    let (k, v) = entry?;
                    meta_bytes += entry_len(k.value(), v.value());
                }
                self.payload = meta_bytes;
                ClusterBinding::Replaced { previous }
            }
            None => ClusterBinding::Fresh,
        };
        put_plain(
            &mut self.meta,
            &mut self.payload,
            engine::META_CLUSTER,
            identity.as_bytes(),
        )?;
        self.dirty = true;
        Ok(Outcome::Binding(binding))
    }
}

/// An object handed to a scoped write must lie in the scope's namespace.
fn check_in_scope(scope: &ScopeKey, meta: &ObjectMeta) -> Result<(), Error> {
    match &scope.namespace {
        Some(ns) if meta.namespace.as_deref() != Some(ns.as_str()) => Err(Error::OutsideScope {
            object: format!("{}/{}", meta.namespace.as_deref().unwrap_or(""), meta.name),
            scope: scope.to_string(),
        }),
        _ => Ok(()),
    }
}
