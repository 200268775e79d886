//! Paginated lists staged on disk: pages arrive one by one (never held in
//! memory together), and only the commit replaces the scope, atomically.
//! A staging dropped without commit is discarded; one interrupted by a
//! crash is discarded at the next open.

use super::Store;
use super::error::Error;
use super::model::{Object, ObjectMeta, ResourceVersion, ScopeKey};
use super::writer::Op;

/// A paginated list being staged on disk. Dropped without
/// [`StagedList::commit`], its pages are discarded and the scope keeps its
/// old state.
pub struct StagedList {
    store: Store,
    id: u64,
    scope: ScopeKey,
    rows: u64,
    bytes: u64,
    /// Why the staging can no longer be committed.
    broken: Option<String>,
    finished: bool,
}

impl StagedList {
    pub(super) fn new(store: Store, id: u64, scope: ScopeKey) -> Self {
        Self {
            store,
            id,
            scope,
            rows: 0,
            bytes: 0,
            broken: None,
            finished: false,
        }
    }

    pub fn scope(&self) -> &ScopeKey {
        &self.scope
    }

    /// Adds one page; it is written to disk, not kept in memory.
    pub async fn stage_page(&mut self, items: Vec<Object>) -> Result<(), Error> {
        let bytes: u64 = items.iter().map(|o| o.body.len() as u64 + 256).sum();
        // Marked broken until the page is confirmed: a cancelled call must
        // not let a list with a missing page be committed.
        let previous = self.broken.replace("a page write did not complete".into());
        let result = self
            .store
            .count(Op::StagePage {
                id: self.id,
                scope: self.scope.clone(),
                items,
            })
            .await;
        match result {
            Ok(added) => {
                self.broken = previous;
                self.rows += added;
                self.bytes += bytes;
                Ok(())
            }
            Err(e) => {
                self.broken = Some(format!("a page failed: {e}"));
                Err(e)
            }
        }
    }

    /// Replaces the scope's objects for which `in_scope` holds by exactly
    /// the staged objects, atomically, with the marker at `list_rv`.
    pub async fn commit(
        mut self,
        in_scope: impl Fn(&ObjectMeta) -> bool + Send + 'static,
        list_rv: impl Into<ResourceVersion>,
    ) -> Result<(), Error> {
        if let Some(detail) = self.broken.take() {
            return Err(Error::StagingIncomplete {
                scope: self.scope.to_string(),
                detail,
            });
            // Drop discards the pages.
        }
        let rx = self
            .store
            .enqueue(Op::CommitStaged {
                id: self.id,
                scope: self.scope.clone(),
                in_scope: Box::new(in_scope),
                list_rv: list_rv.into(),
                expected_rows: self.rows,
                staged_bytes: self.bytes,
            })
            .await?;
        self.finished = true;
        rx.await.map_err(|_| self.store.stopped())?.map(|_| ())
    }

    /// Discards the staged pages; the scope keeps its old state.
    pub fn abort(mut self) {
        self.discard();
    }

    fn discard(&mut self) {
        if !self.finished {
            self.finished = true;
            self.store.enqueue_detached(Op::AbortStaged { id: self.id });
        }
    }
}

impl Drop for StagedList {
    fn drop(&mut self) {
        self.discard();
    }
}
