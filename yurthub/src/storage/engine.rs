//! The redb file underneath the store: opening it, recognising a corrupt or
//! unreadable file and moving it aside, reopening after an I/O failure, and
//! running read transactions.
//!
//! redb latches the first I/O error of a handle (every later call returns
//! `PreviousIo`, reads included) until the file is closed and reopened. The
//! writer therefore reopens right after a failed batch, and a reader that
//! hits the latch (or damage, or a panic inside the engine) reopens and
//! retries once. A reopen replays redb's crash recovery, so it lands on the
//! last durable commit, and verifies every checksum, so a damaged file is
//! moved aside instead of being served.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition};

use super::codec;
use super::error::Error;

pub(crate) type Bytes2Bytes = TableDefinition<'static, &'static [u8], &'static [u8]>;

/// Cached objects by `codec::object_key`.
pub(crate) const OBJECTS: Bytes2Bytes = TableDefinition::new("objects");
/// List markers by `codec::scope_key`.
pub(crate) const MARKERS: Bytes2Bytes = TableDefinition::new("list_markers");
/// Watch progress by `codec::scope_key`.
pub(crate) const PROGRESS: Bytes2Bytes = TableDefinition::new("watch_progress");
/// Non-resource documents by request path.
pub(crate) const DOCUMENTS: Bytes2Bytes = TableDefinition::new("documents");
/// CRD resource mapping by `codec::gvr_key` → kind.
pub(crate) const KINDS: Bytes2Bytes = TableDefinition::new("kinds");
/// Pages of paginated lists in flight: staging id (u64 BE) + object key.
pub(crate) const STAGING: Bytes2Bytes = TableDefinition::new("staging");
/// Index of cached events by age: stored-at ms (u64 BE) + object key → "".
pub(crate) const EVENT_AGE: Bytes2Bytes = TableDefinition::new("event_age");
/// Store-level facts: schema version, cluster identity.
pub(crate) const META: Bytes2Bytes = TableDefinition::new("meta");

pub(crate) const ALL_TABLES: [Bytes2Bytes; 8] = [
    OBJECTS, MARKERS, PROGRESS, DOCUMENTS, KINDS, STAGING, EVENT_AGE, META,
];

pub(crate) const META_SCHEMA: &[u8] = b"schema";
pub(crate) const META_CLUSTER: &[u8] = b"cluster";
/// Bumped when a value or key layout changes incompatibly.
pub(crate) const SCHEMA_VERSION: u8 = 1;

const FILE_NAME: &str = "cache.redb";

/// The store file was found corrupt or unreadable and moved aside; the
/// store started empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    pub moved_aside_to: PathBuf,
    pub reason: String,
}

/// What a read closure can fail with: the engine, or the store's own
/// checks (e.g. an undecodable value).
pub(crate) enum ReadError {
    Engine(redb::Error),
    Store(Error),
}

impl From<Error> for ReadError {
    fn from(e: Error) -> Self {
        ReadError::Store(e)
    }
}

impl From<redb::Error> for ReadError {
    fn from(e: redb::Error) -> Self {
        ReadError::Engine(e)
    }
}

impl From<redb::TableError> for ReadError {
    fn from(e: redb::TableError) -> Self {
        ReadError::Engine(e.into())
    }
}

impl From<redb::StorageError> for ReadError {
    fn from(e: redb::StorageError) -> Self {
        ReadError::Engine(e.into())
    }
}

/// Engine settings that matter for (re)opening.
#[derive(Clone, Debug)]
pub(crate) struct EngineOptions {
    pub cache_bytes: usize,
    pub keep_corrupt_files: usize,
}

/// Activity counters shared by readers, the writer and `Store::stats`.
#[derive(Default)]
pub(crate) struct Counters {
    pub payload: AtomicU64,
    pub writes: AtomicU64,
    pub write_errors: AtomicU64,
    pub batches: AtomicU64,
    pub commits: AtomicU64,
    pub corrupted_recovered: AtomicU64,
    pub evicted_events: AtomicU64,
    pub capacity_refusals: AtomicU64,
    pub reopens: AtomicU64,
    pub stale_watch_scopes: AtomicU64,
    pub disk_full: AtomicBool,
    pub unavailable: AtomicBool,
    pub last_write_error: Mutex<Option<String>>,
}

impl Counters {
    pub fn record_error(&self, n: u64, error: &Error) {
        self.write_errors.fetch_add(n, Ordering::Relaxed);
        *self
            .last_write_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(error.to_string());
    }
}

pub(crate) struct Engine {
    pub dir: PathBuf,
    pub path: PathBuf,
    options: EngineOptions,
    db: RwLock<Option<Database>>,
    /// Bumped on every reopen attempt, so that a failure seen by several
    /// threads reopens the file once.
    generation: Mutex<u64>,
    /// When the last reopen failed: attempts are spaced by `REOPEN_BACKOFF`.
    failed_reopen: Mutex<Option<Instant>>,
    /// Bumped after every commit and every reopen: what was read while it
    /// stayed the same still holds (see `Store::holds`).
    changes: AtomicU64,
    pub counters: Counters,
}

/// Minimum pause between reopen attempts while the file cannot be opened.
const REOPEN_BACKOFF: Duration = Duration::from_secs(1);

/// Why an open failed, which decides between moving the file aside and
/// giving up (a file we cannot judge must never be thrown away).
enum OpenFailure {
    Corrupt(String),
    Fatal(Error),
}

impl Engine {
    /// Opens (or creates) `dir/cache.redb`. A corrupt or unreadable file is
    /// moved aside and replaced by an empty store.
    pub fn open(dir: &Path, options: EngineOptions) -> Result<(Self, Option<Recovery>), Error> {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(FILE_NAME);
        let (db, payload, recovery) = open_or_recover(&path, &options)?;
        let counters = Counters::default();
        counters.payload.store(payload, Ordering::Relaxed);
        if recovery.is_some() {
            counters.corrupted_recovered.fetch_add(1, Ordering::Relaxed);
        }
        Ok((
            Self {
                dir: dir.to_path_buf(),
                path,
                options,
                db: RwLock::new(Some(db)),
                generation: Mutex::new(0),
                changes: AtomicU64::new(0),
                failed_reopen: Mutex::new(None),
                counters,
            },
            recovery,
        ))
    }

    /// Runs `f` with the open database (the writer's entry point).
    pub fn with_db<T>(&self, f: impl FnOnce(Option<&Database>) -> T) -> T {
        let guard = self.db.read().unwrap_or_else(PoisonError::into_inner);
        f(guard.as_ref())
    }

    pub fn is_open(&self) -> bool {
        self.with_db(|db| db.is_some())
    }

    /// Runs a read transaction. Never waits for the writer (MVCC), except
    /// across the rare reopen after an I/O failure or a damaged page.
    ///
    /// An engine I/O error, a corruption report or a panic inside the engine
    /// reopens the file (which verifies every checksum and moves a damaged
    /// file aside) and retries once.
    pub fn read<T>(
        &self,
        f: impl Fn(&ReadTransaction) -> Result<T, ReadError>,
    ) -> Result<T, Error> {
        let mut retried = false;
        loop {
            let seen = self.generation();
            let result = self.with_db(|db| {
                let Some(db) = db else {
                    return Err(ReadFailure::Unavailable);
                };
                let txn = db.begin_read().map_err(|e| ReadFailure::Engine(e.into()))?;
                match panic::catch_unwind(AssertUnwindSafe(|| f(&txn))) {
                    Ok(Ok(v)) => Ok(v),
                    Ok(Err(ReadError::Engine(e))) => Err(ReadFailure::Engine(e)),
                    Ok(Err(ReadError::Store(e))) => Err(ReadFailure::Store(e)),
                    Err(p) => Err(ReadFailure::Panicked(panic_message(p.as_ref()))),
                }
            });
            let reason = match result {
                Ok(v) => return Ok(v),
                Err(ReadFailure::Unavailable) if retried => {
                    return Err(Error::Unavailable {
                        path: self.path.clone(),
                        reason: "the store could not be reopened after an i/o error".into(),
                    });
                }
                Err(ReadFailure::Unavailable) => "an earlier reopen failed".to_owned(),
                Err(ReadFailure::Store(e)) => return Err(e),
                Err(ReadFailure::Engine(e)) if retried || !needs_reopen(&e) => {
                    return Err(runtime_error(&self.path, e));
                }
                Err(ReadFailure::Panicked(msg)) if retried => {
                    return Err(Error::Engine {
                        path: self.path.clone(),
                        detail: format!("a read panicked twice: {msg}"),
                    });
                }
                Err(ReadFailure::Engine(e)) => e.to_string(),
                Err(ReadFailure::Panicked(msg)) => format!("a read panicked: {msg}"),
            };
            retried = true;
            let _ = self.reopen_if(seen, &reason);
        }
    }

    /// How many times the file's content may have changed: read before a
    /// read transaction begins, an unchanged count means its answer is still
    /// the file's.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// Called after a commit (and by a reopen).
    pub(crate) fn changed(&self) {
        self.changes.fetch_add(1, Ordering::Release);
    }

    /// Incremented by every reopen, under the write lock of the handle.
    pub fn generation(&self) -> u64 {
        *self
            .generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes and reopens the file unless someone already did since
    /// generation `seen`: after an I/O failure latched the handle, or when
    /// the file looks damaged. The reopen replays crash recovery, verifies
    /// every checksum and moves a damaged file aside. It waits for in-flight
    /// reads and the writer's batch to finish first (the file lock is per
    /// open file, so the old handle must be gone before the new one opens).
    /// After a failed reopen, further attempts wait `REOPEN_BACKOFF`.
    pub fn reopen_if(&self, seen: u64, reason: &str) -> Result<Option<Recovery>, Error> {
        let mut guard = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if self.generation() != seen {
            return Ok(None);
        }
        let mut failed = self
            .failed_reopen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if guard.is_none() && failed.is_some_and(|at| at.elapsed() < REOPEN_BACKOFF) {
            return Err(Error::Unavailable {
                path: self.path.clone(),
                reason: "waiting before the next reopen attempt".into(),
            });
        }
        if let Some(old) = guard.take() {
            // A latched handle cannot write its clean-shutdown mark; the
            // reopen below runs redb's crash recovery instead.
            drop(old);
        }
        let result = open_or_recover(&self.path, &self.options);
        let outcome = match result {
            Ok((db, payload, recovery)) => {
                *guard = Some(db);
                *failed = None;
                self.counters.payload.store(payload, Ordering::Relaxed);
                self.counters.reopens.fetch_add(1, Ordering::Relaxed);
                self.counters.unavailable.store(false, Ordering::Relaxed);
                if recovery.is_some() {
                    self.counters
                        .corrupted_recovered
                        .fetch_add(1, Ordering::Relaxed);
                }
                tracing::warn!(path = %self.path.display(), reason, "cache store reopened");
                Ok(recovery)
            }
            Err(e) => {
                *failed = Some(Instant::now());
                self.counters.unavailable.store(true, Ordering::Relaxed);
                tracing::error!(path = %self.path.display(), reason, error = %e, "cache store could not be reopened; reads and writes fail until it can");
                Err(e)
            }
        };
        *self
            .generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner) += 1;
        self.changed();
        drop(failed);
        drop(guard);
        outcome
    }

    /// Real disk usage (allocated blocks) and length of the store file.
    pub fn file_usage(&self) -> (u64, u64) {
        match fs::metadata(&self.path) {
            Ok(m) => (m.blocks() * 512, m.len()),
            Err(_) => (0, 0),
        }
    }

    /// Drops the handle (clean close) so the file lock is released.
    pub fn close(&self) {
        let mut guard = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(db) = guard.take() {
            drop(db);
        }
    }
}

/// Whether a redb error means the handle must be reopened: an I/O error
/// latched it, or the engine found damage (the reopen's integrity check
/// then moves the file aside).
pub(crate) fn needs_reopen(e: &redb::Error) -> bool {
    matches!(
        e,
        redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::Corrupted(_)
    )
}

/// How a read attempt failed.
enum ReadFailure {
    Unavailable,
    Engine(redb::Error),
    Store(Error),
    Panicked(String),
}

pub(crate) fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// Maps an engine error met while serving to the store's error type.
pub(crate) fn runtime_error(path: &Path, e: redb::Error) -> Error {
    match e {
        redb::Error::Io(io) if is_disk_full(&io) => Error::DiskFull {
            path: path.to_path_buf(),
            detail: io.to_string(),
        },
        redb::Error::Io(io) => Error::io(path, io),
        redb::Error::PreviousIo => Error::Unavailable {
            path: path.to_path_buf(),
            reason: "an earlier i/o error is being recovered".into(),
        },
        other => Error::Engine {
            path: path.to_path_buf(),
            detail: other.to_string(),
        },
    }
}

fn classify_open(path: &Path, e: redb::Error) -> OpenFailure {
    match e {
        redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => {
            OpenFailure::Fatal(Error::Locked {
                path: path.to_path_buf(),
            })
        }
        redb::Error::Io(io) => match io.kind() {
            io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => {
                OpenFailure::Corrupt(format!("unreadable store file: {io}"))
            }
            _ if is_disk_full(&io) => OpenFailure::Fatal(Error::DiskFull {
                path: path.to_path_buf(),
                detail: io.to_string(),
            }),
            io::ErrorKind::PermissionDenied
            | io::ErrorKind::ReadOnlyFilesystem
            | io::ErrorKind::NotFound
            | io::ErrorKind::OutOfMemory
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock => OpenFailure::Fatal(Error::io(path, io)),
            // EIO and friends: the medium cannot give the file back.
            _ => OpenFailure::Corrupt(format!("store file cannot be read: {io}")),
        },
        redb::Error::Corrupted(detail) => OpenFailure::Corrupt(format!("corrupted: {detail}")),
        redb::Error::UpgradeRequired(v) => {
            OpenFailure::Corrupt(format!("file format version {v} is not supported"))
        }
        redb::Error::RepairAborted => OpenFailure::Corrupt("crash repair failed".into()),
        other @ (redb::Error::TableTypeMismatch { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TableIsNotMultimap(_)
        | redb::Error::TypeDefinitionChanged { .. }) => {
            OpenFailure::Corrupt(format!("incompatible table layout: {other}"))
        }
        other => OpenFailure::Fatal(Error::Engine {
            path: path.to_path_buf(),
            detail: other.to_string(),
        }),
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

fn open_or_recover(
    path: &Path,
    options: &EngineOptions,
) -> Result<(Database, u64, Option<Recovery>), Error> {
    match try_open(path, options) {
        Ok((db, payload)) => Ok((db, payload, None)),
        Err(OpenFailure::Fatal(e)) => Err(e),
        Err(OpenFailure::Corrupt(reason)) => {
            let aside = move_aside(path, options.keep_corrupt_files)?;
            tracing::error!(
                path = %path.display(),
                moved_aside_to = %aside.display(),
                reason = %reason,
                "cache store file is corrupt or unreadable; moved it aside and starting with an empty cache"
            );
            match try_open(path, options) {
                Ok((db, payload)) => Ok((
                    db,
                    payload,
                    Some(Recovery {
                        moved_aside_to: aside,
                        reason,
                    }),
                )),
                Err(OpenFailure::Fatal(e)) => Err(e),
                Err(OpenFailure::Corrupt(reason)) => Err(Error::Engine {
                    path: path.to_path_buf(),
                    detail: format!("a freshly created store is unusable: {reason}"),
                }),
            }
        }
    }
}

fn try_open(path: &Path, options: &EngineOptions) -> Result<(Database, u64), OpenFailure> {
    if !path.exists() {
        // Created up front so the file is private (0600) like upstream's cache files.
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| OpenFailure::Fatal(Error::io(path, e)))?;
    }
    // redb's integrity check verifies every reachable page's checksum, so a
    // damaged file fails here with an error rather than panicking later.
    // Panics are still caught: a cache file must never take the node down.
    let opened = panic::catch_unwind(|| {
        let mut builder = redb::Builder::new();
        builder
            .set_cache_size(options.cache_bytes)
            .set_check_integrity_on_open(true);
        builder.create(path)
    });
    let db = match opened {
        Ok(Ok(db)) => db,
        Ok(Err(e)) => return Err(classify_open(path, e.into())),
        Err(p) => {
            return Err(OpenFailure::Corrupt(format!(
                "engine panicked opening the file: {}",
                panic_message(p.as_ref())
            )));
        }
    };
    let prepared = panic::catch_unwind(AssertUnwindSafe(|| prepare(&db)));
    match prepared {
        Ok(Ok(Ok(payload))) => Ok((db, payload)),
        Ok(Ok(Err(reason))) => Err(OpenFailure::Corrupt(reason)),
        Ok(Err(e)) => Err(classify_open(path, e)),
        Err(p) => Err(OpenFailure::Corrupt(format!(
            "engine panicked reading the file: {}",
            panic_message(p.as_ref())
        ))),
    }
}

/// Creates missing tables, checks the schema version, drops staged pages of
/// lists that a previous run never finished, and sums the payload.
/// The inner `Err(String)` is an incompatible-content reason.
fn prepare(db: &Database) -> Result<Result<u64, String>, redb::Error> {
    let txn = db.begin_write()?;
    {
        for table in ALL_TABLES {
            txn.open_table(table)?;
        }
        let mut meta = txn.open_table(META)?;
        let schema = meta.get(META_SCHEMA)?.map(|v| v.value().to_vec());
        match schema.as_deref() {
            None => {
                meta.insert(META_SCHEMA, [SCHEMA_VERSION].as_slice())?;
            }
            Some([SCHEMA_VERSION]) => {}
            Some(other) => {
                return Ok(Err(format!(
                    "schema version {other:?} is not {SCHEMA_VERSION} (written by another yurthub version)"
                )));
            }
        }
        let mut staging = txn.open_table(STAGING)?;
        staging.retain(|_, _| false)?;
    }
    txn.commit()?;

    let read = db.begin_read()?;
    let mut payload = 0u64;
    for table in ALL_TABLES {
        let t = read.open_table(table)?;
        for entry in t.iter()? {
            let (k, v) = entry?;
            payload += (k.value().len() + v.value().len()) as u64;
        }
    }
    Ok(Ok(payload))
}

/// Renames the store file to `<name>.corrupt-<UTC timestamp>` and keeps only
/// the newest `keep` such files, so repeated corruption cannot fill the disk.
fn move_aside(path: &Path, keep: usize) -> Result<PathBuf, Error> {
    let stamp = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .unwrap_or_else(|_| codec::millis(SystemTime::now()).to_string());
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| FILE_NAME.to_owned());
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut aside = dir.join(format!("{file_name}.corrupt-{stamp}"));
    let mut n = 1;
    while aside.exists() {
        aside = dir.join(format!("{file_name}.corrupt-{stamp}-{n}"));
        n += 1;
    }
    fs::rename(path, &aside).map_err(|e| Error::io(path, e))?;
    sync_dir(dir);

    let prefix = format!("{file_name}.corrupt-");
    if let Ok(entries) = fs::read_dir(dir) {
        let mut old: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .collect();
        // Timestamps sort lexically; the newest come last.
        old.sort();
        let excess = old.len().saturating_sub(keep.max(1));
        for stale in &old[..excess] {
            match fs::remove_file(stale) {
                Ok(()) => {
                    tracing::info!(path = %stale.display(), "removed an old corrupt cache store file")
                }
                Err(e) => {
                    tracing::warn!(path = %stale.display(), error = %e, "cannot remove an old corrupt cache store file")
                }
            }
        }
    }
    Ok(aside)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}
